/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sockops: bookkeeping only; it decides nothing.
 *
 * 1. Redirected connections: at BPF_SOCK_OPS_TCP_CONNECT_CB the workload's
 *    socket has its source port and the SYN is not yet sent, so the original
 *    destination moves from the socket's storage (sock_roles, written by
 *    connect4/6) to the 4-tuple the proxy's listener will see (orig_dsts),
 *    before the proxy can accept. The proxy takes (reads and deletes) it on
 *    accept; sock_release removes it if the workload closes first. The key
 *    stays in the socket's storage for that.
 *
 *    When a redirected socket is established (its handshake with the
 *    listener done) it is marked SW_SOCK_ESTABLISHED; sock_release counts
 *    a redirected socket without the mark as one that never reached the
 *    listener.
 *
 * 2. The in-use source tuple map: sockets with a role in sock_roles (enforced
 *    workloads, marked by connect4/6; the proxy's upstream sockets, marked by
 *    userspace) are entered in tuples at connect and followed through the
 *    state callback. A transition to CLOSE from FIN_WAIT1, FIN_WAIT2 or
 *    CLOSING is an active close: the tuple now sits in TIME_WAIT, so the entry
 *    stays, marked SW_TCP_TIME_WAIT with the time of the close, and userspace
 *    expires it after the TIME_WAIT period. Any other CLOSE frees the tuple.
 *
 * 3. The sockmap engine (only when userspace sets sockmap_enabled): a
 *    redirected workload socket is entered in sk_workloads when it is
 *    established, and each of the proxy's accepted sockets in sk_proxy
 *    (keyed by the listener-side 4-tuple) when it is. sw_msg, attached to
 *    sk_workloads, then moves a workload's outgoing bytes straight into the
 *    proxy socket's receive queue instead of through the TCP stack (and
 *    veth); see the comment above sw_msg for why that is always in order and
 *    bounded. Closing a socket removes it from its sockhash.
 */
#include "common.h"
#include "maps.h"

/* Static settings, written by userspace before load. */
const volatile bool sockmap_enabled = false;
const volatile __u64 proxy_netns_cookie = 0; /* the proxy's network namespace */
const volatile __u16 proxy_port4 = 0;        /* host order */
const volatile __u16 proxy_port6 = 0;        /* host order */

/* Puts enum sw_msg_counter in this object's BTF, hence in its Rust skeleton. */
const volatile enum sw_msg_counter msg_counters_len = SW_MSG_COUNTERS;

static __always_inline void sw_msg_count(__u32 counter, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&msg_counters, &counter);

	if (v)
		*v += n; /* per-CPU value: no other writer */
}

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

static __always_inline struct sw_sock_info *sw_info(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return NULL;
	return bpf_sk_storage_get(&sock_roles, sk, 0, 0);
}

static __always_inline void sw_record_redirect(struct bpf_sock_ops *skops)
{
	struct sw_sock_info *info = sw_info(skops);

	if (!info)
		return;
	/* A socket connecting again leaves no entry of its last attempt behind. */
	if (info->flags & SW_SOCK_RECORDED) {
		bpf_map_delete_elem(&orig_dsts, &info->peer);
		info->flags &= ~SW_SOCK_RECORDED;
	}
	if (!(info->flags & SW_SOCK_REDIRECTED))
		return;
	sw_sockops_tuple(skops, info->peer.saddr, info->peer.daddr, &info->peer.sport,
			 &info->peer.dport);
	/*
	 * Cannot fail for room (see SW_MAX_TRACKED_CONNS) nor memory
	 * (preallocated); if it did, the proxy would answer 421.
	 */
	if (!bpf_map_update_elem(&orig_dsts, &info->peer, &info->orig, BPF_ANY))
		info->flags |= SW_SOCK_RECORDED;
}

/* A redirected socket's handshake with the listener is done. */
static __always_inline void sw_mark_established(struct bpf_sock_ops *skops)
{
	struct sw_sock_info *info = sw_info(skops);

	if (info && (info->flags & SW_SOCK_REDIRECTED))
		info->flags |= SW_SOCK_ESTABLISHED;
}

static __always_inline enum sw_sock_role sw_role(struct bpf_sock_ops *skops)
{
	struct sw_sock_info *info = sw_info(skops);

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

/*
 * A redirected workload socket, now established: enter it in sk_workloads.
 * Its proxy socket's key in sk_proxy (the listener-side 4-tuple, this
 * socket's own with the local side first) is in peer since TCP_CONNECT_CB.
 */
static __always_inline void sw_link_workload(struct bpf_sock_ops *skops)
{
	struct sw_sock_info *info = sw_info(skops);
	__u64 cookie;

	if (!info || !(info->flags & SW_SOCK_RECORDED))
		return;
	cookie = bpf_get_socket_cookie(skops);
	if (bpf_sock_hash_update(skops, &sk_workloads, &cookie, BPF_NOEXIST))
		return;
	info->path = SW_MSG_PENDING;
	info->redirected = 0;
	sw_msg_count(SW_MSG_LINKED_WORKLOADS, 1);
}

/* One of the proxy's accepted sockets, now established: enter it in sk_proxy. */
static __always_inline void sw_link_proxy(struct bpf_sock_ops *skops)
{
	struct sw_conn_key key = {};
	__u16 port = (__u16)skops->local_port;

	if (bpf_get_netns_cookie(skops) != proxy_netns_cookie ||
	    (port != proxy_port4 && port != proxy_port6))
		return;
	/* Listener side: the workload is the remote end. */
	sw_sockops_tuple(skops, key.daddr, key.saddr, &key.dport, &key.sport);
	if (!bpf_sock_hash_update(skops, &sk_proxy, &key, BPF_ANY))
		sw_msg_count(SW_MSG_LINKED_PROXY, 1);
}

/*
 * sk_msg on every send of a linked workload socket.
 *
 * The proxy reads its socket with recvmsg(), which (tcp_bpf_recvmsg) returns
 * bytes redirected into it before bytes that came through TCP whenever both
 * queues hold some. Hence the only path changes allowed:
 *   - at the first message, to redirect, if no byte of this socket was ever
 *     queued for TCP and the proxy's socket is linked; otherwise to TCP for
 *     good (nothing TCP-borne can ever be overtaken);
 *   - from redirect to TCP, which is in order (the redirected bytes are read
 *     first). It is taken when more than SW_MSG_UNREAD_LIMIT redirected bytes
 *     may be unread (the proxy reports what it read in sk_consumed): from
 *     then on TCP's window holds the sender back, so a proxy that stops
 *     reading stops the workload instead of queueing without bound. It is
 *     also taken when the proxy's socket is gone: the connection is over,
 *     and TCP answers with a reset as it would without sockwarden.
 */
SEC("sk_msg")
int sw_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	struct sw_sock_info *info;
	struct tcp_sock *tp;
	__u64 size = msg->size, *consumed;

	if (!sk)
		return SK_PASS;
	info = bpf_sk_storage_get(&sock_roles, sk, 0, 0);
	if (!info)
		return SK_PASS;
	switch (info->path) {
	case SW_MSG_PENDING:
		tp = bpf_skc_to_tcp_sock(sk);
		if (tp && tp->bytes_sent == 0 && tp->write_seq == tp->snd_nxt &&
		    bpf_msg_redirect_hash(msg, &sk_proxy, &info->peer, BPF_F_INGRESS) == SK_PASS) {
			info->path = SW_MSG_REDIRECT;
			sw_msg_count(SW_MSG_FIRST_REDIRECT, 1);
			goto redirected;
		}
		info->path = SW_MSG_TCP;
		sw_msg_count(SW_MSG_FIRST_TCP, 1);
		goto tcp;
	case SW_MSG_REDIRECT:
		consumed = bpf_map_lookup_elem(&sk_consumed, &info->peer);
		if (info->redirected + size > (consumed ? *consumed : 0) + SW_MSG_UNREAD_LIMIT) {
			info->path = SW_MSG_TCP;
			sw_msg_count(SW_MSG_SWITCH_TCP, 1);
			goto tcp;
		}
		if (bpf_msg_redirect_hash(msg, &sk_proxy, &info->peer, BPF_F_INGRESS) != SK_PASS) {
			info->path = SW_MSG_TCP;
			sw_msg_count(SW_MSG_PEER_GONE, 1);
			goto tcp;
		}
		goto redirected;
	default:
		goto tcp;
	}
redirected:
	info->redirected += size;
	sw_msg_count(SW_MSG_REDIRECTED_MSGS, 1);
	sw_msg_count(SW_MSG_REDIRECTED_BYTES, size);
	return SK_PASS;
tcp:
	sw_msg_count(SW_MSG_TCP_MSGS, 1);
	sw_msg_count(SW_MSG_TCP_BYTES, size);
	return SK_PASS;
}

SEC("sockops")
int sw_sockops(struct bpf_sock_ops *skops)
{
	__u64 cookie;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		sw_mark_established(skops);
		if (sockmap_enabled)
			sw_link_workload(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (sockmap_enabled)
			sw_link_proxy(skops);
		break;
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		cookie = bpf_get_socket_cookie(skops);
		sw_record_redirect(skops);
		sw_track_connect(skops, cookie);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		sw_track_state(skops);
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
