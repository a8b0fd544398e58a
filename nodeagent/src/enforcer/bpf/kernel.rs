//! The only module that talks to the kernel's BPF subsystem (through aya): loading the
//! programs, pinning maps and links under `<pin root>/v<layout>/`, adopting what an earlier
//! agent pinned, and reading and writing the maps.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use aya::maps::{Array, ArrayOfMaps, HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::Lsm;
use aya::{Btf, Ebpf, EbpfLoader};

use super::layout::*;
use super::nsindex::{NsIndex, Words};

/// The enforcer's BPF object (built by `build.rs` from `bpf-programs/varmor.bpf.c`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/varmor.bpf.o"));
/// The probe object (`bpf-programs/probe.bpf.c`).
pub static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe.bpf.o"));

/// The programs of [`OBJECT`] and the LSM hook each attaches to.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("varmor_capable", "capable"),
    ("varmor_file_open", "file_open"),
    ("varmor_bprm_check_security", "bprm_check_security"),
    ("varmor_path_symlink", "path_symlink"),
    ("varmor_path_link", "path_link"),
    ("varmor_path_rename", "path_rename"),
    ("varmor_socket_create", "socket_create"),
    ("varmor_socket_connect", "socket_connect"),
    ("varmor_ptrace_access_check", "ptrace_access_check"),
    ("varmor_sb_mount", "sb_mount"),
    ("varmor_move_mount", "move_mount"),
    ("varmor_sb_umount", "sb_umount"),
];

/// A kernel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The object could not be parsed or its maps created.
    #[error("cannot load the BPF object (maps pinned under {dir}): {source}")]
    Object {
        /// The pin directory.
        dir: PathBuf,
        /// The loader's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program could not be loaded; the verifier log says why.
    #[error("cannot load BPF program {program} for lsm/{hook}: {source}")]
    Load {
        /// The program.
        program: String,
        /// The LSM hook.
        hook: String,
        /// The error, which includes the verifier log.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A program could not be attached or its link pinned.
    #[error("cannot attach BPF program {program} to lsm/{hook}: {reason}")]
    Attach {
        /// The program.
        program: String,
        /// The LSM hook.
        hook: String,
        /// Why.
        reason: String,
    },
    /// A map operation failed.
    #[error("BPF map {map}: {reason}")]
    Map {
        /// The map.
        map: &'static str,
        /// Why.
        reason: String,
    },
    /// A file operation on the pin directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's BTF could not be read.
    #[error("cannot read the kernel BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(Box<aya::BtfError>),
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> KernelError {
    move |e| KernelError::Map {
        map,
        reason: e.to_string(),
    }
}

/// One program as loaded (or adopted) at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramReport {
    /// Program name.
    pub name: String,
    /// LSM hook.
    pub hook: String,
    /// Whether a link pinned by an earlier agent (same object) was kept.
    pub adopted: bool,
    /// Instructions the verifier processed, when the kernel reports it.
    pub verified_instructions: Option<u32>,
}

/// The kernel side: maps (pinned) and program links (pinned).
pub struct Kernel {
    dir: PathBuf,
    containers: BpfHashMap<MapData, u32, [u8; CONTAINER_SIZE]>,
    /// `v_ns_index`, mapped (see [`super::nsindex`]), and what its entries must hold.
    ns_words: Words,
    ns_index: NsIndex,
    headers: Array<MapData, [u8; HEADER_SIZE]>,
    blobs: ArrayOfMaps<MapData, Array<MapData, Value>>,
    meta: Array<MapData, [u8; META_SIZE]>,
    stats: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    empty_blob: Array<MapData, Value>,
    programs: Vec<ProgramReport>,
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("dir", &self.dir)
            .field("programs", &self.programs)
            .finish_non_exhaustive()
    }
}

/// A short hash of the object, so pinned links of the same build are recognised.
pub fn object_id(object: &[u8]) -> String {
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    for b in object {
        x ^= u64::from(*b);
        x = x.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{x:016x}")
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory of this layout version under `root`.
pub fn layout_dir(root: &Path) -> PathBuf {
    root.join(format!("v{VA_LAYOUT_VERSION}"))
}

impl Kernel {
    /// Opens (creating or adopting) the pinned state under `root/v<layout>` and makes sure every
    /// program of this build is attached, then detaches programs of other builds. Enforcement
    /// never pauses: new links are pinned before old ones are removed.
    pub fn open(root: &Path, init_mnt_ns: u32) -> Result<Kernel, KernelError> {
        let dir = layout_dir(root);
        let links = dir.join("links");
        std::fs::create_dir_all(&links).map_err(io(&links))?;
        let btf = Btf::from_sys_fs().map_err(|e| KernelError::Btf(Box::new(e)))?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .default_map_pin_directory(&dir)
            .load(OBJECT)
            .map_err(|source| KernelError::Object {
                dir: dir.clone(),
                source: Box::new(source),
            })?;
        let take = |ebpf: &mut Ebpf, name: &'static str| -> Result<Map, KernelError> {
            ebpf.take_map(name).ok_or(KernelError::Map {
                map: name,
                reason: "missing from the object".into(),
            })
        };
        let containers: BpfHashMap<MapData, u32, [u8; CONTAINER_SIZE]> =
            BpfHashMap::try_from(take(&mut ebpf, "v_containers")?)
                .map_err(map_err("v_containers"))?;
        let ns_words = match take(&mut ebpf, "v_ns_index")? {
            Map::Array(data) => Words::map(data, VA_NS_INDEX_SIZE as usize),
            _ => Err(std::io::Error::other("not an array")),
        }
        .map_err(|e| KernelError::Map {
            map: "v_ns_index",
            reason: format!("cannot map it: {e}"),
        })?;
        // The index must agree with v_containers (adopted from an earlier agent, or new and
        // empty): rebuilt from it, and only entries that differ are stored.
        let mut ns_index = NsIndex::default();
        for item in containers.iter() {
            let (ns, v) = item.map_err(map_err("v_containers"))?;
            ns_index.set(ns, ContainerEntry::from_bytes(&v).slot);
        }
        for i in 0..VA_NS_INDEX_SIZE {
            let want = ns_index.entry(i);
            if ns_words.load(i as usize) != want {
                ns_words.store(i as usize, want);
            }
        }
        let headers =
            Array::try_from(take(&mut ebpf, "v_headers")?).map_err(map_err("v_headers"))?;
        let blobs =
            ArrayOfMaps::try_from(take(&mut ebpf, "v_blobs")?).map_err(map_err("v_blobs"))?;
        let meta =
            Array::try_from(take(&mut ebpf, "v_slot_meta")?).map_err(map_err("v_slot_meta"))?;
        let mut config: Array<MapData, [u8; CONFIG_SIZE]> =
            Array::try_from(take(&mut ebpf, "v_config")?).map_err(map_err("v_config"))?;
        let stats =
            PerCpuArray::try_from(take(&mut ebpf, "v_stats")?).map_err(map_err("v_stats"))?;
        let events =
            RingBuf::try_from(take(&mut ebpf, "v_events")?).map_err(map_err("v_events"))?;
        config
            .set(0, config_bytes(init_mnt_ns), 0)
            .map_err(map_err("v_config"))?;
        let empty_blob = Array::<MapData, Value>::create(1, VA_INNER_MAP_FLAGS)
            .map_err(map_err("v_blobs.inner"))?;

        let id = object_id(OBJECT);
        let mut programs = Vec::new();
        let existing: Vec<String> = std::fs::read_dir(&links)
            .map_err(io(&links))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        for (name, hook) in PROGRAMS {
            let pin = format!("{name}-{id}");
            if existing.contains(&pin) && PinnedLink::from_pin(links.join(&pin)).is_ok() {
                programs.push(ProgramReport {
                    name: (*name).into(),
                    hook: (*hook).into(),
                    adopted: true,
                    verified_instructions: None,
                });
                continue;
            }
            let prog: &mut Lsm = ebpf
                .program_mut(name)
                .ok_or_else(|| KernelError::Attach {
                    program: (*name).into(),
                    hook: (*hook).into(),
                    reason: "missing from the object".into(),
                })?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| KernelError::Attach {
                    program: (*name).into(),
                    hook: (*hook).into(),
                    reason: e.to_string(),
                })?;
            prog.load(hook, &btf).map_err(|source| KernelError::Load {
                program: (*name).into(),
                hook: (*hook).into(),
                source: Box::new(source),
            })?;
            let verified = prog
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count());
            let attach_err = |reason: String| KernelError::Attach {
                program: (*name).into(),
                hook: (*hook).into(),
                reason,
            };
            let link_id = prog.attach().map_err(|e| attach_err(e.to_string()))?;
            let link = prog
                .take_link(link_id)
                .map_err(|e| attach_err(e.to_string()))?;
            let fd: FdLink = link.into();
            let _ = std::fs::remove_file(links.join(&pin));
            fd.pin(links.join(&pin))
                .map_err(|e| attach_err(format!("cannot pin the link: {e}")))?;
            programs.push(ProgramReport {
                name: (*name).into(),
                hook: (*hook).into(),
                adopted: false,
                verified_instructions: verified,
            });
        }
        // Every program of this build is attached: links of other builds go now.
        for old in existing {
            let current = PROGRAMS.iter().any(|(n, _)| old == format!("{n}-{id}"));
            if !current {
                let path = links.join(&old);
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(enforcer = "BPF", path = %path.display(), error = %e, "cannot remove an old program link");
                } else {
                    tracing::info!(
                        enforcer = "BPF",
                        link = old,
                        "detached a program of another build"
                    );
                }
            }
        }
        Ok(Kernel {
            dir,
            containers,
            ns_words,
            ns_index,
            headers,
            blobs,
            meta,
            stats,
            events: Some(events),
            empty_blob,
            programs,
        })
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What was loaded or adopted.
    pub fn programs(&self) -> &[ProgramReport] {
        &self.programs
    }

    /// Takes the event ring buffer (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The per-CPU counters, summed.
    pub fn stats(&self) -> Vec<u64> {
        (0..VA_STAT_COUNT)
            .map(|i| self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0))
            .collect()
    }

    /// Detaches every program and removes the pin directory of this layout: enforcement stops.
    pub fn destroy(root: &Path) -> Result<(), KernelError> {
        let dir = layout_dir(root);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(())
    }
}

/// The maps as the enforcer uses them; [`Kernel`] is the real one.
pub trait KernelMaps: Send + fmt::Debug {
    /// Writes a profile version into `slot`: blob first, metadata, header last.
    fn write_slot(
        &mut self,
        slot: u32,
        header: &Header,
        blob: &[Value],
        meta: &SlotMeta,
    ) -> Result<(), KernelError>;
    /// Frees `slot`: its header is zeroed (containers on it would be denied) and its blob
    /// released.
    fn clear_slot(&mut self, slot: u32) -> Result<(), KernelError>;
    /// Binds a container (one map update: atomic for the container).
    fn set_container(&mut self, mnt_ns: u32, entry: &ContainerEntry) -> Result<(), KernelError>;
    /// Unbinds a container.
    fn remove_container(&mut self, mnt_ns: u32) -> Result<(), KernelError>;
    /// Every bound container.
    fn containers(&self) -> Result<Vec<(u32, ContainerEntry)>, KernelError>;
    /// Every used slot with its header and metadata.
    fn slots(&self) -> Result<Vec<(u32, Header, SlotMeta)>, KernelError>;
}

/// `BPF_F_INNER_MAP`: inner arrays of different sizes fit one outer map.
pub const VA_INNER_MAP_FLAGS: u32 = 1 << 12;

impl KernelMaps for Kernel {
    fn write_slot(
        &mut self,
        slot: u32,
        header: &Header,
        blob: &[Value],
        meta: &SlotMeta,
    ) -> Result<(), KernelError> {
        let mut inner =
            Array::<MapData, Value>::create(blob.len().max(1) as u32, VA_INNER_MAP_FLAGS)
                .map_err(map_err("v_blobs.inner"))?;
        for (i, v) in blob.iter().enumerate() {
            inner
                .set(i as u32, v, 0)
                .map_err(map_err("v_blobs.inner"))?;
        }
        self.blobs
            .set(slot, &inner, 0)
            .map_err(map_err("v_blobs"))?;
        self.meta
            .set(slot, meta.to_bytes(), 0)
            .map_err(map_err("v_slot_meta"))?;
        self.headers
            .set(slot, header.to_bytes(), 0)
            .map_err(map_err("v_headers"))?;
        Ok(())
    }

    fn clear_slot(&mut self, slot: u32) -> Result<(), KernelError> {
        self.headers
            .set(slot, [0u8; HEADER_SIZE], 0)
            .map_err(map_err("v_headers"))?;
        self.meta
            .set(slot, [0u8; META_SIZE], 0)
            .map_err(map_err("v_slot_meta"))?;
        // aya cannot delete from an array of maps: point the slot at a one-value array, which
        // releases the profile's blob.
        self.blobs
            .set(slot, &self.empty_blob, 0)
            .map_err(map_err("v_blobs"))?;
        Ok(())
    }

    fn set_container(&mut self, mnt_ns: u32, entry: &ContainerEntry) -> Result<(), KernelError> {
        // The hash first, the index after (see nsindex).
        self.containers
            .insert(mnt_ns, entry.to_bytes(), 0)
            .map_err(map_err("v_containers"))?;
        let (i, e) = self.ns_index.set(mnt_ns, entry.slot);
        self.ns_words.store(i as usize, e);
        Ok(())
    }

    fn remove_container(&mut self, mnt_ns: u32) -> Result<(), KernelError> {
        // The index first, the hash after (see nsindex).
        let (i, e) = self.ns_index.remove(mnt_ns);
        self.ns_words.store(i as usize, e);
        match self.containers.remove(&mnt_ns) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("v_containers")(e)),
        }
    }

    fn containers(&self) -> Result<Vec<(u32, ContainerEntry)>, KernelError> {
        let mut out = Vec::new();
        for item in self.containers.iter() {
            let (k, v) = item.map_err(map_err("v_containers"))?;
            out.push((k, ContainerEntry::from_bytes(&v)));
        }
        Ok(out)
    }

    fn slots(&self) -> Result<Vec<(u32, Header, SlotMeta)>, KernelError> {
        let mut out = Vec::new();
        for slot in 1..VA_MAX_SLOTS {
            let h = self.headers.get(&slot, 0).map_err(map_err("v_headers"))?;
            let h = Header::from_bytes(&h);
            if h.mode == VA_MODE_FREE {
                continue;
            }
            let m = self.meta.get(&slot, 0).map_err(map_err("v_slot_meta"))?;
            out.push((slot, h, SlotMeta::from_bytes(&m)));
        }
        Ok(out)
    }
}

/// An in-memory [`KernelMaps`] for tests of the enforcer's bookkeeping.
#[derive(Debug, Default, Clone)]
pub struct MemoryMaps {
    /// Slots: header, blob, metadata.
    pub slots: BTreeMap<u32, (Header, Vec<Value>, SlotMeta)>,
    /// Containers.
    pub containers: BTreeMap<u32, ContainerEntry>,
    /// Fail the next write_slot.
    pub fail_next_write: bool,
}

impl KernelMaps for MemoryMaps {
    fn write_slot(
        &mut self,
        slot: u32,
        header: &Header,
        blob: &[Value],
        meta: &SlotMeta,
    ) -> Result<(), KernelError> {
        if std::mem::take(&mut self.fail_next_write) {
            return Err(KernelError::Map {
                map: "v_blobs",
                reason: "injected failure".into(),
            });
        }
        self.slots
            .insert(slot, (header.clone(), blob.to_vec(), meta.clone()));
        Ok(())
    }

    fn clear_slot(&mut self, slot: u32) -> Result<(), KernelError> {
        self.slots.remove(&slot);
        Ok(())
    }

    fn set_container(&mut self, mnt_ns: u32, entry: &ContainerEntry) -> Result<(), KernelError> {
        self.containers.insert(mnt_ns, *entry);
        Ok(())
    }

    fn remove_container(&mut self, mnt_ns: u32) -> Result<(), KernelError> {
        self.containers.remove(&mnt_ns);
        Ok(())
    }

    fn containers(&self) -> Result<Vec<(u32, ContainerEntry)>, KernelError> {
        Ok(self.containers.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn slots(&self) -> Result<Vec<(u32, Header, SlotMeta)>, KernelError> {
        Ok(self
            .slots
            .iter()
            .map(|(s, (h, _, m))| (*s, h.clone(), m.clone()))
            .collect())
    }
}
