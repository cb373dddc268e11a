/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Source affinity (IPVS persistence, -p / -M): a new flow from a client
 * whose prefix sent a flow to this service within the persistence timeout
 * goes to the same backend, as long as that backend is still configured
 * and takes new flows (weight > 0: not draining, not down). The timeout
 * runs from the client's latest new flow.
 */
#ifndef PNLB_AFFINITY_H
#define PNLB_AFFINITY_H

#include <bpf/bpf_endian.h>
#include "maps.h"

static __always_inline void pnlb_affinity_key(const struct pnlb_service *svc,
					      const struct pnlb_addr *client,
					      struct pnlb_affinity_key *key)
{
	__u32 prefix = svc->persistence_prefix;

	__builtin_memset(key, 0, sizeof(*key));
	key->service_id = svc->id;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 bits = prefix > 32 * i ? prefix - 32 * i : 0;

		if (bits >= 32)
			key->client.words[i] = client->words[i];
		else if (bits > 0)
			key->client.words[i] = client->words[i] & bpf_htonl(~0U << (32 - bits));
	}
}

/* Returns 0 and sets backend_id if the client has a usable affinity. */
static __always_inline int pnlb_affinity_lookup(const struct pnlb_service *svc,
						const struct pnlb_addr *client, __u32 *backend_id)
{
	struct pnlb_affinity_key key;
	struct pnlb_affinity *affinity;
	struct pnlb_backend *backend;
	__u32 id;

	pnlb_affinity_key(svc, client, &key);
	affinity = bpf_map_lookup_elem(&pnlb_affinity, &key);
	if (!affinity ||
	    bpf_ktime_get_ns() - affinity->last_seen_ns > (__u64)svc->persistence_s * 1000000000ULL)
		return -1;
	id = affinity->backend_id;
	backend = pnlb_backend_get(id);
	if (!backend || !(backend->flags & PNLB_BACKEND_F_PRESENT) ||
	    backend->generation != affinity->backend_generation || backend->weight == 0)
		return -1;
	*backend_id = id;
	return 0;
}

static __always_inline void pnlb_affinity_record(const struct pnlb_service *svc,
						 const struct pnlb_addr *client, __u32 backend_id,
						 __u32 generation)
{
	struct pnlb_affinity_key key;
	struct pnlb_affinity value = {};

	pnlb_affinity_key(svc, client, &key);
	value.backend_id = backend_id;
	value.backend_generation = generation;
	value.last_seen_ns = bpf_ktime_get_ns();
	bpf_map_update_elem(&pnlb_affinity, &key, &value, BPF_ANY);
}

#endif
