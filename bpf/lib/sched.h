/* SPDX-License-Identifier: Apache-2.0 */
/*
 * New-flow scheduling from a precomputed table, built in Rust (pnlb-core's
 * maglev and sched modules) and swapped in whole: hashing schedulers
 * (maglev, sh, dh) index it by the flow hash over the service's hash key,
 * rr/wrr by a per-service cursor that every new flow advances.
 */
#ifndef PNLB_SCHED_H
#define PNLB_SCHED_H

#include "maps.h"
#include "jhash.h"

static __always_inline __u32 pnlb_flow_hash(const struct pnlb_flow_key *flow,
					    __u8 hash_key)
{
	if (hash_key == PNLB_HASH_SOURCE)
		return pnlb_jhash2(flow->src.words, 4, PNLB_HASH_SEED);
	if (hash_key == PNLB_HASH_DESTINATION)
		return pnlb_jhash2(flow->dst.words, 4, PNLB_HASH_SEED);
	return pnlb_jhash2((const __u32 *)flow, sizeof(*flow) / 4, PNLB_HASH_SEED);
}

/* Returns 0 and sets *backend_id, or the drop reason. */
static __always_inline int pnlb_schedule(const struct pnlb_service *svc,
					 const struct pnlb_flow_key *flow,
					 __u32 *backend_id)
{
	__u32 service_id = svc->id;
	void *table = bpf_map_lookup_elem(&pnlb_tables, &service_id);
	__u32 slot, *entry;

	if (!table || svc->table_len == 0 || svc->table_len > PNLB_TABLE_SIZE)
		return PNLB_DROP_NO_BACKEND;

	if (svc->scheduler == PNLB_SCHED_RR || svc->scheduler == PNLB_SCHED_WRR) {
		__u64 *cursor = bpf_map_lookup_elem(&pnlb_sched_cursors, &service_id);

		if (!cursor)
			return PNLB_DROP_NO_BACKEND;
		slot = __sync_fetch_and_add(cursor, 1) % svc->table_len;
	} else {
		slot = pnlb_flow_hash(flow, svc->hash_key) % svc->table_len;
	}
	entry = bpf_map_lookup_elem(table, &slot);
	if (!entry)
		return PNLB_DROP_NO_BACKEND;
	*backend_id = *entry;
	return 0;
}

#endif
