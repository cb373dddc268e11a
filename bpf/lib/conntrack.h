/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The connection table: a flow keeps the backend it was first given for as
 * long as that backend stays configured, whatever happens to the tables.
 * A flow without an entry (new, evicted, or the LB restarted) is scheduled;
 * with Maglev that gives an established flow the same backend again unless
 * the backend set changed, which is why non-SYN packets are scheduled too.
 */
#ifndef PNLB_CONNTRACK_H
#define PNLB_CONNTRACK_H

#include "maps.h"
#include "sched.h"

/* last_seen is refreshed at most this often, to keep writes off the hot path. */
#define PNLB_CONN_TOUCH_NS 1000000000ULL

static __always_inline struct pnlb_backend *pnlb_live_backend(__u32 id, __u32 generation)
{
	struct pnlb_backend *backend = bpf_map_lookup_elem(&pnlb_backends, &id);

	if (!backend || !(backend->flags & PNLB_BACKEND_F_PRESENT) ||
	    backend->generation != generation)
		return NULL;
	return backend;
}

/*
 * Finds the backend for this packet's flow, scheduling it if it is new.
 * Returns 0 with backend, backend_id and new_flow set, or a drop reason.
 */
static __always_inline int pnlb_conn_backend(const struct pnlb_service *svc,
					     const struct pnlb_flow_key *flow,
					     struct pnlb_backend **backend,
					     __u32 *backend_id, int *new_flow)
{
	struct pnlb_conn *conn = bpf_map_lookup_elem(&pnlb_conns, flow);
	__u64 now = bpf_ktime_get_ns();
	struct pnlb_conn fresh = {};
	int reason;

	if (conn && conn->service_id == svc->id) {
		*backend = pnlb_live_backend(conn->backend_id, conn->backend_generation);
		if (*backend) {
			if (now - conn->last_seen_ns > PNLB_CONN_TOUCH_NS)
				conn->last_seen_ns = now;
			*backend_id = conn->backend_id;
			*new_flow = 0;
			return 0;
		}
	}

	reason = pnlb_schedule(svc, flow, backend_id);
	if (reason)
		return reason;
	*backend = bpf_map_lookup_elem(&pnlb_backends, backend_id);
	if (!*backend || !((*backend)->flags & PNLB_BACKEND_F_PRESENT))
		return PNLB_DROP_BACKEND_GONE;

	fresh.backend_id = *backend_id;
	fresh.backend_generation = (*backend)->generation;
	fresh.service_id = svc->id;
	fresh.created_ns = now;
	fresh.last_seen_ns = now;
	bpf_map_update_elem(&pnlb_conns, flow, &fresh, BPF_ANY);
	*new_flow = 1;
	return 0;
}

#endif
