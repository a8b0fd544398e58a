//! Shared by the BPF table tests (host) and the BPF kernel tests (VM): a corpus of compiled
//! profiles and a systematic generator of accesses for each.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::IpAddr;

use varmor_policy::bundle::{BpfProfile, EgressAddress, RuleAction};
use varmor_policy::catalog::{self, Category};
use varmor_policy::decide::Access;
use varmor_policy::glob::{Node, Pattern};
use varmor_policy::names::{mount, perm, ptrace};
use varmor_policy::{compile, parse_documents, NodeFacts, PolicyIdentity};

/// A profile of the corpus.
#[derive(Debug, Clone)]
pub struct Case {
    /// A short name for messages.
    pub name: String,
    /// The rule set.
    pub profile: BpfProfile,
    /// The pod's addresses (for pod-self rules).
    pub pod_ips: Vec<IpAddr>,
}

/// The disk devices the corpus assumes.
pub fn facts() -> NodeFacts {
    NodeFacts {
        disk_devices: Some(vec!["vda".into(), "vda1".into()]),
    }
}

/// A BPF policy in `mode` with an `enhanceProtect` body (indented 6 spaces).
pub fn policy_yaml(mode: &str, enhance: &str) -> String {
    let mut y = format!(
        "apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\nmetadata:\n  name: web\n  namespace: demo\nspec:\n  target:\n    kind: Deployment\n    name: web\n  policy:\n    enforcer: BPF\n    mode: {mode}\n"
    );
    if !enhance.is_empty() {
        y.push_str("    enhanceProtect:\n");
        y.push_str(enhance);
    }
    y
}

/// Compiles a policy's BPF rule set.
pub fn profile_of(yaml: &str) -> BpfProfile {
    let doc = parse_documents(yaml)
        .into_iter()
        .next()
        .expect("one document")
        .expect("valid document");
    compile(
        &doc.spec(),
        &PolicyIdentity::namespaced("demo", "web"),
        &facts(),
    )
    .unwrap_or_else(|e| panic!("compile failed:\n{e}"))
    .bpf
    .expect("BPF profile")
}

/// The names of the built-in rules of a category that do something on BPF.
pub fn bpf_builtins(c: Category) -> Vec<&'static str> {
    catalog::all()
        .iter()
        .filter(|r| r.category == c && r.supports_bpf())
        .map(|r| r.name)
        .collect()
}

/// `enhanceProtect` with every BPF built-in rule.
pub fn all_builtins(switches: &str) -> String {
    format!(
        "{switches}      hardeningRules: [{}]\n      attackProtectionRules:\n      - rules: [{}]\n      vulMitigationRules: [{}]\n",
        bpf_builtins(Category::Hardening).join(", "),
        bpf_builtins(Category::AttackProtection).join(", "),
        bpf_builtins(Category::VulMitigation).join(", ")
    )
}

/// Raw rules of every kind.
pub const RAW_RULES: &str = r#"      bpfRawRules:
        files:
        - pattern: /etc/passwd
          permissions: [read, write]
        - pattern: /data/app7/**/*.key
          permissions: [read]
        - pattern: "*.pem"
          permissions: [write, append]
        - pattern: /srv/{alpha,beta}/conf/[a-c]?.yaml
          permissions: [write]
        - pattern: /var/log/**
          permissions: [append]
        - pattern: /opt/long/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb/**/secret
          permissions: [read, write]
        - pattern: /tmp/[^x]*/deep/**
          permissions: [write]
        processes:
        - pattern: /usr/**/*ping*
          permissions: [exec]
        - pattern: nc
          permissions: [exec]
        - pattern: /opt/tools/*
          permissions: [exec]
        network:
          sockets:
          - domains: [packet, netlink]
          - types: [raw]
          - protocols: [icmp]
          - domains: [inet6]
            types: [dgram]
          egress:
            toDestinations:
            - ip: 10.20.30.40
            - ip: fd00:10::25
              ports:
              - port: 8000
                endPort: 8100
            - cidr: 192.168.0.0/16
              ports:
              - port: 22
              - port: 10250
                endPort: 10255
            - cidr: fd00:abcd::/32
            - ip: pod-self
              ports:
              - port: 6060
            - ip: localhost
              ports:
              - port: 15000
            - ip: unspecified
            - ports:
              - port: 25
        ptrace:
          strictMode: false
          permissions: [trace, readby]
        mounts:
        - sourcePattern: /proc**
          fstype: "*"
          flags: [bind, rbind, remount]
        - sourcePattern: "tmpfs"
          fstype: tmpfs
          flags: [ro]
        - sourcePattern: /mnt/**
          fstype: none
          flags: [umount, move]
        - sourcePattern: /dev/vd*
          fstype: "*"
          flags: [all]
        - sourcePattern: "**"
          fstype: sysfs
          flags: [rw]
"#;

/// The corpus: every mode, every built-in rule, raw rules of every kind, every action, and
/// profiles that mix actions.
pub fn corpus() -> Vec<Case> {
    let pod: Vec<IpAddr> = vec![
        "10.244.1.7".parse().unwrap(),
        "fd00:244::7".parse().unwrap(),
    ];
    let mut out = Vec::new();
    let mut add = |name: &str, profile: BpfProfile| {
        out.push(Case {
            name: name.into(),
            profile,
            pod_ips: pod.clone(),
        })
    };
    add(
        "runtime-default",
        profile_of(&policy_yaml("RuntimeDefault", "")),
    );
    add("always-allow", profile_of(&policy_yaml("AlwaysAllow", "")));
    add(
        "modeling",
        profile_of(&format!(
            "{}    modelingOptions:\n      duration: 5\n",
            policy_yaml("BehaviorModeling", "")
        )),
    );
    add(
        "builtins-deny-audit",
        profile_of(&policy_yaml(
            "EnhanceProtect",
            &all_builtins("      auditViolations: true\n"),
        )),
    );
    add(
        "builtins-privileged-deny",
        profile_of(&policy_yaml(
            "EnhanceProtect",
            &all_builtins("      privileged: true\n"),
        )),
    );
    add(
        "raw-deny-audit",
        profile_of(&policy_yaml(
            "EnhanceProtect",
            &format!("      privileged: true\n      auditViolations: true\n{RAW_RULES}"),
        )),
    );
    add(
        "raw-audit",
        profile_of(&policy_yaml(
            "EnhanceProtect",
            &format!("      privileged: true\n      auditViolations: true\n      allowViolations: true\n{RAW_RULES}"),
        )),
    );
    add(
        "raw-complain",
        profile_of(&policy_yaml(
            "EnhanceProtect",
            &format!("      privileged: true\n      allowViolations: true\n{RAW_RULES}"),
        )),
    );
    let strict = RAW_RULES.replace("strictMode: false", "strictMode: true");
    let mut mixed = profile_of(&policy_yaml(
        "EnhanceProtect",
        &format!(
            "{}{}",
            all_builtins("      auditViolations: true\n"),
            strict
        ),
    ));
    mix_actions(&mut mixed);
    add("mixed-actions", mixed);
    // File patterns that all end in a literal: the profile gets a leaf filter, so file_open
    // decides most paths from their last component (the other profiles have a pattern ending
    // in '**', which keeps the filter off).
    let leafy = RAW_RULES
        .replace(
            "        - pattern: /var/log/**\n          permissions: [append]\n",
            "",
        )
        .replace(
            "        - pattern: /tmp/[^x]*/deep/**\n          permissions: [write]\n",
            "",
        );
    assert_ne!(leafy, RAW_RULES);
    add(
        "raw-leaf-filter",
        profile_of(&policy_yaml(
            "EnhanceProtect",
            &format!("      privileged: true\n      auditViolations: true\n{leafy}"),
        )),
    );
    // File and program patterns that all start with a literal first component (the name
    // patterns "*.pem" and "nc" match under any directory): the profile gets the top filter
    // for opens and execs, so file_open and bprm_check_security decide paths below other
    // top-level directories from their first component.
    let rooted = RAW_RULES
        .replace(
            "        - pattern: \"*.pem\"\n          permissions: [write, append]\n",
            "",
        )
        .replace("        - pattern: nc\n          permissions: [exec]\n", "");
    assert_ne!(rooted, RAW_RULES);
    add(
        "raw-top-filter",
        profile_of(&policy_yaml(
            "EnhanceProtect",
            &format!("      privileged: true\n      auditViolations: true\n{rooted}"),
        )),
    );
    out
}

/// 1,024 rules of each kind (files, programs, sockets, egress, mounts): the capacity the
/// enforcer promises per profile.
pub fn thousand_rules_yaml() -> String {
    let mut rules = String::from("      privileged: true\n      bpfRawRules:\n        files:\n");
    for i in 0..1024 {
        rules.push_str(&format!(
            "        - pattern: /srv/app{i}/**/*.key\n          permissions: [read]\n"
        ));
    }
    rules.push_str("        processes:\n");
    for i in 0..1024 {
        rules.push_str(&format!(
            "        - pattern: /opt/bin{i}/*\n          permissions: [exec]\n"
        ));
    }
    rules.push_str("        network:\n          sockets:\n");
    for i in 0..1024 {
        rules.push_str(&format!(
            "          - protocols: [tcp]\n            domains: [{}]\n",
            ["inet", "inet6", "unix", "netlink"][i % 4]
        ));
    }
    rules.push_str("          egress:\n            toDestinations:\n");
    for i in 0..1024 {
        rules.push_str(&format!("            - ip: 10.{}.{}.1\n", i / 256, i % 256));
    }
    rules.push_str("        mounts:\n");
    for i in 0..1024 {
        rules.push_str(&format!(
            "        - sourcePattern: /mnt/m{i}/**\n          fstype: \"*\"\n          flags: [bind]\n"
        ));
    }
    policy_yaml("EnhanceProtect", &rules)
}

/// The profile of [`thousand_rules_yaml`].
pub fn thousand_rules_case() -> Case {
    Case {
        name: "1024-rules".into(),
        profile: profile_of(&thousand_rules_yaml()),
        pod_ips: vec![],
    }
}

/// Gives the rules of a profile every action in turn, so deny, deny+audit, audit and complain
/// rules overlap (the verdict tables are rebuilt).
pub fn mix_actions(p: &mut BpfProfile) {
    let actions = [
        RuleAction::Deny,
        RuleAction::DenyAudit,
        RuleAction::Audit,
        RuleAction::Complain,
    ];
    for (i, r) in p.files.iter_mut().enumerate() {
        r.action = actions[(i * 7 + 1) % 4];
    }
    for (i, r) in p.capabilities.iter_mut().enumerate() {
        r.action = actions[i % 4];
    }
    for (i, r) in p.sockets.iter_mut().enumerate() {
        r.action = actions[(i + 2) % 4];
    }
    for (i, r) in p.egress.iter_mut().enumerate() {
        r.action = actions[(i + 3) % 4];
    }
    for (i, r) in p.ptrace.iter_mut().enumerate() {
        r.action = actions[(i + 1) % 4];
    }
    for (i, r) in p.mounts.iter_mut().enumerate() {
        r.action = actions[i % 4];
    }
    p.path_verdicts = varmor_policy::compile::bpf::path_verdicts(&p.files, &p.path_automaton);
}

/// Strings matched by a pattern (a few per glob), plus near misses.
pub fn pattern_samples(pattern: &str) -> Vec<String> {
    let Ok(p) = Pattern::parse(pattern) else {
        return Vec::new();
    };
    let mut out: Vec<String> = vec![String::new()];
    expand(p.nodes(), &mut out);
    if p.is_name_pattern() {
        out = out
            .into_iter()
            .flat_map(|s| [format!("/usr/bin/{s}"), format!("/{s}")])
            .collect();
    }
    let mut all = Vec::new();
    for s in out {
        all.push(s.clone());
        all.push(format!("{s}x"));
        all.push(format!("{s}/x"));
        if s.len() > 1 {
            all.push(s[..s.len() - 1].to_string());
        }
        if let Some(i) = s.rfind('/') {
            if i + 1 < s.len() {
                let mut t = s.clone();
                t.replace_range(i + 1..i + 2, "Z");
                all.push(t);
            }
        }
        all.push(format!("/zz{s}"));
    }
    all
}

fn expand(nodes: &[Node], acc: &mut Vec<String>) {
    const CAP: usize = 24;
    for n in nodes {
        let options: Vec<String> = match n {
            Node::Byte(b) => vec![(*b as char).to_string()],
            Node::Star => vec![String::new(), "x".into(), "abc".into()],
            Node::DoubleStar => vec![String::new(), "a".into(), "a/b".into()],
            Node::DeepDir => vec!["/".into(), "/d/".into(), "/d/e/".into()],
            Node::Any => vec!["q".into()],
            Node::Class { negated, ranges } => {
                let inside = |b: u8| ranges.iter().any(|(lo, hi)| *lo <= b && b <= *hi);
                let pick = (b'!'..=b'~')
                    .find(|&b| b != b'/' && inside(b) != *negated)
                    .map(|b| (b as char).to_string());
                pick.into_iter().collect()
            }
            Node::Alt(alts) => alts
                .iter()
                .flat_map(|alt| {
                    let mut v = vec![String::new()];
                    expand(alt, &mut v);
                    v
                })
                .collect(),
        };
        let mut next = Vec::new();
        for a in acc.iter() {
            for o in &options {
                if next.len() < CAP {
                    next.push(format!("{a}{o}"));
                }
            }
        }
        *acc = next;
    }
}

/// A path as the kernel reports it: absolute, no empty components, no trailing slash.
pub fn normalize(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| {
        *c == "." || *c == ".." || c.len() > 255 || !c.bytes().all(|b| (b'!'..=b'~').contains(&b))
    }) {
        return None;
    }
    let p = format!("/{}", parts.join("/"));
    (p.len() < 4000).then_some(p)
}

/// Paths worth trying on a profile: samples of its file and mount patterns and common paths.
pub fn paths_for(profile: &BpfProfile) -> Vec<String> {
    let mut set = BTreeSet::new();
    for p in [
        "/etc/passwd",
        "/etc/passwd-",
        "/etc/passwdX",
        "/etc/shadow",
        "/etc/hosts",
        "/etc/ssl/certs/ca.pem",
        "/proc/kcore",
        "/proc/kmem",
        "/proc/sysrq-trigger",
        "/proc/1/mem",
        "/proc/self/mem",
        "/proc/kallsyms",
        "/proc/partitions",
        "/proc/1/mountinfo",
        "/proc/sys/kernel/core_pattern",
        "/sys/firmware/efi/vars",
        "/sys/kernel/security/apparmor/profiles",
        "/sys/fs/cgroup/release_agent",
        "/sys/fs/cgroup/x/release_agent",
        "/sys/fs/cgroup/devices/devices.allow",
        "/root/.ssh/id_rsa",
        "/home/u/.ssh/authorized_keys",
        "/home/u/.sshd",
        "/run/secrets/kubernetes.io/serviceaccount/token",
        "/run/containerd/containerd.sock",
        "/bin/sh",
        "/bin/bash",
        "/usr/bin/dash",
        "/usr/bin/bashful",
        "/bin/busybox",
        "/usr/bin/wget",
        "/usr/bin/curl",
        "/bin/chmod",
        "/bin/su",
        "/usr/bin/sudo",
        "/usr/local/bin/runc",
        "/usr/bin/ping",
        "/usr/sbin/arping",
        "/usr/bin/nc",
        "/usr/bin/ncat",
        "/dev/vda",
        "/dev/vda1",
        "/dev/vdb",
        "/tmp/x",
        "/a",
        "/",
    ] {
        set.insert(p.to_string());
    }
    for r in &profile.files {
        for s in pattern_samples(&r.pattern) {
            if let Some(p) = normalize(&s) {
                set.insert(p);
            }
        }
    }
    for r in &profile.mounts {
        for s in pattern_samples(&r.source) {
            if let Some(p) = normalize(&s) {
                set.insert(p);
            }
        }
    }
    // Long paths: 300 and 3,000 bytes, under a protected tree and not.
    let long = |base: &str, n: usize| {
        let mut p = base.to_string();
        let mut i = 0;
        while p.len() < n {
            p.push_str(&format!("/{}{i}", "d".repeat(60)));
            i += 1;
        }
        p
    };
    for base in ["/var/log", "/srv/other", "/data/app7", "/opt/long/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"] {
        set.insert(long(base, 300));
        set.insert(format!("{}/secret", long(base, 3000)));
        set.insert(format!("{}/k.key", long(base, 3000)));
    }
    set.into_iter().collect()
}

/// Open requests the kernel can make: (permission bits, name).
pub const OPEN_PERMS: &[u32] = &[
    perm::READ,
    perm::WRITE,
    perm::READ | perm::WRITE,
    perm::APPEND,
    perm::READ | perm::APPEND,
];

/// Capabilities the differential tests exercise.
pub const CAPS: std::ops::RangeInclusive<u32> = 0..=40;

/// Addresses for connect accesses: fixed ones, the rules' own and their neighbours.
pub fn addresses_for(profile: &BpfProfile, pod: &[IpAddr]) -> Vec<IpAddr> {
    let mut set: BTreeSet<IpAddr> = [
        "127.0.0.1",
        "127.0.0.2",
        "::1",
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "169.254.169.253",
        "fd00:ec2::254",
        "100.96.0.96",
        "100.100.100.200",
        "192.0.0.192",
        "10.20.30.40",
        "10.20.30.41",
        "192.168.1.1",
        "192.169.0.1",
        "0.0.0.0",
        "::",
        "::ffff:0.0.0.0",
        "fd00:10::25",
        "fd00:abcd:1::1",
        "fd00:abce::1",
        "2001:db8::1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    set.extend(pod.iter().copied());
    for r in &profile.egress {
        match &r.address {
            EgressAddress::Ip(ip) => {
                set.insert(*ip);
            }
            EgressAddress::Cidr(net) => {
                set.insert(net.network());
                set.insert(net.broadcast());
                if let Some(after) = next_ip(net.broadcast()) {
                    set.insert(after);
                }
            }
            _ => {}
        }
    }
    set.into_iter().collect()
}

fn next_ip(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::from(a).checked_add(1).map(|x| IpAddr::V4(x.into())),
        IpAddr::V6(a) => u128::from(a).checked_add(1).map(|x| IpAddr::V6(x.into())),
    }
}

/// Ports for connect accesses.
pub fn ports_for(profile: &BpfProfile) -> Vec<u16> {
    let mut set: BTreeSet<u16> = [1u16, 22, 25, 80, 443, 6060, 8000, 8100, 10250, 15000, 65535]
        .into_iter()
        .collect();
    for r in &profile.egress {
        for p in &r.ports {
            set.insert(p.first);
            set.insert(p.last);
            set.insert(p.first.saturating_sub(1));
            set.insert(p.last.saturating_add(1));
        }
    }
    set.into_iter().collect()
}

/// Socket calls: (domain, type with flags, protocol).
pub fn sockets() -> Vec<(u32, u32, u32)> {
    let mut out = Vec::new();
    for d in [1u32, 2, 10, 16, 17, 38, 40] {
        for t in [1u32, 2, 3, 5, 10, 1 | 0x800, 2 | 0x80000] {
            for p in [0u32, 1, 6, 17, 58] {
                out.push((d, t, p));
            }
        }
    }
    out
}

/// Mount calls: sources, filesystem types, flags.
pub fn mount_sources(profile: &BpfProfile) -> Vec<String> {
    let mut set: BTreeSet<String> = [
        "tmpfs",
        "none",
        "/proc",
        "/proc/sys",
        "/sys",
        "/sys/fs/cgroup",
        "/mnt/a",
        "/dev/vda",
        "/dev/vda1",
        "/dev/sdb",
        "/data",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for r in &profile.mounts {
        for s in pattern_samples(&r.source) {
            if let Some(p) = normalize(&s) {
                set.insert(p);
            }
        }
    }
    set.into_iter().collect()
}

/// Filesystem types for mount(2) calls.
pub const FSTYPES: &[&str] = &[
    "tmpfs",
    "proc",
    "sysfs",
    "securityfs",
    "cgroup",
    "nosuchfs",
    "",
];

/// Flag sets for mount(2) calls.
pub const MOUNT_FLAGS: &[u32] = &[
    0,
    mount::RDONLY,
    mount::NOSUID | mount::NODEV | mount::NOEXEC,
    mount::BIND,
    mount::BIND | mount::REC,
    mount::REMOUNT,
    mount::REMOUNT | mount::RDONLY,
    mount::MOVE,
    mount::PRIVATE,
    mount::SHARED | mount::REC,
];

/// Every access the table tests compare (the kernel tests use subsets they can perform).
pub fn all_accesses(case: &Case) -> Vec<Access> {
    let p = &case.profile;
    let mut out = Vec::new();
    for path in paths_for(p) {
        for &perms in OPEN_PERMS {
            out.push(Access::File {
                path: path.clone(),
                permissions: perms,
            });
        }
        out.push(Access::File {
            path: path.clone(),
            permissions: perm::READ | perm::WRITE | perm::APPEND | perm::EXEC | perm::RENAME,
        });
        out.push(Access::Exec { path });
    }
    for cap in CAPS {
        out.push(Access::Capability(cap));
    }
    for (domain, type_, protocol) in sockets() {
        out.push(Access::Socket {
            domain,
            type_,
            protocol,
        });
    }
    for address in addresses_for(p, &case.pod_ips) {
        for port in ports_for(p) {
            out.push(Access::Connect {
                address,
                port,
                pod_addresses: case.pod_ips.clone(),
            });
        }
    }
    for permission in [ptrace::TRACE, ptrace::READ, ptrace::TRACEBY, ptrace::READBY] {
        for external in [false, true] {
            for peer_is_host in [false, true] {
                if peer_is_host && !external {
                    continue;
                }
                out.push(Access::Ptrace {
                    permission,
                    external,
                    peer_is_host,
                });
            }
        }
    }
    for source in mount_sources(p) {
        for fstype in FSTYPES {
            for &flags in MOUNT_FLAGS {
                out.push(Access::Mount {
                    source: source.clone(),
                    fstype: fstype.to_string(),
                    flags,
                });
            }
        }
        out.push(Access::Umount {
            path: source.clone(),
        });
        out.push(Access::MoveMount { path: source });
    }
    out
}
