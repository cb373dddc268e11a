/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The connection table (docs/conntrack.md).
 *
 * A flow keeps the backend it was first given for as long as that backend
 * stays configured, whatever happens to the scheduling tables. Only a
 * packet that can open a flow creates state: a TCP SYN without ACK, or a
 * UDP datagram. A new flow starts in pnlb_conns_new (an LRU) and moves to
 * pnlb_conns, which never evicts, once it is established: TCP on the
 * client's handshake ACK, UDP on its second datagram or first reply. So
 * a flood of SYNs or one-datagram flows churns only pnlb_conns_new.
 *
 * A packet of a flow neither table holds is not given a fresh backend (a
 * reset, or a stranger's translation): dr/tun services with a hashing
 * scheduler forward it by hash, to the backend the flow would have had;
 * every other service drops it, counted.
 *
 * nat and snat flows have a second entry for the reply direction, in the
 * same table as the original, inserted before it so that a reply never
 * finds none. For snat that insert is also the port allocation: the reply
 * key (backend, SNAT address, backend port, SNAT port) can belong to one
 * live flow only, in either table.
 *
 * TCP state is tracked from the packets of both directions and mirrored
 * into both entries; userspace expires idle entries by state and counts
 * what the tables hold (pnlb-dataplane's conntrack sweeper).
 */
#ifndef PNLB_CONNTRACK_H
#define PNLB_CONNTRACK_H

#include "maps.h"
#include "parse.h"
#include "sched.h"
#include "affinity.h"
#include "load.h"
#include "source_flows.h"
#include "nodes.h"
#include "stats.h"

/*
 * The clock of an entry's created/last_seen stamps: CLOCK_MONOTONIC as the
 * daemon's sweep reads it, to the kernel's tick (1-4 ms behind the exact
 * time). The coarse read is a helper call that reads the timekeeper under
 * its sequence count (~15% of an established packet in BPF_PROG_TEST_RUN);
 * bpf_ktime_get_ns() reads the clock source (the TSC) and cost as much.
 * Rate limits keep the exact clock.
 */
static __always_inline __u64 pnlb_conn_clock(void)
{
	return bpf_ktime_get_coarse_ns();
}

/*
 * An established packet does not read that clock: it compares the kernel's
 * tick count (jiffies, which the verifier turns into one load) with the
 * tick its entry was last stamped at (`touched`), and stamps last_seen
 * again once this many ticks have passed: every 0.1-1 s (HZ 1000-100),
 * well inside any timeout the sweep applies.
 */
#define PNLB_CONN_TOUCH_TICKS 100

static __always_inline __u32 pnlb_conn_tick(void)
{
	return (__u32)bpf_jiffies64();
}

/* pnlb_conn_for's "forward without state": the backend is set, no entry. */
#define PNLB_STATELESS (-1)
/* pnlb_conn_for's "another node's flow": hand it to *node (nodes.h). */
#define PNLB_HAND_ON (-2)

/* errno values bpf_map_update_elem returns (asm-generic/errno-base.h). */
#define PNLB_E2BIG 7
#define PNLB_EEXIST 17

/* Which table an entry was found in. */
enum pnlb_which_table { PNLB_ESTABLISHED = 0, PNLB_NEW = 1 };

static __always_inline struct pnlb_conn *pnlb_conn_lookup(int table,
							  const struct pnlb_flow_key *key)
{
	if (table == PNLB_NEW)
		return bpf_map_lookup_elem(&pnlb_conns_new, key);
	return bpf_map_lookup_elem(&pnlb_conns, key);
}

/* Books entries the data plane moved into (n > 0) or out of (n < 0)
 * pnlb_conns, for admission (pnlb_conns_have_room). */
static __always_inline void pnlb_conns_booked(__s64 n)
{
	__u32 slot = 0;
	__u64 *inserted = bpf_map_lookup_elem(&pnlb_conns_usage, &slot);

	if (inserted)
		__sync_fetch_and_add(inserted, (__u64)n);
}

/* Removes an entry the flow will not need again (not a promotion). */
static __always_inline void pnlb_conn_delete(int table, const struct pnlb_flow_key *key)
{
	if (table == PNLB_NEW) {
		if (bpf_map_delete_elem(&pnlb_conns_new, key) == 0)
			pnlb_count_table(PNLB_TC_NEW_REMOVED, 1);
	} else if (bpf_map_delete_elem(&pnlb_conns, key) == 0)
		pnlb_conns_booked(-1);
}

/*
 * A flow's entry from either table; *table says which. pnlb_conn_find_after
 * is for a caller that looked in the established table already and found
 * `established` (or NULL). With `look_again`, a flow that moves to the
 * established table while we look is found by a second look there (it is
 * inserted there before it leaves the new-flow table).
 */
static __always_inline struct pnlb_conn *
pnlb_conn_find_after(struct pnlb_conn *established, const struct pnlb_flow_key *key, int *table,
		     int look_again)
{
	struct pnlb_conn *conn;

	*table = PNLB_ESTABLISHED;
	if (established)
		return established;
	conn = bpf_map_lookup_elem(&pnlb_conns_new, key);
	if (conn) {
		*table = PNLB_NEW;
		return conn;
	}
	return look_again ? bpf_map_lookup_elem(&pnlb_conns, key) : NULL;
}

static __always_inline struct pnlb_conn *pnlb_conn_find(const struct pnlb_flow_key *key,
							int *table)
{
	return pnlb_conn_find_after(bpf_map_lookup_elem(&pnlb_conns, key), key, table, 1);
}

/* The backend in slot `id` if it still holds the occupant a flow was given. */
static __always_inline struct pnlb_backend *pnlb_live_backend(__u32 id, __u32 generation)
{
	struct pnlb_backend *backend = pnlb_backend_get(id);

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

/* The reply entry of a nat/snat flow whose original entry (keyed `key`)
 * is `original`: the same flow, translated back. */
static __always_inline void pnlb_reply_entry(const struct pnlb_flow_key *key,
					     const struct pnlb_conn *original,
					     struct pnlb_conn *reply)
{
	*reply = *original;
	reply->direction = PNLB_DIR_REPLY;
	reply->rewrite_src = key->dst;
	reply->rewrite_sport = key->dst_port;
	reply->rewrite_dst = key->src;
	reply->rewrite_dport = key->src_port;
}

static __always_inline int pnlb_addr_eq(const struct pnlb_addr *a, const struct pnlb_addr *b)
{
	return a->words[0] == b->words[0] && a->words[1] == b->words[1] &&
	       a->words[2] == b->words[2] && a->words[3] == b->words[3];
}

/* Whether `peer` is the other entry of the flow whose entry is `conn`
 * (keyed `key`): its rewrite leads back to `key`. */
static __always_inline int pnlb_is_peer_of(const struct pnlb_conn *peer,
					   const struct pnlb_conn *conn,
					   const struct pnlb_flow_key *key)
{
	return peer->direction != conn->direction && peer->service_id == conn->service_id &&
	       pnlb_addr_eq(&peer->rewrite_dst, &key->src) &&
	       pnlb_addr_eq(&peer->rewrite_src, &key->dst) &&
	       peer->rewrite_dport == key->src_port && peer->rewrite_sport == key->dst_port;
}

/* Removes a flow's entries (both directions) from `table`. */
static __always_inline void pnlb_conn_remove(int table, const struct pnlb_flow_key *key,
					     const struct pnlb_conn *conn)
{
	struct pnlb_flow_key peer_key;

	if (conn->flags & PNLB_CONN_F_NAT) {
		pnlb_peer_key(conn, key->protocol, &peer_key);
		pnlb_conn_delete(table, &peer_key);
	}
	pnlb_conn_delete(table, key);
}

/* A packet that may open a flow: a TCP SYN without ACK (nor FIN or RST:
 * no connection starts with those), or UDP. */
static __always_inline int pnlb_opens_flow(const struct pnlb_packet *pkt)
{
	return pkt->flow.protocol != IPPROTO_TCP ||
	       (pkt->tcp_flags & (PNLB_TCP_SYN | PNLB_TCP_ACK | PNLB_TCP_FIN | PNLB_TCP_RST)) ==
		       PNLB_TCP_SYN;
}

/* A TCP packet that looks mid-flow, which a hashing nat/snat service may
 * re-create its flow from: ACK, and neither SYN nor RST (a flow that ends
 * is not worth re-creating; a packet with no flags is no flow's). */
static __always_inline int pnlb_continues_flow(const struct pnlb_packet *pkt)
{
	return (pkt->tcp_flags & (PNLB_TCP_SYN | PNLB_TCP_ACK | PNLB_TCP_RST)) == PNLB_TCP_ACK;
}

/* The state of a flow opened by this packet (pnlb_opens_flow). */
static __always_inline __u8 pnlb_initial_state(const struct pnlb_packet *pkt)
{
	return pkt->flow.protocol == IPPROTO_TCP ? PNLB_CT_SYN_SENT : PNLB_CT_UDP;
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

/*
 * Refreshes last_seen and moves the TCP state of both entries. Returns
 * whether the flow is now established and belongs in pnlb_conns: TCP on
 * the handshake's ACK, UDP on any packet after the first.
 */
static __always_inline int pnlb_conn_track(struct pnlb_conn *conn, int table,
					   const struct pnlb_packet *pkt)
{
	__u32 tick = pnlb_conn_tick();
	__u8 next = pnlb_next_state(conn->state, pkt->tcp_flags);
	__u8 fins = conn->fin_seen;
	struct pnlb_flow_key peer_key;
	struct pnlb_conn *peer;
	int promote = 0, moved, report, claimed = 0;

	if (tick - conn->touched >= PNLB_CONN_TOUCH_TICKS) {
		__u64 now = pnlb_conn_clock();

		conn->touched = tick;
		/* Signed: a stamp the daemon wrote (a synced flow) may be
		 * ahead of the coarse clock by a tick. */
		if ((__s64)(now - conn->last_seen_ns) > 0)
			conn->last_seen_ns = now;
	}
	if (conn->flags & PNLB_CONN_F_SYNCED) {
		/* A peer's flow whose packets now come here: ours to report. */
		conn->flags &= ~PNLB_CONN_F_SYNCED;
		claimed = 1;
	}
	if (table == PNLB_NEW) {
		if (conn->state == PNLB_CT_UDP)
			promote = 1;
		else if (conn->flags & PNLB_CONN_F_REHASHED)
			/* Only the backend carrying on proves a re-created flow
			 * real: to a spoofed packet it answers with a reset. */
			promote = conn->direction == PNLB_DIR_REPLY && next == PNLB_CT_ESTABLISHED;
		else if (next == PNLB_CT_ESTABLISHED)
			promote = 1;
	}
	if (pkt->tcp_flags & PNLB_TCP_FIN)
		fins |= 1 << (conn->direction & 1);
	/* Both sides closed: only the final ACK is left, so the short
	 * tcp_close timeout applies (and an SNAT port is freed sooner). */
	if (fins == 3 && next == PNLB_CT_FIN_WAIT)
		next = PNLB_CT_CLOSE;
	if (next == PNLB_CT_SYN_SENT)
		fins = 0; /* a new connection on the same tuple */
	moved = next != conn->state || fins != conn->fin_seen;
	/* Only established flows are synced, so that a flood of half-open
	 * ones never reaches the sync stream (as IPVS's sync threshold): a
	 * flow is reported when it is promoted (moved or not: UDP's state
	 * stays) and on its moves in pnlb_conns. */
	report = table == PNLB_NEW ? promote : moved || claimed;
	if (!moved && !report)
		return promote;
	if (moved) {
		pnlb_count_state_move(conn->backend_id, conn->state, next);
		pnlb_source_flow_state(conn, conn->direction == PNLB_DIR_ORIGINAL ?
						     &pkt->flow.src : &conn->rewrite_dst,
				       conn->state, next);
		conn->state = next;
		conn->fin_seen = fins;
		conn->last_seen_ns = pnlb_conn_clock();
	}
	if (!(conn->flags & PNLB_CONN_F_NAT)) {
		if (report)
			pnlb_conn_report(&pkt->flow, conn);
		return promote;
	}
	pnlb_peer_key(conn, pkt->flow.protocol, &peer_key);
	peer = pnlb_conn_lookup(table, &peer_key);
	if (peer) {
		peer->state = next;
		peer->fin_seen = fins;
		peer->flags &= ~PNLB_CONN_F_SYNCED;
		if (report && conn->direction == PNLB_DIR_REPLY)
			pnlb_conn_report(&peer_key, peer);
	}
	if (report && conn->direction == PNLB_DIR_ORIGINAL)
		pnlb_conn_report(&pkt->flow, conn);
	return promote;
}

/* Whether pnlb_conns has room for `entries` more, keeping 1/16 free for
 * flows already admitted. */
static __always_inline int pnlb_conns_have_room(__u32 entries)
{
	__u32 inserted_slot = 0, removed_slot = 1;
	__u64 *inserted = bpf_map_lookup_elem(&pnlb_conns_usage, &inserted_slot);
	__u64 *removed = bpf_map_lookup_elem(&pnlb_conns_usage, &removed_slot);
	__u64 capacity = pnlb_conns_capacity;
	__s64 used;

	if (!inserted || !removed)
		return 1;
	used = (__s64)(*inserted - *removed);
	if (used < 0)
		used = 0;
	return (__u64)used + entries <= capacity - capacity / 16;
}

/*
 * Moves an established flow from pnlb_conns_new to pnlb_conns, from the
 * entry `conn` (keyed `key`) of either direction: the reply entry first,
 * with BPF_NOEXIST, so a translation is never held twice. A full table
 * leaves the flow where it is (counted); a reply key already held by an
 * established flow ends this one (it cannot be told apart). `conn` may be
 * the new-flow table's own entry: it is freed here, and read only before.
 */
__attribute__((noinline)) int pnlb_conn_promote(const struct pnlb_flow_key *key,
						const struct pnlb_conn *conn)
{
	struct pnlb_flow_key peer_key;
	struct pnlb_conn *peer;
	int err;

	if (!key || !conn)
		return PNLB_DROP_FLOW_CONFLICT;

	if (!(conn->flags & PNLB_CONN_F_NAT)) {
		err = bpf_map_update_elem(&pnlb_conns, key, conn, BPF_NOEXIST);
		if (err == -PNLB_E2BIG) {
			pnlb_count_table(PNLB_TC_PROMOTE_FULL, 1);
			return 0;
		}
		bpf_map_delete_elem(&pnlb_conns_new, key);
		if (err)
			return 0; /* another CPU moved it first */
		pnlb_count_table(PNLB_TC_PROMOTED, 1);
		pnlb_conns_booked(1);
		return 0;
	}

	pnlb_peer_key(conn, key->protocol, &peer_key);
	peer = bpf_map_lookup_elem(&pnlb_conns_new, &peer_key);
	if (!peer || !pnlb_is_peer_of(peer, conn, key))
		return PNLB_DROP_FLOW_CONFLICT;
	/* The reply entry first: a reply must never find none. */
	if (conn->direction == PNLB_DIR_ORIGINAL)
		err = bpf_map_update_elem(&pnlb_conns, &peer_key, peer, BPF_NOEXIST);
	else
		err = bpf_map_update_elem(&pnlb_conns, key, conn, BPF_NOEXIST);
	if (err == -PNLB_E2BIG) {
		pnlb_count_table(PNLB_TC_PROMOTE_FULL, 1);
		return 0;
	}
	if (err) {
		/* Held by an established flow: ours cannot go on. */
		pnlb_conn_delete(PNLB_NEW, key);
		pnlb_conn_delete(PNLB_NEW, &peer_key);
		return PNLB_DROP_FLOW_CONFLICT;
	}
	if (conn->direction == PNLB_DIR_ORIGINAL)
		err = bpf_map_update_elem(&pnlb_conns, key, conn, BPF_ANY);
	else
		err = bpf_map_update_elem(&pnlb_conns, &peer_key, peer, BPF_ANY);
	if (err) {
		/* Full after all: undo, the flow stays where it was. */
		if (conn->direction == PNLB_DIR_ORIGINAL)
			bpf_map_delete_elem(&pnlb_conns, &peer_key);
		else
			bpf_map_delete_elem(&pnlb_conns, key);
		pnlb_count_table(PNLB_TC_PROMOTE_FULL, 1);
		return 0;
	}
	bpf_map_delete_elem(&pnlb_conns_new, key);
	bpf_map_delete_elem(&pnlb_conns_new, &peer_key);
	pnlb_count_table(PNLB_TC_PROMOTED, 2);
	pnlb_conns_booked(2);
	return 0;
}

/* Whether a snat reply key rests: its flow ended less than snat_reuse_s ago. */
static __always_inline int pnlb_snat_resting(const struct pnlb_service *svc,
					     const struct pnlb_flow_key *reply_key, __u64 now)
{
	__u64 *ended = bpf_map_lookup_elem(&pnlb_snat_rest, reply_key);

	/* Signed: `now` is the coarse clock, up to a tick behind the stamp
	 * the daemon wrote with the exact one. */
	return ended && (__s64)(now - *ended) < (__s64)svc->snat_reuse_s * 1000000000LL;
}

/*
 * Picks an SNAT address and port for a new flow and inserts its reply
 * entry into pnlb_conns_new with BPF_NOEXIST. Try i draws an address and a
 * port from hash(flow, i): spread over the whole range (a crowded part of
 * it costs nothing), and the same on every node, so a node that never saw
 * the flow finds the same port for it. A key held by an established flow,
 * or resting after its flow ended, is skipped.
 */
static __always_inline int pnlb_snat_reserve(const struct pnlb_service *svc,
					     const struct pnlb_packet *pkt,
					     const struct pnlb_conn *original,
					     const struct pnlb_conn *reply,
					     struct pnlb_addr *snat_addr, __u16 *snat_port)
{
	__u32 count = svc->snat_count;
	__u32 range = svc->snat_port_count;
	__u64 now = pnlb_conn_clock();
	__u32 seed[2] = { pnlb_flow_hash(&pkt->flow, PNLB_HASH_5TUPLE), 0 };
	struct pnlb_flow_key reply_key;

	if (count == 0 || count > PNLB_MAX_SNAT_ADDRS || range == 0)
		return PNLB_DROP_SNAT_EXHAUSTED;

	for (__u32 try = 0; try < PNLB_SNAT_TRIES; try++) {
		__u32 draw, index;
		struct pnlb_addr *addr;
		__u16 port;

		seed[1] = try;
		draw = pnlb_jhash2(seed, 2, pnlb_hash_seed);
		index = svc->id * PNLB_MAX_SNAT_ADDRS + draw % count;
		addr = bpf_map_lookup_elem(&pnlb_snat_addrs, &index);
		if (!addr)
			return PNLB_DROP_SNAT_EXHAUSTED;
		port = bpf_htons(svc->snat_port_min + (draw >> 4) % range);

		__builtin_memset(&reply_key, 0, sizeof(reply_key));
		reply_key.src = original->rewrite_dst;
		reply_key.dst = *addr;
		reply_key.src_port = original->rewrite_dport;
		reply_key.dst_port = port;
		reply_key.protocol = pkt->flow.protocol;
		if (bpf_map_lookup_elem(&pnlb_conns, &reply_key) ||
		    pnlb_snat_resting(svc, &reply_key, now))
			continue;
		if (bpf_map_update_elem(&pnlb_conns_new, &reply_key, reply, BPF_NOEXIST))
			continue;
		/* Established by another flow meanwhile: not ours after all. */
		if (bpf_map_lookup_elem(&pnlb_conns, &reply_key)) {
			bpf_map_delete_elem(&pnlb_conns_new, &reply_key);
			continue;
		}
		*snat_addr = *addr;
		*snat_port = port;
		return 0;
	}
	return PNLB_DROP_SNAT_EXHAUSTED;
}

/*
 * nat: inserts a new flow's reply entry into pnlb_conns_new. Its key is
 * (backend, client): two flows of one client port to two VIPs on the
 * same backend would share it, and the backend could not tell them apart,
 * so the second is refused. A leftover of this very flow (its original
 * entry evicted, a SYN retransmitted) is replaced.
 */
static __always_inline int pnlb_nat_reserve(const struct pnlb_packet *pkt,
					    const struct pnlb_conn *original,
					    const struct pnlb_conn *reply)
{
	struct pnlb_flow_key reply_key;
	struct pnlb_conn *held;

	pnlb_peer_key(original, pkt->flow.protocol, &reply_key);
	if (bpf_map_lookup_elem(&pnlb_conns, &reply_key))
		return PNLB_DROP_FLOW_CONFLICT;
	if (bpf_map_update_elem(&pnlb_conns_new, &reply_key, reply, BPF_NOEXIST) == 0)
		return 0;
	held = bpf_map_lookup_elem(&pnlb_conns_new, &reply_key);
	if (held && !pnlb_is_peer_of(held, original, &pkt->flow))
		return PNLB_DROP_FLOW_CONFLICT;
	if (held)
		pnlb_count_table(PNLB_TC_NEW_REMOVED, 1); /* the leftover is replaced */
	bpf_map_update_elem(&pnlb_conns_new, &reply_key, reply, BPF_ANY);
	return 0;
}

/*
 * Creates the entries of a new flow on `backend` in pnlb_conns_new;
 * returns 0 or a drop reason. For nat/snat the reply entry goes in first.
 * Global functions, this one and pnlb_conn_promote: their stacks (entries
 * and keys built in place) are not added to the scheduler's, and each is
 * verified once.
 */
/* A new flow's entries while they are built: too big for the BPF stack,
 * which holds 512 bytes over the whole chain of calls. Per CPU, and a CPU
 * runs one XDP program at a time. */
struct pnlb_new_flow {
	struct pnlb_conn original;
	struct pnlb_conn reply;
	struct pnlb_flow_key reply_key;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pnlb_new_flow);
} pnlb_new_flow_scratch SEC(".maps");

#define PNLB_OPENING(state, flags) ((__u32)(state) | (__u32)(flags) << 8)

/* `opening`: PNLB_OPENING(the flow's first state, its entry flags), one
 * argument as a BPF call takes at most five. */
__attribute__((noinline)) int pnlb_conn_create(const struct pnlb_service *svc,
					       const struct pnlb_packet *pkt, __u32 backend_id,
					       const struct pnlb_backend *backend, __u32 opening)
{
	__u8 state = opening & 0xff, flags = opening >> 8;
	__u64 now = pnlb_conn_clock();
	struct pnlb_conn *original, *reply;
	struct pnlb_flow_key *reply_key;
	struct pnlb_new_flow *scratch;
	__u32 zero = 0;
	__u64 entries = 1;

	scratch = bpf_map_lookup_elem(&pnlb_new_flow_scratch, &zero);
	if (!svc || !pkt || !backend || !scratch)
		return PNLB_DROP_NO_BACKEND;
	/* The reply entry is copied whole from the original and its key
	 * built by pnlb_peer_key: only the original starts from zero. */
	__builtin_memset(&scratch->original, 0, sizeof(scratch->original));
	original = &scratch->original;
	reply = &scratch->reply;
	reply_key = &scratch->reply_key;

	original->backend_id = backend_id;
	original->backend_generation = backend->generation;
	original->service_id = svc->id;
	original->state = state;
	original->flags = flags;
	original->direction = PNLB_DIR_ORIGINAL;
	/* What pnlb_conn_track would make of this first packet: every opening
	 * state is the state this packet leaves it in, so only its FIN is left. */
	if (pkt->tcp_flags & PNLB_TCP_FIN)
		original->fin_seen = 1 << (PNLB_DIR_ORIGINAL & 1);
	original->created_ns = now;
	original->last_seen_ns = now;
	original->touched = pnlb_conn_tick();
	original->rewrite_src = pkt->flow.src;
	original->rewrite_sport = pkt->flow.src_port;
	original->rewrite_dst = pkt->flow.dst;
	original->rewrite_dport = pkt->flow.dst_port;

	if (svc->method == PNLB_METHOD_NAT || svc->method == PNLB_METHOD_SNAT) {
		original->flags |= PNLB_CONN_F_NAT;
		original->rewrite_dst = backend->addr;
		/* port 0 services keep the client's destination port */
		if (backend->port)
			original->rewrite_dport = backend->port;

		pnlb_reply_entry(&pkt->flow, original, reply);

		if (svc->method == PNLB_METHOD_SNAT) {
			struct pnlb_addr snat_addr;
			__u16 snat_port;
			int reason;

			original->flags |= PNLB_CONN_F_SNAT;
			reply->flags |= PNLB_CONN_F_SNAT;
			reason = pnlb_snat_reserve(svc, pkt, original, reply, &snat_addr,
						   &snat_port);
			if (reason)
				return reason;
			original->rewrite_src = snat_addr;
			original->rewrite_sport = snat_port;
		} else {
			int reason = pnlb_nat_reserve(pkt, original, reply);

			if (reason)
				return reason;
		}
		pnlb_peer_key(original, pkt->flow.protocol, reply_key);
		entries = 2;
	}
	if (bpf_map_update_elem(&pnlb_conns_new, &pkt->flow, original, BPF_NOEXIST)) {
		/* The key is another flow's reply entry (a backend that is also
		 * a client of the same VIP): that flow keeps it. */
		if (entries == 2)
			bpf_map_delete_elem(&pnlb_conns_new, reply_key);
		return PNLB_DROP_FLOW_CONFLICT;
	}
	/* Neither entry is looked up again: the LRU inserts them unreferenced,
	 * so it takes the older first, the reply, which the client's next
	 * packet puts back (pnlb_conn_heal). A referenced reply would outlive
	 * its original, and the flow would be lost. */
	pnlb_count_table(PNLB_TC_NEW_ENTRIES, entries);
	pnlb_count_opened(backend_id);
	return 0;
}

/* The original entry pnlb_conn_create wrote last on this CPU. */
static __always_inline struct pnlb_conn *pnlb_new_flow_written(void)
{
	__u32 zero = 0;
	struct pnlb_new_flow *scratch = bpf_map_lookup_elem(&pnlb_new_flow_scratch, &zero);

	return scratch ? &scratch->original : NULL;
}

/*
 * A half-open nat/snat flow whose reply entry the LRU evicted (it takes
 * entries one by one): the reply entry is put back, unless another flow
 * holds its key by now. Returns 0 or a drop reason.
 */
static __always_inline int pnlb_conn_heal(const struct pnlb_flow_key *key,
					  const struct pnlb_conn *original,
					  const struct pnlb_flow_key *reply_key)
{
	struct pnlb_conn reply;

	if (bpf_map_lookup_elem(&pnlb_conns, reply_key))
		return PNLB_DROP_FLOW_CONFLICT;
	pnlb_reply_entry(key, original, &reply);
	if (bpf_map_update_elem(&pnlb_conns_new, reply_key, &reply, BPF_NOEXIST))
		return PNLB_DROP_FLOW_CONFLICT;
	bpf_map_lookup_elem(&pnlb_conns_new, reply_key);
	pnlb_count_table(PNLB_TC_NEW_ENTRIES, 1);
	return 0;
}

/*
 * The generic cell rate algorithm on the theoretical arrival time in
 * `slot`: each event moves it on by `interval` ns, and one that would move
 * it more than `burst` intervals past now waits.
 */
static __always_inline int pnlb_gcra_allows(__u64 *slot, __u64 interval, __u32 burst)
{
	__u64 now = bpf_ktime_get_ns(), tat, base, next;
	__u64 limit = interval * (burst ? burst : 1);

	for (int attempt = 0; attempt < 2; attempt++) {
		tat = *(volatile __u64 *)slot;
		base = tat > now ? tat : now;
		next = base + interval;
		if (next - now > limit)
			return 0;
		if (__sync_val_compare_and_swap(slot, tat, next) == tat)
			return 1;
	}
	/* Two CPUs beat us to it: at the rate anyway. */
	return 0;
}

/* new_flow_rate: whether the service may admit another new flow now (one
 * clock per service, shared by every CPU). */
static __always_inline int pnlb_rate_allows(const struct pnlb_service *svc)
{
	__u32 id = svc->id;
	__u64 *slot;

	if (!svc->rate_interval_ns)
		return 1;
	slot = bpf_map_lookup_elem(&pnlb_rates, &id);
	if (!slot)
		return 1;
	return pnlb_gcra_allows(slot, svc->rate_interval_ns, svc->rate_burst);
}

/* source_new_flow_rate: the same budget, for each source of the service
 * alone. A source not yet metered starts with its whole burst. */
static __always_inline int pnlb_source_rate_allows(const struct pnlb_service *svc,
						   const struct pnlb_addr *src)
{
	struct pnlb_source_key key = { .service_id = svc->id };
	__u64 *slot, fresh = 0;

	if (!svc->source_interval_ns)
		return 1;
	key.addr = *src;
	slot = bpf_map_lookup_elem(&pnlb_source_rates, &key);
	if (!slot) {
		bpf_map_update_elem(&pnlb_source_rates, &key, &fresh, BPF_NOEXIST);
		slot = bpf_map_lookup_elem(&pnlb_source_rates, &key);
		if (!slot)
			return 1;
	}
	return pnlb_gcra_allows(slot, svc->source_interval_ns, svc->source_burst);
}

/* Whether no daemon has tended this data plane for longer than
 * daemon.unattended_limit (a pinned data plane outlives its daemon, and
 * without one nobody checks the backends' health). */
static __always_inline int pnlb_unattended(void)
{
	__u32 slot = PNLB_META_UNATTENDED_AFTER;
	__u32 *after = bpf_map_lookup_elem(&pnlb_meta, &slot);

	return after && *after && pnlb_conn_clock() / 1000000000 > *after;
}

/* A backend of this service for a new flow (affinity first, then the
 * scheduler); 0 or a drop reason. */
static __always_inline int pnlb_pick_backend(const struct pnlb_service *svc,
					     const struct pnlb_packet *pkt,
					     struct pnlb_backend **backend, __u32 *backend_id)
{
	int reason;

	if (!svc->persistence_s || pnlb_affinity_lookup(svc, &pkt->flow.src, backend_id) != 0) {
		reason = pnlb_schedule(svc, &pkt->flow, backend_id);
		if (reason)
			return reason;
	}
	*backend = pnlb_backend_get(*backend_id);
	if (!*backend || !((*backend)->flags & PNLB_BACKEND_F_PRESENT))
		return PNLB_DROP_BACKEND_GONE;
	if ((*backend)->service_id != svc->id)
		return PNLB_DROP_FOREIGN_BACKEND;
	return 0;
}

/*
 * The flow this packet belongs to, created (after scheduling) if the
 * packet may open one. Returns 0 with conn/table/backend/backend_id/
 * new_flow set; PNLB_STATELESS with backend/backend_id set and no entry
 * (forward by hash); or a drop reason.
 *
 * A packet of no known flow that cannot open one goes where the service's
 * hash would have sent the flow: dr/tun forward it without state; nat and
 * snat re-create the flow's entries (the same backend, the same
 * translation: snat ports come from the flow's hash too) in the new-flow
 * table, where a spoofed packet stays until evicted and a real flow moves
 * on once its backend answers; snat not behind ECMP, where the flow may
 * be another node's with that node's SNAT address. Every other service
 * drops it.
 */
static __always_inline int pnlb_conn_for(struct xdp_md *ctx, const struct pnlb_service *svc,
					 const struct pnlb_packet *pkt, struct pnlb_conn **conn,
					 int *table, struct pnlb_conn *established,
					 struct pnlb_backend **backend, __u32 *backend_id,
					 int *new_flow, struct pnlb_node **node)
{
	int stateless = svc->flags & PNLB_SVC_F_STATELESS;
	int rehashed = 0;
	__u8 state, flags;
	int reason;

	*new_flow = 0;
	/* A TCP SYN's flow is moved to the established table by a later packet
	 * of the client's, which comes in on the same queue (the same CPU) and
	 * so not while this one looks: one look there is enough. Other packets
	 * look twice: a nat UDP flow is moved by its backend's first reply,
	 * which may come in on another CPU meanwhile. */
	*conn = pnlb_conn_find_after(established, &pkt->flow, table,
				     !(pkt->flow.protocol == IPPROTO_TCP && pnlb_opens_flow(pkt)));
	if (*conn && (*conn)->direction == PNLB_DIR_ORIGINAL) {
		if ((*conn)->service_id == svc->id) {
			if ((*conn)->flags & PNLB_CONN_F_RESET) {
				/* on_backend_down = "reset": the next packet,
				 * whatever it is, goes to a live backend, which
				 * resets the connection; the entry expires soon. */
				pnlb_source_flow_state(*conn, &pkt->flow.src, (*conn)->state,
						       PNLB_CT_CLOSE);
				pnlb_conn_remove(*table, &pkt->flow, *conn);
				pnlb_count_table(PNLB_TC_RESET, 1);
				state = pnlb_opens_flow(pkt) ? pnlb_initial_state(pkt)
							     : PNLB_CT_CLOSE;
				goto open;
			}
			*backend = pnlb_live_backend((*conn)->backend_id,
						     (*conn)->backend_generation);
			if (*backend) {
				if ((*backend)->service_id != svc->id)
					return PNLB_DROP_FOREIGN_BACKEND;
				*backend_id = (*conn)->backend_id;
				/* A half-open translated flow goes on only with
				 * its own reply entry: never on a translation
				 * another flow holds. */
				if (*table == PNLB_NEW && ((*conn)->flags & PNLB_CONN_F_NAT)) {
					struct pnlb_flow_key peer_key;
					struct pnlb_conn *peer;

					pnlb_peer_key(*conn, pkt->flow.protocol, &peer_key);
					peer = bpf_map_lookup_elem(&pnlb_conns_new, &peer_key);
					reason = 0;
					if (!peer)
						reason = pnlb_conn_heal(&pkt->flow, *conn,
								&peer_key);
					else if (!pnlb_is_peer_of(peer, *conn, &pkt->flow))
						reason = PNLB_DROP_FLOW_CONFLICT;
					if (reason) {
						pnlb_conn_delete(PNLB_NEW, &pkt->flow);
						return reason;
					}
				}
				return 0;
			}
		}
		/* Its backend is gone, or its service is (the entry is of one
		 * that no longer holds the packet's listener: removed, or moved):
		 * the flow cannot go on there, and its entry must not stay in
		 * the way of the one this service gives it. */
		pnlb_source_flow_state(*conn, &pkt->flow.src, (*conn)->state, PNLB_CT_CLOSE);
		pnlb_conn_remove(*table, &pkt->flow, *conn);
	}

	/* Behind ECMP a flow this node holds no entry of belongs to its
	 * designated node until it is synced everywhere (nodes.h). */
	if (pnlb_flows_have_designated_nodes(svc)) {
		*node = pnlb_node_for(ctx, &pkt->flow.src, pkt->flow.src_port, pkt->flow.protocol,
				      pnlb_opens_flow(pkt));
		if (*node)
			return PNLB_HAND_ON;
	}

	if (pnlb_opens_flow(pkt)) {
		state = pnlb_initial_state(pkt);
	} else if (stateless) {
		reason = pnlb_pick_backend(svc, pkt, backend, backend_id);
		return reason ? reason : PNLB_STATELESS;
	} else if ((svc->flags & PNLB_SVC_F_REHASH) && pnlb_continues_flow(pkt) &&
		   !(svc->method == PNLB_METHOD_SNAT && pnlb_among_nodes())) {
		/* (Behind ECMP an snat flow without an entry here is another
		 * node's, whose sync has not arrived: re-created here it would
		 * take this node's SNAT address, and the server would reset it.
		 * Dropped, the client sends again once the entry is here.) */
		state = pnlb_next_state(PNLB_CT_ESTABLISHED, pkt->tcp_flags);
		rehashed = 1;
	} else {
		return PNLB_DROP_NO_FLOW;
	}
open:
	/* Flows already established (re-created by hash) go on regardless. */
	if (!rehashed && pnlb_unattended())
		return PNLB_DROP_UNATTENDED;
	/* A source with all the flows it may have open, or over its own
	 * budget, is refused before it spends the service's (rehashed flows
	 * are established ones: never). */
	if (!rehashed && svc->source_max_flows &&
	    pnlb_source_flows_open(svc->id, &pkt->flow.src) >= svc->source_max_flows)
		return PNLB_DROP_SOURCE_FLOWS_LIMITED;
	if (!rehashed && !pnlb_source_rate_allows(svc, &pkt->flow.src))
		return PNLB_DROP_SOURCE_RATE_LIMITED;
	if (!pnlb_rate_allows(svc)) {
		if (!stateless)
			return PNLB_DROP_RATE_LIMITED;
		reason = pnlb_pick_backend(svc, pkt, backend, backend_id);
		return reason ? reason : PNLB_STATELESS;
	}
	/* A flow that cannot survive losing its entry is admitted only while
	 * the established table has room for it. */
	if (!stateless && !pnlb_conns_have_room(2))
		return PNLB_DROP_TABLE_FULL;
	reason = pnlb_pick_backend(svc, pkt, backend, backend_id);
	if (reason)
		return reason;
	if (svc->persistence_s && !rehashed)
		pnlb_affinity_record(svc, &pkt->flow.src, *backend_id, (*backend)->generation);
	flags = rehashed ? PNLB_CONN_F_REHASHED : 0;
	if (svc->source_max_flows)
		flags |= PNLB_CONN_F_SOURCE_COUNTED;
	reason = pnlb_conn_create(svc, pkt, *backend_id, *backend, PNLB_OPENING(state, flags));
	if (reason)
		return reason;
	if ((flags & PNLB_CONN_F_SOURCE_COUNTED) && pnlb_state_is_open(state))
		pnlb_source_flow_moved(svc->id, &pkt->flow.src, 1);
	if (rehashed)
		pnlb_service_count(svc->id, PNLB_FWD_REHASHED);
	/* The entry as it was written (pnlb_conn_create's per-CPU copy):
	 * its first packet needs it only to be rewritten, not tracked, so it
	 * is not looked up again (one hash of the key and bucket walk less). */
	*conn = pnlb_new_flow_written();
	if (!*conn)
		return PNLB_DROP_NO_BACKEND;
	*table = PNLB_NEW;
	*new_flow = 1;
	return 0;
}

#endif
