//! nat and snat fixtures: both directions, IPv4 and IPv6, TCP and UDP,
//! port mapping, TCP state, SNAT port reservation and exhaustion, expiry;
//! connection sync, and designated nodes behind ECMP (with a dr rr and a
//! dr maglev service beside nat and snat, for the flows that need one and
//! the flows that do not).
//! Replies are routed with bpf_fib_lookup, so each test runs in a network
//! namespace of its own set up as an LB host (support::in_lb_netns).

mod support;

use std::collections::HashSet;
use std::net::IpAddr;

use pnlb_core::config::Timeouts;
use pnlb_dataplane::abi::{Conn, ConnDirection, ConnState};
use pnlb_dataplane::last_known::LastKnownNeighbours;
use pnlb_dataplane::sync::ConnEvents;
use support::*;

const CONFIG: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "nat4"
vip = "10.77.100.1"
port = 80
method = "nat"
[[service.backend]]
address = "10.77.1.11"
port = 8080

[[service]]
name = "nat6"
vip = "fd77:100::1"
port = 53
protocol = "udp"
method = "nat"
[[service.backend]]
address = "fd77:1::11"

[[service]]
name = "snat4"
vip = "10.77.100.2"
port = 80
method = "snat"
snat_addresses = ["10.77.1.2"]
snat_ports = "20000-20999"
[[service.backend]]
address = "10.77.1.21"
port = 8080

[[service]]
name = "snat6"
vip = "fd77:100::2"
port = 53
protocol = "udp"
method = "snat"
snat_addresses = ["fd77:1::2"]
[[service.backend]]
address = "fd77:1::21"

[[service]]
name = "tiny"
vip = "10.77.100.3"
port = 80
method = "snat"
snat_addresses = ["10.77.1.2"]
snat_ports = "30000-30003"
snat_reuse_after = "1s"
[[service.backend]]
address = "10.77.1.31"

[[service]]
name = "rr4"
vip = "10.77.100.4"
port = 80
method = "dr"
scheduler = "rr"
[[service.backend]]
address = "10.77.1.41"
[[service.backend]]
address = "10.77.1.42"

[[service]]
name = "hash4"
vip = "10.77.100.5"
port = 80
method = "dr"
[[service.backend]]
address = "10.77.1.51"
"#;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn conn_state(fixture: &Fixture, packet: &Pkt) -> u32 {
    let key = flow_of(&packet.bytes());
    let value = fixture
        .dataplane
        .lookup_connection(&key)
        .expect("entry exists");
    u32::from(value.state)
}

/// Forward direction: runs `packet`, expects XDP_TX with the destination
/// (and for snat the source) rewritten; returns the output.
fn forward(fixture: &Fixture, packet: &Pkt) -> Vec<u8> {
    let (verdict, out) = fixture.run(&packet.bytes());
    assert_eq!(
        verdict, XDP_TX,
        "forwarded to the backend on the ingress interface"
    );
    out
}

/// Reply direction: runs `packet`, expects it routed (XDP_REDIRECT out d0)
/// and returns the output.
fn reply(fixture: &Fixture, packet: &Pkt) -> Vec<u8> {
    let (verdict, out) = fixture.run(&packet.bytes());
    assert_eq!(
        verdict, XDP_REDIRECT,
        "the reply is routed to the client via d0"
    );
    out
}

#[test]
fn nat_ipv4_tcp_rewrites_the_destination_with_port_mapping_and_back() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let syn = Pkt::tcp("10.77.0.2", 40000, "10.77.100.1", 80, SYN);
        let out = forward(&fixture, &syn);
        let backend = ip("10.77.1.11");
        let expected = syn
            .with(ip("10.77.0.2"), 40000, backend, 8080)
            .routed()
            .macs(LB_MAC, backend_mac(backend));
        assert_eq!(
            out,
            expected.bytes(),
            "destination -> 10.77.1.11:8080, checksums updated"
        );

        let answer = Pkt::tcp("10.77.1.11", 8080, "10.77.0.2", 40000, SYN_ACK)
            .macs(backend_mac(backend), LB_MAC);
        let out = reply(&fixture, &answer);
        let expected = answer
            .with(ip("10.77.100.1"), 80, ip("10.77.0.2"), 40000)
            .routed()
            .macs(LB_MAC, ROUTER_MAC);
        assert_eq!(
            out,
            expected.bytes(),
            "source -> VIP:80, routed to the router's MAC"
        );

        let counters = fixture
            .dataplane
            .service_counters(fixture.programmer.service_id("nat4").unwrap())
            .unwrap();
        assert_eq!(
            (counters.packets, counters.new_flows, counters.reply_packets),
            (1, 1, 1)
        );
    });
}

/// The kernel loses its entry for the router (garbage collection between
/// two of the daemon's probes): the reply goes to the MAC the daemon last
/// saw for it, not to the kernel, which would refuse it on a node whose
/// VIP is a local address. Once the kernel gives up on the router (FAILED),
/// the last known MAC is forgotten and replies go to the kernel again.
#[test]
fn a_reply_whose_router_the_kernel_forgot_goes_to_its_last_known_mac() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let d0 = pnlb_dataplane::loader::ifindex_of("d0").unwrap();
        let routers = [(d0, ip("10.77.1.1")), (d0, ip("fd77:1::1"))];
        let mut known = LastKnownNeighbours::default();
        assert!(known.look(&routers).unwrap(), "both routers seen");
        fixture
            .dataplane
            .set_last_known_neighbours(&known.entries())
            .unwrap();
        sh("ip neigh del 10.77.1.1 dev d0; ip -6 neigh del fd77:1::1 dev d0");
        assert!(
            !known.look(&routers).unwrap(),
            "kept while the kernel has none"
        );

        for (client, vip, port, backend, backend_port) in [
            ("10.77.0.2", "10.77.100.1", 80, "10.77.1.11", 8080),
            ("fd77::2", "fd77:100::1", 53, "fd77:1::11", 53),
        ] {
            let udp = client.contains(':');
            let packet = |src: &str, sport, dst: &str, dport| {
                if udp {
                    Pkt::udp(src, sport, dst, dport)
                } else {
                    Pkt::tcp(src, sport, dst, dport, SYN)
                }
            };
            forward(&fixture, &packet(client, 40000, vip, port));
            let answer =
                packet(backend, backend_port, client, 40000).macs(backend_mac(ip(backend)), LB_MAC);
            let expected = answer
                .with(ip(vip), port, ip(client), 40000)
                .routed()
                .macs(LB_MAC, ROUTER_MAC);
            assert_eq!(
                reply(&fixture, &answer),
                expected.bytes(),
                "the reply to {client} goes to the router's last known MAC"
            );
        }
        assert_eq!(fixture.dataplane.last_known_sent().unwrap(), 2);
        assert_eq!(fixture.reason("pass_no_neigh"), 0);

        // Asked, and nobody answered: the router is gone.
        sh("ip neigh replace 10.77.1.1 dev d0 nud failed");
        assert!(known.look(&routers).unwrap(), "a FAILED router forgotten");
        fixture
            .dataplane
            .set_last_known_neighbours(&known.entries())
            .unwrap();
        let answer = Pkt::tcp("10.77.1.11", 8080, "10.77.0.2", 40000, ACK)
            .macs(backend_mac(ip("10.77.1.11")), LB_MAC);
        let (verdict, _) = fixture.run(&answer.bytes());
        println!(
            "last known MACs: {} sent; the FAILED router's reply: verdict {verdict}",
            fixture.dataplane.last_known_sent().unwrap()
        );
        assert_eq!(verdict, XDP_PASS, "to the kernel, to resolve the router");
        assert_eq!(fixture.reason("pass_no_neigh"), 1);
    });
}

/// A client whose address shares the VIP's address filter bit: its
/// packets from the backend are taken for a VIP's by parse, and must still
/// be translated back as replies once the service lookup finds none.
#[test]
fn a_reply_to_a_client_sharing_the_vips_filter_bit_is_translated() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        for (vip, port, backend, backend_port, udp) in [
            ("10.77.100.1", 80, "10.77.1.11", 8080, false),
            ("fd77:100::1", 53, "fd77:1::11", 53, true),
        ] {
            let client = sharing_filter_bit(vip);
            let packet = |src: &str, sport, dst: &str, dport| {
                if udp {
                    Pkt::udp(src, sport, dst, dport)
                } else {
                    Pkt::tcp(src, sport, dst, dport, SYN)
                }
            };
            forward(&fixture, &packet(&client, 40000, vip, port));
            let answer = packet(backend, backend_port, &client, 40000)
                .macs(backend_mac(ip(backend)), LB_MAC);
            let out = reply(&fixture, &answer);
            assert_eq!(
                out,
                answer
                    .with(ip(vip), port, ip(&client), 40000)
                    .routed()
                    .macs(LB_MAC, ROUTER_MAC)
                    .bytes(),
                "the reply to {client} (the bit of {vip}) comes from the VIP"
            );
        }
    });
}

#[test]
fn nat_ipv6_udp_rewrites_both_ways() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let query = Pkt::udp("fd77::2", 5353, "fd77:100::1", 53);
        let backend = ip("fd77:1::11");
        let out = forward(&fixture, &query);
        assert_eq!(
            out,
            query
                .with(ip("fd77::2"), 5353, backend, 53)
                .routed()
                .macs(LB_MAC, backend_mac(backend))
                .bytes()
        );
        let answer = Pkt::udp("fd77:1::11", 53, "fd77::2", 5353);
        let out = reply(&fixture, &answer);
        assert_eq!(
            out,
            answer
                .with(ip("fd77:100::1"), 53, ip("fd77::2"), 5353)
                .routed()
                .macs(LB_MAC, ROUTER_MAC)
                .bytes()
        );
    });
}

#[test]
fn snat_ipv4_tcp_rewrites_source_and_destination_and_back() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let syn = Pkt::tcp("10.77.0.2", 40000, "10.77.100.2", 80, SYN);
        let out = forward(&fixture, &syn);
        let (src, sport, dst, dport) = endpoints(&out);
        assert_eq!((src, dst, dport), (ip("10.77.1.2"), ip("10.77.1.21"), 8080));
        assert!(
            (20000..=20999).contains(&sport),
            "SNAT port {sport} from the configured range"
        );
        let backend = ip("10.77.1.21");
        assert_eq!(
            out,
            syn.with(src, sport, backend, 8080)
                .routed()
                .macs(LB_MAC, backend_mac(backend))
                .bytes()
        );

        let answer = Pkt::tcp("10.77.1.21", 8080, "10.77.1.2", sport, SYN_ACK);
        let out = reply(&fixture, &answer);
        assert_eq!(
            out,
            answer
                .with(ip("10.77.100.2"), 80, ip("10.77.0.2"), 40000)
                .routed()
                .macs(LB_MAC, ROUTER_MAC)
                .bytes()
        );
    });
}

#[test]
fn snat_ipv6_udp_rewrites_both_ways() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let query = Pkt::udp("fd77::2", 5353, "fd77:100::2", 53);
        let out = forward(&fixture, &query);
        let (src, sport, dst, _) = endpoints(&out);
        assert_eq!((src, dst), (ip("fd77:1::2"), ip("fd77:1::21")));
        assert!((10000..=32767).contains(&sport), "default SNAT ports");
        let answer = Pkt::udp("fd77:1::21", 53, "fd77:1::2", sport);
        let out = reply(&fixture, &answer);
        assert_eq!(
            out,
            answer
                .with(ip("fd77:100::2"), 53, ip("fd77::2"), 5353)
                .routed()
                .macs(LB_MAC, ROUTER_MAC)
                .bytes()
        );
    });
}

#[test]
fn ipv4_udp_without_a_checksum_keeps_none() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let config = CONFIG.to_string()
            + "[[service]]\nname = \"udp4\"\nvip = \"10.77.100.4\"\nport = 53\nprotocol = \"udp\"\nmethod = \"nat\"\n[[service.backend]]\naddress = \"10.77.1.41\"\n";
        let fixture = Fixture::new(&config);
        let mut packet = Pkt::udp("10.77.0.2", 5353, "10.77.100.4", 53).bytes();
        packet[40..42].copy_from_slice(&[0, 0]); // UDP checksum: none
        let (verdict, out) = fixture.run(&packet);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(&out[40..42], &[0, 0], "the checksum stays absent");
        assert_eq!(endpoints(&out).2, ip("10.77.1.41"));
    });
}

#[test]
fn snat_never_gives_one_port_to_two_live_flows() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let mut ports = HashSet::new();
        for i in 0..500u16 {
            let out = forward(
                &fixture,
                &Pkt::tcp("10.77.0.2", 10000 + i, "10.77.100.2", 80, SYN),
            );
            let (_, sport, _, _) = endpoints(&out);
            assert!(ports.insert(sport), "port {sport} handed out twice");
        }
    });
}

#[test]
fn exhausted_snat_ports_drop_new_flows_only_and_free_up_on_expiry() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let flows: Vec<Pkt> = (0..4)
            .map(|i| Pkt::tcp("10.77.0.2", 41000 + i, "10.77.100.3", 80, SYN))
            .collect();
        let first: Vec<Vec<u8>> = flows.iter().map(|f| forward(&fixture, f)).collect();

        let extra = Pkt::tcp("10.77.0.2", 41999, "10.77.100.3", 80, SYN);
        let before = fixture.reason("drop_snat_exhausted");
        let (verdict, _) = fixture.run(&extra.bytes());
        assert_eq!(verdict, XDP_DROP, "the fifth flow finds no free port");
        assert_eq!(fixture.reason("drop_snat_exhausted"), before + 1);
        let id = fixture.programmer.service_id("tiny").unwrap();
        let drops = fixture.dataplane.service_counters(id).unwrap().drops;
        assert_eq!(
            drops[pnlb_dataplane::stats::reason_by_name("drop_snat_exhausted").unwrap()],
            1
        );

        for (flow, out) in flows.iter().zip(&first) {
            let again = Pkt {
                tcp: Some(ACK),
                ..flow.clone()
            };
            let (verdict, now) = fixture.run(&again.bytes());
            assert_eq!(verdict, XDP_TX, "established flows are unaffected");
            assert_eq!(
                endpoints(&now),
                endpoints(out),
                "and keep their translation"
            );
        }

        // Idle past the established timeout, the entries expire and free the ports.
        let later = pnlb_dataplane::conntrack::monotonic_ns() + 901_000_000_000;
        let report = fixture
            .dataplane
            .sweep_connections_at(&Timeouts::default(), later)
            .unwrap();
        assert!(
            report.expired >= 8,
            "both entries of the four flows: {report:?}"
        );
        let (verdict, _) = fixture.run(&extra.bytes());
        assert_eq!(
            verdict, XDP_DROP,
            "a freed port rests first (the backend may hold it in TIME_WAIT)"
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let (verdict, _) = fixture.run(&extra.bytes());
        assert_eq!(
            verdict, XDP_TX,
            "after snat_reuse_after it serves a new flow"
        );
    });
}

#[test]
fn tcp_state_follows_the_handshake_and_teardown_in_both_entries() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let client = |flags| Pkt::tcp("10.77.0.2", 42000, "10.77.100.1", 80, flags);
        let server = |flags| Pkt::tcp("10.77.1.11", 8080, "10.77.0.2", 42000, flags);

        forward(&fixture, &client(SYN));
        assert_eq!(
            conn_state(&fixture, &client(SYN)),
            ConnState::PNLB_CT_SYN_SENT.0
        );
        reply(&fixture, &server(SYN_ACK));
        assert_eq!(
            conn_state(&fixture, &server(SYN_ACK)),
            ConnState::PNLB_CT_SYN_SENT.0
        );
        forward(&fixture, &client(ACK));
        assert_eq!(
            conn_state(&fixture, &client(ACK)),
            ConnState::PNLB_CT_ESTABLISHED.0
        );
        assert_eq!(
            conn_state(&fixture, &server(ACK)),
            ConnState::PNLB_CT_ESTABLISHED.0,
            "mirrored"
        );
        reply(&fixture, &server(FIN));
        assert_eq!(
            conn_state(&fixture, &client(ACK)),
            ConnState::PNLB_CT_FIN_WAIT.0
        );
        forward(&fixture, &client(FIN));
        assert_eq!(
            conn_state(&fixture, &server(ACK)),
            ConnState::PNLB_CT_CLOSE.0,
            "both sides closed: the short tcp_close timeout applies"
        );
        forward(&fixture, &client(RST));
        assert_eq!(
            conn_state(&fixture, &server(ACK)),
            ConnState::PNLB_CT_CLOSE.0
        );

        // CLOSE expires after tcp_close (10 s), not after 900 s.
        let soon = pnlb_dataplane::conntrack::monotonic_ns() + 11_000_000_000;
        let report = fixture
            .dataplane
            .sweep_connections_at(&Timeouts::default(), soon)
            .unwrap();
        assert_eq!(report.expired, 2);
        assert!(fixture
            .dataplane
            .lookup_connection(&flow_of(&client(ACK).bytes()))
            .is_none());
    });
}

#[test]
fn established_flows_outlive_the_sweeper_until_their_timeout() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let client = |flags| Pkt::tcp("10.77.0.2", 43000, "10.77.100.1", 80, flags);
        forward(&fixture, &client(SYN));
        reply(
            &fixture,
            &Pkt::tcp("10.77.1.11", 8080, "10.77.0.2", 43000, SYN_ACK),
        );
        forward(&fixture, &client(ACK));
        let now = pnlb_dataplane::conntrack::monotonic_ns();
        let report = fixture
            .dataplane
            .sweep_connections_at(&Timeouts::default(), now + 899_000_000_000)
            .unwrap();
        assert_eq!(report.expired, 0, "established: 900 s");
        let report = fixture
            .dataplane
            .sweep_connections_at(&Timeouts::default(), now + 901_000_000_000)
            .unwrap();
        assert_eq!(report.expired, 2);
    });
}

/// A nat flow whose client has gone quiet while its server still sends (a
/// one-way stream) keeps both entries: a pair is judged by the more recent
/// of its two, in the kernel's walk as in the re-check.
#[test]
fn a_nat_pair_stays_while_either_direction_is_used() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let client = |flags| Pkt::tcp("10.77.0.2", 43100, "10.77.100.1", 80, flags);
        let server = |flags| Pkt::tcp("10.77.1.11", 8080, "10.77.0.2", 43100, flags);
        forward(&fixture, &client(SYN));
        reply(&fixture, &server(SYN_ACK));
        forward(&fixture, &client(ACK));
        let began = pnlb_dataplane::conntrack::monotonic_ns();
        // The entries' stamps move at most once a second.
        std::thread::sleep(std::time::Duration::from_millis(2200));
        reply(&fixture, &server(ACK));
        let timeouts = Timeouts {
            tcp: std::time::Duration::from_millis(1500),
            ..Timeouts::default()
        };
        // The client's entry is idle past 1.5 s, the server's is not.
        let report = fixture
            .dataplane
            .sweep_connections_at(&timeouts, began + 2_700_000_000)
            .unwrap();
        let (active, _) = fixture
            .dataplane
            .backend_load(
                fixture
                    .programmer
                    .backend_id("nat4", "10.77.1.11".parse().unwrap(), 8080)
                    .unwrap(),
            )
            .unwrap();
        eprintln!(
            "client quiet 2.7 s, server 0.5 s: {} removed, {} left, {active} active",
            report.expired, report.established
        );
        assert_eq!(report.expired, 0);
        assert_eq!(report.established, 2);
        assert_eq!(active, 1);
        // Both quiet: the pair goes together.
        let report = fixture
            .dataplane
            .sweep_connections_at(&timeouts, began + 5_000_000_000)
            .unwrap();
        assert_eq!(report.expired, 2);
        assert_eq!(report.established, 0);
    });
}

#[test]
fn packets_from_a_backend_that_match_no_flow_pass_untouched() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let stray = Pkt::tcp("10.77.1.11", 8080, "10.77.0.9", 55555, ACK).bytes();
        let (verdict, out) = fixture.run(&stray);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, stray);
    });
}

#[test]
fn the_reply_entry_is_found_by_the_key_the_rust_side_computes() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let syn = Pkt::tcp("10.77.0.2", 44000, "10.77.100.2", 80, SYN);
        forward(&fixture, &syn);
        let original: Conn = fixture
            .dataplane
            .lookup_connection(&flow_of(&syn.bytes()))
            .unwrap();
        let peer = pnlb_dataplane::conntrack::peer_key(&original, 6);
        let reply_entry = fixture
            .dataplane
            .lookup_connection(&peer)
            .expect("reply entry under the peer key");
        assert_eq!(
            u32::from(reply_entry.direction),
            ConnDirection::PNLB_DIR_REPLY.0
        );
        assert_eq!(
            pnlb_dataplane::conntrack::peer_key(&reply_entry, 6).src_port,
            44000u16.to_be()
        );
    });
}

#[test]
fn malformed_packets_from_a_backend_pass_untouched_even_mid_flow() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        forward(
            &fixture,
            &Pkt::tcp("10.77.0.2", 45000, "10.77.100.1", 80, SYN),
        );
        let answer = Pkt::tcp("10.77.1.11", 8080, "10.77.0.2", 45000, SYN_ACK).bytes();

        let truncated = &answer[..34 + 10];
        let (verdict, out) = fixture.run(truncated);
        assert_eq!(
            (verdict, out.as_slice()),
            (XDP_PASS, truncated),
            "truncated TCP header"
        );

        let mut fragment = answer.clone();
        fragment[20..22].copy_from_slice(&100u16.to_be_bytes()); // offset 800
        fix_ipv4_checksum(&mut fragment);
        let (verdict, out) = fixture.run(&fragment);
        assert_eq!(
            (verdict, out),
            (XDP_PASS, fragment.clone()),
            "a later fragment whose first was not seen cannot be translated"
        );

        let (verdict, _) = fixture.run(&answer);
        assert_eq!(
            verdict, XDP_REDIRECT,
            "the well-formed reply is still translated"
        );
    });
}

/// Failover sync: a flow the active node's data plane reports, installed on
/// a second data plane (as a backup does), is translated there exactly as
/// on the first — snat's allocated port included — in both directions.
#[test]
fn a_synced_flow_is_translated_on_the_other_node_in_both_directions() {
    if !privileged() {
        return;
    }
    // Replies are routed with bpf_fib_lookup: a namespace with routes.
    in_lb_netns(|| {
        let config = parse_config(SNAT_SYNC_CONFIG);
        let mut resolver = sync_resolver();
        let (active, active_programmer) = active_node(&config, &mut resolver);
        let events = ConnEvents::open(&active.conn_event_ring().unwrap()).unwrap();
        let mut outputs = Vec::new();
        for sport in [40_000u16, 40_001] {
            let syn = Pkt::tcp("10.77.0.2", sport, "10.77.100.3", 80, SYN);
            let (verdict, out) = run_on(&active, &syn.bytes());
            assert_eq!(verdict, XDP_TX);
            outputs.push((syn, out));
        }
        assert!(events.take().is_empty(), "half-open flows are not synced");
        for (syn, _) in &outputs {
            let ack = Pkt {
                tcp: Some(ACK),
                ..syn.clone()
            };
            assert_eq!(run_on(&active, &ack.bytes()).0, XDP_TX);
        }
        let reported = events.take();
        assert_eq!(reported.len(), 2, "one report per established flow");

        let (backup, backup_programmer) = backup_node(&config, &mut resolver);
        // Before the sync, the backup knows nothing of the flow: a reply
        // (in a download, the first packet after a takeover) is not
        // translated, it goes to the kernel.
        let (syn, on_active) = &outputs[1];
        let reply = backend_answer(on_active, ACK);
        assert_eq!(run_on(&backup, &reply.bytes()).0, XDP_PASS);

        // The second flow is synced (with the backup's own slot ids).
        let (key, conn) = reported[1];
        let local = in_slots_of(&backup_programmer, &active_programmer, &conn);
        backup.conns().install_flow(&key, &local).unwrap();

        let ack = Pkt {
            tcp: Some(ACK),
            ..syn.clone()
        };
        let (_, on_backup) = run_on(&backup, &ack.bytes());
        assert_eq!(
            endpoints(&on_backup),
            endpoints(on_active),
            "the same backend, SNAT address and port on the other node"
        );
        let (verdict, back) = run_on(&backup, &reply.bytes());
        assert_eq!(verdict, XDP_REDIRECT, "routed towards the client");
        assert_eq!(
            endpoints(&back),
            (syn.dst, syn.dport, syn.src, syn.sport),
            "the reply goes back to the client from the VIP"
        );

        // The active node expired it: the backup forgets both entries.
        backup.conns().remove_flow(&key).unwrap();
        assert_eq!(run_on(&backup, &reply.bytes()).0, XDP_PASS);
        assert!(backup.lookup_connection(&key).is_none());
    });
}

/// A flow the active node ended and reported rests its SNAT port on the
/// backup too, as on the active: after a takeover the backup must not hand
/// that port to a new flow while the backend may hold it in TIME_WAIT (a
/// SYN there is answered as the old connection, PAWS, and the client
/// retries after a timeout). A pool of two ports, both used and ended: a
/// new flow on the backup finds both resting, and one after
/// snat_reuse_after.
#[test]
fn a_flow_ended_on_the_peer_rests_its_snat_port_on_this_node_too() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let config = two_port_snat_config("1s");
        let mut resolver = sync_resolver();
        let (active, active_programmer) = active_node(&config, &mut resolver);
        let events = ConnEvents::open(&active.conn_event_ring().unwrap()).unwrap();
        let (ports, _) = two_established_snat_flows(&active, [40_100, 40_101]);
        let reported = events.take();
        assert_eq!(reported.len(), 2, "both flows established and reported");

        let (backup, backup_programmer) = backup_node(&config, &mut resolver);
        for (key, conn) in &reported {
            let local = in_slots_of(&backup_programmer, &active_programmer, conn);
            backup.conns().install_flow(key, &local).unwrap();
        }
        // The active node ended both (their FINs, then its sweep) and
        // reported it.
        let mut rests = Vec::new();
        for (key, conn) in &reported {
            backup.conns().remove_flow(key).unwrap();
            assert!(backup.lookup_connection(key).is_none());
            let reply_key = pnlb_dataplane::conntrack::peer_key(conn, key.protocol);
            rests.push(backup.conns().snat_rest_of(&reply_key));
        }
        println!("ports {ports:?}, rests on the backup {rests:?}");
        assert!(rests.iter().all(Option::is_some), "both reply keys rest");

        let new = Pkt::tcp("10.77.0.3", 40_200, "10.77.100.3", 80, SYN);
        ports_rest_then_serve(
            &backup,
            &new,
            &ports,
            "both ports rest: no new flow takes one",
            1100,
        );
    });
}

/// A backup that starts after flows ended on the active node learns their
/// rests from the whole dump (`snat_rests` there, `go_on_resting` here):
/// it hands out neither port until `snat_reuse_after` has passed since
/// the flows ended, as the active node would not. A fresh node without
/// them takes a resting port at once.
#[test]
fn the_rests_a_whole_dump_carries_keep_a_fresh_backup_off_their_ports() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let config = two_port_snat_config("2s");
        let (active, _active_programmer) = active_node(&config, &mut sync_resolver());
        let (ports, flows) = two_established_snat_flows(&active, [40_300, 40_301]);
        // Both end on the active node (as its sweep ends them): they rest there.
        for key in &flows {
            active.conns().remove_flow(key).unwrap();
        }
        let rests = active.conns().snat_rests(3_600_000_000_000);
        let rested_us: Vec<u64> = rests.iter().map(|(_, ns)| ns / 1000).collect();
        println!("ports {ports:?}; rested on the active node so far: {rested_us:?} us");
        assert_eq!(rests.len(), 2, "both reply keys rest on the active node");
        assert!(rests.iter().all(|(_, rested)| *rested < 1_000_000_000));

        let new = Pkt::tcp("10.77.0.3", 40_400, "10.77.100.3", 80, SYN);
        let (without, _p1) = backup_node(&config, &mut sync_resolver());
        let (verdict, out) = run_on(&without, &new.bytes());
        assert_eq!(verdict, XDP_TX, "a node that knows no rests takes a port");
        assert!(ports.contains(&endpoints(&out).1), "one of the resting two");
        drop(without);

        let (backup, _p2) = backup_node(&config, &mut sync_resolver());
        for (key, rested) in &rests {
            backup.conns().go_on_resting(key, *rested);
        }
        ports_rest_then_serve(
            &backup,
            &new,
            &ports,
            "both ports rest on the backup too: no new flow takes one",
            2100,
        );
    });
}

/// Failover sync carries established flows only: a SYN, or a UDP flow's
/// first datagram, is not reported (a flood of them churns only the
/// new-flow table, never the sync stream or a peer's tables); the
/// handshake's ACK and the UDP flow's second datagram are, once each; a
/// packet that moves nothing is not; a state move after is.
#[test]
fn only_established_flows_and_their_moves_are_reported_to_the_sync() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let config = parse_config(SNAT_SYNC_CONFIG);
        let (active, _programmer) = active_node(&config, &mut sync_resolver());
        let events = ConnEvents::open(&active.conn_event_ring().unwrap()).unwrap();
        let syn = Pkt::tcp("10.77.0.2", 40_010, "10.77.100.3", 80, SYN);
        let datagram = Pkt::udp("10.77.0.2", 40_011, "10.77.100.3", 53);
        for packet in [&syn, &datagram] {
            assert_eq!(run_on(&active, &packet.bytes()).0, XDP_TX);
        }
        assert!(events.take().is_empty(), "half-open flows are not reported");

        let ack = Pkt {
            tcp: Some(ACK),
            ..syn.clone()
        };
        for packet in [&ack, &datagram] {
            assert_eq!(run_on(&active, &packet.bytes()).0, XDP_TX);
        }
        let reported = events.take();
        let states: Vec<(u16, u8)> = reported
            .iter()
            .map(|(key, conn)| (u16::from_be(key.src_port), conn.state))
            .collect();
        assert_eq!(
            states,
            vec![
                (40_010, ConnState::PNLB_CT_ESTABLISHED.0 as u8),
                (40_011, ConnState::PNLB_CT_UDP.0 as u8)
            ],
            "each flow once, as it was established"
        );

        for packet in [&ack, &datagram] {
            assert_eq!(run_on(&active, &packet.bytes()).0, XDP_TX);
        }
        assert!(events.take().is_empty(), "nothing moved");
        let fin = Pkt {
            tcp: Some(FIN),
            ..syn.clone()
        };
        assert_eq!(run_on(&active, &fin.bytes()).0, XDP_TX);
        let reported = events.take();
        assert_eq!(reported.len(), 1, "the close: {reported:?}");
        assert_eq!(reported[0].1.state, ConnState::PNLB_CT_FIN_WAIT.0 as u8);
    });
}

/// Nodes behind ECMP: a flow installed from a peer's report is the
/// peer's (marked synced: this node neither re-reports it nor tells of its
/// end) until a packet of it comes here; that packet, from either side,
/// makes it this node's and reports it to the others.
#[test]
fn a_synced_flow_becomes_this_nodes_with_its_first_packet_here() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let config = parse_config(SNAT_SYNC_CONFIG);
        let mut resolver = sync_resolver();
        let (first, first_programmer) = active_node(&config, &mut resolver);
        let first_events = ConnEvents::open(&first.conn_event_ring().unwrap()).unwrap();
        let syn = Pkt::tcp("10.77.0.2", 40_020, "10.77.100.3", 80, SYN);
        let (_, on_first) = run_on(&first, &syn.bytes());
        let ack = Pkt {
            tcp: Some(ACK),
            ..syn.clone()
        };
        run_on(&first, &ack.bytes());
        let reported = first_events.take();
        assert_eq!(reported.len(), 1);
        let (key, conn) = reported[0];
        assert_eq!(
            first.conns().own_flows().unwrap().len(),
            1,
            "the node that saw it carries it"
        );

        let (second, second_programmer) = active_node(&config, &mut resolver);
        let second_events = ConnEvents::open(&second.conn_event_ring().unwrap()).unwrap();
        let local = in_slots_of(&second_programmer, &first_programmer, &conn);
        second.conns().install_flow(&key, &local).unwrap();
        assert_eq!(second.conns().flows().unwrap().len(), 1);
        assert!(
            second.conns().own_flows().unwrap().is_empty(),
            "installed from a peer: the peer's"
        );
        let reply = backend_answer(&on_first, ACK);
        assert_eq!(run_on(&second, &reply.bytes()).0, XDP_REDIRECT);
        let claimed = second_events.take();
        assert_eq!(claimed.len(), 1, "reported once it came here: {claimed:?}");
        assert_eq!(claimed[0].0.src_port, key.src_port, "by its original key");
        assert_eq!(
            second.conns().own_flows().unwrap().len(),
            1,
            "now this node's"
        );
        run_on(&second, &ack.bytes());
        assert!(
            second_events.take().is_empty(),
            "reported once, not per packet"
        );

        // The first node carries it too (its replies go there) and reports
        // it again: this node keeps carrying it, and its packets report
        // nothing (no ping-pong of claims between the two).
        second.conns().install_flow(&key, &local).unwrap();
        assert_eq!(
            second.conns().own_flows().unwrap().len(),
            1,
            "still carried here"
        );
        run_on(&second, &ack.bytes());
        assert!(second_events.take().is_empty(), "no claim, no report");
    });
}

const SNAT_SYNC_CONFIG: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "10.77.100.3"
port = 80
method = "snat"
snat_addresses = ["10.77.1.254"]
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "dns"
vip = "10.77.100.3"
port = 53
protocol = "udp"
method = "snat"
snat_addresses = ["10.77.1.254"]
[[service.backend]]
address = "10.77.1.11"
"#;

/// After a whole dump, a backup removes the flows the dump did not carry
/// (ends it missed): both entries of each, and nothing the dump refreshed.
#[test]
fn a_whole_dump_purges_the_flows_it_did_not_carry() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let config = parse_config(SNAT_SYNC_CONFIG);
        let mut resolver = sync_resolver();
        let (active, active_programmer) = active_node(&config, &mut resolver);
        let events = ConnEvents::open(&active.conn_event_ring().unwrap()).unwrap();
        for sport in [40_020u16, 40_021] {
            let syn = Pkt::tcp("10.77.0.2", sport, "10.77.100.3", 80, SYN);
            let ack = Pkt {
                tcp: Some(ACK),
                ..syn.clone()
            };
            for packet in [syn, ack] {
                assert_eq!(run_on(&active, &packet.bytes()).0, XDP_TX);
            }
        }
        let reported = events.take();
        assert_eq!(reported.len(), 2);
        let (backup, backup_programmer) = backup_node(&config, &mut resolver);
        let install = |(key, conn): &(pnlb_dataplane::abi::FlowKey, Conn)| {
            let local = in_slots_of(&backup_programmer, &active_programmer, conn);
            backup.conns().install_flow(key, &local).unwrap();
        };
        reported.iter().for_each(install);
        assert_eq!(backup.entries(), (4, 0), "two snat flows");

        // A dump asked for now carries the second flow only (the first
        // ended on the active node, and the backup missed the end).
        std::thread::sleep(std::time::Duration::from_millis(2));
        let asked = pnlb_dataplane::conntrack::monotonic_ns();
        install(&reported[1]);
        let purged = backup.conns().purge_untouched_since(asked).unwrap();
        assert_eq!(purged, 1);
        assert_eq!(backup.entries(), (2, 0), "both entries went");
        assert!(backup.conns().established(&reported[1].0).is_some());
        assert!(backup.conns().established(&reported[0].0).is_none());
    });
}

/// `conn` of the active node's slots, in the backup's (as a backup's sync
/// translates it through the flow's service and backend names).
fn in_slots_of(
    backup: &pnlb_dataplane::Programmer,
    active: &pnlb_dataplane::Programmer,
    conn: &Conn,
) -> Conn {
    let (service, address, port) = active
        .names()
        .describe(conn.service_id, conn.backend_id)
        .unwrap();
    let (service_id, backend_id, generation) =
        backup.names().resolve(&service, address, port).unwrap();
    Conn {
        service_id,
        backend_id,
        backend_generation: generation,
        ..*conn
    }
}

fn sync_resolver() -> StaticResolver {
    StaticResolver {
        vlan: 0,
        ifindex: TEST_RUN_IFINDEX,
        unreachable: Vec::new(),
    }
}

/// A data plane that reports its flows to the sync (as an HA node's does),
/// programmed with `config`.
/// SNAT_SYNC_CONFIG with a pool of two ports (30000-30001) that rest
/// `reuse_after` after their flows end.
fn two_port_snat_config(reuse_after: &str) -> pnlb_core::config::Config {
    parse_config(&SNAT_SYNC_CONFIG.replacen(
        "snat_addresses = [\"10.77.1.254\"]\n",
        &format!(
            "snat_addresses = [\"10.77.1.254\"]\nsnat_ports = \"30000-30001\"\nsnat_reuse_after = \"{reuse_after}\"\n"
        ),
        1,
    ))
}

/// Two snat flows from 10.77.0.2's `sports`, established on `node` (SYN,
/// then the client's ACK): the SNAT port each was given, and their keys.
fn two_established_snat_flows(
    node: &pnlb_dataplane::Dataplane,
    sports: [u16; 2],
) -> (Vec<u16>, Vec<pnlb_dataplane::abi::FlowKey>) {
    let mut ports = Vec::new();
    let mut flows = Vec::new();
    for sport in sports {
        let syn = Pkt::tcp("10.77.0.2", sport, "10.77.100.3", 80, SYN);
        let (verdict, out) = run_on(node, &syn.bytes());
        assert_eq!(verdict, XDP_TX);
        ports.push(endpoints(&out).1);
        flows.push(flow_of(&syn.bytes()));
        let ack = Pkt {
            tcp: Some(ACK),
            ..syn
        };
        assert_eq!(run_on(node, &ack.bytes()).0, XDP_TX);
    }
    (ports, flows)
}

/// `new` (a SYN) is dropped on `node` while both of the service's `ports`
/// rest (`resting`: what the assertion says), and takes one of them once
/// `snat_reuse_after` has passed (`reuse_after_ms` later).
fn ports_rest_then_serve(
    node: &pnlb_dataplane::Dataplane,
    new: &Pkt,
    ports: &[u16],
    resting: &str,
    reuse_after_ms: u64,
) {
    assert_eq!(run_on(node, &new.bytes()).0, XDP_DROP, "{resting}");
    std::thread::sleep(std::time::Duration::from_millis(reuse_after_ms));
    let (verdict, out) = run_on(node, &new.bytes());
    assert_eq!(
        verdict, XDP_TX,
        "after snat_reuse_after a port serves again"
    );
    assert!(ports.contains(&endpoints(&out).1));
}

/// A node that reports no flows of its own (no sync ring), programmed with
/// `config`.
fn backup_node(
    config: &pnlb_core::config::Config,
    resolver: &mut StaticResolver,
) -> (pnlb_dataplane::Dataplane, pnlb_dataplane::Programmer) {
    let dataplane = pnlb_dataplane::Dataplane::load(65_536).expect("load");
    let mut programmer = pnlb_dataplane::Programmer::new();
    programmer.apply(&dataplane, config, resolver).unwrap();
    (dataplane, programmer)
}

fn active_node(
    config: &pnlb_core::config::Config,
    resolver: &mut StaticResolver,
) -> (pnlb_dataplane::Dataplane, pnlb_dataplane::Programmer) {
    let dataplane = pnlb_dataplane::Dataplane::load_with(pnlb_dataplane::LoadOptions {
        conn_sync: true,
        ..pnlb_dataplane::LoadOptions::for_tests(65_536)
    })
    .expect("load");
    let mut programmer = pnlb_dataplane::Programmer::new();
    programmer.apply(&dataplane, config, resolver).unwrap();
    (dataplane, programmer)
}

fn run_on(dataplane: &pnlb_dataplane::Dataplane, packet: &[u8]) -> (u32, Vec<u8>) {
    test_run(dataplane.program(), packet)
}

/// A node behind ECMP reached through the test run's interface (`is_self`:
/// this one, whose MAC is LB_MAC).
fn node(mac: [u8; 6], is_self: bool) -> pnlb_dataplane::nodes::Node {
    pnlb_dataplane::nodes::Node {
        mac,
        src_mac: LB_MAC,
        ifindex: TEST_RUN_IFINDEX,
        is_self,
    }
}

/// nat behind ECMP: with a node list published, a packet of a flow this
/// node holds no entry of goes to the flow's designated node, unchanged
/// but for its MACs, from the client's side (by source) and the server's
/// (by destination) alike; a frame another node handed on is handled
/// here; an answer to this host's own address (a health check's) and a
/// flow designated to this node stay here.
#[test]
fn nat_flows_this_node_does_not_hold_go_to_their_designated_node() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        use pnlb_dataplane::nodes::{Node, NodeLists};
        use std::time::{Duration, Instant};
        const PEER_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0, 0, 2];
        let fixture = Fixture::new(CONFIG);
        let nodes = [node(LB_MAC, true), node(PEER_MAC, false)];
        let dataplane = &fixture.dataplane;
        let mut lists = NodeLists::clear(dataplane).unwrap();
        // A list that applies now; the next may be written once its switch
        // is a few ms past.
        let mut publish_now = |nodes: &[Node]| {
            let now = Instant::now();
            assert!(lists.publish(dataplane, nodes, now, now).unwrap());
            std::thread::sleep(Duration::from_millis(25));
        };
        publish_now(&nodes);
        dataplane.set_node_macs(&[PEER_MAC]).unwrap();
        let syn = |port| Pkt::tcp("10.77.0.2", port, "10.77.100.1", 80, SYN);
        let (mut handed, mut here) = (Vec::new(), Vec::new());
        for port in 41_000..41_040u16 {
            let (verdict, out) = fixture.run(&syn(port).bytes());
            assert_eq!(verdict, XDP_TX);
            if out[..6] == PEER_MAC {
                let expected = syn(port).macs(LB_MAC, PEER_MAC).bytes();
                assert_eq!(out, expected, "handed on unchanged but for its MACs");
                handed.push(port);
            } else {
                here.push(port);
            }
        }
        eprintln!(
            "40 SYNs: {} handed to the other node, {} opened here",
            handed.len(),
            here.len()
        );
        assert!((8..=32).contains(&handed.len()), "{handed:?}");
        assert_eq!(fixture.reason("fwd_handed_on"), handed.len() as u64);

        // Handed on by the other node: opened here.
        let from_peer = syn(handed[0]).macs(PEER_MAC, LB_MAC);
        let (_, out) = fixture.run(&from_peer.bytes());
        assert_eq!(out[..6], backend_mac(ip("10.77.1.11")), "to the backend");

        // The server's side: a reply this node holds no entry of.
        let reply = |port| {
            Pkt::tcp("10.77.1.11", 8080, "10.77.0.2", port, SYN_ACK)
                .macs(backend_mac(ip("10.77.1.11")), LB_MAC)
        };
        let (verdict, out) = fixture.run(&reply(handed[1]).bytes());
        assert_eq!((verdict, out[..6].to_vec()), (XDP_TX, PEER_MAC.to_vec()));
        let (verdict, _) = fixture.run(&reply(here[0]).bytes());
        assert_eq!(verdict, XDP_REDIRECT, "its own flow: translated here");
        let health = Pkt::tcp("10.77.1.11", 8080, "10.77.1.2", handed[1], SYN_ACK)
            .macs(backend_mac(ip("10.77.1.11")), LB_MAC);
        assert_eq!(fixture.run(&health.bytes()).0, XDP_PASS, "for this host");

        // The list changed (the peer left, another came): a mid-flow packet
        // the new peer hands on that finds no entry here gets its second
        // chance at the flow's designated node in the list before, unless
        // that is this node, the node it came from, or the new peer is the
        // flow's designated node (it gave the second chance already).
        const NEW_PEER_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0, 0, 3];
        let new_peer = node(NEW_PEER_MAC, false);
        // (The earlier list in another order, so that a flow's designated
        // node before and now differ.)
        publish_now(&[nodes[1], nodes[0]]);
        publish_now(&[nodes[0], new_peer]);
        dataplane.set_node_macs(&[PEER_MAC, NEW_PEER_MAC]).unwrap();
        let mid_flow = |port| Pkt::tcp("10.77.0.2", port, "10.77.100.1", 80, ACK);
        let (_, out) = fixture.run(&syn(handed[4] + 1000).macs(NEW_PEER_MAC, LB_MAC).bytes());
        assert_eq!(
            out[..6],
            backend_mac(ip("10.77.1.11")),
            "a SYN handed on is opened here"
        );
        let (mut second_chance, mut kept) = (0, 0);
        for port in handed.iter().chain(&here).copied() {
            let from_new_peer = mid_flow(port + 1000).macs(NEW_PEER_MAC, LB_MAC);
            let before = mid_flow(port + 1000);
            let (_, out) = fixture.run(&from_new_peer.bytes());
            if out[..6] == PEER_MAC {
                second_chance += 1;
                assert_eq!(out, before.macs(LB_MAC, PEER_MAC).bytes());
            } else {
                kept += 1;
                assert_eq!(out[..6], backend_mac(ip("10.77.1.11")), "re-created here");
            }
        }
        eprintln!("mid-flow packets handed on by the new peer: {second_chance} to the old peer (second chance), {kept} handled here");
        assert!(second_chance > 0 && kept > 0);
        let from_old_peer = mid_flow(handed[3] + 2000).macs(PEER_MAC, LB_MAC);
        let (_, out) = fixture.run(&from_old_peer.bytes());
        assert_ne!(out[..6], PEER_MAC, "never back to the node it came from");

        // A node this one knows but does not count as live (its lists
        // disagree): what it hands on is handled here, never passed back.
        const SILENT_PEER_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0, 0, 4];
        publish_now(&nodes);
        dataplane.set_node_macs(&[SILENT_PEER_MAC]).unwrap();
        let (_, out) = fixture.run(&syn(handed[5]).macs(SILENT_PEER_MAC, LB_MAC).bytes());
        assert_eq!(
            out[..6],
            backend_mac(ip("10.77.1.11")),
            "opened here, not handed back"
        );

        // No list: every flow is this node's again.
        publish_now(&[]);
        let (_, out) = fixture.run(&syn(handed[2]).bytes());
        assert_eq!(out[..6], backend_mac(ip("10.77.1.11")));
    });
}

/// Every node switches lists at one instant: a list published ahead of
/// its instant changes nothing until then, and the list before it serves
/// second chances from that instant on.
#[test]
fn nat_node_lists_switch_at_their_instant() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        use pnlb_dataplane::nodes::NodeLists;
        use std::time::{Duration, Instant};
        const PEER_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0, 0, 2];
        const NEW_PEER_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0, 0, 3];
        let fixture = Fixture::new(CONFIG);
        let before = [node(LB_MAC, true), node(PEER_MAC, false)];
        let after = [
            node(LB_MAC, true),
            node(PEER_MAC, false),
            node(NEW_PEER_MAC, false),
        ];
        let dataplane = &fixture.dataplane;
        let mut lists = NodeLists::clear(dataplane).unwrap();
        let now = Instant::now();
        assert!(lists.publish(dataplane, &before, now, now).unwrap());
        dataplane.set_node_macs(&[PEER_MAC, NEW_PEER_MAC]).unwrap();
        std::thread::sleep(Duration::from_millis(25));
        let switch = Instant::now() + Duration::from_millis(300);
        assert!(lists
            .publish(dataplane, &after, switch, Instant::now())
            .unwrap());
        assert_eq!(lists.pending(Instant::now()), Some(switch));

        let syn = |port| Pkt::tcp("10.77.0.2", port, "10.77.100.1", 80, SYN);
        let to = |port| fixture.run(&syn(port).bytes()).1[..6].to_vec();
        let ports = 42_000..42_060u16;
        let early: Vec<Vec<u8>> = ports.clone().map(to).collect();
        assert!(Instant::now() < switch, "measured before the switch");
        assert!(
            early.iter().all(|mac| mac[..] != NEW_PEER_MAC),
            "no flow goes to the new node before its instant"
        );
        std::thread::sleep(
            switch.saturating_duration_since(Instant::now()) + Duration::from_millis(5),
        );
        let late: Vec<Vec<u8>> = ports.clone().map(|port| to(port + 100)).collect();
        let to_new = late.iter().filter(|mac| mac[..] == NEW_PEER_MAC).count();
        eprintln!("60 SYNs: 0 to the joining node before its instant, {to_new} after");
        assert!((8..=40).contains(&to_new), "{to_new}");

        // A flow from before the switch: a mid-flow packet another node
        // hands on that finds no entry here goes to the flow's designated
        // node before the switch (its second chance).
        let moved = ports.clone().find(|port| {
            let early_mac = &early[usize::from(port - 42_000)];
            early_mac[..] == PEER_MAC && {
                let reply =
                    Pkt::tcp("10.77.0.2", *port, "10.77.100.1", 80, ACK).macs(NEW_PEER_MAC, LB_MAC);
                fixture.run(&reply.bytes()).1[..6] == PEER_MAC
            }
        });
        eprintln!(
            "a mid-flow packet handed on by the new node: second chance at the old one: {moved:?}"
        );
        assert!(
            moved.is_some(),
            "some flow's designated node moved from the peer"
        );
        assert_eq!(lists.at(Instant::now()), &after[..]);
        assert_eq!(lists.pending(Instant::now()), None);
    });
}

/// Behind ECMP a flow that another node cannot rebuild belongs to its
/// designated node until its entry is synced everywhere: snat's (its
/// translation is the node's own; re-created elsewhere the server would
/// reset it) and a per-node scheduler's (rr: another node would pick
/// another backend). Its SYN goes there, and so does a mid-flow packet of
/// it that finds no entry here: a flow still in its handshake when the
/// routers moved it is never synced, and without this was lost. At its
/// designated node such a packet is dropped, not re-created (the client
/// sends again once the entry is here). A single node still re-creates an
/// snat flow by hash, and dr by hash is never handed on.
#[test]
fn snat_and_rr_flows_behind_ecmp_go_to_their_designated_node() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        use pnlb_dataplane::nodes::NodeLists;
        use std::time::Instant;
        const PEER_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0, 0, 2];
        let fixture = Fixture::new(CONFIG);
        let packet = |vip, port, flags| Pkt::tcp("10.77.0.2", port, vip, 80, flags);
        let (verdict, out) = fixture.run(&packet("10.77.100.2", 43_000, ACK).bytes());
        assert_eq!(verdict, XDP_TX, "alone: re-created");
        assert_eq!(out[..6], backend_mac(ip("10.77.1.21")));
        assert_eq!(fixture.reason("fwd_rehashed"), 1);

        let mut lists = NodeLists::clear(&fixture.dataplane).unwrap();
        let now = Instant::now();
        let nodes = [node(LB_MAC, true), node(PEER_MAC, false)];
        assert!(lists.publish(&fixture.dataplane, &nodes, now, now).unwrap());
        fixture.dataplane.set_node_macs(&[PEER_MAC]).unwrap();
        let backends = [
            backend_mac(ip("10.77.1.21")),
            backend_mac(ip("10.77.1.41")),
            backend_mac(ip("10.77.1.42")),
        ];
        for (vip, method) in [("10.77.100.2", "snat"), ("10.77.100.4", "dr rr")] {
            let (mut handed, mut opened) = (0, 0);
            for port in 43_100..43_140u16 {
                let syn = packet(vip, port, SYN);
                let (verdict, out) = fixture.run(&syn.bytes());
                assert_eq!(verdict, XDP_TX, "{method} {port}");
                if out[..6] == PEER_MAC {
                    assert_eq!(out, syn.macs(LB_MAC, PEER_MAC).bytes(), "unchanged");
                    let (verdict, out) = fixture.run(&packet(vip, port, ACK).bytes());
                    assert_eq!(
                        (verdict, &out[..6]),
                        (XDP_TX, &PEER_MAC[..]),
                        "the handshake's ACK follows its SYN"
                    );
                    handed += 1;
                } else {
                    assert!(
                        backends.iter().any(|mac| out[..6] == mac[..]),
                        "{method}: opened here"
                    );
                    opened += 1;
                }
            }
            // Mid-flow packets of flows no node here has seen open.
            let (mut moved_on, mut dropped) = (0, 0);
            for port in 44_000..44_040u16 {
                let (verdict, out) = fixture.run(&packet(vip, port, ACK).bytes());
                match verdict {
                    XDP_TX if out[..6] == PEER_MAC => moved_on += 1,
                    XDP_DROP => dropped += 1,
                    other => panic!("{method}: a mid-flow packet of no flow: {other}"),
                }
            }
            eprintln!("{method} behind ECMP: 40 SYNs, {handed} handed to their designated node (the ACK after each too), {opened} opened here; 40 mid-flow packets of no flow: {moved_on} handed on, {dropped} dropped here (designated here, not re-created)");
            assert!(handed > 0 && opened > 0 && moved_on > 0 && dropped > 0);
            // Handed on by the other node: opened here.
            let from_peer = packet(vip, 45_000, SYN).macs(PEER_MAC, LB_MAC);
            let (_, out) = fixture.run(&from_peer.bytes());
            assert!(
                backends.iter().any(|mac| out[..6] == mac[..]),
                "{method}: a SYN handed on opens here"
            );
        }
        assert_eq!(fixture.reason("fwd_rehashed"), 1, "nothing re-created");

        // dr by hash: every node picks the same backend; never handed on.
        for port in 46_000..46_020u16 {
            for flags in [SYN, ACK] {
                let (verdict, out) = fixture.run(&packet("10.77.100.5", port, flags).bytes());
                assert_eq!(
                    (verdict, &out[..6]),
                    (XDP_TX, &backend_mac(ip("10.77.1.51"))[..])
                );
            }
        }
    });
}
