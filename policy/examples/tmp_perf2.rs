use varmor_policy::{automaton::Automaton, glob::Pattern};
fn main() {
    let mut pats = vec![];
    let kind = std::env::args().nth(1).unwrap_or("lit".into());
    for i in 0..1024 { pats.push(match kind.as_str() {
        "lit" => format!("/data/app{i}/secret.conf"),
        "glob" => format!("/data/app{i}/**/*.key"),
        "deep" => format!("/**/secret{i}"),
        _ => format!("/opt/svc{}/{}/*.log", i % 37, i) }); }
    let ps: Vec<Pattern> = pats.iter().map(|p| Pattern::parse(p).unwrap()).collect();
    let t = std::time::Instant::now();
    let a = Automaton::build(&ps).unwrap();
    println!("{kind}: {:?} states={} classes={} bytes={} sets={}", t.elapsed(), a.state_count, a.class_count, a.table_bytes(), a.match_sets.len());
}
