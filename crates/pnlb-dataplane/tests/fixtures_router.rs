//! The balancer as a router: TTL / hop limit through nat and snat (time
//! exceeded, rate-limited), path MTU on every path (frag-needed /
//! packet-too-big from the right address, either direction), and IPv6 UDP
//! without a checksum. Exact bytes, checksums included.

mod support;

use std::net::IpAddr;

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
name = "dr4"
vip = "10.77.100.5"
port = 80
method = "dr"
[[service.backend]]
address = "10.77.1.51"
"#;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn nat_and_snat_take_one_hop_off_the_ttl_and_dr_leaves_it() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let syn = Pkt::tcp("10.77.0.2", 40000, "10.77.100.1", 80, SYN).with_ttl(2);
        let (verdict, out) = fixture.run(&syn.bytes());
        assert_eq!(verdict, XDP_TX);
        let backend = ip("10.77.1.11");
        assert_eq!(
            out,
            syn.with(ip("10.77.0.2"), 40000, backend, 8080)
                .with_ttl(1)
                .macs(LB_MAC, backend_mac(backend))
                .bytes(),
            "TTL 2 -> 1, header checksum updated"
        );
        let dr = Pkt::tcp("10.77.0.2", 40001, "10.77.100.5", 80, SYN).with_ttl(1);
        let (verdict, out) = fixture.run(&dr.bytes());
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            out,
            dr_rewritten(&dr.bytes(), ip("10.77.1.51")),
            "dr: TTL 1 forwarded as it came"
        );
        println!("nat TTL 2 -> 1; dr TTL 1 untouched");
    });
}

#[test]
fn a_ttl_that_runs_out_is_answered_with_time_exceeded_from_the_address_the_sender_talks_to() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        // Towards the backend: from the VIP, quoting the header + 8 bytes
        // of a short packet; no flow is created for it.
        let syn = Pkt::tcp("10.77.0.2", 40000, "10.77.100.1", 80, SYN).with_ttl(1);
        let (verdict, out) = fixture.run(&syn.bytes());
        assert_eq!(verdict, XDP_TX, "answered out of the ingress");
        assert_eq!(
            out,
            icmp_error(
                "10.77.100.1",
                "10.77.0.2",
                IcmpError::TimeExceeded,
                &syn,
                Some(20 + 8),
                (LB_MAC, ROUTER_MAC),
            )
        );
        assert!(
            fixture
                .dataplane
                .lookup_connection(&flow_of(&syn.bytes()))
                .is_none(),
            "no flow for a packet that expired"
        );

        // A long packet is quoted with 64 bytes of payload.
        let long = sized(Pkt::udp("fd77::2", 5353, "fd77:100::1", 53), 400).with_ttl(0);
        let (verdict, out) = fixture.run(&long.bytes());
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            out,
            icmp_error(
                "fd77:100::1",
                "fd77::2",
                IcmpError::TimeExceeded,
                &long,
                Some(40 + 64),
                (LB_MAC, ROUTER_MAC),
            ),
            "hop limit 0: ICMPv6 time exceeded from the VIP"
        );

        // Towards the server: nat answers from the VIP, snat from the
        // SNAT address the server talks to.
        fixture.run(&Pkt::tcp("10.77.0.2", 40002, "10.77.100.1", 80, SYN).bytes());
        let answer = Pkt::tcp("10.77.1.11", 8080, "10.77.0.2", 40002, SYN_ACK)
            .macs(backend_mac(ip("10.77.1.11")), LB_MAC)
            .with_ttl(1);
        let (verdict, out) = fixture.run(&answer.bytes());
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            out,
            icmp_error(
                "10.77.100.1",
                "10.77.1.11",
                IcmpError::TimeExceeded,
                &answer,
                Some(20 + 8),
                (LB_MAC, backend_mac(ip("10.77.1.11"))),
            ),
            "nat reply: from the VIP to the server"
        );
        let (_, out) = fixture.run(&Pkt::tcp("10.77.0.2", 40003, "10.77.100.2", 80, SYN).bytes());
        let (_, sport, _, _) = endpoints(&out);
        let answer = Pkt::tcp("10.77.1.21", 8080, "10.77.1.2", sport, SYN_ACK).with_ttl(1);
        let (verdict, out) = fixture.run(&answer.bytes());
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            out,
            icmp_error(
                "10.77.1.2",
                "10.77.1.21",
                IcmpError::TimeExceeded,
                &answer,
                Some(20 + 8),
                (LB_MAC, ROUTER_MAC),
            ),
            "snat reply: from the SNAT address to the server"
        );
        assert_eq!(fixture.reason("tx_icmp_time_exceeded"), 4);
        println!(
            "time exceeded: 4 answered (nat request v4, nat request v6, nat reply, snat reply)"
        );
    });
}

#[test]
fn time_exceeded_answers_are_rate_limited() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let sent = 400;
        for i in 0..sent {
            let packet = Pkt::tcp("10.77.0.2", 10000 + i, "10.77.100.1", 80, SYN).with_ttl(1);
            fixture.run(&packet.bytes());
        }
        let answered = fixture.reason("tx_icmp_time_exceeded");
        let withheld = fixture.reason("drop_icmp_rate_limited");
        println!("{sent} TTL-1 packets: {answered} answered, {withheld} withheld");
        assert_eq!(answered + withheld, u64::from(sent), "every packet counted");
        // 50 at once per CPU, then 1,000 a second: the loop takes well
        // under a second, on at most 2 CPUs.
        assert!(answered >= 50, "the burst is answered");
        assert!(withheld > 0, "the rest is withheld");
    });
}

#[test]
fn a_nat_request_too_big_for_the_backends_link_is_answered_from_the_vip() {
    if !privileged() {
        return;
    }
    in_small_mtu_netns(CONFIG, |fixture| {
        let fits = sized(Pkt::tcp("10.77.0.2", 41000, "10.77.100.1", 80, ACK), 1400);
        fixture.run(&sized(Pkt::tcp("10.77.0.2", 41000, "10.77.100.1", 80, SYN), 60).bytes());
        let (verdict, out) = fixture.run(&fits.bytes());
        assert_eq!(verdict, XDP_REDIRECT, "1400 fits d0's MTU");
        assert_eq!(out.len(), 14 + 1400);

        let big = sized(fits.clone(), 1401);
        let (verdict, out) = fixture.run(&big.bytes());
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            out,
            icmp_error(
                "10.77.100.1",
                "10.77.0.2",
                IcmpError::TooBig(1400),
                &big,
                Some(20 + 64),
                (LB_MAC, ROUTER_MAC),
            ),
            "frag-needed from the VIP quoting the packet as the client sent it"
        );
        let dr = sized(Pkt::tcp("10.77.0.2", 41001, "10.77.100.5", 80, SYN), 1401);
        let (verdict, out) = fixture.run(&dr.bytes());
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            out,
            icmp_error(
                "10.77.100.5",
                "10.77.0.2",
                IcmpError::TooBig(1400),
                &dr,
                Some(20 + 64),
                (LB_MAC, ROUTER_MAC),
            ),
            "dr: the same"
        );
        assert_eq!(fixture.reason("tx_icmp_too_big"), 2);
    });
}

#[test]
fn a_reply_too_big_for_the_clients_route_is_answered_to_the_server() {
    if !privileged() {
        return;
    }
    in_small_mtu_netns(CONFIG, |fixture| {
        // nat: the server's reply of 1401 bytes does not fit the route to
        // the client (d0, MTU 1400): the server hears it from the VIP.
        fixture.run(&Pkt::tcp("10.77.0.2", 42000, "10.77.100.1", 80, SYN).bytes());
        let server = ip("10.77.1.11");
        let reply = sized(
            Pkt::tcp("10.77.1.11", 8080, "10.77.0.2", 42000, ACK).macs(backend_mac(server), LB_MAC),
            1401,
        );
        let (verdict, out) = fixture.run(&reply.bytes());
        assert_eq!(verdict, XDP_TX, "answered back to the server");
        assert_eq!(
            out,
            icmp_error(
                "10.77.100.1",
                "10.77.1.11",
                IcmpError::TooBig(1400),
                &reply,
                Some(20 + 64),
                (LB_MAC, backend_mac(server)),
            ),
            "frag-needed from the VIP, quoting the reply as the server sent it"
        );
        let fits = sized(reply.clone(), 1400);
        let (verdict, out) = fixture.run(&fits.bytes());
        assert_eq!(verdict, XDP_REDIRECT, "1400 fits: routed to the client");
        assert_eq!(out.len(), 14 + 1400);

        // snat over IPv6: from the SNAT address.
        let config = CONFIG.to_string()
            + "[[service]]\nname = \"snat6\"\nvip = \"fd77:100::2\"\nport = 53\nprotocol = \"udp\"\nmethod = \"snat\"\nsnat_addresses = [\"fd77:1::2\"]\n[[service.backend]]\naddress = \"fd77:1::21\"\n";
        fixture.apply(&config);
        let (_, out) = fixture.run(&Pkt::udp("fd77::2", 5353, "fd77:100::2", 53).bytes());
        let (_, sport, _, _) = endpoints(&out);
        let reply = sized(Pkt::udp("fd77:1::21", 53, "fd77:1::2", sport), 1500);
        let (verdict, out) = fixture.run(&reply.bytes());
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            out,
            icmp_error(
                "fd77:1::2",
                "fd77:1::21",
                IcmpError::TooBig(1400),
                &reply,
                Some(40 + 64),
                (LB_MAC, ROUTER_MAC),
            ),
            "packet-too-big from the SNAT address"
        );
        assert_eq!(fixture.reason("tx_icmp_too_big"), 2);
        assert_eq!(fixture.reason("drop_no_route"), 0, "never a silent drop");
    });
}

#[test]
fn ipv6_udp_without_a_checksum_keeps_none_through_nat() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let mut packet = Pkt::udp("fd77::2", 5353, "fd77:100::1", 53).bytes();
        packet[60..62].copy_from_slice(&[0, 0]); // a tunnel's zero checksum
        let (verdict, out) = fixture.run(&packet);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(&out[60..62], &[0, 0], "0 stays 0 (RFC 6935)");
        assert_eq!(endpoints(&out).2, ip("fd77:1::11"));
        assert_eq!(out[21], 63, "one hop off");
    });
}

/// A router forwards only frames addressed to it: a unicast frame for
/// another MAC (a bridge floods one for a MAC it has not learned, or whose
/// port went down; a port in promiscuous mode takes it) is left to the
/// kernel, counted, and never forwarded beside its real recipient's copy.
/// Broadcast frames and interfaces whose MAC is not published go on.
#[test]
fn a_frame_for_another_hosts_mac_is_not_forwarded() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        const OTHER_NODE_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0, 0, 9];
        let fixture = Fixture::new(CONFIG);
        fixture
            .dataplane
            .set_own_mac_entries(&[(TEST_RUN_IFINDEX, LB_MAC)])
            .unwrap();
        let backend_dr = backend_mac(ip("10.77.1.51"));
        let backend_nat = backend_mac(ip("10.77.1.11"));
        let dr = Pkt::tcp("10.77.0.2", 40100, "10.77.100.5", 80, SYN);
        let nat = Pkt::tcp("10.77.0.2", 40101, "10.77.100.1", 80, SYN);
        let mut passed = 0;
        for (packet, backend) in [(&dr, backend_dr), (&nat, backend_nat)] {
            let (verdict, out) = fixture.run(&packet.bytes());
            assert_eq!((verdict, &out[..6]), (XDP_TX, &backend[..]), "ours");
            let flooded = packet.macs(ROUTER_MAC, OTHER_NODE_MAC);
            let (verdict, out) = fixture.run(&flooded.bytes());
            assert_eq!(
                (verdict, out),
                (XDP_PASS, flooded.bytes()),
                "another host's"
            );
            passed += 1;
            let broadcast = packet.macs(ROUTER_MAC, [0xff; 6]);
            assert_eq!(fixture.run(&broadcast.bytes()).0, XDP_TX, "broadcast");
        }
        assert_eq!(fixture.reason("pass_other_host"), passed);
        eprintln!("frames to another host's MAC: {passed} left to the kernel, 0 forwarded");

        // Another interface's MAC only: this one is not checked.
        fixture
            .dataplane
            .set_own_mac_entries(&[(TEST_RUN_IFINDEX + 1000, LB_MAC)])
            .unwrap();
        let flooded = dr.macs(ROUTER_MAC, OTHER_NODE_MAC);
        assert_eq!(fixture.run(&flooded.bytes()).0, XDP_TX);
    });
}
