/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Tunneling (IPVS -i, Katran's method): the client's packet, untouched,
 * goes inside an outer IP header addressed to the backend:
 *
 *   ipip  IPv4 in IPv4 (protocol 4) / IPv6 in IPv6 (next header 41);
 *   gue   outer UDP to the backend's gue_port, then the inner IP packet
 *         directly (GUE variant 1: the inner version nibble, 4 or 6, is
 *         the "01" GUE version bits), which Linux fou in gue mode and
 *         `pnlb decap` both accept.
 *
 * The backend strips it and answers the client directly. The outer headers
 * carry the flow's entropy where ECMP and RSS look for it: the GUE source
 * port and the IPv6 flow label are a hash of the inner 5-tuple. Outer IPv4
 * has DF set: a packet too big for the tunnel is answered with ICMP
 * instead (pmtu.h), so path-MTU discovery sees the tunnel's real MTU.
 *
 * Checksums: outer IPv4 header computed; GUE over IPv4 leaves the UDP
 * checksum zero (allowed, and what fou sends); GUE over IPv6 must carry one
 * (RFC 8200), computed without reading the payload: a valid inner L4
 * segment sums to the complement of its pseudo-header (the "local checksum
 * offload" identity), so only headers are summed.
 */
#ifndef PNLB_ENCAP_H
#define PNLB_ENCAP_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "csum.h"
#include "parse.h"
#include "sched.h"

#define PNLB_IPV4_HLEN 20
#define PNLB_IPV6_HLEN 40
#define PNLB_UDP_HLEN 8
#define PNLB_OUTER_TTL 64
/* GUE source ports come from 49152-65535 (RFC 8086's advice for UDP
 * encapsulations), chosen by the flow hash. */
#define PNLB_GUE_SPORT_BASE 0xc000
#define PNLB_GUE_SPORT_MASK 0x3fff
#define PNLB_FLOW_LABEL_MASK 0xfffff

/* The low bits of the outer source a flow's hash sets (network order, to
 * OR into the last word of tun_src): Katran's way to give IPIP flows
 * entropy that routers and NICs hash on. */
static __always_inline __u32 pnlb_source_entropy(const struct pnlb_backend *backend, __u32 hash)
{
	__u32 bits = backend->tun_src_entropy_bits;

	if (!bits || bits > 16)
		return 0;
	return bpf_htonl(hash & ((1U << bits) - 1));
}

/* Bytes the outer headers add in front of the client's IP packet. */
static __always_inline __u32 pnlb_encap_overhead(const struct pnlb_backend *backend, int ipv6)
{
	__u32 ip = ipv6 ? PNLB_IPV6_HLEN : PNLB_IPV4_HLEN;

	return backend->encap == PNLB_ENCAP_GUE ? ip + PNLB_UDP_HLEN : ip;
}

/* Sum of `len` (a multiple of 4, constant) bytes at p, not folded. */
static __always_inline __u64 pnlb_sum(void *p, __u32 len)
{
	__s64 sum = bpf_csum_diff(0, 0, p, len, 0);

	return sum < 0 ? 0 : (__u64)sum;
}

static __always_inline __u16 pnlb_csum_fold64(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return pnlb_csum_fold((__u32)sum);
}

/*
 * The UDP checksum of an IPv6 GUE packet: outer pseudo-header, UDP header,
 * and the inner IPv6 packet, whose L4 part sums to ~(its pseudo-header).
 */
static __always_inline __u16 pnlb_gue6_checksum(struct ipv6hdr *outer, struct udphdr *udp,
						 struct ipv6hdr *inner)
{
	__u64 sum;
	__u64 inner_pseudo;
	__u16 check;

	inner_pseudo = pnlb_sum(&inner->saddr, 32);
	inner_pseudo += bpf_htonl(bpf_ntohs(inner->payload_len));
	inner_pseudo += bpf_htonl(inner->nexthdr);

	sum = pnlb_sum(&outer->saddr, 32);
	sum += bpf_htonl(bpf_ntohs(udp->len));
	sum += bpf_htonl(IPPROTO_UDP);
	sum += udp->source;
	sum += udp->dest;
	sum += udp->len;
	sum += pnlb_sum(inner, PNLB_IPV6_HLEN);
	sum += (__u16)~pnlb_csum_fold64(inner_pseudo);
	check = ~pnlb_csum_fold64(sum);
	/* 0 means "no checksum"; a computed 0 is sent as its other form. */
	return check ? check : 0xffff;
}

static __always_inline int pnlb_encap_ipv4(struct xdp_md *ctx, const struct pnlb_backend *backend,
					   __u32 inner_len, __u8 tos, __u32 hash)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	int gue = backend->encap == PNLB_ENCAP_GUE;

	if ((void *)(udp + 1) > data_end)
		return PNLB_DROP_ENCAP_FAILED;
	eth->h_proto = bpf_htons(ETH_P_IP);
	*(__u8 *)ip = 0x45; /* version 4, 5 words */
	ip->tos = tos;
	ip->tot_len = bpf_htons(inner_len + pnlb_encap_overhead(backend, 0));
	ip->id = 0;
	ip->frag_off = bpf_htons(PNLB_IP_DF);
	ip->ttl = PNLB_OUTER_TTL;
	ip->protocol = gue ? IPPROTO_UDP : IPPROTO_IPIP;
	ip->check = 0;
	ip->saddr = backend->tun_src.words[3] | pnlb_source_entropy(backend, hash);
	ip->daddr = backend->addr.words[3];
	ip->check = ~pnlb_csum_fold64(pnlb_sum(ip, PNLB_IPV4_HLEN));
	if (gue) {
		udp->source = bpf_htons(PNLB_GUE_SPORT_BASE | (hash & PNLB_GUE_SPORT_MASK));
		udp->dest = backend->gue_port;
		udp->len = bpf_htons(inner_len + PNLB_UDP_HLEN);
		udp->check = 0;
	}
	return 0;
}

static __always_inline int pnlb_encap_ipv6(struct xdp_md *ctx, const struct pnlb_backend *backend,
					   __u32 inner_len, __u32 hash)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	int gue = backend->encap == PNLB_ENCAP_GUE;
	__u32 outer_len = pnlb_encap_overhead(backend, 1) - PNLB_IPV6_HLEN;
	struct ipv6hdr *inner = (void *)ip6 + PNLB_IPV6_HLEN + outer_len;
	struct udphdr *udp = (void *)(ip6 + 1);
	__u8 tclass;

	if ((void *)(inner + 1) > data_end)
		return PNLB_DROP_ENCAP_FAILED;
	/* The inner traffic class (DSCP + ECN) carries over to the outer. */
	tclass = (inner->priority << 4) | (inner->flow_lbl[0] >> 4);
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	*(__u32 *)ip6 = bpf_htonl((6 << 28) | ((__u32)tclass << 20) | (hash & PNLB_FLOW_LABEL_MASK));
	ip6->payload_len = bpf_htons(inner_len + outer_len);
	ip6->nexthdr = gue ? IPPROTO_UDP : IPPROTO_IPV6;
	ip6->hop_limit = PNLB_OUTER_TTL;
	__builtin_memcpy(&ip6->saddr, backend->tun_src.words, 16);
	ip6->saddr.in6_u.u6_addr32[3] |= pnlb_source_entropy(backend, hash);
	__builtin_memcpy(&ip6->daddr, backend->addr.words, 16);
	if (gue) {
		udp->source = bpf_htons(PNLB_GUE_SPORT_BASE | (hash & PNLB_GUE_SPORT_MASK));
		udp->dest = backend->gue_port;
		udp->len = bpf_htons(inner_len + PNLB_UDP_HLEN);
		udp->check = 0;
		udp->check = pnlb_gue6_checksum(ip6, udp, inner);
	}
	return 0;
}

/*
 * Puts the outer headers (`overhead` bytes, pnlb_encap_overhead) in front
 * of the packet, in the client's IP version (the config keeps tun backends
 * in the VIP's family). The caller
 * has checked the result fits the egress MTU (pmtu.h) and forwards it with
 * pnlb_forward_l2. Returns 0 or a drop reason.
 */
static __always_inline int pnlb_encap(struct xdp_md *ctx, const struct pnlb_packet *pkt,
				      const struct pnlb_backend *backend, __u32 overhead)
{
	__u32 inner_len = pkt->len - sizeof(struct ethhdr);
	__u32 hash = 0;
	__u8 tos = 0;

	/* Entropy goes where there is a field for it: the GUE source port,
	 * the IPv6 flow label, the outer source when a prefix is configured.
	 * Plain IPIP over IPv4 has none; skip the hash. */
	if (backend->encap == PNLB_ENCAP_GUE || pkt->ipv6 || backend->tun_src_entropy_bits)
		hash = pnlb_flow_hash(&pkt->flow, PNLB_HASH_5TUPLE);

	if (!pkt->ipv6) {
		void *data = (void *)(long)ctx->data;
		void *data_end = (void *)(long)ctx->data_end;
		struct iphdr *inner = data + sizeof(struct ethhdr);

		if ((void *)(inner + 1) > data_end)
			return PNLB_DROP_ENCAP_FAILED;
		tos = inner->tos;
	}
	if (bpf_xdp_adjust_head(ctx, -(int)overhead))
		return PNLB_DROP_ENCAP_FAILED;
	if (pkt->ipv6)
		return pnlb_encap_ipv6(ctx, backend, inner_len, hash);
	return pnlb_encap_ipv4(ctx, backend, inner_len, tos, hash);
}

#endif
