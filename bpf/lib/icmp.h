/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ICMP errors about translated flows (destination unreachable, fragmentation
 * needed / packet too big, time exceeded, parameter problem), translated in
 * both directions so that path-MTU discovery and error reporting work
 * through nat and snat:
 *
 *   - from the client side, to the VIP, quoting a reply we sent
 *     (VIP -> client): goes to the backend, quoting what the backend sent;
 *   - from the backend side, quoting a packet we sent to the backend:
 *     goes to the client from the VIP, quoting what the client sent.
 *
 * For dr there is nothing to translate: an error about a reply (sent by a
 * backend with the VIP as source) reaches us because the VIP routes here,
 * and goes on unchanged to the backend that owns the flow, as Katran does.
 *
 * The quoted (inner) packet is the reverse of a connection-table key, so
 * the entry found tells both the inner and the outer rewrite. Every changed
 * word is folded into each checksum that covers it: the inner IPv4 header
 * and L4 checksums (the latter when quoted), the ICMP checksum (which covers
 * the inner packet, and for ICMPv6 the outer addresses too), and the outer
 * IPv4 header checksum.
 */
#ifndef PNLB_ICMP_H
#define PNLB_ICMP_H

#include <linux/icmp.h>
#include <linux/icmpv6.h>
#include "conntrack.h"
#include "csum.h"
#include "maps.h"
#include "parse.h"

#define PNLB_ICMP_OFFSET_V4 PNLB_L4_OFFSET_V4
#define PNLB_INNER_L3_V4 (PNLB_ICMP_OFFSET_V4 + 8)
#define PNLB_INNER_L4_V4 (PNLB_INNER_L3_V4 + 20)
#define PNLB_ICMP_OFFSET_V6 PNLB_L4_OFFSET_V6
#define PNLB_INNER_L3_V6 (PNLB_ICMP_OFFSET_V6 + 8)
#define PNLB_INNER_L4_V6 (PNLB_INNER_L3_V6 + 40)

/* Folds one changed word into up to three checksums (NULL = not covered). */
static __always_inline void pnlb_fold2(__u16 from, __u16 to, __u16 *a, __u16 *b, __u16 *c)
{
	if (a)
		pnlb_csum_replace2(a, from, to);
	if (b)
		pnlb_csum_replace2(b, from, to);
	if (c)
		pnlb_csum_replace2(c, from, to);
}

static __always_inline void pnlb_set32(__u32 *field, __u32 to, __u16 *a, __u16 *b, __u16 *c)
{
	__u32 from = *field;

	if (from == to)
		return;
	pnlb_fold2((__u16)(from >> 16), (__u16)(to >> 16), a, b, c);
	pnlb_fold2((__u16)from, (__u16)to, a, b, c);
	*field = to;
}

static __always_inline void pnlb_set16(__u16 *field, __u16 to, __u16 *a, __u16 *b)
{
	if (*field == to)
		return;
	pnlb_fold2(*field, to, a, b, NULL);
	*field = to;
}

/* The inner L4 checksum, if quoted (TCP's sits past the first 8 bytes). */
static __always_inline __u16 *pnlb_inner_l4_check(void *l4, void *data_end, __u8 protocol)
{
	if (protocol == IPPROTO_UDP) {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end || udp->check == 0)
			return NULL;
		return &udp->check;
	}
	if (protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(&tcp->check + 1) > data_end)
			return NULL;
		return &tcp->check;
	}
	return NULL;
}

/* The entry whose key is the reverse of the quoted packet. */
static __always_inline struct pnlb_conn *pnlb_icmp_conn(const struct pnlb_addr *inner_src,
							const struct pnlb_addr *inner_dst,
							const __u16 *inner_ports, __u8 protocol,
							struct pnlb_flow_key *key)
{
	int table;

	__builtin_memset(key, 0, sizeof(*key));
	key->src = *inner_dst;
	key->dst = *inner_src;
	key->src_port = inner_ports[1];
	key->dst_port = inner_ports[0];
	key->protocol = protocol;
	return pnlb_conn_find(key, &table);
}

/* The outer source keeps the ICMP sender unless the entry rewrites sources
 * (snat towards backends; the VIP towards clients). */
static __always_inline int pnlb_icmp_rewrites_source(const struct pnlb_conn *conn,
						     const struct pnlb_flow_key *key)
{
	const __u32 *a = conn->rewrite_src.words, *b = key->src.words;

	return a[0] != b[0] || a[1] != b[1] || a[2] != b[2] || a[3] != b[3];
}

/* Translates an IPv4 ICMP error in place; returns the entry it matched
 * (NULL: not about one of our flows). */
static __always_inline struct pnlb_conn *pnlb_icmp4_translate(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + PNLB_L3_OFFSET;
	struct icmphdr *icmp = data + PNLB_ICMP_OFFSET_V4;
	struct iphdr *inner = data + PNLB_INNER_L3_V4;
	__u16 *ports = data + PNLB_INNER_L4_V4;
	struct pnlb_addr inner_src, inner_dst;
	struct pnlb_flow_key key;
	struct pnlb_conn *conn;
	__u16 *l4_check, old_inner_check, old_l4_check = 0;

	if ((void *)(ports + 4) > data_end || (void *)(ip + 1) > data_end ||
	    (void *)(icmp + 1) > data_end || (void *)(inner + 1) > data_end)
		return NULL;
	if (inner->version != 4 || inner->ihl != 5)
		return NULL;
	pnlb_addr_from_ipv4(&inner_src, inner->saddr);
	pnlb_addr_from_ipv4(&inner_dst, inner->daddr);
	conn = pnlb_icmp_conn(&inner_src, &inner_dst, ports, inner->protocol, &key);
	if (!conn || !(conn->flags & PNLB_CONN_F_NAT))
		return conn; /* dr: forwarded as it is */

	l4_check = pnlb_inner_l4_check(ports, data_end, inner->protocol);
	old_inner_check = inner->check;
	if (l4_check)
		old_l4_check = *l4_check;

	/* The quoted packet becomes the reverse of the entry's rewrite. */
	pnlb_set32(&inner->saddr, conn->rewrite_dst.words[3], &inner->check, l4_check, &icmp->checksum);
	pnlb_set32(&inner->daddr, conn->rewrite_src.words[3], &inner->check, l4_check, &icmp->checksum);
	pnlb_set16(&ports[0], conn->rewrite_dport, l4_check, &icmp->checksum);
	pnlb_set16(&ports[1], conn->rewrite_sport, l4_check, &icmp->checksum);
	/* The inner checksum fields are ICMP payload too. */
	pnlb_fold2(old_inner_check, inner->check, &icmp->checksum, NULL, NULL);
	if (l4_check)
		pnlb_fold2(old_l4_check, *l4_check, &icmp->checksum, NULL, NULL);

	pnlb_set32(&ip->daddr, conn->rewrite_dst.words[3], &ip->check, NULL, NULL);
	if (pnlb_icmp_rewrites_source(conn, &key))
		pnlb_set32(&ip->saddr, conn->rewrite_src.words[3], &ip->check, NULL, NULL);
	return conn;
}

static __always_inline void pnlb_set_addr6(__u32 *field, const struct pnlb_addr *to,
					   __u16 *a, __u16 *b, __u16 *c)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		pnlb_set32(&field[i], to->words[i], a, b, c);
}

/* Translates an ICMPv6 error in place; returns the entry it matched. */
static __always_inline struct pnlb_conn *pnlb_icmp6_translate(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + PNLB_L3_OFFSET;
	struct icmp6hdr *icmp6 = data + PNLB_ICMP_OFFSET_V6;
	struct ipv6hdr *inner = data + PNLB_INNER_L3_V6;
	__u16 *ports = data + PNLB_INNER_L4_V6;
	struct pnlb_addr inner_src, inner_dst;
	struct pnlb_flow_key key;
	struct pnlb_conn *conn;
	__u16 *l4_check, old_l4_check = 0;

	if ((void *)(ports + 4) > data_end || (void *)(ip6 + 1) > data_end ||
	    (void *)(icmp6 + 1) > data_end || (void *)(inner + 1) > data_end)
		return NULL;
	if (inner->version != 6)
		return NULL;
	pnlb_addr_from_ipv6(&inner_src, &inner->saddr);
	pnlb_addr_from_ipv6(&inner_dst, &inner->daddr);
	conn = pnlb_icmp_conn(&inner_src, &inner_dst, ports, inner->nexthdr, &key);
	if (!conn || !(conn->flags & PNLB_CONN_F_NAT))
		return conn; /* dr: forwarded as it is */

	l4_check = pnlb_inner_l4_check(ports, data_end, inner->nexthdr);
	if (l4_check)
		old_l4_check = *l4_check;
	pnlb_set_addr6(inner->saddr.in6_u.u6_addr32, &conn->rewrite_dst, l4_check,
		       &icmp6->icmp6_cksum, NULL);
	pnlb_set_addr6(inner->daddr.in6_u.u6_addr32, &conn->rewrite_src, l4_check,
		       &icmp6->icmp6_cksum, NULL);
	pnlb_set16(&ports[0], conn->rewrite_dport, l4_check, &icmp6->icmp6_cksum);
	pnlb_set16(&ports[1], conn->rewrite_sport, l4_check, &icmp6->icmp6_cksum);
	if (l4_check)
		pnlb_fold2(old_l4_check, *l4_check, &icmp6->icmp6_cksum, NULL, NULL);

	/* ICMPv6's checksum covers the outer addresses (pseudo-header). */
	pnlb_set_addr6(ip6->daddr.in6_u.u6_addr32, &conn->rewrite_dst, &icmp6->icmp6_cksum,
		       NULL, NULL);
	if (pnlb_icmp_rewrites_source(conn, &key))
		pnlb_set_addr6(ip6->saddr.in6_u.u6_addr32, &conn->rewrite_src,
			       &icmp6->icmp6_cksum, NULL, NULL);
	return conn;
}

#endif
