/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IP fragments. Only a datagram's first fragment carries the ports that
 * name its flow; the others carry the same (source, destination, IP id,
 * protocol). So the first fragment of a flow we handle leaves its ports in
 * a small LRU under that key, as Cilium does, and each later fragment takes
 * them from there: it then follows its first fragment's backend and
 * translation, through every method and in both directions (a nat/snat
 * server's large reply is fragmented too).
 *
 * A later fragment that arrives before its first (reordered) or whose first
 * was lost is dropped and counted (drop_fragment): XDP cannot hold a packet
 * back, and the datagram is lost without its first fragment anyway. The
 * sender's retransmission (or the application's, for UDP) arrives in order
 * in all but pathological networks. Fragments of datagrams the balancer
 * does not handle are the kernel's, untouched.
 */
#ifndef PNLB_FRAGMENT_H
#define PNLB_FRAGMENT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "pnlb_abi.h"

/* What a packet is, as fragments go. */
enum pnlb_fragment_kind {
	PNLB_NOT_FRAGMENT = 0,
	PNLB_FIRST_FRAGMENT = 1, /* offset 0: the L4 header is here */
	PNLB_LATER_FRAGMENT = 2, /* no L4 header: ports from pnlb_fragments */
};

/* IPv6 fragment extension header (RFC 8200 §4.5). */
struct pnlb_ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3, bit 0: more follow */
	__be32 identification;
};

#define PNLB_IPV6_FRAG_OFFSET 0xfff8
#define PNLB_IPV6_FRAG_HLEN 8

struct pnlb_fragment_key {
	struct pnlb_addr src;
	struct pnlb_addr dst;
	__u32 id; /* IPv4's 16-bit id, or IPv6's 32-bit one */
	__u8 protocol;
	__u8 _pad[3];
};

struct pnlb_fragment_ports {
	__be16 src_port;
	__be16 dst_port;
};

/* Datagrams in flight at once: a fragment train lasts milliseconds. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct pnlb_fragment_key);
	__type(value, struct pnlb_fragment_ports);
} pnlb_fragments SEC(".maps");

static __always_inline void pnlb_fragment_key(const struct pnlb_flow_key *flow, __u32 id,
					      struct pnlb_fragment_key *key)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->src = flow->src;
	key->dst = flow->dst;
	key->id = id;
	key->protocol = flow->protocol;
}

/*
 * A first fragment we handle: leave its ports for the ones that follow.
 * Global functions, this and the next: their keys stay off the stack of
 * the paths that call them.
 */
__attribute__((noinline)) int pnlb_fragment_remember(const struct pnlb_flow_key *flow, __u32 id)
{
	struct pnlb_fragment_key key;
	struct pnlb_fragment_ports ports;

	if (!flow)
		return 0;
	ports.src_port = flow->src_port;
	ports.dst_port = flow->dst_port;
	pnlb_fragment_key(flow, id, &key);
	bpf_map_update_elem(&pnlb_fragments, &key, &ports, BPF_ANY);
	return 0;
}

/* A later fragment: its ports from its first fragment; 0, or -1 when that
 * was not seen. */
__attribute__((noinline)) int pnlb_fragment_ports(struct pnlb_flow_key *flow, __u32 id)
{
	struct pnlb_fragment_key key;
	struct pnlb_fragment_ports *ports;

	if (!flow)
		return -1;
	pnlb_fragment_key(flow, id, &key);
	ports = bpf_map_lookup_elem(&pnlb_fragments, &key);
	if (!ports)
		return -1;
	flow->src_port = ports->src_port;
	flow->dst_port = ports->dst_port;
	return 0;
}

#endif
