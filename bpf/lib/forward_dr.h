/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Direct Routing (IPVS -g, "direct server return"): the IP packet is left
 * exactly as the client sent it; only the Ethernet header changes, to the
 * backend's MAC. The backend holds the VIP on lo and answers the client
 * directly, so replies never cross the load balancer. The verdict carries
 * the backend's VLAN (vlan.h).
 */
#ifndef PNLB_FORWARD_DR_H
#define PNLB_FORWARD_DR_H

#include <linux/if_ether.h>
#include "maps.h"
#include "vlan.h"

static __always_inline int pnlb_forward_l2(struct xdp_md *ctx,
					   const struct pnlb_backend *backend)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, backend->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, backend->src_mac, ETH_ALEN);

	if (backend->ifindex == ctx->ingress_ifindex)
		return XDP_TX | PNLB_EGRESS_VLAN(backend->vlan);
	return bpf_redirect(backend->ifindex, 0) | PNLB_EGRESS_VLAN(backend->vlan);
}

#endif
