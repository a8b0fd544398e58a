//! A line-by-line Rust model of the BPF programs' decision over the encoded tables, so the
//! encoding is checked against [`varmor_policy::decide`] on any host (the kernel tests check
//! the programs themselves).

use std::net::IpAddr;

use varmor_policy::decide::{
    canonical_ip, effective_fstype, effective_protocol, socket_type, Access, Decision, EventAction,
};
use varmor_policy::names::{mount, perm, ptrace};

use super::encode::EncodedProfile;
use super::layout::*;

/// Bit `b` of a 256-bit byte bitmap (`byte_bit` in the programs).
fn byte_bit(bits: &[u64; 4], b: u8) -> bool {
    bits[b as usize / 64] >> (b % 64) & 1 == 1
}

/// The model of one profile version.
#[derive(Debug)]
pub struct Model<'a> {
    h: &'a Header,
    blob: &'a [Value],
}

fn event(act: u32) -> (Decision, Option<EventAction>) {
    match act {
        VA_ACT_DENY_AUDIT => (Decision::Deny, Some(EventAction::Denied)),
        VA_ACT_DENY => (Decision::Deny, None),
        VA_ACT_AUDIT => (Decision::Allow, Some(EventAction::Audit)),
        VA_ACT_COMPLAIN => (Decision::Allow, Some(EventAction::Allowed)),
        _ => (Decision::Allow, None),
    }
}

impl<'a> Model<'a> {
    /// The model of `p`.
    pub fn new(p: &'a EncodedProfile) -> Self {
        Model {
            h: &p.header,
            blob: &p.blob,
        }
    }

    fn word(&self, w: u64) -> u32 {
        self.blob[(w >> 4) as usize][(w & 15) as usize]
    }

    /// Final states of the walks that are still live for `kind`.
    fn walk(&self, a: &AutomatonHeader, kind: usize, input: &[u8]) -> Vec<u32> {
        let (lo, hi) = a.live[kind];
        let span = hi.wrapping_sub(lo);
        let live = |s: u32| s.wrapping_sub(lo) < span;
        let mut states: Vec<u32> = a.starts[..a.walk_count as usize].to_vec();
        for &b in input {
            let cls = u64::from(a.classes[b as usize]);
            let mut alive = false;
            for s in states.iter_mut() {
                if !live(*s) {
                    continue;
                }
                *s = self
                    .word(u64::from(a.trans_off) + u64::from(*s) * u64::from(a.class_count) + cls);
                alive |= live(*s);
            }
            if !alive {
                break;
            }
        }
        states.into_iter().filter(|&s| live(s)).collect()
    }

    /// `file_open`'s leaf filter: the last component walked backwards, then `/`; true when
    /// every walk is dead (no file rule can match). The root has no leaf: never filtered.
    pub fn leaf_says_no_rule(&self, path: &str) -> bool {
        let Some(leaf) = self.leaf_of(path) else {
            return false;
        };
        let input: Vec<u8> = leaf.iter().rev().copied().chain([b'/']).collect();
        self.walk(&self.h.leaf, VA_KIND_FILE as usize, &input)
            .is_empty()
    }

    /// The last component of `path` when the leaf filter applies to it (the profile has one;
    /// the name is 1 to 255 bytes), as `leaf_name_len` decides in the programs.
    fn leaf_of<'p>(&self, path: &'p str) -> Option<&'p [u8]> {
        if self.h.leaf.walk_count == 0 || self.h.mode != VA_MODE_ENFORCE {
            return None;
        }
        let leaf = &path.as_bytes()[path.rfind('/')? + 1..];
        (1..=255).contains(&leaf.len()).then_some(leaf)
    }

    /// `file_open`'s first check, the leaf filter's first step precomputed
    /// (`header.leaf_first`): true when the last byte of the last component kills every walk.
    pub fn leaf_first_says_no_rule(&self, path: &str) -> bool {
        match self.leaf_of(path).and_then(|leaf| leaf.last()) {
            Some(&b) => !byte_bit(&self.h.leaf_first, b),
            None => false,
        }
    }

    /// `file_open`'s top filter: `/<first component>/` walked through the path automaton;
    /// true when every walk dies there (no file rule can match below it). A path with a single
    /// component is never filtered.
    pub fn top_says_no_rule(&self, path: &str) -> bool {
        self.top_says_no_rule_for(path, VA_KIND_FILE)
    }

    /// `bprm_check_security`'s top filter: the same for the walks of kind exec.
    pub fn top_says_no_exec_rule(&self, path: &str) -> bool {
        self.top_says_no_rule_for(path, VA_KIND_EXEC)
    }

    /// The top filter's first step (`header.top_first`): true when `/` and the first byte of
    /// the first component kill every walk of `kind`.
    pub fn top_first_says_no_rule(&self, path: &str, kind: u32) -> bool {
        if !self.top_filter_on(kind) {
            return false;
        }
        let Some(&b) = path.as_bytes().get(1).filter(|_| path.starts_with('/')) else {
            return false;
        };
        if b == b'/' {
            return false;
        }
        !byte_bit(&self.h.top_first[usize::from(kind == VA_KIND_EXEC)], b)
    }

    /// Whether the profile has the top filter for walks of `kind` (`top_filter_on`).
    fn top_filter_on(&self, kind: u32) -> bool {
        let flag = if kind == VA_KIND_EXEC {
            VA_HF_TOP_FILTER_EXEC
        } else {
            VA_HF_TOP_FILTER
        };
        self.h.flags & flag != 0 && self.h.mode == VA_MODE_ENFORCE
    }

    fn top_says_no_rule_for(&self, path: &str, kind: u32) -> bool {
        if !self.top_filter_on(kind) {
            return false;
        }
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let Some(end) = rest.find('/') else {
            return false;
        };
        let first = &rest.as_bytes()[..end];
        if first.is_empty() || first.len() > 255 {
            return false;
        }
        let input: Vec<u8> = [b'/']
            .into_iter()
            .chain(first.iter().copied())
            .chain([b'/'])
            .collect();
        self.walk(&self.h.path, kind as usize, &input).is_empty()
    }

    fn path(&self, path: &str, requested: u32) -> u32 {
        let kind = if requested == perm::EXEC {
            VA_KIND_EXEC
        } else if requested & perm::EXEC != 0 {
            VA_KIND_ANY
        } else {
            VA_KIND_FILE
        } as usize;
        let a = &self.h.path;
        if a.walk_count == 0 || a.live[kind].1 <= a.live[kind].0 {
            return VA_ACT_NONE;
        }
        if kind == VA_KIND_FILE as usize
            && (self.leaf_first_says_no_rule(path)
                || self.top_first_says_no_rule(path, VA_KIND_FILE)
                || self.leaf_says_no_rule(path)
                || self.top_says_no_rule(path))
        {
            return VA_ACT_NONE;
        }
        if kind == VA_KIND_EXEC as usize
            && (self.top_first_says_no_rule(path, VA_KIND_EXEC) || self.top_says_no_exec_rule(path))
        {
            return VA_ACT_NONE;
        }
        let mut v = [0u32; 4];
        for s in self.walk(a, kind, path.as_bytes()) {
            let acc = self.word(u64::from(a.accept_off) + u64::from(s));
            if acc == 0 {
                continue;
            }
            let base = u64::from(a.rows_off) + u64::from(acc - 1) * 4;
            for (k, x) in v.iter_mut().enumerate() {
                *x |= self.word(base + k as u64);
            }
        }
        (0..4)
            .find(|&k| v[k as usize] & requested != 0)
            .unwrap_or(VA_ACT_NONE)
    }

    fn mount(&self, source: &str, is_mount: bool, flags: u32, fstype: &str) -> u32 {
        let a = &self.h.mnt;
        if a.walk_count == 0 {
            return VA_ACT_NONE;
        }
        let mut best = VA_ACT_NONE;
        let mut fs = [0u8; 32];
        let f = if is_mount { fstype } else { "none" };
        let n = f.len().min(31);
        fs[..n].copy_from_slice(&f.as_bytes()[..n]);
        for s in self.walk(a, VA_KIND_FILE as usize, source.as_bytes()) {
            let acc = self.word(u64::from(a.accept_off) + u64::from(s));
            if acc == 0 {
                continue;
            }
            let row = u64::from(a.rows_off) + u64::from(acc - 1) * 2;
            let (off, count) = (self.word(row), self.word(row + 1));
            for j in 0..count {
                let id = self.word(u64::from(self.h.mount_ids_off) + u64::from(off + j));
                let r = u64::from(self.h.mount_rules_off) + u64::from(id) * 16;
                let w = |k: u64| self.word(r + k);
                let flags_ok = if is_mount {
                    flags & w(0) != 0 || !flags & w(1) != 0
                } else {
                    w(0) & flags != 0
                };
                if !flags_ok {
                    continue;
                }
                if w(3) == 0
                    && (0..8).any(|k| {
                        w(4 + k)
                            != u32::from_le_bytes(
                                fs[4 * k as usize..4 * k as usize + 4]
                                    .try_into()
                                    .expect("4"),
                            )
                    })
                {
                    continue;
                }
                best = best.min(w(2));
            }
        }
        best
    }

    fn socket(&self, domain: u32, t: u32, p: u32) -> u32 {
        let has = |lo: u32, hi: u32, v: u32| {
            (lo == 0 && hi == 0)
                || (v < 32 && (lo >> v) & 1 != 0)
                || ((32..64).contains(&v) && (hi >> (v - 32)) & 1 != 0)
        };
        if self.h.socket_count > 0 && self.h.flags & VA_HF_SOCKET_TABLE != 0 {
            let d = domain.min(64);
            let p = p.min(64);
            let cell = u64::from((d * VA_SOCKET_TABLE_TYPES + t) * VA_SOCKET_TABLE_PROTOCOLS + p);
            let w = self.word(u64::from(self.h.socket_off) + cell / 8);
            return (w >> ((cell % 8) * 4)) & 0xf;
        }
        for i in 0..self.h.socket_count {
            let r = u64::from(self.h.socket_off) + u64::from(i) * 8;
            let w = |k: u64| self.word(r + k);
            if has(w(0), w(1), domain) && has(w(2), w(3), t) && has(w(4), w(5), p) {
                return w(6);
            }
        }
        VA_ACT_NONE
    }

    fn connect(&self, ip: IpAddr, port: u16, c: &ContainerEntry) -> u32 {
        let (family, addr) = match canonical_ip(ip) {
            IpAddr::V4(a) => (4, [u32::from(a), 0, 0, 0]),
            IpAddr::V6(a) => (6, ipv6_words(a)),
        };
        let port = u32::from(port);
        let hit = |i: u32| -> Option<u32> {
            let r = u64::from(self.h.egress_off) + u64::from(i) * 16;
            let w = |k: u64| self.word(r + k);
            if port < w(2) || port > w(3) {
                return None;
            }
            let hit = match w(1) {
                VA_EGRESS_ANY => true,
                VA_EGRESS_V4 => family == 4 && addr[0] & w(8) == w(4),
                VA_EGRESS_V6 => {
                    family == 6 && (0..4).all(|k| addr[k] & w(8 + k as u64) == w(4 + k as u64))
                }
                VA_EGRESS_POD_SELF => {
                    if family == 4 {
                        c.flags & VA_CF_POD_V4 != 0 && c.pod_v4 == addr[0]
                    } else {
                        c.flags & VA_CF_POD_V6 != 0 && c.pod_v6 == addr
                    }
                }
                _ => false,
            };
            hit.then(|| w(0))
        };
        // The scanned records: the first hit is their strongest.
        let mut best = (0..self.h.egress_scan_count)
            .find_map(hit)
            .unwrap_or(VA_ACT_NONE);
        // The index: one bucket per (family, prefix).
        for i in 0..self.h.egress_prefix_count {
            let p = u64::from(self.h.egress_prefixes_off) + u64::from(i) * 8;
            if self.word(p) != family {
                continue;
            }
            let mut masked = [0u32; 4];
            for (k, m) in masked.iter_mut().enumerate() {
                *m = addr[k] & self.word(p + 2 + k as u64);
            }
            let h = egress_hash(self.h.egress_seed, family, self.word(p + 1), &masked);
            let b =
                u64::from(self.h.egress_buckets_off) + u64::from(h & self.h.egress_bucket_mask) * 2;
            let (off, count) = (self.word(b), self.word(b + 1));
            if let Some(a) = (0..count.min(VA_EGRESS_BUCKET_MAX))
                .find_map(|k| hit(self.h.egress_scan_count + off + k))
            {
                best = best.min(a);
            }
        }
        best
    }

    fn ptrace(&self, perm: u32, external: bool) -> u32 {
        (0..4)
            .find(|&a| {
                self.h.ptrace_any[a as usize] & perm != 0
                    || (external && self.h.ptrace_ext[a as usize] & perm != 0)
            })
            .unwrap_or(VA_ACT_NONE)
    }

    /// What the programs do with `access` from a task of container `c`.
    pub fn decide(&self, access: &Access, c: &ContainerEntry) -> (Decision, Option<EventAction>) {
        if self.h.mode == VA_MODE_COMPLAIN {
            return (Decision::Allow, Some(EventAction::Allowed));
        }
        let act = match access {
            Access::File { path, permissions } => self.path(path, *permissions),
            Access::Exec { path } => self.path(path, perm::EXEC),
            Access::Capability(cap) => {
                let bit = 1u64.checked_shl(*cap).unwrap_or(0);
                (0..4)
                    .find(|&a| self.h.caps[a as usize] & bit != 0)
                    .unwrap_or(VA_ACT_NONE)
            }
            Access::Socket {
                domain,
                type_,
                protocol,
            } => self.socket(
                *domain,
                socket_type(*type_),
                effective_protocol(*domain, *type_, *protocol),
            ),
            Access::Connect { address, port, .. } => self.connect(*address, *port, c),
            Access::Ptrace {
                permission,
                external,
                peer_is_host,
            } => {
                if permission & (ptrace::TRACEBY | ptrace::READBY) != 0 && *peer_is_host {
                    VA_ACT_NONE
                } else {
                    self.ptrace(*permission, *external)
                }
            }
            Access::Mount {
                source,
                fstype,
                flags,
            } => self.mount(source, true, *flags, effective_fstype(fstype, *flags)),
            Access::Umount { path } => self.mount(path, false, mount::UMOUNT, ""),
            Access::MoveMount { path } => self.mount(path, false, mount::MOVE, ""),
        };
        event(act)
    }
}
