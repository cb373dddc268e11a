// SPDX-License-Identifier: Apache-2.0
/*
 * pnlb XDP entry point: classify -> service lookup -> connection table /
 * scheduler -> forward. Everything slow-changing (services, backends,
 * tables) is decided in userspace and published through maps.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "pnlb_abi.h"
#include "lib/maps.h"
#include "lib/stats.h"
#include "lib/parse.h"
#include "lib/conntrack.h"
#include "lib/forward_dr.h"

/*
 * BTF anchor: makes clang emit every ABI enum into BTF so that libbpf-cargo
 * generates them for Rust. Never read by the program.
 */
const volatile struct {
	enum pnlb_limits limits;
	enum pnlb_hash_seed hash_seed;
	enum pnlb_method method;
	enum pnlb_scheduler scheduler;
	enum pnlb_hash_key hash_key;
	enum pnlb_backend_flags backend_flags;
	enum pnlb_reason reason;
} pnlb_abi_anchor;

static __always_inline struct pnlb_service *pnlb_find_service(const struct pnlb_flow_key *flow)
{
	struct pnlb_service_key key = {};
	struct pnlb_service *svc;

	key.vip = flow->dst;
	key.port = flow->dst_port;
	key.protocol = flow->protocol;
	svc = bpf_map_lookup_elem(&pnlb_services, &key);
	if (svc)
		return svc;
	key.port = 0;
	return bpf_map_lookup_elem(&pnlb_services, &key);
}

SEC("xdp")
int pnlb_xdp(struct xdp_md *ctx)
{
	struct pnlb_backend *backend = NULL;
	struct pnlb_service *svc;
	struct pnlb_packet pkt;
	__u32 backend_id = 0;
	int new_flow = 0;
	int reason;

	reason = pnlb_parse(ctx, &pkt);
	if (reason != PNLB_PARSE_OK) {
		if (pnlb_reason_is_pass(reason))
			return pnlb_pass(reason);
		return pnlb_drop(reason);
	}

	svc = pnlb_find_service(&pkt.flow);
	if (!svc)
		return pnlb_pass(PNLB_PASS_VIP_NO_SERVICE);

	reason = pnlb_conn_backend(svc, &pkt.flow, &backend, &backend_id, &new_flow);
	if (reason)
		return pnlb_service_drop(svc->id, reason);

	switch (svc->method) {
	case PNLB_METHOD_DR:
		pnlb_count_forward(svc->id, backend_id, pkt.len, new_flow);
		return pnlb_forward_l2(ctx, backend);
	default:
		return pnlb_service_drop(svc->id, PNLB_DROP_UNSUPPORTED_METHOD);
	}
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
