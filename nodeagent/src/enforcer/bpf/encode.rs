//! From a bundle's [`BpfProfile`] to what the kernel reads: a fixed-size [`Header`] and a blob of
//! 64-byte values (16 `u32` words). Pure: no kernel, unit-tested on any host.
//!
//! Blob sections (each starts on a value boundary; records never straddle two values):
//!
//! | section | words per entry | content |
//! |---|---|---|
//! | path transitions | 1 | `next[state * classes + class]` after renumbering (below) |
//! | path accept | 1 | 0, or 1 + verdict row |
//! | path verdict rows | 4 | permission masks per action: deny+audit, deny, audit, complain |
//! | mount transitions, accept | 1 | as for paths |
//! | mount rows | 2 | (offset into mount ids, count) of a match set |
//! | mount ids | 1 | mount rule indexes of the match sets |
//! | mount rules | 16 | flags, reverse flags, action, fstype-any, fstype (32 bytes) |
//! | socket rules | 8 | domain, type, protocol masks (lo, hi words), action — strongest action first |
//! | or a socket table | 1 | with more than 8 rules: the action of every (domain, type, protocol), 4 bits each ([`socket_table`]) |
//! | egress records | 16 | action, kind, first port, last port, address and mask words — strongest first |
//!
//! **Renumbering.** The compiler's automaton is walked as it is, except that its states are
//! renumbered so the kernel can stop a walk early: states from which no useful verdict can be
//! reached become the dead state 0, and the others are ordered exec-only, both, file-only, so
//! "this walk can still matter for an exec (a file) access" is one range check. Walks stop
//! when all are out of their range, which for a profile whose floating patterns are exec rules
//! (`/**/sh`) means a file open stops at once instead of walking the whole path.
//!
//! **Rule order.** Socket and egress rules are sorted by action, strongest first (stable, so
//! profile order is kept within an action): the first match decides, exactly as
//! [`varmor_policy::decide`] picks the strongest matching action.

use std::net::IpAddr;

use varmor_policy::automaton::{Automaton, DEAD};
use varmor_policy::bundle::{BpfMode, BpfProfile, EgressAddress, PathVerdict, RuleAction};
use varmor_policy::glob::Pattern;
use varmor_policy::names::perm;

use super::layout::*;

/// The tables of one profile version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedProfile {
    /// The header (its `generation` is set when the slot is written).
    pub header: Header,
    /// The blob values.
    pub blob: Vec<Value>,
    /// A hash of header and blob, to recognise a profile already loaded.
    pub content_hash: u64,
}

/// Why a profile cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// An automaton of the bundle is inconsistent.
    #[error("the {automaton} automaton is malformed: {reason}")]
    Automaton {
        /// `path` or `mount`.
        automaton: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The tables do not fit.
    #[error("the profile needs {values} table values of 64 bytes; at most {max} fit")]
    TooLarge {
        /// Values needed.
        values: usize,
        /// The limit.
        max: usize,
    },
    /// A mount rule's filesystem type is too long.
    #[error("mount rule {index}: filesystem type {fstype:?} is longer than {max} bytes")]
    FsType {
        /// Rule index.
        index: usize,
        /// The type.
        fstype: String,
        /// The limit.
        max: usize,
    },
    /// Too many rules of one kind.
    #[error("{count} {what} exceed the limit of {max}")]
    TooMany {
        /// Which rules.
        what: &'static str,
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// The most socket rules, egress records or mount rules per profile.
pub const MAX_RULES_PER_KIND: usize = 65_536;

/// The action index the kernel uses (strongest first).
pub fn action_index(a: RuleAction) -> u32 {
    match a {
        RuleAction::DenyAudit => VA_ACT_DENY_AUDIT,
        RuleAction::Deny => VA_ACT_DENY,
        RuleAction::Audit => VA_ACT_AUDIT,
        RuleAction::Complain => VA_ACT_COMPLAIN,
    }
}

/// The verdict row of a path match set, in action-index order.
pub fn verdict_words(v: &PathVerdict) -> [u32; 4] {
    [v.deny_audit, v.deny, v.audit, v.complain]
}

const FILE_BIT: u8 = 1;
const EXEC_BIT: u8 = 2;

/// Encodes a profile.
pub fn encode(p: &BpfProfile) -> Result<EncodedProfile, EncodeError> {
    let mut h = Header {
        mode: match p.mode {
            BpfMode::Enforce => VA_MODE_ENFORCE,
            BpfMode::Complain => VA_MODE_COMPLAIN,
        },
        ..Default::default()
    };
    for r in &p.capabilities {
        h.caps[action_index(r.action) as usize] |= r.capabilities;
    }
    for r in &p.ptrace {
        let a = action_index(r.action) as usize;
        if r.strict {
            h.ptrace_any[a] |= r.permissions;
        } else {
            h.ptrace_ext[a] |= r.permissions;
        }
    }
    let mut blob = Blob::default();

    // Paths.
    check_automaton(&p.path_automaton, "path", p.files.len())?;
    if p.path_verdicts.len() != p.path_automaton.match_sets.len() {
        return Err(EncodeError::Automaton {
            automaton: "path",
            reason: format!(
                "{} verdict rows for {} match sets",
                p.path_verdicts.len(),
                p.path_automaton.match_sets.len()
            ),
        });
    }
    let path_bits = |row: usize| {
        let v = verdict_words(&p.path_verdicts[row]);
        let all = v.iter().fold(0, |a, b| a | b);
        let mut bits = 0;
        if all & perm::EXEC != 0 {
            bits |= EXEC_BIT;
        }
        if all & !perm::EXEC != 0 {
            bits |= FILE_BIT;
        }
        bits
    };
    let rows: Vec<u32> = p.path_verdicts.iter().flat_map(verdict_words).collect();
    h.path = encode_automaton(&p.path_automaton, path_bits, &rows, &mut blob);
    if p.mode == BpfMode::Enforce {
        (h.leaf, h.leaf_first) = leaf_filter(p, &mut blob);
        if top_filter_can_stop(&p.path_automaton, path_bits, FILE_BIT) {
            h.flags |= VA_HF_TOP_FILTER;
            h.top_first[0] = top_first(&p.path_automaton, path_bits, FILE_BIT);
        }
        if top_filter_can_stop(&p.path_automaton, path_bits, EXEC_BIT) {
            h.flags |= VA_HF_TOP_FILTER_EXEC;
            h.top_first[1] = top_first(&p.path_automaton, path_bits, EXEC_BIT);
        }
    }

    // Mounts.
    check_automaton(&p.mount_automaton, "mount", p.mounts.len())?;
    if p.mounts.len() > MAX_RULES_PER_KIND {
        return Err(EncodeError::TooMany {
            what: "mount rules",
            count: p.mounts.len(),
            max: MAX_RULES_PER_KIND,
        });
    }
    let mut ids: Vec<u32> = Vec::new();
    let mut mount_rows: Vec<u32> = Vec::new();
    for set in &p.mount_automaton.match_sets {
        mount_rows.push(ids.len() as u32);
        mount_rows.push(set.len() as u32);
        ids.extend_from_slice(set);
    }
    h.mnt = encode_automaton(
        &p.mount_automaton,
        |_| FILE_BIT | EXEC_BIT,
        &mount_rows,
        &mut blob,
    );
    h.mount_ids_off = blob.section(&ids, 1);
    h.mount_ids_count = ids.len() as u32;
    let mut rules = Vec::with_capacity(p.mounts.len() * 16);
    for (i, r) in p.mounts.iter().enumerate() {
        let mut rec = [0u32; 16];
        rec[0] = r.flags;
        rec[1] = r.reverse_flags;
        rec[2] = action_index(r.action);
        if r.fstype == "*" {
            rec[3] = 1;
        } else {
            let max = VA_FSTYPE_LEN as usize - 1;
            if r.fstype.len() > max {
                return Err(EncodeError::FsType {
                    index: i,
                    fstype: r.fstype.clone(),
                    max,
                });
            }
            let mut bytes = [0u8; 32];
            bytes[..r.fstype.len()].copy_from_slice(r.fstype.as_bytes());
            for k in 0..8 {
                rec[4 + k] = u32::from_le_bytes(bytes[4 * k..4 * k + 4].try_into().expect("4"));
            }
        }
        rules.extend_from_slice(&rec);
    }
    h.mount_rules_off = blob.section(&rules, 16);
    h.mount_rule_count = p.mounts.len() as u32;

    // Sockets, strongest action first.
    let mut sockets: Vec<&varmor_policy::bundle::SocketRule> = p.sockets.iter().collect();
    sockets.sort_by_key(|r| action_index(r.action));
    if sockets.len() > MAX_RULES_PER_KIND {
        return Err(EncodeError::TooMany {
            what: "socket rules",
            count: sockets.len(),
            max: MAX_RULES_PER_KIND,
        });
    }
    let mut words = Vec::with_capacity(sockets.len() * 8);
    for r in sockets {
        words.extend_from_slice(&[
            r.domains as u32,
            (r.domains >> 32) as u32,
            r.types as u32,
            (r.types >> 32) as u32,
            r.protocols as u32,
            (r.protocols >> 32) as u32,
            action_index(r.action),
            0,
        ]);
    }
    h.socket_count = (words.len() / 8) as u32;
    if h.socket_count > VA_SOCKET_TABLE_MIN_RULES {
        h.flags |= VA_HF_SOCKET_TABLE;
        h.socket_off = blob.section(&socket_table(&words), 1);
    } else {
        h.socket_off = blob.section(&words, 8);
    }

    // Egress, strongest action first.
    let mut records: Vec<(u32, [u32; 16])> = Vec::new();
    for r in &p.egress {
        let a = action_index(r.action);
        let ports: Vec<(u32, u32)> = if r.ports.is_empty() {
            vec![(0, 65535)]
        } else {
            r.ports
                .iter()
                .map(|pr| (u32::from(pr.first), u32::from(pr.last)))
                .collect()
        };
        for target in egress_targets(&r.address) {
            for &(lo, hi) in &ports {
                let mut rec = [0u32; 16];
                rec[0] = a;
                rec[1] = target.kind;
                rec[2] = lo;
                rec[3] = hi;
                rec[4..8].copy_from_slice(&target.addr);
                rec[8..12].copy_from_slice(&target.mask);
                records.push((a, rec));
            }
        }
    }
    if records.len() > MAX_RULES_PER_KIND {
        return Err(EncodeError::TooMany {
            what: "egress records (addresses times port ranges)",
            count: records.len(),
            max: MAX_RULES_PER_KIND,
        });
    }
    let index = egress_index(records.into_iter().map(|(_, r)| r).collect());
    let words: Vec<u32> = index
        .scanned
        .iter()
        .chain(&index.indexed)
        .flat_map(|r| r.iter().copied())
        .collect();
    h.egress_count = (index.scanned.len() + index.indexed.len()) as u32;
    h.egress_scan_count = index.scanned.len() as u32;
    h.egress_off = blob.section(&words, 16);
    h.egress_prefix_count = (index.prefixes.len() / VA_EGRESS_PREFIX_WORDS as usize) as u32;
    h.egress_prefixes_off = blob.section(&index.prefixes, 8);
    h.egress_buckets_off = blob.section(&index.buckets, 2);
    h.egress_bucket_mask = (index.buckets.len() / 2).saturating_sub(1) as u32;
    h.egress_seed = index.seed;

    let values = blob.finish();
    if values.len() > VA_MAX_BLOB_VALUES as usize {
        return Err(EncodeError::TooLarge {
            values: values.len(),
            max: VA_MAX_BLOB_VALUES as usize,
        });
    }
    h.blob_values = values.len() as u32;
    let content_hash = hash(&h, &values);
    Ok(EncodedProfile {
        header: h,
        blob: values,
        content_hash,
    })
}

/// Egress records arranged for the kernel's lookup (see `varmor.h`).
struct EgressIndex {
    /// Checked one by one, strongest action first.
    scanned: Vec<[u32; 16]>,
    /// Grouped by bucket, strongest action first within a bucket.
    indexed: Vec<[u32; 16]>,
    /// `[family, prefix, mask0..3, 0, 0]` per distinct (family, prefix) of `indexed`.
    prefixes: Vec<u32>,
    /// `[offset into indexed, count]` per bucket (a power of two of them).
    buckets: Vec<u32>,
    seed: u32,
}

/// Splits the records into the scanned list (any address, pod-self) and a hash index of the
/// address records, so a connect costs one bucket per distinct prefix length instead of one
/// step per record. A bucket holds at most `VA_EGRESS_BUCKET_MAX` records: of a few seeds the
/// one that leaves the fewest over is kept, and those go to the scanned list (still exact,
/// only slower).
fn egress_index(records: Vec<[u32; 16]>) -> EgressIndex {
    let (mut scanned, keyed): (Vec<[u32; 16]>, Vec<[u32; 16]>) = records
        .into_iter()
        .partition(|r| r[1] != VA_EGRESS_V4 && r[1] != VA_EGRESS_V6);
    let prefix_of = |r: &[u32; 16]| -> u32 { r[8..12].iter().map(|m| m.count_ones()).sum() };
    let family_of = |r: &[u32; 16]| -> u32 {
        if r[1] == VA_EGRESS_V4 {
            4
        } else {
            6
        }
    };
    let mut prefixes: Vec<(u32, u32, [u32; 4])> = Vec::new();
    for r in &keyed {
        let key = (family_of(r), prefix_of(r), [r[8], r[9], r[10], r[11]]);
        if !prefixes.contains(&key) {
            prefixes.push(key);
        }
    }
    let nbuckets = keyed.len().max(1).next_power_of_two() * 2;
    let bucket_of = |seed: u32, r: &[u32; 16]| -> usize {
        let addr = [r[4], r[5], r[6], r[7]];
        egress_hash(seed, family_of(r), prefix_of(r), &addr) as usize & (nbuckets - 1)
    };
    let overflow = |seed: u32| -> usize {
        let mut count = vec![0usize; nbuckets];
        for r in &keyed {
            count[bucket_of(seed, r)] += 1;
        }
        count
            .iter()
            .map(|&c| c.saturating_sub(VA_EGRESS_BUCKET_MAX as usize))
            .sum()
    };
    let seed = (0..8u32).min_by_key(|&s| overflow(s)).unwrap_or(0);
    let mut per_bucket: Vec<Vec<[u32; 16]>> = vec![Vec::new(); nbuckets];
    for r in keyed {
        per_bucket[bucket_of(seed, &r)].push(r);
    }
    let mut indexed = Vec::new();
    let mut buckets = Vec::with_capacity(nbuckets * 2);
    for mut b in per_bucket {
        // Records arrive strongest first; a bucket keeps its strongest.
        b.sort_by_key(|r| r[0]);
        if b.len() > VA_EGRESS_BUCKET_MAX as usize {
            scanned.extend(b.split_off(VA_EGRESS_BUCKET_MAX as usize));
        }
        buckets.push(indexed.len() as u32);
        buckets.push(b.len() as u32);
        indexed.extend(b);
    }
    scanned.sort_by_key(|r| r[0]);
    let prefixes = prefixes
        .into_iter()
        .flat_map(|(f, p, m)| [f, p, m[0], m[1], m[2], m[3], 0, 0])
        .collect();
    EgressIndex {
        scanned,
        indexed,
        prefixes,
        buckets,
        seed,
    }
}

/// One egress destination as the kernel compares it.
struct EgressTarget {
    kind: u32,
    addr: [u32; 4],
    mask: [u32; 4],
}

fn prefix_mask(prefix: u8, words: usize) -> [u32; 4] {
    let mut m = [0u32; 4];
    let mut left = u32::from(prefix);
    for w in m.iter_mut().take(words) {
        let bits = left.min(32);
        *w = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        left -= bits;
    }
    m
}

fn v4(addr: u32, prefix: u8) -> EgressTarget {
    let mask = prefix_mask(prefix, 1);
    EgressTarget {
        kind: VA_EGRESS_V4,
        addr: [addr & mask[0], 0, 0, 0],
        mask,
    }
}

fn v6(words: [u32; 4], prefix: u8) -> EgressTarget {
    let mask = prefix_mask(prefix, 4);
    let mut addr = [0u32; 4];
    for k in 0..4 {
        addr[k] = words[k] & mask[k];
    }
    EgressTarget {
        kind: VA_EGRESS_V6,
        addr,
        mask,
    }
}

fn egress_targets(a: &EgressAddress) -> Vec<EgressTarget> {
    let none = || EgressTarget {
        kind: 0,
        addr: [0; 4],
        mask: [0; 4],
    };
    match a {
        EgressAddress::Any => vec![EgressTarget {
            kind: VA_EGRESS_ANY,
            ..none()
        }],
        EgressAddress::PodSelf => vec![EgressTarget {
            kind: VA_EGRESS_POD_SELF,
            ..none()
        }],
        EgressAddress::Unspecified => vec![v4(0, 32), v6([0; 4], 128)],
        EgressAddress::Ip(ip) => match varmor_policy::decide::canonical_ip(*ip) {
            IpAddr::V4(a) => vec![v4(u32::from(a), 32)],
            IpAddr::V6(a) => vec![v6(ipv6_words(a), 128)],
        },
        EgressAddress::Cidr(net) => match net {
            ipnet::IpNet::V4(n) => vec![v4(u32::from(n.network()), n.prefix_len())],
            ipnet::IpNet::V6(n) => vec![v6(ipv6_words(n.network()), n.prefix_len())],
        },
    }
}

#[derive(Default)]
struct Blob {
    words: Vec<u32>,
}

impl Blob {
    /// Appends a section on a value boundary; returns its word offset.
    fn section(&mut self, data: &[u32], _record_words: usize) -> u32 {
        let pad = (WORDS - self.words.len() % WORDS) % WORDS;
        self.words.extend(std::iter::repeat_n(0, pad));
        let off = self.words.len() as u32;
        self.words.extend_from_slice(data);
        off
    }

    fn finish(mut self) -> Vec<Value> {
        let pad = (WORDS - self.words.len() % WORDS) % WORDS;
        self.words.extend(std::iter::repeat_n(0, pad));
        if self.words.is_empty() {
            self.words.resize(WORDS, 0);
        }
        self.words
            .chunks(WORDS)
            .map(|c| c.try_into().expect("16 words"))
            .collect()
    }
}

fn check_automaton(a: &Automaton, name: &'static str, patterns: usize) -> Result<(), EncodeError> {
    let bad = |reason: String| {
        Err(EncodeError::Automaton {
            automaton: name,
            reason,
        })
    };
    let states = a.state_count as usize;
    let classes = a.class_count as usize;
    if a.byte_classes.len() != 256 {
        return bad(format!(
            "{} byte classes instead of 256",
            a.byte_classes.len()
        ));
    }
    if classes == 0 || classes > 256 || a.byte_classes.iter().any(|&c| c as usize >= classes) {
        return bad(format!("byte classes out of range 0..{classes}"));
    }
    if states == 0 || a.transitions.len() != states * classes || a.accept.len() != states {
        return bad(format!(
            "{} transitions and {} accept entries for {states} states of {classes} classes",
            a.transitions.len(),
            a.accept.len()
        ));
    }
    if a.transitions.iter().any(|&t| t as usize >= states) {
        return bad("a transition leads outside the states".into());
    }
    if a.transitions[..classes].iter().any(|&t| t != DEAD) || a.accept[0] != 0 {
        return bad("state 0 is not the dead state".into());
    }
    if a.accept.iter().any(|&r| r as usize > a.match_sets.len()) {
        return bad("an accept row names no match set".into());
    }
    if a.starts.len() > VA_MAX_WALKS as usize || a.starts.iter().any(|&s| s as usize >= states) {
        return bad(format!(
            "{} walks (at most {VA_MAX_WALKS}) or a start outside the states",
            a.starts.len()
        ));
    }
    if a.match_sets
        .iter()
        .flatten()
        .any(|&id| id as usize >= patterns)
    {
        return bad(format!(
            "a match set names a pattern beyond the {patterns} rules"
        ));
    }
    Ok(())
}

/// Renumbers the automaton (see the module docs), appends its tables and rows to the blob and
/// returns its header. `row_bits(row)` tells which walk kinds a match set's verdict matters for.
fn encode_automaton(
    a: &Automaton,
    row_bits: impl Fn(usize) -> u8,
    rows: &[u32],
    blob: &mut Blob,
) -> AutomatonHeader {
    let states = a.state_count as usize;
    let classes = a.class_count as usize;
    // What each state can still lead to.
    let reach = reachable_bits(a, row_bits);
    // New numbering: dead and useless -> 0; then exec-only, both, file-only.
    let mut map = vec![0u32; states];
    let mut order: Vec<usize> = vec![0];
    for group in [EXEC_BIT, EXEC_BIT | FILE_BIT, FILE_BIT] {
        for s in 1..states {
            if reach[s] == group {
                map[s] = order.len() as u32;
                order.push(s);
            }
        }
    }
    let exec_only = (1..states).filter(|&s| reach[s] == EXEC_BIT).count() as u32;
    let both = (1..states)
        .filter(|&s| reach[s] == EXEC_BIT | FILE_BIT)
        .count() as u32;
    let n = order.len() as u32;
    let first_both = 1 + exec_only;
    let first_file = first_both + both;
    let mut transitions = vec![0u32; order.len() * classes];
    let mut accept = vec![0u32; order.len()];
    for (new, &old) in order.iter().enumerate().skip(1) {
        for c in 0..classes {
            transitions[new * classes + c] = map[a.transitions[old * classes + c] as usize];
        }
        accept[new] = a.accept[old];
    }
    let mut h = AutomatonHeader {
        class_count: classes as u32,
        state_count: n,
        row_count: a.match_sets.len() as u32,
        live: [(first_both, n), (1, first_file), (1, n)],
        ..Default::default()
    };
    h.classes.copy_from_slice(&a.byte_classes);
    let live_starts: Vec<u32> = a.starts.iter().map(|&s| map[s as usize]).collect();
    // A walk that starts dead can never matter: leave it out.
    let mut k = 0;
    for s in live_starts.into_iter().filter(|&s| s != 0) {
        h.starts[k] = s;
        k += 1;
    }
    h.walk_count = k as u32;
    if n <= 1 {
        h.walk_count = 0;
    }
    h.trans_off = blob.section(&transitions, 1);
    h.accept_off = blob.section(&accept, 1);
    h.rows_off = blob.section(rows, 4);
    h
}

/// The leaf filter: the automaton of the file rules' patterns reversed, so that `file_open`
/// can walk the last component of a path backwards (then `/`) and allow at once when no file
/// rule can match, without resolving the whole path. Only states from which a match is still
/// reachable are live. Absent (`walk_count` 0) when there are no file rules, when the walk
/// could never stop early (a pattern ending in `**`, such as `/etc/**`, keeps every state
/// live: the filter would only add cost), or when the reversed patterns do not fit an
/// automaton (a reversed automaton can be larger than the forward one). With it, its first step
/// as a bitmap of the bytes after which some walk is still live (`leaf_first` in `varmor.h`).
fn leaf_filter(p: &BpfProfile, blob: &mut Blob) -> (AutomatonHeader, [u64; 4]) {
    let none = (AutomatonHeader::default(), [0; 4]);
    let rules: Vec<&str> = p
        .files
        .iter()
        .filter(|r| r.permissions & !perm::EXEC != 0)
        .map(|r| r.pattern.as_str())
        .collect();
    let mut patterns = Vec::with_capacity(rules.len());
    for r in &rules {
        match Pattern::parse(r) {
            Ok(p) => patterns.push(p.reversed()),
            // The compiler built the forward automaton from the same patterns.
            Err(_) => return none,
        }
    }
    if patterns.is_empty() {
        return none;
    }
    let Ok(a) = Automaton::build(&patterns) else {
        return none;
    };
    let reach = reachable_bits(&a, |_| FILE_BIT);
    // Can a walk from a start ever reach a state from which nothing matches?
    let classes = a.class_count as usize;
    let mut seen = vec![false; a.state_count as usize];
    let mut stack: Vec<usize> = a.starts.iter().map(|&s| s as usize).collect();
    let mut can_stop = false;
    while let Some(s) = stack.pop() {
        if seen[s] {
            continue;
        }
        seen[s] = true;
        if reach[s] == 0 {
            can_stop = true;
            break;
        }
        for c in 0..classes {
            stack.push(a.transitions[s * classes + c] as usize);
        }
    }
    if !can_stop {
        return none;
    }
    let first = byte_bits(|b| {
        let cls = a.byte_classes[b as usize] as usize;
        a.starts.iter().any(|&s| {
            reach[s as usize] != 0 && reach[a.transitions[s as usize * classes + cls] as usize] != 0
        })
    });
    (encode_automaton(&a, |_| FILE_BIT, &[], blob), first)
}

/// A 256-bit bitmap of the bytes for which `f` holds (bit `b % 64` of word `b / 64`).
fn byte_bits(f: impl Fn(u8) -> bool) -> [u64; 4] {
    let mut bits = [0u64; 4];
    for b in (0..=255u8).filter(|&b| f(b)) {
        bits[b as usize / 64] |= 1 << (b % 64);
    }
    bits
}

/// The socket rules (records of 8 words, strongest action first) as a decision table: for every
/// cell (domain, type, protocol) of `VA_HF_SOCKET_TABLE`, the action of the first rule that
/// matches it, or none; 4 bits per cell, 8 cells per word. `socket_create` then costs one
/// lookup whatever the number of rules. Built with one bitset of rules per value of each
/// dimension, so 1,024 rules take 67,600 three-way ANDs of 16 words.
fn socket_table(records: &[u32]) -> Vec<u32> {
    let rules: Vec<&[u32]> = records.chunks(8).collect();
    let chunks = rules.len().div_ceil(64);
    // matching[v] = the rules whose mask (lo, hi at `at`) admits value v; v = 64 is "64 or
    // more", which only a rule without that mask admits.
    let matching = |at: usize, values: u32| -> Vec<Vec<u64>> {
        (0..values)
            .map(|v| {
                let mut bits = vec![0u64; chunks];
                for (i, r) in rules.iter().enumerate() {
                    let mask = u64::from(r[at]) | u64::from(r[at + 1]) << 32;
                    if mask == 0 || (v < 64 && mask >> v & 1 != 0) {
                        bits[i / 64] |= 1 << (i % 64);
                    }
                }
                bits
            })
            .collect()
    };
    let domains = matching(0, VA_SOCKET_TABLE_DOMAINS);
    let types = matching(2, VA_SOCKET_TABLE_TYPES);
    let protocols = matching(4, VA_SOCKET_TABLE_PROTOCOLS);
    let cells =
        (VA_SOCKET_TABLE_DOMAINS * VA_SOCKET_TABLE_TYPES * VA_SOCKET_TABLE_PROTOCOLS) as usize;
    let mut words = vec![0u32; cells.div_ceil(8)];
    let mut cell = 0usize;
    for d in &domains {
        for t in &types {
            for p in &protocols {
                let first = (0..chunks).find_map(|k| {
                    let w = d[k] & t[k] & p[k];
                    (w != 0).then(|| k * 64 + w.trailing_zeros() as usize)
                });
                let act = first.map_or(VA_ACT_NONE, |i| rules[i][6]);
                words[cell / 8] |= act << ((cell % 8) * 4);
                cell += 1;
            }
        }
    }
    words
}

/// Whether the top filter can pay for the walks of kind `bit` (`FILE_BIT` for opens, `EXEC_BIT`
/// for execs): every walk of the path automaton dies on `/<name>/` for some first component
/// `name`. `file_open` then reads the first component of
/// an opened file's path (a climb of the dentry chain) and allows at once when every walk dies
/// there, without resolving the path. This is what lets profiles whose patterns end in `**`
/// (`/sys/firmware/**`, where the leaf filter can never stop) skip most opens. When some walk
/// survives every first component (a pattern starting with `/**` or `/*`), the climb would
/// only add cost.
fn top_filter_can_stop(a: &Automaton, row_bits: impl Fn(usize) -> u8, bit: u8) -> bool {
    let reach = reachable_bits(a, row_bits);
    let live = |s: usize| reach[s] & bit != 0;
    let classes = a.class_count as usize;
    let class_of = |b: u8| a.byte_classes[b as usize] as usize;
    let slash = class_of(b'/');
    // The classes a name byte can fall in (any byte but '/' and NUL).
    let mut name_classes: Vec<usize> = (1..=255u8).filter(|&b| b != b'/').map(class_of).collect();
    name_classes.sort_unstable();
    name_classes.dedup();
    let next = |s: usize, c: usize| a.transitions[s * classes + c] as usize;
    let mut walks = 0;
    for &start in &a.starts {
        let start = start as usize;
        if !live(start) {
            continue;
        }
        walks += 1;
        let after_slash = next(start, slash);
        if !live(after_slash) {
            continue;
        }
        // States after one or more name bytes; the walk can die if '/' from one of them does.
        let mut seen = vec![false; a.state_count as usize];
        let mut stack: Vec<usize> = name_classes.iter().map(|&c| next(after_slash, c)).collect();
        let mut dies = false;
        while let Some(t) = stack.pop() {
            if std::mem::replace(&mut seen[t], true) {
                continue;
            }
            if !live(next(t, slash)) {
                dies = true;
                break;
            }
            stack.extend(name_classes.iter().map(|&c| next(t, c)));
        }
        if !dies {
            return false;
        }
    }
    walks > 0
}

/// The top filter's first step for the walks of kind `bit`: the bytes `b` after which (and
/// `/` before) some walk is still live. `/` and NUL cannot start a path component: they are
/// set, so that no path is ever decided by them.
fn top_first(a: &Automaton, row_bits: impl Fn(usize) -> u8, bit: u8) -> [u64; 4] {
    let reach = reachable_bits(a, row_bits);
    let live = |s: usize| reach[s] & bit != 0;
    let classes = a.class_count as usize;
    let next =
        |s: usize, b: u8| a.transitions[s * classes + a.byte_classes[b as usize] as usize] as usize;
    byte_bits(|b| {
        b == 0
            || b == b'/'
            || a.starts.iter().any(|&s| {
                let s = s as usize;
                live(s) && live(next(next(s, b'/'), b))
            })
    })
}

/// For every state, the kinds of verdict reachable from it (itself included), where
/// `row_bits(row)` gives the kinds of an accepting state's match set.
fn reachable_bits(a: &Automaton, row_bits: impl Fn(usize) -> u8) -> Vec<u8> {
    let own: Vec<u8> = a
        .accept
        .iter()
        .map(|&r| if r == 0 { 0 } else { row_bits(r as usize - 1) })
        .collect();
    let states = a.state_count as usize;
    let classes = a.class_count as usize;
    // Reverse edges in CSR form.
    let mut count = vec![0u32; states + 1];
    for s in 0..states {
        for c in 0..classes {
            count[a.transitions[s * classes + c] as usize + 1] += 1;
        }
    }
    for i in 0..states {
        count[i + 1] += count[i];
    }
    let mut fill = count.clone();
    let mut preds = vec![0u32; states * classes];
    for s in 0..states {
        for c in 0..classes {
            let t = a.transitions[s * classes + c] as usize;
            preds[fill[t] as usize] = s as u32;
            fill[t] += 1;
        }
    }
    let mut reach = own.clone();
    for bit in [FILE_BIT, EXEC_BIT] {
        let mut stack: Vec<usize> = (0..states).filter(|&s| own[s] & bit != 0).collect();
        while let Some(t) = stack.pop() {
            for &p in &preds[count[t] as usize..count[t + 1] as usize] {
                let p = p as usize;
                if reach[p] & bit == 0 {
                    reach[p] |= bit;
                    stack.push(p);
                }
            }
        }
    }
    reach[0] = 0;
    reach
}

/// FNV-1a over the header and the blob.
fn hash(h: &Header, blob: &[Value]) -> u64 {
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        x ^= u64::from(b);
        x = x.wrapping_mul(0x0100_0000_01b3);
    };
    let mut hb = h.clone();
    hb.generation = 0;
    for b in hb.to_bytes() {
        eat(b);
    }
    for v in blob {
        for w in v {
            for b in w.to_le_bytes() {
                eat(b);
            }
        }
    }
    x
}
