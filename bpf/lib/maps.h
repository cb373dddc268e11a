/* SPDX-License-Identifier: Apache-2.0 */
/* Every map of the XDP program; layouts live in pnlb_abi.h. */
#ifndef PNLB_MAPS_H
#define PNLB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "pnlb_abi.h"

/* (VIP, port, protocol) -> service. Port 0 entries catch every port. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PNLB_MAX_SERVICES);
	__type(key, struct pnlb_service_key);
	__type(value, struct pnlb_service);
} pnlb_services SEC(".maps");

/* Service id -> the service and its key, in two copies (id * 2 + copy)
 * with a selector, as pnlb_backends has: an established flow's packets
 * find their service here from their entry. Written through shared
 * mappings by the control plane, which mirrors every write and removal
 * of pnlb_services here. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2 * PNLB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct pnlb_service_copy);
} pnlb_service_copies SEC(".maps");

/* Service id -> which of its two copies is live (0 or 1). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, PNLB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u32);
} pnlb_service_live_copy SEC(".maps");

/* VIP -> number of services on it: tells "not ours" from "ours, but no
 * such port" with a single lookup before any L4 parsing. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PNLB_MAX_SERVICES);
	__type(key, struct pnlb_addr);
	__type(value, __u32);
} pnlb_vips SEC(".maps");

/* The filters of pnlb_vips and pnlb_backend_addrs (pnlb_address_filter_limits
 * says how): most packets that are not a service's are told so by one word
 * of an array. Written through a shared mapping by the control plane,
 * which sets an address's bit before the address enters its set and
 * clears it only after the last address of that bit left. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, PNLB_ADDRESS_FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} pnlb_vip_filter SEC(".maps"), pnlb_backend_filter SEC(".maps");

/* What a pinned data plane says about itself (enum pnlb_meta_slot):
 * written by the control plane; packets read only the unattended
 * deadline, and only new flows. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PNLB_META_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} pnlb_meta SEC(".maps");

/* Backend slot id -> backend, in two copies: userspace writes the copy
 * packets do not read, flips pnlb_live_copy, and writes that slot again
 * only after every program run that could still read the old copy has
 * ended (an RCU grace period). So no packet reads an entry half written. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * PNLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct pnlb_backend);
} pnlb_backends SEC(".maps");

/* Backend slot id -> which of its two copies is live (0 or 1). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PNLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, __u32);
} pnlb_live_copy SEC(".maps");

/* Addresses of nat/snat backends -> number of services using them. Replies
 * come from backends, so only packets from these are looked up as replies. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PNLB_MAX_BACKENDS);
	__type(key, struct pnlb_addr);
	__type(value, __u32);
} pnlb_backend_addrs SEC(".maps");

/* SNAT source addresses: service id * PNLB_MAX_SNAT_ADDRS + index. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PNLB_MAX_SERVICES * PNLB_MAX_SNAT_ADDRS);
	__type(key, __u32);
	__type(value, struct pnlb_addr);
} pnlb_snat_addrs SEC(".maps");

/* A service's scheduling table (Maglev lookup table: slot -> backend id),
 * after a header with its lengths (enum pnlb_table_slot). The control
 * plane builds a fresh inner map and swaps it into the outer slot in one
 * update, so a packet sees the old table or the new, never a mix, and the
 * lengths of the very table it reads. Each is as long as its service's
 * table (BPF_F_INNER_MAP: inner maps of any length up to this template's;
 * a read past the end finds nothing, which the readers check), and is
 * written through a memory mapping (BPF_F_MMAPABLE). */
struct pnlb_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__uint(max_entries, PNLB_TABLE_CAPACITY);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, PNLB_MAX_SERVICES);
	__type(key, __u32);
	__array(values, struct pnlb_table);
} pnlb_tables SEC(".maps");

/*
 * The connection table, in two (docs/conntrack.md):
 *  - pnlb_conns holds established flows (TCP after the handshake, UDP
 *    seen twice or answered). A plain hash: nothing is ever evicted from
 *    it; when it is full, new flows that could not survive without an
 *    entry are refused instead. Sized from daemon.conn_table_size.
 *  - pnlb_conns_new holds flows not yet established (half-open TCP, UDP
 *    after its first datagram). An LRU: a flood of SYNs or one-packet UDP
 *    flows evicts only its own kind, never an established flow.
 * Both directions of a nat/snat flow live in the same table and move
 * together.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PNLB_MAX_CONNS);
	__type(key, struct pnlb_flow_key);
	__type(value, struct pnlb_conn);
} pnlb_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PNLB_MAX_CONNS / 4);
	__type(key, struct pnlb_flow_key);
	__type(value, struct pnlb_conn);
} pnlb_conns_new SEC(".maps");

/* Seed of every flow hash (schedulers, SNAT ports, tunnel entropy), set
 * before load: a secret, so that no client can aim its flows at one slot. */
const volatile __u32 pnlb_hash_seed = PNLB_TEST_HASH_SEED;

/* pnlb_conns' capacity, set before load; admission keeps 1/16 of it free. */
const volatile __u32 pnlb_conns_capacity = PNLB_MAX_CONNS;

/* pnlb_conns' entries, as two single-writer halves: [0] entries the data
 * plane moved in (atomic adds), [1] entries userspace took out, net of
 * those it put in (failover sync). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} pnlb_conns_usage SEC(".maps");

/* snat: reply keys of ended flows -> when they ended. Such an (address,
 * port, backend) is not given to a new flow for the service's snat_reuse_s:
 * the backend may still hold the old connection in TIME_WAIT. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PNLB_MAX_CONNS);
	__type(key, struct pnlb_flow_key);
	__type(value, __u64);
} pnlb_snat_rest SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PNLB_TC_COUNTERS);
	__type(key, __u32); /* enum pnlb_table_counter */
	__type(value, __u64);
} pnlb_table_stats SEC(".maps");

/* new_flow_rate: each service's theoretical arrival time (GCRA), shared
 * by every CPU; touched only by new flows of rate-limited services. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PNLB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u64);
} pnlb_rates SEC(".maps");

/* source_new_flow_rate: each (service, source)'s theoretical arrival time
 * (GCRA); an LRU, so a flood of spoofed sources evicts only its own. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PNLB_MAX_METERED_SOURCES);
	__type(key, struct pnlb_source_key);
	__type(value, __u64);
} pnlb_source_rates SEC(".maps");

/* The attached interfaces' own MACs (pnlb_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pnlb_own_macs);
} pnlb_own_macs SEC(".maps");

/* Nodes behind ECMP (pnlb_abi.h): PNLB_NODE_LISTS lists of the live ones
 * in address order (list l at l * PNLB_MAX_NODES), and their MACs, to tell
 * a packet another node handed on. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PNLB_NODE_LISTS * PNLB_MAX_NODES);
	__type(key, __u32);
	__type(value, struct pnlb_node);
} pnlb_nodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PNLB_NODE_LISTS);
	__type(key, __u32);
	__type(value, __u64);
} pnlb_node_since SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PNLB_MAX_NODES);
	__type(key, struct pnlb_mac_key);
	__type(value, __u32);
} pnlb_node_macs SEC(".maps");

/* source_max_flows: each (service, source)'s flows as the data plane saw
 * them open and close, and as the last census counted them (see
 * pnlb_abi.h); LRUs, like pnlb_source_rates. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PNLB_MAX_METERED_SOURCES);
	__type(key, struct pnlb_source_key);
	__type(value, struct pnlb_source_flows);
} pnlb_source_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PNLB_MAX_METERED_SOURCES);
	__type(key, struct pnlb_source_key);
	__type(value, struct pnlb_source_census);
} pnlb_source_census SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PNLB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct pnlb_service_stats);
} pnlb_service_stats SEC(".maps");

/* Failover sync (see pnlb_conn_event); set before load by the control plane. */
const volatile __u32 pnlb_conn_sync = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} pnlb_conn_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PNLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct pnlb_backend_conns);
} pnlb_backend_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PNLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct pnlb_backend_load);
} pnlb_backend_load SEC(".maps");

/* rr/wrr: each service's position in its table, advanced atomically by
 * every new flow on any CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PNLB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u64);
} pnlb_sched_cursors SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pnlb_affinity_key);
	__type(value, struct pnlb_affinity);
} pnlb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PNLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct pnlb_backend_stats);
} pnlb_backend_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PNLB_REASON_MAX);
	__type(key, __u32); /* enum pnlb_reason */
	__type(value, __u64);
} pnlb_reason_stats SEC(".maps");

/* Access rules (enum pnlb_service_flags: PNLB_SVC_F_ACCESS): the longest
 * prefix of (service id, source) decides. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PNLB_MAX_ACCESS_RULES);
	__type(key, struct pnlb_access_key);
	__type(value, struct pnlb_access_rule);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} pnlb_access SEC(".maps");

/* Packets each rule dropped (deny rules), by pnlb_access_rule.index. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PNLB_MAX_ACCESS_RULES);
	__type(key, __u32);
	__type(value, __u64);
} pnlb_access_hits SEC(".maps");

/* Whether `src` may reach `svc` by its access rules (when it has any). A
 * deny rule that decides counts the drop as its own. */
static __always_inline int pnlb_access_allows(const struct pnlb_service *svc,
					      const struct pnlb_addr *src)
{
	struct pnlb_access_key key = { .prefixlen = 32 + 128 };
	struct pnlb_access_rule *rule;
	__u64 *hits;

	if (!(svc->flags & PNLB_SVC_F_ACCESS))
		return 1;
	key.service_id = svc->id;
	key.addr = *src;
	rule = bpf_map_lookup_elem(&pnlb_access, &key);
	if (!rule)
		return !(svc->flags & PNLB_SVC_F_ALLOWLIST);
	if (rule->allow)
		return 1;
	hits = bpf_map_lookup_elem(&pnlb_access_hits, &rule->index);
	if (hits)
		*hits += 1;
	return 0;
}

/* The live copy of backend slot `id`. */
static __always_inline struct pnlb_backend *pnlb_backend_get(__u32 id)
{
	__u32 *copy = bpf_map_lookup_elem(&pnlb_live_copy, &id);
	__u32 index;

	if (!copy)
		return NULL;
	index = id * 2 + (*copy & 1);
	return bpf_map_lookup_elem(&pnlb_backends, &index);
}

#endif
