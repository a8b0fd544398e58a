use varmor_policy::{automaton::Automaton, glob::Pattern};
fn main() {
    let mut pats = vec![];
    for p in ["/proc/sysrq-trigger","/proc/**/mem","/proc/kmem","/proc/kcore","/sys/firmware/**","/sys/devices/virtual/powercap/**","/sys/kernel/security/**","/proc/sys/kernel/core_pattern","/sys/fs/cgroup/**/release_agent","/proc/kallsyms","/run/secrets/kubernetes.io/serviceaccount/**","/var/run/secrets/kubernetes.io/serviceaccount/**","/proc/partitions","/proc/**/mountinfo","/proc/**/mounts","/proc/**/net/arp","/**/containerd.sock","/**/docker.sock","/**/crio.sock","/etc/**","/etc/passwd","/etc/shadow","/**/.ssh","/**/.ssh/**","/**/busybox","/**/sh","/**/bash","/**/dash","/**/wget","/**/curl","/**/chmod","/**/su","/**/sudo","/**/release_agent","/**/devices.allow","/**/cgroup.procs","/**/devices/tasks","/**/runc"] { pats.push(p.to_string()); }
    let kind = std::env::args().nth(1).unwrap_or("lit".into());
    for i in 0..1024 { pats.push(match kind.as_str() {
        "lit" => format!("/data/app{i}/secret.conf"),
        "glob" => format!("/data/app{i}/**/*.key"),
        "deep" => format!("/**/secret{i}"),
        _ => format!("/opt/svc{}/{}/*.log", i % 37, i) }); }
    let ps: Vec<Pattern> = pats.iter().map(|p| Pattern::parse(p).unwrap()).collect();
    for _ in 0..3 {
    let t = std::time::Instant::now();
    let a = Automaton::build(&ps).unwrap();
    println!("{kind}: {:?} states={} classes={} bytes={} sets={}", t.elapsed(), a.state_count, a.class_count, a.table_bytes(), a.match_sets.len());
    }
}
