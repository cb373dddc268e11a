/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Path MTU on every path. A packet that does not fit its egress interface
 * (for tun: once encapsulated) is answered, as a router would (and as
 * Katran does for its tunnel), with ICMP fragmentation-needed (IPv4, DF
 * set) or packet-too-big (IPv6), carrying the MTU left for it. The
 * sender's kernel lowers its path MTU and resends smaller; without this a
 * large upload through tun, or a large reply from a nat/snat server, would
 * black-hole. An IPv4 packet without DF asked to be fragmented, which XDP
 * cannot do: it is dropped and counted.
 *
 * Packets no larger than every link's minimum are not checked, to keep the
 * helper off the common path: 1280 bytes for IPv6 (RFC 8200 guarantees it)
 * and 576 for IPv4 (no link a load balancer forwards over is smaller).
 */
#ifndef PNLB_PMTU_H
#define PNLB_PMTU_H

#include "icmp_answer.h"

#define PNLB_MIN_MTU_V4 576
#define PNLB_MIN_MTU_V6 1280

/* Whether the packet still fits the backend's egress interface with
 * `overhead` more bytes; *mtu gets that interface's MTU. */
static __always_inline int pnlb_fits_mtu(struct xdp_md *ctx, const struct pnlb_backend *backend,
					 __u32 overhead, __u32 *mtu)
{
	__u32 mtu_len = 0;
	long rc = bpf_check_mtu(ctx, backend->ifindex, &mtu_len, (__s32)overhead, 0);

	*mtu = mtu_len;
	return rc == BPF_MTU_CHK_RET_SUCCESS;
}

/* Whether the packet's IP datagram is small enough to fit any link. */
static __always_inline int pnlb_fits_any_link(const struct pnlb_packet *pkt)
{
	__u32 l3 = pkt->len - PNLB_L3_OFFSET;

	return l3 <= (pkt->ipv6 ? PNLB_MIN_MTU_V6 : PNLB_MIN_MTU_V4);
}

/* Answers a packet that does not fit an egress of `mtu` bytes (of which
 * `overhead` go to a tunnel's headers) from `src`; the verdict. */
static __always_inline int pnlb_too_big(struct xdp_md *ctx, __u32 service_id,
					const struct pnlb_packet *pkt, const struct pnlb_addr *src,
					__u32 mtu, __u32 overhead)
{
	struct pnlb_icmp_answer answer = {
		.src = *src,
		.info = bpf_htonl(mtu > overhead ? mtu - overhead : 0),
		.ipv6 = pkt->ipv6,
		.counted = PNLB_TX_ICMP_TOO_BIG,
	};

	if (pkt->ipv6) {
		answer.type = PNLB_ICMPV6_TOO_BIG;
	} else {
		if (!pkt->dont_fragment)
			return pnlb_service_drop(service_id, PNLB_DROP_TOO_BIG);
		answer.type = ICMP_DEST_UNREACH;
		answer.code = PNLB_ICMP_FRAG_NEEDED;
	}
	return pnlb_icmp_answer(ctx, service_id, &answer);
}

/* A client's packet that would not fit on its way to the backend
 * (`overhead`: the tunnel's headers), answered from the VIP. */
static __always_inline int pnlb_tun_too_big(struct xdp_md *ctx, __u32 service_id,
					    const struct pnlb_packet *pkt, __u32 mtu,
					    __u32 overhead)
{
	return pnlb_too_big(ctx, service_id, pkt, &pkt->flow.dst, mtu, overhead);
}

#endif
