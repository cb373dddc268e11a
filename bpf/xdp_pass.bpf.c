// SPDX-License-Identifier: Apache-2.0
/*
 * A program that passes everything. On veth, native XDP_TX/REDIRECT into a
 * device is dropped unless its peer runs an XDP program; the lab attaches
 * this one to those peers.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int pnlb_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
