//! Every example policy and every valid fixture compiles, and its output is accepted by the
//! real consumers: `apparmor_parser` for AppArmor, the kernel (through libseccomp) for seccomp,
//! and the table walk agrees with the reference matcher for BPF.

mod support;

use varmor_policy::api::{ModelProfiles, PolicyMode, ProfileType};
use varmor_policy::bundle::SeccompProfile;
use varmor_policy::decide::{decide, decide_with_tables, Access};
use varmor_policy::{compile_with_model, parse_documents, validate, NodeFacts, PolicyDocument};

/// A stand-in for a behaviour model, as varmorctl uses when none is given.
fn model_for(doc: &PolicyDocument) -> Option<ModelProfiles> {
    let spec = doc.spec();
    let did = spec.policy.defense_in_depth.as_ref()?;
    let uses = spec.policy.mode == PolicyMode::DefenseInDepth
        && (did
            .app_armor
            .as_ref()
            .is_some_and(|a| a.profile_type == ProfileType::BehaviorModel)
            || did
                .seccomp
                .as_ref()
                .is_some_and(|s| s.profile_type == ProfileType::BehaviorModel));
    uses.then(|| ModelProfiles {
        app_armor: Some(format!(
            "abi <abi/3.0>,\n#include <tunables/global>\nprofile {} flags=(attach_disconnected,mediate_deleted) {{\n  #include <abstractions/base>\n  /usr/bin/** rix,\n}}\n",
            doc.identity("varmor").profile_name()
        )),
        seccomp: Some(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["getpid"],"action":"SCMP_ACT_ALLOW"}]}"#.into()),
    })
}

#[test]
fn every_example_and_valid_fixture_is_accepted_by_the_real_consumers() {
    let parser = support::apparmor::parser_available();
    if support::skip_unless(parser, "apparmor_parser (Debian package apparmor)") {
        return;
    }
    let seccomp = support::seccomp::available();
    if support::skip_unless(
        seccomp.is_ok(),
        &format!("loading seccomp filters ({:?})", seccomp.err()),
    ) {
        return;
    }
    let mut files = support::yaml_files(&support::repo_dir().join("deploy/examples"));
    files.extend(support::yaml_files(
        &support::crate_dir().join("tests/fixtures/valid"),
    ));
    let (mut apparmor, mut filters, mut bpf) = (0, 0, 0);
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        for doc in parse_documents(&text) {
            let doc = doc.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let errors = validate::validate_document(&doc);
            assert!(errors.is_empty(), "{}: {errors}", file.display());
            let model = model_for(&doc);
            let bundle = compile_with_model(
                &doc.spec(),
                &doc.identity("varmor"),
                &NodeFacts::default(),
                model.as_ref(),
            )
            .unwrap_or_else(|e| panic!("{} ({}): {e}", file.display(), doc.name()));
            let what = format!("{} ({})", file.display(), doc.name());
            if let Some(aa) = &bundle.apparmor {
                apparmor += 1;
                if let Err(e) = support::apparmor::check_profile(&aa.text) {
                    failures.push(format!("{what}: apparmor_parser rejected the profile: {e}"));
                }
            }
            if let Some(SeccompProfile::Localhost { json }) = &bundle.seccomp {
                filters += 1;
                let oci = serde_json::from_str(json).expect("OCI seccomp JSON");
                match support::seccomp::Filter::from_oci(&oci) {
                    Ok(f) => {
                        let outcome =
                            support::seccomp::run(Some(&f), &support::seccomp::Op::Getpid);
                        if matches!(
                            outcome,
                            support::seccomp::Outcome::LoadFailed
                                | support::seccomp::Outcome::SetupFailed
                        ) {
                            failures.push(format!(
                                "{what}: the kernel did not load the seccomp filter ({outcome:?})"
                            ));
                        }
                    }
                    Err(e) => {
                        failures.push(format!("{what}: libseccomp rejected the profile: {e}"))
                    }
                }
            }
            if let Some(b) = &bundle.bpf {
                bpf += 1;
                for access in [
                    Access::File {
                        path: "/etc/shadow".into(),
                        permissions: 4,
                    },
                    Access::File {
                        path: "/run/secrets/kubernetes.io/serviceaccount/token".into(),
                        permissions: 4,
                    },
                    Access::Exec {
                        path: "/bin/sh".into(),
                    },
                    Access::Mount {
                        source: "/proc".into(),
                        fstype: "proc".into(),
                        flags: 0,
                    },
                    Access::Umount {
                        path: "/sys/fs/cgroup".into(),
                    },
                ] {
                    let v = decide(b, &access);
                    assert_eq!(
                        decide_with_tables(b, &access),
                        (v.decision, v.event),
                        "{what}: {access:?}"
                    );
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        apparmor >= 8 && filters >= 5 && bpf >= 5,
        "too few profiles checked: {apparmor} AppArmor, {filters} seccomp, {bpf} BPF"
    );
}
