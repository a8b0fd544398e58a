//! Compile benchmark: a policy with every built-in rule plus 1,024 raw file rules.
//!
//! Prints the compile time (goal: under 5 ms), the path automaton's size, and two
//! side-by-side comparisons measured in the same run:
//! * building the same patterns with `regex-automata`'s dense DFA (the maintained crate the
//!   design first considered) versus our glob determinizer;
//! * matching cost per path with 16 and with 1,024 rules, for the automaton walk and for a
//!   rule-by-rule loop (how vArmor's BPF enforcer matches): the walk must not grow with rules.
//!
//! Run with `cargo bench -p varmor-policy --bench compile` (or `make bench`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use varmor_policy::automaton::Automaton;
use varmor_policy::catalog::{self, Category};
use varmor_policy::glob::{Node, Pattern};
use varmor_policy::{compile, parse_documents, NodeFacts, PolicyIdentity};

/// The 1,024 raw file rules: literal files, directory trees, extensions, nested globs.
fn raw_patterns() -> Vec<String> {
    let mut p = Vec::with_capacity(1024);
    for i in 0..400 {
        p.push(format!("/srv/app{i}/conf/secret.yaml"));
    }
    for i in 0..300 {
        p.push(format!("/data/tenant{i}/**"));
    }
    for i in 0..200 {
        p.push(format!("/var/lib/app{i}/*.key"));
    }
    for i in 0..124 {
        p.push(format!("/home/user{i}/.config/**/*.token"));
    }
    p
}

fn policy_yaml(patterns: &[String]) -> String {
    let names = |c: Category| {
        catalog::all()
            .iter()
            .filter(move |r| r.category == c)
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut y = format!(
        "apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\nmetadata:\n  name: bench\n  namespace: bench\nspec:\n  target:\n    kind: Deployment\n    name: bench\n  policy:\n    enforcer: AppArmorBPFSeccomp\n    mode: EnhanceProtect\n    enhanceProtect:\n      auditViolations: true\n      hardeningRules: [{}]\n      attackProtectionRules:\n      - rules: [{}]\n      vulMitigationRules: [{}]\n      bpfRawRules:\n        files:\n",
        names(Category::Hardening),
        names(Category::AttackProtection),
        names(Category::VulMitigation)
    );
    for p in patterns {
        y.push_str(&format!(
            "        - pattern: {p:?}\n          permissions: [read, write]\n"
        ));
    }
    y
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The regular expression of a pattern, for regex-automata.
fn regex_of(p: &Pattern) -> String {
    fn nodes(ns: &[Node], out: &mut String) {
        for n in ns {
            match n {
                Node::Byte(b) => out.push_str(&regex_syntax::escape(&(*b as char).to_string())),
                Node::Star => out.push_str("[^/]*"),
                Node::DoubleStar => out.push_str("(?s:.)*"),
                Node::DeepDir => out.push_str("/(?:(?s:.)*/)?"),
                Node::Any => out.push_str("[^/]"),
                Node::Class { negated, ranges } => {
                    out.push('[');
                    if *negated {
                        out.push('^');
                        out.push('/');
                    }
                    for (a, b) in ranges {
                        out.push_str(&format!("\\x{a:02x}-\\x{b:02x}"));
                    }
                    out.push(']');
                }
                Node::Alt(alts) => {
                    out.push_str("(?:");
                    for (i, a) in alts.iter().enumerate() {
                        if i > 0 {
                            out.push('|');
                        }
                        nodes(a, out);
                    }
                    out.push(')');
                }
            }
        }
    }
    let mut out = String::from("^");
    if p.is_name_pattern() {
        out.push_str("(?:(?s:.)*/)?");
    }
    nodes(p.nodes(), &mut out);
    out.push('$');
    out
}

fn main() {
    let raw = raw_patterns();
    let spec = parse_documents(&policy_yaml(&raw))
        .remove(0)
        .expect("valid bench policy")
        .spec();
    let identity = PolicyIdentity::namespaced("bench", "bench");
    let facts = NodeFacts {
        disk_devices: Some(vec!["sda".into(), "sda1".into(), "nvme0n1".into()]),
    };

    // Warm up, then measure (VARMOR_BENCH_RUNS changes the number of runs, e.g. 1 under
    // callgrind).
    let runs: usize = std::env::var("VARMOR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let bundle = compile(&spec, &identity, &facts).expect("compile");
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        black_box(compile(&spec, &identity, &facts).expect("compile"));
        times.push(t.elapsed());
    }
    let bpf = bundle.bpf.as_ref().expect("bpf");
    let a = &bpf.path_automaton;
    let full = median(times.clone());
    println!(
        "policy: {} built-in rules + {} raw file rules ({} BPF file/exec rules in all)",
        catalog::all().len(),
        raw.len(),
        bpf.files.len()
    );
    println!(
        "compile (AppArmor + BPF + Seccomp): median {:.2} ms, min {:.2} ms over {} runs (goal < 5 ms: {})",
        full.as_secs_f64() * 1e3,
        times.iter().min().expect("runs").as_secs_f64() * 1e3,
        times.len(),
        if full < Duration::from_millis(5) { "met" } else { "NOT met" }
    );
    println!(
        "path automaton: {} states, {} byte classes, {} walks, {} match sets, {} KiB of tables",
        a.state_count,
        a.class_count,
        a.starts.len(),
        a.match_sets.len(),
        a.table_bytes() / 1024
    );

    // Automaton only: ours versus regex-automata, same patterns.
    let patterns: Vec<Pattern> = bpf
        .files
        .iter()
        .map(|r| Pattern::parse(&r.pattern).expect("pattern"))
        .collect();
    let mut ours = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        black_box(Automaton::build(&patterns).expect("build"));
        ours.push(t.elapsed());
    }
    let ours = median(ours);
    let regexes: Vec<String> = patterns.iter().map(regex_of).collect();
    if std::env::args().any(|a| a == "--quick") {
        println!(
            "automaton build: ours {:.2} ms (regex-automata comparison skipped: --quick)",
            ours.as_secs_f64() * 1e3
        );
    } else {
        compare_with_regex_automata(&regexes, ours, a.table_bytes());
    }

    // Matching cost per path, with 16 rules and with all of them: the table walk the BPF
    // program does, versus a rule-by-rule loop of prefix/suffix checks (vArmor's way). The
    // paths match one of the first 16 rules, so every walk reads the whole path in both cases.
    let paths: Vec<String> = (0..16)
        .map(|i| format!("/srv/app{i}/conf/secret.yaml"))
        .collect();
    let measure = |f: &dyn Fn(&[u8]) -> usize| {
        let mut best = Duration::MAX;
        for _ in 0..7 {
            let t = Instant::now();
            let mut n = 0;
            for _ in 0..2000 {
                for p in &paths {
                    n += f(black_box(p.as_bytes()));
                }
            }
            black_box(n);
            best = best.min(t.elapsed());
        }
        best.as_nanos() as f64 / (2000 * paths.len()) as f64
    };
    let small: Vec<Pattern> = patterns
        .iter()
        .filter(|p| p.as_str().starts_with("/srv/app"))
        .take(16)
        .cloned()
        .collect();
    let a_small = Automaton::build(&small).expect("build");
    let a_all = Automaton::build(&patterns).expect("build");
    let walk_small = measure(&|p| walk(&a_small, p));
    let walk_all = measure(&|p| walk(&a_all, p));
    let fixed_small: Vec<(Vec<u8>, Vec<u8>)> = small.iter().map(prefix_suffix).collect();
    let fixed_all: Vec<(Vec<u8>, Vec<u8>)> = patterns.iter().map(prefix_suffix).collect();
    let loop_small = measure(&|p| {
        fixed_small
            .iter()
            .filter(|(pre, suf)| p.starts_with(pre) && p.ends_with(suf))
            .count()
    });
    let loop_all = measure(&|p| {
        fixed_all
            .iter()
            .filter(|(pre, suf)| p.starts_with(pre) && p.ends_with(suf))
            .count()
    });
    println!(
        "match one path ({} bytes): automaton walk {walk_small:.0} ns with {} rules ({} walk), {walk_all:.0} ns with {} rules ({} walks): x{:.2}; rule-by-rule loop {loop_small:.0} ns vs {loop_all:.0} ns: x{:.1}",
        paths[0].len(),
        small.len(),
        a_small.starts.len(),
        patterns.len(),
        a_all.starts.len(),
        walk_all / walk_small,
        loop_all / loop_small
    );
}

/// The table walk of the BPF program, without allocation: returns the number of walks that end
/// in an accepting state.
fn walk(a: &Automaton, path: &[u8]) -> usize {
    let width = a.class_count as usize;
    let mut accepted = 0;
    for &start in &a.starts {
        let mut state = start;
        for &b in path {
            state = a.transitions[state as usize * width + a.byte_classes[b as usize] as usize];
            if state == 0 {
                break;
            }
        }
        accepted += usize::from(a.accept[state as usize] != 0);
    }
    accepted
}

/// vArmor's model of a pattern: a literal prefix before the first glob and a literal suffix
/// after the last one.
fn prefix_suffix(p: &Pattern) -> (Vec<u8>, Vec<u8>) {
    let nodes = p.nodes();
    let lit = |n: &Node| match n {
        Node::Byte(b) => Some(*b),
        _ => None,
    };
    let prefix: Vec<u8> = nodes.iter().map_while(lit).collect();
    if prefix.len() == nodes.len() {
        return (prefix, Vec::new());
    }
    let mut suffix: Vec<u8> = nodes.iter().rev().map_while(lit).collect();
    suffix.reverse();
    (prefix, suffix)
}

/// Builds the same patterns with regex-automata's dense DFA and prints the time next to ours.
fn compare_with_regex_automata(regexes: &[String], ours: Duration, our_bytes: usize) {
    let t = Instant::now();
    let ra = regex_automata::dfa::dense::Builder::new()
        .configure(
            regex_automata::dfa::dense::Config::new()
                .match_kind(regex_automata::MatchKind::All)
                .start_kind(regex_automata::dfa::StartKind::Anchored)
                .dfa_size_limit(Some(1 << 30))
                .determinize_size_limit(Some(1 << 30)),
        )
        .syntax(
            regex_automata::util::syntax::Config::new()
                .unicode(false)
                .utf8(false),
        )
        .build_many(regexes);
    let theirs = t.elapsed();
    match ra {
        Ok(dfa) => println!(
            "automaton build: ours {:.2} ms ({} KiB) vs regex-automata dense DFA {:.1} ms ({} KiB): {:.0}x faster",
            ours.as_secs_f64() * 1e3,
            our_bytes / 1024,
            theirs.as_secs_f64() * 1e3,
            dfa.memory_usage() / 1024,
            theirs.as_secs_f64() / ours.as_secs_f64()
        ),
        Err(e) => println!("automaton build: ours {:.2} ms; regex-automata failed after {:.1} ms: {e}", ours.as_secs_f64() * 1e3, theirs.as_secs_f64() * 1e3),
    }
}
