/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Behind ECMP: a packet of a flow this node holds no entry of goes to the
 * flow's designated node, until the flow is established and synced
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

/* The node lists as the clock picks them (pnlb_abi.h): the current one
 * and the one before it, while it still serves second chances; -1: none. */
struct pnlb_node_lists {
	int current;
	int previous;
};

static __always_inline __u64 pnlb_node_list_since(__u32 list)
{
	__u64 *since = bpf_map_lookup_elem(&pnlb_node_since, &list);

	return since ? *since : 0;
}

static __always_inline struct pnlb_node_lists pnlb_node_lists_now(void)
{
	struct pnlb_node_lists lists = { -1, -1 };
	__u64 since[PNLB_NODE_LISTS], now, latest = 0, before = 0;
	int list, any = 0;

	for (list = 0; list < PNLB_NODE_LISTS; list++) {
		since[list] = pnlb_node_list_since(list);
		any |= since[list] != 0;
	}
	/* A single node (no list): no clock read per new flow. */
	if (!any)
		return lists;
	now = bpf_ktime_get_ns();
	for (list = 0; list < PNLB_NODE_LISTS; list++) {
		if (!since[list] || since[list] > now)
			continue;
		if (since[list] > latest) {
			before = latest;
			lists.previous = lists.current;
			latest = since[list];
			lists.current = list;
		} else if (since[list] > before) {
			before = since[list];
			lists.previous = list;
		}
	}
	if (now - latest >= PNLB_SECOND_CHANCE_S * 1000000000ULL)
		lists.previous = -1;
	return lists;
}

/* The node of the flow of client `addr`:`port` in `list`; NULL without a
 * list of two or more. */
static __always_inline struct pnlb_node *pnlb_designated_in(int list, const struct pnlb_addr *addr,
							    __u16 port, __u8 protocol)
{
	__u32 slot = PNLB_META_NODE_COUNT + list, words[5], key;
	__u32 *count;

	if (list < 0 || list >= PNLB_NODE_LISTS)
		return NULL;
	count = bpf_map_lookup_elem(&pnlb_meta, &slot);
	if (!count || *count < 2 || *count > PNLB_MAX_NODES)
		return NULL;
	words[0] = addr->words[0];
	words[1] = addr->words[1];
	words[2] = addr->words[2];
	words[3] = addr->words[3];
	words[4] = (__u32)port << 8 | protocol;
	key = list * PNLB_MAX_NODES + pnlb_jhash2(words, 5, pnlb_hash_seed) % *count;
	return bpf_map_lookup_elem(&pnlb_nodes, &key);
}

/* Whether this node is one of several behind ECMP (a list of two or more
 * is current): a flow it holds no entry of may be another node's, not
 * synced here yet. */
static __always_inline int pnlb_among_nodes(void)
{
	struct pnlb_node_lists lists = pnlb_node_lists_now();
	__u32 slot;
	__u32 *count;

	if (lists.current < 0)
		return 0;
	slot = PNLB_META_NODE_COUNT + lists.current;
	count = bpf_map_lookup_elem(&pnlb_meta, &slot);
	return count && *count >= 2;
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
 * before the last switch of lists, unless that is this node, or the
 * packet comes from that node or from the flow's designated node now
 * (which gave it its second chance already): no packet goes round. NULL:
 * handled here. */
static __always_inline struct pnlb_node *pnlb_second_chance(struct xdp_md *ctx,
							     struct pnlb_node_lists lists,
							     const struct pnlb_addr *addr,
							     __u16 port, __u8 protocol)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pnlb_node *before = pnlb_designated_in(lists.previous, addr, port, protocol);
	struct pnlb_node *now = pnlb_designated_in(lists.current, addr, port, protocol);
	struct ethhdr *eth = data;

	if (!before || before->is_self || (void *)(eth + 1) > data_end)
		return NULL;
	if (now && !__builtin_memcmp(now->mac, eth->h_source, ETH_ALEN))
		return NULL;
	if (!__builtin_memcmp(before->mac, eth->h_source, ETH_ALEN))
		return NULL;
	return before;
}

/* Whether a flow of this service that the routers move to a node before
 * its entry is synced there needs its designated node: nat (its replies
 * may come back through any node), snat (its translation is the node's
 * own: re-created elsewhere the server would reset it) and every per-node
 * scheduler (rr, wrr, chbl, the least-load family: another node would pick
 * another backend; a flow still in its handshake when the routers moved
 * it was never synced, and was lost). dr and tun by hash need none: every
 * node picks the same backend, and such a packet is forwarded by hash. */
static __always_inline int pnlb_flows_have_designated_nodes(const struct pnlb_service *svc)
{
	return !(svc->flags & PNLB_SVC_F_STATELESS);
}

/* Where a packet of a flow this node holds no entry of goes. One that
 * opens the flow: its designated node (here, if this is it or another
 * node handed it on). One that does not: its designated node, unless this
 * is it or another node handed it on; then its second chance (the flow
 * began before the lists switched). NULL: handled here. */
static __always_inline struct pnlb_node *pnlb_node_for(struct xdp_md *ctx,
							const struct pnlb_addr *addr, __u16 port,
							__u8 protocol, int opens)
{
	struct pnlb_node_lists lists = pnlb_node_lists_now();
	struct pnlb_node *node;

	/* No list (a single node): nothing more to look up per new flow. */
	if (lists.current < 0 && lists.previous < 0)
		return NULL;
	if (!pnlb_from_node(ctx)) {
		node = pnlb_designated_in(lists.current, addr, port, protocol);
		if (node && !node->is_self)
			return node;
	}
	if (opens)
		return NULL;
	return pnlb_second_chance(ctx, lists, addr, port, protocol);
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
