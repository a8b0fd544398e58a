//! BPF back end: golden rule sets for every mode and every built-in rule, the reference matcher
//! on the attacks each rule is for, and property tests that the kernel-side tables agree with
//! the reference semantics.

mod support;

use std::net::IpAddr;

use proptest::prelude::*;
use serde_json::Value;
use varmor_policy::api::{PolicyMode, VarmorPolicySpec};
use varmor_policy::automaton::Automaton;
use varmor_policy::bundle::{BpfMode, BpfProfile};
use varmor_policy::catalog;
use varmor_policy::decide::{decide, decide_with_tables, Access, Decision, EventAction};
use varmor_policy::glob::Pattern;
use varmor_policy::names::{mount, perm, ptrace};
use varmor_policy::{compile, parse_documents, NodeFacts, PolicyIdentity};

fn spec(yaml: &str) -> VarmorPolicySpec {
    let doc = parse_documents(yaml)
        .into_iter()
        .next()
        .expect("one document")
        .expect("valid document");
    doc.spec()
}

fn policy(mode: &str, enhance: &str) -> String {
    format!(
        "apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\nmetadata:\n  name: web\n  namespace: demo\nspec:\n  target:\n    kind: Deployment\n    name: web\n  policy:\n    enforcer: BPF\n    mode: {mode}\n{enhance}"
    )
}

fn enhance(body: &str) -> String {
    format!("    enhanceProtect:\n{body}")
}

fn bpf_of(yaml: &str) -> BpfProfile {
    bpf_with(yaml, &NodeFacts::default())
}

fn bpf_with(yaml: &str, facts: &NodeFacts) -> BpfProfile {
    let bundle = compile(
        &spec(yaml),
        &PolicyIdentity::namespaced("demo", "web"),
        facts,
    )
    .unwrap_or_else(|e| panic!("compile failed:\n{e}"));
    bundle.bpf.expect("BPF profile")
}

/// The rule set as readable YAML: tables replaced by their shape.
fn view(p: &BpfProfile) -> String {
    let mut v = serde_json::to_value(p).expect("serialize");
    for key in ["pathAutomaton", "mountAutomaton"] {
        let a: Automaton = serde_json::from_value(v[key].clone()).expect("automaton");
        v[key] = serde_json::json!({
            "states": a.state_count,
            "classes": a.class_count,
            "walks": a.starts.len(),
            "matchSets": a.match_sets,
        });
    }
    if let Value::Object(m) = &mut v {
        m.remove("pathVerdicts");
    }
    serde_yaml::to_string(&v).expect("yaml")
}

#[test]
fn golden_modes_and_switches() {
    let facts = NodeFacts {
        disk_devices: Some(vec!["vda".into(), "vda1".into()]),
    };
    let mut cases: Vec<(String, String)> = vec![
        ("mode-always-allow".into(), policy("AlwaysAllow", "")),
        ("mode-runtime-default".into(), policy("RuntimeDefault", "")),
        (
            "mode-behavior-modeling".into(),
            policy(
                "BehaviorModeling",
                "    modelingOptions:\n      duration: 30\n",
            ),
        ),
    ];
    for (allow, audit) in [(false, false), (false, true), (true, false), (true, true)] {
        cases.push((
            format!("enhance-allow-{allow}-audit-{audit}"),
            policy(
                "EnhanceProtect",
                &enhance(&format!(
                    "      hardeningRules: [disable-cap-all, disallow-umount]\n      attackProtectionRules:\n      - rules: [disable-shell, mitigate-sa-leak]\n      allowViolations: {allow}\n      auditViolations: {audit}\n"
                )),
            ),
        ));
    }
    cases.push((
        "enhance-privileged".into(),
        policy(
            "EnhanceProtect",
            &enhance("      privileged: true\n      hardeningRules: [disallow-mount, disallow-mount-procfs, disallow-mount-disk-device]\n"),
        ),
    ));
    cases.push((
        "enhance-raw-rules".into(),
        policy(
            "EnhanceProtect",
            &enhance(
                r#"      attackProtectionRules:
      - rules: [disable-wget]
        targets: [/usr/bin/python3]
      bpfRawRules:
        files:
        - pattern: /etc/{passwd,shadow}
          permissions: [read, write]
        - pattern: "*.key"
          permissions: [all]
        processes:
        - pattern: /usr/bin/nc
          permissions: [exec]
        network:
          sockets:
          - domains: [inet, inet6]
            types: [raw]
          - protocols: [icmp]
          egress:
            toDestinations:
            - ip: localhost
              ports:
              - port: 22
            - cidr: 10.96.0.0/12
              ports:
              - port: 80
              - port: 8000
                endPort: 8080
            - ip: pod-self
            - ip: unspecified
              ports:
              - port: 9000
            toServices:
            - namespace: kube-system
              name: kube-dns
            toPods:
            - podSelector:
                matchLabels:
                  app: db
              ports:
              - port: 5432
        ptrace:
          strictMode: true
          permissions: [trace, readby]
        mounts:
        - sourcePattern: /dev/**
          fstype: ext4
          flags: [rw, nosuid]
        - sourcePattern: "**"
          fstype: "*"
          flags: [umount]
"#,
            ),
        ),
    ));
    let mut stale = Vec::new();
    for (name, yaml) in &cases {
        let p = bpf_with(yaml, &facts);
        if let Err(e) = support::check_golden(&format!("bpf/{name}.yaml"), &view(&p)) {
            stale.push(e);
        }
    }
    assert!(stale.is_empty(), "{}", stale.join("\n"));
}

#[test]
fn golden_every_builtin_rule() {
    let facts = NodeFacts {
        disk_devices: Some(vec!["sda".into(), "nvme0n1".into()]),
    };
    let mut stale = Vec::new();
    let mut covered = 0;
    for rule in catalog::all().iter().filter(|r| r.supports_bpf()) {
        let list = match rule.category {
            catalog::Category::Hardening => format!("      hardeningRules: [{}]\n", rule.name),
            catalog::Category::AttackProtection => format!(
                "      attackProtectionRules:\n      - rules: [{}]\n",
                rule.name
            ),
            catalog::Category::VulMitigation => {
                format!("      vulMitigationRules: [{}]\n", rule.name)
            }
        };
        // Privileged, so the rule stands alone (no RuntimeDefault base) and mount rules show.
        let yaml = policy(
            "EnhanceProtect",
            &enhance(&format!(
                "      privileged: true\n      auditViolations: true\n{list}"
            )),
        );
        let p = bpf_with(&yaml, &facts);
        let total = p.capabilities.len()
            + p.files.len()
            + p.sockets.len()
            + p.egress.len()
            + p.egress_selectors.len()
            + p.ptrace.len()
            + p.mounts.len();
        assert!(total > 0, "{} produced no BPF rule", rule.name);
        covered += 1;
        if let Err(e) = support::check_golden(&format!("bpf/builtin/{}.yaml", rule.name), &view(&p))
        {
            stale.push(e);
        }
    }
    assert!(covered >= 60, "only {covered} built-in rules support BPF");
    assert!(stale.is_empty(), "{}", stale.join("\n"));
}

fn ep(body: &str) -> BpfProfile {
    bpf_of(&policy("EnhanceProtect", &enhance(body)))
}

fn file(path: &str, permissions: u32) -> Access {
    Access::File {
        path: path.into(),
        permissions,
    }
}

fn denied(p: &BpfProfile, a: &Access) -> bool {
    let v = decide(p, a);
    assert_eq!(
        decide_with_tables(p, a),
        (v.decision, v.event),
        "tables disagree with the reference on {a:?}"
    );
    v.decision == Decision::Deny
}

#[test]
fn builtin_rules_stop_their_attacks() {
    let p = ep("      auditViolations: true\n      hardeningRules: [disallow-write-core-pattern, disallow-access-kallsyms, disable-cap-net-raw, disallow-umount, disallow-mount-procfs, disallow-access-procfs-root]\n      attackProtectionRules:\n      - rules: [mitigate-sa-leak, disable-shell, block-access-to-metadata-service, disable-icmp, disable-access-ssh-dir, disable-write-etc]\n      vulMitigationRules: [runc-override-mitigation, copy-fail-mitigation, cgroups-lxcfs-escape-mitigation]\n");
    assert!(denied(
        &p,
        &file("/proc/sys/kernel/core_pattern", perm::WRITE)
    ));
    assert!(!denied(
        &p,
        &file("/proc/sys/kernel/core_pattern", perm::READ)
    ));
    assert!(denied(&p, &file("/proc/kallsyms", perm::READ)));
    assert!(denied(&p, &Access::Capability(13)));
    assert!(!denied(&p, &Access::Capability(0)));
    assert!(denied(
        &p,
        &Access::Umount {
            path: "/mnt".into()
        }
    ));
    assert!(denied(
        &p,
        &Access::Mount {
            source: "/proc".into(),
            fstype: "".into(),
            flags: mount::BIND
        }
    ));
    assert!(
        denied(
            &p,
            &Access::Mount {
                source: "tmpfs".into(),
                fstype: "tmpfs".into(),
                flags: 0
            }
        ),
        "RuntimeDefault base denies new mounts"
    );
    assert!(denied(
        &p,
        &Access::Ptrace {
            permission: ptrace::READ,
            external: true,
            peer_is_host: false
        }
    ));
    assert!(!denied(
        &p,
        &Access::Ptrace {
            permission: ptrace::READ,
            external: false,
            peer_is_host: false
        }
    ));
    assert!(denied(
        &p,
        &file(
            "/run/secrets/kubernetes.io/serviceaccount/token",
            perm::READ
        )
    ));
    assert!(denied(
        &p,
        &Access::Exec {
            path: "/bin/sh".into()
        }
    ));
    assert!(denied(
        &p,
        &Access::Exec {
            path: "/usr/bin/bash".into()
        }
    ));
    assert!(!denied(
        &p,
        &Access::Exec {
            path: "/usr/bin/bashful".into()
        }
    ));
    assert!(
        !denied(&p, &file("/bin/sh", perm::READ)),
        "exec rules leave reading the binary alone"
    );
    let meta = |ip: &str| Access::Connect {
        address: ip.parse().expect("ip"),
        port: 80,
        pod_addresses: vec![],
    };
    assert!(denied(&p, &meta("169.254.169.254")));
    assert!(
        denied(&p, &meta("::ffff:169.254.169.254")),
        "IPv4-mapped addresses are the same host"
    );
    assert!(denied(&p, &meta("fd00:ec2::254")));
    assert!(!denied(&p, &meta("169.254.169.253")));
    assert!(denied(
        &p,
        &Access::Socket {
            domain: 2,
            type_: 3,
            protocol: 1
        }
    ));
    assert!(denied(
        &p,
        &Access::Socket {
            domain: 10,
            type_: 2,
            protocol: 58
        }
    ));
    assert!(!denied(
        &p,
        &Access::Socket {
            domain: 2,
            type_: 1,
            protocol: 0
        }
    ));
    assert!(
        denied(
            &p,
            &Access::Socket {
                domain: 38,
                type_: 5,
                protocol: 0
            }
        ),
        "AF_ALG"
    );
    assert!(denied(&p, &file("/root/.ssh/id_rsa", perm::READ)));
    assert!(denied(&p, &file("/home/u/.ssh", perm::READ)));
    assert!(!denied(&p, &file("/home/u/.sshd", perm::READ)));
    assert!(denied(&p, &file("/etc/hosts", perm::WRITE)));
    assert!(!denied(&p, &file("/etc/hosts", perm::READ)));
    assert!(denied(&p, &file("/usr/local/bin/runc", perm::APPEND)));
    assert!(denied(
        &p,
        &file("/sys/fs/cgroup/devices/kubepods/devices.allow", perm::WRITE)
    ));
    assert!(denied(
        &p,
        &file("/sys/fs/cgroup/devices/cgroup.procs", perm::WRITE)
    ));
    assert!(
        !denied(&p, &file("/sys/fs/cgroup/memory/cgroup.procs", perm::WRITE)),
        "only the devices controller"
    );
    // auditViolations: denials are reported.
    assert_eq!(
        decide(&p, &file("/proc/kallsyms", perm::READ)).event,
        Some(EventAction::Denied)
    );
}

#[test]
fn exact_patterns_are_exact() {
    let p = ep("      bpfRawRules:\n        files:\n        - pattern: /etc/passwd\n          permissions: [read]\n");
    assert!(denied(&p, &file("/etc/passwd", perm::READ)));
    assert!(
        !denied(&p, &file("/etc/passwd-", perm::READ)),
        "vArmor would deny this (prefix match)"
    );
    assert!(!denied(&p, &file("/etc/passwdX", perm::READ)));
    assert!(
        denied(&p, &file("/etc/passwd", perm::READ | perm::WRITE)),
        "a read rule blocks O_RDWR"
    );
}

#[test]
fn switches_decide_deny_audit_and_allow() {
    let body = |allow: bool, audit: bool| {
        format!("      allowViolations: {allow}\n      auditViolations: {audit}\n      hardeningRules: [disable-cap-sys-admin]\n")
    };
    let cap = Access::Capability(21);
    let v = decide(&ep(&body(false, false)), &cap);
    assert_eq!((v.decision, v.event), (Decision::Deny, None));
    let v = decide(&ep(&body(false, true)), &cap);
    assert_eq!(
        (v.decision, v.event),
        (Decision::Deny, Some(EventAction::Denied))
    );
    let v = decide(&ep(&body(true, true)), &cap);
    assert_eq!(
        (v.decision, v.event),
        (Decision::Allow, Some(EventAction::Audit))
    );
    let v = decide(&ep(&body(true, false)), &cap);
    assert_eq!(
        (v.decision, v.event),
        (Decision::Allow, Some(EventAction::Allowed))
    );
    assert_eq!(
        v.rule.expect("rule").builtin.as_deref(),
        Some("disable-cap-sys-admin")
    );
}

#[test]
fn no_capability_bypass_for_full_capability_sets() {
    // vArmor lets a task holding every capability skip capability rules; our semantics have no
    // such exception: the verdict depends on the capability asked for, nothing else.
    let p = ep("      hardeningRules: [disable-cap-all]\n");
    for cap in 0..=40 {
        assert!(denied(&p, &Access::Capability(cap)), "capability {cap}");
    }
}

#[test]
fn egress_rules() {
    let p = ep(r#"      bpfRawRules:
        network:
          egress:
            toDestinations:
            - ip: localhost
              ports:
              - port: 22
            - cidr: 10.96.0.0/12
              ports:
              - port: 8000
                endPort: 8080
            - ip: pod-self
            - ip: unspecified
            - ip: "2001:db8::1"
"#);
    let c = |ip: &str, port: u16| Access::Connect {
        address: ip.parse::<IpAddr>().expect("ip"),
        port,
        pod_addresses: vec![
            "10.244.1.7".parse().expect("ip"),
            "fd00::7".parse().expect("ip"),
        ],
    };
    assert!(denied(&p, &c("127.0.0.1", 22)));
    assert!(denied(&p, &c("::1", 22)));
    assert!(!denied(&p, &c("127.0.0.1", 23)));
    assert!(denied(&p, &c("10.100.0.1", 8080)));
    assert!(!denied(&p, &c("10.100.0.1", 8081)));
    assert!(!denied(&p, &c("10.112.0.1", 8000)), "outside the /12");
    assert!(denied(&p, &c("10.244.1.7", 1)));
    assert!(denied(&p, &c("fd00::7", 65535)));
    assert!(denied(&p, &c("0.0.0.0", 80)));
    assert!(denied(&p, &c("::", 80)));
    assert!(denied(&p, &c("2001:db8::1", 443)));
    assert!(!denied(&p, &c("2001:db8::2", 443)));
}

#[test]
fn ptrace_and_mount_rules() {
    let p = ep("      privileged: true\n      bpfRawRules:\n        ptrace:\n          permissions: [traceby]\n        mounts:\n        - sourcePattern: /dev/sd*\n          fstype: ext4\n          flags: [rw]\n        - sourcePattern: /mnt/**\n          fstype: \"*\"\n          flags: [umount]\n");
    let traced = |external, host| Access::Ptrace {
        permission: ptrace::TRACEBY,
        external,
        peer_is_host: host,
    };
    assert!(denied(&p, &traced(true, false)));
    assert!(
        !denied(&p, &traced(false, false)),
        "not strict: same container allowed"
    );
    assert!(
        !denied(&p, &traced(true, true)),
        "the host may always trace"
    );
    assert!(!denied(
        &p,
        &Access::Ptrace {
            permission: ptrace::TRACE,
            external: true,
            peer_is_host: false
        }
    ));
    let m = |src: &str, fs: &str, flags| Access::Mount {
        source: src.into(),
        fstype: fs.into(),
        flags,
    };
    assert!(
        denied(&p, &m("/dev/sdb1", "ext4", 0)),
        "rw = mounts without MS_RDONLY"
    );
    assert!(!denied(&p, &m("/dev/sdb1", "ext4", mount::RDONLY)));
    assert!(!denied(&p, &m("/dev/sdb1", "xfs", 0)));
    assert!(!denied(&p, &m("/dev/vda", "ext4", 0)));
    assert!(denied(
        &p,
        &Access::Umount {
            path: "/mnt/data".into()
        }
    ));
    assert!(!denied(
        &p,
        &Access::Umount {
            path: "/data".into()
        }
    ));
}

#[test]
fn complain_mode_allows_and_reports_everything() {
    let p = bpf_of(&policy(
        "BehaviorModeling",
        "    modelingOptions:\n      duration: 10\n",
    ));
    assert_eq!(p.mode, BpfMode::Complain);
    let v = decide(&p, &Access::Capability(21));
    assert_eq!(
        (v.decision, v.event),
        (Decision::Allow, Some(EventAction::Allowed))
    );
}

#[test]
fn a_thousand_rules_per_type() {
    let mut body = String::from("      bpfRawRules:\n        files:\n");
    for i in 0..1024 {
        body.push_str(&format!(
            "        - pattern: /data/app{i}/**/*.key\n          permissions: [read]\n"
        ));
    }
    body.push_str("        mounts:\n");
    for i in 0..1024 {
        body.push_str(&format!("        - sourcePattern: /dev/disk{i}\n          fstype: \"*\"\n          flags: [all]\n"));
    }
    let p = ep(&body);
    assert!(p.files.len() > 1024);
    assert!(denied(&p, &file("/data/app777/x/y/z.key", perm::READ)));
    assert!(!denied(&p, &file("/data/app777/x/y/z.pem", perm::READ)));
    assert!(!denied(&p, &file("/data/app1024/z.key", perm::READ)));
    assert!(denied(
        &p,
        &Access::Mount {
            source: "/dev/disk1000".into(),
            fstype: "ext4".into(),
            flags: 0
        }
    ));
    assert!(p.path_automaton.starts.len() <= varmor_policy::automaton::MAX_WALKS);
}

#[test]
fn behaviour_is_the_same_for_policy_modes_without_bpf_rules() {
    let p = bpf_of(&policy("AlwaysAllow", ""));
    assert!(p.files.is_empty() && p.mounts.is_empty());
    assert_eq!(
        spec(&policy("AlwaysAllow", "")).policy.mode,
        PolicyMode::AlwaysAllow
    );
    assert!(!denied(&p, &Access::Capability(21)));
}

// ----------------------------------------------------------------------------- properties

/// Random patterns over a small alphabet so that matches are frequent.
fn pattern_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[abc]{1,3}".prop_map(|s| s),
        2 => Just("*".to_string()),
        2 => Just("**".to_string()),
        1 => Just("?".to_string()),
        1 => Just("[a-b]".to_string()),
        1 => Just("[^a]".to_string()),
        // A range that covers '/': in a name pattern it must not match '/'.
        1 => Just("[.-0]".to_string()),
        1 => Just("{a,bc}".to_string()),
        1 => Just("{,c/}".to_string()),
    ];
    let component = prop::collection::vec(piece, 1..4).prop_map(|v| v.concat());
    prop_oneof![
        4 => prop::collection::vec(component.clone(), 1..5).prop_map(|v| format!("/{}", v.join("/"))),
        1 => component,
    ]
    // Keep each pattern to a few globs: enough to combine every construct, small enough that
    // sets of them determinize quickly in debug builds.
    .prop_filter("valid pattern with few globs", |p| Pattern::parse(p).is_ok() && p.matches('*').count() <= 4)
}

fn path_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec("[abc]{0,3}", 0..6).prop_map(|v| format!("/{}", v.join("/"))),
        "[abc/]{0,10}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, max_shrink_iters: 200, ..ProptestConfig::default() })]

    /// The automaton matches exactly the paths the reference glob matcher matches.
    #[test]
    fn automaton_agrees_with_glob(patterns in prop::collection::vec(pattern_strategy(), 1..12), paths in prop::collection::vec(path_strategy(), 1..20)) {
        let parsed: Vec<Pattern> = patterns.iter().map(|p| Pattern::parse(p).expect("valid")).collect();
        let a = Automaton::build(&parsed).expect("build");
        for path in &paths {
            let expected: Vec<u32> = parsed.iter().enumerate().filter(|(_, p)| p.matches(path.as_bytes())).map(|(i, _)| i as u32).collect();
            prop_assert_eq!(a.run(path.as_bytes()), expected, "path {:?} patterns {:?}", path, patterns);
        }
    }

    /// The reversed patterns match the reversed paths, and their automaton agrees (the BPF
    /// enforcer walks it from the leaf of a path to decide early that no rule can match).
    #[test]
    fn reversed_automaton_agrees_with_glob(patterns in prop::collection::vec(pattern_strategy(), 1..12), paths in prop::collection::vec(path_strategy(), 1..20)) {
        let parsed: Vec<Pattern> = patterns.iter().map(|p| Pattern::parse(p).expect("valid")).collect();
        let reversed: Vec<Pattern> = parsed.iter().map(Pattern::reversed).collect();
        let a = Automaton::build(&reversed).expect("build");
        for path in &paths {
            let expected: Vec<u32> = parsed.iter().enumerate().filter(|(_, p)| p.matches(path.as_bytes())).map(|(i, _)| i as u32).collect();
            let r: Vec<u8> = path.bytes().rev().collect();
            let by_reference: Vec<u32> = reversed.iter().enumerate().filter(|(_, p)| p.matches(&r)).map(|(i, _)| i as u32).collect();
            prop_assert_eq!(&by_reference, &expected, "path {:?} patterns {:?}", path, patterns);
            prop_assert_eq!(a.run(&r), expected, "path {:?} patterns {:?}", path, patterns);
        }
    }

    /// The kernel-side tables give the reference verdict, and a deny always wins.
    #[test]
    fn tables_agree_with_reference(rules in prop::collection::vec((pattern_strategy(), 1u32..16, 0usize..4), 1..10), paths in prop::collection::vec(path_strategy(), 1..10), requested in 1u32..16) {
        let mut body = String::from("      bpfRawRules:\n        files:\n");
        for (p, perms, _) in &rules {
            let names: Vec<&str> = [(1, "exec"), (2, "write"), (4, "read"), (8, "append")].iter().filter(|(b, _)| perms & b != 0).map(|(_, n)| *n).collect();
            body.push_str(&format!("        - pattern: {p:?}\n          permissions: [{}]\n", names.join(", ")));
        }
        let mut profile = ep(&format!("      privileged: true\n{body}"));
        // Give each rule its own action so every combination is exercised.
        let actions = [varmor_policy::bundle::RuleAction::Deny, varmor_policy::bundle::RuleAction::DenyAudit, varmor_policy::bundle::RuleAction::Audit, varmor_policy::bundle::RuleAction::Complain];
        for (r, (_, _, a)) in profile.files.iter_mut().zip(&rules) {
            r.action = actions[*a];
        }
        profile.path_verdicts = varmor_policy::compile::bpf::path_verdicts(&profile.files, &profile.path_automaton);
        for path in &paths {
            let access = Access::File { path: path.clone(), permissions: requested };
            let v = decide(&profile, &access);
            prop_assert_eq!(decide_with_tables(&profile, &access), (v.decision, v.event));
            let any_deny = profile.files.iter().any(|r| r.action.denies() && r.permissions & requested != 0 && Pattern::parse(&r.pattern).expect("valid").matches(path.as_bytes()));
            prop_assert_eq!(v.decision == Decision::Deny, any_deny);
        }
    }
}
