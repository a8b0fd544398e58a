//! The AppArmor back end: golden profiles for every mode, switch and built-in rule, each one
//! also compiled by the real `apparmor_parser`.
//!
//! Refresh the golden files with `UPDATE_GOLDEN=1 cargo test -p varmor-policy --test apparmor`
//! and read the diff before committing it.

mod support;

use support::apparmor::{check_profile, parser_available};
use varmor_policy::api::{
    AppArmorProfile as AppArmorSpec, AppArmorRawRules, AttackProtectionRules, DefenseInDepth,
    EnhanceProtect, ModelProfiles, ModelingOptions, Policy, PolicyMode, ProfileType, Target,
    TargetKind, VarmorPolicySpec,
};
use varmor_policy::bundle::AppArmorProfile;
use varmor_policy::catalog::{self, AppArmorLine, Category};
use varmor_policy::compile::Context;
use varmor_policy::enforcer::EnforcerSet;
use varmor_policy::{FieldErrors, NodeFacts, PolicyIdentity};

const NAME: &str = "varmor-demo-web";

fn identity() -> PolicyIdentity {
    PolicyIdentity::namespaced("demo", "web")
}

/// Node facts with two known disks.
fn facts() -> NodeFacts {
    NodeFacts {
        disk_devices: Some(vec!["vda".into(), "vda1".into()]),
    }
}

fn spec(mode: PolicyMode) -> VarmorPolicySpec {
    VarmorPolicySpec {
        target: Target {
            kind: TargetKind::Deployment,
            name: Some("web".into()),
            containers: Vec::new(),
            selector: None,
        },
        policy: Policy {
            enforcer: "AppArmor".into(),
            mode,
            enhance_protect: None,
            modeling_options: None,
            defense_in_depth: None,
        },
        update_existing_workloads: false,
    }
}

fn enhance(ep: EnhanceProtect) -> VarmorPolicySpec {
    let mut s = spec(PolicyMode::EnhanceProtect);
    s.policy.enhance_protect = Some(ep);
    s
}

fn defense(dd: DefenseInDepth) -> VarmorPolicySpec {
    let mut s = spec(PolicyMode::DefenseInDepth);
    s.policy.defense_in_depth = Some(dd);
    s
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Compiles through the public entry point (validation included).
fn compile_with(
    spec: &VarmorPolicySpec,
    facts: &NodeFacts,
    model: Option<&ModelProfiles>,
) -> AppArmorProfile {
    let bundle = varmor_policy::compile_with_model(spec, &identity(), facts, model)
        .unwrap_or_else(|e| panic!("the policy does not compile:\n{e}"));
    bundle
        .apparmor
        .expect("the AppArmor enforcer is on, so the bundle has an AppArmor profile")
}

fn compile(spec: &VarmorPolicySpec) -> AppArmorProfile {
    compile_with(spec, &facts(), None)
}

/// Calls the AppArmor back end directly, past validation, for inputs the back end itself
/// must reject.
fn backend(
    spec: &VarmorPolicySpec,
    model: Option<&ModelProfiles>,
) -> Result<AppArmorProfile, FieldErrors> {
    let identity = identity();
    let facts = facts();
    let ctx = Context {
        spec,
        identity: &identity,
        profile_name: identity.profile_name(),
        facts: &facts,
        model,
        enforcers: EnforcerSet::APPARMOR,
        mode: spec.policy.mode,
        enhance: spec.policy.enhance_protect.clone().unwrap_or_default(),
    };
    varmor_policy::compile::apparmor::compile(&ctx)
}

/// Collects golden-file and parser problems so one run reports all of them.
struct Checker {
    parse: bool,
    problems: Vec<String>,
}

impl Checker {
    fn new() -> Checker {
        Checker {
            parse: !support::skip_unless(parser_available(), "apparmor_parser"),
            problems: Vec::new(),
        }
    }

    /// Compares with `tests/golden/apparmor/<rel>` and runs the parser on the profile.
    fn check(&mut self, rel: &str, profile: &AppArmorProfile) {
        if let Err(e) = support::check_golden(&format!("apparmor/{rel}"), &profile.text) {
            self.problems.push(e);
        }
        if self.parse {
            if let Err(e) = check_profile(&profile.text) {
                self.problems
                    .push(format!("{rel}: {e}\n--- profile ---\n{}", profile.text));
            }
        }
    }

    fn finish(self) {
        assert!(
            self.problems.is_empty(),
            "{} problem(s):\n\n{}",
            self.problems.len(),
            self.problems.join("\n\n")
        );
    }
}

/// The body lines of the profile, trimmed, without comments.
fn rules(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn count(text: &str, line: &str) -> usize {
    rules(text).iter().filter(|l| **l == line).count()
}

#[test]
fn simple_modes() {
    let mut c = Checker::new();

    let p = compile(&spec(PolicyMode::AlwaysAllow));
    assert_eq!(p.name, NAME);
    assert!(!p.complain);
    assert!(p
        .text
        .starts_with("abi <abi/3.0>,\n#include <tunables/global>\n"));
    assert!(p.text.contains(&format!(
        "profile {NAME} flags=(attach_disconnected,mediate_deleted) {{\n"
    )));
    for r in [
        "file,",
        "capability,",
        "network,",
        "mount,",
        "remount,",
        "umount,",
        "pivot_root,",
        "ptrace,",
        "signal,",
        "dbus,",
        "unix,",
    ] {
        assert_eq!(count(&p.text, r), 1, "AlwaysAllow lacks {r}");
    }
    assert!(
        !p.text.contains("deny"),
        "AlwaysAllow denies something:\n{}",
        p.text
    );
    c.check("always_allow.apparmor", &p);

    let p = compile(&spec(PolicyMode::RuntimeDefault));
    assert!(!p.complain);
    for r in [
        "deny mount,".to_string(),
        "deny @{PROC}/{sysrq-trigger,mem,kmem,kcore} rwklx,".to_string(),
        "deny /sys/[^f]*/** wklx,".to_string(),
        "deny /sys/kernel/security/** rwklx,".to_string(),
        "signal (receive) peer=runc,".to_string(),
        format!("signal (send,receive) peer={NAME},"),
        format!("ptrace (trace,read,tracedby,readby) peer={NAME},"),
    ] {
        assert_eq!(
            count(&p.text, &r),
            1,
            "RuntimeDefault lacks {r}:\n{}",
            p.text
        );
    }
    c.check("runtime_default.apparmor", &p);

    let mut s = spec(PolicyMode::BehaviorModeling);
    s.policy.modeling_options = Some(ModelingOptions { duration: 30 });
    let p = compile(&s);
    assert!(
        p.complain,
        "a modeling profile must be loaded in complain mode"
    );
    assert!(p.text.contains(&format!(
        "profile {NAME} flags=(attach_disconnected,mediate_deleted,complain) {{"
    )));
    assert_eq!(
        rules(&p.text).len(),
        3,
        "a modeling profile has no rules:\n{}",
        p.text
    );
    c.check("behavior_modeling.apparmor", &p);

    // DefenseInDepth with only a seccomp profile: AppArmor falls back to AlwaysAllow, and says so.
    // (Validation rejects this for the AppArmor-only enforcer; with AppArmorSeccomp it is how
    // a seccomp-only DefenseInDepth policy renders, so call the back end directly.)
    let p = backend(&defense(DefenseInDepth::default()), None).expect("AlwaysAllow fallback");
    assert!(p
        .text
        .contains("# spec.policy.defenseInDepth.appArmor is not set"));
    assert_eq!(count(&p.text, "mount,"), 1);
    assert!(!p.complain);
    c.check("defense_in_depth_without_apparmor.apparmor", &p);

    c.finish();
}

/// A policy that uses every kind of built-in line: plain rules, exec rules, disk devices,
/// plus a raw rule.
fn every_line_kind(privileged: bool, allow: bool, audit: bool) -> VarmorPolicySpec {
    enhance(EnhanceProtect {
        hardening_rules: strings(&[
            "disallow-mount-procfs",
            "disable-cap-sys-admin",
            "disallow-debug-disk-device",
            "disallow-mount-disk-device",
        ]),
        attack_protection_rules: vec![AttackProtectionRules {
            rules: strings(&["disable-shell", "mitigate-sa-leak"]),
            targets: Vec::new(),
        }],
        vul_mitigation_rules: strings(&["runc-override-mitigation"]),
        app_armor_raw_rules: vec![AppArmorRawRules {
            rules: "/data/secret/** r,".into(),
            targets: Vec::new(),
        }],
        privileged,
        allow_violations: allow,
        audit_violations: audit,
        ..Default::default()
    })
}

#[test]
fn enhance_protect_switches() {
    let mut c = Checker::new();
    for privileged in [false, true] {
        for allow in [false, true] {
            for audit in [false, true] {
                let p = compile(&every_line_kind(privileged, allow, audit));
                let base = if privileged {
                    "privileged"
                } else {
                    "unprivileged"
                };
                let rel = format!("enhance_protect/{base}_allow-{allow}_audit-{audit}.apparmor");
                let q = format!(
                    "{}{}",
                    if audit { "audit " } else { "" },
                    if allow { "" } else { "deny " }
                );
                let x = if allow { "ix" } else { "x" };
                let mut expected = vec![
                    format!("{q}capability sys_admin,"),
                    format!("{q}mount fstype=proc,"),
                    format!("{q}/**/sh r{x},"),
                    format!("{q}/**/bash r{x},"),
                    format!("{q}/dev/vda rw,"),
                    format!("{q}/dev/vda1 rw,"),
                    format!("{q}mount /dev/vda,"),
                    format!("{q}/run/secrets/kubernetes.io/serviceaccount/** r,"),
                    format!("{q}/**/runc w,"),
                    // Raw rules are copied as written.
                    "/data/secret/** r,".to_string(),
                ];
                if privileged {
                    expected.extend(["mount,", "remount,", "pivot_root,"].map(String::from));
                    assert!(
                        !p.text.contains("@{PROC}"),
                        "{rel}: a privileged profile has no RuntimeDefault rules"
                    );
                } else {
                    expected.extend([
                        format!("{q}mount,"),
                        format!("{q}@{{PROC}}/* w,"),
                        format!("{q}@{{PROC}}/{{sysrq-trigger,mem,kmem,kcore}} rwkl{x},"),
                        format!("{q}/sys/fs/cg[^r]*/** wkl{x},"),
                        format!("{q}/sys/firmware/** rwkl{x},"),
                    ]);
                }
                for line in &expected {
                    assert_eq!(count(&p.text, line), 1, "{rel} lacks {line:?}:\n{}", p.text);
                }
                let denies = rules(&p.text)
                    .iter()
                    .filter(|l| l.starts_with("deny ") || l.starts_with("audit deny "))
                    .count();
                if allow {
                    assert_eq!(denies, 0, "{rel}: allowViolations must not deny anything");
                }
                let audited = rules(&p.text)
                    .iter()
                    .filter(|l| l.starts_with("audit "))
                    .count();
                assert_eq!(audited > 0, audit, "{rel}: audit rules iff auditViolations");
                assert!(
                    !p.complain,
                    "{rel}: EnhanceProtect is enforced; allowViolations only drops deny"
                );
                c.check(&rel, &p);
            }
        }
    }
    c.finish();
}

/// The section order inside an EnhanceProtect profile.
#[test]
fn enhance_protect_section_order() {
    let p = compile(&every_line_kind(false, false, false));
    let at = |s: &str| {
        p.text
            .find(s)
            .unwrap_or_else(|| panic!("no {s:?} in\n{}", p.text))
    };
    assert!(at("# Base rules") < at("# Hardening Rules"));
    assert!(at("# Hardening Rules") < at("# Attack Protection Rules"));
    assert!(at("# Attack Protection Rules") < at("# Vulnerability Mitigation Rules"));
    assert!(at("# Vulnerability Mitigation Rules") < at("# Custom Rules"));
    assert!(
        p.text.contains("\n  /data/secret/** r,\n"),
        "custom rules are indented two spaces"
    );
}

const TARGETS_POLICY: &str = r#"
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
    enforcer: AppArmor
    mode: EnhanceProtect
    enhanceProtect:
      hardeningRules:
      - disable-cap-sys-admin
      attackProtectionRules:
      - rules:
        - mitigate-sa-leak
      - rules:
        - disable-shell
        targets:
        - /usr/bin/curl
        - /usr/bin/wget
      - rules:
        - disable-shell
        targets:
        - /usr/bin/perl
      - rules:
        - mitigate-host-ip-leak
        targets:
        - /usr/bin/curl
        - /usr/bin/python3
      - rules:
        - block-access-to-metadata-service
        targets:
        - /usr/bin/node
      appArmorRawRules:
      - rules: |
          deny /etc/hosts r,
      - rules: |
          deny network inet6,
        targets:
        - /opt/app/bin/run
"#;

fn targets_policy(privileged: bool, allow: bool, audit: bool) -> VarmorPolicySpec {
    let docs = varmor_policy::parse_documents(TARGETS_POLICY);
    let doc = docs
        .into_iter()
        .next()
        .expect("one document")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut s = doc.spec();
    let ep = s.policy.enhance_protect.as_mut().expect("enhanceProtect");
    ep.privileged = privileged;
    ep.allow_violations = allow;
    ep.audit_violations = audit;
    s
}

/// The body of `profile NAME ... { ... }` in `text` (at any depth).
fn block<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text
        .find(&format!("profile {name} "))
        .unwrap_or_else(|| panic!("no profile {name} in\n{text}"));
    let rest = &text[start..];
    let indent = text[..start].rsplit('\n').next().unwrap_or_default();
    let end = rest.find(&format!("\n{indent}}}")).expect("closing brace");
    &rest[..end]
}

#[test]
fn targets_become_child_profiles() {
    let mut c = Checker::new();
    let p = compile(&targets_policy(false, false, false));
    let t = &p.text;
    // curl is named by two entries: one child with both rule sets, one transition.
    // wget and perl get disable-shell only and share a child; python3 gets the ARP rule only;
    // node's rule has no AppArmor content, so node gets no child.
    for line in [
        "/usr/bin/curl cx -> child_0,",
        "/usr/bin/wget cx -> child_1,",
        "/usr/bin/perl cx -> child_1,",
        "/usr/bin/python3 cx -> child_2,",
        "/opt/app/bin/run cx -> child_3,",
    ] {
        assert_eq!(count(t, line), 1, "{line:?}:\n{t}");
    }
    assert_eq!(
        rules(t).iter().filter(|l| l.contains(" cx -> ")).count(),
        5,
        "{t}"
    );
    assert!(
        !t.contains("/usr/bin/node"),
        "a target with no AppArmor rules needs no child:\n{t}"
    );
    for i in 0..4 {
        assert_eq!(
            count(t, &format!("signal (send) peer={NAME}//child_{i},")),
            1
        );
        assert_eq!(
            count(t, &format!("ptrace (trace,read) peer={NAME}//child_{i},")),
            1
        );
        let child = block(t, &format!("child_{i}"));
        assert!(
            child.contains(&format!("signal (receive) peer={NAME},")),
            "child_{i}:\n{child}"
        );
        assert!(
            child.contains(&format!("ptrace (tracedby,readby) peer={NAME},")),
            "child_{i}:\n{child}"
        );
        // The parent's rules stay in force for the targets.
        assert_eq!(
            count(child, "deny capability sys_admin,"),
            1,
            "child_{i}:\n{child}"
        );
        assert_eq!(count(child, "deny /etc/hosts r,"), 1, "child_{i}:\n{child}");
        assert_eq!(
            count(
                child,
                "deny /run/secrets/kubernetes.io/serviceaccount/** r,"
            ),
            1
        );
        assert_eq!(
            count(child, "deny mount,"),
            1,
            "child_{i} keeps the RuntimeDefault base"
        );
        assert!(child.contains(&format!("signal (send,receive) peer={NAME}//child_{i},")));
    }
    let child0 = block(t, "child_0");
    assert_eq!(count(child0, "deny /**/sh rx,"), 1);
    assert_eq!(count(child0, "deny /proc/**/net/arp r,"), 1);
    assert_eq!(count(child0, "/usr/bin/curl rix,"), 1);
    let child1 = block(t, "child_1");
    assert_eq!(count(child1, "deny /**/sh rx,"), 1);
    assert_eq!(count(child1, "deny /proc/**/net/arp r,"), 0);
    assert_eq!(count(child1, "/usr/bin/wget rix,"), 1);
    assert_eq!(count(child1, "/usr/bin/perl rix,"), 1);
    let child3 = block(t, "child_3");
    assert_eq!(count(child3, "deny network inet6,"), 1);
    assert_eq!(count(child3, "/opt/app/bin/run rix,"), 1);
    // Rules for targets stay out of the parent.
    let parent_only = &t[..t.find("profile child_0").unwrap()];
    assert_eq!(count(parent_only, "deny /**/sh rx,"), 0);
    assert_eq!(count(parent_only, "deny network inet6,"), 0);
    c.check("targets/unprivileged.apparmor", &p);

    // An allow rule on an exec pattern (`/**/sh rix`) and the exact `cx` of a target coexist;
    // the AlwaysAllow base with its `file,` too.
    let p = compile(&targets_policy(false, true, true));
    assert_eq!(count(&p.text, "audit /**/sh rix,"), 2, "{}", p.text);
    c.check("targets/unprivileged_allow_audit.apparmor", &p);
    let p = compile(&targets_policy(true, false, true));
    assert_eq!(
        count(&p.text, "file,"),
        5,
        "parent and four children:\n{}",
        p.text
    );
    c.check("targets/privileged_audit.apparmor", &p);
    c.finish();
}

#[test]
fn raw_rules_are_copied_line_by_line() {
    let mut c = Checker::new();
    let p = compile(&enhance(EnhanceProtect {
        app_armor_raw_rules: vec![
            AppArmorRawRules {
                rules: "deny /etc/shadow r,\n\n    audit deny /root/** rw,\n\tdeny capability net_raw,\n".into(),
                targets: Vec::new(),
            },
            AppArmorRawRules { rules: "deny network packet,".into(), targets: Vec::new() },
        ],
        ..Default::default()
    }));
    assert!(
        p.text.contains(
            "\n  # Custom Rules\n  deny /etc/shadow r,\n  audit deny /root/** rw,\n  deny capability net_raw,\n  deny network packet,\n"
        ),
        "{}",
        p.text
    );
    c.check("raw_rules.apparmor", &p);
    c.finish();
}

#[test]
fn disk_devices() {
    let mut c = Checker::new();
    let policy = enhance(EnhanceProtect {
        hardening_rules: strings(&["disallow-debug-disk-device", "disallow-mount-disk-device"]),
        ..Default::default()
    });

    let known = NodeFacts {
        disk_devices: Some(strings(&[
            "sda",
            "sda1",
            "nvme0n1",
            "nvme0n1p1",
            "sda",
            "odd[1]*",
        ])),
    };
    let p = compile_with(&policy, &known, None);
    for d in ["sda", "sda1", "nvme0n1", "nvme0n1p1"] {
        assert_eq!(
            count(&p.text, &format!("deny /dev/{d} rw,")),
            1,
            "{d}:\n{}",
            p.text
        );
        assert_eq!(
            count(&p.text, &format!("deny mount /dev/{d},")),
            1,
            "{d}:\n{}",
            p.text
        );
    }
    // A known name is a literal, even when it looks like a pattern.
    assert_eq!(
        count(&p.text, "deny /dev/odd\\[1\\]\\* rw,"),
        1,
        "{}",
        p.text
    );
    assert!(
        !p.text.contains("[a-z]"),
        "known devices need no fallback patterns:\n{}",
        p.text
    );
    c.check("disk_devices_known.apparmor", &p);

    let p = compile_with(&policy, &NodeFacts { disk_devices: None }, None);
    for pat in varmor_policy::identity::DEFAULT_DISK_DEVICE_PATTERNS {
        assert_eq!(
            count(&p.text, &format!("deny /dev/{pat} rw,")),
            1,
            "{pat}:\n{}",
            p.text
        );
        assert_eq!(
            count(&p.text, &format!("deny mount /dev/{pat},")),
            1,
            "{pat}:\n{}",
            p.text
        );
    }
    c.check("disk_devices_unknown.apparmor", &p);
    c.finish();
}

/// One golden profile per built-in rule that does something on AppArmor.
#[test]
fn every_builtin_rule() {
    let mut c = Checker::new();
    let mut covered = 0;
    let base = compile(&enhance(EnhanceProtect::default()));
    for rule in catalog::all().iter().filter(|r| r.supports_apparmor()) {
        let name = vec![rule.name.to_string()];
        let mut ep = EnhanceProtect::default();
        match rule.category {
            Category::Hardening => ep.hardening_rules = name,
            Category::AttackProtection => {
                ep.attack_protection_rules = vec![AttackProtectionRules {
                    rules: name,
                    targets: Vec::new(),
                }]
            }
            Category::VulMitigation => ep.vul_mitigation_rules = name,
        }
        let p = compile(&enhance(ep));
        for line in rule.apparmor {
            let expected = match line {
                AppArmorLine::Rule(r) => format!("deny {r}"),
                AppArmorLine::Exec(path) => format!("deny {path} rx,"),
                AppArmorLine::DiskDeviceFiles => "deny /dev/vda rw,".to_string(),
                AppArmorLine::DiskDeviceMounts => "deny mount /dev/vda,".to_string(),
            };
            // Once more than the base profile has it (`deny mount,` is in both).
            let want = count(&base.text, &expected) + 1;
            if count(&p.text, &expected) != want {
                c.problems
                    .push(format!("{}: the profile lacks {expected:?}", rule.name));
            }
        }
        c.check(&format!("builtin/{}.apparmor", rule.name), &p);
        covered += 1;
    }
    assert!(
        covered > 60,
        "only {covered} built-in rules support AppArmor?"
    );
    c.finish();
}

/// A hand-written deny-by-default profile, as a user would put in `customProfile`.
const CUSTOM: &str = "## my web profile
abi <abi/3.0>,
#include <tunables/global>

profile varmor-demo-web flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>

  /usr/local/bin/web ix,
  /usr/bin/curl ix,
  /etc/web/** r,
  /srv/www/{html,static}/** r,
  owner /tmp/** rw,
  network inet stream,
  capability net_bind_service,
  signal (receive) peer=unconfined,
  signal (send,receive) peer=varmor-demo-web,
}
";

fn custom(text: &str, raw: Vec<AppArmorRawRules>, allow: bool) -> VarmorPolicySpec {
    defense(DefenseInDepth {
        app_armor: Some(AppArmorSpec {
            profile_type: ProfileType::Custom,
            custom_profile: Some(text.into()),
            app_armor_raw_rules: raw,
        }),
        seccomp: None,
        allow_violations: allow,
    })
}

fn defense_raw_rules() -> Vec<AppArmorRawRules> {
    vec![
        AppArmorRawRules {
            rules: "/var/cache/web/** rw,".into(),
            targets: Vec::new(),
        },
        AppArmorRawRules {
            rules: "deny network inet stream,".into(),
            targets: strings(&["/usr/bin/curl"]),
        },
    ]
}

#[test]
fn defense_in_depth_custom() {
    let mut c = Checker::new();
    let p = compile(&custom(CUSTOM, Vec::new(), false));
    assert!(!p.complain);
    assert_eq!(
        p.text, CUSTOM,
        "a custom profile without raw rules is used as written"
    );
    c.check("defense_in_depth/custom.apparmor", &p);

    let p = compile(&custom(CUSTOM, defense_raw_rules(), false));
    let t = &p.text;
    assert!(t.starts_with("## my web profile\nabi <abi/3.0>,\n"), "{t}");
    assert_eq!(
        count(t, "/var/cache/web/** rw,"),
        2,
        "parent and child:\n{t}"
    );
    assert_eq!(count(t, "/usr/bin/curl cx -> child_0,"), 1, "{t}");
    let child = block(t, "child_0");
    // The parent's own exec rule for the target would conflict with the transition; the
    // child keeps it.
    let parent_only = &t[..t.find("profile child_0").unwrap()];
    assert_eq!(count(parent_only, "/usr/bin/curl ix,"), 0, "{t}");
    assert_eq!(count(child, "/usr/bin/curl ix,"), 1, "{child}");
    assert_eq!(count(child, "deny network inet stream,"), 1, "{child}");
    assert_eq!(
        count(child, "/etc/web/** r,"),
        1,
        "the child keeps the parent's rules:\n{child}"
    );
    assert_eq!(count(child, "/usr/bin/curl rix,"), 1, "{child}");
    assert_eq!(
        count(t, "deny network inet stream,"),
        1,
        "the target's rule stays out of the parent"
    );
    c.check("defense_in_depth/custom_raw_rules.apparmor", &p);

    let p = compile(&custom(CUSTOM, defense_raw_rules(), true));
    assert!(
        p.complain,
        "allowViolations loads the profile in complain mode"
    );
    assert!(p.text.contains(&format!(
        "profile {NAME} flags=(attach_disconnected,mediate_deleted,complain) {{"
    )));
    assert!(
        block(&p.text, "child_0").contains("flags=(attach_disconnected,mediate_deleted,complain)")
    );
    c.check("defense_in_depth/custom_allow_violations.apparmor", &p);

    // A profile without flags gets them for complain mode.
    let bare = "abi <abi/3.0>,\n#include <tunables/global>\nprofile varmor-demo-web {\n  #include <abstractions/base>\n  file,\n}\n";
    let p = compile(&custom(bare, Vec::new(), true));
    assert!(p.complain);
    assert!(
        p.text
            .contains("profile varmor-demo-web flags=(complain) {"),
        "{}",
        p.text
    );
    c.check(
        "defense_in_depth/custom_without_flags_allow_violations.apparmor",
        &p,
    );
    c.finish();
}

/// A profile as the behaviour model produces it.
const MODEL: &str = "abi <abi/3.0>,
#include <tunables/global>

profile varmor-demo-web flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>

  /usr/bin/curl ix,
  /usr/local/bin/web ix,
  /etc/hosts r,
  /etc/ssl/certs/** r,
  owner /tmp/** rw,
  capability net_bind_service,
  network,
  ptrace (trace,read,tracedby,readby) peer=varmor-demo-web,
  signal (receive) peer=unconfined,
  signal (send,receive) peer=varmor-demo-web,
  umount,
}
";

fn model_policy(raw: Vec<AppArmorRawRules>) -> VarmorPolicySpec {
    defense(DefenseInDepth {
        app_armor: Some(AppArmorSpec {
            profile_type: ProfileType::BehaviorModel,
            custom_profile: None,
            app_armor_raw_rules: raw,
        }),
        seccomp: None,
        allow_violations: false,
    })
}

#[test]
fn defense_in_depth_behavior_model() {
    let mut c = Checker::new();
    let model = ModelProfiles {
        app_armor: Some(MODEL.into()),
        seccomp: None,
    };
    let p = compile_with(&model_policy(Vec::new()), &facts(), Some(&model));
    assert_eq!(p.text, MODEL);
    c.check("defense_in_depth/behavior_model.apparmor", &p);
    let p = compile_with(&model_policy(defense_raw_rules()), &facts(), Some(&model));
    assert_eq!(count(&p.text, "/usr/bin/curl cx -> child_0,"), 1);
    assert_eq!(count(&p.text, "/etc/ssl/certs/** r,"), 2);
    c.check("defense_in_depth/behavior_model_raw_rules.apparmor", &p);
    c.finish();

    let err = backend(&model_policy(Vec::new()), None).expect_err("no model yet");
    let e = err.iter().next().expect("one error");
    assert_eq!(e.path, "spec.policy.defenseInDepth.appArmor.profileType");
    assert!(e.reason.contains("no behaviour model"), "{e}");
}

#[test]
fn custom_profile_must_carry_the_profile_name() {
    let other = CUSTOM.replace("profile varmor-demo-web ", "profile my-profile ");
    let err = backend(&custom(&other, Vec::new(), false), None).expect_err("wrong name");
    let e = err.iter().next().expect("one error");
    assert_eq!(e.path, "spec.policy.defenseInDepth.appArmor.customProfile");
    assert!(
        e.reason.contains("\"my-profile\"") && e.reason.contains(NAME),
        "{e}"
    );

    let err = backend(
        &custom("/usr/bin/web {\n  file,\n}\n", Vec::new(), false),
        None,
    )
    .expect_err("no profile keyword");
    assert_eq!(
        err.iter().next().unwrap().path,
        "spec.policy.defenseInDepth.appArmor.customProfile"
    );
}

#[test]
fn targets_must_be_exact_absolute_paths() {
    let spec = enhance(EnhanceProtect {
        attack_protection_rules: vec![AttackProtectionRules {
            rules: strings(&["disable-shell"]),
            targets: strings(&["/usr/bin/cu*", "curl"]),
        }],
        app_armor_raw_rules: vec![AppArmorRawRules {
            rules: "deny network,".into(),
            targets: strings(&["/usr/bin/ok", "/usr/{bin,sbin}/x"]),
        }],
        ..Default::default()
    });
    let err = backend(&spec, None).expect_err("pattern targets");
    let paths: Vec<&str> = err.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.policy.enhanceProtect.attackProtectionRules[0].targets[0]",
            "spec.policy.enhanceProtect.attackProtectionRules[0].targets[1]",
            "spec.policy.enhanceProtect.appArmorRawRules[0].targets[1]",
        ]
    );

    // Why: the parser rejects a pattern transition next to the base profile's `file,`.
    if !support::skip_unless(parser_available(), "apparmor_parser") {
        let ok = compile(&enhance(EnhanceProtect {
            attack_protection_rules: vec![AttackProtectionRules {
                rules: strings(&["disable-shell"]),
                targets: strings(&["/usr/bin/curl"]),
            }],
            ..Default::default()
        }));
        let globbed = ok.text.replace("/usr/bin/curl cx", "/usr/bin/cu* cx");
        assert!(
            check_profile(&globbed).is_err(),
            "apparmor_parser accepted a pattern cx next to file,"
        );
    }
}

/// The parser check is real: a broken raw rule makes it fail.
#[test]
fn parser_rejects_invalid_raw_rules() {
    if support::skip_unless(parser_available(), "apparmor_parser") {
        return;
    }
    let p = backend(
        &enhance(EnhanceProtect {
            app_armor_raw_rules: vec![AppArmorRawRules {
                rules: "deny /etc/shadow rq,".into(),
                targets: Vec::new(),
            }],
            ..Default::default()
        }),
        None,
    )
    .expect("raw rules are not checked by the compiler");
    let err = check_profile(&p.text).expect_err("apparmor_parser accepted an invalid rule");
    assert!(err.contains("apparmor_parser failed"), "{err}");
    check_profile(&p.text.replace("rq,", "r,")).expect("the same profile with a valid rule parses");
}
