//! The Seccomp back end: golden profiles for every mode, switch and built-in rule, the
//! decisions that differ from vArmor, and real kernel filters built from the compiled
//! profiles with runc's semantics (`support::seccomp`).

mod support;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag};
use serde_json::{json, Value};
use varmor_policy::api::{ModelProfiles, VarmorPolicySpec};
use varmor_policy::bundle::SeccompProfile;
use varmor_policy::catalog;
use varmor_policy::compile::{self, Context};
use varmor_policy::enforcer::EnforcerSet;
use varmor_policy::{FieldErrors, NodeFacts, PolicyDocument, PolicyIdentity};

use support::seccomp::{available, run, Filter, Op, Outcome};

// ---------------------------------------------------------------------------------- helpers

/// A VarmorPolicy spec with enforcer Seccomp and this `policy` body (mode and options).
fn spec(policy: Value) -> VarmorPolicySpec {
    let mut policy = policy;
    policy["enforcer"] = json!("Seccomp");
    let doc = json!({
        "apiVersion": "crd.varmor.org/v1beta1",
        "kind": "VarmorPolicy",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"target": {"kind": "Deployment", "name": "web"}, "policy": policy},
    });
    parse(&doc.to_string())
}

fn parse(text: &str) -> VarmorPolicySpec {
    let mut docs = varmor_policy::parse_documents(text);
    assert_eq!(docs.len(), 1, "one document");
    match docs.remove(0) {
        Ok(PolicyDocument::Namespaced(p)) => p.spec,
        Ok(other) => panic!("expected a VarmorPolicy, got {}", other.kind()),
        Err(e) => panic!("the test policy does not parse:\n{e}"),
    }
}

fn try_compile(
    spec: &VarmorPolicySpec,
    model: Option<&ModelProfiles>,
) -> Result<SeccompProfile, FieldErrors> {
    let bundle = varmor_policy::compile_with_model(
        spec,
        &PolicyIdentity::namespaced("demo", "web"),
        &NodeFacts::default(),
        model,
    )?;
    Ok(bundle
        .seccomp
        .expect("enforcer Seccomp yields a seccomp setting"))
}

fn compile_setting(spec: &VarmorPolicySpec) -> SeccompProfile {
    try_compile(spec, None).unwrap_or_else(|e| panic!("compile failed:\n{e}"))
}

/// The `Localhost` JSON of a policy.
fn json_of(spec: &VarmorPolicySpec) -> String {
    match compile_setting(spec) {
        SeccompProfile::Localhost { json } => json,
        SeccompProfile::RuntimeDefault => panic!("expected a Localhost profile"),
    }
}

fn oci(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("not an OCI profile ({e}): {json}"))
}

/// The golden form of a profile: pretty-printed. The profile must be the compact
/// serialization of the same OCI value, so the golden file pins the exact output.
fn golden_text(json: &str) -> String {
    let parsed = oci(json);
    assert_eq!(
        serde_json::to_string(&parsed).expect("serialize"),
        json,
        "the profile is not the canonical serialization of its OCI value"
    );
    serde_json::to_string_pretty(&parsed).expect("serialize") + "\n"
}

fn enhance(ep: Value) -> Value {
    json!({"mode": "EnhanceProtect", "enhanceProtect": ep})
}

/// An EnhanceProtect policy with these hardening, attack protection and vulnerability
/// mitigation rule names, placed in the list each belongs to.
fn enhance_with_rules(names: &[&str], extra: Value) -> Value {
    let mut ep = json!({});
    for name in names {
        let rule = catalog::lookup(name).unwrap_or_else(|| panic!("no rule {name}"));
        match rule.category {
            catalog::Category::Hardening => push(&mut ep, "hardeningRules", json!(name)),
            catalog::Category::AttackProtection => {
                push(&mut ep, "attackProtectionRules", json!({"rules": [name]}))
            }
            catalog::Category::VulMitigation => push(&mut ep, "vulMitigationRules", json!(name)),
        }
    }
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            ep[k] = v;
        }
    }
    enhance(ep)
}

fn push(obj: &mut Value, key: &str, v: Value) {
    match obj.get_mut(key) {
        Some(Value::Array(a)) => a.push(v),
        _ => obj[key] = json!([v]),
    }
}

/// The rules of the mode and switch golden files: seccomp rules of the three lists, one rule
/// with targets (skipped), one AppArmor/BPF-only rule (ignored), and a raw rule.
fn sample_enhance(allow: bool, audit: bool) -> Value {
    enhance(json!({
        "hardeningRules": ["disallow-create-user-ns", "disallow-write-core-pattern", "disallow-userfaultfd-creation"],
        "attackProtectionRules": [
            {"rules": ["disable-chmod-s-bit"]},
            {"rules": ["disable-chmod-x-bit"], "targets": ["/bin/sh"]},
        ],
        "vulMitigationRules": ["dirty-pipe-mitigation"],
        "syscallRawRules": [{"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
        "allowViolations": allow,
        "auditViolations": audit,
    }))
}

const CUSTOM_PROFILE: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    {"names": ["exit", "exit_group", "getpid", "rt_sigreturn"], "action": "SCMP_ACT_ALLOW"},
    {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}
  ]
}"#;

fn defense_in_depth(seccomp: Value, allow: bool) -> Value {
    json!({"mode": "DefenseInDepth", "defenseInDepth": {"seccomp": seccomp, "allowViolations": allow}})
}

fn custom(raw: Value) -> Value {
    json!({"profileType": "Custom", "customProfile": CUSTOM_PROFILE, "syscallRawRules": raw})
}

/// A model profile as the manager builds it from a behaviour model.
const MODEL_PROFILE: &str = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["open","openat","openat2","close","read","write"],"action":"SCMP_ACT_ALLOW"},{"names":["exit_group","futex","getpid","nanosleep"],"action":"SCMP_ACT_ALLOW"}]}"#;

fn model() -> ModelProfiles {
    ModelProfiles {
        app_armor: None,
        seccomp: Some(MODEL_PROFILE.to_string()),
    }
}

/// Checks golden files, returning every difference.
fn check_all(cases: &[(String, String)]) -> Vec<String> {
    cases
        .iter()
        .filter_map(|(rel, json)| support::check_golden(rel, &golden_text(json)).err())
        .collect()
}

fn report(stale: Vec<String>) {
    assert!(
        stale.is_empty(),
        "{} stale golden file(s):\n{}",
        stale.len(),
        stale.join("\n")
    );
}

// ---------------------------------------------------------------------------------- golden

fn mode_cases() -> Vec<(String, String)> {
    let mut out = vec![
        (
            "seccomp/modes/always-allow.json".to_string(),
            json_of(&spec(json!({"mode": "AlwaysAllow"}))),
        ),
        (
            "seccomp/modes/behavior-modeling.json".to_string(),
            json_of(&spec(
                json!({"mode": "BehaviorModeling", "modelingOptions": {"duration": 30}}),
            )),
        ),
    ];
    for (allow, audit, name) in [
        (false, false, "deny"),
        (false, true, "deny-audit"),
        (true, false, "allow"),
        (true, true, "allow-audit"),
    ] {
        out.push((
            format!("seccomp/modes/enhance-protect-{name}.json"),
            json_of(&spec(sample_enhance(allow, audit))),
        ));
    }
    let raw = json!([{"names": ["getppid", "gettid"], "action": "SCMP_ACT_ALLOW"}]);
    out.push((
        "seccomp/modes/defense-in-depth-custom.json".to_string(),
        json_of(&spec(defense_in_depth(custom(raw.clone()), false))),
    ));
    out.push((
        "seccomp/modes/defense-in-depth-custom-allow.json".to_string(),
        json_of(&spec(defense_in_depth(custom(raw.clone()), true))),
    ));
    let from_model = spec(defense_in_depth(
        json!({"profileType": "BehaviorModel", "syscallRawRules": raw}),
        false,
    ));
    let SeccompProfile::Localhost { json } =
        try_compile(&from_model, Some(&model())).expect("compiles")
    else {
        panic!("expected Localhost");
    };
    out.push((
        "seccomp/modes/defense-in-depth-model.json".to_string(),
        json,
    ));
    out.push((
        "seccomp/raw-rules.json".to_string(),
        json_of(&spec(raw_rules_policy())),
    ));
    out
}

/// Built-in and raw rules together: a multi-name raw rule, a duplicate of a built-in entry
/// (dropped), an entry that only looks like one (kept), a duplicate name, and a raw rule on
/// the same syscall as a built-in rule with different conditions (kept apart, not merged).
fn raw_rules_policy() -> Value {
    enhance_with_rules(
        &[
            "disallow-userfaultfd-creation",
            "disallow-load-bpf-via-setsockopt",
            "dirty-pipe-mitigation",
        ],
        json!({"syscallRawRules": [
            {"names": ["kexec_load", "kexec_file_load", "kexec_load"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["userfaultfd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["userfaultfd"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["setsockopt"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 2, "value": 2, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_LOG",
             "args": [{"index": 0, "value": 4294967295u64, "valueTwo": 0, "op": "SCMP_CMP_NE"}]},
        ]}),
    )
}

#[test]
fn mode_and_switch_profiles_match_golden_files() {
    report(check_all(&mode_cases()));
}

#[test]
fn every_seccomp_builtin_rule_matches_its_golden_file() {
    let rules: Vec<_> = catalog::all()
        .iter()
        .filter(|r| r.supports_seccomp())
        .collect();
    assert!(
        rules.len() >= 7,
        "the catalog lost seccomp rules: {}",
        rules.len()
    );
    let cases: Vec<(String, String)> = rules
        .iter()
        .map(|r| {
            (
                format!("seccomp/builtin/{}.json", r.name),
                json_of(&spec(enhance_with_rules(&[r.name], json!({})))),
            )
        })
        .collect();
    let mut stale = check_all(&cases);
    // A golden file without a rule is stale too (a renamed or removed rule).
    let dir = support::crate_dir().join("tests/golden/seccomp/builtin");
    if let Ok(read) = std::fs::read_dir(&dir) {
        for entry in read.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let known = rules.iter().any(|r| format!("{}.json", r.name) == file);
            if !known {
                stale.push(format!(
                    "{}: no built-in seccomp rule of that name; delete it",
                    entry.path().display()
                ));
            }
        }
    }
    report(stale);
}

// ---------------------------------------------------------------------------------- semantics

#[test]
fn always_allow_behavior_modeling_and_runtime_default() {
    assert_eq!(
        json_of(&spec(json!({"mode": "AlwaysAllow"}))),
        r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#
    );
    assert_eq!(
        json_of(&spec(
            json!({"mode": "BehaviorModeling", "modelingOptions": {"duration": 5}})
        )),
        r#"{"defaultAction":"SCMP_ACT_LOG","syscalls":[{"names":["open","openat","openat2","close","read","write"],"action":"SCMP_ACT_ALLOW"}]}"#
    );
    assert_eq!(
        compile_setting(&spec(json!({"mode": "RuntimeDefault"}))),
        SeccompProfile::RuntimeDefault
    );
}

#[test]
fn varmor_example_profile_for_disallow_create_user_ns() {
    // vArmor's documented example, plus our explicit errnoRet, the clone(2) entry, and clone3(2)
    // answered ENOSYS (its flags cannot be filtered; glibc then falls back to clone).
    let text = "
apiVersion: crd.varmor.org/v1beta1
kind: VarmorPolicy
metadata:
  name: web
  namespace: demo
spec:
  target:
    kind: Deployment
    name: web
  policy:
    enforcer: Seccomp
    mode: EnhanceProtect
    enhanceProtect:
      hardeningRules:
      - disallow_create_user_ns
";
    assert_eq!(
        json_of(&parse(text)),
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["unshare"],"action":"SCMP_ACT_ERRNO","errnoRet":1,"args":[{"index":0,"value":268435456,"valueTwo":268435456,"op":"SCMP_CMP_MASKED_EQ"}]},{"names":["clone"],"action":"SCMP_ACT_ERRNO","errnoRet":1,"args":[{"index":0,"value":268435456,"valueTwo":268435456,"op":"SCMP_CMP_MASKED_EQ"}]},{"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#
    );
}

#[test]
fn allow_and_audit_switches_set_actions_and_the_log_flag() {
    for (allow, audit) in [(false, false), (false, true), (true, false), (true, true)] {
        let p = oci(&json_of(&spec(sample_enhance(allow, audit))));
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert!(p.architectures().is_none());
        let entries = p.syscalls().clone().expect("entries");
        let (builtin, raw): (Vec<_>, Vec<_>) =
            entries.iter().partition(|e| e.names() != &["ptrace"]);
        // clone3 always gets ENOSYS: not a violation, whatever the switches say.
        let (clone3, builtin): (Vec<_>, Vec<_>) =
            builtin.into_iter().partition(|e| e.names() == &["clone3"]);
        assert_eq!(clone3.len(), 1, "{clone3:?}");
        assert_eq!(
            (clone3[0].action(), clone3[0].errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(38))
        );
        assert_eq!(
            builtin.len(),
            8,
            "unshare, clone, userfaultfd, 4 x chmod-s, splice: {builtin:?}"
        );
        for e in &builtin {
            if allow {
                assert_eq!(
                    (e.action(), e.errno_ret()),
                    (LinuxSeccompAction::ScmpActLog, None),
                    "{e:?}"
                );
            } else {
                assert_eq!(
                    (e.action(), e.errno_ret()),
                    (LinuxSeccompAction::ScmpActErrno, Some(1)),
                    "{e:?}"
                );
            }
        }
        // Raw rules keep the user's action whatever the switches say.
        assert_eq!(raw.len(), 1);
        assert_eq!(
            (raw[0].action(), raw[0].errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(13))
        );
        let flags = p.flags().clone().unwrap_or_default();
        if audit {
            assert_eq!(flags, vec![LinuxSeccompFilterFlag::SeccompFilterFlagLog]);
        } else {
            assert!(flags.is_empty(), "{flags:?}");
        }
        // Entries with targets are skipped: no fchmodat entry tests S_IXUSR.
        let text = serde_json::to_string(&entries).expect("json");
        assert!(
            !text.contains("\"value\":64,"),
            "disable-chmod-x-bit has targets: {text}"
        );
    }
}

#[test]
fn privileged_does_not_change_the_profile_and_output_is_deterministic() {
    let mut privileged = sample_enhance(false, true);
    privileged["enhanceProtect"]["privileged"] = json!(true);
    let a = json_of(&spec(sample_enhance(false, true)));
    assert_eq!(json_of(&spec(privileged)), a);
    assert_eq!(json_of(&spec(sample_enhance(false, true))), a);
}

#[test]
fn raw_rules_are_split_per_name_kept_apart_from_builtins_and_deduplicated() {
    let p = oci(&json_of(&spec(raw_rules_policy())));
    let entries = p.syscalls().clone().expect("entries");
    let names: Vec<String> = entries.iter().map(|e| e.names().join(",")).collect();
    assert_eq!(
        names,
        [
            "userfaultfd",     // built-in
            "setsockopt",      // built-in, SO_ATTACH_FILTER
            "setsockopt",      // built-in, SO_ATTACH_REUSEPORT_CBPF
            "splice",          // built-in
            "kexec_load",      // raw[0], split per name, the repeated name dropped
            "kexec_file_load", // raw[0]
            "userfaultfd",     // raw[2]: no errnoRet, so not an exact duplicate (raw[1] is)
            "setsockopt",      // raw[3]: its own entry, not merged into a built-in one
            "personality",     // raw[4]
        ]
    );
    let builtin_setsockopt: Vec<_> = entries
        .iter()
        .filter(|e| e.names() == &["setsockopt"])
        .collect();
    assert_eq!(
        builtin_setsockopt[0].args().as_ref().map(Vec::len),
        Some(2),
        "built-in entry unchanged"
    );
    assert_eq!(
        builtin_setsockopt[2].args().as_ref().map(Vec::len),
        Some(1),
        "raw entry on its own"
    );
}

#[test]
fn contradicting_raw_rules_are_reported_at_their_field() {
    // Same syscall and conditions as the dirty-pipe entry, other action.
    let log_splice = enhance_with_rules(
        &["dirty-pipe-mitigation"],
        json!({"syscallRawRules": [{"names": ["splice"], "action": "SCMP_ACT_LOG"}]}),
    );
    let err = try_compile(&spec(log_splice), None).expect_err("contradiction");
    assert_eq!(err.len(), 1, "{err}");
    let e = err.iter().next().expect("one");
    assert_eq!(e.path, "spec.policy.enhanceProtect.syscallRawRules[0]");
    assert!(
        e.reason.contains("splice") && e.reason.contains("dirty-pipe-mitigation"),
        "{}",
        e.reason
    );

    // An unconditional rule with another action would silently override the conditional
    // chmod entries; a conditional rule with fewer conditions too.
    for raw in [
        json!({"names": ["chmod"], "action": "SCMP_ACT_LOG"}),
        json!({"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
               "args": [{"index": 1, "value": 2048, "valueTwo": 2048, "op": "SCMP_CMP_MASKED_EQ"}]}),
    ] {
        let p = enhance_with_rules(&["disable-chmod-s-bit"], json!({"syscallRawRules": [raw]}));
        let err = try_compile(&spec(p), None).expect_err("contradiction");
        assert!(
            err.iter()
                .all(|e| e.path == "spec.policy.enhanceProtect.syscallRawRules[0]"),
            "{err}"
        );
    }

    // A raw rule in DefenseInDepth that tries to block a syscall the model allows.
    let did = spec(defense_in_depth(
        json!({"profileType": "BehaviorModel",
               "syscallRawRules": [{"names": ["read"], "action": "SCMP_ACT_ERRNO"}]}),
        false,
    ));
    let err = try_compile(&did, Some(&model())).expect_err("contradiction");
    let e = err.iter().next().expect("one");
    assert_eq!(
        e.path,
        "spec.policy.defenseInDepth.seccomp.syscallRawRules[0]"
    );
    assert!(e.reason.contains("behaviour model"), "{}", e.reason);

    // Same effect with different spelling, or disjoint conditions: fine.
    let fine = enhance_with_rules(
        &["disable-chmod-s-bit", "disallow-userfaultfd-creation"],
        json!({"syscallRawRules": [
            {"names": ["userfaultfd"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["chmod"], "action": "SCMP_ACT_LOG",
             "args": [{"index": 1, "value": 73, "valueTwo": 73, "op": "SCMP_CMP_MASKED_EQ"}]},
        ]}),
    );
    try_compile(&spec(fine), None).expect("no contradiction");
}

#[test]
fn defense_in_depth_overrides_the_default_action_and_appends_raw_rules() {
    let raw = json!([{"names": ["getppid"], "action": "SCMP_ACT_ALLOW"}]);
    let deny = oci(&json_of(&spec(defense_in_depth(
        custom(raw.clone()),
        false,
    ))));
    assert_eq!(deny.default_action(), LinuxSeccompAction::ScmpActErrno);
    let allow = oci(&json_of(&spec(defense_in_depth(custom(raw), true))));
    assert_eq!(allow.default_action(), LinuxSeccompAction::ScmpActLog);
    let last = deny
        .syscalls()
        .clone()
        .expect("entries")
        .pop()
        .expect("one");
    assert_eq!(last.names(), &["getppid"]);

    let from_model = spec(defense_in_depth(
        json!({"profileType": "BehaviorModel"}),
        false,
    ));
    let SeccompProfile::Localhost { json } =
        try_compile(&from_model, Some(&model())).expect("model")
    else {
        panic!("Localhost");
    };
    assert_eq!(
        json, MODEL_PROFILE,
        "the model profile is already deny-by-default"
    );
}

#[test]
fn defense_in_depth_without_a_model_names_profile_type() {
    let from_model = spec(defense_in_depth(
        json!({"profileType": "BehaviorModel"}),
        false,
    ));
    for model in [None, Some(ModelProfiles::default())] {
        let err = try_compile(&from_model, model.as_ref()).expect_err("no model");
        let e = err.iter().next().expect("one");
        assert_eq!(e.path, "spec.policy.defenseInDepth.seccomp.profileType");
        assert!(e.reason.contains("no behaviour model"), "{}", e.reason);
    }
    let broken = ModelProfiles {
        app_armor: None,
        seccomp: Some("{\"defaultAction\":".into()),
    };
    let err = try_compile(&from_model, Some(&broken)).expect_err("broken model");
    assert_eq!(
        err.iter().next().expect("one").path,
        "spec.policy.defenseInDepth.seccomp.profileType"
    );
}

/// A context built by hand, for what validation would stop before the back end runs.
fn direct(spec: &VarmorPolicySpec) -> Result<SeccompProfile, FieldErrors> {
    let identity = PolicyIdentity::namespaced("demo", "web");
    let facts = NodeFacts::default();
    let ctx = Context {
        spec,
        identity: &identity,
        profile_name: identity.profile_name(),
        facts: &facts,
        model: None,
        enforcers: EnforcerSet::parse(&spec.policy.enforcer).expect("enforcer"),
        mode: spec.policy.mode,
        enhance: spec.policy.enhance_protect.clone().unwrap_or_default(),
    };
    compile::seccomp::compile(&ctx)
}

#[test]
fn the_back_end_reports_bad_values_itself() {
    let mut s = spec(
        json!({"mode": "DefenseInDepth", "defenseInDepth": {"seccomp": {"profileType": "Custom", "customProfile": "{}"}}}),
    );
    s.policy.defense_in_depth.as_mut().and_then(|d| d.seccomp.as_mut()).expect("seccomp").custom_profile =
        Some(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"SCMP_ACT_NOPE"}]}"#.into());
    let err = direct(&s).expect_err("bad custom profile");
    let e = err.iter().next().expect("one");
    assert_eq!(e.path, "spec.policy.defenseInDepth.seccomp.customProfile");
    assert!(
        e.reason.contains("syscalls[0].action") && e.reason.contains("SCMP_ACT_NOPE"),
        "{}",
        e.reason
    );

    let mut s = spec(sample_enhance(false, false));
    let raw = &mut s
        .policy
        .enhance_protect
        .as_mut()
        .expect("ep")
        .syscall_raw_rules;
    raw[0].action = "SCMP_ACT_BLOCK".into();
    raw.push(raw[0].clone());
    raw[1].action = "SCMP_ACT_ERRNO".into();
    raw[1].args = vec![varmor_policy::api::LinuxSeccompArg {
        index: 7,
        value: 1,
        value_two: 0,
        op: "EQ".into(),
    }];
    let err = direct(&s).expect_err("bad raw rules");
    let paths: Vec<&str> = err.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.policy.enhanceProtect.syscallRawRules[0].action",
            "spec.policy.enhanceProtect.syscallRawRules[1].args[0].index",
            "spec.policy.enhanceProtect.syscallRawRules[1].args[0].op",
        ]
    );
}

#[test]
fn defense_in_depth_without_a_seccomp_profile_is_always_allow() {
    let mut s = spec(defense_in_depth(custom(json!([])), false));
    s.policy.defense_in_depth.as_mut().expect("did").seccomp = None;
    assert_eq!(
        direct(&s).expect("compiles"),
        SeccompProfile::Localhost {
            json: r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#.into()
        }
    );
}

// ---------------------------------------------------------------------------------- kernel

/// Whether the kernel tests must be skipped here (saying why).
fn no_seccomp() -> bool {
    match available() {
        Ok(()) => false,
        Err(why) => support::skip_unless(
            false,
            &format!("loading seccomp filters in a child process ({why})"),
        ),
    }
}

fn filter(policy: Value) -> Filter {
    let json = json_of(&spec(policy));
    Filter::from_json(&json).unwrap_or_else(|e| panic!("runc would not load {json}: {e}"))
}

fn rules(names: &[&str]) -> Filter {
    filter(enhance_with_rules(names, json!({})))
}

/// The operation must work without a filter, or the test proves nothing; when the machine
/// forbids it, skip with the reason.
fn works_unfiltered(op: &Op) -> bool {
    match run(None, op) {
        Outcome::Ok => true,
        other => !support::skip_unless(
            false,
            &format!("{op:?} without a seccomp filter (got {other:?})"),
        ),
    }
}

const EPERM: Outcome = Outcome::Errno(libc::EPERM);

#[test]
fn disallow_create_user_ns_blocks_user_namespaces_only() {
    if no_seccomp() {
        return;
    }
    let f = rules(&["disallow-create-user-ns"]);
    let user = Op::Unshare(libc::CLONE_NEWUSER);
    let mount = Op::Unshare(libc::CLONE_NEWNS);
    let clone_user = Op::Clone(libc::CLONE_NEWUSER as libc::c_ulong);
    for op in [&user, &mount, &clone_user] {
        if !works_unfiltered(op) {
            return;
        }
    }
    assert_eq!(run(Some(&f), &user), EPERM);
    assert_eq!(
        run(
            Some(&f),
            &Op::Unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS)
        ),
        EPERM
    );
    assert_eq!(run(Some(&f), &clone_user), EPERM);
    assert_eq!(
        run(Some(&f), &mount),
        Outcome::Ok,
        "unshare(CLONE_NEWNS) must not be blocked"
    );
}

#[test]
fn disable_chmod_x_bit_blocks_execute_bits_only() {
    if no_seccomp() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("file");
    let file = std::fs::File::create(&path).expect("create");
    let f = rules(&["disable-chmod-x-bit"]);
    for mode in [0o755, 0o644] {
        for op in [
            Op::chmod(&path, mode),
            Op::fchmod(&file, mode),
            Op::fchmodat(&path, mode),
        ] {
            if !works_unfiltered(&op) {
                return;
            }
        }
    }
    for mode in [0o755, 0o700, 0o610, 0o601] {
        assert_eq!(
            run(Some(&f), &Op::chmod(&path, mode)),
            EPERM,
            "chmod {mode:o}"
        );
        assert_eq!(
            run(Some(&f), &Op::fchmod(&file, mode)),
            EPERM,
            "fchmod {mode:o}"
        );
        assert_eq!(
            run(Some(&f), &Op::fchmodat(&path, mode)),
            EPERM,
            "fchmodat {mode:o}"
        );
    }
    assert_eq!(run(Some(&f), &Op::chmod(&path, 0o644)), Outcome::Ok);
    assert_eq!(run(Some(&f), &Op::fchmod(&file, 0o644)), Outcome::Ok);
    assert_eq!(run(Some(&f), &Op::fchmodat(&path, 0o644)), Outcome::Ok);
    // fchmodat2 (Linux 6.6) is covered when the kernel has it.
    if run(None, &Op::fchmodat2(&path, 0o644)) == Outcome::Ok {
        assert_eq!(
            run(Some(&f), &Op::fchmodat2(&path, 0o755)),
            EPERM,
            "fchmodat2"
        );
        assert_eq!(
            run(Some(&f), &Op::fchmodat2(&path, 0o644)),
            Outcome::Ok,
            "fchmodat2"
        );
    }
}

#[test]
fn disable_chmod_s_bit_blocks_setuid_and_setgid() {
    if no_seccomp() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("file");
    std::fs::File::create(&path).expect("create");
    let f = rules(&["disable-chmod-s-bit"]);
    if !works_unfiltered(&Op::chmod(&path, 0o4755)) {
        return;
    }
    assert_eq!(run(Some(&f), &Op::chmod(&path, 0o4755)), EPERM);
    assert_eq!(run(Some(&f), &Op::chmod(&path, 0o2755)), EPERM);
    assert_eq!(run(Some(&f), &Op::fchmodat(&path, 0o4755)), EPERM);
    assert_eq!(run(Some(&f), &Op::chmod(&path, 0o755)), Outcome::Ok);
}

#[test]
fn dirty_pipe_mitigation_blocks_splice() {
    if no_seccomp() || !works_unfiltered(&Op::Splice) {
        return;
    }
    assert_eq!(
        run(Some(&rules(&["dirty-pipe-mitigation"])), &Op::Splice),
        EPERM
    );
}

#[test]
fn disallow_userfaultfd_creation_blocks_userfaultfd() {
    if no_seccomp() || !works_unfiltered(&Op::Userfaultfd) {
        return;
    }
    assert_eq!(
        run(
            Some(&rules(&["disallow-userfaultfd-creation"])),
            &Op::Userfaultfd
        ),
        EPERM
    );
}

#[test]
fn disallow_load_all_bpf_prog_blocks_prog_load_only() {
    if no_seccomp() {
        return;
    }
    let (load, map) = (Op::bpf_prog_load(), Op::bpf_map_create());
    if !works_unfiltered(&load) || !works_unfiltered(&map) {
        return;
    }
    let f = rules(&["disallow-load-all-bpf-prog"]);
    assert_eq!(run(Some(&f), &load), EPERM);
    assert_eq!(
        run(Some(&f), &map),
        Outcome::Ok,
        "BPF_MAP_CREATE must not be blocked"
    );
}

#[test]
fn disallow_load_bpf_via_setsockopt_blocks_filter_attachment_only() {
    if no_seccomp() {
        return;
    }
    let attach = Op::attach_filter(libc::SO_ATTACH_FILTER);
    let reuse = Op::SetsockoptInt(libc::SOL_SOCKET, libc::SO_REUSEADDR);
    if !works_unfiltered(&attach) || !works_unfiltered(&reuse) {
        return;
    }
    let f = rules(&["disallow-load-bpf-via-setsockopt"]);
    assert_eq!(run(Some(&f), &attach), EPERM);
    assert_eq!(
        run(Some(&f), &Op::attach_filter(libc::SO_ATTACH_REUSEPORT_CBPF)),
        EPERM
    );
    assert_eq!(
        run(Some(&f), &reuse),
        Outcome::Ok,
        "SO_REUSEADDR must not be blocked"
    );
}

#[test]
fn allow_violations_logs_instead_of_blocking() {
    if no_seccomp() || !works_unfiltered(&Op::Splice) {
        return;
    }
    for audit in [false, true] {
        let policy = enhance_with_rules(
            &["dirty-pipe-mitigation"],
            json!({"allowViolations": true, "auditViolations": audit}),
        );
        assert_eq!(
            run(Some(&filter(policy)), &Op::Splice),
            Outcome::Ok,
            "audit={audit}"
        );
    }
    // auditViolations alone keeps blocking; the LOG flag is accepted by the kernel.
    let policy = enhance_with_rules(&["dirty-pipe-mitigation"], json!({"auditViolations": true}));
    assert_eq!(run(Some(&filter(policy)), &Op::Splice), EPERM);
}

#[test]
fn syscall_raw_rules_block_with_their_own_errno() {
    if no_seccomp() {
        return;
    }
    let unix = Op::Socket(libc::AF_UNIX);
    let inet = Op::Socket(libc::AF_INET);
    if !works_unfiltered(&unix) || !works_unfiltered(&inet) {
        return;
    }
    let f = filter(enhance(json!({"syscallRawRules": [{
        "names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES,
        "args": [{"index": 0, "value": libc::AF_UNIX, "op": "SCMP_CMP_EQ"}],
    }]})));
    assert_eq!(run(Some(&f), &unix), Outcome::Errno(libc::EACCES));
    assert_eq!(run(Some(&f), &inet), Outcome::Ok);
}

#[test]
fn raw_rules_kept_apart_from_builtins_mean_what_was_written() {
    if no_seccomp() {
        return;
    }
    let reuse = Op::SetsockoptInt(libc::SOL_SOCKET, libc::SO_REUSEADDR);
    let keepalive = Op::SetsockoptInt(libc::SOL_SOCKET, libc::SO_KEEPALIVE);
    let attach = Op::attach_filter(libc::SO_ATTACH_FILTER);
    for op in [&reuse, &keepalive, &attach, &Op::Splice] {
        if !works_unfiltered(op) {
            return;
        }
    }
    // Block option SO_REUSEADDR (optname == 2) at any level, next to the built-in rule.
    let raw = json!({"names": ["setsockopt"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                     "args": [{"index": 2, "value": libc::SO_REUSEADDR, "op": "SCMP_CMP_EQ"}]});
    let f = filter(enhance_with_rules(
        &["disallow-load-bpf-via-setsockopt"],
        json!({"syscallRawRules": [raw]}),
    ));
    assert_eq!(run(Some(&f), &reuse), EPERM);
    assert_eq!(run(Some(&f), &attach), EPERM);
    assert_eq!(run(Some(&f), &keepalive), Outcome::Ok);

    // vArmor merges the raw args into the built-in entry; index 2 then repeats, runc OR-s
    // every condition, and every SOL_SOCKET option is blocked.
    let merged = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["setsockopt"],"action":"SCMP_ACT_ERRNO","args":[
        {"index":1,"value":1,"op":"SCMP_CMP_EQ"},{"index":2,"value":26,"op":"SCMP_CMP_EQ"},{"index":2,"value":2,"op":"SCMP_CMP_EQ"}]}]}"#;
    let merged = Filter::from_json(merged).expect("loads");
    assert_eq!(
        run(Some(&merged), &keepalive),
        EPERM,
        "the merged entry over-blocks"
    );

    // Merging conditions into an unconditional entry would narrow it; kept apart, splice stays
    // blocked whatever its flags.
    let raw = json!({"names": ["splice"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                     "args": [{"index": 5, "value": 1, "valueTwo": 1, "op": "SCMP_CMP_MASKED_EQ"}]});
    let f = filter(enhance_with_rules(
        &["dirty-pipe-mitigation"],
        json!({"syscallRawRules": [raw]}),
    ));
    assert_eq!(run(Some(&f), &Op::Splice), EPERM);
}

#[test]
fn defense_in_depth_denies_by_default() {
    if no_seccomp() {
        return;
    }
    if !works_unfiltered(&Op::Getppid) {
        return;
    }
    let deny = filter(defense_in_depth(custom(json!([])), false));
    assert_eq!(
        run(Some(&deny), &Op::Getpid),
        Outcome::Ok,
        "allowed by the custom profile"
    );
    assert_eq!(run(Some(&deny), &Op::Getppid), EPERM, "denied by default");
    assert_eq!(
        run(Some(&deny), &Op::Socket(libc::AF_UNIX)),
        Outcome::Ok,
        "conditional allow"
    );
    assert_eq!(
        run(Some(&deny), &Op::Socket(libc::AF_INET)),
        EPERM,
        "condition not met"
    );
    let raw = json!([{"names": ["getppid"], "action": "SCMP_ACT_ALLOW"}]);
    let with_raw = filter(defense_in_depth(custom(raw), false));
    assert_eq!(
        run(Some(&with_raw), &Op::Getppid),
        Outcome::Ok,
        "allowed by a raw rule"
    );
    let observe = filter(defense_in_depth(custom(json!([])), true));
    assert_eq!(
        run(Some(&observe), &Op::Getppid),
        Outcome::Ok,
        "allowViolations logs only"
    );
}

#[test]
fn behavior_modeling_blocks_nothing() {
    if no_seccomp() || !works_unfiltered(&Op::Splice) {
        return;
    }
    let f = filter(json!({"mode": "BehaviorModeling", "modelingOptions": {"duration": 5}}));
    assert_eq!(run(Some(&f), &Op::Splice), Outcome::Ok);
    assert_eq!(run(Some(&f), &Op::Getppid), Outcome::Ok);
}

#[test]
fn the_loader_follows_runc() {
    if no_seccomp() || !works_unfiltered(&Op::Splice) || !works_unfiltered(&Op::Getppid) {
        return;
    }
    // Unknown names are skipped; the rest of the entry still applies.
    let f = Filter::from_json(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["no_such_syscall","splice"],"action":"SCMP_ACT_ERRNO","errnoRet":22}]}"#,
    )
    .expect("loads");
    assert_eq!(run(Some(&f), &Op::Splice), Outcome::Errno(libc::EINVAL));
    // ERRNO without errnoRet is EPERM; KILL kills the thread with SIGSYS.
    let f = Filter::from_json(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["splice"],"action":"SCMP_ACT_ERRNO"},{"names":["getppid"],"action":"SCMP_ACT_KILL"}]}"#,
    )
    .expect("loads");
    assert_eq!(run(Some(&f), &Op::Splice), EPERM);
    assert_eq!(run(Some(&f), &Op::Getppid), Outcome::Signal(libc::SIGSYS));
    // Two rules with equal conditions and different actions: libseccomp refuses the profile,
    // which is why the compiler reports such raw rules.
    let clash = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["unshare"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":268435456,"valueTwo":268435456,"op":"SCMP_CMP_MASKED_EQ"}]},
        {"names":["unshare"],"action":"SCMP_ACT_LOG","args":[{"index":0,"value":268435456,"valueTwo":268435456,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#;
    assert!(
        Filter::from_json(clash).is_err(),
        "libseccomp accepted contradicting rules"
    );
}
