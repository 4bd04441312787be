/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The doors out of a policy cgroup besides TCP connect():
 *   - cgroup/sendmsg4, cgroup/sendmsg6: a UDP datagram sent with a
 *     destination (sendto, sendmsg; connect() is judged by connect4/6) is
 *     allowed by a UDP rule or fails with EPERM;
 *   - cgroup/sock_create: an inet socket a policy does not allow (raw,
 *     ICMP without icmp: true, SCTP, UDP-Lite, ...) fails with EPERM;
 *   - cgroup_skb/egress, the wall: every IPv4 and IPv6 packet of a socket
 *     whose cgroup is under a policy cgroup must belong to an allowed flow
 *     (TCP from a kernel TCP socket, whose destination connect4/6 judged;
 *     UDP to a destination a UDP rule allows; ICMP echo requests under
 *     icmp: true), or it is dropped. This is what stops a raw socket with
 *     IP_HDRINCL from sending a hand-made TCP SYN.
 * All attached to the root of the cgroup2 hierarchy; processes and sockets
 * outside policy cgroups pass untouched. Every refusal and drop is counted
 * per policy in door_counters, and so is every judged UDP send; a refused
 * UDP send also sends a rate-limited event (events.h).
 */
#include "common.h"
#include "maps.h"
#include "policy.h"
#include "events.h"

/* Puts enum sw_door_event in this object's BTF, hence in its Rust skeleton. */
const volatile enum sw_door_event door_events = SW_DOOR_EVENTS;

#define SW_PASS 1
#define SW_REFUSE 0 /* EPERM for the hooks, a drop for the wall */
#define SW_ICMP_ECHO 8
#define SW_ICMPV6_ECHO_REQUEST 128

static __always_inline int sw_sendmsg(struct bpf_sock_addr *ctx, const __u8 addr[16],
				      __u16 port)
{
	struct sw_policy_ref ref;
	enum sw_door_event event;

	if (!sw_classify_task(&ref))
		return SW_PASS;
	event = sw_udp_verdict(ref.policy_id, addr, port);
	sw_door_count(ref.policy_id, event);
	if (event == SW_DOOR_UDP_ALLOWED)
		return SW_PASS;
	sw_event_emit(SW_EVENT_SENDMSG_DENIED, ref.policy_id, bpf_get_current_cgroup_id(),
		      bpf_get_netns_cookie(ctx), addr, port, SW_PROTO_UDP);
	return SW_REFUSE;
}

SEC("cgroup/sendmsg4")
int sw_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];

	sw_addr_from_ip4(addr, ctx->user_ip4);
	return sw_sendmsg(ctx, addr, bpf_ntohs((__u16)ctx->user_port));
}

SEC("cgroup/sendmsg6")
int sw_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];

	sw_addr_from_ip6(addr, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2],
			 ctx->user_ip6[3]);
	return sw_sendmsg(ctx, addr, bpf_ntohs((__u16)ctx->user_port));
}

SEC("cgroup/sock_create")
int sw_sock_create(struct bpf_sock *sk)
{
	struct sw_policy_ref ref;
	enum sw_door_event event;

	if (sk->family != AF_INET && sk->family != AF_INET6)
		return SW_PASS;
	if (!sw_classify_task(&ref))
		return SW_PASS;
	event = sw_socket_event(sk->family, sk->type, sk->protocol, ref.icmp);
	if (event == SW_DOOR_EVENTS)
		return SW_PASS;
	sw_door_count(ref.policy_id, event);
	return SW_REFUSE;
}

/* The policy of the packet's socket's cgroup (set when the socket was made). */
static __always_inline bool sw_classify_skb(struct __sk_buff *skb, struct sw_policy_ref *out)
{
	bool found = false;

	for (int level = 0; level < SW_MAX_CGROUP_DEPTH; level++)
		if (!sw_classify_level(bpf_skb_ancestor_cgroup_id(skb, level), out, &found))
			break;
	return found;
}

/* What the wall needs of a packet's network and transport headers. */
struct sw_packet {
	__u8 addr[16]; /* destination, IPv4-mapped for IPv4 */
	__u32 l4_off;  /* offset of the transport header */
	__u8 proto;    /* IPv4 protocol, or IPv6 next header */
	bool first;    /* the first (or only) fragment: the transport header is here */
};

static __always_inline bool sw_parse(struct __sk_buff *skb, struct sw_packet *p)
{
	if (skb->protocol == bpf_htons(SW_ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return false;
		sw_addr_from_ip4(p->addr, ip.daddr);
		p->l4_off = ip.ihl * 4;
		p->proto = ip.protocol;
		p->first = !(ip.frag_off & bpf_htons(0x1fff));
		return true;
	}
	if (skb->protocol == bpf_htons(SW_ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return false;
		__builtin_memcpy(p->addr, &ip6.daddr, 16);
		p->l4_off = sizeof(ip6);
		p->proto = ip6.nexthdr; /* an extension header is no allowed transport */
		p->first = true;
		return true;
	}
	return false;
}

/* SW_DOOR_EVENTS if a UDP socket's packet goes where a UDP rule allows. */
static __always_inline enum sw_door_event sw_wall_udp(struct __sk_buff *skb,
						      const struct sw_packet *p, __u32 policy_id)
{
	__be16 ports[2];

	if (p->proto != IPPROTO_UDP)
		return SW_DOOR_DROP_FORGED;
	if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)))
		return SW_DOOR_DROP_UDP;
	if (sw_udp_verdict(policy_id, p->addr, bpf_ntohs(ports[1])) != SW_DOOR_UDP_ALLOWED)
		return SW_DOOR_DROP_UDP;
	return SW_DOOR_EVENTS;
}

/* SW_DOOR_EVENTS if an ICMP socket's packet is an allowed echo request. */
static __always_inline enum sw_door_event sw_wall_icmp(struct __sk_buff *skb,
						       const struct sw_packet *p,
						       const struct bpf_sock *sk, __u32 icmp)
{
	__u8 want = sk->family == AF_INET ? IPPROTO_ICMP : SW_IPPROTO_ICMPV6;
	__u8 echo = sk->family == AF_INET ? SW_ICMP_ECHO : SW_ICMPV6_ECHO_REQUEST;
	__u8 type;

	if (p->proto != want)
		return SW_DOOR_DROP_FORGED;
	if (!icmp || !p->first)
		return SW_DOOR_DROP_ICMP;
	if (bpf_skb_load_bytes(skb, p->l4_off, &type, 1) || type != echo)
		return SW_DOOR_DROP_ICMP;
	return SW_DOOR_EVENTS;
}

/*
 * SW_DOOR_EVENTS if the packet of a policy cgroup's socket that is not a
 * TCP socket belongs to an allowed flow, else why not.
 */
static __always_inline enum sw_door_event sw_wall(struct __sk_buff *skb, const struct bpf_sock *sk,
						  const struct sw_policy_ref *ref)
{
	struct sw_packet p = {};

	if (!sw_parse(skb, &p))
		return SW_DOOR_DROP_PROTOCOL;
	if (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP)
		return sw_wall_udp(skb, &p, ref->policy_id);
	if (sw_is_icmp_socket(sk->family, sk->type, sk->protocol))
		return sw_wall_icmp(skb, &p, sk, ref->icmp);
	if (sk->type == SOCK_RAW)
		return SW_DOOR_DROP_FORGED;
	return SW_DOOR_DROP_PROTOCOL;
}

SEC("cgroup_skb/egress")
int sw_egress(struct __sk_buff *skb)
{
	struct sw_policy_ref ref;
	enum sw_door_event event;
	struct bpf_sock *sk = skb->sk;

	if (!sk)
		return SW_PASS;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return SW_PASS; /* request and time-wait sockets: the kernel's own replies */
	/*
	 * The kernel's TCP builds these packets and connect4/6 judged the peer:
	 * they pass whatever the policy, so they are not classified at all (the
	 * node's bulk traffic pays no cgroup walk).
	 */
	if (sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP)
		return SW_PASS;
	if (!sw_classify_skb(skb, &ref))
		return SW_PASS;
	event = sw_wall(skb, sk, &ref);
	if (event == SW_DOOR_EVENTS)
		return SW_PASS;
	sw_door_count(ref.policy_id, event);
	return SW_REFUSE;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
