// SPDX-License-Identifier: Apache-2.0
/*
 * The benchmark ceiling: the least an XDP forwarder can do. Every IPv4
 * packet to the configured address gets the configured MACs and goes back
 * out with XDP_TX; everything else passes. No parsing beyond that, no
 * tables, no counters: what pnlb's data plane costs on top shows against it.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct pnlb_ceiling {
	__u32 vip; /* network order */
	__u8 mac[6];
	__u8 src_mac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pnlb_ceiling);
} pnlb_ceiling_config SEC(".maps");

SEC("xdp")
int pnlb_xdp_ceiling(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct pnlb_ceiling *config;
	__u32 zero = 0;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	config = bpf_map_lookup_elem(&pnlb_ceiling_config, &zero);
	if (!config || ip->daddr != config->vip)
		return XDP_PASS;
	__builtin_memcpy(eth->h_dest, config->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, config->src_mac, ETH_ALEN);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
