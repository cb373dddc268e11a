/* SPDX-License-Identifier: Apache-2.0 */
/*
 * New-flow scheduling from a precomputed table, built in Rust (pnlb-core's
 * maglev and sched modules) and swapped in whole: hashing schedulers
 * (maglev, sh, dh) index it by the flow hash over the service's hash key,
 * rr/wrr by a per-service cursor that every new flow advances. The table
 * carries its own lengths in a header (enum pnlb_table_slot), so a packet
 * never pairs one version's slots with another's length.
 */
#ifndef PNLB_SCHED_H
#define PNLB_SCHED_H

#include "maps.h"
#include "jhash.h"
#include "load.h"

static __always_inline __u32 pnlb_flow_hash(const struct pnlb_flow_key *flow,
					    __u8 hash_key)
{
	if (hash_key == PNLB_HASH_SOURCE)
		return pnlb_jhash2(flow->src.words, 4, pnlb_hash_seed);
	if (hash_key == PNLB_HASH_DESTINATION)
		return pnlb_jhash2(flow->dst.words, 4, pnlb_hash_seed);
	return pnlb_jhash2((const __u32 *)flow, sizeof(*flow) / 4, pnlb_hash_seed);
}

/* One published table: its map and the lengths from its own header. */
struct pnlb_table_view {
	void *map;
	__u32 len;      /* slots of the scheduling part */
	__u32 list_len; /* chbl: backend ids before it */
};

static __always_inline int pnlb_table_view(__u32 service_id, struct pnlb_table_view *view)
{
	__u32 len_slot = PNLB_TABLE_LEN_SLOT, list_slot = PNLB_TABLE_LIST_SLOT;
	__u32 *len, *list_len;

	view->map = bpf_map_lookup_elem(&pnlb_tables, &service_id);
	if (!view->map)
		return -1;
	len = bpf_map_lookup_elem(view->map, &len_slot);
	list_len = bpf_map_lookup_elem(view->map, &list_slot);
	if (!len || !list_len)
		return -1;
	view->len = *len;
	view->list_len = *list_len;
	if (view->len == 0 || view->len > PNLB_TABLE_SIZE ||
	    view->list_len > PNLB_MAX_LEAST_BACKENDS)
		return -1;
	return 0;
}

/* The next full-free backend from `slot` on (max_conns), bounded. */
#define PNLB_FULL_SKIP 16

static __always_inline int pnlb_pick_from_slot(const struct pnlb_table_view *table, __u32 slot,
					       __u32 *backend_id)
{
	for (__u32 step = 0; step < PNLB_FULL_SKIP; step++) {
		__u32 at = PNLB_TABLE_HEADER + (slot + step) % table->len;
		__u32 *entry = bpf_map_lookup_elem(table->map, &at);
		struct pnlb_backend *backend;
		__u32 id;

		if (!entry)
			return PNLB_DROP_NO_BACKEND;
		id = *entry;
		backend = pnlb_backend_get(id);
		if (backend && !pnlb_backend_full(backend, id)) {
			*backend_id = id;
			return 0;
		}
	}
	return PNLB_DROP_BACKENDS_FULL;
}

/* The least-load family: one pass over the listed backends. */
static __always_inline int pnlb_schedule_least(const struct pnlb_service *svc,
					       const struct pnlb_table_view *table, __u32 *backend_id)
{
	__u64 best_num = 0, best_den = 1;
	int found = 0;

	for (__u32 i = 0; i < PNLB_MAX_LEAST_BACKENDS; i++) {
		struct pnlb_backend *backend;
		struct pnlb_load load;
		__u64 num, den;
		__u32 slot = PNLB_TABLE_HEADER + i, id, *entry;

		if (i >= table->len)
			break;
		entry = bpf_map_lookup_elem(table->map, &slot);
		if (!entry)
			break;
		id = *entry;
		backend = pnlb_backend_get(id);
		if (!backend || !(backend->flags & PNLB_BACKEND_F_PRESENT) || backend->weight == 0)
			continue;
		pnlb_load_of(id, &load);
		if (backend->max_conns && load.active + load.inactive >= backend->max_conns)
			continue;
		switch (svc->scheduler) {
		case PNLB_SCHED_LC: /* IPVS overhead: active x 256 + inactive */
			num = load.active * 256 + load.inactive;
			den = 1;
			break;
		case PNLB_SCHED_WLC:
			num = load.active * 256 + load.inactive;
			den = backend->weight;
			break;
		case PNLB_SCHED_NQ:
			if (load.active == 0) {
				*backend_id = id;
				return 0;
			}
			/* fallthrough: no idle server, shortest expected delay */
		default: /* SED, and p2c's fallback: (active + 1) / weight */
			num = load.active + 1;
			den = backend->weight;
			break;
		}
		if (!found || num * best_den < best_num * den) {
			*backend_id = id;
			best_num = num;
			best_den = den;
			found = 1;
		}
	}
	if (!found)
		return PNLB_DROP_BACKENDS_FULL;
	return 0;
}

/* A listed backend that may take a flow, and its active count per weight. */
static __always_inline int pnlb_p2c_candidate(const struct pnlb_table_view *table, __u32 index,
					      __u32 *id, __u64 *active, __u64 *weight)
{
	__u32 slot = PNLB_TABLE_HEADER + index;
	__u32 *entry = bpf_map_lookup_elem(table->map, &slot);
	struct pnlb_backend *backend;
	struct pnlb_load load;

	if (!entry)
		return 0;
	*id = *entry;
	backend = pnlb_backend_get(*id);
	if (!backend || !(backend->flags & PNLB_BACKEND_F_PRESENT) || backend->weight == 0)
		return 0;
	pnlb_load_of(*id, &load);
	if (backend->max_conns && load.active + load.inactive >= backend->max_conns)
		return 0;
	*active = load.active;
	*weight = backend->weight;
	return 1;
}

/* Power of two choices: two random listed backends, fewer active per
 * weight wins; if neither can take the flow, a full scan decides. */
static __always_inline int pnlb_schedule_p2c(const struct pnlb_service *svc,
					     const struct pnlb_table_view *table, __u32 *backend_id)
{
	__u32 n = table->len < PNLB_MAX_LEAST_BACKENDS ? table->len : PNLB_MAX_LEAST_BACKENDS;
	__u32 random = bpf_get_prandom_u32();
	__u64 active_a = 0, active_b = 0, weight_a = 1, weight_b = 1;
	__u32 id_a = 0, id_b = 0;
	int ok_a, ok_b;

	if (n == 0)
		return PNLB_DROP_NO_BACKEND;
	ok_a = pnlb_p2c_candidate(table, random % n, &id_a, &active_a, &weight_a);
	ok_b = pnlb_p2c_candidate(table, (random >> 16) % n, &id_b, &active_b, &weight_b);
	if (ok_a && (!ok_b || active_a * weight_b <= active_b * weight_a)) {
		*backend_id = id_a;
		return 0;
	}
	if (ok_b) {
		*backend_id = id_b;
		return 0;
	}
	return pnlb_schedule_least(svc, table, backend_id);
}

/* A backend's flows (active + inactive) if it may take one more, else -1. */
static __always_inline __s64 pnlb_chbl_load(__u32 id, __u32 *weight)
{
	struct pnlb_backend *backend = pnlb_backend_get(id);
	struct pnlb_load load;

	if (!backend || !(backend->flags & PNLB_BACKEND_F_PRESENT) || backend->weight == 0)
		return -1;
	pnlb_load_of(id, &load);
	if (backend->max_conns && load.active + load.inactive >= backend->max_conns)
		return -1;
	*weight = backend->weight;
	return load.active + load.inactive;
}

/*
 * Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam):
 * walk the Maglev table from the flow's slot to the first backend under
 * its cap, ceil((1 + eps) x (flows + 1) x weight / total weight). The walk
 * is bounded; past it the least-loaded (sed) backend takes the flow.
 */
#define PNLB_CHBL_STEPS 64

static __always_inline int pnlb_schedule_chbl(const struct pnlb_service *svc,
					      const struct pnlb_table_view *table,
					      const struct pnlb_flow_key *flow, __u32 *backend_id)
{
	__u64 total = 1, weight_sum = 0;
	__u32 list_len = table->list_len, start;

	for (__u32 i = 0; i < PNLB_MAX_LEAST_BACKENDS; i++) {
		__u32 slot = PNLB_TABLE_HEADER + i, weight = 0, *entry;
		__s64 load;

		if (i >= list_len)
			break;
		entry = bpf_map_lookup_elem(table->map, &slot);
		if (!entry)
			break;
		load = pnlb_chbl_load(*entry, &weight);
		if (load < 0)
			continue;
		total += load;
		weight_sum += weight;
	}
	if (weight_sum == 0)
		return PNLB_DROP_BACKENDS_FULL;

	start = pnlb_flow_hash(flow, svc->hash_key) % table->len;
	for (__u32 step = 0; step < PNLB_CHBL_STEPS; step++) {
		__u32 slot = PNLB_TABLE_HEADER + list_len + (start + step) % table->len;
		__u32 weight = 0, *entry;
		__u64 cap;
		__s64 load;

		entry = bpf_map_lookup_elem(table->map, &slot);
		if (!entry)
			break;
		load = pnlb_chbl_load(*entry, &weight);
		if (load < 0)
			continue;
		cap = ((100 + (__u64)svc->chbl_epsilon_pct) * total * weight + 100 * weight_sum - 1) /
		      (100 * weight_sum);
		if ((__u64)load < cap) {
			*backend_id = *entry;
			return 0;
		}
	}
	return pnlb_schedule_least(svc, table, backend_id);
}

/*
 * Returns 0 and sets *backend_id, or the drop reason. A global function:
 * the verifier checks its many paths once, not once for every parsing
 * path that reaches it (the program stays well inside the 1M-instruction
 * verification budget).
 */
__attribute__((noinline)) int pnlb_schedule(const struct pnlb_service *svc,
					    const struct pnlb_flow_key *flow, __u32 *backend_id)
{
	struct pnlb_table_view table;
	__u32 service_id;
	__u32 slot;

	if (!svc || !flow || !backend_id)
		return PNLB_DROP_NO_BACKEND;
	service_id = svc->id;
	if (pnlb_table_view(service_id, &table))
		return PNLB_DROP_NO_BACKEND;

	switch (svc->scheduler) {
	case PNLB_SCHED_CHBL:
		return pnlb_schedule_chbl(svc, &table, flow, backend_id);
	case PNLB_SCHED_LC:
	case PNLB_SCHED_WLC:
	case PNLB_SCHED_SED:
	case PNLB_SCHED_NQ:
		return pnlb_schedule_least(svc, &table, backend_id);
	case PNLB_SCHED_P2C:
		return pnlb_schedule_p2c(svc, &table, backend_id);
	case PNLB_SCHED_RR:
	case PNLB_SCHED_WRR: {
		__u64 *cursor = bpf_map_lookup_elem(&pnlb_sched_cursors, &service_id);

		if (!cursor)
			return PNLB_DROP_NO_BACKEND;
		slot = __sync_fetch_and_add(cursor, 1) % table.len;
		break;
	}
	default:
		slot = pnlb_flow_hash(flow, svc->hash_key) % table.len;
	}
	return pnlb_pick_from_slot(&table, slot, backend_id);
}

#endif
