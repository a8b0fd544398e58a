//! Path patterns of BPF file, process and mount rules.
//!
//! # Semantics
//!
//! Patterns use AppArmor-style globbing and are matched against the **whole** path (or, for a
//! pattern without `/`, against the last path component):
//!
//! | syntax     | matches |
//! |------------|---------|
//! | `x`        | the byte `x`; `/etc/passwd` matches only `/etc/passwd` (not `/etc/passwd-`) |
//! | `*`        | any run of bytes without `/`, possibly empty |
//! | `**`       | any run of bytes, `/` included, possibly empty |
//! | `/**/`     | `/`, or `/…/`: zero or more whole directories (`/tmp/**/x` matches `/tmp/x`) |
//! | `?`        | one byte other than `/` |
//! | `[abc]`, `[a-z]` | one byte of the set; `[^…]` one byte outside the set and not `/` |
//! | `{a,b,…}`  | any of the comma-separated alternatives, which may hold globs and nest |
//! | `\x`       | the byte `x` literally |
//!
//! A pattern that contains no `/` is a *name pattern*: it matches a path whose last component
//! matches it (`busybox` matches `/bin/busybox` and `busybox`); inside a name pattern `**`
//! behaves like `*`.
//!
//! These differ from vArmor, whose BPF enforcer keeps a 63-byte prefix and suffix per rule: it
//! accepts one glob per pattern, and its "precise" patterns are really prefix matches.
//!
//! [`Pattern::matches`] is the reference matcher: a direct backtracking interpretation of the
//! syntax above, used to check the automaton that [`crate::automaton`] builds.

use std::fmt;

/// Longest accepted pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 128;

/// One element of a parsed pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A literal byte.
    Byte(u8),
    /// `*`: any bytes except `/`.
    Star,
    /// `**`: any bytes.
    DoubleStar,
    /// `/**/`: `/` followed by zero or more `dir/` components.
    DeepDir,
    /// `?`: one byte except `/`.
    Any,
    /// `[...]`: one byte in (or, when negated, outside) the ranges; a negated set never
    /// matches `/`.
    Class {
        /// Whether the set is `[^...]`.
        negated: bool,
        /// Inclusive byte ranges.
        ranges: Vec<(u8, u8)>,
    },
    /// `{a,b}`: alternatives.
    Alt(Vec<Vec<Node>>),
}

/// A parsed, valid pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    nodes: Vec<Node>,
    name_only: bool,
}

/// Why a pattern is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    /// Human-readable reason, lower case.
    pub reason: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for PatternError {}

fn err<T>(reason: impl Into<String>) -> Result<T, PatternError> {
    Err(PatternError {
        reason: reason.into(),
    })
}

impl Pattern {
    /// Parses and checks a pattern.
    pub fn parse(source: &str) -> Result<Pattern, PatternError> {
        if source.is_empty() {
            return err("pattern is empty");
        }
        if source.len() > MAX_PATTERN_LEN {
            return err(format!(
                "pattern is {} bytes long; the limit is {MAX_PATTERN_LEN}",
                source.len()
            ));
        }
        if source.contains('\0') {
            return err("pattern contains a NUL byte");
        }
        if source.contains("@{") {
            return err("AppArmor variables (@{...}) are not supported in BPF patterns");
        }
        let name_only = !source.contains('/');
        let mut parser = Parser {
            bytes: source.as_bytes(),
            pos: 0,
            depth: 0,
        };
        let nodes = parser.sequence(false)?;
        if parser.pos != parser.bytes.len() {
            return err(format!(
                "unexpected '{}' at byte {}",
                parser.bytes[parser.pos] as char, parser.pos
            ));
        }
        if !name_only && !source.starts_with(['/', '*', '{', '[', '?']) {
            return err("a pattern with '/' must be an absolute path (start with '/')");
        }
        let nodes = if name_only { name_nodes(nodes) } else { nodes };
        Ok(Pattern {
            source: source.to_string(),
            nodes,
            name_only,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The parsed elements.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Whether this is a name pattern (no `/`), matched against the last path component.
    pub fn is_name_pattern(&self) -> bool {
        self.name_only
    }

    /// Whether the pattern has no glob at all (matches exactly one string).
    pub fn is_literal(&self) -> bool {
        self.nodes.iter().all(|n| matches!(n, Node::Byte(_)))
    }

    /// The pattern of reversed paths: `p.reversed().matches(r)` exactly when `p.matches(s)`
    /// for `r` the bytes of `s` in reverse order. Every construct is its own mirror image
    /// (`/**/` included) except sequences and alternatives, which are reversed; a name
    /// pattern becomes the reversed name followed by nothing or by `/` and anything (the rest
    /// of the path, reversed). The result is never a name pattern; its source is the original
    /// with a `reversed:` prefix, for messages.
    pub fn reversed(&self) -> Pattern {
        let mut nodes = reverse_nodes(&self.nodes);
        if self.name_only {
            nodes.push(Node::Alt(vec![
                Vec::new(),
                vec![Node::Byte(b'/'), Node::DoubleStar],
            ]));
        }
        Pattern {
            source: format!("reversed:{}", self.source),
            nodes,
            name_only: false,
        }
    }

    /// Reference matcher: whether `path` matches the pattern.
    pub fn matches(&self, path: &[u8]) -> bool {
        if self.name_only {
            // The last component: everything after the last '/'.
            let start = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
            return Matcher {
                failed: Default::default(),
            }
            .seq(&self.nodes, &path[start..], &[]);
        }
        Matcher {
            failed: Default::default(),
        }
        .seq(&self.nodes, path, &[])
    }
}

/// Inside a name pattern (matched against one component) `**` is `*`, and no class can match
/// `/` (a range such as `[!-0]` covers it).
fn name_nodes(nodes: Vec<Node>) -> Vec<Node> {
    nodes
        .into_iter()
        .map(|n| match n {
            Node::DoubleStar => Node::Star,
            Node::Class {
                negated: false,
                ranges,
            } => Node::Class {
                negated: false,
                ranges: without_slash(ranges),
            },
            Node::Alt(alts) => Node::Alt(alts.into_iter().map(name_nodes).collect()),
            other => other,
        })
        .collect()
}

/// The ranges with the byte `/` taken out.
fn without_slash(ranges: Vec<(u8, u8)>) -> Vec<(u8, u8)> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for (lo, hi) in ranges {
        if lo <= b'/' && b'/' <= hi {
            if lo < b'/' {
                out.push((lo, b'/' - 1));
            }
            if hi > b'/' {
                out.push((b'/' + 1, hi));
            }
        } else {
            out.push((lo, hi));
        }
    }
    out
}

/// The nodes matching the reversed strings of `nodes`.
fn reverse_nodes(nodes: &[Node]) -> Vec<Node> {
    nodes
        .iter()
        .rev()
        .map(|n| match n {
            Node::Alt(alts) => Node::Alt(alts.iter().map(|a| reverse_nodes(a)).collect()),
            other => other.clone(),
        })
        .collect()
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Parses until the end, or (inside braces) until an unescaped `,` or `}`.
    fn sequence(&mut self, in_alt: bool) -> Result<Vec<Node>, PatternError> {
        let mut out: Vec<Node> = Vec::new();
        while let Some(b) = self.peek() {
            match b {
                b',' | b'}' if in_alt => break,
                b'}' => return err(format!("unmatched '}}' at byte {}", self.pos)),
                b'\\' => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c) => {
                            out.push(Node::Byte(c));
                            self.pos += 1;
                        }
                        None => return err("pattern ends with a lone '\\'"),
                    }
                }
                b'*' => {
                    self.pos += 1;
                    if self.peek() == Some(b'*') {
                        self.pos += 1;
                        while self.peek() == Some(b'*') {
                            self.pos += 1;
                        }
                        // `/**/` spans zero or more whole directories.
                        if out.last() == Some(&Node::Byte(b'/')) && self.peek() == Some(b'/') {
                            out.pop();
                            self.pos += 1;
                            out.push(Node::DeepDir);
                        } else {
                            out.push(Node::DoubleStar);
                        }
                    } else {
                        out.push(Node::Star);
                    }
                }
                b'?' => {
                    self.pos += 1;
                    out.push(Node::Any);
                }
                b'[' => out.push(self.class()?),
                b'{' => {
                    let open = self.pos;
                    self.pos += 1;
                    self.depth += 1;
                    if self.depth > 8 {
                        return err("alternations nest deeper than 8 levels");
                    }
                    let mut alts = vec![self.sequence(true)?];
                    loop {
                        match self.peek() {
                            Some(b',') => {
                                self.pos += 1;
                                alts.push(self.sequence(true)?);
                            }
                            Some(b'}') => {
                                self.pos += 1;
                                break;
                            }
                            _ => return err(format!("unclosed '{{' at byte {open}")),
                        }
                    }
                    self.depth -= 1;
                    out.push(Node::Alt(alts));
                }
                _ => {
                    self.pos += 1;
                    out.push(Node::Byte(b));
                }
            }
        }
        Ok(out)
    }

    fn class(&mut self) -> Result<Node, PatternError> {
        let open = self.pos;
        self.pos += 1;
        let negated = matches!(self.peek(), Some(b'^'));
        if negated {
            self.pos += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let Some(mut b) = self.peek() else {
                return err(format!("unclosed '[' at byte {open}"));
            };
            if b == b']' && !first {
                self.pos += 1;
                break;
            }
            first = false;
            self.pos += 1;
            if b == b'\\' {
                b = match self.peek() {
                    Some(c) => c,
                    None => return err(format!("unclosed '[' at byte {open}")),
                };
                self.pos += 1;
            }
            let mut hi = b;
            if self.peek() == Some(b'-') && self.bytes.get(self.pos + 1).is_some_and(|&c| c != b']')
            {
                self.pos += 1;
                let mut c = self.bytes[self.pos];
                self.pos += 1;
                if c == b'\\' {
                    c = match self.peek() {
                        Some(c) => c,
                        None => return err(format!("unclosed '[' at byte {open}")),
                    };
                    self.pos += 1;
                }
                if c < b {
                    return err(format!(
                        "range '{}-{}' in '[' at byte {open} is reversed",
                        b as char, c as char
                    ));
                }
                hi = c;
            }
            ranges.push((b, hi));
        }
        Ok(Node::Class { negated, ranges })
    }
}

fn class_matches(negated: bool, ranges: &[(u8, u8)], b: u8) -> bool {
    let inside = ranges.iter().any(|&(lo, hi)| lo <= b && b <= hi);
    if negated {
        !inside && b != b'/'
    } else {
        inside
    }
}

/// A backtracking matcher that remembers the (pattern position, input position) pairs that
/// failed, so patterns with several `*`/`**` stay polynomial. A pattern position is the node
/// slice plus the stack of continuations after enclosing alternations, all identified by
/// address and length (they all point into the one parsed pattern).
struct Matcher {
    failed: std::collections::HashSet<(Vec<(usize, usize)>, usize)>,
}

type Key = Vec<(usize, usize)>;

fn key(nodes: &[Node], cont: &[&[Node]]) -> Key {
    let mut k: Key = cont
        .iter()
        .map(|c| (c.as_ptr() as usize, c.len()))
        .collect();
    k.push((nodes.as_ptr() as usize, nodes.len()));
    k
}

impl Matcher {
    /// Matches `nodes` followed by the continuation stack `cont` (innermost last) against `s`.
    fn seq(&mut self, nodes: &[Node], s: &[u8], cont: &[&[Node]]) -> bool {
        let memo = (key(nodes, cont), s.len());
        if self.failed.contains(&memo) {
            return false;
        }
        let matched = self.step(nodes, s, cont);
        if !matched {
            self.failed.insert(memo);
        }
        matched
    }

    fn step(&mut self, nodes: &[Node], s: &[u8], cont: &[&[Node]]) -> bool {
        let Some((first, rest)) = nodes.split_first() else {
            return match cont.split_last() {
                None => s.is_empty(),
                Some((next, outer)) => self.seq(next, s, outer),
            };
        };
        match first {
            Node::Byte(b) => s.first() == Some(b) && self.seq(rest, &s[1..], cont),
            Node::Any => s.first().is_some_and(|&c| c != b'/') && self.seq(rest, &s[1..], cont),
            Node::Class { negated, ranges } => {
                s.first()
                    .is_some_and(|&c| class_matches(*negated, ranges, c))
                    && self.seq(rest, &s[1..], cont)
            }
            Node::Star => {
                let max = s.iter().position(|&c| c == b'/').unwrap_or(s.len());
                (0..=max).any(|k| self.seq(rest, &s[k..], cont))
            }
            Node::DoubleStar => (0..=s.len()).any(|k| self.seq(rest, &s[k..], cont)),
            Node::DeepDir => {
                // '/' then zero or more bytes ending in '/', i.e. '/' alone or '/' ... '/'.
                if s.first() != Some(&b'/') {
                    return false;
                }
                if self.seq(rest, &s[1..], cont) {
                    return true;
                }
                (1..s.len()).any(|k| s[k] == b'/' && self.seq(rest, &s[k + 1..], cont))
            }
            Node::Alt(alts) => alts.iter().any(|alt| {
                let mut stack: Vec<&[Node]> = cont.to_vec();
                stack.push(rest);
                self.seq(alt, s, &stack)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::parse(p).expect(p).matches(s.as_bytes())
    }

    #[test]
    fn reversed_patterns_match_reversed_paths() {
        let cases: &[(&str, &[&str])] = &[
            (
                "/etc/passwd",
                &["/etc/passwd", "/etc/passwd-", "/etc/passw"],
            ),
            (
                "/tmp/**/33",
                &["/tmp/33", "/tmp/a/b/33", "/tmp/a33", "/tmp33"],
            ),
            (
                "/srv/app1/**/*.key",
                &["/srv/app1/x.key", "/srv/app1/a/.key", "/srv/app1/a/b.kex"],
            ),
            ("{/a/b,/c*}/d", &["/a/b/d", "/cx/d", "/c/d", "/a/c/d"]),
            (
                "busybox",
                &["/bin/busybox", "busybox", "/busybox/x", "/bin/xbusybox"],
            ),
            ("a[!-0]b", &["/x/a/b", "/x/a.b", "a/b", "a.b"]),
            ("**", &["/", "/x/y", ""]),
        ];
        for (p, paths) in cases {
            let fwd = Pattern::parse(p).expect(p);
            let rev = fwd.reversed();
            assert!(!rev.is_name_pattern());
            for path in *paths {
                let r: Vec<u8> = path.bytes().rev().collect();
                assert_eq!(
                    rev.matches(&r),
                    fwd.matches(path.as_bytes()),
                    "{p} on {path}"
                );
            }
        }
    }

    #[test]
    fn name_pattern_classes_never_match_slash() {
        assert!(!m("a[!-0]b", "a/b"));
        assert!(m("a[!-0]b", "/x/a.b"));
        assert!(!m("a[!-0]b", "/x/a/b"));
    }

    #[test]
    fn literal_is_exact() {
        assert!(m("/etc/passwd", "/etc/passwd"));
        assert!(!m("/etc/passwd", "/etc/passwd-"));
        assert!(!m("/etc/passwd", "/etc/passw"));
    }

    #[test]
    fn star_stays_in_one_component() {
        assert!(m("/tmp/*.log", "/tmp/a.log"));
        assert!(m("/tmp/*.log", "/tmp/.log"));
        assert!(!m("/tmp/*.log", "/tmp/a/b.log"));
    }

    #[test]
    fn double_star_crosses_components() {
        assert!(m("/tmp/**", "/tmp/"));
        assert!(m("/tmp/**", "/tmp/a/b/c"));
        assert!(!m("/tmp/**", "/tmp"));
        assert!(m("/proc/**/mem", "/proc/1/mem"));
        assert!(m("/proc/**/mem", "/proc/1/task/2/mem"));
        assert!(m(
            "/sys/fs/cgroup/**/release_agent",
            "/sys/fs/cgroup/release_agent"
        ));
        assert!(m("**", "/anything/at/all"));
    }

    #[test]
    fn deep_dir_allows_zero_directories() {
        assert!(m("/tmp/**/33", "/tmp/33"));
        assert!(m("/tmp/**/33", "/tmp/a/b/33"));
        assert!(!m("/tmp/**/33", "/tmp/a33"));
        assert!(m("/**/.ssh/**", "/root/.ssh/id_rsa"));
        assert!(m("/**/.ssh/**", "/.ssh/x"));
        assert!(m("/**/busybox", "/bin/busybox"));
        assert!(m("/**/busybox", "/busybox"));
        assert!(!m("/**/busybox", "/bin/notbusybox"));
    }

    #[test]
    fn name_patterns_match_the_last_component() {
        assert!(m("busybox", "/bin/busybox"));
        assert!(m("busybox", "busybox"));
        assert!(!m("busybox", "/bin/busybox2"));
        assert!(m("**ping", "/usr/bin/ping"));
        assert!(m("*.log", "/var/log/x.log"));
        assert!(!m("a**b", "/a/x/b"));
    }

    #[test]
    fn classes_alternations_escapes() {
        assert!(m("/dev/sd[a-c]", "/dev/sdb"));
        assert!(!m("/dev/sd[a-c]", "/dev/sdd"));
        assert!(m("/x/[^a]", "/x/b"));
        assert!(!m("/x/[^a]", "/x//"));
        assert!(m("/etc/{passwd,shadow}", "/etc/shadow"));
        assert!(m("/{usr/,}bin/sh", "/bin/sh"));
        assert!(m("/{usr/,}bin/sh", "/usr/bin/sh"));
        assert!(m("/a/{b{1,2},c*}/d", "/a/b2/d"));
        assert!(m("/a/{b{1,2},c*}/d", "/a/cxyz/d"));
        assert!(m(r"/a/\*", "/a/*"));
        assert!(!m(r"/a/\*", "/a/b"));
        assert!(m("/a/?", "/a/b"));
        assert!(!m("/a/?", "/a//"));
    }

    #[test]
    fn invalid_patterns_are_explained() {
        for (p, why) in [
            ("", "empty"),
            ("/a/{b,c", "unclosed '{'"),
            ("/a/[bc", "unclosed '['"),
            ("/a/b}", "unmatched '}'"),
            ("/a/[z-a]", "reversed"),
            ("etc/passwd", "absolute"),
            ("/a\\", "lone"),
            ("@{PROC}/x", "variables"),
        ] {
            let e = Pattern::parse(p).expect_err(p);
            assert!(e.reason.contains(why), "{p}: {}", e.reason);
        }
        let long = format!("/{}", "a".repeat(128));
        assert!(Pattern::parse(&long)
            .expect_err("long")
            .reason
            .contains("limit is 128"));
        assert!(Pattern::parse(&format!("/{}", "a".repeat(127))).is_ok());
    }
}
