/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Policy lookups shared by every program that judges a door out of a
 * policy cgroup: which policy a cgroup is under, what the rules say for a
 * (protocol, destination, port), which sockets a policy lets a process
 * create, and the door_counters.
 */
#ifndef SOCKWARDEN_POLICY_H
#define SOCKWARDEN_POLICY_H

#include "common.h"
#include "maps.h"

/*
 * One level of a cgroup's ancestry: the deepest level with a policy wins,
 * so a later (deeper) match replaces an earlier one. False once past the
 * cgroup itself (id 0).
 */
static __always_inline bool sw_classify_level(__u64 id, struct sw_policy_ref *out, bool *found)
{
	struct sw_policy_ref *ref;

	if (!id)
		return false;
	ref = bpf_map_lookup_elem(&policy_cgroups, &id);
	if (ref) {
		*out = *ref;
		*found = true;
	}
	return true;
}

/* The policy of the current task's cgroup (its own, or its closest ancestor's). */
static __always_inline bool sw_classify_task(struct sw_policy_ref *out)
{
	bool found = false;

	for (int level = 0; level < SW_MAX_CGROUP_DEPTH; level++)
		if (!sw_classify_level(bpf_get_current_ancestor_cgroup_id(level), out, &found))
			break;
	return found;
}

static __always_inline __u32 sw_rule_verdict(__u32 policy_id, __u16 proto, const __u8 addr[16],
					     __u16 port)
{
	struct sw_rule_key key = {
		.prefixlen = SW_RULE_KEY_FIXED_BITS + SW_ADDR_BITS,
		.policy_id = policy_id,
		.port = port,
		.proto = proto,
	};
	struct sw_rule_value *v;
	__u32 verdict = SW_VERDICT_DENY;

	__builtin_memcpy(key.addr, addr, 16);
	v = bpf_map_lookup_elem(&policy_rules, &key);
	if (v)
		verdict = v->verdict;
	key.port = 0; /* rules that cover every port */
	v = bpf_map_lookup_elem(&policy_rules, &key);
	if (v && v->verdict > verdict)
		verdict = v->verdict;
	if (verdict >= SW_VERDICT_MAX)
		verdict = SW_VERDICT_DENY;
	return verdict;
}

/*
 * A UDP datagram to (addr, port): allowed by a UDP rule, unless an http
 * rule governs that destination and port, where UDP would carry QUIC past
 * the HTTP rules (the client falls back to TCP, where they apply).
 */
static __always_inline enum sw_door_event sw_udp_verdict(__u32 policy_id, const __u8 addr[16],
							 __u16 port)
{
	if (sw_rule_verdict(policy_id, SW_PROTO_TCP, addr, port) == SW_VERDICT_REDIRECT)
		return SW_DOOR_UDP_QUIC;
	if (sw_rule_verdict(policy_id, SW_PROTO_UDP, addr, port) == SW_VERDICT_ALLOW)
		return SW_DOOR_UDP_ALLOWED;
	return SW_DOOR_UDP_DENIED;
}

/* Whether (family, type, protocol) is an ICMP echo socket: ping or raw ICMP. */
static __always_inline bool sw_is_icmp_socket(__u32 family, __u32 type, __u32 protocol)
{
	if (type != SOCK_DGRAM && type != SOCK_RAW)
		return false;
	return (family == AF_INET && protocol == IPPROTO_ICMP) ||
	       (family == AF_INET6 && protocol == SW_IPPROTO_ICMPV6);
}

/*
 * Whether a process of a policy (`icmp`: its icmp: true) may have an inet socket of
 * (family, type, protocol): SW_DOOR_EVENTS if so, else the refusal's event.
 * TCP (and MPTCP, whose subflows are TCP) and UDP are judged per
 * destination at connect()/sendmsg(); ICMP echo only under icmp: true;
 * nothing else.
 */
static __always_inline enum sw_door_event sw_socket_event(__u32 family, __u32 type,
							  __u32 protocol, __u32 icmp)
{
	if (type == SOCK_STREAM && (protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP_))
		return SW_DOOR_EVENTS;
	if (type == SOCK_DGRAM && protocol == IPPROTO_UDP)
		return SW_DOOR_EVENTS;
	if (sw_is_icmp_socket(family, type, protocol))
		return icmp ? SW_DOOR_EVENTS : SW_DOOR_SOCK_ICMP;
	if (type == SOCK_RAW)
		return SW_DOOR_SOCK_RAW;
	return SW_DOOR_SOCK_PROTOCOL;
}

static __always_inline void sw_door_count(__u32 policy_id, enum sw_door_event event)
{
	__u32 index = policy_id * SW_DOOR_EVENTS + event;
	__u64 *count = bpf_map_lookup_elem(&door_counters, &index);

	if (count)
		*count += 1; /* per-CPU value: no other writer */
}

#endif /* SOCKWARDEN_POLICY_H */
