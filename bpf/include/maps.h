/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maps shared by every sockwarden object. Each is pinned by name under the
 * pin path userspace opens the objects with, so the objects that include
 * this header share one instance of each map, and bpftool shows them with
 * their BTF field names.
 */
#ifndef SOCKWARDEN_MAPS_H
#define SOCKWARDEN_MAPS_H

#include "abi.h"

/* cgroup id -> policy enforced on it (and on its descendants). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SW_MAX_POLICY_CGROUPS);
	__type(key, __u64);
	__type(value, struct sw_policy_ref);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_cgroups SEC(".maps");

/* (policy, port, protocol, destination prefix) -> verdict; longest prefix wins. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SW_MAX_RULE_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sw_rule_key);
	__type(value, struct sw_rule_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_rules SEC(".maps");

/*
 * listener-side 4-tuple -> original destination, from the SYN until the
 * proxy accepts (it takes the entry) or the workload closes its socket
 * (sock_release removes it). Not LRU: an entry is never evicted, and the map
 * cannot fill up (see SW_MAX_TRACKED_CONNS). Preallocated, so an insert
 * cannot fail for memory either.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SW_MAX_TRACKED_CONNS);
	__type(key, struct sw_conn_key);
	__type(value, struct sw_orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} orig_dsts SEC(".maps");

/* policy id -> open redirected sockets (state: kept across reloads). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_MAX_POLICIES);
	__type(key, __u32);
	__type(value, struct sw_policy_conns);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_conns SEC(".maps");

/* policy id -> how many redirected sockets it may have open (its max_connections). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SW_MAX_POLICIES);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_limits SEC(".maps");

/* (policy, event) -> count, per CPU. Keys are created by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, SW_MAX_POLICIES * SW_CONN_EVENTS);
	__type(key, struct sw_conn_counter_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conn_counters SEC(".maps");

/* (policy, verdict) -> connect() calls, per CPU. Keys are created by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, SW_MAX_POLICIES * SW_VERDICT_MAX);
	__type(key, struct sw_counter_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} verdict_counters SEC(".maps");

/* policy_id * SW_DOOR_EVENTS + enum sw_door_event -> count, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_MAX_POLICIES * SW_DOOR_EVENTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} door_counters SEC(".maps");

/* Per-socket role: set by connect4/6 for enforced workloads, by userspace for upstreams. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sw_sock_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_roles SEC(".maps");

/* In-use source tuples of upstream and workload sockets, with their state. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SW_MAX_TUPLES);
	__type(key, struct sw_tuple_key);
	__type(value, struct sw_tuple_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tuples SEC(".maps");

/*
 * The sockmap engine's maps (sockops.bpf.c fills and reads them; userspace
 * attaches sw_msg to sk_workloads and reports reads in sk_consumed).
 *
 * Redirected workload sockets (key: socket cookie); sw_msg runs on their sends.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, SW_MAX_LINKED_SOCKS);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sk_workloads SEC(".maps");

/*
 * The proxy's accepted sockets (key: listener-side 4-tuple). No program is
 * attached to this map: its sockets only gain a second receive queue that
 * recvmsg() reads before the TCP one.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, SW_MAX_LINKED_SOCKS);
	__type(key, struct sw_conn_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sk_proxy SEC(".maps");

/*
 * Bytes the proxy has read from each linked proxy socket, as the proxy
 * reports them (in steps; see SW_MSG_UNREAD_LIMIT). Written and deleted by
 * userspace.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SW_MAX_LINKED_SOCKS);
	__type(key, struct sw_conn_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sk_consumed SEC(".maps");

/* enum sw_msg_counter -> count, per CPU (sockmap engine). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_MSG_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} msg_counters SEC(".maps");

/*
 * Events for userspace (struct sw_event): denied connect() and sendmsg()
 * calls, redirected connections that never reached the listener.
 * Rate-limited per policy by event_buckets.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SW_EVENT_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* policy id -> its events token bucket and what it refused, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_MAX_POLICIES);
	__type(key, __u32);
	__type(value, struct sw_event_bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_buckets SEC(".maps");

#endif /* SOCKWARDEN_MAPS_H */
