/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Events for userspace through the events ring buffer, rate-limited per
 * policy and CPU by a token bucket (event_buckets): SW_EVENT_BURST events
 * at once, then SW_EVENT_RATE per second. An event the bucket or a full
 * ring refuses is counted in the bucket, so userspace can say how many it
 * never saw.
 */
#ifndef SOCKWARDEN_EVENTS_H
#define SOCKWARDEN_EVENTS_H

#include "common.h"
#include "maps.h"

#define SW_EVENT_COST_NS (1000000000ULL / SW_EVENT_RATE)
#define SW_EVENT_BURST_NS (SW_EVENT_BURST * SW_EVENT_COST_NS)

/*
 * Sends one event of policy `policy_id` unless its bucket on this CPU is
 * empty or the ring is full (each counted). `addr` is the destination in
 * the 16-byte form; the task is the current one. The bucket is per CPU
 * and its programs run with migration disabled: no other writer.
 */
static __always_inline void sw_event_emit(enum sw_event_kind kind, __u32 policy_id,
					  __u64 cgroup_id, __u64 netns_cookie,
					  const __u8 addr[16], __u16 port, __u16 proto)
{
	struct sw_event_bucket *b = bpf_map_lookup_elem(&event_buckets, &policy_id);
	__u64 now = bpf_ktime_get_ns(), credit;
	struct sw_event *e;

	if (!b)
		return;
	/* A bucket never used has last_ns 0: it starts full. */
	credit = b->credit_ns + (now - b->last_ns);
	if (credit > SW_EVENT_BURST_NS)
		credit = SW_EVENT_BURST_NS;
	b->last_ns = now;
	b->credit_ns = credit;
	if (credit < SW_EVENT_COST_NS) {
		b->dropped_rate += 1;
		return;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		b->dropped_full += 1;
		return;
	}
	b->credit_ns = credit - SW_EVENT_COST_NS;
	e->cgroup_id = cgroup_id;
	e->netns_cookie = netns_cookie;
	e->kind = kind;
	e->policy_id = policy_id;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->port = port;
	e->proto = proto;
	__builtin_memcpy(e->addr, addr, 16);
	if (bpf_get_current_comm(e->comm, sizeof(e->comm)))
		__builtin_memset(e->comm, 0, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

#endif /* SOCKWARDEN_EVENTS_H */
