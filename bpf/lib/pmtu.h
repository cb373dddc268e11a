/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Path MTU through a tunnel. A client packet that would exceed the egress
 * interface's MTU once encapsulated is answered, as a router would (and as
 * Katran does), with ICMP fragmentation-needed (IPv4, DF set) or
 * packet-too-big (IPv6) from the VIP, carrying the MTU left for the inner
 * packet. The client's kernel lowers its path MTU to the VIP and resends
 * smaller; without this, large uploads through `tun` would black-hole.
 *
 * The answer is built in place: headroom for the new IP + ICMP headers is
 * claimed in front, the original IP header and the start of its payload
 * stay where they are as the quote, and the tail is trimmed.
 */
#ifndef PNLB_PMTU_H
#define PNLB_PMTU_H

#include <linux/icmp.h>
#include <linux/icmpv6.h>
#include "encap.h"
#include "stats.h"

/* Quoted: the offending packet's IP header and this much of its payload
 * (more than the 8 bytes RFC 792 asks for; well within 576 / 1280). */
#define PNLB_TOO_BIG_PAYLOAD 64
#define PNLB_TOO_BIG_QUOTE_V4 (PNLB_IPV4_HLEN + PNLB_TOO_BIG_PAYLOAD)
#define PNLB_TOO_BIG_QUOTE_V6 (PNLB_IPV6_HLEN + PNLB_TOO_BIG_PAYLOAD)
#define PNLB_ICMP_HLEN 8
#define PNLB_ICMP_FRAG_NEEDED 4 /* code of type 3, destination unreachable */
#define PNLB_ICMPV6_TOO_BIG 2

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

/*
 * Makes room for the new headers in front (`head` bytes), trims the frame
 * to the new total and moves the Ethernet addresses to the new front,
 * swapped: the answer goes back where the packet came from. The original
 * IP header stays in place as the start of the quote.
 */
static __always_inline int pnlb_turn_around(struct xdp_md *ctx, int head, __u32 len)
{
	void *data, *data_end;
	struct ethhdr *eth, *old;

	if (bpf_xdp_adjust_head(ctx, -head))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (bpf_xdp_adjust_tail(ctx, (int)len - (int)(data_end - data)))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	old = data + head;
	if ((void *)(old + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, old->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, old->h_dest, ETH_ALEN);
	return 0;
}

static __always_inline int pnlb_icmp4_too_big(struct xdp_md *ctx, __u32 service_id, __u32 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *orig = data + sizeof(struct ethhdr);
	struct ethhdr *eth;
	struct iphdr *ip;
	struct icmphdr *icmp;

	if ((void *)orig + PNLB_TOO_BIG_QUOTE_V4 > data_end)
		return pnlb_service_drop(service_id, PNLB_DROP_TOO_BIG);
	/* Without DF the sender asked to be fragmented, which XDP cannot do. */
	if (!(orig->frag_off & bpf_htons(PNLB_IP_DF)))
		return pnlb_service_drop(service_id, PNLB_DROP_TOO_BIG);

	if (pnlb_turn_around(ctx, PNLB_IPV4_HLEN + PNLB_ICMP_HLEN,
			     sizeof(*eth) + PNLB_IPV4_HLEN + PNLB_ICMP_HLEN + PNLB_TOO_BIG_QUOTE_V4))
		return pnlb_service_drop(service_id, PNLB_DROP_ENCAP_FAILED);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	icmp = (void *)(ip + 1);
	orig = (void *)icmp + PNLB_ICMP_HLEN;
	if ((void *)orig + PNLB_TOO_BIG_QUOTE_V4 > data_end)
		return pnlb_service_drop(service_id, PNLB_DROP_ENCAP_FAILED);

	eth->h_proto = bpf_htons(ETH_P_IP);
	*(__u8 *)ip = 0x45;
	ip->tos = 0;
	ip->tot_len = bpf_htons(PNLB_IPV4_HLEN + PNLB_ICMP_HLEN + PNLB_TOO_BIG_QUOTE_V4);
	ip->id = 0;
	ip->frag_off = bpf_htons(PNLB_IP_DF);
	ip->ttl = PNLB_OUTER_TTL;
	ip->protocol = IPPROTO_ICMP;
	ip->check = 0;
	ip->saddr = orig->daddr; /* from the VIP */
	ip->daddr = orig->saddr; /* to the client */
	ip->check = ~pnlb_csum_fold64(pnlb_sum(ip, PNLB_IPV4_HLEN));

	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = PNLB_ICMP_FRAG_NEEDED;
	icmp->checksum = 0;
	icmp->un.frag.__unused = 0;
	icmp->un.frag.mtu = bpf_htons(mtu);
	icmp->checksum = ~pnlb_csum_fold64(pnlb_sum(icmp, PNLB_ICMP_HLEN + PNLB_TOO_BIG_QUOTE_V4));
	pnlb_service_count(service_id, PNLB_TX_ICMP_TOO_BIG);
	return XDP_TX;
}

static __always_inline int pnlb_icmp6_too_big(struct xdp_md *ctx, __u32 service_id, __u32 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *orig = data + sizeof(struct ethhdr);
	struct ethhdr *eth;
	struct ipv6hdr *ip6;
	struct icmp6hdr *icmp;
	__u64 sum;

	if ((void *)orig + PNLB_TOO_BIG_QUOTE_V6 > data_end)
		return pnlb_service_drop(service_id, PNLB_DROP_TOO_BIG);

	if (pnlb_turn_around(ctx, PNLB_IPV6_HLEN + PNLB_ICMP_HLEN,
			     sizeof(*eth) + PNLB_IPV6_HLEN + PNLB_ICMP_HLEN + PNLB_TOO_BIG_QUOTE_V6))
		return pnlb_service_drop(service_id, PNLB_DROP_ENCAP_FAILED);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip6 = (void *)(eth + 1);
	icmp = (void *)(ip6 + 1);
	orig = (void *)icmp + PNLB_ICMP_HLEN;
	if ((void *)orig + PNLB_TOO_BIG_QUOTE_V6 > data_end)
		return pnlb_service_drop(service_id, PNLB_DROP_ENCAP_FAILED);

	eth->h_proto = bpf_htons(ETH_P_IPV6);
	*(__u32 *)ip6 = bpf_htonl(6 << 28);
	ip6->payload_len = bpf_htons(PNLB_ICMP_HLEN + PNLB_TOO_BIG_QUOTE_V6);
	ip6->nexthdr = IPPROTO_ICMPV6;
	ip6->hop_limit = PNLB_OUTER_TTL;
	ip6->saddr = orig->daddr; /* from the VIP */
	ip6->daddr = orig->saddr; /* to the client */

	icmp->icmp6_type = PNLB_ICMPV6_TOO_BIG;
	icmp->icmp6_code = 0;
	icmp->icmp6_cksum = 0;
	icmp->icmp6_dataun.un_data32[0] = bpf_htonl(mtu);
	sum = pnlb_sum(&ip6->saddr, 32);
	sum += bpf_htonl(PNLB_ICMP_HLEN + PNLB_TOO_BIG_QUOTE_V6);
	sum += bpf_htonl(IPPROTO_ICMPV6);
	sum += pnlb_sum(icmp, PNLB_ICMP_HLEN + PNLB_TOO_BIG_QUOTE_V6);
	icmp->icmp6_cksum = ~pnlb_csum_fold64(sum);
	pnlb_service_count(service_id, PNLB_TX_ICMP_TOO_BIG);
	return XDP_TX;
}

/* Answers a packet that does not fit the tunnel; the verdict to return. */
static __always_inline int pnlb_tun_too_big(struct xdp_md *ctx, __u32 service_id,
					    const struct pnlb_packet *pkt, __u32 mtu,
					    __u32 overhead)
{
	__u32 inner_mtu = mtu > overhead ? mtu - overhead : 0;

	if (pkt->ipv6)
		return pnlb_icmp6_too_big(ctx, service_id, inner_mtu);
	return pnlb_icmp4_too_big(ctx, service_id, inner_mtu);
}

#endif
