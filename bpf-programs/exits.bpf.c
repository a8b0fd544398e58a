// SPDX-License-Identifier: Apache-2.0
/*
 * The exit tracker: remembers the mount namespace of every process that exits outside the
 * host's mount namespace, so an audit record (a Seccomp SCMP_ACT_LOG or an AppArmor record)
 * that the agent reads after its process is gone can still be attributed to the container.
 * /proc/<pid>/ns/mnt no longer exists then; the record itself carries only the PID.
 *
 * A raw tracepoint: it loads on kernels without BPF-LSM (and on this project's build host,
 * which refuses BPF trampolines), so attribution does not depend on the BPF enforcer.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

/* The host's mount namespace (set by the agent at load time): its processes are not kept. */
const volatile __u32 host_mnt_ns = 0;

/* tgid -> mount namespace inode, least recently used entries go first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} v_exited SEC(".maps");

/* sched_process_exit fires in do_exit before exit_task_namespaces: nsproxy is still there.
 * A raw tracepoint: attached by name, without tracefs. */
SEC("raw_tracepoint/sched_process_exit")
int varmor_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	__u32 ns = BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum);
	if (ns == 0 || ns == host_mnt_ns)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_update_elem(&v_exited, &tgid, &ns, BPF_ANY);
	return 0;
}
