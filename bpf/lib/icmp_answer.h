/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ICMP errors the data plane sends itself, as a router would: time
 * exceeded (a nat/snat packet whose TTL / hop limit runs out here) and
 * fragmentation needed / packet too big (a packet that does not fit its
 * egress). The answer goes back where the packet came from, quoting it as
 * it arrived (so the sender's stack finds the socket it belongs to), from
 * the address the sender talks to: the VIP towards clients, the SNAT
 * address (snat) or the VIP (nat) towards servers.
 *
 * The answer is built in place: headroom for the new IP + ICMP headers is
 * claimed in front, the offending IP header and the start of its payload
 * stay where they are as the quote, and the tail is trimmed.
 *
 * Answers are rate-limited per CPU, as the kernel limits its own
 * (net.ipv4.icmp_msgs_per_sec): a flood of TTL-1 packets must not turn the
 * balancer into an amplifier. A withheld answer is counted.
 */
#ifndef PNLB_ICMP_ANSWER_H
#define PNLB_ICMP_ANSWER_H

#include <linux/icmp.h>
#include <linux/icmpv6.h>
#include "encap.h"
#include "stats.h"

/* Quoted: the offending packet's IP header and this much of its payload
 * (more than the 8 bytes RFC 792 asks for; well within 576 / 1280), or
 * only 8 bytes when the packet is shorter. */
#define PNLB_QUOTE_LONG 64
#define PNLB_QUOTE_SHORT 8
#define PNLB_ICMP_HLEN 8

#define PNLB_ICMP_FRAG_NEEDED 4 /* code of type 3, destination unreachable */
#define PNLB_ICMPV6_TOO_BIG 2
#define PNLB_ICMP_TIME_EXCEEDED 11
#define PNLB_ICMPV6_TIME_EXCEEDED 3

/* Answers per second per CPU, and how many may go at once. */
#define PNLB_ICMP_RATE 1000
#define PNLB_ICMP_BURST 50

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64); /* theoretical arrival time (GCRA) */
} pnlb_icmp_rate SEC(".maps");

/* What to answer: type, code, the 4 bytes after the checksum (network
 * order: the MTU for too-big) and the source address. */
struct pnlb_icmp_answer {
	struct pnlb_addr src;
	__u32 info;
	__u8 type;
	__u8 code;
	__u8 ipv6;
	__u8 _pad;
	__u32 counted; /* enum pnlb_reason counted when it is sent */
};

static __always_inline int pnlb_icmp_rate_allows(void)
{
	__u64 interval = 1000000000ULL / PNLB_ICMP_RATE, now, base;
	__u32 zero = 0;
	__u64 *tat = bpf_map_lookup_elem(&pnlb_icmp_rate, &zero);

	if (!tat)
		return 0;
	now = bpf_ktime_get_ns();
	base = *tat > now ? *tat : now;
	if (base + interval - now > interval * PNLB_ICMP_BURST)
		return 0;
	*tat = base + interval;
	return 1;
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

static __always_inline int pnlb_icmp4_answer(struct xdp_md *ctx, __u32 service_id,
					     const struct pnlb_icmp_answer *answer, __u32 quote)
{
	__u32 quoted = PNLB_IPV4_HLEN + quote;
	__u32 total = PNLB_IPV4_HLEN + PNLB_ICMP_HLEN + quoted;
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip, *orig;
	struct icmphdr *icmp;

	if (pnlb_turn_around(ctx, PNLB_IPV4_HLEN + PNLB_ICMP_HLEN, sizeof(*eth) + total))
		return pnlb_service_drop(service_id, PNLB_DROP_ENCAP_FAILED);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	icmp = (void *)(ip + 1);
	orig = (void *)icmp + PNLB_ICMP_HLEN;
	if ((void *)orig + quoted > data_end)
		return pnlb_service_drop(service_id, PNLB_DROP_ENCAP_FAILED);

	eth->h_proto = bpf_htons(ETH_P_IP);
	*(__u8 *)ip = 0x45;
	ip->tos = 0;
	ip->tot_len = bpf_htons(total);
	ip->id = 0;
	ip->frag_off = bpf_htons(PNLB_IP_DF);
	ip->ttl = PNLB_OUTER_TTL;
	ip->protocol = IPPROTO_ICMP;
	ip->check = 0;
	ip->saddr = answer->src.words[3];
	ip->daddr = orig->saddr; /* back to the sender */
	ip->check = ~pnlb_csum_fold64(pnlb_sum(ip, PNLB_IPV4_HLEN));

	icmp->type = answer->type;
	icmp->code = answer->code;
	icmp->checksum = 0;
	*(__u32 *)&icmp->un = answer->info;
	icmp->checksum = ~pnlb_csum_fold64(pnlb_sum(icmp, PNLB_ICMP_HLEN + quoted));
	pnlb_service_count(service_id, answer->counted);
	return XDP_TX;
}

static __always_inline int pnlb_icmp6_answer(struct xdp_md *ctx, __u32 service_id,
					     const struct pnlb_icmp_answer *answer, __u32 quote)
{
	__u32 quoted = PNLB_IPV6_HLEN + quote;
	__u32 payload = PNLB_ICMP_HLEN + quoted;
	void *data, *data_end;
	struct ethhdr *eth;
	struct ipv6hdr *ip6, *orig;
	struct icmp6hdr *icmp;
	__u64 sum;

	if (pnlb_turn_around(ctx, PNLB_IPV6_HLEN + PNLB_ICMP_HLEN,
			     sizeof(*eth) + PNLB_IPV6_HLEN + payload))
		return pnlb_service_drop(service_id, PNLB_DROP_ENCAP_FAILED);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip6 = (void *)(eth + 1);
	icmp = (void *)(ip6 + 1);
	orig = (void *)icmp + PNLB_ICMP_HLEN;
	if ((void *)orig + quoted > data_end)
		return pnlb_service_drop(service_id, PNLB_DROP_ENCAP_FAILED);

	eth->h_proto = bpf_htons(ETH_P_IPV6);
	*(__u32 *)ip6 = bpf_htonl(6 << 28);
	ip6->payload_len = bpf_htons(payload);
	ip6->nexthdr = IPPROTO_ICMPV6;
	ip6->hop_limit = PNLB_OUTER_TTL;
	__builtin_memcpy(&ip6->saddr, answer->src.words, 16);
	ip6->daddr = orig->saddr; /* back to the sender */

	icmp->icmp6_type = answer->type;
	icmp->icmp6_code = answer->code;
	icmp->icmp6_cksum = 0;
	icmp->icmp6_dataun.un_data32[0] = answer->info;
	sum = pnlb_sum(&ip6->saddr, 32);
	sum += bpf_htonl(payload);
	sum += bpf_htonl(IPPROTO_ICMPV6);
	sum += pnlb_sum(icmp, payload);
	icmp->icmp6_cksum = ~pnlb_csum_fold64(sum);
	pnlb_service_count(service_id, answer->counted);
	return XDP_TX;
}

/*
 * Sends `answer` about the packet in ctx (its IP header at PNLB_L3_OFFSET);
 * returns the verdict. A global function: verified once, not once per
 * path that answers.
 */
__attribute__((noinline)) int pnlb_icmp_answer(struct xdp_md *ctx, __u32 service_id,
					       const struct pnlb_icmp_answer *answer)
{
	void *data, *data_end;
	__u32 header;

	if (!ctx || !answer)
		return XDP_DROP;
	if (!pnlb_icmp_rate_allows())
		return pnlb_service_drop(service_id, PNLB_DROP_ICMP_RATE_LIMITED);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	header = answer->ipv6 ? PNLB_IPV6_HLEN : PNLB_IPV4_HLEN;
	/* Quote the long way only what the packet holds. */
	if (data + PNLB_L3_OFFSET + header + PNLB_QUOTE_LONG <= data_end) {
		if (answer->ipv6)
			return pnlb_icmp6_answer(ctx, service_id, answer, PNLB_QUOTE_LONG);
		return pnlb_icmp4_answer(ctx, service_id, answer, PNLB_QUOTE_LONG);
	}
	if (answer->ipv6)
		return pnlb_icmp6_answer(ctx, service_id, answer, PNLB_QUOTE_SHORT);
	return pnlb_icmp4_answer(ctx, service_id, answer, PNLB_QUOTE_SHORT);
}

#endif
