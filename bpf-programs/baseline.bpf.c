// SPDX-License-Identifier: Apache-2.0
/*
 * The benchmark's baseline (not used by the agent): rules matched one by one, each by a fixed
 * prefix and suffix of the path, as vArmor matches its file and exec rules, and egress rules
 * scanned one by one. Its cost grows with the number of rules; the enforcer's automaton walk
 * does not. Written for nodeagent/benches/bpf_kernel.rs, which fills the maps.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define B_MAX_RULES 1024
#define B_AFFIX 64
#define B_PATH 4096
#define EPERM 1
#define AF_INET 2
#define FMODE_READ 0x1
#define FMODE_WRITE 0x2

/* A path rule: the path must start with prefix[0..plen) and end with suffix[0..slen). */
struct b_rule {
	__u8 prefix[B_AFFIX];
	__u8 suffix[B_AFFIX];
	__u32 plen;
	__u32 slen;
	__u32 perms;
	__u32 pad;
};

/* An egress rule: (address & mask) == addr and the port (0: any). */
struct b_net_rule {
	__u32 addr;
	__u32 mask;
	__u32 port;
	__u32 pad;
};

/* [0] file rules, [1] exec rules, [2] egress rules in use. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u32);
} b_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, B_MAX_RULES);
	__type(key, __u32);
	__type(value, struct b_rule);
} b_file_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, B_MAX_RULES);
	__type(key, __u32);
	__type(value, struct b_rule);
} b_exec_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, B_MAX_RULES);
	__type(key, __u32);
	__type(value, struct b_net_rule);
} b_net_rules SEC(".maps");

/* Confined mount namespaces. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} b_containers SEC(".maps");

struct b_scratch {
	char path[B_PATH];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct b_scratch);
} b_scratch SEC(".maps");

static __always_inline int confined(void)
{
	struct task_struct *t = bpf_get_current_task_btf();
	__u32 ns = BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum);
	return bpf_map_lookup_elem(&b_containers, &ns) != 0;
}

struct scan {
	__u32 which; /* 0: file rules, 1: exec rules */
	__u32 len;
	__u32 requested;
	__u32 hit;
};

static long path_rule_step(__u32 i, void *data)
{
	struct scan *c = data;
	__u32 zero = 0;
	struct b_rule *r = c->which ? bpf_map_lookup_elem(&b_exec_rules, &i)
				    : bpf_map_lookup_elem(&b_file_rules, &i);
	struct b_scratch *s = bpf_map_lookup_elem(&b_scratch, &zero);
	if (!r || !s)
		return 1;
	if (!(r->perms & c->requested) || r->plen > c->len || r->slen > c->len)
		return 0;
	for (int j = 0; j < B_AFFIX; j++) {
		if (j >= r->plen)
			break;
		if (s->path[j & (B_PATH - 1)] != r->prefix[j])
			return 0;
	}
	__u32 base = c->len - r->slen;
	for (int j = 0; j < B_AFFIX; j++) {
		if (j >= r->slen)
			break;
		if (s->path[(base + j) & (B_PATH - 1)] != r->suffix[j])
			return 0;
	}
	c->hit = 1;
	return 1;
}

static __always_inline int check_path(const struct path *p, __u32 which, __u32 requested)
{
	__u32 zero = 0;
	__u32 *count = bpf_map_lookup_elem(&b_counts, &which);
	struct b_scratch *s = bpf_map_lookup_elem(&b_scratch, &zero);
	if (!count || !s)
		return 0;
	long n = bpf_d_path((struct path *)p, s->path, B_PATH);
	if (n <= 0)
		return -EPERM;
	struct scan c = { .which = which, .len = n - 1, .requested = requested };
	bpf_loop(*count, path_rule_step, &c, 0);
	return c.hit ? -EPERM : 0;
}

SEC("lsm/file_open")
int BPF_PROG(varmor_baseline_file_open, struct file *file, int ret)
{
	if (ret || !confined())
		return ret;
	__u32 req = 0;
	if (file->f_mode & FMODE_READ)
		req |= 4;
	if (file->f_mode & FMODE_WRITE)
		req |= 2;
	return check_path(&file->f_path, 0, req);
}

SEC("lsm/bprm_check_security")
int BPF_PROG(varmor_baseline_bprm_check_security, struct linux_binprm *bprm, int ret)
{
	if (ret || !confined())
		return ret;
	return check_path(&bprm->file->f_path, 1, 1);
}

struct net_scan {
	__u32 addr;
	__u32 port;
	__u32 hit;
};

static long net_rule_step(__u32 i, void *data)
{
	struct net_scan *c = data;
	struct b_net_rule *r = bpf_map_lookup_elem(&b_net_rules, &i);
	if (!r)
		return 1;
	if ((c->addr & r->mask) == r->addr && (!r->port || r->port == c->port)) {
		c->hit = 1;
		return 1;
	}
	return 0;
}

SEC("lsm/socket_connect")
int BPF_PROG(varmor_baseline_socket_connect, struct socket *sock, struct sockaddr *address,
	     int addrlen, int ret)
{
	if (ret || !confined())
		return ret;
	__u32 two = 2;
	__u32 *count = bpf_map_lookup_elem(&b_counts, &two);
	if (!count || BPF_CORE_READ(address, sa_family) != AF_INET)
		return 0;
	struct sockaddr_in *in = (struct sockaddr_in *)address;
	struct net_scan c = {
		.addr = bpf_ntohl(BPF_CORE_READ(in, sin_addr.s_addr)),
		.port = bpf_ntohs(BPF_CORE_READ(in, sin_port)),
	};
	bpf_loop(*count, net_rule_step, &c, 0);
	return c.hit ? -EPERM : 0;
}
