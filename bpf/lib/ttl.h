/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TTL / hop limit for the methods that route (nat, snat): like any router,
 * the balancer takes one off each packet it translates, and answers a
 * packet that arrives with 1 or 0 left with ICMP time exceeded instead of
 * forwarding it, so a routing loop through the balancer dies out and
 * traceroute shows the hop. dr and tun leave the client's packet as it is,
 * as IPVS does (the balancer is not a hop there: dr changes only the
 * Ethernet header, tun carries the packet inside a new one).
 */
#ifndef PNLB_TTL_H
#define PNLB_TTL_H

#include "icmp_answer.h"

static __always_inline int pnlb_method_routes(const struct pnlb_service *svc)
{
	return svc->method == PNLB_METHOD_NAT || svc->method == PNLB_METHOD_SNAT;
}

static __always_inline int pnlb_ttl_expires(const struct pnlb_packet *pkt)
{
	return pkt->ttl <= 1;
}

/* Answers a packet whose TTL runs out here, from `src`; the verdict. */
static __always_inline int pnlb_time_exceeded(struct xdp_md *ctx, __u32 service_id,
					      const struct pnlb_packet *pkt,
					      const struct pnlb_addr *src)
{
	struct pnlb_icmp_answer answer = {
		.src = *src,
		.ipv6 = pkt->ipv6,
		.type = pkt->ipv6 ? PNLB_ICMPV6_TIME_EXCEEDED : PNLB_ICMP_TIME_EXCEEDED,
		.counted = PNLB_TX_ICMP_TIME_EXCEEDED,
	};

	return pnlb_icmp_answer(ctx, service_id, &answer);
}

#endif
