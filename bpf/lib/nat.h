/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Address and port translation for nat and snat: rewrite the packet's
 * source and destination to a connection entry's rewrite_* fields, with
 * incremental updates of the IPv4 header checksum and the TCP/UDP checksum
 * (whose pseudo-header covers the addresses), and one hop off the TTL /
 * hop limit (ttl.h). Only what differs is touched.
 */
#ifndef PNLB_NAT_H
#define PNLB_NAT_H

#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "csum.h"
#include "parse.h"

/* The L4 checksum field, or NULL (UDP over IPv4 may carry none). */
static __always_inline __u16 *pnlb_l4_check(void *l4, void *data_end, __u8 protocol)
{
	if (protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end)
			return NULL;
		return &tcp->check;
	}
	if (protocol == IPPROTO_UDP) {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end)
			return NULL;
		return &udp->check;
	}
	return NULL;
}

/* The ports; their change to the L4 checksum goes into *l4_delta. */
static __always_inline void pnlb_rewrite_ports(void *l4, void *data_end, __u32 *l4_delta,
					       __u16 sport, __u16 dport)
{
	/* TCP and UDP both start with source and destination port. */
	__u16 *ports = l4;

	if ((void *)(ports + 2) > data_end)
		return;
	if (ports[0] != sport) {
		*l4_delta += pnlb_csum_delta2(ports[0], sport);
		ports[0] = sport;
	}
	if (ports[1] != dport) {
		*l4_delta += pnlb_csum_delta2(ports[1], dport);
		ports[1] = dport;
	}
}

/* One hop less (see ttl.h); its change to the header checksum goes into
 * *ip_delta. The TTL and protocol word is changed in a register and
 * stored whole: reading it back after storing its TTL byte alone would
 * make the CPU wait for the store (4.8% of a nat packet in the profile). */
static __always_inline void pnlb_ipv4_hop(struct iphdr *ip, __u32 *ip_delta)
{
	__u16 *ttl_protocol = (__u16 *)&ip->ttl;
	__u16 from = *ttl_protocol, to;

	/* The TTL is the word's first byte in memory. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	to = (from & 0xff00) | ((from - 1) & 0x00ff);
#else
	to = (from & 0x00ff) | ((from - 0x100) & 0xff00);
#endif
	*ttl_protocol = to;
	*ip_delta += pnlb_csum_delta2(from, to);
}

/* The addresses; their change goes into both checksums' deltas (the L4
 * checksum's pseudo-header holds them too). */
static __always_inline void pnlb_rewrite_addr4(struct iphdr *ip, __u32 src, __u32 dst,
					       __u32 *ip_delta, __u32 *l4_delta)
{
	__u32 delta;

	if (ip->saddr != src) {
		delta = pnlb_csum_delta4(ip->saddr, src);
		*ip_delta += delta;
		*l4_delta += delta;
		ip->saddr = src;
	}
	if (ip->daddr != dst) {
		delta = pnlb_csum_delta4(ip->daddr, dst);
		*ip_delta += delta;
		*l4_delta += delta;
		ip->daddr = dst;
	}
}

static __always_inline int pnlb_nat_ipv4(struct xdp_md *ctx, const struct pnlb_packet *pkt,
					 const struct pnlb_conn *conn)
{
	__u8 protocol = pkt->flow.protocol;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + PNLB_L3_OFFSET;
	void *l4 = data + PNLB_L4_OFFSET_V4;
	__u32 src = conn->rewrite_src.words[3];
	__u32 dst = conn->rewrite_dst.words[3];
	__u32 ip_delta = 0, l4_delta = 0;
	__u16 *l4_check;

	if ((void *)(ip + 1) > data_end)
		return PNLB_DROP_TRUNCATED_IP;
	if (pkt->fragment == PNLB_LATER_FRAGMENT) {
		/* No L4 header here: the first fragment's checksum covered
		 * the whole datagram's change. */
		pnlb_rewrite_addr4(ip, src, dst, &ip_delta, &l4_delta);
		pnlb_ipv4_hop(ip, &ip_delta);
		pnlb_csum_apply(&ip->check, ip_delta);
		return 0;
	}
	l4_check = pnlb_l4_check(l4, data_end, protocol);
	if (!l4_check)
		return PNLB_DROP_TRUNCATED_L4;

	pnlb_rewrite_addr4(ip, src, dst, &ip_delta, &l4_delta);
	pnlb_rewrite_ports(l4, data_end, &l4_delta, conn->rewrite_sport, conn->rewrite_dport);
	pnlb_ipv4_hop(ip, &ip_delta);
	pnlb_csum_apply(&ip->check, ip_delta);
	/* A UDP checksum of 0 means "none": keep it that way. */
	if (protocol == IPPROTO_UDP && *l4_check == 0)
		return 0;
	pnlb_csum_apply(l4_check, l4_delta);
	if (protocol == IPPROTO_UDP && *l4_check == 0)
		*l4_check = 0xffff;
	return 0;
}

/* An IPv6 address; its change to the L4 checksum goes into *l4_delta. */
static __always_inline void pnlb_rewrite_addr6(__u32 *field, const struct pnlb_addr *to,
					       __u32 *l4_delta)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (field[i] != to->words[i]) {
			*l4_delta += pnlb_csum_delta4(field[i], to->words[i]);
			field[i] = to->words[i];
		}
	}
}

static __always_inline int pnlb_nat_ipv6(struct xdp_md *ctx, const struct pnlb_packet *pkt,
					 const struct pnlb_conn *conn)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + PNLB_L3_OFFSET;
	void *l4 = data + PNLB_L4_OFFSET_V6;
	__u8 protocol = pkt->flow.protocol;
	__u32 l4_delta = 0;
	__u16 *l4_check;

	if ((void *)(ip6 + 1) > data_end)
		return PNLB_DROP_TRUNCATED_IP;
	if (pkt->fragment == PNLB_LATER_FRAGMENT) {
		pnlb_rewrite_addr6(ip6->saddr.in6_u.u6_addr32, &conn->rewrite_src, &l4_delta);
		pnlb_rewrite_addr6(ip6->daddr.in6_u.u6_addr32, &conn->rewrite_dst, &l4_delta);
		ip6->hop_limit -= 1;
		return 0;
	}
	if (pkt->ipv6_frag_header)
		l4 = data + PNLB_L4_OFFSET_V6 + PNLB_IPV6_FRAG_HLEN;
	l4_check = pnlb_l4_check(l4, data_end, protocol);
	if (!l4_check)
		return PNLB_DROP_TRUNCATED_L4;
	pnlb_rewrite_addr6(ip6->saddr.in6_u.u6_addr32, &conn->rewrite_src, &l4_delta);
	pnlb_rewrite_addr6(ip6->daddr.in6_u.u6_addr32, &conn->rewrite_dst, &l4_delta);
	pnlb_rewrite_ports(l4, data_end, &l4_delta, conn->rewrite_sport, conn->rewrite_dport);
	ip6->hop_limit -= 1;
	/* IPv6 UDP must carry a checksum, except that tunnel protocols may
	 * send 0 (RFC 6935, 6936); whether to accept that is the receiver's
	 * call, so a 0 is forwarded as 0, as for IPv4 — updating it would
	 * forge a wrong checksum, computing one would mean reading the whole
	 * datagram. */
	if (protocol == IPPROTO_UDP && *l4_check == 0)
		return 0;
	pnlb_csum_apply(l4_check, l4_delta);
	if (protocol == IPPROTO_UDP && *l4_check == 0)
		*l4_check = 0xffff;
	return 0;
}

/* Returns 0, or the reason the packet could not be rewritten. */
static __always_inline int pnlb_nat_rewrite(struct xdp_md *ctx, const struct pnlb_packet *pkt,
					    const struct pnlb_conn *conn)
{
	if (pkt->ipv6)
		return pnlb_nat_ipv6(ctx, pkt, conn);
	return pnlb_nat_ipv4(ctx, pkt, conn);
}

#endif
