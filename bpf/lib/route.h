/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Sending a translated reply towards its client: the kernel's FIB gives
 * the egress interface and both MACs (bpf_fib_lookup), so replies follow
 * the host's routing like any forwarded packet. When the next hop's MAC is
 * not known yet the packet goes to the kernel, which resolves it and
 * forwards (the LB host needs ip_forward, as with IPVS NAT).
 */
#ifndef PNLB_ROUTE_H
#define PNLB_ROUTE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include "parse.h"
#include "stats.h"

#define PNLB_AF_INET 2
#define PNLB_AF_INET6 10

static __always_inline int pnlb_forward_fib(struct xdp_md *ctx, const struct pnlb_conn *conn,
					    const struct pnlb_packet *pkt)
{
	struct bpf_fib_lookup fib = {};
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	int rc;

	if ((void *)(eth + 1) > data_end)
		return pnlb_drop(PNLB_DROP_TRUNCATED_ETH);

	fib.ifindex = ctx->ingress_ifindex;
	fib.l4_protocol = pkt->flow.protocol;
	fib.sport = conn->rewrite_sport;
	fib.dport = conn->rewrite_dport;
	fib.tot_len = pkt->len - sizeof(*eth);
	if (pkt->ipv6) {
		fib.family = PNLB_AF_INET6;
		__builtin_memcpy(fib.ipv6_src, conn->rewrite_src.words, 16);
		__builtin_memcpy(fib.ipv6_dst, conn->rewrite_dst.words, 16);
	} else {
		fib.family = PNLB_AF_INET;
		fib.ipv4_src = conn->rewrite_src.words[3];
		fib.ipv4_dst = conn->rewrite_dst.words[3];
	}

	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return pnlb_pass(PNLB_PASS_NO_NEIGH);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return pnlb_drop(PNLB_DROP_NO_ROUTE);

	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	if (fib.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib.ifindex, 0);
}

#endif
