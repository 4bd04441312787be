/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * cgroup/sock_release: bookkeeping only; it decides nothing.
 *
 * Attached to the root of the cgroup2 hierarchy, it runs when any inet
 * socket on the node is released (its last file reference closed). For a
 * socket that connect4/6 redirected it undoes what the redirect took:
 *   - the orig_dsts entry, if the proxy never accepted the connection (the
 *     proxy takes its entry on accept), counted as SW_CONN_UNACCEPTED;
 *   - the socket's slot in its policy's count (policy_conns).
 * A redirected socket whose handshake with the listener never completed
 * (sockops sets SW_SOCK_ESTABLISHED when it does) never reached the proxy:
 * counted as SW_CONN_UNREACHED, with a rate-limited event that carries
 * its network namespace (a loopback proxy.listen is unreachable from
 * other namespaces).
 * So no entry outlives its socket, and each counted socket gives its slot
 * back exactly once: sockets are released once, and the flags that say
 * what to undo live in the socket's own storage.
 */
#include "common.h"
#include "maps.h"
#include "conns.h"
#include "events.h"

SEC("cgroup/sock_release")
int sw_sock_release(struct bpf_sock *sk)
{
	struct sw_sock_info *info = bpf_sk_storage_get(&sock_roles, sk, 0, 0);

	if (!info)
		return 1;
	if ((info->flags & SW_SOCK_RECORDED) && !bpf_map_delete_elem(&orig_dsts, &info->peer))
		sw_conn_count(info->orig.policy_id, SW_CONN_UNACCEPTED);
	if (info->flags & SW_SOCK_COUNTED)
		sw_uncharge(info->orig.policy_id);
	if ((info->flags & SW_SOCK_REDIRECTED) && !(info->flags & SW_SOCK_ESTABLISHED)) {
		sw_conn_count(info->orig.policy_id, SW_CONN_UNREACHED);
		sw_event_emit(SW_EVENT_UNREACHED, info->orig.policy_id, info->orig.cgroup_id,
			      info->orig.netns_cookie, info->orig.addr, info->orig.port,
			      SW_PROTO_TCP);
	}
	info->flags &= ~(SW_SOCK_RECORDED | SW_SOCK_COUNTED | SW_SOCK_REDIRECTED);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
