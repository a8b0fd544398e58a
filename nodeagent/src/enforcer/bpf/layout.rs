//! The byte layouts shared with the BPF programs (`bpf-programs/varmor.h`): the constants come
//! from the header itself (the build script reads its `#define VA_...` lines), the structs are
//! written and read here field by field, little-endian, at the offsets the C side asserts.

#![allow(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/bpf_layout.rs"));

/// Bytes of a profile header (`struct va_header`).
pub const HEADER_SIZE: usize = VA_HEADER_SIZE as usize;
/// Bytes of a container entry (`struct va_container`).
pub const CONTAINER_SIZE: usize = VA_CONTAINER_SIZE as usize;
/// Bytes of the config entry (`struct va_config`).
pub const CONFIG_SIZE: usize = VA_CONFIG_SIZE as usize;
/// Words of one blob value.
pub const WORDS: usize = VA_WORDS_PER_VALUE as usize;
/// One blob value.
pub type Value = [u32; WORDS];
/// Bytes of a slot's metadata (`v_slot_meta`, read only by the agent).
pub const META_SIZE: usize = VA_SLOT_META_SIZE as usize;
/// Longest profile name the slot metadata holds.
pub const META_NAME_MAX: usize = META_SIZE - 24;

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// `struct va_automaton`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutomatonHeader {
    pub classes: [u8; 256],
    pub class_count: u32,
    pub state_count: u32,
    pub walk_count: u32,
    pub row_count: u32,
    /// Live state ranges `[lo, hi)` per walk kind (file, exec, any).
    pub live: [(u32, u32); 3],
    pub starts: [u32; 8],
    pub trans_off: u32,
    pub accept_off: u32,
    pub rows_off: u32,
}

impl Default for AutomatonHeader {
    fn default() -> Self {
        AutomatonHeader {
            classes: [0; 256],
            class_count: 1,
            state_count: 1,
            walk_count: 0,
            row_count: 0,
            live: [(0, 0); 3],
            starts: [0; 8],
            trans_off: 0,
            accept_off: 0,
            rows_off: 0,
        }
    }
}

impl AutomatonHeader {
    fn write(&self, b: &mut [u8]) {
        b[..256].copy_from_slice(&self.classes);
        put_u32(b, 256, self.class_count);
        put_u32(b, 260, self.state_count);
        put_u32(b, 264, self.walk_count);
        put_u32(b, 268, self.row_count);
        for (k, (lo, hi)) in self.live.iter().enumerate() {
            put_u32(b, 272 + 4 * k, *lo);
            put_u32(b, 284 + 4 * k, *hi);
        }
        for (k, s) in self.starts.iter().enumerate() {
            put_u32(b, 296 + 4 * k, *s);
        }
        put_u32(b, 328, self.trans_off);
        put_u32(b, 332, self.accept_off);
        put_u32(b, 336, self.rows_off);
    }

    fn read(b: &[u8]) -> Self {
        let mut classes = [0u8; 256];
        classes.copy_from_slice(&b[..256]);
        let mut live = [(0, 0); 3];
        for (k, l) in live.iter_mut().enumerate() {
            *l = (get_u32(b, 272 + 4 * k), get_u32(b, 284 + 4 * k));
        }
        let mut starts = [0u32; 8];
        for (k, s) in starts.iter_mut().enumerate() {
            *s = get_u32(b, 296 + 4 * k);
        }
        AutomatonHeader {
            classes,
            class_count: get_u32(b, 256),
            state_count: get_u32(b, 260),
            walk_count: get_u32(b, 264),
            row_count: get_u32(b, 268),
            live,
            starts,
            trans_off: get_u32(b, 328),
            accept_off: get_u32(b, 332),
            rows_off: get_u32(b, 336),
        }
    }
}

/// `struct va_header`: the fixed part of a profile version.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Header {
    pub mode: u32,
    pub generation: u32,
    pub blob_values: u32,
    pub flags: u32,
    /// Capability masks per action index (deny+audit, deny, audit, complain).
    pub caps: [u64; 4],
    /// ptrace permissions of strict rules, per action index.
    pub ptrace_any: [u32; 4],
    /// ptrace permissions of cross-container rules, per action index.
    pub ptrace_ext: [u32; 4],
    pub path: AutomatonHeader,
    pub mnt: AutomatonHeader,
    pub socket_off: u32,
    pub socket_count: u32,
    pub egress_off: u32,
    pub egress_count: u32,
    pub mount_rules_off: u32,
    pub mount_rule_count: u32,
    pub mount_ids_off: u32,
    pub mount_ids_count: u32,
    /// The leaf filter (reversed file patterns; see `varmor.h`).
    pub leaf: AutomatonHeader,
    /// The egress index (see `varmor.h`).
    pub egress_scan_count: u32,
    pub egress_prefixes_off: u32,
    pub egress_prefix_count: u32,
    pub egress_buckets_off: u32,
    pub egress_bucket_mask: u32,
    pub egress_seed: u32,
    /// The leaf filter's first step: bit `b` is set when some walk of `leaf` is still live
    /// after the byte `b` (see `varmor.h`).
    pub leaf_first: [u64; 4],
    /// The top filter's first step per walk kind (file, exec): bit `b` is set when some walk
    /// of `path` is still live after `/` and the byte `b` (see `varmor.h`).
    pub top_first: [[u64; 4]; 2],
}

impl Header {
    /// The bytes of the `v_headers` value.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        put_u32(&mut b, 0, self.mode);
        put_u32(&mut b, 4, self.generation);
        put_u32(&mut b, 8, self.blob_values);
        put_u32(&mut b, 12, self.flags);
        for (k, c) in self.caps.iter().enumerate() {
            put_u64(&mut b, VA_HDR_OFF_CAPS as usize + 8 * k, *c);
        }
        for k in 0..4 {
            put_u32(
                &mut b,
                VA_HDR_OFF_PTRACE_ANY as usize + 4 * k,
                self.ptrace_any[k],
            );
            put_u32(
                &mut b,
                VA_HDR_OFF_PTRACE_EXT as usize + 4 * k,
                self.ptrace_ext[k],
            );
        }
        let a = VA_AUTOMATON_SIZE as usize;
        let p = VA_HDR_OFF_PATH as usize;
        self.path.write(&mut b[p..p + a]);
        let m = VA_HDR_OFF_MNT as usize;
        self.mnt.write(&mut b[m..m + a]);
        let s = VA_HDR_OFF_SECTIONS as usize;
        for (k, v) in [
            self.socket_off,
            self.socket_count,
            self.egress_off,
            self.egress_count,
            self.mount_rules_off,
            self.mount_rule_count,
            self.mount_ids_off,
            self.mount_ids_count,
        ]
        .into_iter()
        .enumerate()
        {
            put_u32(&mut b, s + 4 * k, v);
        }
        let l = VA_HDR_OFF_LEAF as usize;
        self.leaf.write(&mut b[l..l + a]);
        let e = VA_HDR_OFF_EGRESS_INDEX as usize;
        for (k, v) in [
            self.egress_scan_count,
            self.egress_prefixes_off,
            self.egress_prefix_count,
            self.egress_buckets_off,
            self.egress_bucket_mask,
            self.egress_seed,
        ]
        .into_iter()
        .enumerate()
        {
            put_u32(&mut b, e + 4 * k, v);
        }
        for (k, w) in self.leaf_first.iter().enumerate() {
            put_u64(&mut b, VA_HDR_OFF_LEAF_FIRST as usize + 8 * k, *w);
        }
        for (k, w) in self.top_first.iter().flatten().enumerate() {
            put_u64(&mut b, VA_HDR_OFF_TOP_FIRST as usize + 8 * k, *w);
        }
        b
    }

    /// A header from the bytes of a `v_headers` value.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let a = VA_AUTOMATON_SIZE as usize;
        let p = VA_HDR_OFF_PATH as usize;
        let m = VA_HDR_OFF_MNT as usize;
        let s = VA_HDR_OFF_SECTIONS as usize;
        let l = VA_HDR_OFF_LEAF as usize;
        let e = VA_HDR_OFF_EGRESS_INDEX as usize;
        let mut caps = [0u64; 4];
        let mut ptrace_any = [0u32; 4];
        let mut ptrace_ext = [0u32; 4];
        for k in 0..4 {
            caps[k] = get_u64(b, VA_HDR_OFF_CAPS as usize + 8 * k);
            ptrace_any[k] = get_u32(b, VA_HDR_OFF_PTRACE_ANY as usize + 4 * k);
            ptrace_ext[k] = get_u32(b, VA_HDR_OFF_PTRACE_EXT as usize + 4 * k);
        }
        Header {
            mode: get_u32(b, 0),
            generation: get_u32(b, 4),
            blob_values: get_u32(b, 8),
            flags: get_u32(b, 12),
            caps,
            ptrace_any,
            ptrace_ext,
            path: AutomatonHeader::read(&b[p..p + a]),
            mnt: AutomatonHeader::read(&b[m..m + a]),
            socket_off: get_u32(b, s),
            socket_count: get_u32(b, s + 4),
            egress_off: get_u32(b, s + 8),
            egress_count: get_u32(b, s + 12),
            mount_rules_off: get_u32(b, s + 16),
            mount_rule_count: get_u32(b, s + 20),
            mount_ids_off: get_u32(b, s + 24),
            mount_ids_count: get_u32(b, s + 28),
            leaf: AutomatonHeader::read(&b[l..l + a]),
            egress_scan_count: get_u32(b, e),
            egress_prefixes_off: get_u32(b, e + 4),
            egress_prefix_count: get_u32(b, e + 8),
            egress_buckets_off: get_u32(b, e + 12),
            egress_bucket_mask: get_u32(b, e + 16),
            egress_seed: get_u32(b, e + 20),
            leaf_first: std::array::from_fn(|k| get_u64(b, VA_HDR_OFF_LEAF_FIRST as usize + 8 * k)),
            top_first: std::array::from_fn(|kind| {
                std::array::from_fn(|k| {
                    get_u64(b, VA_HDR_OFF_TOP_FIRST as usize + 32 * kind + 8 * k)
                })
            }),
        }
    }
}

/// `struct va_container`: a bound container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ContainerEntry {
    pub slot: u32,
    pub flags: u32,
    pub pod_v4: u32,
    pub pod_v6: [u32; 4],
}

impl ContainerEntry {
    pub fn to_bytes(&self) -> [u8; CONTAINER_SIZE] {
        let mut b = [0u8; CONTAINER_SIZE];
        put_u32(&mut b, 0, self.slot);
        put_u32(&mut b, 4, self.flags);
        put_u32(&mut b, 8, self.pod_v4);
        for (k, w) in self.pod_v6.iter().enumerate() {
            put_u32(&mut b, 12 + 4 * k, *w);
        }
        b
    }

    pub fn from_bytes(b: &[u8; CONTAINER_SIZE]) -> Self {
        let mut pod_v6 = [0u32; 4];
        for (k, w) in pod_v6.iter_mut().enumerate() {
            *w = get_u32(b, 12 + 4 * k);
        }
        ContainerEntry {
            slot: get_u32(b, 0),
            flags: get_u32(b, 4),
            pod_v4: get_u32(b, 8),
            pod_v6,
        }
    }

    /// The entry of a container bound to `slot` whose pod has these addresses (at most one of
    /// each family is kept, IPv4-mapped IPv6 counts as IPv4).
    pub fn new(slot: u32, pod_addresses: &[std::net::IpAddr]) -> Self {
        let mut e = ContainerEntry {
            slot,
            ..Default::default()
        };
        for ip in pod_addresses {
            match varmor_policy::decide::canonical_ip(*ip) {
                std::net::IpAddr::V4(v4) if e.flags & VA_CF_POD_V4 == 0 => {
                    e.flags |= VA_CF_POD_V4;
                    e.pod_v4 = u32::from(v4);
                }
                std::net::IpAddr::V6(v6) if e.flags & VA_CF_POD_V6 == 0 => {
                    e.flags |= VA_CF_POD_V6;
                    e.pod_v6 = ipv6_words(v6);
                }
                _ => {}
            }
        }
        e
    }
}

/// The four big-endian words of an IPv6 address, as records and events hold them.
pub fn ipv6_words(v6: std::net::Ipv6Addr) -> [u32; 4] {
    let o = v6.octets();
    let mut w = [0u32; 4];
    for (k, x) in w.iter_mut().enumerate() {
        *x = u32::from_be_bytes([o[4 * k], o[4 * k + 1], o[4 * k + 2], o[4 * k + 3]]);
    }
    w
}

/// The egress index hash of (family, prefix, masked address words), as `varmor.h` defines it.
pub fn egress_hash(seed: u32, family: u32, prefix: u32, words: &[u32; 4]) -> u32 {
    let mut h = (seed ^ (family << 8 | prefix)).wrapping_mul(VA_HASH_MUL);
    for w in words {
        h = (h ^ w).wrapping_mul(VA_HASH_MUL);
    }
    h ^ (h >> 15)
}

/// `struct va_config`.
pub fn config_bytes(init_mnt_ns: u32) -> [u8; CONFIG_SIZE] {
    let mut b = [0u8; CONFIG_SIZE];
    put_u32(&mut b, 0, init_mnt_ns);
    put_u32(&mut b, 4, VA_LAYOUT_VERSION);
    b
}

/// What the agent records next to a slot so a restarted agent knows which profile it holds.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SlotMeta {
    pub revision: u64,
    pub content_hash: u64,
    pub generation: u32,
    pub name: String,
}

impl SlotMeta {
    pub fn to_bytes(&self) -> [u8; META_SIZE] {
        let mut b = [0u8; META_SIZE];
        put_u64(&mut b, 0, self.revision);
        put_u64(&mut b, 8, self.content_hash);
        put_u32(&mut b, 16, self.generation);
        let name = self.name.as_bytes();
        let n = name.len().min(META_NAME_MAX);
        put_u32(&mut b, 20, n as u32);
        b[24..24 + n].copy_from_slice(&name[..n]);
        b
    }

    pub fn from_bytes(b: &[u8; META_SIZE]) -> Self {
        let n = (get_u32(b, 20) as usize).min(META_NAME_MAX);
        SlotMeta {
            revision: get_u64(b, 0),
            content_hash: get_u64(b, 8),
            generation: get_u32(b, 16),
            name: String::from_utf8_lossy(&b[24..24 + n]).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_at_the_c_offsets() {
        let mut h = Header {
            mode: VA_MODE_ENFORCE,
            generation: 7,
            blob_values: 3,
            caps: [1, 2, 3, 1 << 40],
            ptrace_any: [1, 2, 4, 8],
            ptrace_ext: [16, 0, 0, 2],
            socket_off: 16,
            socket_count: 2,
            mount_ids_count: 9,
            ..Default::default()
        };
        h.path.classes[b'/' as usize] = 3;
        h.path.live = [(1, 5), (2, 9), (1, 9)];
        h.mnt.starts[7] = 42;
        h.leaf.trans_off = 77;
        h.egress_seed = 5;
        h.leaf_first[3] = 1 << 63;
        h.top_first[1][3] = 1 << 63;
        let b = h.to_bytes();
        assert_eq!(Header::from_bytes(&b), h);
        assert_eq!(get_u64(&b, 16 + 24), 1 << 40);
        assert_eq!(b[VA_HDR_OFF_PATH as usize + b'/' as usize], 3);
        assert_eq!(get_u32(&b, VA_HDR_OFF_MNT as usize + 296 + 28), 42);
        assert_eq!(get_u32(&b, VA_HDR_OFF_SECTIONS as usize + 28), 9);
        assert_eq!(get_u32(&b, VA_HDR_OFF_LEAF as usize + 328), 77);
        assert_eq!(get_u32(&b, VA_HDR_OFF_EGRESS_INDEX as usize + 20), 5);
        assert_eq!(b[HEADER_SIZE - 1], 0x80);
    }

    #[test]
    fn containers_keep_one_address_per_family() {
        let e = ContainerEntry::new(
            5,
            &[
                "::ffff:10.1.2.3".parse().expect("ip"),
                "10.9.9.9".parse().expect("ip"),
                "fd00::1".parse().expect("ip"),
            ],
        );
        assert_eq!(e.pod_v4, 0x0a01_0203);
        assert_eq!(e.flags, VA_CF_POD_V4 | VA_CF_POD_V6);
        assert_eq!(e.pod_v6, [0xfd00_0000, 0, 0, 1]);
        assert_eq!(ContainerEntry::from_bytes(&e.to_bytes()), e);
    }

    #[test]
    fn slot_meta_round_trips() {
        let m = SlotMeta {
            revision: 9,
            content_hash: 0xdead_beef,
            generation: 3,
            name: "varmor-demo-web".into(),
        };
        assert_eq!(SlotMeta::from_bytes(&m.to_bytes()), m);
    }
}
