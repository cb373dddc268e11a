/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The connection table.
 *
 * A flow keeps the backend it was first given for as long as that backend
 * stays configured, whatever happens to the tables. A flow without an entry
 * (new, evicted, or the LB restarted) is scheduled; with Maglev that gives
 * an established flow the same backend again unless the backend set
 * changed, which is why non-SYN packets are scheduled too.
 *
 * nat and snat flows get a second entry for the reply direction, inserted
 * before the original so that a reply never arrives to find none. For snat
 * that insert (BPF_NOEXIST) is also the port allocation: the reply key
 * (backend, SNAT address, backend port, SNAT port) can belong to one live
 * flow only.
 *
 * TCP state is tracked from the packets of both directions and mirrored
 * into both entries on every transition; userspace expires idle entries by
 * state (pnlb-dataplane's conntrack sweeper).
 */
#ifndef PNLB_CONNTRACK_H
#define PNLB_CONNTRACK_H

#include "maps.h"
#include "parse.h"
#include "sched.h"
#include "affinity.h"
#include "load.h"

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

/* The key of the entry for the other direction of the same flow. */
static __always_inline void pnlb_peer_key(const struct pnlb_conn *conn, __u8 protocol,
					  struct pnlb_flow_key *peer)
{
	__builtin_memset(peer, 0, sizeof(*peer));
	peer->src = conn->rewrite_dst;
	peer->dst = conn->rewrite_src;
	peer->src_port = conn->rewrite_dport;
	peer->dst_port = conn->rewrite_sport;
	peer->protocol = protocol;
}

static __always_inline __u8 pnlb_initial_state(const struct pnlb_packet *pkt)
{
	if (pkt->flow.protocol != IPPROTO_TCP)
		return PNLB_CT_UDP;
	if ((pkt->tcp_flags & (PNLB_TCP_SYN | PNLB_TCP_ACK)) == PNLB_TCP_SYN)
		return PNLB_CT_SYN_SENT;
	/* Picked up mid-flow (evicted, or the LB restarted). */
	return PNLB_CT_ESTABLISHED;
}

/* The state after this packet, from either direction. */
static __always_inline __u8 pnlb_next_state(__u8 state, __u8 flags)
{
	if (state == PNLB_CT_UDP)
		return state;
	if (flags & PNLB_TCP_RST)
		return PNLB_CT_CLOSE;
	if (flags & PNLB_TCP_FIN)
		return state == PNLB_CT_CLOSE ? state : PNLB_CT_FIN_WAIT;
	if ((flags & (PNLB_TCP_SYN | PNLB_TCP_ACK)) == PNLB_TCP_SYN)
		return PNLB_CT_SYN_SENT; /* a new connection reusing the tuple */
	if (state == PNLB_CT_SYN_SENT && (flags & PNLB_TCP_ACK) && !(flags & PNLB_TCP_SYN))
		return PNLB_CT_ESTABLISHED;
	return state;
}

/* Reports a flow's original entry to the failover sync, when it is on. */
static __always_inline void pnlb_conn_report(const struct pnlb_flow_key *key,
					     const struct pnlb_conn *conn)
{
	struct pnlb_conn_event *event;

	if (!pnlb_conn_sync)
		return;
	/* Written in place in the ring: nothing on the (full) stack. A full
	 * ring drops the report; the periodic full dump repairs it. */
	event = bpf_ringbuf_reserve(&pnlb_conn_events, sizeof(*event), 0);
	if (!event)
		return;
	__builtin_memcpy(&event->key, key, sizeof(event->key));
	__builtin_memcpy(&event->conn, conn, sizeof(event->conn));
	bpf_ringbuf_submit(event, 0);
}

/* Refreshes last_seen and moves the TCP state of both entries. */
static __always_inline void pnlb_conn_track(struct pnlb_conn *conn, const struct pnlb_packet *pkt)
{
	__u64 now = bpf_ktime_get_ns();
	__u8 next = pnlb_next_state(conn->state, pkt->tcp_flags);
	__u8 fins = conn->fin_seen;
	struct pnlb_flow_key peer_key;
	struct pnlb_conn *peer;

	if (now - conn->last_seen_ns > PNLB_CONN_TOUCH_NS)
		conn->last_seen_ns = now;
	if (pkt->tcp_flags & PNLB_TCP_FIN)
		fins |= 1 << (conn->direction & 1);
	/* Both sides closed: only the final ACK is left, so the short
	 * tcp_close timeout applies (and an SNAT port is freed sooner). */
	if (fins == 3 && next == PNLB_CT_FIN_WAIT)
		next = PNLB_CT_CLOSE;
	if (next == PNLB_CT_SYN_SENT)
		fins = 0; /* a new connection on the same tuple */
	if (next == conn->state && fins == conn->fin_seen)
		return;
	pnlb_count_state_move(conn->backend_id, conn->state, next);
	conn->state = next;
	conn->fin_seen = fins;
	conn->last_seen_ns = now;
	if (!(conn->flags & PNLB_CONN_F_NAT)) {
		pnlb_conn_report(&pkt->flow, conn);
		return;
	}
	pnlb_peer_key(conn, pkt->flow.protocol, &peer_key);
	peer = bpf_map_lookup_elem(&pnlb_conns, &peer_key);
	if (peer) {
		peer->state = next;
		peer->fin_seen = fins;
		if (conn->direction == PNLB_DIR_REPLY)
			pnlb_conn_report(&peer_key, peer);
	}
	if (conn->direction == PNLB_DIR_ORIGINAL)
		pnlb_conn_report(&pkt->flow, conn);
}

/*
 * Picks an SNAT address and port for a new flow by inserting its reply
 * entry with BPF_NOEXIST: the first (address, port) whose reply key is free
 * wins. Tries start at a flow-hash position so concurrent flows spread.
 */
static __always_inline int pnlb_snat_reserve(const struct pnlb_service *svc,
					     const struct pnlb_packet *pkt,
					     const struct pnlb_conn *original,
					     const struct pnlb_conn *reply,
					     struct pnlb_addr *snat_addr, __u16 *snat_port)
{
	__u32 hash = pnlb_flow_hash(&pkt->flow, PNLB_HASH_5TUPLE);
	__u32 count = svc->snat_count;
	__u32 range = svc->snat_port_count;
	struct pnlb_flow_key reply_key;

	if (count == 0 || count > PNLB_MAX_SNAT_ADDRS || range == 0)
		return PNLB_DROP_SNAT_EXHAUSTED;

	for (__u32 try = 0; try < PNLB_SNAT_TRIES; try++) {
		__u32 index = svc->id * PNLB_MAX_SNAT_ADDRS + (hash + try) % count;
		struct pnlb_addr *addr = bpf_map_lookup_elem(&pnlb_snat_addrs, &index);
		__u16 port;

		if (!addr)
			return PNLB_DROP_SNAT_EXHAUSTED;
		port = bpf_htons(svc->snat_port_min + (hash / count + try) % range);

		__builtin_memset(&reply_key, 0, sizeof(reply_key));
		reply_key.src = original->rewrite_dst;
		reply_key.dst = *addr;
		reply_key.src_port = original->rewrite_dport;
		reply_key.dst_port = port;
		reply_key.protocol = pkt->flow.protocol;
		if (bpf_map_update_elem(&pnlb_conns, &reply_key, reply, BPF_NOEXIST) == 0) {
			*snat_addr = *addr;
			*snat_port = port;
			return 0;
		}
	}
	return PNLB_DROP_SNAT_EXHAUSTED;
}

/*
 * Creates the entries of a new flow on `backend`; returns 0 or a drop
 * reason. For nat/snat the reply entry goes in first.
 */
static __always_inline int pnlb_conn_create(const struct pnlb_service *svc,
					    const struct pnlb_packet *pkt,
					    __u32 backend_id,
					    const struct pnlb_backend *backend)
{
	__u64 now = bpf_ktime_get_ns();
	struct pnlb_conn original = {};
	struct pnlb_conn reply = {};
	struct pnlb_flow_key reply_key = {};

	original.backend_id = backend_id;
	original.backend_generation = backend->generation;
	original.service_id = svc->id;
	original.state = pnlb_initial_state(pkt);
	original.direction = PNLB_DIR_ORIGINAL;
	original.created_ns = now;
	original.last_seen_ns = now;
	original.rewrite_src = pkt->flow.src;
	original.rewrite_sport = pkt->flow.src_port;
	original.rewrite_dst = pkt->flow.dst;
	original.rewrite_dport = pkt->flow.dst_port;

	if (svc->method == PNLB_METHOD_NAT || svc->method == PNLB_METHOD_SNAT) {
		original.flags = PNLB_CONN_F_NAT;
		original.rewrite_dst = backend->addr;
		/* port 0 services keep the client's destination port */
		if (backend->port)
			original.rewrite_dport = backend->port;

		reply = original;
		reply.direction = PNLB_DIR_REPLY;
		reply.rewrite_src = pkt->flow.dst;
		reply.rewrite_sport = pkt->flow.dst_port;
		reply.rewrite_dst = pkt->flow.src;
		reply.rewrite_dport = pkt->flow.src_port;

		if (svc->method == PNLB_METHOD_SNAT) {
			struct pnlb_addr snat_addr;
			__u16 snat_port;
			int reason = pnlb_snat_reserve(svc, pkt, &original, &reply, &snat_addr,
						       &snat_port);

			if (reason)
				return reason;
			original.rewrite_src = snat_addr;
			original.rewrite_sport = snat_port;
		} else {
			pnlb_peer_key(&original, pkt->flow.protocol, &reply_key);
			bpf_map_update_elem(&pnlb_conns, &reply_key, &reply, BPF_ANY);
		}
	}
	bpf_map_update_elem(&pnlb_conns, &pkt->flow, &original, BPF_ANY);
	pnlb_count_opened(backend_id, original.state == PNLB_CT_ESTABLISHED);
	pnlb_conn_report(&pkt->flow, &original);
	return 0;
}

/*
 * The entry of this packet's flow, created (after scheduling) if new.
 * Returns 0 with conn/backend/backend_id/new_flow set, or a drop reason.
 */
static __always_inline int pnlb_conn_original(const struct pnlb_service *svc,
					      const struct pnlb_packet *pkt,
					      struct pnlb_conn **conn,
					      struct pnlb_backend **backend,
					      __u32 *backend_id, int *new_flow)
{
	int reason;

	*conn = bpf_map_lookup_elem(&pnlb_conns, &pkt->flow);
	if (*conn && (*conn)->service_id == svc->id && (*conn)->direction == PNLB_DIR_ORIGINAL) {
		*backend = pnlb_live_backend((*conn)->backend_id, (*conn)->backend_generation);
		if (*backend) {
			*backend_id = (*conn)->backend_id;
			*new_flow = 0;
			return 0;
		}
	}

	if (!svc->persistence_s || pnlb_affinity_lookup(svc, &pkt->flow.src, backend_id) != 0) {
		reason = pnlb_schedule(svc, &pkt->flow, backend_id);
		if (reason)
			return reason;
	}
	*backend = bpf_map_lookup_elem(&pnlb_backends, backend_id);
	if (!*backend || !((*backend)->flags & PNLB_BACKEND_F_PRESENT))
		return PNLB_DROP_BACKEND_GONE;
	if (svc->persistence_s)
		pnlb_affinity_record(svc, &pkt->flow.src, *backend_id, (*backend)->generation);
	reason = pnlb_conn_create(svc, pkt, *backend_id, *backend);
	if (reason)
		return reason;
	*conn = bpf_map_lookup_elem(&pnlb_conns, &pkt->flow);
	if (!*conn)
		return PNLB_DROP_NO_BACKEND;
	*new_flow = 1;
	return 0;
}

#endif
