//! AppArmor back end: the profile text of a policy, ready for `apparmor_parser`.
//!
//! Every generated profile has the same frame:
//!
//! ```text
//! abi <abi/3.0>,
//! #include <tunables/global>
//!
//! # <which policy and mode it comes from>
//! profile <name> flags=(attach_disconnected,mediate_deleted[,complain]) {
//!   #include <abstractions/base>
//!   <base rules of the mode>
//!   <sections of EnhanceProtect rules>
//!   <transitions to child profiles>
//!   <child profiles>
//! }
//! ```
//!
//! DefenseInDepth profiles are the user's (or the behaviour model's) text, with the raw rules
//! and child profiles inserted before the closing brace of the policy's profile.
//!
//! Rules that apply only to some executables (`targets`) run those executables in a child
//! profile `child_<i>` of the policy's profile (`<target> cx -> child_<i>,`). A child repeats
//! the parent's rules, so running a target never escapes the policy, and adds the rules of its
//! targets.

use super::{Context, DEFENSE_IN_DEPTH, ENHANCE_PROTECT};
use crate::api::{AppArmorRawRules, PolicyMode, ProfileType};
use crate::bundle::AppArmorProfile;
use crate::catalog::{AppArmorLine, BuiltinRule, Category};
use crate::error::FieldErrors;
use crate::identity::{NodeFacts, PolicyKind};

/// Flags of every generated profile: paths a container process sees outside its mount
/// namespace's root (disconnected) are mediated as if under `/`, and deleted files that are
/// still open are mediated by their old name, so neither slips past the rules.
const FLAGS: &str = "attach_disconnected,mediate_deleted";

/// Renders the AppArmor profile of a policy.
pub fn compile(ctx: &Context<'_>) -> Result<AppArmorProfile, FieldErrors> {
    match ctx.mode {
        PolicyMode::AlwaysAllow => Ok(simple_profile(ctx, Base::AlwaysAllow, None)),
        PolicyMode::RuntimeDefault => Ok(simple_profile(ctx, Base::RuntimeDefault, None)),
        PolicyMode::EnhanceProtect => enhance_protect(ctx),
        PolicyMode::BehaviorModeling => Ok(behavior_modeling(ctx)),
        PolicyMode::DefenseInDepth => defense_in_depth(ctx),
    }
}

// ------------------------------------------------------------------------------------------
// Qualifiers and base rules

/// The prefix EnhanceProtect puts in front of its rules (and of the RuntimeDefault denials it
/// builds on): `audit` when violations are audited, `deny` unless they are allowed.
#[derive(Clone, Copy, Debug)]
struct Qualifier {
    audit: bool,
    deny: bool,
}

impl Qualifier {
    /// Plain `deny`: what the RuntimeDefault mode uses.
    const DENY: Qualifier = Qualifier {
        audit: false,
        deny: true,
    };

    fn for_enhance_protect(ctx: &Context<'_>) -> Qualifier {
        Qualifier {
            audit: ctx.audit_violations(),
            deny: !ctx.allow_violations(),
        }
    }

    fn prefix(self) -> &'static str {
        match (self.audit, self.deny) {
            (false, false) => "",
            (true, false) => "audit ",
            (false, true) => "deny ",
            (true, true) => "audit deny ",
        }
    }

    /// A non-file rule (`mount,`, `capability sys_admin,`) with the qualifier.
    fn rule(self, rule: &str) -> String {
        format!("{}{rule}", self.prefix())
    }

    /// A file rule. AppArmor rejects an allow rule that grants `x` without saying which
    /// profile the new program runs under, while a deny rule must not say it; `ix` (stay in
    /// this profile) is what an allow-with-audit rule means here.
    fn file(self, path: &str, perms: &str) -> String {
        let perms = if self.deny {
            perms.to_string()
        } else {
            perms.replace('x', "ix")
        };
        format!("{}{path} {perms},", self.prefix())
    }
}

/// The rules a profile starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Base {
    /// Everything allowed.
    AlwaysAllow,
    /// containerd's default profile.
    RuntimeDefault,
}

impl Base {
    fn title(self) -> &'static str {
        match self {
            Base::AlwaysAllow => "Base rules: AlwaysAllow",
            Base::RuntimeDefault => "Base rules: RuntimeDefault (containerd's default profile)",
        }
    }
}

/// The base rules, with `q` in front of the RuntimeDefault denials. `self_label` is the label
/// of the profile being written, so its processes may signal and trace each other.
fn base_lines(base: Base, q: Qualifier, self_label: &str) -> Vec<String> {
    match base {
        Base::AlwaysAllow => [
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
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        Base::RuntimeDefault => {
            let mut v: Vec<String> = ["network,", "capability,", "file,", "umount,"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            v.push(String::new());
            v.push("# Signals from the host, the OCI runtime and this profile's processes.".into());
            v.push("signal (receive) peer=unconfined,".into());
            v.push("signal (receive) peer=runc,".into());
            v.push("signal (receive) peer=crun,".into());
            v.push(format!("signal (send,receive) peer={self_label},"));
            v.push(String::new());
            v.push("# /proc is read-only except /proc/<pid>/** and /proc/sys/kernel/shm*.".into());
            v.push(q.file("@{PROC}/*", "w"));
            v.push(q.file(
                "@{PROC}/{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9]*}/**",
                "w",
            ));
            v.push(q.file("@{PROC}/sys/[^k]**", "w"));
            v.push(q.file("@{PROC}/sys/kernel/{?,??,[^s][^h][^m]**}", "w"));
            v.push(q.file("@{PROC}/{sysrq-trigger,mem,kmem,kcore}", "rwklx"));
            v.push(String::new());
            v.push(q.rule("mount,"));
            v.push(String::new());
            v.push("# /sys is read-only except the cgroup tree; some parts are hidden.".into());
            for p in [
                "/sys/[^f]*/**",
                "/sys/f[^s]*/**",
                "/sys/fs/[^c]*/**",
                "/sys/fs/c[^g]*/**",
                "/sys/fs/cg[^r]*/**",
            ] {
                v.push(q.file(p, "wklx"));
            }
            for p in [
                "/sys/firmware/**",
                "/sys/devices/virtual/powercap/**",
                "/sys/kernel/security/**",
            ] {
                v.push(q.file(p, "rwklx"));
            }
            v.push(String::new());
            v.push("# Processes of this profile may trace each other.".into());
            v.push(format!(
                "ptrace (trace,read,tracedby,readby) peer={self_label},"
            ));
            v
        }
    }
}

// ------------------------------------------------------------------------------------------
// Profile blocks

/// A `profile NAME flags=(...) { ... }` block.
#[derive(Debug)]
struct Block {
    name: String,
    complain: bool,
    /// Comment lines written above the header.
    comments: Vec<String>,
    /// Body lines, without indentation; an empty string is a blank line.
    lines: Vec<String>,
    /// Child profiles, written after the lines.
    children: Vec<Block>,
}

impl Block {
    fn new(name: impl Into<String>, complain: bool) -> Block {
        Block {
            name: name.into(),
            complain,
            comments: Vec::new(),
            lines: vec!["#include <abstractions/base>".into()],
            children: Vec::new(),
        }
    }

    /// Appends `lines` under a `# title` comment; nothing when `lines` is empty.
    fn section(&mut self, title: &str, lines: Vec<String>) {
        self.lines.extend(section_lines(title, lines));
    }

    fn render(&self, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        for c in &self.comments {
            push_line(out, &pad, &format!("# {c}"));
        }
        push_line(
            out,
            &pad,
            &format!("profile {} {} {{", self.name, flags(self.complain)),
        );
        let inner = " ".repeat(indent + 2);
        for l in &self.lines {
            push_line(out, &inner, l);
        }
        for child in &self.children {
            out.push('\n');
            child.render(indent + 2, out);
        }
        push_line(out, &pad, "}");
    }
}

fn flags(complain: bool) -> String {
    if complain {
        format!("flags=({FLAGS},complain)")
    } else {
        format!("flags=({FLAGS})")
    }
}

fn push_line(out: &mut String, pad: &str, line: &str) {
    if !line.is_empty() {
        out.push_str(pad);
        out.push_str(line);
    }
    out.push('\n');
}

fn section_lines(title: &str, lines: Vec<String>) -> Vec<String> {
    if lines.is_empty() {
        return lines;
    }
    let mut v = vec![String::new(), format!("# {title}")];
    v.extend(lines);
    v
}

/// Where a profile comes from, for the comment above it.
fn origin(ctx: &Context<'_>) -> String {
    let policy = match ctx.identity.kind {
        PolicyKind::VarmorPolicy => {
            format!(
                "VarmorPolicy {}/{}",
                ctx.identity.namespace, ctx.identity.name
            )
        }
        PolicyKind::VarmorClusterPolicy => format!("VarmorClusterPolicy {}", ctx.identity.name),
    };
    format!(
        "Generated by varmor from {policy}, mode {}. Do not edit.",
        ctx.mode
    )
}

/// The whole file: the preamble, then the profile.
fn document(ctx: &Context<'_>, mut block: Block) -> AppArmorProfile {
    block.comments.insert(0, origin(ctx));
    let mut text = String::from("abi <abi/3.0>,\n#include <tunables/global>\n\n");
    block.render(0, &mut text);
    AppArmorProfile {
        name: block.name.clone(),
        complain: block.complain,
        text,
    }
}

/// AlwaysAllow and RuntimeDefault: the base rules and nothing else. `note` explains why the
/// mode's own profile is not used.
fn simple_profile(ctx: &Context<'_>, base: Base, note: Option<&str>) -> AppArmorProfile {
    let mut block = Block::new(&ctx.profile_name, false);
    block.comments.extend(note.map(str::to_string));
    block.lines.push(String::new());
    block
        .lines
        .extend(base_lines(base, Qualifier::DENY, &ctx.profile_name));
    document(ctx, block)
}

/// BehaviorModeling: an empty profile in complain mode, so the kernel logs every access
/// (`apparmor="ALLOWED"`) and blocks nothing.
fn behavior_modeling(ctx: &Context<'_>) -> AppArmorProfile {
    document(ctx, Block::new(&ctx.profile_name, true))
}

// ------------------------------------------------------------------------------------------
// EnhanceProtect

fn enhance_protect(ctx: &Context<'_>) -> Result<AppArmorProfile, FieldErrors> {
    let q = Qualifier::for_enhance_protect(ctx);
    let base = if ctx.privileged() {
        Base::AlwaysAllow
    } else {
        Base::RuntimeDefault
    };
    let devices = disk_device_paths(ctx.facts);
    let name = &ctx.profile_name;

    // The rules that apply to every process of the container, section by section. Only
    // attack protection entries have targets; a rule named twice is written once.
    let selected = ctx.builtins();
    let global_section = |category: Category| {
        let mut seen: Vec<&str> = Vec::new();
        let mut lines = Vec::new();
        for s in &selected {
            if s.rule.category == category
                && s.targets.is_empty()
                && s.rule.supports_apparmor()
                && !seen.contains(&s.rule.name)
            {
                seen.push(s.rule.name);
                lines.extend(builtin_lines(s.rule, q, &devices));
            }
        }
        lines
    };
    let mut shared = section_lines("Hardening Rules", global_section(Category::Hardening));
    shared.extend(section_lines(
        "Attack Protection Rules",
        global_section(Category::AttackProtection),
    ));
    shared.extend(section_lines(
        "Vulnerability Mitigation Rules",
        global_section(Category::VulMitigation),
    ));
    let raw = &ctx.enhance.app_armor_raw_rules;
    shared.extend(section_lines("Custom Rules", global_raw_lines(raw)));

    // Rules for some executables only.
    let mut errors = FieldErrors::new();
    for (i, entry) in ctx.enhance.attack_protection_rules.iter().enumerate() {
        check_targets(
            &entry.targets,
            &format!("{ENHANCE_PROTECT}.attackProtectionRules[{i}]"),
            &mut errors,
        );
    }
    for (i, entry) in raw.iter().enumerate() {
        check_targets(
            &entry.targets,
            &format!("{ENHANCE_PROTECT}.appArmorRawRules[{i}]"),
            &mut errors,
        );
    }
    errors.into_result(())?;
    let mut per_rule: Vec<(Vec<TargetRule<'_>>, &[String])> = Vec::new();
    for s in &selected {
        if !s.targets.is_empty() && s.rule.supports_apparmor() {
            per_rule.push((vec![TargetRule::Builtin(s.rule)], s.targets));
        }
    }
    per_rule.extend(raw_rules_with_targets(raw));
    let groups = group_targets(&per_rule);

    let mut parent = Block::new(name, false);
    parent.section(base.title(), base_lines(base, q, name));
    parent.lines.extend(shared.iter().cloned());
    parent.section(
        "Executables that run in child profiles",
        transition_lines(name, &groups),
    );
    for (i, group) in groups.iter().enumerate() {
        let child_label = format!("{name}//child_{i}");
        let mut inherited = section_lines(base.title(), base_lines(base, q, &child_label));
        inherited.extend(shared.iter().cloned());
        let mut builtins = Vec::new();
        let mut raws = Vec::new();
        for r in &group.rules {
            match r {
                TargetRule::Builtin(rule) => builtins.extend(builtin_lines(rule, q, &devices)),
                TargetRule::Raw(text) => raws.extend(raw_lines(text)),
            }
        }
        let mut own = section_lines("Attack Protection Rules For Targets", builtins);
        own.extend(section_lines("Custom Rules For Targets", raws));
        parent
            .children
            .push(child_block(name, i, false, inherited, own, &group.targets));
    }
    Ok(document(ctx, parent))
}

/// The lines of one built-in rule, under a comment with its name.
fn builtin_lines(rule: &BuiltinRule, q: Qualifier, devices: &[String]) -> Vec<String> {
    let mut v = vec![format!("# {}", rule.name)];
    for line in rule.apparmor {
        match line {
            AppArmorLine::Rule(r) => v.push(q.rule(r)),
            AppArmorLine::Exec(path) => v.push(q.file(path, "rx")),
            AppArmorLine::DiskDeviceFiles => v.extend(devices.iter().map(|d| q.file(d, "rw"))),
            AppArmorLine::DiskDeviceMounts => {
                v.extend(devices.iter().map(|d| q.rule(&format!("mount {d},"))))
            }
        }
    }
    v
}

/// `/dev/<disk>` for each disk device of the node, written as AppArmor paths: the node's own
/// names are literals (escaped), the fallback names are patterns.
fn disk_device_paths(facts: &NodeFacts) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let paths = match &facts.disk_devices {
        Some(names) => names
            .iter()
            // A name with a control character cannot come from /proc/partitions and cannot
            // be written in a profile.
            .filter(|n| !n.is_empty() && !n.chars().any(char::is_control))
            .map(|n| literal_path(&format!("/dev/{n}")))
            .collect::<Vec<_>>(),
        None => facts
            .disk_device_names()
            .iter()
            .map(|p| format!("/dev/{p}"))
            .collect(),
    };
    for p in paths {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// `path` as an AppArmor path that matches only itself: pattern and variable characters are
/// escaped, and the path is quoted when it holds blanks.
fn literal_path(path: &str) -> String {
    let mut s = String::with_capacity(path.len() + 2);
    for c in path.chars() {
        if matches!(
            c,
            '\\' | '"' | '*' | '?' | '[' | ']' | '{' | '}' | '^' | '@' | ','
        ) {
            s.push('\\');
        }
        s.push(c);
    }
    if s.chars().any(|c| c.is_whitespace() || c == '#') {
        format!("\"{s}\"")
    } else {
        s
    }
}

/// Raw rule text as profile lines: trimmed, blank lines dropped. The profile's indentation
/// replaces the user's (AppArmor ignores it), so rules spanning lines keep working.
fn raw_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn global_raw_lines(raw: &[AppArmorRawRules]) -> Vec<String> {
    raw.iter()
        .filter(|r| r.targets.is_empty())
        .flat_map(|r| raw_lines(&r.rules))
        .collect()
}

fn raw_rules_with_targets(raw: &[AppArmorRawRules]) -> Vec<(Vec<TargetRule<'_>>, &[String])> {
    raw.iter()
        .filter(|r| !r.targets.is_empty() && !raw_lines(&r.rules).is_empty())
        .map(|r| {
            (
                vec![TargetRule::Raw(r.rules.as_str())],
                r.targets.as_slice(),
            )
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Targets and child profiles

/// One rule that applies to some executables only.
#[derive(Clone, Copy, Debug)]
enum TargetRule<'a> {
    Builtin(&'static BuiltinRule),
    Raw(&'a str),
}

impl PartialEq for TargetRule<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TargetRule::Builtin(a), TargetRule::Builtin(b)) => a.name == b.name,
            (TargetRule::Raw(a), TargetRule::Raw(b)) => a == b,
            _ => false,
        }
    }
}

/// Executables that share one child profile, and the rules only they get.
#[derive(Debug)]
struct TargetGroup<'a> {
    targets: Vec<&'a str>,
    rules: Vec<TargetRule<'a>>,
}

/// Works out the child profiles: first the rules of each executable (the union over every
/// entry that names it, so an executable named by two entries gets one child with both sets
/// of rules and one `cx` transition — two would conflict), then executables with the same
/// rules share a child. Order is that of first appearance, so the output is stable.
fn group_targets<'a>(entries: &[(Vec<TargetRule<'a>>, &'a [String])]) -> Vec<TargetGroup<'a>> {
    let mut per_target: Vec<(&'a str, Vec<TargetRule<'a>>)> = Vec::new();
    for (rules, targets) in entries {
        for t in targets.iter() {
            let idx = match per_target.iter().position(|(p, _)| *p == t.as_str()) {
                Some(i) => i,
                None => {
                    per_target.push((t.as_str(), Vec::new()));
                    per_target.len() - 1
                }
            };
            for r in rules {
                if !per_target[idx].1.contains(r) {
                    per_target[idx].1.push(*r);
                }
            }
        }
    }
    let mut groups: Vec<TargetGroup<'a>> = Vec::new();
    for (target, rules) in per_target {
        match groups.iter_mut().find(|g| g.rules == rules) {
            Some(g) => g.targets.push(target),
            None => groups.push(TargetGroup {
                targets: vec![target],
                rules,
            }),
        }
    }
    groups
}

/// Targets must be absolute paths without pattern characters: AppArmor cannot combine a
/// pattern `cx` transition with the `file,` rule of the base profile (conflicting exec
/// modes), and a relative path never matches.
fn check_targets(targets: &[String], field: &str, errors: &mut FieldErrors) {
    for (j, t) in targets.iter().enumerate() {
        let path = format!("{field}.targets[{j}]");
        if !t.starts_with('/') {
            errors.push(
                path,
                format!("{t:?} is not an absolute path: targets are the full paths of executables"),
            );
        } else if let Some(c) = t
            .chars()
            .find(|c| matches!(c, '*' | '?' | '[' | ']' | '{' | '}'))
        {
            errors.push(
                path,
                format!("{t:?} contains the pattern character {c:?}: AppArmor targets must be exact executable paths"),
            );
        } else if t.chars().any(char::is_control) {
            errors.push(path, format!("{t:?} contains a control character"));
        }
    }
}

/// What the parent profile needs for each child: run the targets in it, and signal and trace
/// its processes (a child label is a different peer).
fn transition_lines(parent: &str, groups: &[TargetGroup<'_>]) -> Vec<String> {
    let mut v = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        for t in &g.targets {
            v.push(format!("{} cx -> child_{i},", literal_path(t)));
        }
        v.push(format!("signal (send) peer={parent}//child_{i},"));
        v.push(format!("ptrace (trace,read) peer={parent}//child_{i},"));
    }
    v
}

/// A child profile: the parent's rules (`inherited`), the group's own rules, the right to run
/// its targets, and the signal and ptrace rules that match the parent's.
fn child_block(
    parent: &str,
    index: usize,
    complain: bool,
    inherited: Vec<String>,
    own: Vec<String>,
    targets: &[&str],
) -> Block {
    let mut b = Block::new(format!("child_{index}"), complain);
    b.comments
        .push(format!("Child profile for {}", targets.join(", ")));
    b.lines.extend(inherited);
    b.lines.extend(own);
    let mut tail: Vec<String> = targets
        .iter()
        .map(|t| format!("{} rix,", literal_path(t)))
        .collect();
    tail.push(format!("signal (receive) peer={parent},"));
    tail.push(format!("ptrace (tracedby,readby) peer={parent},"));
    b.section("The targets, and the parent profile as a peer", tail);
    b
}

// ------------------------------------------------------------------------------------------
// DefenseInDepth

fn defense_in_depth(ctx: &Context<'_>) -> Result<AppArmorProfile, FieldErrors> {
    let did = ctx.spec.policy.defense_in_depth.as_ref();
    let Some(aa) = did.and_then(|d| d.app_armor.as_ref()) else {
        return Ok(simple_profile(
            ctx,
            Base::AlwaysAllow,
            Some("spec.policy.defenseInDepth.appArmor is not set: AppArmor allows everything (AlwaysAllow)."),
        ));
    };
    let allow_violations = did.is_some_and(|d| d.allow_violations);
    let field = format!("{DEFENSE_IN_DEPTH}.appArmor");
    let mut errors = FieldErrors::new();
    let (text, source_field) = match aa.profile_type {
        ProfileType::Custom => {
            let f = format!("{field}.customProfile");
            match aa
                .custom_profile
                .as_deref()
                .filter(|t| !t.trim().is_empty())
            {
                Some(t) => (t, f),
                None => {
                    errors.push(f, "is required when profileType is Custom");
                    return Err(errors);
                }
            }
        }
        ProfileType::BehaviorModel => {
            let f = format!("{field}.profileType");
            match ctx
                .model
                .and_then(|m| m.app_armor.as_deref())
                .filter(|t| !t.trim().is_empty())
            {
                Some(t) => (t, f),
                None => {
                    errors.push(
                        f,
                        "BehaviorModel: no behaviour model AppArmor profile exists yet for this policy; \
                         run it in BehaviorModeling mode until modeling completes, or use profileType Custom",
                    );
                    return Err(errors);
                }
            }
        }
    };
    let span = match find_profile(text) {
        Ok(s) => s,
        Err(reason) => {
            errors.push(source_field, reason);
            return Err(errors);
        }
    };
    if span.name != ctx.profile_name {
        errors.push(
            source_field,
            format!(
                "declares profile {:?}, but the profile name must be the policy's profile name {:?}",
                span.name, ctx.profile_name
            ),
        );
    }
    for (i, entry) in aa.app_armor_raw_rules.iter().enumerate() {
        check_targets(
            &entry.targets,
            &format!("{field}.appArmorRawRules[{i}]"),
            &mut errors,
        );
    }
    errors.into_result(())?;

    let name = &ctx.profile_name;
    let groups = group_targets(&raw_rules_with_targets(&aa.app_armor_raw_rules));
    let mut header = text[span.header..span.open].to_string();
    if allow_violations {
        header = with_complain_flag(&header);
    }
    let complain = header_has_complain(&header);

    // The user's rules, less the exec rules of targets, which would conflict with the
    // transition to their child profile.
    let body = remove_target_exec_rules(&text[span.open + 1..span.close], &groups);
    let global_raw = global_raw_lines(&aa.app_armor_raw_rules);
    let mut added = section_lines("Custom Rules", global_raw.clone());
    added.extend(section_lines(
        "Executables that run in child profiles",
        transition_lines(name, &groups),
    ));

    let mut out = String::with_capacity(text.len() + 256);
    out.push_str(&text[..span.header]);
    out.push_str(&header);
    out.push('{');
    out.push_str(body.trim_end());
    out.push('\n');
    for l in &added {
        push_line(&mut out, "  ", l);
    }
    // A child inherits the user's rules as written: its own `TARGET ix,` agrees with the
    // `TARGET rix,` it gets.
    let inherited = {
        let mut v = dedent(&text[span.open + 1..span.close]);
        v.extend(section_lines("Custom Rules", global_raw));
        v
    };
    for (i, g) in groups.iter().enumerate() {
        let own = section_lines(
            "Custom Rules For Targets",
            g.rules
                .iter()
                .flat_map(|r| match r {
                    TargetRule::Raw(t) => raw_lines(t),
                    TargetRule::Builtin(_) => Vec::new(),
                })
                .collect(),
        );
        let mut child = child_block(name, i, complain, inherited.clone(), own, &g.targets);
        // The user's body already has its own includes.
        child.lines.remove(0);
        out.push('\n');
        child.render(2, &mut out);
    }
    out.push_str(&text[span.close..]);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(AppArmorProfile {
        name: name.clone(),
        text: out,
        complain,
    })
}

/// Where the policy's profile is in a profile text.
#[derive(Debug)]
struct ProfileSpan {
    /// Offset of the `profile` keyword.
    header: usize,
    /// The declared name.
    name: String,
    /// Offset of the opening `{`.
    open: usize,
    /// Offset of the matching `}`.
    close: usize,
}

/// Finds the first top-level `profile NAME ... {` of `text` and its closing brace, skipping
/// comments and quoted strings. A `{` inside a word (`/usr/{bin,sbin}`, `@{PROC}`) is an
/// alternation or a variable, not a block.
fn find_profile(text: &str) -> Result<ProfileSpan, String> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut header: Option<(usize, String)> = None;
    let mut open: Option<usize> = None;
    let mut i = 0;
    while i < b.len() {
        let at_word_start = i == 0 || b[i - 1].is_ascii_whitespace();
        match b[i] {
            b'#' if at_word_start => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => i = skip_quoted(b, i),
            b'{' => {
                let after_flags = i > 0 && b[i - 1] == b')';
                if depth == 0
                    && header.is_some()
                    && open.is_none()
                    && (at_word_start || after_flags)
                {
                    open = Some(i);
                }
                depth += 1;
            }
            b'}' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("has a '}' without a matching '{'")?;
                if let (0, Some(o), Some((h, name))) = (depth, open, header.as_ref()) {
                    return Ok(ProfileSpan {
                        header: *h,
                        name: name.clone(),
                        open: o,
                        close: i,
                    });
                }
            }
            b'p' if depth == 0
                && header.is_none()
                && at_word_start
                && text[i..].starts_with("profile")
                && b.get(i + 7).is_some_and(u8::is_ascii_whitespace) =>
            {
                let (name, end) = profile_name(text, i + 7);
                if name.is_empty() {
                    return Err("has a 'profile' keyword without a name".into());
                }
                header = Some((i, name));
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if header.is_some() {
        Err("has no closing '}' for its profile".into())
    } else {
        Err("declares no profile: it must contain 'profile <name> ... { ... }' with the policy's profile name".into())
    }
}

/// Index of the byte after the closing quote of the string that starts at `start`.
fn skip_quoted(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() && b[i] != b'"' {
        if b[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    i
}

/// The profile name after `profile` at `from` (quoted or bare), and where it ends.
fn profile_name(text: &str, from: usize) -> (String, usize) {
    let b = text.as_bytes();
    let mut i = from;
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    if b.get(i) == Some(&b'"') {
        let end = skip_quoted(b, i);
        let inner = &text[i + 1..end.min(b.len())];
        return (
            inner.replace("\\\"", "\"").replace("\\\\", "\\"),
            (end + 1).min(b.len()),
        );
    }
    let start = i;
    while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'{' {
        i += 1;
    }
    (text[start..i].to_string(), i)
}

/// The flag list of a header (`flags=(a,b)` or `(a,b)`): the byte range inside the
/// parentheses.
fn flag_range(header: &str) -> Option<(usize, usize)> {
    let open = header.find('(')?;
    let close = open + header[open..].find(')')?;
    Some((open + 1, close))
}

fn header_has_complain(header: &str) -> bool {
    flag_range(header).is_some_and(|(a, b)| {
        header[a..b]
            .split(|c: char| c == ',' || c.is_whitespace())
            .any(|f| f == "complain")
    })
}

/// The header with `complain` added to its flags.
fn with_complain_flag(header: &str) -> String {
    if header_has_complain(header) {
        return header.to_string();
    }
    match flag_range(header) {
        Some((a, b)) if header[a..b].trim().is_empty() => {
            format!("{}complain{}", &header[..a], &header[b..])
        }
        Some((_, b)) => format!("{},complain{}", &header[..b], &header[b..]),
        None => format!("{} flags=(complain) ", header.trim_end()),
    }
}

/// Replaces the user's `TARGET ix,` style rules (the behaviour model writes one per program
/// it saw run) by a comment: the target now runs in a child profile, and an exact exec rule
/// with another mode next to its `cx` rule is a conflict AppArmor rejects.
fn remove_target_exec_rules(body: &str, groups: &[TargetGroup<'_>]) -> String {
    let mut out = String::with_capacity(body.len());
    for (n, line) in body.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let child = exec_rule_path(line)
            .and_then(|p| groups.iter().position(|g| g.targets.contains(&p.as_str())));
        match child {
            Some(i) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                out.push_str(&format!("{indent}# {} (runs in child_{i})", line.trim()));
            }
            None => out.push_str(line),
        }
    }
    out
}

/// The path of a plain `PATH <perms with ix>,` line.
fn exec_rule_path(line: &str) -> Option<String> {
    let line = line.trim();
    let rule = line.strip_suffix(',')?;
    let (path, perms) = rule.rsplit_once(char::is_whitespace)?;
    let path = path.trim();
    let path = path
        .strip_prefix('"')
        .and_then(|p| p.strip_suffix('"'))
        .unwrap_or(path);
    let exec_perms = perms.chars().all(|c| "rmix".contains(c)) && perms.contains("ix");
    (exec_perms && path.starts_with('/')).then(|| path.to_string())
}

/// The lines of `text` without their common indentation, and without leading and trailing
/// blank lines.
fn dedent(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let indent = lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut v: Vec<String> = lines
        .iter()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                l[indent..].to_string()
            }
        })
        .collect();
    while v.first().is_some_and(String::is_empty) {
        v.remove(0);
    }
    while v.last().is_some_and(String::is_empty) {
        v.pop();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_profile_past_comments_alternations_and_variables() {
        let text = "abi <abi/3.0>,\n# profile fake {\n@{X}={a,b}\nprofile \"p q\" /usr/{bin,sbin}/x flags=(complain){\n  file, # }\n  \"/a}\" r,\n}\nprofile other {}\n";
        let s = find_profile(text).unwrap();
        assert_eq!(s.name, "p q");
        assert_eq!(&text[s.open..s.open + 1], "{");
        assert_eq!(&text[s.close + 1..s.close + 2], "\n");
        assert!(text[s.close..].starts_with("}\nprofile other"));
        assert!(find_profile("# nothing\n").is_err());
        assert!(find_profile("profile x {\n").is_err());
    }

    #[test]
    fn complain_flag_is_added_once() {
        assert_eq!(
            with_complain_flag("profile x "),
            "profile x flags=(complain) "
        );
        assert_eq!(
            with_complain_flag("profile x flags=(a) "),
            "profile x flags=(a,complain) "
        );
        assert_eq!(
            with_complain_flag("profile x flags=() "),
            "profile x flags=(complain) "
        );
        assert_eq!(
            with_complain_flag("profile x flags=(complain) "),
            "profile x flags=(complain) "
        );
    }

    #[test]
    fn literal_paths_escape_pattern_characters() {
        assert_eq!(literal_path("/dev/sda"), "/dev/sda");
        assert_eq!(literal_path("/dev/a*[b]"), "/dev/a\\*\\[b\\]");
        assert_eq!(literal_path("/opt/my app"), "\"/opt/my app\"");
    }

    #[test]
    fn exec_rules_of_targets_are_recognised() {
        assert_eq!(
            exec_rule_path("  /usr/bin/curl ix,").as_deref(),
            Some("/usr/bin/curl")
        );
        assert_eq!(exec_rule_path("\"/a b\" rix,").as_deref(), Some("/a b"));
        assert_eq!(exec_rule_path("/usr/bin/curl r,"), None);
        assert_eq!(exec_rule_path("capability sys_admin,"), None);
    }
}
