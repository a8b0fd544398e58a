//! Ring-buffer records in the byte layout of the BPF programs (`struct va_event`, decoded by
//! `enforcer::bpf::events::BpfEvent::decode`), for the sink tests and the bench.

#![allow(dead_code)] // each test binary uses a different part

use varmor_agent::enforcer::bpf::layout::VA_EV_OFF_PATH;

/// The fields of one record that the tests vary.
#[derive(Debug, Clone, Default)]
pub struct Record<'a> {
    pub kind: u32,
    pub action: u32,
    pub mnt_ns: u32,
    pub tgid: u32,
    pub ktime_ns: u64,
    pub flags: u32,
    pub perms: u32,
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub addr: [u32; 4],
    pub path: &'a str,
    pub fstype: &'a str,
}

impl Record<'_> {
    /// The record's bytes, little-endian at the offsets of `varmor.h`.
    pub fn bytes(&self) -> Vec<u8> {
        let head = VA_EV_OFF_PATH as usize;
        let mut b = vec![0u8; head + self.path.len()];
        let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(0, self.kind);
        put(4, self.action);
        put(8, self.mnt_ns);
        put(12, self.tgid);
        put(32, self.flags);
        put(36, self.perms);
        put(40, self.a);
        put(44, self.b);
        put(48, self.c);
        for (k, w) in self.addr.iter().enumerate() {
            put(52 + 4 * k, *w);
        }
        put(68, self.path.len() as u32);
        b[16..24].copy_from_slice(&self.ktime_ns.to_le_bytes());
        let fs = self.fstype.as_bytes();
        b[72..72 + fs.len().min(31)].copy_from_slice(&fs[..fs.len().min(31)]);
        b[head..].copy_from_slice(self.path.as_bytes());
        b
    }
}
