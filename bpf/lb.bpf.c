// SPDX-License-Identifier: Apache-2.0
/*
 * pnlb XDP entry point: classify -> the established flow's entry, which
 * names its service, or else the service's id by listener -> the service
 * by id -> connection table / scheduler -> forward. Everything
 * slow-changing (services, backends, tables) is decided in userspace and
 * published through maps.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "pnlb_abi.h"
#include "lib/maps.h"
#include "lib/stats.h"
#include "lib/parse.h"
#include "lib/conntrack.h"
#include "lib/forward_dr.h"
#include "lib/nat.h"
#include "lib/route.h"
#include "lib/icmp.h"
#include "lib/encap.h"
#include "lib/pmtu.h"
#include "lib/ttl.h"
#include "lib/vlan.h"

/*
 * BTF anchor: makes clang emit every ABI enum into BTF so that libbpf-cargo
 * generates them for Rust. Never read by the program.
 */
const volatile struct {
	enum pnlb_limits limits;
	enum pnlb_hash_seed hash_seed;
	enum pnlb_method method;
	enum pnlb_encap encap;
	enum pnlb_scheduler scheduler;
	enum pnlb_hash_key hash_key;
	enum pnlb_backend_flags backend_flags;
	enum pnlb_reason reason;
	enum pnlb_conn_state conn_state;
	enum pnlb_conn_direction conn_direction;
	enum pnlb_conn_flags conn_flags;
	enum pnlb_snat_limits snat_limits;
	struct pnlb_affinity_key affinity_key;
	struct pnlb_affinity affinity;
	struct pnlb_backend_conns backend_conns;
	struct pnlb_backend_load backend_load;
	enum pnlb_table_slot table_slot;
	enum pnlb_service_flags service_flags;
	enum pnlb_table_counter table_counter;
	struct pnlb_conn_event conn_event;
	enum pnlb_least_limits least_limits;
	enum pnlb_decap_counter decap_counter;
	enum pnlb_abi_version abi_version;
	enum pnlb_meta_slot meta_slot;
	struct pnlb_vlan_device vlan_device;
	enum pnlb_access_limits access_limits;
	enum pnlb_source_limits source_limits;
	struct pnlb_source_key source_key;
	struct pnlb_access_key access_key;
	struct pnlb_access_rule access_rule;
	enum pnlb_node_limits node_limits;
	struct pnlb_node node;
	struct pnlb_mac_key mac_key;
	enum pnlb_address_filter_limits address_filter_limits;
	enum pnlb_last_known_limits last_known_limits;
} pnlb_abi_anchor;

/*
 * Service `id` as its live copy holds it, if that copy is of a listener
 * the flow is for: an empty copy, or another service's that took the id
 * since, is not.
 */
static __always_inline struct pnlb_service *pnlb_service_by_id(__u32 id,
							       const struct pnlb_flow_key *flow)
{
	struct pnlb_service_copy *copy;
	__u32 index, *live;

	live = bpf_map_lookup_elem(&pnlb_service_live_copy, &id);
	if (!live)
		return NULL;
	index = id * 2 + (*live & 1);
	copy = bpf_map_lookup_elem(&pnlb_service_copies, &index);
	if (!copy || (copy->key.port && copy->key.port != flow->dst_port) ||
	    copy->key.protocol != flow->protocol || copy->service.id != id ||
	    !pnlb_addr_eq(&copy->key.vip, &flow->dst))
		return NULL;
	return &copy->service;
}

/*
 * The service of listener `key` for the flow. pnlb_services gives its id
 * only, one aligned word, and the copy gives the rest: the map, a
 * preallocated hash, hands an element it replaced or deleted to the next
 * write at once, so the element found may hold another service by the
 * time it is read. Its id then names a copy of another listener, and a
 * second lookup finds the key's element as it is now. So the control
 * plane never waits for readers before writing this map.
 */
static __always_inline struct pnlb_service *pnlb_listener_service(struct pnlb_service_key *key,
								  const struct pnlb_flow_key *flow)
{
	struct pnlb_service *entry, *svc;

	entry = bpf_map_lookup_elem(&pnlb_services, key);
	if (!entry)
		return NULL;
	svc = pnlb_service_by_id(*(volatile __u32 *)&entry->id, flow);
	if (svc)
		return svc;
	entry = bpf_map_lookup_elem(&pnlb_services, key);
	return entry ? pnlb_service_by_id(*(volatile __u32 *)&entry->id, flow) : NULL;
}

/*
 * The id of the service on the flow's port of its VIP, or on every port of
 * it; -1 for none. A global function (the verifier checks it once): its
 * lookups and checks are off the established path.
 */
__attribute__((noinline)) int pnlb_find_service_id(const struct pnlb_flow_key *flow)
{
	struct pnlb_service_key key = {};
	struct pnlb_service *svc;

	if (!flow)
		return -1;
	key.vip = flow->dst;
	key.port = flow->dst_port;
	key.protocol = flow->protocol;
	svc = pnlb_listener_service(&key, flow);
	if (!svc) {
		key.port = 0;
		svc = pnlb_listener_service(&key, flow);
	}
	return svc ? (int)svc->id : -1;
}

/*
 * The service of an established flow's packet, through the flow's entry
 * (its copy by the entry's service_id). So an established flow stays with
 * the service that took it while that service lasts, as IPVS keeps a
 * connection: one on every port of its VIP keeps its flows when a service
 * on one of those ports is added (which takes the new flows).
 */
static __always_inline struct pnlb_service *pnlb_flow_service(const struct pnlb_conn *conn,
							      const struct pnlb_flow_key *flow)
{
	if (conn->direction != PNLB_DIR_ORIGINAL)
		return NULL;
	return pnlb_service_by_id(conn->service_id, flow);
}

/* A fragment of a service's flow: counted, and a first one remembered. */
static __always_inline void pnlb_fragment_seen(__u32 service_id, const struct pnlb_packet *pkt)
{
	if (!pkt->fragment)
		return;
	pnlb_service_count(service_id, PNLB_FWD_FRAGMENT);
	if (pkt->fragment == PNLB_FIRST_FRAGMENT)
		pnlb_fragment_remember(&pkt->flow, pkt->fragment_id);
}

/*
 * The address a nat/snat server sees as its peer, which our answers to it
 * come from: the SNAT address (snat) or the VIP (nat).
 */
static __always_inline const struct pnlb_addr *pnlb_server_peer(const struct pnlb_conn *conn,
								const struct pnlb_packet *pkt)
{
	return (conn->flags & PNLB_CONN_F_SNAT) ? &pkt->flow.dst : &conn->rewrite_src;
}

/*
 * A packet from a backend that no entry here translates: behind ECMP, a
 * nat reply of a flow this node does not hold goes to the flow's
 * designated node (its client is the destination; nodes.h), unless it is
 * for this host (a health check's answer); the rest is the kernel's.
 */
static __always_inline int pnlb_reply_without_flow(struct xdp_md *ctx,
						   const struct pnlb_packet *pkt)
{
	struct pnlb_node *node = pnlb_node_for(ctx, &pkt->flow.dst, pkt->flow.dst_port,
					       pkt->flow.protocol, 0);

	if (!node || pnlb_for_this_host(ctx, pkt))
		return pnlb_pass(PNLB_PASS_NOT_SERVICE);
	pnlb_count_reason(PNLB_FWD_HANDED_ON);
	return pnlb_hand_on(ctx, node);
}

/*
 * A packet from a nat/snat backend: translate it back if it is a reply.
 */
static __always_inline int pnlb_handle_reply(struct xdp_md *ctx, const struct pnlb_packet *pkt)
{
	struct bpf_fib_lookup fib;
	struct pnlb_conn *conn;
	int table, promote, reason, rc;
	__u32 service_id;

	conn = pnlb_conn_find(&pkt->flow, &table);
	if (!conn || conn->direction != PNLB_DIR_REPLY)
		return pnlb_reply_without_flow(ctx, pkt);
	if (pnlb_ttl_expires(pkt))
		return pnlb_time_exceeded(ctx, conn->service_id, pkt, pnlb_server_peer(conn, pkt));
	pnlb_fragment_seen(conn->service_id, pkt);
	rc = pnlb_fib_route(ctx, conn, pkt, &fib);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return pnlb_too_big(ctx, conn->service_id, pkt, pnlb_server_peer(conn, pkt),
				    fib.mtu_result, 0);
	/* A UDP reply establishes its flow. */
	promote = pnlb_conn_track(conn, table, pkt);
	reason = pnlb_nat_rewrite(ctx, pkt, conn);
	if (reason)
		return pnlb_service_drop(conn->service_id, reason);
	pnlb_count_reply(conn->service_id, conn->backend_id, pkt->len);
	if (promote) {
		/* Promotion frees the entry: nothing reads it after. */
		service_id = conn->service_id;
		reason = pnlb_conn_promote(&pkt->flow, conn);
		if (reason)
			return pnlb_service_drop(service_id, reason);
	}
	return pnlb_fib_send(ctx, &fib, rc);
}

/* pnlb_tun_encap's "go on and forward it". */
#define PNLB_TUN_ENCAPSULATED (-1)

/*
 * tun: puts the outer headers on, or answers with ICMP when the result
 * would not fit; returns PNLB_TUN_ENCAPSULATED or the verdict. A global
 * function, so the verifier checks it once rather than once per path that
 * reaches it.
 */
__attribute__((noinline)) int pnlb_tun_encap(struct xdp_md *ctx, const struct pnlb_packet *pkt,
					     const struct pnlb_backend *backend, __u32 service_id)
{
	__u32 overhead, mtu;
	int reason;

	if (!ctx || !pkt || !backend)
		return XDP_DROP;
	overhead = pnlb_encap_overhead(backend, pkt->ipv6);
	if (!pnlb_fits_mtu(ctx, backend, overhead, &mtu))
		return pnlb_tun_too_big(ctx, service_id, pkt, mtu, overhead);
	reason = pnlb_encap(ctx, pkt, backend, overhead);
	if (reason)
		return pnlb_service_drop(service_id, reason);
	return PNLB_TUN_ENCAPSULATED;
}

/* pnlb_check_egress's "it fits". */
#define PNLB_FITS (-1)

/*
 * dr, nat, snat: whether the client's packet, as it arrived, fits the
 * backend's egress; PNLB_FITS or the verdict (answered from the VIP).
 * tun checks with its headers in pnlb_tun_encap.
 */
static __always_inline int pnlb_check_egress(struct xdp_md *ctx, __u32 service_id,
					     const struct pnlb_packet *pkt,
					     const struct pnlb_backend *backend)
{
	__u32 mtu;

	if (backend->encap != PNLB_ENCAP_NONE || pnlb_fits_any_link(pkt) ||
	    pnlb_fits_mtu(ctx, backend, 0, &mtu))
		return PNLB_FITS;
	return pnlb_too_big(ctx, service_id, pkt, &pkt->flow.dst, mtu, 0);
}

/* The last step towards a backend: tunneled for tun, then to its MAC. */
static __always_inline int pnlb_forward_to_backend(struct xdp_md *ctx, __u32 service_id,
						   const struct pnlb_packet *pkt,
						   const struct pnlb_backend *backend,
						   __u32 backend_id, int new_flow)
{
	int verdict;

	if (backend->encap != PNLB_ENCAP_NONE) {
		verdict = pnlb_tun_encap(ctx, pkt, backend, service_id);
		if (verdict != PNLB_TUN_ENCAPSULATED)
			return verdict;
	}
	pnlb_count_forward(service_id, backend_id, pkt->len, new_flow);
	return pnlb_forward_l2(ctx, backend);
}

/*
 * An ICMP error: if it quotes a translated flow, translate it and send it
 * on (to the backend, or routed to the client); otherwise it is the
 * kernel's, untouched.
 */
static __always_inline int pnlb_handle_icmp_error(struct xdp_md *ctx, const struct pnlb_packet *pkt)
{
	struct pnlb_conn *conn;
	struct pnlb_backend *backend;

	conn = pkt->ipv6 ? pnlb_icmp6_translate(ctx) : pnlb_icmp4_translate(ctx);
	if (!conn)
		return pnlb_pass(pnlb_is_vip(&pkt->flow.dst) ? PNLB_PASS_VIP_OTHER_PROTO
							      : PNLB_PASS_NOT_SERVICE);
	if (conn->direction == PNLB_DIR_REPLY) {
		pnlb_count_reply(conn->service_id, conn->backend_id, pkt->len);
		return pnlb_forward_fib(ctx, conn, pkt);
	}
	backend = pnlb_live_backend(conn->backend_id, conn->backend_generation);
	if (!backend)
		return pnlb_service_drop(conn->service_id, PNLB_DROP_BACKEND_GONE);
	return pnlb_forward_to_backend(ctx, conn->service_id, pkt, backend, conn->backend_id, 0);
}

/*
 * Everything but VLAN tags (pnlb_xdp): the verdict, with the egress VLAN
 * or-ed in by the paths that forward. Inlined: as a global function its
 * call cost 10-30 ns a packet in BPF_PROG_TEST_RUN (the hot path keeps its
 * state in registers across an inlined body). The functions that stay
 * global (flow creation and promotion, fragments, ICMP answers, tun, the
 * scheduler) are off the established path and keep verification under
 * the kernel's limit (PNLB_VERIFIER_STATS in loader.rs shows it).
 */
static __always_inline int pnlb_process(struct xdp_md *ctx)
{
	struct pnlb_backend *backend = NULL;
	struct pnlb_node *node = NULL;
	struct pnlb_conn *established = NULL;
	struct pnlb_conn *conn = NULL;
	struct pnlb_service *svc, service;
	struct pnlb_packet pkt;
	__u32 backend_id = 0;
	int new_flow = 0, table = 0, promote = 0;
	int reason, verdict, found;

	reason = pnlb_parse(ctx, &pkt);
	svc = NULL;
	if (reason == PNLB_PARSE_TO_VIP) {
		/* Parse took it for a VIP's by its filter bit (pnlb_may_be_vip):
		 * a service confirms it. Without one, a VIP's is passed; an
		 * address that only shares the bit is what it would have been.
		 * An established flow's entry names its service: one hash
		 * lookup (the flow's) instead of two. */
		established = bpf_map_lookup_elem(&pnlb_conns, &pkt.flow);
		svc = established ? pnlb_flow_service(established, &pkt.flow) : NULL;
		if (!svc) {
			found = pnlb_find_service_id(&pkt.flow);
			svc = found >= 0 ? pnlb_service_by_id(found, &pkt.flow) : NULL;
		}
		if (svc) {
			/* On the stack, whichever way it was found: the verifier
			 * then walks the rest once, not once per way. */
			service = *svc;
			svc = &service;
		} else {
			if (pnlb_vip_set_holds(&pkt.flow.dst))
				return pnlb_pass(PNLB_PASS_VIP_NO_SERVICE);
			reason = pnlb_is_backend(&pkt.flow.src) ? PNLB_PARSE_FROM_BACKEND
								: PNLB_PASS_NOT_SERVICE;
		}
	}
	if (reason == PNLB_PARSE_FROM_BACKEND)
		return pnlb_handle_reply(ctx, &pkt);
	if (reason == PNLB_PARSE_ICMP_ERROR)
		return pnlb_handle_icmp_error(ctx, &pkt);
	if (reason != PNLB_PARSE_TO_VIP || !svc) {
		if (pnlb_reason_is_pass(reason))
			return pnlb_pass(reason);
		return pnlb_drop(reason);
	}
	if (!pnlb_access_allows(svc, &pkt.flow.src))
		return pnlb_service_drop(svc->id, PNLB_DROP_ACCESS_DENIED);
	if (pnlb_method_routes(svc) && pnlb_ttl_expires(&pkt))
		return pnlb_time_exceeded(ctx, svc->id, &pkt, &pkt.flow.dst);
	pnlb_fragment_seen(svc->id, &pkt);

	reason = pnlb_conn_for(ctx, svc, &pkt, &conn, &table, established, &backend, &backend_id,
			       &new_flow, &node);
	if (reason == PNLB_HAND_ON) {
		if (!node)
			return pnlb_service_drop(svc->id, PNLB_DROP_NO_FLOW);
		pnlb_service_count(svc->id, PNLB_FWD_HANDED_ON);
		return pnlb_hand_on(ctx, node);
	}
	if (reason == PNLB_STATELESS) {
		/* dr/tun by hash, without state: the backend the flow's hash
		 * gives, which is where it went unless the backends changed. */
		pnlb_service_count(svc->id, PNLB_FWD_STATELESS);
		if (!backend)
			return pnlb_service_drop(svc->id, PNLB_DROP_NO_BACKEND);
		verdict = pnlb_check_egress(ctx, svc->id, &pkt, backend);
		if (verdict != PNLB_FITS)
			return verdict;
		return pnlb_forward_to_backend(ctx, svc->id, &pkt, backend, backend_id, 0);
	}
	if (reason)
		return pnlb_service_drop(svc->id, reason);
	if (!conn || !backend)
		return pnlb_service_drop(svc->id, PNLB_DROP_NO_BACKEND);
	verdict = pnlb_check_egress(ctx, svc->id, &pkt, backend);
	if (verdict != PNLB_FITS)
		return verdict;
	/* A new flow's entries were written as its first packet leaves them. */
	if (!new_flow)
		promote = pnlb_conn_track(conn, table, &pkt);

	switch (svc->method) {
	case PNLB_METHOD_DR:
	case PNLB_METHOD_TUN:
		break;
	case PNLB_METHOD_NAT:
	case PNLB_METHOD_SNAT:
		reason = pnlb_nat_rewrite(ctx, &pkt, conn);
		if (reason)
			return pnlb_service_drop(svc->id, reason);
		break;
	default:
		return pnlb_service_drop(svc->id, PNLB_DROP_UNSUPPORTED_METHOD);
	}
	if (promote) {
		/* Promotion frees the entry: nothing reads it after. */
		reason = pnlb_conn_promote(&pkt.flow, conn);
		if (reason)
			return pnlb_service_drop(svc->id, reason);
	}
	return pnlb_forward_to_backend(ctx, svc->id, &pkt, backend, backend_id, new_flow);
}

#ifdef PNLB_UPGRADE_VARIANT
/* Built only into the upgrade test's binary (the `upgrade-variant` feature;
 * crates/pnlb/tests/lab_restart.rs): a program from other sources, with a
 * map the release build lacks, that must take over a running data plane
 * without losing a flow, and hand it back. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} pnlb_variant_packets SEC(".maps");

static __always_inline void pnlb_variant_count(void)
{
	__u32 zero = 0;
	__u64 *packets = bpf_map_lookup_elem(&pnlb_variant_packets, &zero);

	if (packets)
		*packets += 1;
}
#else
static __always_inline void pnlb_variant_count(void)
{
}
#endif

#ifdef PNLB_RUN_TIMES
/* Built only with the `run-times` feature (`pnlb-lab bench` reads it): each
 * packet's run time through the program, per CPU, in power-of-two buckets
 * of nanoseconds (bucket b counts [2^b, 2^(b+1)) ns; 0 also counts 0 and 1),
 * so the spread of the program's own cost can be told from the rest of the
 * path's. Two clock reads add ~40 ns to every packet. */
#define PNLB_RUN_TIME_BUCKETS 32
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PNLB_RUN_TIME_BUCKETS);
	__type(key, __u32);
	__type(value, __u64);
} pnlb_run_times SEC(".maps");

static __always_inline __u64 pnlb_run_started(void)
{
	return bpf_ktime_get_ns();
}

static __always_inline void pnlb_run_ended(__u64 started)
{
	__u64 took = bpf_ktime_get_ns() - started;
	__u32 bucket = 0;
	__u64 *count;

	if (took >> 16) {
		took >>= 16;
		bucket += 16;
	}
	if (took >> 8) {
		took >>= 8;
		bucket += 8;
	}
	if (took >> 4) {
		took >>= 4;
		bucket += 4;
	}
	if (took >> 2) {
		took >>= 2;
		bucket += 2;
	}
	if (took >> 1)
		bucket += 1;
	count = bpf_map_lookup_elem(&pnlb_run_times, &bucket);
	if (count)
		*count += 1;
}
#else
static __always_inline __u64 pnlb_run_started(void)
{
	return 0;
}

static __always_inline void pnlb_run_ended(__u64 started)
{
}
#endif

/*
 * Whether the frame is unicast to a MAC other than the ingress
 * interface's own: a bridge floods frames for a MAC it has not learned (or
 * whose port went down) to every port, and a port in promiscuous mode
 * takes them. Forwarding them would duplicate another host's packets.
 */
static __always_inline int pnlb_for_another_host(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct pnlb_own_macs *own;
	__u32 zero = 0, i;

	if ((void *)(eth + 1) > data_end || (eth->h_dest[0] & 1))
		return 0;
	own = bpf_map_lookup_elem(&pnlb_own_macs, &zero);
	if (!own)
		return 0;
	for (i = 0; i < PNLB_MAX_OWN_MACS; i++) {
		if (i >= own->count)
			return 0;
		if (own->entries[i].ifindex == ctx->ingress_ifindex)
			return __builtin_memcmp(own->entries[i].mac, eth->h_dest, ETH_ALEN) != 0;
	}
	return 0;
}

static __always_inline int pnlb_xdp_packet(struct xdp_md *ctx)
{
	int qinq, ingress, ret, verdict;
	__u32 tci, vid;

	pnlb_variant_count();
	if (pnlb_for_another_host(ctx))
		return pnlb_pass(PNLB_PASS_OTHER_HOST);
	ingress = pnlb_vlan_pop(ctx, &qinq);
	if (ingress < 0)
		return pnlb_pass(qinq ? PNLB_PASS_QINQ : PNLB_PASS_NOT_IP);
	ret = pnlb_process(ctx);
	verdict = PNLB_VERDICT(ret);
	if (verdict != XDP_TX && verdict != XDP_REDIRECT && verdict != XDP_PASS)
		return verdict;
	tci = ingress & 0xffff;
	if (ret & PNLB_EGRESS_SET) {
		vid = (__u32)ret >> 16;
		if (!vid)
			return verdict;
		/* The same VLAN keeps its whole tag, another gets its id. */
		if ((tci & PNLB_VLAN_VID_MASK) != vid || !ingress)
			tci = vid;
	} else if (!ingress) {
		return verdict;
	}
	if (pnlb_vlan_push(ctx, tci))
		return pnlb_drop(PNLB_DROP_VLAN_FAILED);
	return verdict;
}

SEC("xdp")
int pnlb_xdp(struct xdp_md *ctx)
{
	__u64 started = pnlb_run_started();
	int verdict = pnlb_xdp_packet(ctx);

	pnlb_run_ended(started);
	return verdict;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
