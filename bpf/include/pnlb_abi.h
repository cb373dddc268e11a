/* SPDX-License-Identifier: Apache-2.0 */
/*
 * pnlb_abi.h — the one definition of everything the XDP data plane and the
 * Rust control plane share. libbpf-cargo turns the BTF of these types into
 * #[repr(C)] Rust types (pnlb-dataplane's `abi` module), so nothing here is
 * written twice.
 *
 * Rules that keep the two sides identical:
 *   - fixed-width fields only, explicit _pad, no bit fields, no `aligned`;
 *   - every key is zeroed before it is filled (padding is part of the hash);
 *   - addresses are 16 bytes; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d) so
 *     one key type serves both families without a family field;
 *   - ports and addresses are in network byte order, everything else host.
 */
#ifndef PNLB_ABI_H
#define PNLB_ABI_H

#include <linux/types.h>

/*
 * The version of everything below as a running data plane holds it in its
 * maps. A pnlb that finds a data plane of another version pinned refuses
 * to adopt it (it would misread the maps). Bump it with any change to a
 * map's key or value layout or meaning.
 */
enum pnlb_abi_version { PNLB_ABI_VERSION = 7 };

/* pnlb_meta's slots: what a pinned data plane says about itself. */
enum pnlb_meta_slot {
	PNLB_META_ABI_VERSION = 0,
	PNLB_META_HASH_SEED = 1,
	PNLB_META_NEXT_GENERATION = 2, /* the next backend generation to give */
	/* Seconds of bpf_ktime_get_ns() after which no daemon has tended
	 * the data plane for daemon.unattended_limit: new flows are refused
	 * from then on (0: never). Each daemon tick moves it on. */
	PNLB_META_UNATTENDED_AFTER = 3,
	/* Nodes behind ECMP: PNLB_NODE_LISTS slots, the count of each list
	 * in pnlb_nodes (see pnlb_node_limits; from when each applies is in
	 * pnlb_node_since). */
	PNLB_META_NODE_COUNT = 4,
	PNLB_META_SLOTS = 7,
};

enum pnlb_limits {
	PNLB_MAX_SERVICES = 1024,
	PNLB_MAX_BACKENDS = 4096,
	/* Maglev lookup table length: a prime, NSDI'16 §3.4 (M >> N). */
	PNLB_TABLE_SIZE = 65537,
	/* A published table starts with its own lengths (see pnlb_table_slot),
	 * so a packet reads the table and its lengths from one version. */
	PNLB_TABLE_HEADER = 2,
	/* A table's capacity: the header, a backend list (chbl), the Maglev part. */
	PNLB_TABLE_CAPACITY = 2 + 64 + 65537,
	PNLB_MAX_CONNS = 262144,
};

/*
 * The address filters in front of pnlb_vips and pnlb_backend_addrs
 * (pnlb_vip_filter, pnlb_backend_filter): PNLB_ADDRESS_FILTER_BITS bits
 * in 64-bit words, bit pnlb_address_filter_bit(address) set while the set
 * holds an address of that hash. A clear bit says "not in the set"
 * without a hash lookup; a set one says "maybe" (the set is looked up).
 * The hash, on the address's four 32-bit words as stored (w0..w3):
 *   h = w0 ^ w1 ^ w2 ^ w3; h ^= h >> 16; h *= 0x7feb352d;
 *   h ^= h >> 15; h *= 0x846ca68b; h ^= h >> 16;
 *   bit = h % PNLB_ADDRESS_FILTER_BITS
 */
enum pnlb_address_filter_limits {
	PNLB_ADDRESS_FILTER_BITS = 1 << 18,
	PNLB_ADDRESS_FILTER_WORDS = (1 << 18) / 64,
};

/* The header slots of a published table. */
enum pnlb_table_slot {
	PNLB_TABLE_LEN_SLOT = 0,  /* slots of the scheduling part */
	PNLB_TABLE_LIST_SLOT = 1, /* chbl: backend ids before the Maglev part */
};

/* The flow-hash seed of tests and benchmarks; a daemon's comes from its
 * config (a per-deployment secret, the same on every node of a group). */
enum pnlb_hash_seed { PNLB_TEST_HASH_SEED = 0x706e6c62 /* "pnlb" */ };

enum pnlb_method {
	PNLB_METHOD_DR = 1,
	PNLB_METHOD_TUN = 2,
	PNLB_METHOD_NAT = 3,
	PNLB_METHOD_SNAT = 4,
};

/* tun: how packets are wrapped for the backend. */
enum pnlb_encap {
	PNLB_ENCAP_NONE = 0,
	PNLB_ENCAP_IPIP = 1, /* IPIP for IPv4, IP6IP6 for IPv6 */
	PNLB_ENCAP_GUE = 2,  /* IP in UDP (GUE variant 1, RFC draft-ietf-intarea-gue) */
};

enum pnlb_scheduler {
	PNLB_SCHED_MAGLEV = 1, /* table indexed by the flow hash */
	PNLB_SCHED_RR = 2,     /* table indexed by a per-service cursor */
	PNLB_SCHED_WRR = 3,    /* likewise, over the interleaved wrr cycle */
	PNLB_SCHED_SH = 4,     /* Maglev table, hash of the source */
	PNLB_SCHED_DH = 5,     /* Maglev table, hash of the destination */
	/* Least-load family: the table lists the backends, the data plane
	 * reads their connection counts (pnlb_backend_conns/_expired). */
	PNLB_SCHED_LC = 6,
	PNLB_SCHED_WLC = 7,
	PNLB_SCHED_SED = 8,
	PNLB_SCHED_NQ = 9,
	PNLB_SCHED_P2C = 10,
	/* Consistent hashing with bounded loads: the table holds the backend
	 * list (list_len entries) followed by the Maglev table (table_len). */
	PNLB_SCHED_CHBL = 11,
};

/* Most backends a least-load service scans per new flow. */
enum pnlb_least_limits { PNLB_MAX_LEAST_BACKENDS = 64 };

enum pnlb_hash_key {
	PNLB_HASH_5TUPLE = 0,
	PNLB_HASH_SOURCE = 1,
	PNLB_HASH_DESTINATION = 2,
};

/* TCP state as the load balancer sees it (both directions where it sees
 * both); each state has its own idle timeout (config [timeouts]). */
enum pnlb_conn_state {
	PNLB_CT_NONE = 0,
	PNLB_CT_SYN_SENT = 1,
	PNLB_CT_ESTABLISHED = 2,
	PNLB_CT_FIN_WAIT = 3,
	PNLB_CT_CLOSE = 4,
	PNLB_CT_UDP = 5,
};

/* Which way a connection-table entry's packets travel. */
enum pnlb_conn_direction {
	PNLB_DIR_ORIGINAL = 0, /* client -> VIP */
	PNLB_DIR_REPLY = 1,    /* backend -> client (nat) or -> SNAT address */
};

enum pnlb_conn_flags {
	/* Rewrite addresses/ports to the entry's rewrite_* fields. */
	PNLB_CONN_F_NAT = 1,
	/* on_backend_down = "reset": the flow's next packet goes to a new
	 * backend (which answers with a reset) instead of the dead one. */
	PNLB_CONN_F_RESET = 2,
	/* snat: the reply key holds an allocated (address, port); when the
	 * flow ends, the key rests (pnlb_snat_rest) before reuse. */
	PNLB_CONN_F_SNAT = 4,
	/* Re-created by hash from a mid-flow packet (PNLB_SVC_F_REHASH): it
	 * moves to the established table only once its backend answers. */
	PNLB_CONN_F_REHASHED = 8,
	/* Opened while its service had source_max_flows: its openings and
	 * closings move its source's count (pnlb_source_flows). */
	PNLB_CONN_F_SOURCE_COUNTED = 16,
	/* Installed from a peer's sync report, not yet seen here: the node
	 * whose packets it is re-reports it and tells of its end. The first
	 * packet here clears it (both entries) and reports the flow: this
	 * node carries it now (nodes behind ECMP, docs/scale-out.md). */
	PNLB_CONN_F_SYNCED = 32,
};

enum pnlb_service_flags {
	/* dr/tun with a hashing scheduler (maglev, sh, dh): a packet of a flow
	 * the tables do not hold may be forwarded by hash, without state, to
	 * the backend the flow would have been given. */
	PNLB_SVC_F_STATELESS = 1,
	/* nat/snat with a hashing scheduler: such a packet re-creates its
	 * flow as it was (the backend by hash, the SNAT port by hash). */
	PNLB_SVC_F_REHASH = 2,
	/* Access rules (service.allow / service.deny) name its sources in
	 * pnlb_access: every packet to it is looked up there. */
	PNLB_SVC_F_ACCESS = 4,
	/* It has allow rules: a source no rule matches is denied. */
	PNLB_SVC_F_ALLOWLIST = 8,
};

/* Access rules, all services together: source prefixes per service. */
enum pnlb_access_limits { PNLB_MAX_ACCESS_RULES = 65536 };


/* Most SNAT addresses one service may have. */
enum pnlb_snat_limits { PNLB_MAX_SNAT_ADDRS = 16, PNLB_SNAT_TRIES = 64 };

enum pnlb_backend_flags {
	/* The slot holds a configured backend; flows may be kept on it. */
	PNLB_BACKEND_F_PRESENT = 1,
};

/*
 * Why a packet was not forwarded. Every XDP_PASS and XDP_DROP the program
 * returns is counted under one of these in pnlb_reason_stats (and, once the
 * service is known, in the service's own drops[]). Append only.
 */
enum pnlb_reason {
	PNLB_PASS_NOT_IP = 0,          /* ARP, LLDP, ...: the kernel's business */
	PNLB_PASS_NOT_SERVICE = 1,     /* destination is not a VIP */
	PNLB_PASS_VIP_NO_SERVICE = 2,  /* VIP, but no service on that port/proto */
	PNLB_PASS_VIP_OTHER_PROTO = 3, /* ICMP etc. to a VIP */
	PNLB_DROP_TRUNCATED_ETH = 4,
	PNLB_DROP_TRUNCATED_IP = 5,
	PNLB_DROP_BAD_IP_HEADER = 6,   /* version, IHL < 5, total length */
	PNLB_DROP_IPV4_OPTIONS = 7,
	PNLB_DROP_FRAGMENT = 8,        /* a later fragment whose first was not
					* seen (reordered or lost), or a TCP
					* fragment at offset 8 (RFC 1858) */
	PNLB_DROP_IPV6_EXT_HEADER = 9,
	PNLB_DROP_TRUNCATED_L4 = 10,
	PNLB_DROP_NO_BACKEND = 11,     /* service has no usable backend */
	PNLB_DROP_BACKEND_GONE = 12,   /* table names a backend slot that is empty */
	PNLB_DROP_UNSUPPORTED_METHOD = 13,
	PNLB_DROP_SNAT_EXHAUSTED = 14, /* no free (address, port) for a new flow */
	PNLB_PASS_NO_NEIGH = 15,       /* translated reply handed to the kernel to
					* resolve the next hop and forward */
	PNLB_DROP_NO_ROUTE = 16,       /* translated reply has no route */
	PNLB_DROP_BACKENDS_FULL = 17,  /* every candidate is at max_conns */
	PNLB_TX_ICMP_TOO_BIG = 18,     /* too big for the egress (tun: once
					* encapsulated); answered with
					* frag-needed / packet-too-big */
	PNLB_DROP_TOO_BIG = 19,        /* too big for the egress and may not be
					* answered (IPv4 without DF) */
	PNLB_DROP_ENCAP_FAILED = 20,   /* tun: no headroom for the outer headers */
	PNLB_DROP_NO_FLOW = 21,        /* a packet of no known flow that cannot
					* start one (not a SYN) and may not be
					* forwarded by hash */
	PNLB_DROP_TABLE_FULL = 22,     /* a new flow refused: the established
					* table is full and the flow could not
					* survive losing its entry */
	PNLB_DROP_RATE_LIMITED = 23,   /* a new flow above the service's
					* new_flow_rate */
	PNLB_DROP_FOREIGN_BACKEND = 24, /* a table or entry named another
					 * service's backend (never expected) */
	PNLB_DROP_FLOW_CONFLICT = 25,  /* a nat/snat flow whose reply entry is
					* gone, or would be another flow's */
	PNLB_FWD_STATELESS = 26,       /* forwarded by hash without state (not a
					* drop: counted here to be visible) */
	PNLB_FWD_REHASHED = 27,        /* nat/snat: a flow no table held,
					* re-created by hash (not a drop) */
	PNLB_TX_ICMP_TIME_EXCEEDED = 28, /* nat/snat: TTL / hop limit expired
					  * here; answered with time exceeded */
	PNLB_DROP_ICMP_RATE_LIMITED = 29, /* an ICMP answer (time exceeded, too
					   * big) withheld by the rate limit;
					   * the packet dropped */
	PNLB_FWD_FRAGMENT = 30,        /* a fragment of a flow, forwarded (not a
					* drop: counted here to be visible) */
	PNLB_PASS_QINQ = 31,           /* two VLAN tags (QinQ, 802.1ad): the
					* kernel's, untouched */
	PNLB_DROP_VLAN_FAILED = 32,    /* no room to put a VLAN tag back */
	PNLB_DROP_UNATTENDED = 33,     /* a new flow refused: no daemon has
					* tended the data plane (health checks
					* stopped) for daemon.unattended_limit */
	PNLB_DROP_ACCESS_DENIED = 34,  /* the source is denied by the service's
					* access rules (or allowed by none) */
	PNLB_DROP_SOURCE_RATE_LIMITED = 35, /* a new flow above the service's
					     * source_new_flow_rate for its source */
	PNLB_DROP_SOURCE_FLOWS_LIMITED = 36, /* a new flow from a source that
					      * has source_max_flows open */
	PNLB_FWD_HANDED_ON = 37,       /* nat behind ECMP: a packet of a flow
					* this node holds no entry of, handed to
					* the flow's designated node (not a drop) */
	PNLB_PASS_OTHER_HOST = 38,     /* a frame addressed to another host's MAC
					* (a bridge flooding it, a port in
					* promiscuous mode): the kernel's, which
					* drops it */
	PNLB_REASON_MAX = 39,
};

/* Connection-table events, per CPU in pnlb_table_stats. */
enum pnlb_table_counter {
	PNLB_TC_NEW_ENTRIES = 0,   /* entries created in the new-flow table */
	PNLB_TC_PROMOTED = 1,      /* entries moved to the established table */
	PNLB_TC_PROMOTE_FULL = 2,  /* flows left in the new-flow table: the
				    * established table was full */
	PNLB_TC_RESET = 3,         /* reset-marked flows rescheduled */
	PNLB_TC_NEW_REMOVED = 4,   /* entries the data plane removed from the
				    * new-flow table (not promoted) */
	PNLB_TC_COUNTERS = 5,
};

struct pnlb_addr {
	__u32 words[4];
};

/* A key of pnlb_access (an LPM trie): the service id's 32 bits, then the
 * source prefix (IPv4-mapped: an IPv4 /n is 96 + n bits of it). */
struct pnlb_access_key {
	__u32 prefixlen;
	__u32 service_id;
	struct pnlb_addr addr;
};

/* What a rule says, and where its hits are counted (pnlb_access_hits). */
struct pnlb_access_rule {
	__u32 index;
	__u8 allow; /* 1 allow, 0 deny */
	__u8 _pad[3];
};

struct pnlb_service_key {
	struct pnlb_addr vip;
	__u16 port; /* 0 = every port of the VIP */
	__u8 protocol; /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 _pad;
};

struct pnlb_service {
	__u32 id; /* index into per-service arrays and pnlb_tables */
	__u8 method; /* enum pnlb_method */
	__u8 scheduler; /* enum pnlb_scheduler */
	__u8 hash_key; /* enum pnlb_hash_key */
	__u8 snat_count; /* addresses at pnlb_snat_addrs[id * MAX_SNAT_ADDRS] */
	__u16 snat_port_min; /* host order */
	__u16 snat_port_count;
	__u32 persistence_s; /* source affinity timeout, 0 = none */
	__u8 persistence_prefix; /* of the 128-bit (IPv4-mapped) address */
	__u8 flags; /* enum pnlb_service_flags */
	/* snat: seconds an ended flow's (address, port, backend) rests before
	 * reuse, as the backend may still hold it in TIME_WAIT */
	__u16 snat_reuse_s;
	__u32 chbl_epsilon_pct; /* chbl: a backend's cap is (100 + this)% of its share */
	/* new_flow_rate: nanoseconds between new flows (1e9 / rate), and how
	 * many may come at once; 0 = no limit */
	__u32 rate_interval_ns;
	__u32 rate_burst;
	/* source_new_flow_rate: the same, for each source address alone */
	__u32 source_interval_ns;
	__u32 source_burst;
	/* source_max_flows: flows each source may have open at once; 0 = no
	 * limit */
	__u32 source_max_flows;
};

/*
 * A service found by its id (pnlb_service_copies): an established flow's
 * packets read their service through their entry's service_id instead of
 * hashing the packet's listener. The key says which listener the copy is
 * of; a reader takes the copy only when the key is the packet's own, so an
 * empty copy, or one of another service that took the id, is never used.
 */
struct pnlb_service_copy {
	struct pnlb_service_key key;
	struct pnlb_service service;
};

/*
 * Nodes behind ECMP (docs/scale-out.md): with nat the servers' replies
 * come back through whichever node their routing picks, not necessarily
 * the one that saw the flow's SYN; an snat flow or a per-node scheduler's
 * (rr, the least-load family) cannot be rebuilt on another node (dr and
 * tun by hash can). Until such a flow is established and synced to every
 * node, its packets go to its designated node: the live node at
 * hash(client address, client port, protocol) % count in pnlb_nodes (in
 * address order, the same list on every node). A node without the flow
 * hands a packet on to the designated node at L2. A packet that finds no
 * entry at its designated node, or that another node handed on (its
 * source MAC in pnlb_node_macs), is handled there if it opens the flow;
 * otherwise it gets a second chance: the flow's designated node in the
 * list as it was before the last change (a handshake under way when a
 * node joined or left), unless that is this node or the one that handed
 * it on; it is never handed on a third time.
 *
 * Every node must switch lists at the same instant: a list is published
 * ahead of time with the instant it applies from (its pnlb_node_since:
 * bpf_ktime_get_ns(); 0: unused or being written), and the program picks
 * by the clock. Of PNLB_NODE_LISTS lists, the current one is the one with
 * the latest start not in the future, the one before
 * it serves second chances for PNLB_SECOND_CHANCE_S after the switch,
 * and the third is free to be written (or waits for its instant).
 */
enum pnlb_node_limits {
	PNLB_MAX_NODES = 16,
	PNLB_NODE_LISTS = 3,
	/* How long after a switch of lists the list before it serves second
	 * chances: longer than a handshake takes (a SYN retransmitted after
	 * 1 s and 3 s included). */
	PNLB_SECOND_CHANCE_S = 5,
};

struct pnlb_node {
	__u8 mac[6];     /* the node's MAC on ifindex */
	__u8 src_mac[6]; /* ours on ifindex */
	__u32 ifindex;
	__u32 is_self;   /* 1: this node */
};

/*
 * The MAC of each interface the program is attached to (pnlb_own_macs'
 * one entry): a unicast frame addressed to another MAC is not this host's
 * to forward. An interface not listed is not checked.
 */
enum pnlb_own_mac_limits { PNLB_MAX_OWN_MACS = 8 };

struct pnlb_own_mac {
	__u32 ifindex;
	__u8 mac[6];
	__u8 _pad[2];
};

struct pnlb_own_macs {
	__u32 count;
	struct pnlb_own_mac entries[PNLB_MAX_OWN_MACS];
};

struct pnlb_mac_key {
	__u8 mac[6];
	__u8 _pad[2];
};

/* A key of pnlb_source_rates: one source of one service. */
struct pnlb_source_key {
	__u32 service_id;
	__u32 _pad;
	struct pnlb_addr addr;
};

/*
 * source_max_flows: what the data plane saw a source's flows do
 * (pnlb_source_flows, counters it alone adds to) and what the daemon's
 * last census of the tables counted (pnlb_source_census, written by the
 * sweep with the counters as they were when its walk began). Open flows =
 * census.flows + (opened - opened_base) - (closed - closed_base), as
 * backend loads are kept: flows that end unseen (idle, evicted) leave the
 * count at the next census.
 */
struct pnlb_source_flows {
	__u64 opened; /* flows opened, or reopened on their tuple by a SYN */
	__u64 closed; /* flows closed by a FIN or RST, or removed here */
};

struct pnlb_source_census {
	__u64 flows; /* open flows the census found */
	__u64 opened_base;
	__u64 closed_base;
};

/* Sources whose new flows are metered at once (an LRU: the quietest go). */
enum pnlb_source_limits { PNLB_MAX_METERED_SOURCES = 65536 };

/* Source affinity (IPVS persistence): a client prefix -> its backend. */
struct pnlb_affinity_key {
	__u32 service_id;
	__u32 _pad;
	struct pnlb_addr client; /* masked to the service's prefix */
};

struct pnlb_affinity {
	__u32 backend_id;
	__u32 backend_generation;
	__u64 last_seen_ns; /* when its last new flow started */
};

struct pnlb_backend {
	struct pnlb_addr addr;
	__u16 port;
	__u8 flags; /* enum pnlb_backend_flags */
	__u8 encap; /* tun: enum pnlb_encap (the backend's service's) */
	__u32 ifindex; /* egress interface towards the backend */
	__u8 mac[6]; /* next-hop MAC (the backend itself for dr) */
	__u8 src_mac[6]; /* our MAC on ifindex */
	/* Bumped whenever the slot is reused, so a flow pinned to the old
	 * occupant is rescheduled instead of following the new one. */
	__u32 generation;
	__u32 weight;
	__u32 max_conns; /* 0 = unlimited; a full backend takes no new flow */
	/* tun: outer source address towards this backend (the LB's address
	 * on the route to it, or the service's tunnel_source). */
	struct pnlb_addr tun_src;
	__u16 gue_port; /* tun/gue: outer UDP destination port, network order */
	/* tun: low bits of the outer source (tun_src) taken from the flow
	 * hash, for ECMP / RSS entropy; 0 = tun_src as it is */
	__u8 tun_src_entropy_bits;
	__u8 _pad1;
	__u32 service_id; /* the only service whose flows it may carry */
	/* 802.1Q VLAN id on ifindex (the parent of the VLAN device the
	 * backend is reached through), 0 = untagged */
	__u16 vlan;
	__u16 _pad2;
};

/*
 * Connection counts per backend (IPVS ActiveConn / InActConn), as two
 * single-writer halves so that no update is lost and no error lasts:
 * the data plane counts flows opened and moves into and out of
 * ESTABLISHED (atomic adds, pnlb_backend_conns); after each pass over the
 * tables userspace writes what they hold (pnlb_backend_load), with the
 * data plane's counts as they were when the pass began. Between passes
 *   active   = load.active + (became_active - became_base) - (stopped_active - stopped_base)
 *   inactive = load.inactive + (opened - opened_base) - (became ...) + (stopped ...)
 * and each pass replaces whatever drifted (evictions, resets, synced
 * flows, a close seen on two CPUs at once) with the truth.
 */
struct pnlb_backend_conns {
	__u64 opened;
	__u64 became_active;
	__u64 stopped_active;
};

struct pnlb_backend_load {
	__u64 active;
	__u64 inactive;
	__u64 opened_base;
	__u64 became_base;
	__u64 stopped_base;
};

struct pnlb_flow_key {
	struct pnlb_addr src;
	struct pnlb_addr dst;
	__u16 src_port;
	__u16 dst_port;
	__u8 protocol;
	__u8 _pad[3];
};

/*
 * A connection-table entry. nat and snat flows have two: the original
 * (client -> VIP) and the reply (as it arrives from the backend). Each says
 * how to rewrite its own packets, and the other entry's key is always
 * (rewrite_dst, rewrite_src, rewrite_dport, rewrite_sport).
 */
struct pnlb_conn {
	__u32 backend_id;
	__u32 backend_generation;
	__u32 service_id;
	__u8 state; /* enum pnlb_conn_state */
	__u8 direction; /* enum pnlb_conn_direction */
	__u8 flags; /* enum pnlb_conn_flags */
	__u8 fin_seen; /* 1 << direction for each side that sent a FIN */
	__u64 created_ns;
	__u64 last_seen_ns;
	struct pnlb_addr rewrite_src;
	struct pnlb_addr rewrite_dst;
	__u16 rewrite_sport;
	__u16 rewrite_dport;
	/* The data plane's: the kernel tick (jiffies, low 32 bits) at which it
	 * last stamped last_seen_ns (conntrack.h). 0 or another host's value
	 * (an entry userspace installed or a peer synced) only makes the next
	 * packet stamp it, so this field needs no ABI version of its own. */
	__u32 touched;
};

/*
 * Failover sync: the data plane reports each flow's original entry when it
 * is established (moved into pnlb_conns) and when its state moves there
 * (pnlb_conn_events, a ring buffer the active node streams to its peers);
 * half-open flows are not reported. Off unless [ha] is configured.
 */
struct pnlb_conn_event {
	struct pnlb_flow_key key;
	struct pnlb_conn conn;
};

/* packets/bytes: client -> backend; reply_*: backend -> client, where the
 * replies cross the load balancer (nat, snat). */
struct pnlb_service_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
	__u64 reply_packets;
	__u64 reply_bytes;
	__u64 drops[PNLB_REASON_MAX];
};

struct pnlb_backend_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
	__u64 reply_packets;
	__u64 reply_bytes;
};

/*
 * A next hop's MAC as the daemon last saw the kernel hold it usable
 * (pnlb_last_known_neighbours, by the interface the FIB names and the next
 * hop's address): a translated reply whose FIB answer is "no neighbour"
 * goes to it rather than to the kernel, which cannot forward it while the
 * VIP it comes from is a local address (a martian source). Only the
 * routers and next hops the daemon watches are listed; one the kernel has
 * given up on (FAILED) is taken out.
 */
enum pnlb_last_known_limits { PNLB_MAX_LAST_KNOWN = 256 };

struct pnlb_neighbour_key {
	__u32 ifindex;
	struct pnlb_addr addr; /* IPv4-mapped for IPv4 */
};

struct pnlb_neighbour {
	__u8 mac[6];     /* the next hop's */
	__u8 src_mac[6]; /* ours on ifindex */
};

/* A VLAN device the FIB may route replies out of (pnlb_vlan_devices, by
 * its ifindex): sent on its parent, tagged with its id. */
struct pnlb_vlan_device {
	__u32 parent_ifindex;
	__u16 vid;
	__u16 _pad;
};

/* Compile-time layout checks; the Rust side asserts the same numbers. */
_Static_assert(sizeof(struct pnlb_addr) == 16, "pnlb_addr");
_Static_assert(sizeof(struct pnlb_service_key) == 20, "pnlb_service_key");
_Static_assert(sizeof(struct pnlb_service) == 44, "pnlb_service");
_Static_assert(sizeof(struct pnlb_service_copy) == 64, "pnlb_service_copy");
_Static_assert(sizeof(struct pnlb_source_census) == 24, "pnlb_source_census");
_Static_assert(sizeof(struct pnlb_node) == 20, "pnlb_node");
_Static_assert(sizeof(struct pnlb_own_macs) == 100, "pnlb_own_macs");
_Static_assert(sizeof(struct pnlb_affinity_key) == 24, "pnlb_affinity_key");
_Static_assert(sizeof(struct pnlb_affinity) == 16, "pnlb_affinity");
_Static_assert(sizeof(struct pnlb_backend) == 76, "pnlb_backend");
_Static_assert(sizeof(struct pnlb_backend_conns) == 24, "pnlb_backend_conns");
_Static_assert(sizeof(struct pnlb_backend_load) == 40, "pnlb_backend_load");
_Static_assert(sizeof(struct pnlb_flow_key) == 40, "pnlb_flow_key");
_Static_assert(sizeof(struct pnlb_conn) == 72, "pnlb_conn");
_Static_assert(sizeof(struct pnlb_conn_event) == 112, "pnlb_conn_event");
_Static_assert(sizeof(struct pnlb_service_stats) == 40 + 8 * PNLB_REASON_MAX,
	       "pnlb_service_stats");
_Static_assert(sizeof(struct pnlb_backend_stats) == 40, "pnlb_backend_stats");
_Static_assert(sizeof(struct pnlb_vlan_device) == 8, "pnlb_vlan_device");
_Static_assert(sizeof(struct pnlb_neighbour_key) == 20, "pnlb_neighbour_key");
_Static_assert(sizeof(struct pnlb_neighbour) == 12, "pnlb_neighbour");

/*
 * `pnlb decap` (bpf/decap.bpf.c), the real-server side of tun: its
 * counters, one slot each in pnlb_decap_stats.
 */
enum pnlb_decap_counter {
	PNLB_DECAP_IPIP = 0,          /* IPIP / IP6IP6 stripped */
	PNLB_DECAP_GUE = 1,           /* GUE stripped */
	PNLB_DECAP_PASS_OTHER = 2,    /* not a tunnel packet */
	PNLB_DECAP_PASS_NOT_LOCAL = 3, /* a tunnel packet for another host */
	PNLB_DECAP_PASS_MALFORMED = 4, /* truncated, options, fragments, bad GUE */
	PNLB_DECAP_FAILED = 5,        /* could not move the packet start */
	PNLB_DECAP_PASS_FOREIGN = 6,  /* a tunnel from a source outside --from */
	PNLB_DECAP_PASS_NOT_OURS = 7, /* inner destination neither local nor a --vip */
	PNLB_DECAP_COUNTERS = 8,
};

/* A key of pnlb_decap_from (an LPM trie): the load balancers' source
 * prefixes; IPv4 ones IPv4-mapped, their length plus 96. */
struct pnlb_decap_prefix {
	__u32 prefixlen;
	struct pnlb_addr addr;
};

#endif /* PNLB_ABI_H */
