/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sockops: turns "this socket was redirected" into "this 4-tuple was going to
 * X". It decides nothing; it only moves bookkeeping.
 *
 * At BPF_SOCK_OPS_TCP_CONNECT_CB the workload's socket has its source port
 * and the SYN is not yet sent, so the entry exists before the proxy can
 * accept the connection. The key is the 4-tuple as the proxy's listener will
 * see it (struct sw_conn_key); the proxy reads and deletes it on accept.
 */
#include "common.h"
#include "maps.h"

SEC("sockops")
int sw_sockops(struct bpf_sock_ops *skops)
{
	struct sw_conn_key key = {};
	struct sw_orig_dst *od;
	__u64 cookie;

	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	od = bpf_map_lookup_elem(&pending_redirects, &cookie);
	if (!od)
		return 1;

	/*
	 * An IPv6 socket connecting to an IPv4-mapped address runs TCP over
	 * IPv4; its IPv6 source is only filled in after this callback, so read
	 * the IPv4 fields, which are set.
	 */
	if (skops->family == AF_INET ||
	    sw_ip6_is_v4mapped(skops->remote_ip6[0], skops->remote_ip6[1],
			       skops->remote_ip6[2])) {
		sw_addr_from_ip4(key.saddr, skops->local_ip4);
		sw_addr_from_ip4(key.daddr, skops->remote_ip4);
	} else {
		sw_addr_from_ip6(key.saddr, skops->local_ip6[0], skops->local_ip6[1],
				 skops->local_ip6[2], skops->local_ip6[3]);
		sw_addr_from_ip6(key.daddr, skops->remote_ip6[0], skops->remote_ip6[1],
				 skops->remote_ip6[2], skops->remote_ip6[3]);
	}
	key.sport = (__u16)skops->local_port;         /* host order */
	key.dport = (__u16)bpf_ntohl(skops->remote_port); /* network order, upper half */

	bpf_map_update_elem(&orig_dsts, &key, od, BPF_ANY);
	bpf_map_delete_elem(&pending_redirects, &cookie);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
