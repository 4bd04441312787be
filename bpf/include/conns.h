/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The per-policy count of open redirected sockets, shared by connect4/6
 * (which charge it) and sock_release (which gives it back), and the
 * conn_counters events.
 */
#ifndef SOCKWARDEN_CONNS_H
#define SOCKWARDEN_CONNS_H

#include "common.h"
#include "maps.h"

static __always_inline void sw_conn_count(__u32 policy_id, enum sw_conn_event event)
{
	struct sw_conn_counter_key key = { .policy_id = policy_id, .event = event };
	__u64 *count = bpf_map_lookup_elem(&conn_counters, &key);

	if (count)
		*count += 1; /* per-CPU value: no other writer */
}

/*
 * Takes one of the policy's slots; false if none is free. The add comes
 * first and is taken back if it passed the limit, so two connects racing
 * for the last slot can both lose but never both win: whoever is admitted
 * saw its own add and every earlier one. Atomic adds without fetch are
 * BPF_XADD, which every kernel and -mcpu level has.
 */
static __always_inline bool sw_charge(__u32 policy_id)
{
	struct sw_policy_conns *c = bpf_map_lookup_elem(&policy_conns, &policy_id);
	__u64 *limit = bpf_map_lookup_elem(&policy_limits, &policy_id);

	if (!c || !limit)
		return false;
	__sync_fetch_and_add(&c->in_flight, 1);
	if (*(volatile __u64 *)&c->in_flight > *limit) {
		__sync_fetch_and_add(&c->in_flight, -1);
		return false;
	}
	return true;
}

static __always_inline void sw_uncharge(__u32 policy_id)
{
	struct sw_policy_conns *c = bpf_map_lookup_elem(&policy_conns, &policy_id);

	if (c)
		__sync_fetch_and_add(&c->in_flight, -1);
}

#endif /* SOCKWARDEN_CONNS_H */
