//! Direct Routing fixtures: IPv4/IPv6 x TCP/UDP, port-0 services, the
//! connection table across backend changes, and the counters.

mod support;

use std::net::IpAddr;

use libbpf_rs::MapCore;
use pnlb_dataplane::abi::{self, HashKey};
use pnlb_dataplane::LoadOptions;
use support::*;

const CONFIG: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "web4"
vip = "10.77.100.1"
port = 80
protocol = "tcp"
method = "dr"
[[service.backend]]
address = "10.77.1.11"
[[service.backend]]
address = "10.77.1.12"
[[service.backend]]
address = "10.77.1.13"

[[service]]
name = "dns4"
vip = "10.77.100.1"
port = 53
protocol = "udp"
[[service.backend]]
address = "10.77.1.21"
[[service.backend]]
address = "10.77.1.22"

[[service]]
name = "web6"
vip = "fd77:100::1"
port = 80
protocol = "tcp"
[[service.backend]]
address = "fd77:1::11"
[[service.backend]]
address = "fd77:1::12"

[[service]]
name = "dns6"
vip = "fd77:100::1"
port = 53
protocol = "udp"
[[service.backend]]
address = "fd77:1::21"

[[service]]
name = "any4"
vip = "10.77.100.2"
port = 0
protocol = "tcp"
[[service.backend]]
address = "10.77.1.31"
[[service.backend]]
address = "10.77.1.32"
"#;

fn assert_forwarded_dr(fixture: &Fixture, service: &str, packet: &[u8]) -> IpAddr {
    let backend = fixture.predicted_backend(service, packet, HashKey::PNLB_HASH_5TUPLE);
    let (verdict, out) = fixture.run(packet);
    assert_eq!(
        verdict, XDP_TX,
        "{service}: DR to a backend on the ingress interface is XDP_TX"
    );
    assert_eq!(
        out,
        dr_rewritten(packet, backend),
        "{service}: only the MACs change, to backend {backend}"
    );
    backend
}

#[test]
fn dr_forwards_ipv4_tcp_with_only_the_macs_rewritten() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let packet = tcp4("10.77.0.2", 40000, "10.77.100.1", 80, b"");
    let backend = assert_forwarded_dr(&fixture, "web4", &packet);
    assert!(["10.77.1.11", "10.77.1.12", "10.77.1.13"].contains(&backend.to_string().as_str()));
}

#[test]
fn dr_forwards_ipv4_udp() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    assert_forwarded_dr(
        &fixture,
        "dns4",
        &udp4("10.77.0.2", 5353, "10.77.100.1", 53, b"query"),
    );
}

#[test]
fn dr_forwards_ipv6_tcp() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    assert_forwarded_dr(
        &fixture,
        "web6",
        &tcp6(
            "fd77::2",
            40000,
            "fd77:100::1",
            80,
            b"GET / HTTP/1.1\r\n\r\n",
        ),
    );
}

#[test]
fn dr_forwards_ipv6_udp() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let packet = udp6("fd77::2", 5353, "fd77:100::1", 53, b"query");
    let backend = assert_forwarded_dr(&fixture, "dns6", &packet);
    assert_eq!(backend, "fd77:1::21".parse::<IpAddr>().unwrap());
}

#[test]
fn a_port_zero_service_takes_every_port_of_its_vip() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    for port in [1u16, 22, 80, 443, 65535] {
        assert_forwarded_dr(
            &fixture,
            "any4",
            &tcp4("10.77.0.2", 40000, "10.77.100.2", port, b""),
        );
    }
    // The port-0 service is TCP only.
    let (verdict, _) = fixture.run(&udp4("10.77.0.2", 40000, "10.77.100.2", 53, b""));
    assert_eq!(verdict, XDP_PASS);
}

#[test]
fn the_data_plane_picks_the_backend_the_reference_hash_predicts() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let mut seen = std::collections::HashSet::new();
    for port in 30000..30200u16 {
        seen.insert(assert_forwarded_dr(
            &fixture,
            "web4",
            &tcp4("10.77.0.2", port, "10.77.100.1", 80, b""),
        ));
    }
    assert_eq!(seen.len(), 3, "200 flows reach all three backends");
}

#[test]
fn a_backend_on_another_interface_is_reached_by_redirect() {
    if !privileged() {
        return;
    }
    let mut fixture = Fixture::new(CONFIG);
    fixture.resolver.ifindex = 4242;
    fixture.apply(
        &CONFIG
            .replace("10.77.1.21", "10.77.1.23")
            .replace("10.77.1.22", "10.77.1.24"),
    );
    let (verdict, _) = fixture.run(&udp4("10.77.0.2", 5353, "10.77.100.1", 53, b"query"));
    assert_eq!(verdict, XDP_REDIRECT);
}

/// A service of its own on 10.77.100.`host`, port 80, one backend.
fn lone_service(name: &str, host: u8, backend: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nvip = \"10.77.100.{host}\"\nport = 80\nprotocol = \"tcp\"\n\
         method = \"dr\"\n[[service.backend]]\naddress = \"{backend}\"\n"
    )
}

#[test]
fn a_removal_right_after_an_add_and_an_add_right_after_it_wait_for_no_readers() {
    if !privileged() {
        return;
    }
    let gone = lone_service("gone", 9, "10.77.1.31");
    let mut fixture = Fixture::new(&format!("{CONFIG}{gone}"));
    let waits = fixture.programmer.waits_for_readers();
    // Its copy is cleared in place, not rewritten.
    fixture.apply(CONFIG);
    assert_eq!(fixture.programmer.waits_for_readers(), waits, "the removal");
    // The removed service's slots (its id's other copy, its backend's
    // entry) may still be read: the added one takes others, or the same
    // once their grace period passed, and writes without waiting.
    fixture.apply(&format!(
        "{CONFIG}{}",
        lone_service("next", 8, "10.77.1.32")
    ));
    assert_eq!(fixture.programmer.waits_for_readers(), waits, "the add");
    let backend = assert_forwarded_dr(
        &fixture,
        "next",
        &tcp4("10.77.0.2", 30000, "10.77.100.8", 80, b""),
    );
    assert_eq!(backend.to_string(), "10.77.1.32");
    let (verdict, _) = fixture.run(&tcp4("10.77.0.2", 30001, "10.77.100.9", 80, b""));
    assert_eq!(verdict, XDP_PASS, "the removed service's VIP has none now");
}

#[test]
fn an_entry_whose_id_names_another_listeners_service_is_not_taken() {
    if !privileged() {
        return;
    }
    // pnlb_services hands a replaced or deleted element to the next write
    // at once, so a packet may find an element that holds another
    // service's entry by the time it reads it. Planted here: web4's key
    // with dns4's id. The packet takes the id only, and dns4's copy is of
    // another listener: no service for it (nothing on every port either).
    let bpffs = Bpffs::mount("recycled");
    let options = LoadOptions {
        pin_dir: Some(pnlb_dataplane::pinning::instance_dir(&bpffs.0)),
        ..LoadOptions::for_tests(65_536)
    };
    let fixture = Fixture::with_options(CONFIG, options.clone());
    let services =
        libbpf_rs::MapHandle::from_pinned_path(options.pin_dir.expect("set").join("pnlb_services"))
            .expect("pinned");
    let key = abi::ServiceKey {
        vip: abi::addr("10.77.100.1".parse().expect("address")),
        port: 80u16.to_be(),
        protocol: 6,
        _pad: 0,
    };
    let written = services
        .lookup(abi::bytes_of(&key), libbpf_rs::MapFlags::ANY)
        .expect("lookup")
        .expect("web4's entry");
    let mut recycled = abi::from_bytes::<abi::Service>(&written).expect("an entry");
    recycled.id = fixture.programmer.service_id("dns4").expect("applied");
    services
        .update(
            abi::bytes_of(&key),
            abi::bytes_of(&recycled),
            libbpf_rs::MapFlags::ANY,
        )
        .expect("update");
    let (verdict, _) = fixture.run(&tcp4("10.77.0.2", 31001, "10.77.100.1", 80, b""));
    assert_eq!(
        verdict, XDP_PASS,
        "taken as dns4's, or as web4's from the entry"
    );
    services
        .update(abi::bytes_of(&key), &written, libbpf_rs::MapFlags::ANY)
        .expect("update");
    assert_forwarded_dr(
        &fixture,
        "web4",
        &tcp4("10.77.0.2", 31002, "10.77.100.1", 80, b""),
    );
}

#[test]
fn an_established_flow_keeps_its_backend_when_backends_are_added() {
    if !privileged() {
        return;
    }
    let mut fixture = Fixture::new(CONFIG);
    let grown = CONFIG.replace(
        "[[service.backend]]\naddress = \"10.77.1.13\"\n",
        "[[service.backend]]\naddress = \"10.77.1.13\"\n[[service.backend]]\naddress = \"10.77.1.14\"\n[[service.backend]]\naddress = \"10.77.1.15\"\n",
    );
    // Open 100 flows, then grow the pool: the new table moves some of
    // them, but the connection table must keep every one where it was.
    let flows: Vec<Vec<u8>> = (0..100)
        .map(|i| tcp4("10.77.0.2", 20000 + i, "10.77.100.1", 80, b""))
        .collect();
    let first: Vec<IpAddr> = flows
        .iter()
        .map(|p| assert_forwarded_dr(&fixture, "web4", p))
        .collect();
    fixture.apply(&grown);
    let mut table_moved = 0;
    for (packet, backend) in flows.iter().zip(&first) {
        if fixture.predicted_backend("web4", packet, HashKey::PNLB_HASH_5TUPLE) != *backend {
            table_moved += 1;
        }
        let (verdict, out) = fixture.run(packet);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out, dr_rewritten(packet, *backend));
    }
    assert!(
        table_moved > 0,
        "the new table should have moved some flows (otherwise this test proves nothing)"
    );
    // A new flow is scheduled on the new table, which can reach the new backends.
    let mut reached_new = false;
    for i in 0..200 {
        let packet = tcp4("10.77.0.3", 20000 + i, "10.77.100.1", 80, b"");
        let backend = assert_forwarded_dr(&fixture, "web4", &packet);
        reached_new |= backend.to_string() == "10.77.1.14" || backend.to_string() == "10.77.1.15";
    }
    assert!(reached_new);
}

#[test]
fn a_removed_backend_keeps_its_established_flows_until_they_end() {
    if !privileged() {
        return;
    }
    let mut fixture = Fixture::new(CONFIG);
    let flows: Vec<Vec<u8>> = (0..60)
        .map(|i| tcp4("10.77.0.2", 21000 + i, "10.77.100.1", 80, b""))
        .collect();
    let first: Vec<IpAddr> = flows
        .iter()
        .map(|p| assert_forwarded_dr(&fixture, "web4", p))
        .collect();
    let removed: IpAddr = "10.77.1.12".parse().unwrap();
    assert!(first.contains(&removed));
    fixture.apply(&CONFIG.replace("[[service.backend]]\naddress = \"10.77.1.12\"\n", ""));

    // Established flows stay where they are, the removed backend's too
    // (removing a backend resets nothing); new flows avoid it.
    for (packet, backend) in flows.iter().zip(&first) {
        let (_, out) = fixture.run(packet);
        assert_eq!(out, dr_rewritten(packet, *backend));
    }
    for i in 0..200 {
        let packet = tcp4("10.77.0.9", 21000 + i, "10.77.100.1", 80, b"");
        assert_ne!(assert_forwarded_dr(&fixture, "web4", &packet), removed);
    }
    assert_eq!(fixture.programmer.retiring().len(), 1);
    assert!(fixture
        .programmer
        .reap(&fixture.dataplane)
        .unwrap()
        .is_empty());

    // Once its connections have expired, its slot is freed, and a late
    // packet of one of its flows is scheduled anew.
    let later = pnlb_dataplane::conntrack::monotonic_ns() + 3_600_000_000_000;
    fixture
        .dataplane
        .sweep_connections_at(&pnlb_core::config::Timeouts::default(), later)
        .unwrap();
    assert_eq!(
        fixture.programmer.reap(&fixture.dataplane).unwrap().len(),
        1
    );
    assert!(fixture.programmer.retiring().is_empty());
    for (packet, backend) in flows.iter().zip(&first) {
        if *backend == removed {
            assert_ne!(assert_forwarded_dr(&fixture, "web4", packet), removed);
        }
    }
}

#[test]
fn a_quiescent_backend_keeps_its_flows_but_gets_no_new_ones() {
    if !privileged() {
        return;
    }
    let mut fixture = Fixture::new(CONFIG);
    let flows: Vec<Vec<u8>> = (0..60)
        .map(|i| tcp4("10.77.0.2", 22000 + i, "10.77.100.1", 80, b""))
        .collect();
    let first: Vec<IpAddr> = flows
        .iter()
        .map(|p| assert_forwarded_dr(&fixture, "web4", p))
        .collect();
    fixture.apply(&CONFIG.replace(
        "address = \"10.77.1.11\"\n",
        "address = \"10.77.1.11\"\nweight = 0\n",
    ));
    for (packet, backend) in flows.iter().zip(&first) {
        let (_, out) = fixture.run(packet);
        assert_eq!(out, dr_rewritten(packet, *backend));
    }
    for i in 0..200 {
        let packet = tcp4("10.77.0.9", 22000 + i, "10.77.100.1", 80, b"");
        assert_ne!(
            assert_forwarded_dr(&fixture, "web4", &packet).to_string(),
            "10.77.1.11"
        );
    }
}

#[test]
fn an_unresolvable_backend_gets_no_new_flows() {
    if !privileged() {
        return;
    }
    let mut fixture = Fixture::new("[daemon]\ninterfaces = [\"eth0\"]\n");
    fixture
        .resolver
        .unreachable
        .push("10.77.1.12".parse().unwrap());
    fixture.apply(CONFIG);
    for i in 0..200 {
        let packet = tcp4("10.77.0.2", 23000 + i, "10.77.100.1", 80, b"");
        assert_ne!(
            assert_forwarded_dr(&fixture, "web4", &packet).to_string(),
            "10.77.1.12"
        );
    }
}

/// An apply skips services whose config is as last applied, but not when
/// a backend's next hop changed: the same file re-applied after the
/// neighbour moved (another interface) or went away takes effect, and so
/// does its coming back.
#[test]
fn a_next_hop_change_under_an_unchanged_config_is_applied() {
    if !privileged() {
        return;
    }
    let mut fixture = Fixture::new(CONFIG);
    let packet = udp4("10.77.0.2", 5353, "10.77.100.1", 53, b"query");
    assert_eq!(fixture.run(&packet).0, XDP_TX);
    fixture.resolver.ifindex = 4242;
    fixture.apply(CONFIG);
    assert_eq!(
        fixture.run(&packet).0,
        XDP_REDIRECT,
        "the backend's new interface is written"
    );
    fixture.resolver.ifindex = TEST_RUN_IFINDEX;
    let gone: std::net::IpAddr = "10.77.1.12".parse().unwrap();
    fixture.resolver.unreachable.push(gone);
    fixture.apply(CONFIG);
    // New flows from `first_port` on (flows seen before keep their backend).
    let reaches = |fixture: &Fixture, first_port: u16| {
        (first_port..first_port + 200).any(|port| {
            let packet = tcp4("10.77.0.2", port, "10.77.100.1", 80, b"");
            assert_forwarded_dr(fixture, "web4", &packet) == gone
        })
    };
    assert!(
        !reaches(&fixture, 24000),
        "an unresolvable backend takes no new flows"
    );
    fixture.resolver.unreachable.clear();
    fixture.apply(CONFIG);
    assert!(
        reaches(&fixture, 25000),
        "and takes them again once it resolves"
    );
}

#[test]
fn counters_count_packets_bytes_and_new_flows_per_service_and_backend() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let packet = udp4("10.77.0.2", 5353, "10.77.100.1", 53, b"query");
    let backend = assert_forwarded_dr(&fixture, "dns4", &packet);
    fixture.run(&packet);
    fixture.run(&packet);
    let service = fixture
        .dataplane
        .service_counters(fixture.programmer.service_id("dns4").unwrap())
        .unwrap();
    assert_eq!(
        (service.packets, service.bytes, service.new_flows),
        (3, 3 * packet.len() as u64, 1)
    );
    let id = fixture.programmer.backend_id("dns4", backend, 53).unwrap();
    let counters = fixture.dataplane.backend_counters(id).unwrap();
    assert_eq!((counters.packets, counters.new_flows), (3, 1));
    assert_eq!(fixture.dataplane.connection_count(), 1);
    // The status reads every slot at once: the same figures.
    let now = fixture.dataplane.counter_snapshot();
    let service_id = fixture.programmer.service_id("dns4").unwrap();
    assert_eq!(now.service(service_id), service);
    assert_eq!(now.backend(id), counters);
    assert_eq!(
        now.backend_load(id),
        fixture.dataplane.backend_load(id).unwrap()
    );
    assert_eq!(
        now.backend_load(id),
        (0, 1),
        "one UDP flow: inactive, as in IPVS"
    );
    let other = fixture.programmer.service_id("web4").unwrap();
    assert_eq!(
        now.service(other),
        fixture.dataplane.service_counters(other).unwrap()
    );
}

#[test]
fn removing_a_service_stops_forwarding_for_it() {
    if !privileged() {
        return;
    }
    let mut fixture = Fixture::new(CONFIG);
    let packet = tcp6("fd77::2", 40000, "fd77:100::1", 80, b"");
    assert_forwarded_dr(&fixture, "web6", &packet);
    let without_v6 = CONFIG
        .split("[[service]]\nname = \"web6\"")
        .next()
        .unwrap()
        .to_string()
        + CONFIG
            .split("[[service]]\nname = \"any4\"")
            .nth(1)
            .map(|rest| format!("[[service]]\nname = \"any4\"{rest}"))
            .unwrap()
            .as_str();
    fixture.apply(&without_v6);
    let (verdict, out) = fixture.run(&packet);
    assert_eq!(
        verdict, XDP_PASS,
        "the VIP is gone: the packet is the kernel's again"
    );
    assert_eq!(out, packet);
    assert_eq!(fixture.reason("pass_not_service"), 1);
}
