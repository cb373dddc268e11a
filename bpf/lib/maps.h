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

/* VIP -> number of services on it: tells "not ours" from "ours, but no
 * such port" with a single lookup before any L4 parsing. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PNLB_MAX_SERVICES);
	__type(key, struct pnlb_addr);
	__type(value, __u32);
} pnlb_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PNLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct pnlb_backend);
} pnlb_backends SEC(".maps");

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

/* A service's scheduling table (Maglev lookup table: slot -> backend id).
 * The control plane builds a fresh inner map and swaps it into the outer
 * slot in one update, so a packet sees the old table or the new, never a
 * mix. */
struct pnlb_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
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

/* Both directions of every tracked flow. An LRU, so it is bounded; the
 * control plane sets its size from daemon.conn_table_size before load. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PNLB_MAX_CONNS);
	__type(key, struct pnlb_flow_key);
	__type(value, struct pnlb_conn);
} pnlb_conns SEC(".maps");

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
	__type(value, struct pnlb_backend_expired);
} pnlb_backend_expired SEC(".maps");

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

#endif
