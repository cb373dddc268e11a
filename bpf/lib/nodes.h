/* SPDX-License-Identifier: Apache-2.0 */
/*
 * nat behind ECMP: a packet of a flow this node holds no entry of goes to
 * the flow's designated node, until the flow is established and synced
 * everywhere (pnlb_abi.h, docs/scale-out.md).
 */
#ifndef PNLB_NODES_H
#define PNLB_NODES_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"
#include "jhash.h"
#include "parse.h"

/* The index of the flow of client `addr`:`port` in a list of the count
 * in meta slot `slot`; -1 without a list. */
static __always_inline int pnlb_designated_index(__u32 slot, const struct pnlb_addr *addr,
						 __u16 port, __u8 protocol)
{
	__u32 *count = bpf_map_lookup_elem(&pnlb_meta, &slot);
	__u32 words[5];

	if (!count || *count < 2 || *count > PNLB_MAX_NODES)
		return -1;
	words[0] = addr->words[0];
	words[1] = addr->words[1];
	words[2] = addr->words[2];
	words[3] = addr->words[3];
	words[4] = (__u32)port << 8 | protocol;
	return pnlb_jhash2(words, 5, pnlb_hash_seed) % *count;
}

/* The designated node of the flow of client `addr`:`port`, when it is
 * another node; NULL when it is this one or no node list is published. */
static __always_inline struct pnlb_node *pnlb_designated_node(const struct pnlb_addr *addr,
							       __u16 port, __u8 protocol)
{
	int index = pnlb_designated_index(PNLB_META_NODES, addr, port, protocol);
	__u32 key = index;
	struct pnlb_node *node;

	if (index < 0)
		return NULL;
	node = bpf_map_lookup_elem(&pnlb_nodes, &key);
	if (!node || node->is_self)
		return NULL;
	return node;
}

/* Whether another node handed this frame on (its source MAC is a node's). */
static __always_inline int pnlb_from_node(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pnlb_mac_key key = {};
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 1;
	__builtin_memcpy(key.mac, eth->h_source, ETH_ALEN);
	return bpf_map_lookup_elem(&pnlb_node_macs, &key) != NULL;
}

/* A mid-flow packet that finds no entry here: the flow's designated node
 * before the last change of the list, unless that is this node, or the
 * packet comes from that node or from the flow's designated node (which
 * gave it its second chance already): no packet goes round. NULL:
 * handled here. */
static __always_inline struct pnlb_node *pnlb_second_chance(struct xdp_md *ctx,
							     const struct pnlb_addr *addr,
							     __u16 port, __u8 protocol)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int index = pnlb_designated_index(PNLB_META_NODES_PREVIOUS, addr, port, protocol);
	int current = pnlb_designated_index(PNLB_META_NODES, addr, port, protocol);
	struct ethhdr *eth = data;
	struct pnlb_node *node;
	__u32 key = current;

	if (index < 0 || (void *)(eth + 1) > data_end)
		return NULL;
	/* From the flow's designated node: it gave this packet its second
	 * chance already. */
	if (current >= 0) {
		node = bpf_map_lookup_elem(&pnlb_nodes, &key);
		if (node && !__builtin_memcmp(node->mac, eth->h_source, ETH_ALEN))
			return NULL;
	}
	key = index;
	node = bpf_map_lookup_elem(&pnlb_nodes_previous, &key);
	if (!node || node->is_self || !__builtin_memcmp(node->mac, eth->h_source, ETH_ALEN))
		return NULL;
	return node;
}

/* Where a nat packet of a flow this node holds no entry of goes. One that
 * opens the flow: its designated node (here, if this is it or another
 * node handed it on). One that does not: its designated node, unless this
 * is it or another node handed it on; then its second chance (the flow
 * began before the list changed). NULL: handled here. */
static __always_inline struct pnlb_node *pnlb_node_for(struct xdp_md *ctx,
							const struct pnlb_addr *addr, __u16 port,
							__u8 protocol, int opens)
{
	__u32 current = PNLB_META_NODES, previous = PNLB_META_NODES_PREVIOUS;
	__u32 *count = bpf_map_lookup_elem(&pnlb_meta, &current);
	__u32 *count_before = bpf_map_lookup_elem(&pnlb_meta, &previous);
	struct pnlb_node *node = NULL;

	/* No list (a single node): nothing to look up per new flow. */
	if ((!count || *count < 2) && (!count_before || *count_before < 2))
		return NULL;
	if (!pnlb_from_node(ctx)) {
		node = pnlb_designated_node(addr, port, protocol);
		if (node)
			return node;
	}
	if (opens)
		return NULL;
	return pnlb_second_chance(ctx, addr, port, protocol);
}

/* Hands the frame, unchanged but for its MACs, to `node`. */
static __always_inline int pnlb_hand_on(struct xdp_md *ctx, const struct pnlb_node *node)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, node->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, node->src_mac, ETH_ALEN);
	if (node->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(node->ifindex, 0);
}

/* Whether the packet is for this host (no forwarding route: a local
 * address), as a health check's answer is. */
static __always_inline int pnlb_for_this_host(struct xdp_md *ctx, const struct pnlb_packet *pkt)
{
	struct bpf_fib_lookup fib;

	__builtin_memset(&fib, 0, sizeof(fib));
	fib.ifindex = ctx->ingress_ifindex;
	fib.l4_protocol = pkt->flow.protocol;
	fib.sport = pkt->flow.src_port;
	fib.dport = pkt->flow.dst_port;
	fib.tot_len = pkt->len - PNLB_L3_OFFSET;
	if (pkt->ipv6) {
		fib.family = 10; /* AF_INET6 */
		__builtin_memcpy(fib.ipv6_src, pkt->flow.src.words, 16);
		__builtin_memcpy(fib.ipv6_dst, pkt->flow.dst.words, 16);
	} else {
		fib.family = 2; /* AF_INET */
		fib.ipv4_src = pkt->flow.src.words[3];
		fib.ipv4_dst = pkt->flow.dst.words[3];
	}
	return bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) == BPF_FIB_LKUP_RET_NOT_FWDED;
}

#endif
