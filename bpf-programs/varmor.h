/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The contract between the BPF programs and the node agent: map layouts, record formats,
 * event format and numbers. The agent's build script reads every `#define VA_...` line of
 * this file into Rust constants, so the two sides cannot drift; the structs below are
 * checked against the offsets defined here with _Static_assert.
 *
 * Everything is little-endian u32 words unless said otherwise. See README.md for the design.
 */
#ifndef VARMOR_H
#define VARMOR_H

/* Bump when any map layout or record format changes: pins live under
 * /sys/fs/bpf/varmor/v<VA_LAYOUT_VERSION>/. */
#define VA_LAYOUT_VERSION 3

/* Capacities. */
#define VA_MAX_CONTAINERS 16384
#define VA_MAX_SLOTS 1024
#define VA_MAX_WALKS 8
#define VA_WORDS_PER_VALUE 16
#define VA_VALUE_SIZE 64
/* The largest blob (inner map) in values: 1 Mi values = 64 MiB. */
#define VA_MAX_BLOB_VALUES 1048576
#define VA_RINGBUF_SIZE 4194304
#define VA_PATH_MAX 4096
#define VA_PATH_BUF 8192
#define VA_FSTYPE_LEN 32
/* The most components walked when a path is built from dentries. */
#define VA_MAX_DEPTH 256

/* The most levels the top filter climbs from an opened file to its first component. */
#define VA_TOP_MAX_DEPTH 24

/* Header flags (header.flags). */
/* The path automaton's walks can all die on "/<first component>/": file_open may read the
 * first component of an opened file's path (a dentry walk, cheaper than resolving the path)
 * and allow at once when no file rule can match below it. */
#define VA_HF_TOP_FILTER 1
/* The same for programs: bprm_check_security may decide an exec from the first component of
 * the program's path (the walks' live range for exec). */
#define VA_HF_TOP_FILTER_EXEC 4
/* The socket section is a decision table instead of a rule list (more than
 * VA_SOCKET_TABLE_MIN_RULES rules): one 4-bit action per (domain, type, protocol) cell,
 * cell = (domain * VA_SOCKET_TABLE_TYPES + type) * VA_SOCKET_TABLE_PROTOCOLS + protocol, where
 * a domain or protocol of 64 or more counts as 64 (only rules without that mask match it) and
 * type is the socket type without flags (below 16); 8 cells per word, the first in the low
 * bits. */
#define VA_HF_SOCKET_TABLE 2
#define VA_SOCKET_TABLE_MIN_RULES 8
#define VA_SOCKET_TABLE_DOMAINS 65
#define VA_SOCKET_TABLE_TYPES 16
#define VA_SOCKET_TABLE_PROTOCOLS 65

/* Profile modes (header.mode). 0 marks a free slot. */
#define VA_MODE_FREE 0
#define VA_MODE_ENFORCE 1
#define VA_MODE_COMPLAIN 2

/* Action indexes, strongest first: the first matching index decides. */
#define VA_ACT_DENY_AUDIT 0
#define VA_ACT_DENY 1
#define VA_ACT_AUDIT 2
#define VA_ACT_COMPLAIN 3
#define VA_ACT_NONE 4

/* Event actions, as vArmor numbers them. */
#define VA_EVENT_DENIED 1
#define VA_EVENT_AUDIT 2
#define VA_EVENT_ALLOWED 4

/* Event types. */
#define VA_EV_CAPABILITY 1
#define VA_EV_FILE 2
#define VA_EV_EXEC 4
#define VA_EV_SOCKET 8
#define VA_EV_CONNECT 9
#define VA_EV_PTRACE 16
#define VA_EV_MOUNT 32

/* Event flags. */
#define VA_EVF_PATH_ERROR 1 /* the path could not be resolved: denied, fail closed */
#define VA_EVF_TABLE_ERROR 2 /* the profile's tables could not be read: denied */
#define VA_EVF_EXTERNAL 4 /* ptrace: the peer is in another mount namespace */
#define VA_EVF_TRACED_SIDE 8 /* ptrace: this container is the target */

/* File permission bits (AppArmor-compatible, as vArmor). */
#define VA_PERM_EXEC 0x1
#define VA_PERM_WRITE 0x2
#define VA_PERM_READ 0x4
#define VA_PERM_APPEND 0x8
#define VA_PERM_CREATE 0x10
#define VA_PERM_RENAME 0x80
#define VA_PERM_LINK 0x40000

/* ptrace permission bits. */
#define VA_PTRACE_TRACE 0x2
#define VA_PTRACE_READ 0x4
#define VA_PTRACE_TRACEBY 0x8
#define VA_PTRACE_READBY 0x10

/* Pseudo mount flag for umount (unused by Linux mount flags). */
#define VA_MOUNT_UMOUNT 0x200

/* The namespace index (v_ns_index): a direct-indexed front of v_containers, so that finding a
 * task's container costs one inlined array load instead of a hash lookup. Entry
 * mnt_ns & (VA_NS_INDEX_SIZE - 1) is one u64, stored atomically by the agent through a shared
 * mapping of the array (BPF_F_MMAPABLE; a map update would copy it byte by byte):
 *   0                                      no bound namespace has this index;
 *   ns << 32 | VA_NSI_BOUND | slot         namespace ns is bound to slot;
 *   ... | VA_NSI_SHARED                    other bound namespaces have this index too: a
 *                                          namespace other than ns is looked up in
 *                                          v_containers.
 * Namespace inode numbers are allocated densely, so indexes rarely collide. */
#define VA_NS_INDEX_SIZE 65536
#define VA_NSI_BOUND 0x80000000
#define VA_NSI_SHARED 0x40000000
#define VA_NSI_SLOT_MASK 0xffff

/* Container flags. */
#define VA_CF_POD_V4 1
#define VA_CF_POD_V6 2

/* Egress record kinds. */
#define VA_EGRESS_ANY 0
#define VA_EGRESS_POD_SELF 1
#define VA_EGRESS_V4 4
#define VA_EGRESS_V6 6

/* The egress index: records of one address (family, prefix, masked address) hash into a
 * bucket of (offset, count) words; a bucket holds at most this many records (more go to the
 * scanned records). The hash (agent and programs compute it alike):
 *   h = seed ^ (family << 8 | prefix); h *= VA_HASH_MUL;
 *   for each of the 4 masked address words: h ^= w; h *= VA_HASH_MUL;
 *   h ^= h >> 15; bucket = h & bucket_mask */
#define VA_EGRESS_BUCKET_MAX 8
#define VA_EGRESS_PREFIX_WORDS 8
#define VA_EGRESS_BUCKET_WORDS 2
#define VA_HASH_MUL 0x9E3779B1

/* Record sizes in words; each divides VA_WORDS_PER_VALUE and each section starts on a value
 * boundary, so one record is read with one map lookup. */
#define VA_VERDICT_WORDS 4
#define VA_MOUNT_ROW_WORDS 2
#define VA_SOCKET_WORDS 8
#define VA_EGRESS_WORDS 16
#define VA_MOUNT_RULE_WORDS 16

/* Walk kinds (index of live_lo/live_hi): which verdict bits the access asks about. */
#define VA_KIND_FILE 0
#define VA_KIND_EXEC 1
#define VA_KIND_ANY 2

/* Per-CPU counters (v_stats). */
#define VA_STAT_EVENTS 0
#define VA_STAT_EVENTS_DROPPED 1
#define VA_STAT_PATH_ERRORS 2
#define VA_STAT_TABLE_ERRORS 3
#define VA_STAT_DENIALS 4
#define VA_STAT_COUNT 8

/* Byte offsets of the structs below (checked in C, used by the agent). */
#define VA_AUTOMATON_SIZE 352
#define VA_HDR_OFF_CAPS 16
#define VA_HDR_OFF_PTRACE_ANY 48
#define VA_HDR_OFF_PTRACE_EXT 64
#define VA_HDR_OFF_PATH 80
#define VA_HDR_OFF_MNT 432
#define VA_HDR_OFF_SECTIONS 784
#define VA_HDR_OFF_LEAF 816
#define VA_HDR_OFF_EGRESS_INDEX 1168
#define VA_HDR_OFF_LEAF_FIRST 1192
#define VA_HDR_OFF_TOP_FIRST 1224
#define VA_HEADER_SIZE 1288
#define VA_CONTAINER_SIZE 28
#define VA_EV_OFF_PATH 104
#define VA_EV_SIZE 4200
#define VA_CONFIG_SIZE 16
#define VA_SLOT_META_SIZE 512

#ifndef VA_CONSTANTS_ONLY

/* One automaton: its byte classes and where its tables are in the blob (word offsets).
 * States are numbered by the agent so that the states from which a walk of kind k can still
 * reach a useful verdict are exactly [live_lo[k], live_hi[k]); 0 is the dead state. */
struct va_automaton {
	__u8 classes[256];
	__u32 class_count;
	__u32 state_count;
	__u32 walk_count;
	__u32 row_count;
	__u32 live_lo[3];
	__u32 live_hi[3];
	__u32 starts[VA_MAX_WALKS];
	__u32 trans_off; /* transitions[state * class_count + class] */
	__u32 accept_off; /* accept[state]: 0, or 1 + row */
	__u32 rows_off; /* path: verdict rows (4 words); mount: (ids offset, count) rows */
	__u32 pad[3];
};

/* The fixed part of a profile version ("slot"). */
struct va_header {
	__u32 mode;
	__u32 generation;
	__u32 blob_values;
	__u32 flags;
	__u64 caps[4]; /* per action index */
	__u32 ptrace_any[4]; /* per action: permissions of strict rules */
	__u32 ptrace_ext[4]; /* per action: permissions of cross-container rules */
	struct va_automaton path;
	struct va_automaton mnt;
	__u32 socket_off;
	__u32 socket_count;
	__u32 egress_off;
	__u32 egress_count;
	__u32 mount_rules_off;
	__u32 mount_rule_count;
	__u32 mount_ids_off;
	__u32 mount_ids_count;
	/* The leaf filter: an automaton of the file rules' patterns reversed, walked over the
	 * last component of an opened file from its last byte, then '/'. When every walk leaves
	 * live_lo/live_hi[VA_KIND_FILE], no file rule can match the path and file_open allows
	 * without resolving it. walk_count 0: no filter (it could never stop a walk). Only
	 * classes, counts, live range, starts and trans_off are used. */
	struct va_automaton leaf;
	/* Egress records [0, egress_scan_count) are checked one by one, strongest action first
	 * (any address, pod-self, and what did not fit a bucket). The rest are indexed: for each
	 * (family, prefix) of egress_prefixes ([family, prefix, mask words 0..3, 0, 0]), the
	 * masked address picks a bucket of egress_buckets ([offset, count] from the first
	 * indexed record), whose records are sorted strongest first. The strongest hit decides. */
	__u32 egress_scan_count;
	__u32 egress_prefixes_off;
	__u32 egress_prefix_count;
	__u32 egress_buckets_off;
	__u32 egress_bucket_mask;
	__u32 egress_seed;
	/* The leaf filter's first step, precomputed: bit b (of word b / 64) is set when some walk
	 * of the leaf automaton is still live after the byte b. file_open reads only the last byte
	 * of the opened file's name; when its bit is clear, no file rule can match the path and
	 * the open is allowed with no table lookup. All clear when there is no leaf filter. */
	__u64 leaf_first[4];
	/* The top filter's first step, precomputed per walk kind (0: file, 1: exec): bit b is set
	 * when some walk of the path automaton is still live after "/" and the byte b. With
	 * VA_HF_TOP_FILTER (VA_HF_TOP_FILTER_EXEC), file_open (bprm_check_security) reads the
	 * first byte of the path's first component; when its bit is clear, no rule of that kind
	 * can match the path. */
	__u64 top_first[2][4];
};

struct va_words {
	__u32 w[VA_WORDS_PER_VALUE];
};

/* mnt_ns -> container. Addresses are the big-endian bytes read as a u32 (a.b.c.d ->
 * a<<24|b<<16|c<<8|d), the same form egress records use. */
struct va_container {
	__u32 slot;
	__u32 flags;
	__u32 pod_v4;
	__u32 pod_v6[4];
};

struct va_config {
	__u32 init_mnt_ns;
	__u32 layout;
	__u64 reserved;
};

/* One event in the ring buffer; only VA_EV_OFF_PATH + path_len bytes are sent. */
struct va_event {
	__u32 type;
	__u32 action;
	__u32 mnt_ns;
	__u32 tgid;
	__u64 ktime; /* bpf_ktime_get_boot_ns */
	__u32 slot;
	__u32 generation;
	__u32 flags;
	__u32 perms; /* file/exec permissions, capability, ptrace permission, mount flags */
	__u32 a; /* socket: domain; connect: family (4 or 6) */
	__u32 b; /* socket: type; connect: port */
	__u32 c; /* socket: protocol */
	__u32 addr[4]; /* connect: address words (as in records) */
	__u32 path_len;
	char fstype[VA_FSTYPE_LEN];
	char path[VA_PATH_MAX];
};

#endif /* VA_CONSTANTS_ONLY */
#endif /* VARMOR_H */
