// SPDX-License-Identifier: Apache-2.0
/*
 * The kernel capability probe, and the "empty" programs the benchmark uses as its floor.
 *
 * varmor_probe uses what the enforcer needs beyond an LSM attachment (bpf_loop, a ring
 * buffer, BTF-typed task access); loading and attaching it proves the kernel runs them.
 * The varmor_empty_* programs return at once: attached, they show the fixed cost of a BPF-LSM
 * program on a hook.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} probe_config SEC(".maps");

static long probe_step(__u32 i, void *data)
{
	*(__u32 *)data += i;
	return 0;
}

SEC("lsm/file_open")
int BPF_PROG(varmor_probe, struct file *file, int ret)
{
	__u32 zero = 0, sum = 0;
	if (ret)
		return ret;
	__u32 *on = bpf_map_lookup_elem(&probe_config, &zero);
	if (!on || !*on)
		return 0;
	bpf_loop(4, probe_step, &sum, 0);
	struct task_struct *t = bpf_get_current_task_btf();
	__u32 ns = BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum) + sum;
	bpf_ringbuf_output(&probe_events, &ns, sizeof(ns), 0);
	return 0;
}

SEC("lsm/file_open")
int BPF_PROG(varmor_empty_file_open, struct file *file, int ret)
{
	return ret;
}

SEC("lsm/bprm_check_security")
int BPF_PROG(varmor_empty_bprm_check_security, struct linux_binprm *bprm, int ret)
{
	return ret;
}

SEC("lsm/socket_connect")
int BPF_PROG(varmor_empty_socket_connect, struct socket *sock, struct sockaddr *address,
	     int addrlen, int ret)
{
	return ret;
}
