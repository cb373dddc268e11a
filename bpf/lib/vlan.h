/* SPDX-License-Identifier: Apache-2.0 */
/*
 * 802.1Q VLANs. A frame with one tag is handled as if it had none: the tag
 * is taken off on entry and a tag put back on the way out, for the VLAN
 * the packet leaves on:
 *
 *   - towards a backend, the VLAN of the backend's interface (the control
 *     plane publishes it with the backend; eth0.200 is eth0 with tag 200);
 *   - a routed reply, the VLAN of the interface the FIB chose
 *     (pnlb_vlan_devices maps a VLAN device to its parent and id);
 *   - back where it came from (ICMP answers) and to the kernel (XDP_PASS),
 *     the tag it came with, untouched.
 *
 * A packet that leaves on the VLAN it came on keeps its whole tag
 * (priority bits too); one that moves to another VLAN gets that VLAN's id
 * with priority 0. The XDP program runs on the parent device: VLAN devices
 * have no native XDP and cannot be redirected to. Two tags (QinQ, 802.1ad)
 * are passed to the kernel untouched and counted.
 *
 * How the egress VLAN travels back to the entry point: forwarding paths
 * return their verdict with PNLB_EGRESS_VLAN(vid) or-ed in; a bare
 * verdict means "the ingress tag".
 */
#ifndef PNLB_VLAN_H
#define PNLB_VLAN_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "pnlb_abi.h"

#define PNLB_ETH_P_8021Q 0x8100
#define PNLB_ETH_P_8021AD 0x88a8
#define PNLB_VLAN_HLEN 4
#define PNLB_VLAN_VID_MASK 0x0fff

#define PNLB_EGRESS_SET 0x100
#define PNLB_EGRESS_VLAN(vid) (PNLB_EGRESS_SET | ((__u32)(vid) << 16))
#define PNLB_VERDICT(ret) ((ret) & 0xff)

/* VLAN devices (by ifindex) on the interfaces pnlb is attached to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct pnlb_vlan_device);
} pnlb_vlan_devices SEC(".maps");

struct pnlb_vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

/*
 * Takes a single 802.1Q tag off an IP frame. Returns its TCI (host order,
 * with bit 16 set so that VLAN 0 with priority still counts as tagged), 0
 * when untagged, or -1 for what stays as it is: QinQ, a tag over anything
 * but IP, a truncated tag.
 */
static __always_inline int pnlb_vlan_pop(struct xdp_md *ctx, int *qinq)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct pnlb_vlan_hdr *vlan = (void *)(eth + 1);
	__u8 macs[2 * ETH_ALEN];
	__u16 tci;

	*qinq = 0;
	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto == bpf_htons(PNLB_ETH_P_8021AD)) {
		*qinq = 1;
		return -1;
	}
	if (eth->h_proto != bpf_htons(PNLB_ETH_P_8021Q))
		return 0;
	if ((void *)(vlan + 1) > data_end)
		return -1;
	if (vlan->encapsulated_proto == bpf_htons(PNLB_ETH_P_8021Q) ||
	    vlan->encapsulated_proto == bpf_htons(PNLB_ETH_P_8021AD)) {
		*qinq = 1;
		return -1;
	}
	if (vlan->encapsulated_proto != bpf_htons(ETH_P_IP) &&
	    vlan->encapsulated_proto != bpf_htons(ETH_P_IPV6))
		return -1;
	tci = bpf_ntohs(vlan->tci);
	__builtin_memcpy(macs, eth, sizeof(macs));
	if (bpf_xdp_adjust_head(ctx, PNLB_VLAN_HLEN))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	/* The encapsulated protocol is where h_proto now sits. */
	__builtin_memcpy(eth, macs, sizeof(macs));
	return (1 << 16) | tci;
}

/* Puts a tag with `tci` (host order) in front; 0, or -1 if there is no
 * room (the caller drops). */
static __always_inline int pnlb_vlan_push(struct xdp_md *ctx, __u16 tci)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct pnlb_vlan_hdr *vlan;
	__u8 macs[2 * ETH_ALEN];

	if (bpf_xdp_adjust_head(ctx, -PNLB_VLAN_HLEN))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	vlan = (void *)(eth + 1);
	if ((void *)(vlan + 1) > data_end)
		return -1;
	__builtin_memcpy(macs, data + PNLB_VLAN_HLEN, sizeof(macs));
	__builtin_memcpy(eth, macs, sizeof(macs));
	eth->h_proto = bpf_htons(PNLB_ETH_P_8021Q);
	/* vlan->encapsulated_proto is the old h_proto, already in place. */
	vlan->tci = bpf_htons(tci);
	return 0;
}

/* The VLAN of an egress interface the FIB chose: its parent (to send on)
 * and id, or the interface itself with no VLAN. */
static __always_inline __u32 pnlb_vlan_parent(__u32 ifindex, __u16 *vid)
{
	struct pnlb_vlan_device *device = bpf_map_lookup_elem(&pnlb_vlan_devices, &ifindex);

	if (!device) {
		*vid = 0;
		return ifindex;
	}
	*vid = device->vid;
	return device->parent_ifindex;
}

#endif
