// SPDX-License-Identifier: Apache-2.0
/*
 * `pnlb decap`: the real-server side of tun, for kernels without the ipip,
 * ip6_tunnel or fou modules. Strips IPIP / IP6IP6 / GUE addressed to one of
 * this host's addresses and passes the inner packet to the stack, as if it
 * had arrived bare on this interface (the VIP sits on lo, so the stack
 * takes it and answers the client directly). Everything else passes
 * untouched; the stack decides about it as it would without us.
 *
 * Unwrapping is a way around uRPF and interface ACLs (the stack sees the
 * inner source, not the tunnel's), so it is limited: the tunnel must come
 * from one of the load balancers' prefixes (`--from`, when given) and the
 * inner packet must be addressed to this host (the VIP on lo) or to a
 * `--vip`; other tunnel packets pass untouched, counted.
 *
 * GUE: variant 1 (the inner IP header right after UDP, what pnlb sends)
 * and variant 0 with a 4-byte header, no extension fields, protocol 4 or
 * 41 (what Linux fou sends). Control messages and flags: left alone.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "pnlb_abi.h"

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* The GUE port to strip, network order; set by `pnlb decap` before load. */
const volatile __u16 gue_port = bpf_htons(6080);

/* Whether tunnels are accepted only from pnlb_decap_from; set before load. */
const volatile __u8 filter_sources = 0;

/* BTF anchor for libbpf-cargo (see lb.bpf.c). */
const volatile struct {
	enum pnlb_decap_counter counter;
} pnlb_decap_abi_anchor;

/* This host's addresses (IPv4-mapped for IPv4), kept current by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct pnlb_addr);
	__type(value, __u8);
} pnlb_decap_addrs SEC(".maps");

/* The load balancers' source prefixes (`--from`). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct pnlb_decap_prefix);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} pnlb_decap_from SEC(".maps");

/* Inner destinations accepted besides this host's addresses (`--vip`). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct pnlb_addr);
	__type(value, __u8);
} pnlb_decap_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PNLB_DECAP_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} pnlb_decap_stats SEC(".maps");

static __always_inline int verdict(__u32 counter, int action)
{
	__u64 *count = bpf_map_lookup_elem(&pnlb_decap_stats, &counter);

	if (count)
		*count += 1;
	return action;
}

static __always_inline int is_local(const struct pnlb_addr *addr)
{
	return bpf_map_lookup_elem(&pnlb_decap_addrs, addr) != NULL;
}

/*
 * What follows the outer IP header: which inner family, how many bytes
 * of outer headers to strip after the outer IP header, and which counter.
 * Returns 0, or the counter of a pass verdict.
 */
struct inner {
	__u16 proto; /* ETH_P_IP / ETH_P_IPV6 */
	__u32 skip;
	__u32 counter;
};

static __always_inline int gue_inner(void *udp_start, void *data_end, struct inner *in)
{
	struct udphdr *udp = udp_start;
	__u8 *first = (void *)(udp + 1);

	if ((void *)(first + 4) > data_end)
		return PNLB_DECAP_PASS_MALFORMED;
	in->counter = PNLB_DECAP_GUE;
	switch (*first >> 6) {
	case 1: /* variant 1: the inner IP header itself */
		in->skip = sizeof(*udp);
		in->proto = (*first >> 4) == 4 ? ETH_P_IP : ETH_P_IPV6;
		return 0;
	case 0: /* variant 0: ver 0, C 0, hlen 0, proto 4 or 41, flags 0 */
		if ((first[0] & 0x3f) || first[2] || first[3])
			return PNLB_DECAP_PASS_MALFORMED;
		if (first[1] != IPPROTO_IPIP && first[1] != IPPROTO_IPV6)
			return PNLB_DECAP_PASS_MALFORMED;
		in->skip = sizeof(*udp) + 4;
		in->proto = first[1] == IPPROTO_IPIP ? ETH_P_IP : ETH_P_IPV6;
		return 0;
	default:
		return PNLB_DECAP_PASS_MALFORMED;
	}
}

/* Classifies the payload of an outer header whose protocol is `proto`. */
static __always_inline int tunnel_inner(__u8 proto, void *payload, void *data_end,
					struct inner *in)
{
	struct udphdr *udp = payload;

	switch (proto) {
	case IPPROTO_IPIP:
		in->proto = ETH_P_IP;
		in->skip = 0;
		in->counter = PNLB_DECAP_IPIP;
		return 0;
	case IPPROTO_IPV6:
		in->proto = ETH_P_IPV6;
		in->skip = 0;
		in->counter = PNLB_DECAP_IPIP;
		return 0;
	case IPPROTO_UDP:
		if ((void *)(udp + 1) > data_end)
			return PNLB_DECAP_PASS_MALFORMED;
		if (udp->dest != gue_port)
			return PNLB_DECAP_PASS_OTHER;
		return gue_inner(payload, data_end, in);
	default:
		return PNLB_DECAP_PASS_OTHER;
	}
}

/* The inner header must be there and be what the outer says it is; its
 * destination goes to `dst`. */
static __always_inline int inner_ok(void *inner, void *data_end, __u16 proto,
				    struct pnlb_addr *dst)
{
	__u8 *version = inner;

	if (proto == ETH_P_IP) {
		struct iphdr *ip = inner;

		if ((void *)(ip + 1) > data_end || (*version >> 4) != 4)
			return 0;
		dst->words[0] = 0;
		dst->words[1] = 0;
		dst->words[2] = bpf_htonl(0x0000ffff);
		dst->words[3] = ip->daddr;
		return 1;
	}
	struct ipv6hdr *ip6 = inner;

	if ((void *)(ip6 + 1) > data_end || (*version >> 4) != 6)
		return 0;
	__builtin_memcpy(dst->words, &ip6->daddr, sizeof(dst->words));
	return 1;
}

/* Whether a tunnel from `src` may be unwrapped here (`--from`). */
static __always_inline int from_a_balancer(const struct pnlb_addr *src)
{
	struct pnlb_decap_prefix key = { .prefixlen = 128 };

	if (!filter_sources)
		return 1;
	__builtin_memcpy(&key.addr, src, sizeof(key.addr));
	return bpf_map_lookup_elem(&pnlb_decap_from, &key) != NULL;
}

/* Whether the inner packet is for this host or a `--vip`. */
static __always_inline int inner_is_ours(const struct pnlb_addr *dst)
{
	return is_local(dst) || bpf_map_lookup_elem(&pnlb_decap_vips, dst) != NULL;
}

SEC("xdp")
int pnlb_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct pnlb_addr dst = {}, src = {}, inner_dst = {};
	struct inner in = {};
	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];
	__u32 outer_ip;
	void *payload;
	int pass;

	if ((void *)(eth + 1) > data_end)
		return verdict(PNLB_DECAP_PASS_OTHER, XDP_PASS);

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return verdict(PNLB_DECAP_PASS_OTHER, XDP_PASS);
		if (ip->protocol != IPPROTO_IPIP && ip->protocol != IPPROTO_IPV6 &&
		    ip->protocol != IPPROTO_UDP)
			return verdict(PNLB_DECAP_PASS_OTHER, XDP_PASS);
		dst.words[2] = bpf_htonl(0x0000ffff);
		dst.words[3] = ip->daddr;
		src.words[2] = dst.words[2];
		src.words[3] = ip->saddr;
		if (!is_local(&dst))
			return verdict(PNLB_DECAP_PASS_NOT_LOCAL, XDP_PASS);
		if (ip->ihl != 5 || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
			return verdict(PNLB_DECAP_PASS_MALFORMED, XDP_PASS);
		outer_ip = sizeof(*ip);
		payload = ip + 1;
		pass = tunnel_inner(ip->protocol, payload, data_end, &in);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return verdict(PNLB_DECAP_PASS_OTHER, XDP_PASS);
		if (ip6->nexthdr != IPPROTO_IPIP && ip6->nexthdr != IPPROTO_IPV6 &&
		    ip6->nexthdr != IPPROTO_UDP)
			return verdict(PNLB_DECAP_PASS_OTHER, XDP_PASS);
		__builtin_memcpy(dst.words, &ip6->daddr, sizeof(dst.words));
		__builtin_memcpy(src.words, &ip6->saddr, sizeof(src.words));
		if (!is_local(&dst))
			return verdict(PNLB_DECAP_PASS_NOT_LOCAL, XDP_PASS);
		outer_ip = sizeof(*ip6);
		payload = ip6 + 1;
		pass = tunnel_inner(ip6->nexthdr, payload, data_end, &in);
	} else {
		return verdict(PNLB_DECAP_PASS_OTHER, XDP_PASS);
	}
	if (pass)
		return verdict(pass, XDP_PASS);
	if (!from_a_balancer(&src))
		return verdict(PNLB_DECAP_PASS_FOREIGN, XDP_PASS);
	if (in.skip > 16 || !inner_ok(payload + in.skip, data_end, in.proto, &inner_dst))
		return verdict(PNLB_DECAP_PASS_MALFORMED, XDP_PASS);
	if (!inner_is_ours(&inner_dst))
		return verdict(PNLB_DECAP_PASS_NOT_OURS, XDP_PASS);

	__builtin_memcpy(dmac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(smac, eth->h_source, ETH_ALEN);
	if (bpf_xdp_adjust_head(ctx, (int)(outer_ip + in.skip)))
		return verdict(PNLB_DECAP_FAILED, XDP_PASS);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return verdict(PNLB_DECAP_FAILED, XDP_DROP);
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	eth->h_proto = bpf_htons(in.proto);
	return verdict(in.counter, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
