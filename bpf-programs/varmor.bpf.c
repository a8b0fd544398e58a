// SPDX-License-Identifier: Apache-2.0
/*
 * varmor BPF-LSM enforcer.
 *
 * Every hook finds the calling task's container by its mount-namespace inode (v_ns_index, in
 * front of v_containers), the container's profile version ("slot") header (v_headers) and,
 * when it needs tables, the slot's blob (v_blobs, an array of per-slot inner arrays). Tasks
 * outside any container return at once. The decision reproduces varmor_policy::decide exactly; see
 * README.md for the design and the deliberate differences (fail closed on unresolvable paths,
 * stricter link/rename checks).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "varmor.h"

char LICENSE[] SEC("license") = "GPL";

#define EPERM 1
#define AF_INET 2
#define AF_INET6 10

#define FMODE_READ 0x1
#define FMODE_WRITE 0x2
#define FMODE_NOACCOUNT 0x20000000
#define O_CREAT 0100
#define O_TRUNC 01000
#define O_APPEND 02000
#define FMODE_EXEC_FLAG 0x20 /* __FMODE_EXEC in f_flags */
#define CAP_OPT_NOAUDIT 0x2
#define PTRACE_MODE_READ 0x01
#define PTRACE_MODE_NOAUDIT 0x04
#define RENAME_EXCHANGE 0x2

#define MS_REMOUNT 32
#define MS_BIND 4096
#define MS_MOVE 8192
#define MS_UNBINDABLE (1 << 17)
#define MS_PRIVATE (1 << 18)
#define MS_SLAVE (1 << 19)
#define MS_SHARED (1 << 20)
#define NON_NEW_MOUNT                                                                          \
	(MS_REMOUNT | MS_BIND | MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE | MS_MOVE |  \
	 VA_MOUNT_UMOUNT)

_Static_assert(sizeof(struct va_automaton) == VA_AUTOMATON_SIZE, "automaton size");
_Static_assert(__builtin_offsetof(struct va_header, caps) == VA_HDR_OFF_CAPS, "caps");
_Static_assert(__builtin_offsetof(struct va_header, ptrace_any) == VA_HDR_OFF_PTRACE_ANY, "pa");
_Static_assert(__builtin_offsetof(struct va_header, ptrace_ext) == VA_HDR_OFF_PTRACE_EXT, "pe");
_Static_assert(__builtin_offsetof(struct va_header, path) == VA_HDR_OFF_PATH, "path");
_Static_assert(__builtin_offsetof(struct va_header, mnt) == VA_HDR_OFF_MNT, "mnt");
_Static_assert(__builtin_offsetof(struct va_header, socket_off) == VA_HDR_OFF_SECTIONS, "sec");
_Static_assert(__builtin_offsetof(struct va_header, leaf) == VA_HDR_OFF_LEAF, "leaf");
_Static_assert(__builtin_offsetof(struct va_header, egress_scan_count) == VA_HDR_OFF_EGRESS_INDEX,
	       "egress index");
_Static_assert(__builtin_offsetof(struct va_header, leaf_first) == VA_HDR_OFF_LEAF_FIRST, "lf");
_Static_assert(__builtin_offsetof(struct va_header, top_first) == VA_HDR_OFF_TOP_FIRST, "tf");
_Static_assert(sizeof(struct va_header) == VA_HEADER_SIZE, "header size");
_Static_assert(sizeof(struct va_container) == VA_CONTAINER_SIZE, "container size");
_Static_assert(__builtin_offsetof(struct va_event, path) == VA_EV_OFF_PATH, "event path");
_Static_assert(sizeof(struct va_event) == VA_EV_SIZE, "event size");
_Static_assert(sizeof(struct va_config) == VA_CONFIG_SIZE, "config size");
_Static_assert(sizeof(struct va_words) == VA_VALUE_SIZE, "value size");
_Static_assert(__builtin_offsetof(struct sockaddr_in, sin_port) ==
		       __builtin_offsetof(struct sockaddr_in6, sin6_port),
	       "port offset");

/* ---- maps ---------------------------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VA_MAX_CONTAINERS);
	__type(key, __u32);
	__type(value, struct va_container);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} v_containers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VA_NS_INDEX_SIZE);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} v_ns_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VA_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct va_header);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} v_headers SEC(".maps");

struct va_blob {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP);
	__uint(key_size, 4);
	/* A size, not a type: clang emits struct va_words only as a forward declaration here. */
	__uint(value_size, VA_VALUE_SIZE);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, VA_MAX_SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct va_blob);
} v_blobs SEC(".maps");

/* Which profile each slot holds (written and read by the agent only). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VA_MAX_SLOTS);
	__uint(key_size, 4);
	__uint(value_size, VA_SLOT_META_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} v_slot_meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct va_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} v_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VA_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} v_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, VA_RINGBUF_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} v_events SEC(".maps");

struct va_scratch {
	struct va_event ev;
	/* Paths: bpf_d_path writes at 0, dentry walks write backwards from VA_PATH_BUF. The
	 * slack lets a name of up to 255 bytes be copied at any masked offset. */
	char path[VA_PATH_BUF + 256];
	/* The mount match sets of the walks being checked: (offset into the ids, count). */
	__u32 mrow_off[VA_MAX_WALKS];
	__u32 mrow_cnt[VA_MAX_WALKS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct va_scratch);
} v_scratch SEC(".maps");

/* ---- small helpers ------------------------------------------------------------------- */

static __always_inline void stat_inc(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&v_stats, &which);
	if (v)
		*v += 1;
}

static __always_inline struct va_scratch *scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&v_scratch, &zero);
}

/* Direct loads through BTF pointers (the verifier turns them into fault-safe loads, without a
 * helper call per field as BPF_CORE_READ makes): every hooked operation of every process on the
 * node pays for this, contained or not. A task without nsproxy (exiting) reads as 0. */
static __always_inline __u32 task_mnt_ns(struct task_struct *t)
{
	return t->nsproxy->mnt_ns->ns.inum;
}

/* The profile of the current task: 0 when it is not in a container. */
struct who {
	__u32 ns;
	__u32 slot;
	struct va_header *h;
	struct task_struct *task; /* set by current_profile */
};

/* Finds namespace ns's slot through the namespace index (varmor.h), falling back to
 * v_containers when the index is shared. Returns 0 when ns is not bound. */
static __always_inline int lookup_ns(__u32 ns, struct who *w)
{
	__u32 i = ns & (VA_NS_INDEX_SIZE - 1);
	__u64 *e = bpf_map_lookup_elem(&v_ns_index, &i);
	w->ns = ns;
	if (!e)
		return 0;
	/* One 8-byte load: the agent stores the entry atomically. */
	__u64 v = *(volatile __u64 *)e;
	if ((__u32)(v >> 32) == ns && (v & VA_NSI_BOUND)) {
		w->slot = v & VA_NSI_SLOT_MASK;
	} else if (v & VA_NSI_SHARED) {
		struct va_container *c = bpf_map_lookup_elem(&v_containers, &ns);
		if (!c)
			return 0;
		w->slot = c->slot;
	} else {
		return 0;
	}
	w->h = bpf_map_lookup_elem(&v_headers, &w->slot);
	return 1;
}

static __always_inline int event_action(__u32 act)
{
	switch (act) {
	case VA_ACT_DENY_AUDIT:
		return VA_EVENT_DENIED;
	case VA_ACT_AUDIT:
		return VA_EVENT_AUDIT;
	case VA_ACT_COMPLAIN:
		return VA_EVENT_ALLOWED;
	default:
		return 0;
	}
}

/* Fills the common event fields; the caller fills the rest and calls send(). */
static __always_inline struct va_event *event_begin(struct va_scratch *s, struct who *w,
						    __u32 type, __u32 action, __u32 tgid)
{
	struct va_event *e = &s->ev;
	e->type = type;
	e->action = action;
	e->mnt_ns = w->ns;
	e->tgid = tgid;
	e->ktime = bpf_ktime_get_boot_ns();
	e->slot = w->slot;
	e->generation = w->h ? w->h->generation : 0;
	e->flags = 0;
	e->perms = 0;
	e->a = 0;
	e->b = 0;
	e->c = 0;
	e->addr[0] = 0;
	e->addr[1] = 0;
	e->addr[2] = 0;
	e->addr[3] = 0;
	e->path_len = 0;
	e->fstype[0] = 0;
	return e;
}

static __always_inline void send(struct va_scratch *s)
{
	__u32 len = s->ev.path_len & (VA_PATH_MAX - 1);
	stat_inc(VA_STAT_EVENTS);
	if (bpf_ringbuf_output(&v_events, &s->ev, VA_EV_OFF_PATH + len, 0))
		stat_inc(VA_STAT_EVENTS_DROPPED);
}

static __always_inline __u32 current_tgid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

/* Copies the path at s->path[start..start+len) into the event. */
static __always_inline void event_path(struct va_scratch *s, __u32 start, __u32 len)
{
	len &= VA_PATH_MAX - 1;
	bpf_probe_read_kernel(s->ev.path, len, &s->path[start & (VA_PATH_BUF - 1)]);
	s->ev.path_len = len;
}

/* ---- blob access --------------------------------------------------------------------- */

static __always_inline struct va_words *blob_value(void *blob, __u64 word)
{
	__u32 key = word >> 4;
	if (word >> 36)
		return 0;
	return bpf_map_lookup_elem(blob, &key);
}

/* ---- the automaton walk -------------------------------------------------------------- */

/* Where the leaf filter copies the last component (the byte before it holds '/'): between
 * what bpf_d_path writes (from 0) and what dentry walks write (backwards from the end). */
#define LEAF_AT (VA_PATH_MAX + 512)

struct walk_ctx {
	void *blob;
	__u32 slot;
	__u32 start;
	__u32 mount; /* which automaton: 0 path, 1 mount, 2 leaf filter */
	__u32 reverse; /* walk from start downwards */
	__u32 lo;
	__u32 span;
	__u32 nclasses;
	__u32 trans_off;
	__u32 nwalks;
	__u32 err;
	__u32 states[VA_MAX_WALKS];
};

/* One step of every live walk of c over byte class cls. Returns 1 when a walk is still live,
 * 0 when none is, -1 when a table could not be read. */
static __always_inline int walk_one(struct walk_ctx *c, __u32 cls)
{
	int alive = 0;
#pragma unroll
	for (int k = 0; k < VA_MAX_WALKS; k++) {
		if (k >= c->nwalks)
			break;
		__u32 st = c->states[k];
		if (st - c->lo >= c->span)
			continue;
		__u64 word = (__u64)c->trans_off + (__u64)st * c->nclasses + cls;
		struct va_words *v = blob_value(c->blob, word);
		if (!v)
			return -1;
		st = v->w[word & 15];
		c->states[k] = st;
		if (st - c->lo < c->span)
			alive = 1;
	}
	return alive;
}

static long walk_step(__u32 i, void *data)
{
	struct walk_ctx *c = data;
	struct va_scratch *s = scratch();
	if (!s) {
		c->err = 1;
		return 1;
	}
	__u32 at = c->reverse ? c->start - i : c->start + i;
	__u8 b = s->path[at & (VA_PATH_BUF - 1)];
	struct va_header *h = bpf_map_lookup_elem(&v_headers, &c->slot);
	if (!h) {
		c->err = 1;
		return 1;
	}
	__u32 cls = c->mount == 2 ? h->leaf.classes[b] :
		    c->mount	     ? h->mnt.classes[b] :
				       h->path.classes[b];
	int alive = walk_one(c, cls);
	if (alive < 0) {
		c->err = 1;
		return 1;
	}
	return alive ? 0 : 1;
}

/* Whether every walk of c has left its live range (no rule can match any more). */
static __always_inline int all_dead(struct walk_ctx *c)
{
#pragma unroll
	for (int k = 0; k < VA_MAX_WALKS; k++) {
		if (k >= c->nwalks)
			break;
		if (c->states[k] - c->lo < c->span)
			return 0;
	}
	return 1;
}

/* Sets up the walks of automaton a (which: 0 path, 1 mount, 2 leaf filter) from start
 * (downwards when reverse): c holds the start states and the live range of kind. Returns -1
 * when the automaton is malformed. */
static __always_inline int walk_setup(struct walk_ctx *c, void *blob, __u32 slot,
				      struct va_automaton *a, __u32 which, __u32 kind,
				      __u32 start, __u32 reverse)
{
	c->blob = blob;
	c->slot = slot;
	c->start = start;
	c->mount = which;
	c->reverse = reverse;
	if (kind > 2)
		return -1;
	c->lo = a->live_lo[kind];
	c->span = a->live_hi[kind] - c->lo;
	c->nclasses = a->class_count;
	c->trans_off = a->trans_off;
	c->nwalks = a->walk_count;
	if (c->nwalks > VA_MAX_WALKS)
		return -1;
#pragma unroll
	for (int k = 0; k < VA_MAX_WALKS; k++)
		c->states[k] = a->starts[k];
	return 0;
}

/* Runs the walks of automaton a (which: 0 path, 1 mount, 2 leaf filter) over len bytes of the
 * scratch path from start (downwards when reverse); c holds the final states and the live
 * range of kind. Returns -1 when the automaton is malformed or a table could not be read. */
static __always_inline int run_walks(struct walk_ctx *c, void *blob, __u32 slot,
				     struct va_automaton *a, __u32 which, __u32 kind, __u32 start,
				     __u32 len, __u32 reverse)
{
	if (walk_setup(c, blob, slot, a, which, kind, start, reverse) < 0)
		return -1;
	if (len > 0)
		bpf_loop(len, walk_step, c, 0);
	return c->err ? -1 : 0;
}

/* Walks the automaton over s->path[start..start+len) and ORs the verdict rows of the final
 * states into v[4] (path automaton) or records the mount rows in rows[] (mount automaton).
 * Returns -1 when a table could not be read. */
static __always_inline int walk(struct who *w, void *blob, struct va_automaton *a, __u32 mount,
				__u32 kind, __u32 start, __u32 len, __u32 v[4],
				__u32 rows_off[VA_MAX_WALKS], __u32 rows_cnt[VA_MAX_WALKS])
{
	struct walk_ctx c = {};
	if (run_walks(&c, blob, w->slot, a, mount, kind, start, len, 0) < 0)
		return -1;
	__u32 accept_off = a->accept_off;
	__u32 rows = a->rows_off;
#pragma unroll
	for (int k = 0; k < VA_MAX_WALKS; k++) {
		if (k >= c.nwalks)
			break;
		__u32 st = c.states[k];
		if (st - c.lo >= c.span)
			continue;
		__u64 word = (__u64)accept_off + st;
		struct va_words *val = blob_value(blob, word);
		if (!val)
			return -1;
		__u32 acc = val->w[word & 15];
		if (!acc)
			continue;
		if (!mount) {
			word = (__u64)rows + (__u64)(acc - 1) * VA_VERDICT_WORDS;
			val = blob_value(blob, word);
			if (!val)
				return -1;
			__u32 at = word & 12;
			v[0] |= val->w[at & 15];
			v[1] |= val->w[(at + 1) & 15];
			v[2] |= val->w[(at + 2) & 15];
			v[3] |= val->w[(at + 3) & 15];
		} else {
			word = (__u64)rows + (__u64)(acc - 1) * VA_MOUNT_ROW_WORDS;
			val = blob_value(blob, word);
			if (!val)
				return -1;
			__u32 at = word & 14;
			rows_off[k] = val->w[at & 15];
			rows_cnt[k] = val->w[(at + 1) & 15];
		}
	}
	return 0;
}

static __always_inline __u32 verdict_action(__u32 v[4], __u32 requested)
{
	if (v[VA_ACT_DENY_AUDIT] & requested)
		return VA_ACT_DENY_AUDIT;
	if (v[VA_ACT_DENY] & requested)
		return VA_ACT_DENY;
	if (v[VA_ACT_AUDIT] & requested)
		return VA_ACT_AUDIT;
	if (v[VA_ACT_COMPLAIN] & requested)
		return VA_ACT_COMPLAIN;
	return VA_ACT_NONE;
}

/* A profile's tables could not be read: counted, and the access is denied with an event
 * (fail closed). Returns the action; sets the event flag. */
static __always_inline __u32 table_error(__u32 *flags)
{
	stat_inc(VA_STAT_TABLE_ERRORS);
	*flags = VA_EVF_TABLE_ERROR;
	return VA_ACT_DENY_AUDIT;
}

/* What a hook returns for act: -EPERM (counted) for the deny actions, unless the profile
 * only complains. */
static __always_inline int verdict_ret(struct va_header *h, __u32 act)
{
	if (h->mode == VA_MODE_COMPLAIN || act > VA_ACT_DENY)
		return 0;
	stat_inc(VA_STAT_DENIALS);
	return -EPERM;
}

/* ---- paths --------------------------------------------------------------------------- */

struct resolve_ctx {
	__u64 dentry;
	__u64 vfsmnt;
	__u64 root_dentry;
	__u64 root_mnt;
	__u32 pos;
	__u32 err;
	__u32 done;
};

/* The struct mount around a vfsmount (the kernel's real_mount), and the vfsmount inside a
 * struct mount, as an address. */
static __always_inline struct mount *real_mount(void *vfsmnt)
{
	return vfsmnt - bpf_core_field_offset(struct mount, mnt);
}

static __always_inline __u64 mount_vfsmnt(struct mount *m)
{
	return (__u64)m + bpf_core_field_offset(struct mount, mnt);
}

static long resolve_step(__u32 i, void *data)
{
	struct resolve_ctx *c = data;
	struct dentry *d = (struct dentry *)c->dentry;
	struct vfsmount *vm = (struct vfsmount *)c->vfsmnt;
	if (c->dentry == c->root_dentry && c->vfsmnt == c->root_mnt) {
		c->done = 1;
		return 1;
	}
	struct dentry *mnt_root = BPF_CORE_READ(vm, mnt_root);
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	if (d == mnt_root || d == parent) {
		if (d != mnt_root) {
			/* A disconnected dentry: the path stops here. */
			c->done = 1;
			return 1;
		}
		struct mount *m = real_mount(vm);
		struct mount *pm = BPF_CORE_READ(m, mnt_parent);
		if (pm == m || !pm) {
			c->done = 1;
			return 1;
		}
		c->dentry = (__u64)BPF_CORE_READ(m, mnt_mountpoint);
		c->vfsmnt = mount_vfsmnt(pm);
		return 0;
	}
	__u32 len = BPF_CORE_READ(d, d_name.len);
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	if (len > 255 || c->pos < len + 1 + (VA_PATH_BUF - VA_PATH_MAX) + 1) {
		c->err = 1;
		return 1;
	}
	struct va_scratch *s = scratch();
	if (!s) {
		c->err = 1;
		return 1;
	}
	c->pos -= len;
	bpf_probe_read_kernel(&s->path[c->pos & (VA_PATH_BUF - 1)], len & 255, name);
	c->pos -= 1;
	s->path[c->pos & (VA_PATH_BUF - 1)] = '/';
	c->dentry = (__u64)parent;
	return 0;
}

/* Builds the path of (mnt, dentry) as the current task sees it (relative to its root, like
 * d_path) at the end of the scratch path buffer. Returns the start offset, the length in
 * *len, or -1 when the path cannot be resolved. */
static __always_inline int resolve_path(struct vfsmount *mnt, struct dentry *dentry, __u32 *len)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct resolve_ctx c = {};
	c.dentry = (__u64)dentry;
	c.vfsmnt = (__u64)mnt;
	c.root_dentry = (__u64)BPF_CORE_READ(t, fs, root.dentry);
	c.root_mnt = (__u64)BPF_CORE_READ(t, fs, root.mnt);
	c.pos = VA_PATH_BUF;
	bpf_loop(VA_MAX_DEPTH, resolve_step, &c, 0);
	if (c.err || !c.done)
		return -1;
	if (c.pos == VA_PATH_BUF) {
		struct va_scratch *s = scratch();
		if (!s)
			return -1;
		c.pos -= 1;
		s->path[c.pos & (VA_PATH_BUF - 1)] = '/';
	}
	*len = VA_PATH_BUF - c.pos;
	return c.pos;
}

/* ---- path decisions ------------------------------------------------------------------ */

/* Decides a file or exec access on the path at s->path[start..start+len) and reports it.
 * err != 0 means the path could not be resolved: denied (fail closed) unless complaining. */
static __always_inline int decide_path(struct who *w, struct va_scratch *s, __u32 type,
				       __u32 kind, __u32 requested, int err, __u32 start,
				       __u32 len)
{
	struct va_header *h = w->h;
	if (!h)
		return -EPERM;
	__u32 act = VA_ACT_NONE;
	__u32 flags = 0;
	if (h->mode == VA_MODE_COMPLAIN) {
		act = VA_ACT_COMPLAIN;
	} else if (err) {
		stat_inc(VA_STAT_PATH_ERRORS);
		act = VA_ACT_DENY_AUDIT;
		flags = VA_EVF_PATH_ERROR;
	} else {
		void *blob = bpf_map_lookup_elem(&v_blobs, &w->slot);
		__u32 v[4] = {};
		__u32 ro[VA_MAX_WALKS], rc[VA_MAX_WALKS];
		if (!blob || walk(w, blob, &h->path, 0, kind, start, len, v, ro, rc) < 0) {
			act = table_error(&flags);
		} else {
			act = verdict_action(v, requested);
		}
	}
	int ea = h->mode == VA_MODE_COMPLAIN ? VA_EVENT_ALLOWED : event_action(act);
	if (ea) {
		struct va_event *e = event_begin(s, w, type, ea, current_tgid());
		e->flags = flags;
		e->perms = requested;
		if (!err)
			event_path(s, start, len);
		send(s);
	}
	return verdict_ret(h, act);
}

/* The dentry of an opened file whose name ends the path d_path would give, and the name's
 * length; 0 when there is none: the root of a mount (a bind-mounted file, like a container's
 * /etc/hosts, is named after its source), the root itself, an unhashed (deleted) dentry
 * (" (deleted)" is appended), or a name longer than 255 bytes. */
static __always_inline __u32 leaf_name_len(struct file *file)
{
	struct dentry *d = file->f_path.dentry;
	struct vfsmount *mnt = file->f_path.mnt;
	if (!d || !mnt || d == mnt->mnt_root || d == d->d_parent || !d->d_hash.pprev)
		return 0;
	__u32 len = d->d_name.len;
	return len > 255 ? 0 : len;
}

/* Up to 6.13 a short name (at most DNAME_INLINE_LEN - 1 = 31 bytes on 64-bit) sits in the
 * dentry itself, in d_iname; 6.14 renamed it. A CO-RE flavor: where d_iname is missing, the
 * name is read with a helper. */
struct dentry___iname {
	unsigned char d_iname[32];
} __attribute__((preserve_access_index));

#define NAME_BYTE(i)                                                                           \
	case (i):                                                                              \
		*b = di->d_iname[i];                                                           \
		return 0;

/* Byte i of dentry d's name (the caller checks i < its length). An inline name is read with
 * one fixed-offset load (a branch per offset: the verifier rejects a variable offset into a
 * kernel struct), which costs less than a helper call. Returns nonzero when it cannot be
 * read. */
static __always_inline int name_byte(struct dentry *d, __u32 i, __u8 *b)
{
	const unsigned char *name = d->d_name.name;
	struct dentry___iname *di = (void *)d;
	if (bpf_core_field_exists(di->d_iname) && (__u64)name == (__u64)di->d_iname) {
		switch (i) {
			NAME_BYTE(0) NAME_BYTE(1) NAME_BYTE(2) NAME_BYTE(3) NAME_BYTE(4)
			NAME_BYTE(5) NAME_BYTE(6) NAME_BYTE(7) NAME_BYTE(8) NAME_BYTE(9)
			NAME_BYTE(10) NAME_BYTE(11) NAME_BYTE(12) NAME_BYTE(13) NAME_BYTE(14)
			NAME_BYTE(15) NAME_BYTE(16) NAME_BYTE(17) NAME_BYTE(18) NAME_BYTE(19)
			NAME_BYTE(20) NAME_BYTE(21) NAME_BYTE(22) NAME_BYTE(23) NAME_BYTE(24)
			NAME_BYTE(25) NAME_BYTE(26) NAME_BYTE(27) NAME_BYTE(28) NAME_BYTE(29)
			NAME_BYTE(30)
		}
	}
	return bpf_probe_read_kernel(b, 1, name + i);
}

/* Whether the profile has a leaf filter (it is built for enforce mode only). */
static __always_inline int leaf_filter_on(struct va_header *h)
{
	return h && h->mode == VA_MODE_ENFORCE && h->leaf.walk_count;
}

/* Bit b of a 256-bit byte bitmap (header.leaf_first, header.top_first). */
static __always_inline int byte_bit(__u64 bits[4], __u8 b)
{
	return (bits[(b >> 6) & 3] >> (b & 63)) & 1;
}

/* The leaf filter's first step (header.leaf_first): 1 when the last byte of the opened file's
 * name already kills every walk, so no file rule can match the path. The common case of a
 * profile whose file rules end in fixed names or suffixes: decided with no table lookup and no
 * scratch buffer. */
static __always_inline int leaf_first_says_no_rule(struct va_header *h, struct file *file)
{
	if (!leaf_filter_on(h))
		return 0;
	__u32 len = leaf_name_len(file);
	__u8 b;
	if (!len || name_byte(file->f_path.dentry, len - 1, &b))
		return 0;
	return !byte_bit(h->leaf_first, b);
}

/* The leaf filter (struct va_header): walks the last component of the opened file backwards,
 * then '/', through the automaton of the reversed file patterns. Returns 1 when no file rule
 * can match the path, so file_open allows without resolving it; 0 when it cannot tell. */
static __always_inline int leaf_says_no_rule(struct who *w, struct va_scratch *s,
					     struct file *file)
{
	struct va_header *h = w->h;
	if (!leaf_filter_on(h))
		return 0;
	__u32 len = leaf_name_len(file);
	if (!len)
		return 0;
	const unsigned char *name = file->f_path.dentry->d_name.name;
	/* The verifier needs the bound on the register passed (the compiler knows it already). */
	barrier_var(len);
	if (bpf_probe_read_kernel(&s->path[LEAF_AT], len & 255, name))
		return 0;
	s->path[LEAF_AT - 1] = '/';
	void *blob = bpf_map_lookup_elem(&v_blobs, &w->slot);
	if (!blob)
		return 0;
	/* The input is the name backwards, then '/': len + 1 bytes, the last at LEAF_AT - 1. */
	struct walk_ctx c = {};
	if (run_walks(&c, blob, w->slot, &h->leaf, 2, VA_KIND_FILE, LEAF_AT + len - 1, len + 1,
		      1) < 0)
		return 0;
	return all_dead(&c);
}

/* The top filter (VA_HF_TOP_FILTER for opens, kind VA_KIND_FILE; VA_HF_TOP_FILTER_EXEC for
 * execs, kind VA_KIND_EXEC) decides from the first component of the file's path, below the
 * task's root: first from its first byte (header.top_first, no table lookup), then by walking
 * "/<component>/" through the path automaton. */
static __always_inline int top_filter_on(struct va_header *h, __u32 kind)
{
	__u32 flag = kind == VA_KIND_EXEC ? VA_HF_TOP_FILTER_EXEC : VA_HF_TOP_FILTER;
	return h && h->mode == VA_MODE_ENFORCE && (h->flags & flag);
}

/* The first component of a file's path. */
struct top {
	struct dentry *d; /* its dentry when reached without crossing a mount, else 0 */
	__u64 at; /* its dentry's address */
	int single; /* the file itself is the first component (a file at the top level) */
};

/* Climbs from the file to the component of its path just below the task's root, with direct
 * loads through BTF pointers and at most one mount crossing (a mount on a top-level directory,
 * like /proc or a volume). Returns -1 when it cannot tell (deeper than VA_TOP_MAX_DEPTH, more
 * mount crossings, a disconnected or deleted dentry, a path outside the task's root). The
 * climb is done under RCU like d_path's; a concurrent rename shows the component's old or new
 * name, either of which was the path at some instant. */
static __always_inline int first_component(struct who *w, struct file *file, struct top *tc)
{
	struct task_struct *t = w->task;
	if (!t)
		return -1;
	struct dentry *root = t->fs->root.dentry;
	struct vfsmount *root_mnt = t->fs->root.mnt;
	struct dentry *d = file->f_path.dentry;
	struct vfsmount *mnt = file->f_path.mnt;
	if (!d || !mnt || !d->d_hash.pprev)
		return -1;
	struct dentry *mnt_root = mnt->mnt_root;
	struct dentry *top = 0;
	__u32 reached = 0; /* 1: the task's root; 2: the root of the file's mount */
	for (int i = 0; i < VA_TOP_MAX_DEPTH; i++) {
		if (d == root && mnt == root_mnt) {
			reached = 1;
			break;
		}
		if (d == mnt_root) {
			reached = 2;
			break;
		}
		struct dentry *p = d->d_parent;
		if (!p || p == d)
			return -1;
		top = d;
		d = p;
	}
	if (!reached || !top)
		return -1;
	if (reached == 2) {
		/* One crossing: the mount's mountpoint must sit right below the task's root (in
		 * the root's mount); it is then the first component. */
		struct mount *m = real_mount(mnt);
		struct mount *pm = BPF_CORE_READ(m, mnt_parent);
		struct dentry *mp = BPF_CORE_READ(m, mnt_mountpoint);
		struct dentry *mpp = BPF_CORE_READ(mp, d_parent);
		if (!pm || pm == m || mpp != root || mp == root ||
		    mount_vfsmnt(pm) != (__u64)root_mnt)
			return -1;
		tc->d = 0;
		tc->at = (__u64)mp;
		tc->single = 0;
		return 0;
	}
	tc->d = top;
	tc->at = (__u64)top;
	tc->single = top == file->f_path.dentry;
	return 0;
}

/* The top filter's first step: 1 when "/" and the first byte of the first component kill
 * every walk of kind (header.top_first). */
static __always_inline int top_first_says_no_rule(struct va_header *h, struct top *tc,
						  __u32 kind)
{
	__u8 b;
	if (tc->d) {
		if (name_byte(tc->d, 0, &b))
			return 0;
	} else {
		const unsigned char *name;
		if (bpf_probe_read_kernel(&name, sizeof(name),
					  &((struct dentry *)tc->at)->d_name.name) ||
		    bpf_probe_read_kernel(&b, 1, name))
			return 0;
	}
	__u32 k = kind == VA_KIND_EXEC ? 1 : 0;
	return !byte_bit(h->top_first[k], b);
}

/* The top filter's walk of "/<component>/" through the path automaton: 1 when every walk of
 * kind dies there, so no rule of that kind can match the path; 0 when it cannot tell (a file
 * at the top level has no "/<component>/"). */
static __always_inline int top_says_no_rule(struct who *w, struct va_scratch *s, struct top *tc,
					    __u32 kind)
{
	struct va_header *h = w->h;
	if (!h || tc->single)
		return 0;
	struct qstr q;
	if (bpf_probe_read_kernel(&q, sizeof(q), &((struct dentry *)tc->at)->d_name))
		return 0;
	__u32 len = q.len;
	if (len == 0 || len > 255)
		return 0;
	/* "/<component>/" at the start of the path buffer (bpf_d_path overwrites it later). */
	s->path[0] = '/';
	if (bpf_probe_read_kernel(&s->path[1], len & 255, q.name))
		return 0;
	s->path[(len + 1) & (VA_PATH_BUF - 1)] = '/';
	void *blob = bpf_map_lookup_elem(&v_blobs, &w->slot);
	if (!blob)
		return 0;
	struct walk_ctx c = {};
	if (run_walks(&c, blob, w->slot, &h->path, 0, kind, 0, len + 2, 0) < 0)
		return 0;
	return all_dead(&c);
}

/* Whether the profile can say anything about accesses of this kind (skips the path). */
static __always_inline int path_rules_for(struct va_header *h, __u32 kind)
{
	if (h->mode == VA_MODE_COMPLAIN)
		return 1;
	if (kind > 2)
		return 1;
	return h->path.walk_count && h->path.live_hi[kind] > h->path.live_lo[kind];
}

/* The current task's profile; returns 0 for tasks outside containers. A container whose slot
 * has no header is denied (fail closed): *deny is set. */
static __always_inline int current_profile(struct who *w, int *deny)
{
	struct task_struct *t = bpf_get_current_task_btf();
	*deny = 0;
	w->task = t;
	if (!lookup_ns(task_mnt_ns(t), w))
		return 0;
	if (!w->h || w->h->mode == VA_MODE_FREE) {
		stat_inc(VA_STAT_TABLE_ERRORS);
		*deny = 1;
		return 0;
	}
	return 1;
}

SEC("lsm/file_open")
int BPF_PROG(varmor_file_open, struct file *file, int ret)
{
	struct who w = {};
	int deny;
	if (ret)
		return ret;
	if (!current_profile(&w, &deny))
		return deny ? -EPERM : 0;
	__u32 fflags = file->f_flags;
	__u32 fmode = file->f_mode;
	/* Exec opens are decided in bprm_check_security; opens overlayfs makes of the real file
	 * repeat the check already made on the overlay file (same path). */
	if ((fflags & FMODE_EXEC_FLAG) || (fmode & FMODE_NOACCOUNT))
		return 0;
	if (!path_rules_for(w.h, VA_KIND_FILE) || leaf_first_says_no_rule(w.h, file))
		return 0;
	struct top tc = {};
	int top = top_filter_on(w.h, VA_KIND_FILE) && first_component(&w, file, &tc) == 0;
	if (top && top_first_says_no_rule(w.h, &tc, VA_KIND_FILE))
		return 0;
	__u32 req = 0;
	if (fmode & FMODE_READ)
		req |= VA_PERM_READ;
	if (fmode & FMODE_WRITE)
		req |= (fflags & O_APPEND) ? VA_PERM_APPEND : VA_PERM_WRITE;
	if (fflags & O_TRUNC)
		req |= VA_PERM_WRITE;
	if (fflags & O_CREAT)
		req |= VA_PERM_CREATE;
	struct va_scratch *s = scratch();
	if (!s)
		return -EPERM;
	if (leaf_says_no_rule(&w, s, file) || (top && top_says_no_rule(&w, s, &tc, VA_KIND_FILE)))
		return 0;
	long n = bpf_d_path((struct path *)&file->f_path, s->path, VA_PATH_MAX);
	int err = n <= 0 || n > VA_PATH_MAX;
	return decide_path(&w, s, VA_EV_FILE, VA_KIND_FILE, req, err, 0, err ? 0 : n - 1);
}

SEC("lsm/bprm_check_security")
int BPF_PROG(varmor_bprm_check_security, struct linux_binprm *bprm, int ret)
{
	struct who w = {};
	int deny;
	if (ret)
		return ret;
	if (!current_profile(&w, &deny))
		return deny ? -EPERM : 0;
	if (!path_rules_for(w.h, VA_KIND_EXEC))
		return 0;
	struct file *f = bprm->file;
	struct top tc = {};
	int top = top_filter_on(w.h, VA_KIND_EXEC) && first_component(&w, f, &tc) == 0;
	if (top && top_first_says_no_rule(w.h, &tc, VA_KIND_EXEC))
		return 0;
	struct va_scratch *s = scratch();
	if (!s)
		return -EPERM;
	if (top && top_says_no_rule(&w, s, &tc, VA_KIND_EXEC))
		return 0;
	long n = bpf_d_path((struct path *)&f->f_path, s->path, VA_PATH_MAX);
	int err = n <= 0 || n > VA_PATH_MAX;
	return decide_path(&w, s, VA_EV_EXEC, VA_KIND_EXEC, VA_PERM_EXEC, err, 0,
			   err ? 0 : n - 1);
}

/* Decides (mnt, dentry) with `requested`; one call per path of link/rename/symlink. */
static __always_inline int check_dentry(struct who *w, struct vfsmount *mnt,
					struct dentry *dentry, __u32 requested, __u32 kind)
{
	struct va_scratch *s = scratch();
	if (!s)
		return -EPERM;
	__u32 len = 0;
	int start = resolve_path(mnt, dentry, &len);
	int err = start < 0;
	return decide_path(w, s, VA_EV_FILE, kind, requested, err, err ? 0 : start, len);
}

#define OLD_SIDE (VA_PERM_READ | VA_PERM_WRITE | VA_PERM_APPEND | VA_PERM_EXEC)

SEC("lsm/path_symlink")
int BPF_PROG(varmor_path_symlink, const struct path *dir, struct dentry *dentry,
	     const char *old_name, int ret)
{
	struct who w = {};
	int deny;
	if (ret)
		return ret;
	if (!current_profile(&w, &deny))
		return deny ? -EPERM : 0;
	if (!path_rules_for(w.h, VA_KIND_FILE))
		return 0;
	return check_dentry(&w, BPF_CORE_READ(dir, mnt), dentry, VA_PERM_WRITE | VA_PERM_LINK,
			    VA_KIND_FILE);
}

SEC("lsm/path_link")
int BPF_PROG(varmor_path_link, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry, int ret)
{
	struct who w = {};
	int deny;
	if (ret)
		return ret;
	if (!current_profile(&w, &deny))
		return deny ? -EPERM : 0;
	if (!path_rules_for(w.h, VA_KIND_ANY))
		return 0;
	struct vfsmount *mnt = BPF_CORE_READ(new_dir, mnt);
	int r = check_dentry(&w, mnt, old_dentry, OLD_SIDE | VA_PERM_LINK, VA_KIND_ANY);
	if (r)
		return r;
	return check_dentry(&w, mnt, new_dentry, VA_PERM_WRITE | VA_PERM_LINK, VA_KIND_FILE);
}

SEC("lsm/path_rename")
int BPF_PROG(varmor_path_rename, const struct path *old_dir, struct dentry *old_dentry,
	     const struct path *new_dir, struct dentry *new_dentry, unsigned int flags, int ret)
{
	struct who w = {};
	int deny;
	if (ret)
		return ret;
	if (!current_profile(&w, &deny))
		return deny ? -EPERM : 0;
	if (!path_rules_for(w.h, VA_KIND_ANY))
		return 0;
	int r = check_dentry(&w, BPF_CORE_READ(old_dir, mnt), old_dentry,
			     OLD_SIDE | VA_PERM_RENAME, VA_KIND_ANY);
	if (r)
		return r;
	if (flags & RENAME_EXCHANGE)
		return check_dentry(&w, BPF_CORE_READ(new_dir, mnt), new_dentry,
				    OLD_SIDE | VA_PERM_RENAME, VA_KIND_ANY);
	return check_dentry(&w, BPF_CORE_READ(new_dir, mnt), new_dentry,
			    VA_PERM_WRITE | VA_PERM_RENAME, VA_KIND_FILE);
}

/* ---- capabilities -------------------------------------------------------------------- */

SEC("lsm/capable")
int BPF_PROG(varmor_capable, const struct cred *cred, struct user_namespace *ns, int cap,
	     unsigned int opts, int ret)
{
	struct who w = {};
	int deny;
	if (ret)
		return ret;
	if (!current_profile(&w, &deny))
		return deny ? -EPERM : 0;
	/* A credential the kernel put in place temporarily (overlayfs copy-up with the mounter's
	 * credentials, access(2)) is not the task's own use of a capability. */
	struct task_struct *t = bpf_get_current_task_btf();
	if ((__u64)cred != (__u64)BPF_CORE_READ(t, real_cred))
		return 0;
	if (cap < 0 || cap > 63)
		return 0;
	struct va_header *h = w.h;
	__u64 bit = 1ULL << cap;
	__u32 act = VA_ACT_NONE;
	int ea;
	if (h->mode == VA_MODE_COMPLAIN) {
		ea = VA_EVENT_ALLOWED;
	} else {
		if (h->caps[0] & bit)
			act = 0;
		else if (h->caps[1] & bit)
			act = 1;
		else if (h->caps[2] & bit)
			act = 2;
		else if (h->caps[3] & bit)
			act = 3;
		ea = event_action(act);
	}
	if (ea && !(opts & CAP_OPT_NOAUDIT)) {
		struct va_scratch *s = scratch();
		if (s) {
			struct va_event *e = event_begin(s, &w, VA_EV_CAPABILITY, ea, current_tgid());
			e->perms = cap;
			send(s);
		}
	}
	return verdict_ret(h, act);
}

/* ---- sockets ------------------------------------------------------------------------- */

struct scan_ctx {
	void *blob;
	__u64 off;
	__u32 a, b, c;
	__u32 act;
	__u32 err;
	__u32 family;
	__u32 addr[4];
	__u32 ns; /* connect: the task's mount namespace (pod-self rules read its container) */
	/* The egress index (word offsets into the blob). */
	__u64 base;
	__u64 prefixes;
	__u64 buckets;
	__u32 bmask;
	__u32 seed;
};

static __always_inline int mask_has(__u32 lo, __u32 hi, __u32 v)
{
	if (!lo && !hi)
		return 1;
	if (v < 32)
		return (lo >> v) & 1;
	if (v < 64)
		return (hi >> (v - 32)) & 1;
	return 0;
}

static long socket_step(__u32 i, void *data)
{
	struct scan_ctx *c = data;
	__u64 word = c->off + (__u64)i * VA_SOCKET_WORDS;
	struct va_words *v = blob_value(c->blob, word);
	if (!v) {
		c->err = 1;
		return 1;
	}
	__u32 at = word & 8;
	__u32 *r = &v->w[at & 8];
	if (mask_has(r[0], r[1], c->a) && mask_has(r[2], r[3], c->b) &&
	    mask_has(r[4], r[5], c->c)) {
		c->act = r[6];
		return 1;
	}
	return 0;
}

SEC("lsm/socket_create")
int BPF_PROG(varmor_socket_create, int family, int type, int protocol, int kern, int ret)
{
	struct who w = {};
	int deny;
	if (ret)
		return ret;
	if (kern)
		return 0;
	if (!current_profile(&w, &deny))
		return deny ? -EPERM : 0;
	struct va_header *h = w.h;
	__u32 t = type & 0xf;
	__u32 p = protocol;
	if ((family == AF_INET || family == AF_INET6) && p == 0) {
		if (t == 1)
			p = 6;
		else if (t == 2)
			p = 17;
	}
	__u32 act = VA_ACT_NONE;
	__u32 flags = 0;
	int ea;
	if (h->mode == VA_MODE_COMPLAIN) {
		ea = VA_EVENT_ALLOWED;
	} else {
		if (h->socket_count && (h->flags & VA_HF_SOCKET_TABLE)) {
			/* One lookup in the decision table, whatever the number of rules. */
			void *blob = bpf_map_lookup_elem(&v_blobs, &w.slot);
			__u32 d = (__u32)family < 64 ? (__u32)family : 64;
			__u32 pr = p < 64 ? p : 64;
			__u32 cell = (d * VA_SOCKET_TABLE_TYPES + t) * VA_SOCKET_TABLE_PROTOCOLS + pr;
			__u64 word = (__u64)h->socket_off + cell / 8;
			struct va_words *v = blob ? blob_value(blob, word) : 0;
			if (!v)
				act = table_error(&flags);
			else
				act = (v->w[word & 15] >> ((cell & 7) * 4)) & 0xf;
		} else if (h->socket_count) {
			struct scan_ctx c = {};
			c.blob = bpf_map_lookup_elem(&v_blobs, &w.slot);
			c.off = h->socket_off;
			c.a = family;
			c.b = t;
			c.c = p;
			c.act = VA_ACT_NONE;
			if (c.blob)
				bpf_loop(h->socket_count, socket_step, &c, 0);
			if (!c.blob || c.err) {
				c.act = table_error(&flags);
			}
			act = c.act;
		}
		ea = event_action(act);
	}
	if (ea) {
		struct va_scratch *s = scratch();
		if (s) {
			struct va_event *e = event_begin(s, &w, VA_EV_SOCKET, ea, current_tgid());
			e->flags = flags;
			e->a = family;
			e->b = t;
			e->c = p;
			send(s);
		}
	}
	return verdict_ret(h, act);
}

/* Whether the egress record r matches the connect in c. */
static __always_inline int egress_hit(struct scan_ctx *c, struct va_words *r)
{
	/* [action, kind, port_lo, port_hi, addr0..3, mask0..3] */
	if (c->b < r->w[2] || c->b > r->w[3])
		return 0;
	__u32 kind = r->w[1];
	if (kind == VA_EGRESS_ANY)
		return 1;
	if (kind == VA_EGRESS_V4)
		return c->family == 4 && (c->addr[0] & r->w[8]) == r->w[4];
	if (kind == VA_EGRESS_V6)
		return c->family == 6 && (c->addr[0] & r->w[8]) == r->w[4] &&
		       (c->addr[1] & r->w[9]) == r->w[5] && (c->addr[2] & r->w[10]) == r->w[6] &&
		       (c->addr[3] & r->w[11]) == r->w[7];
	if (kind == VA_EGRESS_POD_SELF) {
		struct va_container *ct = bpf_map_lookup_elem(&v_containers, &c->ns);
		if (!ct)
			return 0;
		if (c->family == 4)
			return (ct->flags & VA_CF_POD_V4) && ct->pod_v4 == c->addr[0];
		return (ct->flags & VA_CF_POD_V6) && ct->pod_v6[0] == c->addr[0] &&
		       ct->pod_v6[1] == c->addr[1] && ct->pod_v6[2] == c->addr[2] &&
		       ct->pod_v6[3] == c->addr[3];
	}
	return 0;
}

/* The scanned egress records, strongest first: the first hit decides among them. */
static long egress_step(__u32 i, void *data)
{
	struct scan_ctx *c = data;
	__u64 word = c->off + (__u64)i * VA_EGRESS_WORDS;
	struct va_words *r = blob_value(c->blob, word);
	if (!r) {
		c->err = 1;
		return 1;
	}
	if (egress_hit(c, r)) {
		c->act = r->w[0];
		return 1;
	}
	return 0;
}

/* One (family, prefix) of the egress index: the bucket of the masked address, whose records
 * are sorted strongest first; a hit stronger than what was found so far replaces it. */
static __always_inline long egress_prefix(struct scan_ctx *c, __u32 i)
{
	__u64 word = c->prefixes + (__u64)i * VA_EGRESS_PREFIX_WORDS;
	struct va_words *v = blob_value(c->blob, word);
	if (!v) {
		c->err = 1;
		return 1;
	}
	__u32 at = word & 8;
	if (v->w[at & 8] != c->family)
		return 0;
	__u32 h = (c->seed ^ (c->family << 8 | v->w[(at + 1) & 15])) * VA_HASH_MUL;
	h = (h ^ (c->addr[0] & v->w[(at + 2) & 15])) * VA_HASH_MUL;
	h = (h ^ (c->addr[1] & v->w[(at + 3) & 15])) * VA_HASH_MUL;
	h = (h ^ (c->addr[2] & v->w[(at + 4) & 15])) * VA_HASH_MUL;
	h = (h ^ (c->addr[3] & v->w[(at + 5) & 15])) * VA_HASH_MUL;
	h ^= h >> 15;
	word = c->buckets + (__u64)(h & c->bmask) * VA_EGRESS_BUCKET_WORDS;
	v = blob_value(c->blob, word);
	if (!v) {
		c->err = 1;
		return 1;
	}
	at = word & 14;
	__u32 off = v->w[at & 15];
	__u32 cnt = v->w[(at + 1) & 15];
#pragma unroll
	for (int k = 0; k < VA_EGRESS_BUCKET_MAX; k++) {
		if (k >= cnt)
			break;
		struct va_words *r = blob_value(c->blob, c->base + (__u64)(off + k) * VA_EGRESS_WORDS);
		if (!r) {
			c->err = 1;
			return 1;
		}
		if (egress_hit(c, r)) {
			if (r->w[0] < c->act)
				c->act = r->w[0];
			break;
		}
	}
	return 0;
}

static long egress_prefix_step(__u32 i, void *data)
{
	return egress_prefix(data, i);
}

SEC("lsm/socket_connect")
int BPF_PROG(varmor_socket_connect, struct socket *sock, struct sockaddr *address, int addrlen,
	     int ret)
{
	struct who w = {};
	int deny;
	if (ret)
		return ret;
	if (!current_profile(&w, &deny))
		return deny ? -EPERM : 0;
	struct va_header *h = w.h;
	struct scan_ctx c = {};
	/* Direct loads through the hook's BTF pointer (no helper call) for what lies inside
	 * struct sockaddr's 16 bytes (the verifier lets sa_data be read as scratch space); only
	 * an IPv6 address, beyond them, is copied with a helper. */
	__u16 fam = address->sa_family;
	struct sockaddr_in *in = (struct sockaddr_in *)address;
	if (fam == AF_INET) {
		if (addrlen < (int)sizeof(struct sockaddr_in))
			return 0;
		c.family = 4;
		c.addr[0] = bpf_ntohl(in->sin_addr.s_addr);
	} else if (fam == AF_INET6) {
		if (addrlen < (int)sizeof(struct sockaddr_in6))
			return 0;
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)address;
		__u32 a6[4];
		if (bpf_probe_read_kernel(a6, sizeof(a6), &in6->sin6_addr))
			return 0;
		__u32 w0 = bpf_ntohl(a6[0]), w1 = bpf_ntohl(a6[1]), w2 = bpf_ntohl(a6[2]),
		      w3 = bpf_ntohl(a6[3]);
		if (w0 == 0 && w1 == 0 && w2 == 0xffff) {
			c.family = 4;
			c.addr[0] = w3;
		} else {
			c.family = 6;
			c.addr[0] = w0;
			c.addr[1] = w1;
			c.addr[2] = w2;
			c.addr[3] = w3;
		}
	} else {
		return 0;
	}
	/* sin_port and sin6_port share the offset. */
	c.b = bpf_ntohs(in->sin_port);
	c.ns = w.ns;
	__u32 act = VA_ACT_NONE;
	__u32 flags = 0;
	int ea;
	if (h->mode == VA_MODE_COMPLAIN) {
		ea = VA_EVENT_ALLOWED;
	} else {
		if (h->egress_count) {
			c.blob = bpf_map_lookup_elem(&v_blobs, &w.slot);
			c.off = h->egress_off;
			c.act = VA_ACT_NONE;
			if (c.blob && h->egress_scan_count)
				bpf_loop(h->egress_scan_count, egress_step, &c, 0);
			c.base = (__u64)h->egress_off + (__u64)h->egress_scan_count * VA_EGRESS_WORDS;
			c.prefixes = h->egress_prefixes_off;
			c.buckets = h->egress_buckets_off;
			c.bmask = h->egress_bucket_mask;
			c.seed = h->egress_seed;
			/* One prefix length (the common case) is looked up without a loop. */
			if (c.blob && !c.err) {
				if (h->egress_prefix_count == 1)
					egress_prefix(&c, 0);
				else if (h->egress_prefix_count)
					bpf_loop(h->egress_prefix_count, egress_prefix_step, &c,
						 0);
			}
			if (!c.blob || c.err) {
				c.act = table_error(&flags);
			}
			act = c.act;
		}
		ea = event_action(act);
	}
	if (ea) {
		struct va_scratch *s = scratch();
		if (s) {
			struct va_event *e = event_begin(s, &w, VA_EV_CONNECT, ea, current_tgid());
			e->flags = flags;
			e->a = c.family;
			e->b = c.b;
			e->addr[0] = c.addr[0];
			e->addr[1] = c.addr[1];
			e->addr[2] = c.addr[2];
			e->addr[3] = c.addr[3];
			send(s);
		}
	}
	return verdict_ret(h, act);
}

/* ---- ptrace -------------------------------------------------------------------------- */

static __always_inline __u32 ptrace_action(struct va_header *h, __u32 perm, int external)
{
#pragma unroll
	for (int a = 0; a < 4; a++) {
		if ((h->ptrace_any[a] & perm) || (external && (h->ptrace_ext[a] & perm)))
			return a;
	}
	return VA_ACT_NONE;
}

/* One side of a ptrace check; returns -EPERM to deny. */
static __always_inline int ptrace_side(struct who *w, __u32 perm, int external, int noaudit,
				       __u32 tgid, __u32 side_flag)
{
	struct va_header *h = w->h;
	if (!h || h->mode == VA_MODE_FREE)
		return -EPERM;
	__u32 act = VA_ACT_NONE;
	int ea;
	if (h->mode == VA_MODE_COMPLAIN) {
		ea = VA_EVENT_ALLOWED;
	} else {
		act = ptrace_action(h, perm, external);
		ea = event_action(act);
	}
	if (ea && !noaudit) {
		struct va_scratch *s = scratch();
		if (s) {
			struct va_event *e = event_begin(s, w, VA_EV_PTRACE, ea, tgid);
			e->perms = perm;
			e->flags = side_flag | (external ? VA_EVF_EXTERNAL : 0);
			send(s);
		}
	}
	return verdict_ret(h, act);
}

SEC("lsm/ptrace_access_check")
int BPF_PROG(varmor_ptrace_access_check, struct task_struct *child, unsigned int mode, int ret)
{
	if (ret)
		return ret;
	struct task_struct *t = bpf_get_current_task_btf();
	__u32 me = task_mnt_ns(t);
	__u32 peer = task_mnt_ns(child);
	int external = me != peer;
	int read = mode & PTRACE_MODE_READ;
	int noaudit = mode & PTRACE_MODE_NOAUDIT;
	int result = 0;
	struct who w = {};
	if (lookup_ns(me, &w)) {
		if (ptrace_side(&w, read ? VA_PTRACE_READ : VA_PTRACE_TRACE, external, noaudit,
				current_tgid(), 0))
			result = -EPERM;
	}
	__u32 zero = 0;
	struct va_config *cfg = bpf_map_lookup_elem(&v_config, &zero);
	int host = cfg && cfg->init_mnt_ns && me == cfg->init_mnt_ns;
	struct who w2 = {};
	if (lookup_ns(peer, &w2)) {
		/* Tracers in the host's initial mount namespace are never denied on the traced
		 * side; a profile in complain mode still reports them, like every hooked operation. */
		if (host && (!w2.h || w2.h->mode != VA_MODE_COMPLAIN))
			return result;
		if (ptrace_side(&w2, read ? VA_PTRACE_READBY : VA_PTRACE_TRACEBY, external, noaudit,
				BPF_CORE_READ(child, tgid), VA_EVF_TRACED_SIDE))
			result = -EPERM;
	}
	return result;
}

/* ---- mounts -------------------------------------------------------------------------- */

struct mount_ctx {
	void *blob;
	__u64 ids_off;
	__u64 rules_off;
	__u32 is_mount;
	__u32 flags;
	__u32 best;
	__u32 err;
	__u32 k; /* current walk */
	__u32 j; /* position in its match set */
	__u32 fs[VA_FSTYPE_LEN / 4];
	__u32 none[VA_FSTYPE_LEN / 4];
};

/* One mount rule of the match sets of the walks (rows in the scratch value), per call. */
static long mount_rule_step(__u32 i, void *data)
{
	struct mount_ctx *c = data;
	struct va_scratch *s = scratch();
	if (!s) {
		c->err = 1;
		return 1;
	}
#pragma unroll
	for (int n = 0; n < VA_MAX_WALKS; n++) {
		if (c->k < VA_MAX_WALKS && c->j >= s->mrow_cnt[c->k & (VA_MAX_WALKS - 1)]) {
			c->k++;
			c->j = 0;
		}
	}
	if (c->k >= VA_MAX_WALKS)
		return 1;
	__u64 word = c->ids_off + s->mrow_off[c->k & (VA_MAX_WALKS - 1)] + c->j;
	c->j++;
	struct va_words *v = blob_value(c->blob, word);
	if (!v) {
		c->err = 1;
		return 1;
	}
	__u32 id = v->w[word & 15];
	word = c->rules_off + (__u64)id * VA_MOUNT_RULE_WORDS;
	struct va_words *r = blob_value(c->blob, word);
	if (!r) {
		c->err = 1;
		return 1;
	}
	/* [flags, reverse_flags, action, fstype_any, fstype words 0..7] */
	int flags_ok;
	__u32 *fs;
	if (c->is_mount) {
		flags_ok = (c->flags & r->w[0]) || (~c->flags & r->w[1]);
		fs = c->fs;
	} else {
		flags_ok = r->w[0] & c->flags;
		fs = c->none;
	}
	if (!flags_ok)
		return 0;
	if (!r->w[3]) {
#pragma unroll
		for (int k = 0; k < VA_FSTYPE_LEN / 4; k++)
			if (r->w[4 + k] != fs[k])
				return 0;
	}
	if (r->w[2] < c->best)
		c->best = r->w[2];
	return 0;
}

/* Decides a mount access whose source string is at s->path[start..start+len). fstype is the
 * compared filesystem type (zero padded) for mount(2); flags are its flags, or the forward
 * flag (MOVE or UMOUNT) for move_mount/umount. */
static __always_inline int decide_mount(struct who *w, struct va_scratch *s, int err,
					__u32 start, __u32 len, __u32 is_mount, __u32 flags,
					__u32 fs[VA_FSTYPE_LEN / 4])
{
	struct va_header *h = w->h;
	__u32 act = VA_ACT_NONE;
	__u32 evflags = 0;
	if (h->mode == VA_MODE_COMPLAIN) {
		act = VA_ACT_COMPLAIN;
	} else if (err) {
		stat_inc(VA_STAT_PATH_ERRORS);
		act = VA_ACT_DENY_AUDIT;
		evflags = VA_EVF_PATH_ERROR;
	} else if (h->mnt.walk_count) {
		void *blob = bpf_map_lookup_elem(&v_blobs, &w->slot);
		__u32 v[4] = {};
		__u32 ro[VA_MAX_WALKS] = {}, rc[VA_MAX_WALKS] = {};
		if (!blob || walk(w, blob, &h->mnt, 1, VA_KIND_FILE, start, len, v, ro, rc) < 0) {
			act = table_error(&evflags);
		} else {
			struct mount_ctx c = {};
			c.blob = blob;
			c.ids_off = h->mount_ids_off;
			c.rules_off = h->mount_rules_off;
			c.is_mount = is_mount;
			c.flags = flags;
			c.best = VA_ACT_NONE;
#pragma unroll
			for (int k = 0; k < VA_FSTYPE_LEN / 4; k++)
				c.fs[k] = fs[k];
			c.none[0] = 0x656e6f6e; /* "none" little-endian */
			__u32 total = 0;
#pragma unroll
			for (int k = 0; k < VA_MAX_WALKS; k++) {
				s->mrow_off[k] = ro[k];
				s->mrow_cnt[k] = rc[k];
				total += rc[k];
			}
			if (total > VA_MAX_WALKS * 65536)
				c.err = 1;
			else if (total)
				bpf_loop(total, mount_rule_step, &c, 0);
			if (c.err) {
				act = table_error(&evflags);
			} else {
				act = c.best;
			}
		}
		if (evflags)
			stat_inc(VA_STAT_TABLE_ERRORS);
	}
	int ea = h->mode == VA_MODE_COMPLAIN ? VA_EVENT_ALLOWED : event_action(act);
	if (ea) {
		struct va_event *e = event_begin(s, w, VA_EV_MOUNT, ea, current_tgid());
		e->flags = evflags;
		e->perms = flags;
		__u32 *out = (__u32 *)e->fstype;
		if (is_mount) {
#pragma unroll
			for (int k = 0; k < VA_FSTYPE_LEN / 4; k++)
				out[k] = fs[k];
		} else {
			out[0] = 0x656e6f6e;
			out[1] = 0;
		}
		if (!err)
			event_path(s, start, len);
		send(s);
	}
	return verdict_ret(h, act);
}

SEC("lsm/sb_mount")
int BPF_PROG(varmor_sb_mount, const char *dev_name, const struct path *path, const char *type,
	     unsigned long flags, void *data, int ret)
{
	struct who w = {};
	int deny;
	if (ret)
		return ret;
	if (!current_profile(&w, &deny))
		return deny ? -EPERM : 0;
	if (w.h->mode != VA_MODE_COMPLAIN && !w.h->mnt.walk_count)
		return 0;
	struct va_scratch *s = scratch();
	if (!s)
		return -EPERM;
	__u32 f = (__u32)flags;
	__u32 fs[VA_FSTYPE_LEN / 4] = {};
	if (f & NON_NEW_MOUNT) {
		fs[0] = 0x656e6f6e;
	} else if (type) {
		bpf_probe_read_kernel_str(fs, sizeof(fs), type);
	}
	long n = 0;
	int err = 0;
	if (dev_name) {
		n = bpf_probe_read_kernel_str(s->path, VA_PATH_MAX, dev_name);
		if (n <= 0 || n >= VA_PATH_MAX)
			err = 1;
		else
			n -= 1;
	}
	return decide_mount(&w, s, err, 0, err ? 0 : n, 1, f, fs);
}

SEC("lsm/move_mount")
int BPF_PROG(varmor_move_mount, const struct path *from_path, const struct path *to_path, int ret)
{
	struct who w = {};
	int deny;
	if (ret)
		return ret;
	if (!current_profile(&w, &deny))
		return deny ? -EPERM : 0;
	if (w.h->mode != VA_MODE_COMPLAIN && !w.h->mnt.walk_count)
		return 0;
	struct va_scratch *s = scratch();
	if (!s)
		return -EPERM;
	__u32 len = 0;
	int start = resolve_path(BPF_CORE_READ(from_path, mnt), BPF_CORE_READ(from_path, dentry),
				 &len);
	__u32 fs[VA_FSTYPE_LEN / 4] = {};
	int err = start < 0;
	return decide_mount(&w, s, err, err ? 0 : start, len, 0, MS_MOVE, fs);
}

SEC("lsm/sb_umount")
int BPF_PROG(varmor_sb_umount, struct vfsmount *mnt, int flags, int ret)
{
	struct who w = {};
	int deny;
	if (ret)
		return ret;
	if (!current_profile(&w, &deny))
		return deny ? -EPERM : 0;
	if (w.h->mode != VA_MODE_COMPLAIN && !w.h->mnt.walk_count)
		return 0;
	struct va_scratch *s = scratch();
	if (!s)
		return -EPERM;
	__u32 len = 0;
	int start = resolve_path(mnt, BPF_CORE_READ(mnt, mnt_root), &len);
	__u32 fs[VA_FSTYPE_LEN / 4] = {};
	int err = start < 0;
	return decide_mount(&w, s, err, err ? 0 : start, len, 0, VA_MOUNT_UMOUNT, fs);
}
