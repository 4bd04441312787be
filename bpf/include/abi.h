/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The one ABI between sockwarden's eBPF programs and its Rust userspace.
 *
 * Every map key, map value and enum that both sides read is defined here and
 * nowhere else. Rust sees these types through the skeletons that build.rs
 * generates from the objects' BTF (module `bpf::abi`), never through a
 * hand-written twin. Sizes are pinned with _Static_assert so that a change in
 * layout fails the build instead of corrupting a map.
 *
 * Addresses are always 16 bytes in network order: IPv4 is stored
 * IPv4-mapped (::ffff:a.b.c.d), so one key shape serves both families.
 * Ports are host order unless a field says otherwise.
 */
#ifndef SOCKWARDEN_ABI_H
#define SOCKWARDEN_ABI_H

/*
 * Upper bounds shared by both sides: the maps' sizes, and what userspace
 * validates against them before it loads anything. An enum, not #defines,
 * so that they reach BTF and hence the skeletons (bpf::abi::sw_limit).
 */
enum sw_limit {
	SW_MAX_POLICIES = 256,        /* policy ids are 0..SW_MAX_POLICIES-1 */
	SW_MAX_CGROUP_DEPTH = 32,     /* deepest cgroup level classified */
	SW_MAX_POLICY_CGROUPS = 1024, /* entries in policy_cgroups */
	/*
	 * Entries in policy_rules. Userspace counts the entries it would write
	 * and refuses a configuration that needs more (config validation).
	 */
	SW_MAX_RULE_PREFIXES = 65536,
	SW_MAX_TUPLES = 262144,       /* tuples */
	SW_MAX_LINKED_SOCKS = 65536,  /* sk_workloads, sk_proxy, sk_consumed */
	/*
	 * orig_dsts entries. The policies' max_connections add up to at most
	 * this (userspace validates it), and every entry belongs to a counted
	 * socket that is still open, so the map can never be full.
	 */
	SW_MAX_TRACKED_CONNS = 65536,
	/*
	 * Redirected bytes the proxy may leave unread before a socket turns
	 * to TCP (sockmap engine); the proxy reports what it read well within
	 * it.
	 */
	SW_MSG_UNREAD_LIMIT = 256 * 1024,
	/*
	 * The rate limit on events (the events ring buffer), per policy and
	 * per CPU: a token bucket of SW_EVENT_BURST events, refilled at
	 * SW_EVENT_RATE per second (event_buckets). What it refuses is
	 * counted there, never lost silently.
	 */
	SW_EVENT_BURST = 20,
	SW_EVENT_RATE = 10,
	SW_EVENT_RING_BYTES = 256 * 1024, /* events: about 3,600 (64 bytes + an 8-byte header each) */
};

/* What connect() does for a (policy, destination, port). Absence = deny. */
enum sw_verdict {
	SW_VERDICT_DENY = 0,     /* refused with EPERM (never stored: absence) */
	SW_VERDICT_ALLOW = 1,    /* allowed at L4, not redirected */
	SW_VERDICT_REDIRECT = 2, /* allowed if HTTP rules pass: sent to the proxy */
	SW_VERDICT_WOULD_DENY = 3, /* counted only: no rule allows it, let through by mode: audit */
	SW_VERDICT_MAX = 4,
};

/* TCP states as the tuple map records them (the kernel's BPF_TCP_* values). */
enum sw_tcp_state {
	SW_TCP_ESTABLISHED = 1,
	SW_TCP_SYN_SENT = 2,
	SW_TCP_SYN_RECV = 3,
	SW_TCP_FIN_WAIT1 = 4,
	SW_TCP_FIN_WAIT2 = 5,
	SW_TCP_TIME_WAIT = 6,
	SW_TCP_CLOSE = 7,
	SW_TCP_CLOSE_WAIT = 8,
	SW_TCP_LAST_ACK = 9,
	SW_TCP_LISTEN = 10,
	SW_TCP_CLOSING = 11,
	SW_TCP_NEW_SYN_RECV = 12,
};

/* Whose socket a tuple belongs to (sock_roles value, tuples value). */
enum sw_sock_role {
	SW_ROLE_NONE = 0,
	SW_ROLE_WORKLOAD = 1, /* an enforced workload's socket (allowed or redirected) */
	SW_ROLE_UPSTREAM = 2, /* the proxy's upstream socket (set by userspace) */
};

/* sw_sock_info.flags */
#define SW_SOCK_REDIRECTED 1 /* the last connect() was sent to the proxy */
#define SW_SOCK_COUNTED 2    /* charged to policy_conns[orig.policy_id].in_flight */
#define SW_SOCK_RECORDED 4   /* orig_dsts holds an entry under peer */
#define SW_SOCK_ESTABLISHED 8 /* the redirected connect() reached the listener (handshake done) */

/*
 * Which path a workload socket's outgoing bytes take under the sockmap
 * engine (sw_sock_info.path). The path is chosen by the first message and
 * can only change once more, from redirect to TCP, which keeps the bytes in
 * order: see sw_msg in sockops.bpf.c.
 */
enum sw_msg_path {
	SW_MSG_UNLINKED = 0, /* not in sk_workloads: plain TCP, no sk_msg program */
	SW_MSG_PENDING = 1,  /* linked, nothing sent yet */
	SW_MSG_TCP = 2,      /* through TCP, for good */
	SW_MSG_REDIRECT = 3, /* straight into the proxy socket's receive queue */
};

/*
 * A connection as the proxy's listener sees it: the workload's address and
 * port, and the proxy address it was sent to. This is the TCP 4-tuple at the
 * listener, unique while the connection exists, whichever namespace the
 * workload lives in (two namespaces cannot present the same 4-tuple to one
 * listening socket).
 */
struct sw_conn_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
};

/* Where a redirected connection was really going. */
struct sw_orig_dst {
	__u8 addr[16];       /* original destination (IPv4-mapped for IPv4) */
	__u16 port;          /* original destination port */
	__u16 family;        /* AF_INET or AF_INET6, as the workload called connect() */
	__u32 policy_id;
	__u64 cgroup_id;     /* the workload socket's own cgroup */
	__u64 netns_cookie;  /* the workload's network namespace */
};

/*
 * sock_roles (socket storage) value. Socket storage lives and dies with its
 * socket, so no other socket can evict it: a redirect's pending state waits
 * here from connect() to TCP_CONNECT_CB.
 */
struct sw_sock_info {
	enum sw_sock_role role;
	__u32 flags;             /* SW_SOCK_* */
	enum sw_msg_path path;   /* sockmap engine: where this socket's bytes go */
	struct sw_conn_key peer; /* listener-side 4-tuple: orig_dsts key, sk_proxy key */
	__u64 redirected;        /* sockmap engine: bytes redirected so far */
	struct sw_orig_dst orig; /* redirected: the original destination and policy */
};

/* msg_counters index: what the sockmap engine did, per CPU. */
enum sw_msg_counter {
	SW_MSG_REDIRECTED_MSGS = 0,  /* messages moved into a proxy socket */
	SW_MSG_REDIRECTED_BYTES = 1,
	SW_MSG_TCP_MSGS = 2,         /* messages of linked sockets sent through TCP */
	SW_MSG_TCP_BYTES = 3,
	SW_MSG_FIRST_REDIRECT = 4,   /* connections whose first message was redirected */
	SW_MSG_FIRST_TCP = 5,        /* ... went through TCP (proxy socket not linked yet) */
	SW_MSG_SWITCH_TCP = 6,       /* redirect -> TCP: SW_MSG_UNREAD_LIMIT reached */
	SW_MSG_PEER_GONE = 7,        /* redirect -> TCP: the proxy's socket closed */
	SW_MSG_LINKED_WORKLOADS = 8, /* workload sockets entered in sk_workloads */
	SW_MSG_LINKED_PROXY = 9,     /* proxy sockets entered in sk_proxy */
	SW_MSG_COUNTERS = 10,
};

/*
 * tuples key: a TCP 4-tuple in one network namespace. Source is the local
 * side of the socket that holds it.
 */
struct sw_tuple_key {
	__u64 netns_cookie;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u32 pad;
};

/*
 * tuples value. An actively closed socket enters TIME_WAIT, which the state
 * callback only reports as a transition to CLOSE: such entries are kept with
 * state SW_TCP_TIME_WAIT and updated_ns = the close, and userspace expires
 * them after the TIME_WAIT period.
 */
struct sw_tuple_value {
	__u64 cookie;
	__u64 updated_ns; /* bpf_ktime_get_boot_ns() of the last change */
	enum sw_tcp_state state;
	enum sw_sock_role role;
};

/* policy_cgroups value: which policy enforces this cgroup (and descendants). */
struct sw_policy_ref {
	__u32 policy_id;
	__u32 icmp;  /* 1: ICMP echo allowed (ping and raw ICMP sockets; icmp: true) */
	__u32 audit; /* 1: mode: audit (a TCP connect() no rule allows is let through, counted, reported) */
};

/* sw_rule_key.proto: the transport a rule entry covers (IANA protocol numbers). */
enum sw_rule_proto {
	SW_PROTO_TCP = 6,
	SW_PROTO_UDP = 17,
};

/*
 * policy_rules key (LPM trie). prefixlen counts bits from policy_id on:
 * SW_RULE_KEY_FIXED_BITS (policy_id, port, proto: always matched whole) +
 * the address prefix (0..SW_ADDR_BITS; an IPv4 prefix is offset by
 * SW_ADDR_V4_MAPPED_BITS, the ::ffff: before it in the mapped form).
 * port 0 means "any port". UDP entries are never SW_VERDICT_REDIRECT.
 */
struct sw_rule_key {
	__u32 prefixlen;
	__u32 policy_id;
	__u16 port;
	__u16 proto; /* enum sw_rule_proto */
	__u8 addr[16];
};

/* The bits of sw_rule_key.prefixlen (checked against the layout below). */
enum sw_rule_bits {
	SW_RULE_KEY_FIXED_BITS = 64, /* policy_id, port, proto */
	SW_ADDR_BITS = 128,          /* a 16-byte address */
	SW_ADDR_V4_MAPPED_BITS = 96, /* ::ffff: before an IPv4 address */
};

struct sw_rule_value {
	enum sw_verdict verdict;
};

/* verdict_counters key. */
struct sw_counter_key {
	__u32 policy_id;
	enum sw_verdict verdict;
};

/*
 * policy_conns value (array index: policy id): redirected sockets of the
 * policy that are open now. Changed only with atomic adds: +1 at
 * connect4/6 (taken back at once if that passed the policy's limit in
 * policy_limits), -1 when the socket is released (cgroup/sock_release).
 * State: it outlives a reload, so the limit, which is policy, is not here.
 */
struct sw_policy_conns {
	__u64 in_flight;
};

/* What happened to redirected connections besides the verdict (conn_counters). */
enum sw_conn_event {
	SW_CONN_REFUSED_LIMIT = 0,   /* connect() refused: the policy's limit was reached */
	SW_CONN_REFUSED_STORAGE = 1, /* connect() refused: no socket storage for its state */
	SW_CONN_UNACCEPTED = 2,      /* closed by the workload before the proxy accepted it */
	SW_CONN_UNREACHED = 3,       /* closed without its handshake with the listener done */
	SW_CONN_EVENTS = 4,
};

/*
 * What the programs that govern the other doors out of a policy cgroup
 * (UDP, socket creation, the egress wall, AF_PACKET) decided, per policy:
 * door_counters index policy_id * SW_DOOR_EVENTS + event, per CPU.
 */
enum sw_door_event {
	SW_DOOR_UDP_ALLOWED = 0,    /* UDP connect()/sendmsg() a UDP rule allows */
	SW_DOOR_UDP_DENIED = 1,     /* ... that no UDP rule allows: EPERM */
	SW_DOOR_UDP_QUIC = 2,       /* ... to a (destination, port) an http rule governs: EPERM */
	SW_DOOR_SOCK_RAW = 3,       /* socket(SOCK_RAW) refused */
	SW_DOOR_SOCK_ICMP = 4,      /* ICMP socket refused: the policy has no icmp: true */
	SW_DOOR_SOCK_PROTOCOL = 5,  /* another inet protocol (SCTP, UDP-Lite, ...) refused */
	SW_DOOR_SOCK_PACKET = 6,    /* AF_PACKET socket refused (BPF LSM) */
	SW_DOOR_DROP_FORGED = 7,    /* packet of another protocol than its socket's (IP_HDRINCL) */
	SW_DOOR_DROP_UDP = 8,       /* UDP packet to a destination no UDP rule allows */
	SW_DOOR_DROP_ICMP = 9,      /* ICMP packet not allowed (no icmp: true, or not an echo request) */
	SW_DOOR_DROP_PROTOCOL = 10, /* packet of a socket the wall knows no allowed flow for */
	SW_DOOR_EVENTS = 11,
};

/* What an event of the events ring buffer reports (sw_event.kind). */
enum sw_event_kind {
	SW_EVENT_CONNECT_DENIED = 1, /* connect() refused with EPERM: no rule allows it (TCP, UDP) */
	SW_EVENT_SENDMSG_DENIED = 2, /* a UDP sendto()/sendmsg() refused with EPERM */
	/*
	 * A redirected socket released without its handshake with the
	 * proxy's listener done (SW_CONN_UNREACHED): the connection never
	 * reached the listener.
	 */
	SW_EVENT_UNREACHED = 3,
	/* A TCP connect() no rule allows, let through by mode: audit. */
	SW_EVENT_CONNECT_WOULD_DENY = 4,
};

/*
 * One record of the events ring buffer, rate-limited per policy
 * (event_buckets). For a denied call the task and cgroup are the caller's;
 * for SW_EVENT_UNREACHED the cgroup, namespace and destination are those
 * of the redirected connect() and the task is the one that released the
 * socket.
 */
struct sw_event {
	__u64 cgroup_id;
	__u64 netns_cookie;
	enum sw_event_kind kind;
	__u32 policy_id;
	__u32 pid;   /* thread group id */
	__u16 port;  /* destination port */
	__u16 proto; /* enum sw_rule_proto */
	__u8 addr[16]; /* destination (IPv4-mapped for IPv4) */
	char comm[16];
};

/*
 * event_buckets value (per-CPU array, index: policy id): one policy's
 * token bucket on one CPU, as time credit (an event costs 1 s /
 * SW_EVENT_RATE), and the events it did not send.
 */
struct sw_event_bucket {
	__u64 credit_ns;
	__u64 last_ns;      /* bpf_ktime_get_ns() of the last event, sent or not */
	__u64 dropped_rate; /* not sent: the bucket was empty */
	__u64 dropped_full; /* not sent: the ring buffer was full */
};

/* conn_counters key. */
struct sw_conn_counter_key {
	__u32 policy_id;
	enum sw_conn_event event;
};

/*
 * The size of each type that both sides view as bytes: the sum of its
 * fields, so that it has no padding (Rust reads and writes every byte of
 * it). Rust checks its generated twins against the same numbers.
 */
enum sw_abi_size {
	SW_SIZEOF_POLICY_REF = 12,       /* 4 + 4 + 4 */
	SW_SIZEOF_RULE_KEY = 28,         /* 4 + 4 + 2 + 2 + 16 */
	SW_SIZEOF_RULE_VALUE = 4,
	SW_SIZEOF_ORIG_DST = 40,         /* 16 + 2 + 2 + 4 + 8 + 8 */
	SW_SIZEOF_CONN_KEY = 36,         /* 16 + 16 + 2 + 2 */
	SW_SIZEOF_COUNTER_KEY = 8,       /* 4 + 4 */
	SW_SIZEOF_SOCK_INFO = 96,        /* 4 + 4 + 4 + 36 + 8 + 40 */
	SW_SIZEOF_POLICY_CONNS = 8,
	SW_SIZEOF_CONN_COUNTER_KEY = 8,  /* 4 + 4 */
	SW_SIZEOF_TUPLE_KEY = 48,        /* 8 + 16 + 16 + 2 + 2 + 4 */
	SW_SIZEOF_TUPLE_VALUE = 24,      /* 8 + 8 + 4 + 4 */
	SW_SIZEOF_EVENT = 64,            /* 8 + 8 + 4 + 4 + 4 + 2 + 2 + 16 + 16 */
	SW_SIZEOF_EVENT_BUCKET = 32,     /* 8 + 8 + 8 + 8 */
};

_Static_assert(sizeof(struct sw_policy_ref) == SW_SIZEOF_POLICY_REF, "sw_policy_ref layout");
_Static_assert(sizeof(struct sw_rule_key) == SW_SIZEOF_RULE_KEY, "sw_rule_key layout");
_Static_assert(sizeof(struct sw_rule_value) == SW_SIZEOF_RULE_VALUE, "sw_rule_value layout");
_Static_assert(sizeof(struct sw_orig_dst) == SW_SIZEOF_ORIG_DST, "sw_orig_dst layout");
_Static_assert(sizeof(struct sw_conn_key) == SW_SIZEOF_CONN_KEY, "sw_conn_key layout");
_Static_assert(sizeof(struct sw_counter_key) == SW_SIZEOF_COUNTER_KEY, "sw_counter_key layout");
_Static_assert(sizeof(struct sw_sock_info) == SW_SIZEOF_SOCK_INFO, "sw_sock_info layout");
_Static_assert(sizeof(struct sw_policy_conns) == SW_SIZEOF_POLICY_CONNS, "sw_policy_conns layout");
_Static_assert(sizeof(struct sw_conn_counter_key) == SW_SIZEOF_CONN_COUNTER_KEY,
	       "sw_conn_counter_key layout");
_Static_assert(sizeof(struct sw_tuple_key) == SW_SIZEOF_TUPLE_KEY, "sw_tuple_key layout");
_Static_assert(sizeof(struct sw_tuple_value) == SW_SIZEOF_TUPLE_VALUE, "sw_tuple_value layout");
_Static_assert(sizeof(struct sw_event) == SW_SIZEOF_EVENT, "sw_event layout");
_Static_assert(sizeof(struct sw_event_bucket) == SW_SIZEOF_EVENT_BUCKET, "sw_event_bucket layout");

/* The prefix bits are the key's layout: policy_id up to addr, and addr. */
_Static_assert(SW_RULE_KEY_FIXED_BITS == 8 * (__builtin_offsetof(struct sw_rule_key, addr) -
					      __builtin_offsetof(struct sw_rule_key, policy_id)),
	       "sw_rule_key fixed bits");
_Static_assert(SW_ADDR_BITS == 8 * sizeof(((struct sw_rule_key *)0)->addr), "address bits");
_Static_assert(SW_ADDR_V4_MAPPED_BITS + 32 == SW_ADDR_BITS, "IPv4-mapped prefix");

#endif /* SOCKWARDEN_ABI_H */
