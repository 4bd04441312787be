/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lsm/socket_create: refuses AF_PACKET sockets to processes in policy
 * cgroups. Packet sockets send frames straight to a device, past the IP
 * stack and every cgroup inet hook (connect4/6, sendmsg4/6, the egress
 * wall), so no rule could judge what they send.
 *
 * A separate object: it loads only where the BPF LSM is active (`bpf` in
 * /sys/kernel/security/lsm). Elsewhere status and a metric name the open
 * door, and enforced workloads must not hold CAP_NET_RAW.
 */
#include "common.h"
#include <bpf/bpf_tracing.h>
#include "maps.h"
#include "policy.h"

#define SW_EPERM 1

SEC("lsm/socket_create")
int BPF_PROG(sw_socket_create, int family, int type, int protocol, int kern)
{
	struct sw_policy_ref ref;

	if (kern || family != AF_PACKET)
		return 0;
	if (!sw_classify_task(&ref))
		return 0;
	sw_door_count(ref.policy_id, SW_DOOR_SOCK_PACKET);
	return -SW_EPERM;
}

char LICENSE[] SEC("license") = "GPL";
