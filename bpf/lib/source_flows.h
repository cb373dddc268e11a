/* SPDX-License-Identifier: Apache-2.0 */
/*
 * source_max_flows: how many flows each source of a service has open. The
 * daemon's sweep counts them in the tables now and then
 * (pnlb_source_census); between censuses the data plane adds the flows it
 * sees open and close (pnlb_source_flows). A flow that ends unseen (idle,
 * evicted) stays in the count until the next census: the count errs high
 * for a sweep's interval, never for longer.
 */
#ifndef PNLB_SOURCE_FLOWS_H
#define PNLB_SOURCE_FLOWS_H

#include "maps.h"

/* States a flow holds a place in its source's count in. */
static __always_inline int pnlb_state_is_open(__u8 state)
{
	return state == PNLB_CT_SYN_SENT || state == PNLB_CT_ESTABLISHED || state == PNLB_CT_UDP;
}

/* The flows `src` has open to the service (see pnlb_abi.h). */
static __always_inline __u64 pnlb_source_flows_open(__u32 service_id, const struct pnlb_addr *src)
{
	struct pnlb_source_key key = { .service_id = service_id };
	struct pnlb_source_census *census;
	struct pnlb_source_flows *seen;
	__s64 open;

	key.addr = *src;
	census = bpf_map_lookup_elem(&pnlb_source_census, &key);
	seen = bpf_map_lookup_elem(&pnlb_source_flows, &key);
	if (!seen)
		return census ? census->flows : 0;
	open = (__s64)(seen->opened - seen->closed);
	if (census)
		open = (__s64)census->flows + (__s64)(seen->opened - census->opened_base) -
		       (__s64)(seen->closed - census->closed_base);
	return open > 0 ? (__u64)open : 0;
}

/* One of `src`'s flows opened (opened = 1) or closed (0). */
static __always_inline void pnlb_source_flow_moved(__u32 service_id, const struct pnlb_addr *src,
						   int opened)
{
	struct pnlb_source_key key = { .service_id = service_id };
	struct pnlb_source_flows *seen, fresh = {};

	key.addr = *src;
	seen = bpf_map_lookup_elem(&pnlb_source_flows, &key);
	if (!seen) {
		/* A closing with no counters to move: they were evicted,
		 * what they held is the census's to recount. */
		if (!opened)
			return;
		bpf_map_update_elem(&pnlb_source_flows, &key, &fresh, BPF_NOEXIST);
		seen = bpf_map_lookup_elem(&pnlb_source_flows, &key);
		if (!seen)
			return;
	}
	if (opened)
		__sync_fetch_and_add(&seen->opened, 1);
	else
		__sync_fetch_and_add(&seen->closed, 1);
}

/* An entry of a counted flow moving from state `from` to `to`; `src` is
 * the flow's client. */
static __always_inline void pnlb_source_flow_state(const struct pnlb_conn *conn,
						   const struct pnlb_addr *src, __u8 from, __u8 to)
{
	if (!(conn->flags & PNLB_CONN_F_SOURCE_COUNTED))
		return;
	if (pnlb_state_is_open(from) == pnlb_state_is_open(to))
		return;
	pnlb_source_flow_moved(conn->service_id, src, pnlb_state_is_open(to));
}

#endif
