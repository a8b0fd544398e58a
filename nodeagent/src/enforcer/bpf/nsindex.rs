//! The namespace index (`v_ns_index`, see `varmor.h`): a direct-indexed front of
//! `v_containers`, so that a hook finds the calling task's container with one inlined array
//! load instead of a hash lookup. Every process on the node pays for that lookup on every hooked
//! operation, contained or not.
//!
//! [`NsIndex`] decides the entries (pure; the bound namespaces sharing each index); [`Words`]
//! is the shared mapping of the array through which the agent stores each entry with one atomic
//! 8-byte store, so a program never reads half of an old entry and half of a new one (a map
//! update would copy the value byte by byte).
//!
//! Ordering, so that a program's lookup is always one the hash would give at some instant:
//! a bind or a slot change updates `v_containers` first and the index after; an unbind updates
//! the index first and `v_containers` after. Between the two steps a namespace being bound may
//! read as not bound yet, which it also was a moment before.

use std::collections::BTreeMap;

use super::layout::{VA_NSI_BOUND, VA_NSI_SHARED, VA_NSI_SLOT_MASK, VA_NS_INDEX_SIZE};

/// The entry of namespace `ns` in the index.
pub fn index_of(ns: u32) -> u32 {
    ns & (VA_NS_INDEX_SIZE - 1)
}

/// What a program decides from an entry for namespace `ns` (the model of `lookup_ns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Bound to this slot, read from the entry.
    Slot(u32),
    /// The entry is shared and names another namespace: look in `v_containers`.
    Hash,
    /// Not bound.
    Unbound,
}

/// How a program reads `entry` for `ns`.
pub fn read(entry: u64, ns: u32) -> Lookup {
    let low = entry as u32;
    if (entry >> 32) as u32 == ns && low & VA_NSI_BOUND != 0 {
        Lookup::Slot(low & VA_NSI_SLOT_MASK)
    } else if low & VA_NSI_SHARED != 0 {
        Lookup::Hash
    } else {
        Lookup::Unbound
    }
}

/// The bound namespaces by index, and the entry each index must hold.
#[derive(Debug, Default, Clone)]
pub struct NsIndex {
    /// index -> (namespace -> slot)
    by_index: BTreeMap<u32, BTreeMap<u32, u32>>,
}

impl NsIndex {
    /// Binds `ns` to `slot` (or moves it); returns the index whose entry changed and the entry.
    pub fn set(&mut self, ns: u32, slot: u32) -> (u32, u64) {
        let i = index_of(ns);
        self.by_index.entry(i).or_default().insert(ns, slot);
        (i, self.entry(i))
    }

    /// Unbinds `ns`; returns the index whose entry changed and the entry.
    pub fn remove(&mut self, ns: u32) -> (u32, u64) {
        let i = index_of(ns);
        if let Some(set) = self.by_index.get_mut(&i) {
            set.remove(&ns);
            if set.is_empty() {
                self.by_index.remove(&i);
            }
        }
        (i, self.entry(i))
    }

    /// The entry index `i` must hold: the smallest namespace there, marked shared when there is
    /// more than one.
    pub fn entry(&self, i: u32) -> u64 {
        let Some(set) = self.by_index.get(&i) else {
            return 0;
        };
        let Some((&ns, &slot)) = set.iter().next() else {
            return 0;
        };
        let shared = if set.len() > 1 { VA_NSI_SHARED } else { 0 };
        u64::from(ns) << 32 | u64::from(VA_NSI_BOUND | shared | (slot & VA_NSI_SLOT_MASK))
    }

    /// Indexes with more than one bound namespace.
    pub fn shared(&self) -> usize {
        self.by_index.values().filter(|s| s.len() > 1).count()
    }
}

#[allow(unsafe_code)]
mod mapping {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd};
    use std::ptr::NonNull;
    use std::sync::atomic::{AtomicU64, Ordering};

    use aya::maps::MapData;

    /// A shared read-write mapping of a `BPF_F_MMAPABLE` array of u64 values: every access is
    /// an atomic 8-byte load or store, as the programs' loads are.
    pub struct Words {
        ptr: NonNull<AtomicU64>,
        len: usize,
        bytes: usize,
        /// The map's fd stays open: the loaded object's programs were relocated with its number
        /// (closing it would let another map take the number before they are loaded).
        _map: MapData,
    }

    impl std::fmt::Debug for Words {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Words")
                .field("len", &self.len)
                .finish_non_exhaustive()
        }
    }

    // SAFETY: the mapping is only accessed through atomics; the pointer is owned by Words.
    unsafe impl Send for Words {}
    // SAFETY: as above: shared access is atomic.
    unsafe impl Sync for Words {}

    impl Words {
        /// Maps `len` u64 values of the array `map`.
        pub fn map(map: MapData, len: usize) -> io::Result<Words> {
            let bytes = (len * 8).next_multiple_of(4096);
            // SAFETY: a fresh shared mapping of the map's fd, checked for failure; the kernel
            // keeps the map alive while the mapping exists.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    map.fd().as_fd().as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let ptr = NonNull::new(p.cast::<AtomicU64>()).ok_or_else(io::Error::last_os_error)?;
            Ok(Words {
                ptr,
                len,
                bytes,
                _map: map,
            })
        }

        fn word(&self, i: usize) -> &AtomicU64 {
            assert!(
                i < self.len,
                "index {i} beyond the {} mapped values",
                self.len
            );
            // SAFETY: i is within the mapping, which is page-aligned (so 8-byte aligned) and
            // lives as long as self.
            unsafe { &*self.ptr.as_ptr().add(i) }
        }

        /// Value `i`.
        pub fn load(&self, i: usize) -> u64 {
            self.word(i).load(Ordering::Acquire)
        }

        /// Stores value `i` in one atomic store.
        pub fn store(&self, i: usize, v: u64) {
            self.word(i).store(v, Ordering::Release);
        }
    }

    impl Drop for Words {
        fn drop(&mut self) {
            // SAFETY: the mapping made in map(), unmapped once.
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), self.bytes);
            }
        }
    }
}

pub use mapping::Words;

#[cfg(test)]
mod tests {
    use super::*;

    /// What a program finds for `ns`, given the index entries and the hash.
    fn find(entries: &BTreeMap<u32, u64>, hash: &BTreeMap<u32, u32>, ns: u32) -> Option<u32> {
        match read(entries.get(&index_of(ns)).copied().unwrap_or(0), ns) {
            Lookup::Slot(s) => Some(s),
            Lookup::Hash => hash.get(&ns).copied(),
            Lookup::Unbound => None,
        }
    }

    #[test]
    fn every_lookup_agrees_with_the_hash_through_binds_moves_and_unbinds() {
        let base = 0xF000_0000u32;
        let size = VA_NS_INDEX_SIZE;
        // Namespaces sharing index 7 (three), sharing index 9 (two), and alone.
        let spaces = [
            base + 7,
            base + size + 7,
            base + 2 * size + 7,
            base + 9,
            base + 3 * size + 9,
            base + 100,
            base + 101,
        ];
        let mut index = NsIndex::default();
        let mut entries: BTreeMap<u32, u64> = BTreeMap::new();
        let mut hash: BTreeMap<u32, u32> = BTreeMap::new();
        let check = |entries: &BTreeMap<u32, u64>, hash: &BTreeMap<u32, u32>, step: &str| {
            for ns in spaces
                .iter()
                .copied()
                .chain([base + 8, base + 4 * size + 7])
            {
                assert_eq!(
                    find(entries, hash, ns),
                    hash.get(&ns).copied(),
                    "{step}: ns {ns:#x}"
                );
            }
        };
        // A deterministic sequence of binds, moves (profile updates) and unbinds; after each
        // step's two halves (and between them, where the order allows) every namespace is
        // found as the hash has it or as it was before the step.
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for step in 0..400 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let ns = spaces[(seed % spaces.len() as u64) as usize];
            let slot = 1 + (seed >> 8) as u32 % 5;
            let before = hash.get(&ns).copied();
            if seed & 0x3000 == 0 && before.is_some() {
                // Unbind: the index first, then the hash.
                let (i, e) = index.remove(ns);
                entries.insert(i, e);
                let mid = find(&entries, &hash, ns);
                assert!(mid.is_none() || mid == before, "step {step}: unbinding");
                hash.remove(&ns);
            } else {
                // Bind or move: the hash first, then the index.
                hash.insert(ns, slot);
                let mid = find(&entries, &hash, ns);
                assert!(mid == before || mid == Some(slot), "step {step}: binding");
                let (i, e) = index.set(ns, slot);
                entries.insert(i, e);
            }
            check(&entries, &hash, &format!("step {step}"));
        }
        assert!(hash.len() > 2, "the sequence keeps some bound");
    }

    #[test]
    fn a_shared_index_names_its_smallest_namespace() {
        let mut index = NsIndex::default();
        let (i, e) = index.set(0xF000_0005, 3);
        assert_eq!(i, 5);
        assert_eq!(read(e, 0xF000_0005), Lookup::Slot(3));
        assert_eq!(read(e, 0xF001_0005), Lookup::Unbound);
        let (_, e) = index.set(0xF001_0005, 4);
        assert_eq!(read(e, 0xF000_0005), Lookup::Slot(3));
        assert_eq!(read(e, 0xF001_0005), Lookup::Hash);
        assert_eq!(index.shared(), 1);
        let (_, e) = index.remove(0xF000_0005);
        assert_eq!(read(e, 0xF001_0005), Lookup::Slot(4));
        assert_eq!(read(e, 0xF000_0005), Lookup::Unbound);
        let (_, e) = index.remove(0xF001_0005);
        assert_eq!(e, 0);
        assert_eq!(index.shared(), 0);
    }
}
