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
        return;
    }
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
        .build_many(&regexes);
    let theirs = t.elapsed();
    match ra {
        Ok(dfa) => println!(
            "automaton build: ours {:.2} ms ({} KiB) vs regex-automata dense DFA {:.1} ms ({} KiB): {:.0}x faster",
            ours.as_secs_f64() * 1e3,
            a.table_bytes() / 1024,
            theirs.as_secs_f64() * 1e3,
            dfa.memory_usage() / 1024,
            theirs.as_secs_f64() / ours.as_secs_f64()
        ),
        Err(e) => println!("automaton build: ours {:.2} ms; regex-automata failed after {:.1} ms: {e}", ours.as_secs_f64() * 1e3, theirs.as_secs_f64() * 1e3),
    }

    // Matching cost: walk versus rule-by-rule, with 16 and with all rules.
    let paths: Vec<String> = (0..512)
        .map(|i| match i % 4 {
            0 => format!("/srv/app{}/conf/secret.yaml", i % 400),
            1 => format!("/usr/lib/x86_64-linux-gnu/libc.so.{i}"),
            2 => format!("/data/tenant{}/db/file{i}.db", i % 300),
            _ => format!("/home/user{}/.config/tool/sub/{i}.token", i % 124),
        })
        .collect();
    let measure = |f: &dyn Fn(&[u8]) -> usize| {
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let mut n = 0;
            for _ in 0..20 {
                for p in &paths {
                    n += f(black_box(p.as_bytes()));
                }
            }
            black_box(n);
            best = best.min(t.elapsed());
        }
        best.as_nanos() as f64 / (20 * paths.len()) as f64
    };
    let small: Vec<Pattern> = patterns.iter().take(16).cloned().collect();
    let a_small = Automaton::build(&small).expect("build");
    let a_all = Automaton::build(&patterns).expect("build");
    let walk_small = measure(&|p| a_small.run(p).len());
    let walk_all = measure(&|p| a_all.run(p).len());
    let loop_small = measure(&|p| small.iter().filter(|r| r.matches(p)).count());
    let loop_all = measure(&|p| patterns.iter().filter(|r| r.matches(p)).count());
    println!(
        "match one path: automaton walk {walk_small:.0} ns with {} rules, {walk_all:.0} ns with {} rules (x{:.2}); rule-by-rule loop {loop_small:.0} ns vs {loop_all:.0} ns (x{:.1})",
        small.len(),
        patterns.len(),
        walk_all / walk_small,
        loop_all / loop_small
    );
}
