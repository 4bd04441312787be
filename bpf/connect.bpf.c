/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * cgroup/connect4 and cgroup/connect6: the enforcement point.
 *
 * Attached to the root of the cgroup2 hierarchy, these run on every
 * connect() on the node. For TCP they may decide exactly four things, for
 * sockets of processes in a policy cgroup (or its descendants) only:
 *   - redirect: rewrite the destination to the proxy listener and remember
 *     the original destination in the socket's own storage (sock_roles),
 *     where no other socket can evict it; the socket takes one of its
 *     policy's slots (policy_conns) until it is released;
 *   - refuse: fail a connect() that would be redirected with ECONNREFUSED
 *     when the policy has no free slot (or the socket no storage), counted
 *     in conn_counters;
 *   - allow: leave the connect() alone (an L4-only rule covers it);
 *   - deny: fail the connect() with EPERM (no rule covers it); under a
 *     policy in mode: audit, let it through as an L4 allow would be,
 *     counted as SW_VERDICT_WOULD_DENY and reported (an event).
 * Sockets it lets through are marked in sock_roles so that sockops keeps
 * their 4-tuples in the tuples map. Every allow, redirect and deny is
 * counted in verdict_counters.
 * A UDP connect() is allowed by a UDP rule (sw_udp_verdict) or fails with
 * EPERM; an ICMP echo socket's connect() passes under icmp: true; any other
 * socket of a policy cgroup fails with EPERM (sock_create refuses to make
 * them; this catches one made elsewhere and passed in). These are counted
 * in door_counters. Each EPERM for a TCP or UDP destination sends a
 * rate-limited event (events.h). Processes outside policy cgroups pass
 * untouched.
 */
#include "common.h"
#include "maps.h"
#include "conns.h"
#include "policy.h"
#include "events.h"

/* Static settings, written by userspace before load. */
const volatile __u32 proxy_ip4 = 0;      /* network order */
const volatile __u16 proxy_port4 = 0;    /* host order */
const volatile __u32 proxy_ip6[4] = {};  /* network order; IPv4-mapped if no IPv6 listener */
const volatile __u16 proxy_port6 = 0;    /* host order */

/*
 * Put abi.h's enums that no map or program names in this object's BTF, hence
 * in its Rust skeleton (bpf::abi): the limits, the rule key's transports and
 * prefix bits, the sizes of the byte-viewed types. Never read.
 */
const volatile enum sw_limit abi_limits = SW_MAX_POLICIES;
const volatile enum sw_rule_proto rule_key_protos = SW_PROTO_TCP;
const volatile enum sw_rule_bits rule_key_bits = SW_RULE_KEY_FIXED_BITS;
const volatile enum sw_abi_size abi_sizes = SW_SIZEOF_POLICY_REF;
const volatile struct sw_event event_layout = {}; /* the events ring buffer's records */

#define SW_CONNECT_PASS 1
#define SW_CONNECT_FAIL 0 /* EPERM, unless bpf_set_retval() chose another errno */
#define SW_ECONNREFUSED 111

static __always_inline void sw_count(__u32 policy_id, __u32 verdict)
{
	struct sw_counter_key key = { .policy_id = policy_id, .verdict = verdict };
	__u64 *count = bpf_map_lookup_elem(&verdict_counters, &key);

	if (count)
		*count += 1; /* per-CPU value: no other writer */
}

static __always_inline struct sw_sock_info *sw_storage(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return NULL;
	return bpf_sk_storage_get(&sock_roles, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
}

static __always_inline bool sw_is_tcp(struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_STREAM &&
	       (ctx->protocol == IPPROTO_TCP || ctx->protocol == IPPROTO_MPTCP_);
}

/*
 * A redirect: charges the socket to its policy (once, however often it
 * connects) and keeps the original destination in its storage until sockops
 * moves it to orig_dsts. Returns the conn_counters event that refuses it,
 * or SW_CONN_EVENTS if it may go ahead.
 */
static __always_inline enum sw_conn_event sw_redirect(struct bpf_sock_addr *ctx,
						      struct sw_sock_info *info,
						      const __u8 addr[16], __u16 port,
						      __u16 family, __u32 policy_id)
{
	if (!info)
		return SW_CONN_REFUSED_STORAGE;
	/* A socket that reconnects under another policy moves its charge. */
	if ((info->flags & SW_SOCK_COUNTED) && info->orig.policy_id != policy_id) {
		sw_uncharge(info->orig.policy_id);
		info->flags &= ~SW_SOCK_COUNTED;
	}
	if (!(info->flags & SW_SOCK_COUNTED)) {
		if (!sw_charge(policy_id))
			return SW_CONN_REFUSED_LIMIT;
		info->flags |= SW_SOCK_COUNTED;
	}
	__builtin_memcpy(info->orig.addr, addr, 16);
	info->orig.port = port;
	info->orig.family = family;
	info->orig.policy_id = policy_id;
	info->orig.cgroup_id = bpf_get_current_cgroup_id();
	info->orig.netns_cookie = bpf_get_netns_cookie(ctx);
	info->flags |= SW_SOCK_REDIRECTED;
	info->flags &= ~SW_SOCK_ESTABLISHED;
	return SW_CONN_EVENTS;
}

/*
 * A connect() of a socket that is not TCP, from a policy cgroup: UDP by
 * rule, ICMP echo sockets by the policy's icmp flag, nothing else.
 */
static __always_inline int sw_other_connect(struct bpf_sock_addr *ctx,
					    const struct sw_policy_ref *ref, const __u8 addr[16],
					    __u16 port)
{
	enum sw_door_event event;

	if (ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP) {
		event = sw_udp_verdict(ref->policy_id, addr, port);
		sw_door_count(ref->policy_id, event);
		if (event == SW_DOOR_UDP_ALLOWED)
			return SW_CONNECT_PASS;
		sw_event_emit(SW_EVENT_CONNECT_DENIED, ref->policy_id, bpf_get_current_cgroup_id(),
			      bpf_get_netns_cookie(ctx), addr, port, SW_PROTO_UDP);
		return SW_CONNECT_FAIL;
	}
	event = sw_socket_event(ctx->family, ctx->type, ctx->protocol, ref->icmp);
	if (event == SW_DOOR_EVENTS)
		return SW_CONNECT_PASS;
	sw_door_count(ref->policy_id, event);
	return SW_CONNECT_FAIL;
}

/*
 * Decides for one connect() and returns the hook's return value. On
 * redirect, records the original destination and sets *redirect: the caller
 * rewrites the address for its family.
 */
static __always_inline int sw_decide(struct bpf_sock_addr *ctx, const __u8 addr[16],
				     __u16 port, __u16 family, bool *redirect)
{
	struct sw_policy_ref ref = {};
	__u32 policy_id, verdict;
	struct sw_sock_info *info;
	enum sw_conn_event refused;

	*redirect = false;
	if (!sw_classify_task(&ref))
		return SW_CONNECT_PASS;
	policy_id = ref.policy_id;
	if (!sw_is_tcp(ctx))
		return sw_other_connect(ctx, &ref, addr, port);

	verdict = sw_rule_verdict(policy_id, SW_PROTO_TCP, addr, port);
	if (verdict == SW_VERDICT_DENY) {
		sw_event_emit(ref.audit ? SW_EVENT_CONNECT_WOULD_DENY : SW_EVENT_CONNECT_DENIED,
			      policy_id, bpf_get_current_cgroup_id(), bpf_get_netns_cookie(ctx),
			      addr, port, SW_PROTO_TCP);
		if (!ref.audit) {
			sw_count(policy_id, verdict);
			return SW_CONNECT_FAIL;
		}
		/* mode: audit: through, as an L4 allow would be, and counted apart. */
		verdict = SW_VERDICT_WOULD_DENY;
	}
	/*
	 * Enforced sockets are marked so sockops records their tuples (and, if
	 * redirected, may link them for the sockmap engine).
	 */
	info = sw_storage(ctx);
	if (verdict == SW_VERDICT_REDIRECT) {
		refused = sw_redirect(ctx, info, addr, port, family, policy_id);
		if (refused != SW_CONN_EVENTS) {
			/* Fail closed, and say why: the policy is full, not denied. */
			sw_conn_count(policy_id, refused);
			bpf_set_retval(-SW_ECONNREFUSED);
			return SW_CONNECT_FAIL;
		}
		*redirect = true;
	} else if (info) {
		info->flags &= ~SW_SOCK_REDIRECTED;
	}
	if (info)
		info->role = SW_ROLE_WORKLOAD;
	sw_count(policy_id, verdict);
	return SW_CONNECT_PASS;
}

SEC("cgroup/connect4")
int sw_connect4(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];
	bool redirect;
	int ret;

	sw_addr_from_ip4(addr, ctx->user_ip4);
	ret = sw_decide(ctx, addr, bpf_ntohs((__u16)ctx->user_port), AF_INET, &redirect);
	if (redirect) {
		ctx->user_ip4 = proxy_ip4;
		ctx->user_port = bpf_htons(proxy_port4);
	}
	return ret;
}

SEC("cgroup/connect6")
int sw_connect6(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];
	bool redirect;
	int ret;

	sw_addr_from_ip6(addr, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2],
			 ctx->user_ip6[3]);
	ret = sw_decide(ctx, addr, bpf_ntohs((__u16)ctx->user_port), AF_INET6, &redirect);
	if (redirect) {
		ctx->user_ip6[0] = proxy_ip6[0];
		ctx->user_ip6[1] = proxy_ip6[1];
		ctx->user_ip6[2] = proxy_ip6[2];
		ctx->user_ip6[3] = proxy_ip6[3];
		ctx->user_port = bpf_htons(proxy_port6);
	}
	return ret;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
