/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Backend connection counts (IPVS activeconns / inactconns) for the
 * least-load schedulers and max_conns: what userspace last counted in the
 * tables, plus what the data plane has seen since (see pnlb_abi.h).
 */
#ifndef PNLB_LOAD_H
#define PNLB_LOAD_H

#include "maps.h"

struct pnlb_load {
	__u64 active;
	__u64 inactive;
};

static __always_inline void pnlb_load_of(__u32 id, struct pnlb_load *load)
{
	struct pnlb_backend_conns *conns = bpf_map_lookup_elem(&pnlb_backend_conns, &id);
	struct pnlb_backend_load *base = bpf_map_lookup_elem(&pnlb_backend_load, &id);
	__s64 became, stopped, opened, active, inactive;

	load->active = 0;
	load->inactive = 0;
	if (!conns || !base)
		return;
	became = (__s64)(conns->became_active - base->became_base);
	stopped = (__s64)(conns->stopped_active - base->stopped_base);
	opened = (__s64)(conns->opened - base->opened_base);
	active = (__s64)base->active + became - stopped;
	inactive = (__s64)base->inactive + opened - became + stopped;
	load->active = active > 0 ? active : 0;
	load->inactive = inactive > 0 ? inactive : 0;
}

/* Whether a backend at max_conns must be skipped. */
static __always_inline int pnlb_backend_full(const struct pnlb_backend *backend, __u32 id)
{
	struct pnlb_load load;

	if (!backend->max_conns)
		return 0;
	pnlb_load_of(id, &load);
	return load.active + load.inactive >= backend->max_conns;
}

static __always_inline void pnlb_count_opened(__u32 id)
{
	struct pnlb_backend_conns *conns = bpf_map_lookup_elem(&pnlb_backend_conns, &id);

	if (conns)
		__sync_fetch_and_add(&conns->opened, 1);
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
