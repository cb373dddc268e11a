/* SPDX-License-Identifier: Apache-2.0 */
/* Per-CPU counters: no atomics needed, the control plane sums the CPUs. */
#ifndef PNLB_STATS_H
#define PNLB_STATS_H

#include "maps.h"

static __always_inline void pnlb_count_reason(enum pnlb_reason reason)
{
	__u64 *count = bpf_map_lookup_elem(&pnlb_reason_stats, &reason);

	if (count)
		*count += 1;
}

/* A verdict other than forwarding, with its reason counted. */
static __always_inline int pnlb_pass(enum pnlb_reason reason)
{
	pnlb_count_reason(reason);
	return XDP_PASS;
}

static __always_inline int pnlb_drop(enum pnlb_reason reason)
{
	pnlb_count_reason(reason);
	return XDP_DROP;
}

/* A reason counted for a known service as well as globally. */
static __always_inline void pnlb_service_count(__u32 service_id, enum pnlb_reason reason)
{
	struct pnlb_service_stats *stats =
		bpf_map_lookup_elem(&pnlb_service_stats, &service_id);
	__u32 index = reason;

	/* A reason returned by a global function is no known constant to the
	 * verifier: the bound check must be on the very register used as the
	 * index, which clang would otherwise recompute after the check. */
	barrier_var(index);
	if (stats && index < PNLB_REASON_MAX)
		stats->drops[index] += 1;
	pnlb_count_reason(reason);
}

static __always_inline int pnlb_service_drop(__u32 service_id, enum pnlb_reason reason)
{
	pnlb_service_count(service_id, reason);
	return XDP_DROP;
}

static __always_inline void pnlb_count_forward(__u32 service_id, __u32 backend_id,
					       __u64 bytes, int new_flow)
{
	struct pnlb_service_stats *svc =
		bpf_map_lookup_elem(&pnlb_service_stats, &service_id);
	struct pnlb_backend_stats *be =
		bpf_map_lookup_elem(&pnlb_backend_stats, &backend_id);

	if (svc) {
		svc->packets += 1;
		svc->bytes += bytes;
		svc->new_flows += new_flow;
	}
	if (be) {
		be->packets += 1;
		be->bytes += bytes;
		be->new_flows += new_flow;
	}
}

static __always_inline void pnlb_count_table(enum pnlb_table_counter counter, __u64 n)
{
	__u32 index = counter;
	__u64 *count = bpf_map_lookup_elem(&pnlb_table_stats, &index);

	if (count)
		*count += n;
}

static __always_inline void pnlb_count_reply(__u32 service_id, __u32 backend_id, __u64 bytes)
{
	struct pnlb_service_stats *svc =
		bpf_map_lookup_elem(&pnlb_service_stats, &service_id);
	struct pnlb_backend_stats *be =
		bpf_map_lookup_elem(&pnlb_backend_stats, &backend_id);

	if (svc) {
		svc->reply_packets += 1;
		svc->reply_bytes += bytes;
	}
	if (be) {
		be->reply_packets += 1;
		be->reply_bytes += bytes;
	}
}

#endif
