/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Small helpers shared by sockwarden's programs. */
#ifndef SOCKWARDEN_COMMON_H
#define SOCKWARDEN_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define AF_PACKET 17
#define IPPROTO_MPTCP_ 262 /* not in every vmlinux.h as an enum value */
#define SW_IPPROTO_ICMPV6 58 /* a #define in the uapi headers, absent from vmlinux.h */
#define SW_ETH_P_IP 0x0800
#define SW_ETH_P_IPV6 0x86DD

/* Writes the IPv4-mapped form (::ffff:a.b.c.d) of a network-order IPv4 address. */
static __always_inline void sw_addr_from_ip4(__u8 out[16], __u32 ip4_be)
{
	__u32 *w = (__u32 *)out;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0x0000ffff);
	w[3] = ip4_be;
}

static __always_inline void sw_addr_from_ip6(__u8 out[16], __u32 w0, __u32 w1,
					     __u32 w2, __u32 w3)
{
	__u32 *w = (__u32 *)out;

	w[0] = w0;
	w[1] = w1;
	w[2] = w2;
	w[3] = w3;
}

static __always_inline bool sw_ip6_is_v4mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

#endif /* SOCKWARDEN_COMMON_H */
