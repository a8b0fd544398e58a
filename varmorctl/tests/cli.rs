//! The `varmorctl` binary, run as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn varmorctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_varmorctl"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run varmorctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, body).expect("write");
    p.to_string_lossy().into_owned()
}

const BPF_POLICY: &str = r#"apiVersion: crd.varmor.org/v1beta1
kind: VarmorPolicy
metadata:
  name: web
  namespace: demo
spec:
  target:
    kind: Deployment
    selector:
      matchLabels:
        app: web
  policy:
    enforcer: AppArmorBPFSeccomp
    mode: EnhanceProtect
    enhanceProtect:
      auditViolations: true
      hardeningRules: [disable-cap-all-except-net-bind-service]
      attackProtectionRules:
      - rules: [mitigate-sa-leak, disable-shell, block-access-to-metadata-service]
      vulMitigationRules: [dirty-pipe-mitigation]
      bpfRawRules:
        files:
        - pattern: /etc/shadow
          permissions: [read]
"#;

/// Runs the real `apparmor_parser` on a profile (it compiles profiles without kernel support).
fn check_with_apparmor_parser(dir: &tempfile::TempDir, profile: &str) {
    let parser = ["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(parser) = parser else {
        assert!(
            std::env::var_os("VARMOR_REQUIRE_KERNEL_TESTS").is_none_or(|v| v != "1"),
            "apparmor_parser is required (VARMOR_REQUIRE_KERNEL_TESTS=1) but missing"
        );
        eprintln!("SKIP: apparmor_parser is not installed (Debian package apparmor)");
        return;
    };
    let file = write(dir, "profile.apparmor", profile);
    let out = Command::new(parser)
        .args([
            "-Q",
            "-K",
            "-M",
            "/usr/share/apparmor-features/features",
            &file,
        ])
        .output()
        .expect("run apparmor_parser");
    assert!(
        out.status.success(),
        "apparmor_parser rejected the profile:\n{}",
        text(&out.stderr)
    );
}

#[test]
fn validate_accepts_every_example() {
    let mut args = vec!["policy", "validate"];
    let files: Vec<String> = std::fs::read_dir(repo().join("deploy/examples"))
        .expect("examples")
        .map(|e| e.expect("entry").path().to_string_lossy().into_owned())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    assert!(files.len() >= 5);
    args.extend(files.iter().map(String::as_str));
    let out = varmorctl(&args);
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    for f in &files {
        assert!(
            stdout.contains(&format!("{f}: ")) && stdout.contains("is valid"),
            "{f} not reported valid:\n{stdout}"
        );
    }
}

#[test]
fn validate_reports_every_error_with_its_path() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = BPF_POLICY
        .replace("disable-shell", "disable-shel")
        .replace("permissions: [read]", "permissions: [red]")
        .replace(
            "enforcer: AppArmorBPFSeccomp",
            "enforcer: AppArmorBPFSELinux",
        );
    let f = write(&dir, "bad.yaml", &bad);
    let out = varmorctl(&["policy", "validate", &f]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("spec.policy.enhanceProtect.attackProtectionRules[0].rules[1]"),
        "{err}"
    );
    assert!(err.contains("disable-shell"), "suggestion missing: {err}");
    assert!(
        err.contains("spec.policy.enhanceProtect.bpfRawRules.files[0].permissions[0]"),
        "{err}"
    );
    assert!(err.contains("spec.policy.enforcer"), "{err}");
    assert_eq!(err.lines().count(), 3, "{err}");
}

#[test]
fn validate_fails_on_unreadable_and_empty_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let empty = write(&dir, "empty.yaml", "# nothing\n");
    let out = varmorctl(&["policy", "validate", "/nonexistent/policy.yaml", &empty]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("/nonexistent/policy.yaml: cannot read"),
        "{err}"
    );
    assert!(err.contains("no policy document found"), "{err}");
}

#[test]
fn compile_prints_each_enforcer_output() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = write(&dir, "p.yaml", BPF_POLICY);
    let aa = varmorctl(&["policy", "compile", &f, "--enforcer", "apparmor"]);
    assert!(aa.status.success(), "{}", text(&aa.stderr));
    let aa = text(&aa.stdout);
    assert!(
        aa.contains("profile varmor-demo-web flags=(attach_disconnected,mediate_deleted)"),
        "{aa}"
    );
    assert!(
        aa.contains("audit deny /run/secrets/kubernetes.io/serviceaccount/** r,"),
        "{aa}"
    );
    check_with_apparmor_parser(&dir, &aa);

    let sc = varmorctl(&["policy", "compile", &f, "--enforcer", "seccomp"]);
    assert!(sc.status.success(), "{}", text(&sc.stderr));
    let json: serde_json::Value = serde_json::from_slice(&sc.stdout).expect("seccomp JSON");
    assert_eq!(json["defaultAction"], "SCMP_ACT_ALLOW");
    assert!(text(&sc.stdout).contains("splice"));

    let bpf = varmorctl(&[
        "policy",
        "compile",
        &f,
        "--enforcer",
        "bpf",
        "--output",
        "yaml",
    ]);
    assert!(bpf.status.success(), "{}", text(&bpf.stderr));
    let y: serde_yaml::Value = serde_yaml::from_slice(&bpf.stdout).expect("BPF YAML");
    assert_eq!(y["mode"], serde_yaml::Value::from("Enforce"));
    assert!(text(&bpf.stdout).contains("169.254.169.254"));
}

#[test]
fn compile_refuses_an_enforcer_the_policy_does_not_use() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = write(
        &dir,
        "p.yaml",
        &BPF_POLICY.replace("AppArmorBPFSeccomp", "BPF"),
    );
    let out = varmorctl(&["policy", "compile", &f, "--enforcer", "apparmor"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does not use the AppArmor enforcer"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn explain_names_the_deciding_rule() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = write(&dir, "p.yaml", BPF_POLICY);
    let out = varmorctl(&[
        "policy",
        "explain",
        &f,
        "--path",
        "/etc/shadow",
        "--perm",
        "read",
    ]);
    let o = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(o.starts_with("DENY (DENIED event)"), "{o}");
    assert!(
        o.contains("spec.policy.enhanceProtect.bpfRawRules.files[0]"),
        "{o}"
    );

    let out = varmorctl(&["policy", "explain", &f, "--path", "/etc/hosts"]);
    assert!(
        text(&out.stdout).starts_with("ALLOW"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("no rule matches"));

    let out = varmorctl(&["policy", "explain", &f, "--capability", "sys_admin"]);
    assert!(
        text(&out.stdout).contains("disable-cap-all-except-net-bind-service"),
        "{}",
        text(&out.stdout)
    );
    let out = varmorctl(&["policy", "explain", &f, "--capability", "net_bind_service"]);
    assert!(
        text(&out.stdout).starts_with("ALLOW"),
        "{}",
        text(&out.stdout)
    );

    let out = varmorctl(&["policy", "explain", &f, "--exec", "/bin/bash"]);
    assert!(
        text(&out.stdout).contains("(disable-shell)"),
        "{}",
        text(&out.stdout)
    );

    let out = varmorctl(&["policy", "explain", &f, "--connect", "169.254.169.254:80"]);
    assert!(
        text(&out.stdout).contains("block-access-to-metadata-service"),
        "{}",
        text(&out.stdout)
    );

    let out = varmorctl(&[
        "policy",
        "explain",
        &f,
        "--socket",
        "inet,raw,icmp",
        "--output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json verdict");
    assert_eq!(v["decision"], "Allow");

    let out = varmorctl(&[
        "policy", "explain", &f, "--mount", "tmpfs", "--fstype", "tmpfs",
    ]);
    assert!(
        text(&out.stdout).contains("decided by: runtimeDefault"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn explain_works_for_policies_without_bpf() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = write(
        &dir,
        "p.yaml",
        &BPF_POLICY.replace("AppArmorBPFSeccomp", "AppArmor"),
    );
    let out = varmorctl(&[
        "policy",
        "explain",
        &f,
        "--path",
        "/run/secrets/kubernetes.io/serviceaccount/token",
    ]);
    let o = text(&out.stdout);
    assert!(o.starts_with("DENY"), "{o}");
    assert!(o.contains("uses enforcer AppArmor, not BPF"), "{o}");
}

#[test]
fn rules_lists_the_catalog() {
    let out = varmorctl(&["rules"]);
    let o = text(&out.stdout);
    assert!(out.status.success());
    assert!(o.contains("disable-cap-all"));
    assert!(o.contains("disallow-load-bpf-prog (disallow-load-ebpf)"));
    assert!(o.lines().count() > 90);
}

#[test]
fn crd_command_writes_the_committed_crds() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = varmorctl(&["crd", "--out", &dir.path().to_string_lossy()]);
    assert!(out.status.success());
    for name in [
        "varmorpolicies.crd.varmor.org.yaml",
        "varmorclusterpolicies.crd.varmor.org.yaml",
    ] {
        let fresh = std::fs::read_to_string(dir.path().join(name)).expect("generated");
        let committed =
            std::fs::read_to_string(repo().join("deploy/crds").join(name)).expect("committed");
        assert_eq!(fresh, committed, "{name}");
    }
}
