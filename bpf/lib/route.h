/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Sending a translated reply towards its client: the kernel's FIB gives
 * the egress interface and both MACs (bpf_fib_lookup), so replies follow
 * the host's routing like any forwarded packet. When the kernel holds no
 * MAC for the next hop (its entry expired, or was never made), the MAC the
 * daemon last saw for it is used (pnlb_last_known_neighbours); one it
 * never saw sends the packet to the kernel, which resolves it and forwards
 * (the LB host needs ip_forward, as with IPVS NAT) -- unless the VIP is a
 * local address, which makes the reply a martian there.
 */
#ifndef PNLB_ROUTE_H
#define PNLB_ROUTE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include "parse.h"
#include "stats.h"
#include "vlan.h"

#define PNLB_AF_INET 2
#define PNLB_AF_INET6 10

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PNLB_MAX_LAST_KNOWN);
	__type(key, struct pnlb_neighbour_key);
	__type(value, struct pnlb_neighbour);
} pnlb_last_known_neighbours SEC(".maps");

/* Packets sent to a last known MAC (one slot, per CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} pnlb_last_known_sent SEC(".maps");

/* Routes a translated packet by its entry's rewrite addresses (what it
 * will carry): fills *fib, returns bpf_fib_lookup's result. Done before the
 * rewrite, so that a packet too big for the route is answered as it came. */
static __always_inline int pnlb_fib_route(struct xdp_md *ctx, const struct pnlb_conn *conn,
					  const struct pnlb_packet *pkt,
					  struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = ctx->ingress_ifindex;
	fib->l4_protocol = pkt->flow.protocol;
	fib->sport = conn->rewrite_sport;
	fib->dport = conn->rewrite_dport;
	fib->tot_len = pkt->len - PNLB_L3_OFFSET;
	if (pkt->ipv6) {
		fib->family = PNLB_AF_INET6;
		__builtin_memcpy(fib->ipv6_src, conn->rewrite_src.words, 16);
		__builtin_memcpy(fib->ipv6_dst, conn->rewrite_dst.words, 16);
	} else {
		fib->family = PNLB_AF_INET;
		fib->ipv4_src = conn->rewrite_src.words[3];
		fib->ipv4_dst = conn->rewrite_dst.words[3];
	}
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
}

/* Fills *fib's MACs from the last known neighbour of a "no neighbour"
 * answer, which names the egress interface and the next hop (the router,
 * or the destination itself on a link); 0 if none is known. */
static __always_inline int pnlb_last_known(struct bpf_fib_lookup *fib)
{
	struct pnlb_neighbour_key key = { .ifindex = fib->ifindex };
	struct pnlb_neighbour *known;
	__u32 zero = 0;
	__u64 *sent;

	if (fib->family == PNLB_AF_INET6)
		__builtin_memcpy(key.addr.words, fib->ipv6_dst, 16);
	else
		pnlb_addr_from_ipv4(&key.addr, fib->ipv4_dst);
	known = bpf_map_lookup_elem(&pnlb_last_known_neighbours, &key);
	if (!known)
		return 0;
	__builtin_memcpy(fib->dmac, known->mac, ETH_ALEN);
	__builtin_memcpy(fib->smac, known->src_mac, ETH_ALEN);
	sent = bpf_map_lookup_elem(&pnlb_last_known_sent, &zero);
	if (sent)
		*sent += 1;
	return 1;
}

/* Sends the packet the way pnlb_fib_route found (rc: its result); the
 * verdict carries the egress VLAN (vlan.h). */
static __always_inline int pnlb_fib_send(struct xdp_md *ctx, struct bpf_fib_lookup *fib, int rc)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 egress;
	__u16 vid;

	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		if (!pnlb_last_known(fib))
			return pnlb_pass(PNLB_PASS_NO_NEIGH);
		rc = BPF_FIB_LKUP_RET_SUCCESS;
	}
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return pnlb_drop(PNLB_DROP_TOO_BIG);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return pnlb_drop(PNLB_DROP_NO_ROUTE);
	if ((void *)(eth + 1) > data_end)
		return pnlb_drop(PNLB_DROP_TRUNCATED_ETH);
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	egress = pnlb_vlan_parent(fib->ifindex, &vid);
	if (egress == ctx->ingress_ifindex)
		return XDP_TX | PNLB_EGRESS_VLAN(vid);
	return bpf_redirect(egress, 0) | PNLB_EGRESS_VLAN(vid);
}

/* Routes and sends a packet already translated (an ICMP error). */
static __always_inline int pnlb_forward_fib(struct xdp_md *ctx, const struct pnlb_conn *conn,
					    const struct pnlb_packet *pkt)
{
	struct bpf_fib_lookup fib;
	int rc = pnlb_fib_route(ctx, conn, pkt, &fib);

	return pnlb_fib_send(ctx, &fib, rc);
}

#endif
