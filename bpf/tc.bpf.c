/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * tc ingress: steers return traffic of transparent upstream connections.
 *
 * With upstream.source preserve-ip or preserve-ip-port, the proxy's upstream
 * sockets use the workload's address (IP_TRANSPARENT). Replies to that
 * address would be forwarded to the workload; this program marks a TCP
 * packet when a non-listening socket in this namespace owns its 4-tuple, and
 * a policy-routing rule (fwmark -> table with `local default dev lo`) delivers
 * marked packets locally, to that socket. It may decide only the mark; it
 * never drops or redirects. Attached only when a preserve mode is in use, on
 * Ethernet-like interfaces.
 */
#include "common.h"

#define TC_ACT_OK 0
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

/* Static setting, written by userspace before load. */
const volatile __u32 transparent_mark = 0;

SEC("tc")
int sw_tc_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;
	struct tcphdr *tcp;
	__u32 len;

	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP || ip->ihl < 5)
			return TC_ACT_OK;
		tcp = (void *)ip + ip->ihl * 4;
		if ((void *)(tcp + 1) > end)
			return TC_ACT_OK;
		tuple.ipv4.saddr = ip->saddr;
		tuple.ipv4.daddr = ip->daddr;
		tuple.ipv4.sport = tcp->source;
		tuple.ipv4.dport = tcp->dest;
		len = sizeof(tuple.ipv4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		/* Extension headers are not walked: such packets pass unmarked. */
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
			return TC_ACT_OK;
		tcp = (void *)(ip6 + 1);
		if ((void *)(tcp + 1) > end)
			return TC_ACT_OK;
		__builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, 16);
		tuple.ipv6.sport = tcp->source;
		tuple.ipv6.dport = tcp->dest;
		len = sizeof(tuple.ipv6);
	} else {
		return TC_ACT_OK;
	}

	sk = bpf_skc_lookup_tcp(skb, &tuple, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_OK;
	if (sk->state != BPF_TCP_LISTEN)
		skb->mark = transparent_mark;
	bpf_sk_release(sk);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
