/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sockops: bookkeeping only; it decides nothing.
 *
 * 1. Redirected connections: at BPF_SOCK_OPS_TCP_CONNECT_CB the workload's
 *    socket has its source port and the SYN is not yet sent, so the original
 *    destination moves from the socket cookie (pending_redirects) to the
 *    4-tuple the proxy's listener will see (orig_dsts), before the proxy can
 *    accept. The proxy reads and deletes it on accept.
 *
 * 2. The in-use source tuple map: sockets with a role in sock_roles (enforced
 *    workloads, marked by connect4/6; the proxy's upstream sockets, marked by
 *    userspace) are entered in tuples at connect and followed through the
 *    state callback. A transition to CLOSE from FIN_WAIT1, FIN_WAIT2 or
 *    CLOSING is an active close: the tuple now sits in TIME_WAIT, so the entry
 *    stays, marked SW_TCP_TIME_WAIT with the time of the close, and userspace
 *    expires it after the TIME_WAIT period. Any other CLOSE frees the tuple.
 */
#include "common.h"
#include "maps.h"

/* The socket's 4-tuple, local side as source, in the 16-byte form. */
static __always_inline void sw_sockops_tuple(struct bpf_sock_ops *skops, __u8 saddr[16],
					     __u8 daddr[16], __u16 *sport, __u16 *dport)
{
	/*
	 * Every context field is read once, unconditionally: the verifier
	 * rejects context loads through a pointer the compiler derived by
	 * merging the branches below.
	 */
	__u32 family = skops->family;
	__u32 l4 = skops->local_ip4, r4 = skops->remote_ip4;
	__u32 l0 = skops->local_ip6[0], l1 = skops->local_ip6[1];
	__u32 l2 = skops->local_ip6[2], l3 = skops->local_ip6[3];
	__u32 r0 = skops->remote_ip6[0], r1 = skops->remote_ip6[1];
	__u32 r2 = skops->remote_ip6[2], r3 = skops->remote_ip6[3];

	/*
	 * An IPv6 socket connecting to an IPv4-mapped address runs TCP over
	 * IPv4; at TCP_CONNECT_CB its IPv6 source is not filled in yet, so use
	 * the IPv4 fields, which are set.
	 */
	if (family == AF_INET || sw_ip6_is_v4mapped(r0, r1, r2)) {
		sw_addr_from_ip4(saddr, l4);
		sw_addr_from_ip4(daddr, r4);
	} else {
		sw_addr_from_ip6(saddr, l0, l1, l2, l3);
		sw_addr_from_ip6(daddr, r0, r1, r2, r3);
	}
	*sport = (__u16)skops->local_port;            /* host order */
	*dport = (__u16)bpf_ntohl(skops->remote_port); /* network order, upper half */
}

static __always_inline void sw_record_redirect(struct bpf_sock_ops *skops, __u64 cookie)
{
	struct sw_conn_key key = {};
	struct sw_orig_dst *od;

	od = bpf_map_lookup_elem(&pending_redirects, &cookie);
	if (!od)
		return;
	sw_sockops_tuple(skops, key.saddr, key.daddr, &key.sport, &key.dport);
	bpf_map_update_elem(&orig_dsts, &key, od, BPF_ANY);
	bpf_map_delete_elem(&pending_redirects, &cookie);
}

static __always_inline enum sw_sock_role sw_role(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct sw_sock_info *info;

	if (!sk)
		return SW_ROLE_NONE;
	info = bpf_sk_storage_get(&sock_roles, sk, 0, 0);
	return info ? info->role : SW_ROLE_NONE;
}

static __always_inline void sw_tuple_key(struct bpf_sock_ops *skops, struct sw_tuple_key *key)
{
	key->netns_cookie = bpf_get_netns_cookie(skops);
	sw_sockops_tuple(skops, key->saddr, key->daddr, &key->sport, &key->dport);
}

static __always_inline void sw_track_connect(struct bpf_sock_ops *skops, __u64 cookie)
{
	struct sw_tuple_key key = {};
	struct sw_tuple_value value = {};
	enum sw_sock_role role = sw_role(skops);

	if (role == SW_ROLE_NONE)
		return;
	sw_tuple_key(skops, &key);
	value.cookie = cookie;
	value.updated_ns = bpf_ktime_get_boot_ns();
	value.state = SW_TCP_SYN_SENT;
	value.role = role;
	bpf_map_update_elem(&tuples, &key, &value, BPF_ANY);
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
					 BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void sw_track_state(struct bpf_sock_ops *skops)
{
	struct sw_tuple_key key = {};
	struct sw_tuple_value *value;
	__u32 old = skops->args[0], new = skops->args[1];

	sw_tuple_key(skops, &key);
	value = bpf_map_lookup_elem(&tuples, &key);
	if (!value)
		return;
	if (new == BPF_TCP_CLOSE) {
		if (old != BPF_TCP_FIN_WAIT1 && old != BPF_TCP_FIN_WAIT2 &&
		    old != BPF_TCP_CLOSING) {
			bpf_map_delete_elem(&tuples, &key);
			return;
		}
		new = SW_TCP_TIME_WAIT;
	}
	value->state = new;
	value->updated_ns = bpf_ktime_get_boot_ns();
}

SEC("sockops")
int sw_sockops(struct bpf_sock_ops *skops)
{
	__u64 cookie;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		cookie = bpf_get_socket_cookie(skops);
		sw_record_redirect(skops, cookie);
		sw_track_connect(skops, cookie);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		sw_track_state(skops);
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
