//! The BPF enforcer's tables, checked on the host: every profile of the corpus is encoded as the
//! kernel reads it, and a model of the programs' decision over those tables gives exactly the
//! reference verdict ([`varmor_policy::decide::decide`]) for every generated access. The same
//! corpus runs against the real programs in the kernel tests (`bpf_kernel.rs`).

mod bpf_support;

use proptest::prelude::*;
use varmor_agent::enforcer::bpf::encode::{encode, EncodeError};
use varmor_agent::enforcer::bpf::layout::{
    ContainerEntry, VA_HF_SOCKET_TABLE, VA_HF_TOP_FILTER, VA_HF_TOP_FILTER_EXEC, VA_KIND_EXEC,
    VA_KIND_FILE, VA_MAX_BLOB_VALUES,
};
use varmor_agent::enforcer::bpf::model::Model;
use varmor_policy::bundle::{BpfProfile, RuleAction};
use varmor_policy::decide::{decide, Access};

use bpf_support::*;

fn check(case: &Case, accesses: &[Access]) -> usize {
    let enc = encode(&case.profile).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let model = Model::new(&enc);
    let container = ContainerEntry::new(1, &case.pod_ips);
    let mut mismatches = Vec::new();
    for a in accesses {
        let want = decide(&case.profile, a);
        let got = model.decide(a, &container);
        if got != (want.decision, want.event) {
            mismatches.push(format!(
                "{a:?}: tables {got:?}, reference {:?} {:?}",
                want.decision, want.event
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}: {} of {} accesses differ:\n{}",
        case.name,
        mismatches.len(),
        accesses.len(),
        mismatches[..mismatches.len().min(20)].join("\n")
    );
    accesses.len()
}

#[test]
fn corpus_tables_give_the_reference_verdicts() {
    let mut total = 0;
    for case in corpus() {
        let accesses = all_accesses(&case);
        total += check(&case, &accesses);
    }
    assert!(total > 50_000, "only {total} accesses compared");
}

#[test]
fn a_thousand_rules_of_each_kind_fit() {
    let case = thousand_rules_case();
    let profile = &case.profile;
    assert!(profile.files.len() >= 2048 && profile.egress.len() >= 1024);
    let enc = encode(profile).expect("encode");
    assert!(enc.blob.len() < VA_MAX_BLOB_VALUES as usize);
    let mut accesses = Vec::new();
    for i in [0, 1, 511, 1023, 1024] {
        for path in [
            format!("/srv/app{i}/x/y.key"),
            format!("/srv/app{i}/y.key"),
            format!("/srv/app{i}/y.pem"),
        ] {
            accesses.push(Access::File {
                path,
                permissions: 4,
            });
        }
        accesses.push(Access::Exec {
            path: format!("/opt/bin{i}/tool"),
        });
        accesses.push(Access::Connect {
            address: format!("10.{}.{}.1", i / 256 % 256, i % 256)
                .parse()
                .expect("ip"),
            port: 80,
            pod_addresses: vec![],
        });
        accesses.push(Access::Mount {
            source: format!("/mnt/m{i}/a"),
            fstype: String::new(),
            flags: 4096,
        });
    }
    check(&case, &accesses);
}

#[test]
fn an_unchanged_profile_encodes_identically_and_a_change_does_not() {
    let a = profile_of(&policy_yaml("RuntimeDefault", ""));
    let mut b = a.clone();
    assert_eq!(
        encode(&a).expect("a").content_hash,
        encode(&b).expect("b").content_hash
    );
    b.files[0].action = RuleAction::DenyAudit;
    b.path_verdicts = varmor_policy::compile::bpf::path_verdicts(&b.files, &b.path_automaton);
    assert_ne!(
        encode(&a).expect("a").content_hash,
        encode(&b).expect("b").content_hash
    );
}

#[test]
fn malformed_tables_are_rejected_with_the_reason() {
    let mut p: BpfProfile = profile_of(&policy_yaml("RuntimeDefault", ""));
    p.path_automaton.transitions[5] = p.path_automaton.state_count + 3;
    let e = encode(&p).expect_err("malformed");
    assert!(
        matches!(
            e,
            EncodeError::Automaton {
                automaton: "path",
                ..
            }
        ),
        "{e}"
    );
    let mut p: BpfProfile = profile_of(&policy_yaml("RuntimeDefault", ""));
    p.mounts[0].fstype = "x".repeat(40);
    let e = encode(&p).expect_err("fstype");
    assert!(e.to_string().contains("longer than 31 bytes"), "{e}");
}

#[test]
fn exec_only_floating_rules_do_not_make_file_walks_long() {
    // RuntimeDefault plus exec rules that match anywhere (`/**/sh`): a file open must be
    // decided without walking the path, which the live ranges of the header say.
    let p = profile_of(&policy_yaml(
        "EnhanceProtect",
        "      attackProtectionRules:\n      - rules: [disable-shell, disable-busybox]\n",
    ));
    let enc = encode(&p).expect("encode");
    let h = &enc.header.path;
    let (file_lo, file_hi) = h.live[0];
    let (exec_lo, exec_hi) = h.live[1];
    assert!(exec_hi > exec_lo, "exec rules are live for exec walks");
    let floating_start_is_exec_only = h.starts[..h.walk_count as usize]
        .iter()
        .any(|&s| s >= exec_lo && s < exec_hi && !(s >= file_lo && s < file_hi));
    assert!(floating_start_is_exec_only, "{h:?}");
}

fn pattern() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[abc]{1,3}",
        2 => Just("*".to_string()),
        2 => Just("**".to_string()),
        1 => Just("?".to_string()),
        1 => Just("[a-b]".to_string()),
        1 => Just("{a,bc}".to_string()),
    ];
    let component = prop::collection::vec(piece, 1..3).prop_map(|v| v.concat());
    prop_oneof![
        4 => prop::collection::vec(component.clone(), 1..4).prop_map(|v| format!("/{}", v.join("/"))),
        1 => component,
    ]
    .prop_filter("few globs", |p| p.matches('*').count() <= 3)
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec("[abc]{1,3}", 1..5).prop_map(|v| format!("/{}", v.join("/")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random rule sets with random actions: the encoded tables decide like the reference.
    #[test]
    fn random_profiles_agree(rules in prop::collection::vec((pattern(), 1u32..16), 1..8), actions in prop::collection::vec(0usize..4, 8), paths in prop::collection::vec(path(), 1..12), requested in 1u32..16) {
        let mut body = String::from("      privileged: true\n      bpfRawRules:\n        files:\n");
        for (p, perms) in &rules {
            let names: Vec<&str> = [(1, "exec"), (2, "write"), (4, "read"), (8, "append")].iter().filter(|(b, _)| perms & b != 0).map(|(_, n)| *n).collect();
            body.push_str(&format!("        - pattern: {p:?}\n          permissions: [{}]\n", names.join(", ")));
        }
        body.push_str("        mounts:\n");
        for (p, _) in &rules {
            body.push_str(&format!("        - sourcePattern: {p:?}\n          fstype: \"*\"\n          flags: [bind, umount]\n"));
        }
        let mut profile = profile_of(&policy_yaml("EnhanceProtect", &body));
        let all = [RuleAction::Deny, RuleAction::DenyAudit, RuleAction::Audit, RuleAction::Complain];
        for (i, r) in profile.files.iter_mut().enumerate() {
            r.action = all[actions[i % actions.len()]];
        }
        for (i, r) in profile.mounts.iter_mut().enumerate() {
            r.action = all[actions[(i + 3) % actions.len()]];
        }
        profile.path_verdicts = varmor_policy::compile::bpf::path_verdicts(&profile.files, &profile.path_automaton);
        let case = Case { name: "random".into(), profile, pod_ips: vec![] };
        let mut accesses = Vec::new();
        for p in &paths {
            accesses.push(Access::File { path: p.clone(), permissions: requested });
            accesses.push(Access::Exec { path: p.clone() });
            accesses.push(Access::Mount { source: p.clone(), fstype: "tmpfs".into(), flags: 4096 });
            accesses.push(Access::Umount { path: p.clone() });
        }
        check(&case, &accesses);
    }
}

/// A socket-rule mask: any (0), or a few bits among the low values and the edges.
fn socket_mask() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        4 => prop::collection::vec(prop_oneof![0u32..20, Just(31), Just(32), Just(63)], 1..4)
            .prop_map(|bits| bits.iter().fold(0u64, |m, b| m | 1 << b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Socket rules on both sides of the table threshold, random masks and actions: the encoded
    /// list or decision table decides like the reference, for values in and out of the masks'
    /// range (64 and above).
    #[test]
    fn random_socket_rules_agree(
        rules in prop::collection::vec((socket_mask(), socket_mask(), socket_mask(), 0usize..4), 1..40),
        accesses in prop::collection::vec((prop_oneof![0u32..20, Just(44), Just(63), Just(64), Just(200)], prop_oneof![0u32..12, Just(0x80801), Just(15)], prop_oneof![0u32..20, Just(63), Just(64), Just(132), Just(255), Just(262)]), 1..40),
    ) {
        let mut profile = profile_of(&policy_yaml("RuntimeDefault", ""));
        let all = [RuleAction::Deny, RuleAction::DenyAudit, RuleAction::Audit, RuleAction::Complain];
        profile.sockets = rules
            .iter()
            .map(|&(domains, types, protocols, a)| varmor_policy::bundle::SocketRule {
                domains,
                types,
                protocols,
                action: all[a],
                origin: varmor_policy::bundle::RuleOrigin { field: "test".into(), builtin: None },
            })
            .collect();
        let enc = encode(&profile).expect("encode");
        prop_assert_eq!(
            enc.header.flags & VA_HF_SOCKET_TABLE != 0,
            rules.len() > 8,
            "the table is used above 8 rules"
        );
        let case = Case { name: "sockets".into(), profile, pod_ips: vec![] };
        let accesses: Vec<Access> = accesses
            .iter()
            .map(|&(domain, type_, protocol)| Access::Socket { domain, type_, protocol })
            .collect();
        check(&case, &accesses);
    }
}

#[test]
fn the_leaf_filter_decides_opens_without_the_path_when_it_can() {
    // Patterns that end in a literal: the last component alone tells most paths apart.
    let case = thousand_rules_case();
    let enc = encode(&case.profile).expect("encode");
    let model = Model::new(&enc);
    assert!(enc.header.leaf.walk_count > 0, "the filter is built");
    assert!(model.leaf_says_no_rule("/bench/f.txt"));
    assert!(model.leaf_says_no_rule("/srv/app1/x/y.pem"));
    assert!(!model.leaf_says_no_rule("/srv/app1/x/y.key"));
    assert!(!model.leaf_says_no_rule("/"));

    // Over the corpus: every filtered open is one no file rule matches (the corpus test above
    // checks the verdicts; this shows the filter does work there).
    let (filtered, opens, _) = filtered_corpus_opens(|m, p| m.leaf_says_no_rule(p));
    println!("leaf filter: {filtered} of {opens} corpus opens decided without the path");
    assert!(filtered > 0);
}

#[test]
fn the_leaf_filters_first_step_is_its_walk_over_the_last_byte() {
    let case = thousand_rules_case();
    let enc = encode(&case.profile).expect("encode");
    let model = Model::new(&enc);
    assert!(model.leaf_first_says_no_rule("/bench/f.txt"));
    assert!(!model.leaf_first_says_no_rule("/srv/app1/x/y.key"));
    assert!(!model.leaf_first_says_no_rule("/srv/app1/x/"));
    // Bit for bit (ASCII: the model takes paths as text), the bitmap says what the full leaf
    // filter says once the last byte kills every walk.
    for b in 1..128u8 {
        if b == b'/' {
            continue;
        }
        let one = format!("/a/{}", b as char);
        let first = model.leaf_first_says_no_rule(&one);
        let set = enc.header.leaf_first[b as usize / 64] >> (b % 64) & 1 == 1;
        assert_eq!(first, !set, "byte {b}");
        if first {
            // Whatever comes before the last byte, the full filter agrees.
            for name in [format!("/x/yy{}", b as char), format!("/{}", b as char)] {
                assert!(model.leaf_says_no_rule(&name), "{name}");
            }
        }
    }
    // A profile without a leaf filter has an empty bitmap.
    let none = profile_of(&policy_yaml("RuntimeDefault", ""));
    let enc = encode(&none).expect("encode");
    assert_eq!(enc.header.leaf.walk_count, 0);
    assert_eq!(enc.header.leaf_first, [0; 4]);

    // Over the corpus: sound (no rule matches a filtered path), and it does work there.
    let (filtered, opens, _) = filtered_corpus_opens(|m, p| m.leaf_first_says_no_rule(p));
    println!("leaf filter's first step: {filtered} of {opens} corpus opens decided");
    assert!(filtered > 0);
}

/// Runs a file_open filter of the model over every open of the corpus, asserting that no file
/// rule matches a filtered path: (filtered opens, opens, profiles with a filtered open).
fn filtered_corpus_opens(filter: impl Fn(&Model<'_>, &str) -> bool) -> (usize, usize, usize) {
    let (mut filtered, mut opens, mut profiles) = (0, 0, 0);
    for case in corpus() {
        let enc = encode(&case.profile).expect("encode");
        let model = Model::new(&enc);
        let before = filtered;
        for a in all_accesses(&case) {
            if let Access::File { path, .. } = &a {
                opens += 1;
                if filter(&model, path) {
                    filtered += 1;
                    let any = case.profile.files.iter().any(|r| {
                        r.permissions & !1 != 0
                            && varmor_policy::glob::Pattern::parse(&r.pattern)
                                .expect("valid")
                                .matches(path.as_bytes())
                    });
                    assert!(!any, "{}: {path} is filtered but a rule matches", case.name);
                }
            }
        }
        profiles += usize::from(filtered > before);
    }
    (filtered, opens, profiles)
}

#[test]
fn the_top_filter_decides_opens_below_unruled_top_directories() {
    // RuntimeDefault's patterns end in `**` (no leaf filter) but all start in /proc or /sys.
    let rd = profile_of(&policy_yaml("RuntimeDefault", ""));
    let enc = encode(&rd).expect("encode");
    assert_eq!(
        enc.header.leaf.walk_count, 0,
        "no leaf filter: `**` keeps it live"
    );
    assert_ne!(
        enc.header.flags & VA_HF_TOP_FILTER,
        0,
        "the top filter is on"
    );
    let model = Model::new(&enc);
    assert!(model.top_says_no_rule("/etc/passwd"));
    assert!(model.top_says_no_rule("/usr/lib/x86_64-linux-gnu/libc.so.6"));
    assert!(!model.top_says_no_rule("/sys/firmware/efi/x"));
    assert!(!model.top_says_no_rule("/proc/1/mem"));
    // A prefix of a ruled top directory is not that directory, a longer name is not either.
    assert!(model.top_says_no_rule("/pro/x"));
    assert!(model.top_says_no_rule("/system/x"));
    // A file at the top level has no "/<component>/": never filtered.
    assert!(!model.top_says_no_rule("/etc"));
    assert!(!model.top_says_no_rule("/"));

    // Its first step: "/" and the first byte.
    assert!(model.top_first_says_no_rule("/etc/passwd", VA_KIND_FILE));
    assert!(model.top_first_says_no_rule("/usr/lib/x", VA_KIND_FILE));
    assert!(model.top_first_says_no_rule("/toplevel", VA_KIND_FILE));
    assert!(!model.top_first_says_no_rule("/proc/1/mem", VA_KIND_FILE));
    assert!(!model.top_first_says_no_rule("/pro/x", VA_KIND_FILE));
    assert!(!model.top_first_says_no_rule("/", VA_KIND_FILE));
    let (first, _, _) = filtered_corpus_opens(|m, p| m.top_first_says_no_rule(p, VA_KIND_FILE));
    println!("top filter's first step: {first} corpus opens decided");
    assert!(first > 0);

    // Over the corpus: every filtered open is one no file rule matches, and the filter works
    // on more than one profile.
    let (filtered, _, profiles) = filtered_corpus_opens(|m, p| m.top_says_no_rule(p));
    println!(
        "top filter: {filtered} corpus opens decided without the path, in {profiles} profiles"
    );
    assert!(profiles > 1);
}

#[test]
fn the_top_filter_decides_execs_below_unruled_top_directories() {
    // Program rules under /opt, file rules that end in a name under /srv.
    let case = thousand_rules_case();
    let enc = encode(&case.profile).expect("encode");
    assert_ne!(enc.header.flags & VA_HF_TOP_FILTER_EXEC, 0, "on for execs");
    let model = Model::new(&enc);
    assert!(model.top_says_no_exec_rule("/bin/true"));
    assert!(model.top_first_says_no_rule("/bin/true", VA_KIND_EXEC));
    assert!(!model.top_first_says_no_rule("/opt/bin7/tool", VA_KIND_EXEC));
    assert!(model.top_first_says_no_rule("/srv/app1/run", VA_KIND_EXEC));
    assert!(!model.top_first_says_no_rule("/srv/app1/run", VA_KIND_FILE));
    assert!(model.top_says_no_exec_rule("/usr/bin/python3"));
    assert!(!model.top_says_no_exec_rule("/opt/bin7/tool"));
    assert!(!model.top_says_no_exec_rule("/opt"));
    // Execs are not opens: /srv has file rules but no program rules.
    assert!(model.top_says_no_exec_rule("/srv/app1/run"));
    assert!(!model.top_says_no_rule("/srv/app1/run"));

    // A program name pattern runs under any directory: no exec filter. RuntimeDefault has no
    // program rules at all (bprm_check_security returns before any walk).
    for (yaml, why) in [
        (
            "      privileged: true\n      bpfRawRules:\n        processes:\n        - pattern: /opt/x\n          permissions: [exec]\n        - pattern: nc\n          permissions: [exec]\n",
            "a name pattern",
        ),
        ("", "RuntimeDefault"),
    ] {
        let enc = encode(&profile_of(&policy_yaml(
            if yaml.is_empty() { "RuntimeDefault" } else { "EnhanceProtect" },
            yaml,
        )))
        .expect("encode");
        assert_eq!(enc.header.flags & VA_HF_TOP_FILTER_EXEC, 0, "{why}");
    }

    // Over the corpus: no program rule matches an exec the filter decides.
    let mut filtered = 0;
    for case in corpus() {
        let enc = encode(&case.profile).expect("encode");
        let model = Model::new(&enc);
        for a in all_accesses(&case) {
            if let Access::Exec { path } = &a {
                if model.top_says_no_exec_rule(path)
                    || model.top_first_says_no_rule(path, VA_KIND_EXEC)
                {
                    filtered += 1;
                    let any = case.profile.files.iter().any(|r| {
                        r.permissions & 1 != 0
                            && varmor_policy::glob::Pattern::parse(&r.pattern)
                                .expect("valid")
                                .matches(path.as_bytes())
                    });
                    assert!(
                        !any,
                        "{}: exec {path} is filtered but a rule matches",
                        case.name
                    );
                }
            }
        }
    }
    println!("top filter: {filtered} corpus execs decided without the path");
    assert!(filtered > 0);
}

#[test]
fn no_top_filter_when_a_pattern_matches_under_any_top_directory() {
    for pattern in ["/*/secret", "/**/id_rsa", "*.key", "/{etc,*}/x"] {
        let body = format!(
            "      privileged: true\n      bpfRawRules:\n        files:\n        - pattern: /etc/shadow\n          permissions: [read]\n        - pattern: \"{pattern}\"\n          permissions: [read]\n"
        );
        let enc = encode(&profile_of(&policy_yaml("EnhanceProtect", &body))).expect("encode");
        assert_eq!(
            enc.header.flags & VA_HF_TOP_FILTER,
            0,
            "{pattern}: the filter could never stop"
        );
    }
    let body = "      privileged: true\n      bpfRawRules:\n        files:\n        - pattern: /etc/shadow\n          permissions: [read]\n";
    let enc = encode(&profile_of(&policy_yaml("EnhanceProtect", body))).expect("encode");
    assert_ne!(enc.header.flags & VA_HF_TOP_FILTER, 0);
}

#[test]
fn no_leaf_filter_when_it_could_never_stop() {
    let mut profile = thousand_rules_case().profile;
    profile.files.retain(|r| r.pattern.starts_with("/srv/"));
    let mut etc = profile.files[0].clone();
    etc.pattern = "/etc/**".into();
    profile.files.push(etc);
    let pats: Vec<varmor_policy::glob::Pattern> = profile
        .files
        .iter()
        .map(|r| varmor_policy::glob::Pattern::parse(&r.pattern).expect("valid"))
        .collect();
    profile.path_automaton = varmor_policy::automaton::Automaton::build(&pats).expect("build");
    profile.path_verdicts =
        varmor_policy::compile::bpf::path_verdicts(&profile.files, &profile.path_automaton);
    let enc = encode(&profile).expect("encode");
    assert_eq!(
        enc.header.leaf.walk_count, 0,
        "'/etc/**' keeps every walk live"
    );
}

#[test]
fn egress_index_overflow_and_prefixes_keep_the_reference_verdicts() {
    // One address with 20 port ranges (more than a bucket holds: the rest is scanned), CIDRs of
    // several lengths in both families, and mixed actions.
    let mut rules = String::from(
        "      privileged: true\n      auditViolations: true\n      bpfRawRules:\n        network:\n          egress:\n            toDestinations:\n            - ip: 10.1.1.1\n              ports:\n",
    );
    for p in 0..20 {
        rules.push_str(&format!("              - port: {}\n", 1000 + 10 * p));
    }
    for (i, net) in [
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.1.0/24",
        "192.168.3.0/25",
        "fd00::/8",
        "fd00:1::/32",
        "fd00:1::7/128",
    ]
    .iter()
    .enumerate()
    {
        rules.push_str(&format!(
            "            - cidr: {net}\n              ports:\n              - port: {}\n                endPort: {}\n",
            20 + i,
            8000 + i
        ));
    }
    rules.push_str("            - ip: unspecified\n            - ip: pod-self\n              ports:\n              - port: 9\n");
    let mut profile = profile_of(&policy_yaml("EnhanceProtect", &rules));
    bpf_support::mix_actions(&mut profile);
    let case = Case {
        name: "egress-index".into(),
        profile,
        pod_ips: vec!["10.1.1.9".parse().expect("ip")],
    };
    let enc = encode(&case.profile).expect("encode");
    assert!(enc.header.egress_scan_count > 2, "the overflow is scanned");
    assert!(enc.header.egress_prefix_count >= 7);
    let n = check(&case, &all_accesses(&case));
    assert!(n > 100, "{n}");
}
