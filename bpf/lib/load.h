/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Backend connection counts (IPVS activeconns / inactconns) for the
 * least-load schedulers and max_conns: counted here on new flows and TCP
 * state moves, and by the userspace sweeper on expiry (see pnlb_abi.h).
 */
#ifndef PNLB_LOAD_H
#define PNLB_LOAD_H

#include "maps.h"

struct pnlb_load {
	__u64 active;
	__u64 inactive;
};

static __always_inline void pnlb_backend_load(__u32 id, struct pnlb_load *load)
{
	struct pnlb_backend_conns *conns = bpf_map_lookup_elem(&pnlb_backend_conns, &id);
	struct pnlb_backend_expired *expired = bpf_map_lookup_elem(&pnlb_backend_expired, &id);
	__s64 active, live;

	load->active = 0;
	load->inactive = 0;
	if (!conns || !expired)
		return;
	active = (__s64)(conns->became_active - conns->stopped_active - expired->expired_active);
	live = (__s64)(conns->opened - expired->expired);
	if (active < 0)
		active = 0;
	if (live < active)
		live = active;
	load->active = active;
	load->inactive = live - active;
}

/* Whether a backend at max_conns must be skipped. */
static __always_inline int pnlb_backend_full(const struct pnlb_backend *backend, __u32 id)
{
	struct pnlb_load load;

	if (!backend->max_conns)
		return 0;
	pnlb_backend_load(id, &load);
	return load.active + load.inactive >= backend->max_conns;
}

static __always_inline void pnlb_count_opened(__u32 id, int active)
{
	struct pnlb_backend_conns *conns = bpf_map_lookup_elem(&pnlb_backend_conns, &id);

	if (!conns)
		return;
	__sync_fetch_and_add(&conns->opened, 1);
	if (active)
		__sync_fetch_and_add(&conns->became_active, 1);
}

/* A flow moved between ESTABLISHED and the other states. */
static __always_inline void pnlb_count_state_move(__u32 id, __u8 from, __u8 to)
{
	struct pnlb_backend_conns *conns;

	if ((from == PNLB_CT_ESTABLISHED) == (to == PNLB_CT_ESTABLISHED))
		return;
	conns = bpf_map_lookup_elem(&pnlb_backend_conns, &id);
	if (!conns)
		return;
	if (to == PNLB_CT_ESTABLISHED)
		__sync_fetch_and_add(&conns->became_active, 1);
	else
		__sync_fetch_and_add(&conns->stopped_active, 1);
}

#endif
