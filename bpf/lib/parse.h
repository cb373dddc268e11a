/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Packet classification: Ethernet -> IPv4/IPv6 -> TCP/UDP, into a flow key.
 * The VIP check comes as early as the headers allow, so traffic that is not
 * ours goes to the kernel untouched; only traffic to a VIP is held to the
 * stricter rules (no IPv4 options, no IPv6 extension headers but the
 * fragment header) because those are what we could forward wrong.
 * Fragments are handled as fragment.h says.
 */
#ifndef PNLB_PARSE_H
#define PNLB_PARSE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "fragment.h"
#include "maps.h"

/* pnlb_parse's verdicts besides a reason: a well-formed TCP/UDP flow to a
 * VIP, or one from a nat/snat backend (a possible reply). */
#define PNLB_PARSE_TO_VIP (-1)
#define PNLB_PARSE_FROM_BACKEND (-2)
/* An ICMP error that may quote a translated flow (see icmp.h). */
#define PNLB_PARSE_ICMP_ERROR (-3)
/* Within parse: a packet its VIP filter bit let through is not a VIP's. */
#define PNLB_PARSE_NOT_VIP (-4)

#define PNLB_TCP_FIN 0x01
#define PNLB_TCP_SYN 0x02
#define PNLB_TCP_RST 0x04
#define PNLB_TCP_ACK 0x10

#define PNLB_IP_DF 0x4000
#define PNLB_IP_MF 0x2000
#define PNLB_IP_OFFSET 0x1fff

struct pnlb_packet {
	struct pnlb_flow_key flow;
	__u32 len; /* bytes on the wire, for counters */
	__u8 ipv6;
	__u8 tcp_flags; /* PNLB_TCP_*, 0 for UDP */
	__u8 ttl; /* TTL / hop limit as it arrived */
	__u8 dont_fragment; /* IPv4 DF */
	__u8 fragment; /* enum pnlb_fragment_kind */
	__u8 ipv6_frag_header; /* the L4 header is 8 bytes further */
	__u32 fragment_id;
};

/* Headers are fixed-size once parsed: no IPv4 options, no IPv6 extension
 * headers. Rewrites find them at these offsets. */
#define PNLB_L3_OFFSET 14
#define PNLB_L4_OFFSET_V4 (14 + 20)
#define PNLB_L4_OFFSET_V6 (14 + 40)

static __always_inline int pnlb_reason_is_pass(int reason)
{
	return reason <= PNLB_PASS_VIP_OTHER_PROTO || reason == PNLB_PASS_NO_NEIGH;
}

static __always_inline void pnlb_addr_from_ipv4(struct pnlb_addr *addr, __be32 ip)
{
	addr->words[0] = 0;
	addr->words[1] = 0;
	addr->words[2] = bpf_htonl(0x0000ffff);
	addr->words[3] = ip;
}

static __always_inline void pnlb_addr_from_ipv6(struct pnlb_addr *addr,
						const struct in6_addr *ip)
{
	addr->words[0] = ip->in6_u.u6_addr32[0];
	addr->words[1] = ip->in6_u.u6_addr32[1];
	addr->words[2] = ip->in6_u.u6_addr32[2];
	addr->words[3] = ip->in6_u.u6_addr32[3];
}

/* The address's bit in an address filter (pnlb_address_filter_limits). */
static __always_inline __u32 pnlb_address_filter_bit(const struct pnlb_addr *addr)
{
	__u32 h = addr->words[0] ^ addr->words[1] ^ addr->words[2] ^ addr->words[3];

	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	h *= 0x846ca68b;
	h ^= h >> 16;
	return h % PNLB_ADDRESS_FILTER_BITS;
}

/* Whether the set `filter` stands in front of may hold `addr`. */
static __always_inline int pnlb_may_hold(void *filter, const struct pnlb_addr *addr)
{
	__u32 bit = pnlb_address_filter_bit(addr), index = bit / 64;
	__u64 *word = bpf_map_lookup_elem(filter, &index);

	return !word || (*word >> (bit % 64)) & 1;
}

/* Whether pnlb_vips itself holds `addr` (its filter bit aside). */
static __always_inline int pnlb_vip_set_holds(const struct pnlb_addr *addr)
{
	return bpf_map_lookup_elem(&pnlb_vips, addr) != NULL;
}

static __always_inline int pnlb_is_vip(const struct pnlb_addr *addr)
{
	return pnlb_may_hold(&pnlb_vip_filter, addr) && pnlb_vip_set_holds(addr);
}

/*
 * Whether parse may take a packet to `addr` for a VIP's: its filter bit is
 * set. A TCP/UDP packet so taken is confirmed by its service's lookup
 * (every service's VIP is in pnlb_vips), which spares the lookup of
 * pnlb_vips on the path of every forwarded packet; one parse would refuse
 * is confirmed here first (pnlb_vip_refusal), as what is not a VIP is the
 * kernel's, untouched.
 */
static __always_inline int pnlb_may_be_vip(const struct pnlb_addr *addr)
{
	return pnlb_may_hold(&pnlb_vip_filter, addr);
}

/* Parse's verdict on a packet it took for a VIP's: TO_VIP stands until
 * the service lookup; another stands only for a VIP (PNLB_PARSE_NOT_VIP:
 * not one). */
static __always_inline int pnlb_vip_refusal(const struct pnlb_packet *pkt, int verdict)
{
	if (verdict == PNLB_PARSE_TO_VIP || pnlb_vip_set_holds(&pkt->flow.dst))
		return verdict;
	return PNLB_PARSE_NOT_VIP;
}

/* ICMPv4 destination unreachable, time exceeded, parameter problem. */
static __always_inline int pnlb_icmp_type_is_error(__u8 type)
{
	return type == 3 || type == 11 || type == 12;
}

static __always_inline int pnlb_is_backend(const struct pnlb_addr *addr)
{
	return pnlb_may_hold(&pnlb_backend_filter, addr) &&
	       bpf_map_lookup_elem(&pnlb_backend_addrs, addr) != NULL;
}

/* The ports (and TCP flags) of the L4 header at `l4`, of which the IP
 * header says `l4_len` bytes are the datagram's: a header that reaches past
 * them is not this datagram's, whatever bytes follow in the frame. */
static __always_inline int pnlb_parse_ports(void *l4, void *data_end,
					    struct pnlb_packet *pkt, __u32 l4_len)
{
	if (pkt->flow.protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end || l4_len < sizeof(*tcp))
			return PNLB_DROP_TRUNCATED_L4;
		if (tcp->doff < 5 || (__u32)tcp->doff * 4 > l4_len)
			return PNLB_DROP_TRUNCATED_L4;
		pkt->flow.src_port = tcp->source;
		pkt->flow.dst_port = tcp->dest;
		pkt->tcp_flags = ((__u8 *)tcp)[13];
		return PNLB_PARSE_TO_VIP;
	}
	if (pkt->flow.protocol == IPPROTO_UDP) {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end || l4_len < sizeof(*udp))
			return PNLB_DROP_TRUNCATED_L4;
		pkt->flow.src_port = udp->source;
		pkt->flow.dst_port = udp->dest;
		return PNLB_PARSE_TO_VIP;
	}
	return PNLB_PASS_VIP_OTHER_PROTO;
}

/* TCP fragments at offset 8 bytes could rewrite the ports and flags of
 * the first on reassembly (RFC 1858): never from an honest sender. */
#define PNLB_TINY_OFFSET 1

/*
 * The ports of a TCP/UDP packet: from its L4 header, or for a later
 * fragment from its first fragment. PNLB_PARSE_TO_VIP or the reason not to
 * forward.
 */
static __always_inline int pnlb_parse_l4(void *l4, void *data_end, struct pnlb_packet *pkt,
					 __u16 offset_units, __u32 l4_len)
{
	if (pkt->fragment != PNLB_LATER_FRAGMENT)
		return pnlb_parse_ports(l4, data_end, pkt, l4_len);
	if (pkt->flow.protocol != IPPROTO_TCP && pkt->flow.protocol != IPPROTO_UDP)
		return PNLB_PASS_VIP_OTHER_PROTO;
	if (pkt->flow.protocol == IPPROTO_TCP && offset_units == PNLB_TINY_OFFSET)
		return PNLB_DROP_FRAGMENT;
	if (pnlb_fragment_ports(&pkt->flow, pkt->fragment_id))
		return PNLB_DROP_FRAGMENT;
	return PNLB_PARSE_TO_VIP;
}

static __always_inline int pnlb_parse_ipv4(void *l3, void *data_end,
					   struct pnlb_packet *pkt)
{
	struct iphdr *ip = l3;
	__u16 offset = 0;
	__u32 total, l4_len;
	int cut_short, verdict;

	if ((void *)(ip + 1) > data_end)
		return PNLB_DROP_TRUNCATED_IP;
	total = bpf_ntohs(ip->tot_len);
	if (ip->version != 4 || ip->ihl < 5 || total < (__u32)ip->ihl * 4)
		return PNLB_DROP_BAD_IP_HEADER;
	/* A frame may be padded past its datagram, never cut short of it. */
	cut_short = total > (__u32)(data_end - l3);
	l4_len = total - (__u32)ip->ihl * 4;

	pnlb_addr_from_ipv4(&pkt->flow.dst, ip->daddr);
	pnlb_addr_from_ipv4(&pkt->flow.src, ip->saddr);
	pkt->flow.protocol = ip->protocol;
	pkt->ttl = ip->ttl;
	pkt->dont_fragment = !!(ip->frag_off & bpf_htons(PNLB_IP_DF));
	if (ip->protocol == IPPROTO_ICMP && ip->ihl == 5 &&
	    !(ip->frag_off & bpf_htons(PNLB_IP_MF | PNLB_IP_OFFSET))) {
		__u8 *type = (void *)(ip + 1);

		if ((void *)(type + 1) <= data_end && pnlb_icmp_type_is_error(*type))
			return PNLB_PARSE_ICMP_ERROR;
	}
	if (ip->frag_off & bpf_htons(PNLB_IP_MF | PNLB_IP_OFFSET)) {
		pkt->fragment_id = ip->id;
		offset = bpf_ntohs(ip->frag_off) & PNLB_IP_OFFSET;
		pkt->fragment = offset ? PNLB_LATER_FRAGMENT : PNLB_FIRST_FRAGMENT;
	}
	if (pnlb_may_be_vip(&pkt->flow.dst)) {
		if (cut_short)
			verdict = PNLB_DROP_BAD_IP_HEADER;
		else if (ip->ihl != 5)
			verdict = PNLB_DROP_IPV4_OPTIONS;
		else
			verdict = pnlb_parse_l4(ip + 1, data_end, pkt, offset, l4_len);
		verdict = pnlb_vip_refusal(pkt, verdict);
		if (verdict != PNLB_PARSE_NOT_VIP)
			return verdict;
	}
	/* Maybe a reply from a nat/snat backend. What we could not translate
	 * safely is the kernel's, untouched. */
	if (!pnlb_is_backend(&pkt->flow.src) || ip->ihl != 5 || cut_short)
		return PNLB_PASS_NOT_SERVICE;
	if (pnlb_parse_l4(ip + 1, data_end, pkt, offset, l4_len) != PNLB_PARSE_TO_VIP)
		return PNLB_PASS_NOT_SERVICE;
	return PNLB_PARSE_FROM_BACKEND;
}

/* An IPv6 packet to a VIP: PNLB_PARSE_TO_VIP for well-formed TCP/UDP, or
 * the reason it is not forwarded. */
static __always_inline int pnlb_parse_to_vip6(void *l4, void *data_end,
					      struct pnlb_packet *pkt, __u16 offset,
					      __u32 l4_len, int cut_short)
{
	if (cut_short)
		return PNLB_DROP_BAD_IP_HEADER;
	switch (pkt->flow.protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		break;
	case IPPROTO_FRAGMENT:
		return PNLB_DROP_FRAGMENT;
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_DSTOPTS:
	case IPPROTO_AH:
	case IPPROTO_MH:
		return PNLB_DROP_IPV6_EXT_HEADER;
	default:
		return PNLB_PASS_VIP_OTHER_PROTO;
	}
	return pnlb_parse_l4(l4, data_end, pkt, offset, l4_len);
}

static __always_inline int pnlb_parse_ipv6(void *l3, void *data_end,
					   struct pnlb_packet *pkt)
{
	struct ipv6hdr *ip6 = l3;
	void *l4 = ip6 + 1;
	__u16 offset = 0;
	__u32 l4_len;
	int cut_short, verdict;

	if ((void *)(ip6 + 1) > data_end)
		return PNLB_DROP_TRUNCATED_IP;
	if (ip6->version != 6)
		return PNLB_DROP_BAD_IP_HEADER;
	l4_len = bpf_ntohs(ip6->payload_len);
	cut_short = l4_len > (__u32)(data_end - (void *)(ip6 + 1));

	pkt->ipv6 = 1;
	pnlb_addr_from_ipv6(&pkt->flow.dst, &ip6->daddr);
	pnlb_addr_from_ipv6(&pkt->flow.src, &ip6->saddr);
	pkt->flow.protocol = ip6->nexthdr;
	pkt->ttl = ip6->hop_limit;
	if (ip6->nexthdr == IPPROTO_ICMPV6) {
		__u8 *type = (void *)(ip6 + 1);

		/* 1..4: unreachable, too big, time exceeded, parameter problem */
		if ((void *)(type + 1) <= data_end && *type >= 1 && *type <= 4)
			return PNLB_PARSE_ICMP_ERROR;
	}
	if (ip6->nexthdr == IPPROTO_FRAGMENT) {
		struct pnlb_ipv6_frag *frag = (void *)(ip6 + 1);

		/* Truncated: left as protocol 44, which nothing forwards. */
		if ((void *)(frag + 1) <= data_end) {
			pkt->flow.protocol = frag->nexthdr;
			pkt->ipv6_frag_header = 1;
			pkt->fragment_id = frag->identification;
			offset = bpf_ntohs(frag->frag_off) >> 3;
			pkt->fragment = offset ? PNLB_LATER_FRAGMENT : PNLB_FIRST_FRAGMENT;
			l4 = frag + 1;
			l4_len = l4_len > sizeof(*frag) ? l4_len - sizeof(*frag) : 0;
		}
	}
	if (pnlb_may_be_vip(&pkt->flow.dst)) {
		verdict = pnlb_vip_refusal(pkt, pnlb_parse_to_vip6(l4, data_end, pkt, offset,
								   l4_len, cut_short));
		if (verdict != PNLB_PARSE_NOT_VIP)
			return verdict;
	}
	if (!pnlb_is_backend(&pkt->flow.src) || cut_short ||
	    pnlb_parse_l4(l4, data_end, pkt, offset, l4_len) != PNLB_PARSE_TO_VIP)
		return PNLB_PASS_NOT_SERVICE;
	return PNLB_PARSE_FROM_BACKEND;
}

/* Fills pkt and returns PNLB_PARSE_TO_VIP / _FROM_BACKEND, or the reason not
 * to forward. */
static __always_inline int pnlb_parse(struct xdp_md *ctx, struct pnlb_packet *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	__builtin_memset(pkt, 0, sizeof(*pkt));
	pkt->len = data_end - data;

	if ((void *)(eth + 1) > data_end)
		return PNLB_DROP_TRUNCATED_ETH;

	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return pnlb_parse_ipv4(eth + 1, data_end, pkt);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return pnlb_parse_ipv6(eth + 1, data_end, pkt);
	return PNLB_PASS_NOT_IP;
}

#endif
