//! ICMP errors about translated flows, both directions, IPv4 and IPv6:
//! the outer and the quoted packet are rewritten and every checksum is
//! right (compared byte for byte with packets built from scratch). For dr,
//! an error about a reply goes unchanged to the backend owning the flow.

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
name = "udp4"
vip = "10.77.100.1"
port = 53
protocol = "udp"
method = "nat"
[[service.backend]]
address = "10.77.1.41"

[[service]]
name = "snat4"
vip = "10.77.100.2"
port = 80
method = "snat"
snat_addresses = ["10.77.1.2"]
[[service.backend]]
address = "10.77.1.21"

[[service]]
name = "nat6"
vip = "fd77:100::1"
port = 53
protocol = "udp"
method = "nat"
[[service.backend]]
address = "fd77:1::11"

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
name = "dr4"
vip = "10.77.100.3"
port = 80
method = "dr"
[[service.backend]]
address = "10.77.1.31"
"#;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn to_lb() -> ([u8; 6], [u8; 6]) {
    (ROUTER_MAC, LB_MAC)
}

#[test]
fn fragmentation_needed_from_the_client_side_reaches_the_nat_backend_translated() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let (verdict, _) =
            fixture.run(&Pkt::tcp("10.77.0.2", 40000, "10.77.100.1", 80, SYN).bytes());
        assert_eq!(verdict, XDP_TX);
        // A router on the way to the client could not pass our 1500-byte reply.
        let reply_as_sent = Pkt::tcp("10.77.100.1", 80, "10.77.0.2", 40000, ACK);
        for quote in [None, Some(28)] {
            let error = icmp_error(
                "10.77.0.1",
                "10.77.100.1",
                IcmpError::TooBig(1400),
                &reply_as_sent,
                quote,
                to_lb(),
            );
            let (verdict, out) = fixture.run(&error);
            assert_eq!(verdict, XDP_TX, "to the backend");
            let backend = ip("10.77.1.11");
            let reply_from_backend = reply_as_sent.with(backend, 8080, ip("10.77.0.2"), 40000);
            let expected = icmp_error(
                "10.77.0.1",
                "10.77.1.11",
                IcmpError::TooBig(1400),
                &reply_from_backend,
                quote,
                (LB_MAC, backend_mac(backend)),
            );
            assert_eq!(
                out, expected,
                "quote {quote:?}: outer to the backend, inner as the backend sent it"
            );
        }
    });
}

#[test]
fn fragmentation_needed_from_the_client_side_reaches_the_snat_backend_translated() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let (_, out) = fixture.run(&Pkt::tcp("10.77.0.2", 40001, "10.77.100.2", 80, SYN).bytes());
        let (snat, snat_port, _, _) = endpoints(&out);
        let reply_as_sent = Pkt::tcp("10.77.100.2", 80, "10.77.0.2", 40001, ACK);
        let error = icmp_error(
            "10.77.0.1",
            "10.77.100.2",
            IcmpError::TooBig(1400),
            &reply_as_sent,
            None,
            to_lb(),
        );
        let (verdict, out) = fixture.run(&error);
        assert_eq!(verdict, XDP_TX);
        let backend = ip("10.77.1.21");
        let reply_from_backend = reply_as_sent.with(backend, 80, snat, snat_port);
        let expected = icmp_error(
            &snat.to_string(),
            "10.77.1.21",
            IcmpError::TooBig(1400),
            &reply_from_backend,
            None,
            (LB_MAC, backend_mac(backend)),
        );
        assert_eq!(
            out, expected,
            "from the SNAT address, quoting the backend's own packet"
        );
    });
}

#[test]
fn port_unreachable_from_a_nat_backend_reaches_the_client_from_the_vip() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let query = Pkt::udp("10.77.0.2", 5353, "10.77.100.1", 53);
        fixture.run(&query.bytes());
        let as_forwarded = query.with(ip("10.77.0.2"), 5353, ip("10.77.1.41"), 53);
        let error = icmp_error(
            "10.77.1.41",
            "10.77.0.2",
            IcmpError::PortUnreachable,
            &as_forwarded,
            None,
            to_lb(),
        );
        let (verdict, out) = fixture.run(&error);
        assert_eq!(verdict, XDP_REDIRECT, "routed to the client");
        let expected = icmp_error(
            "10.77.100.1",
            "10.77.0.2",
            IcmpError::PortUnreachable,
            &query,
            None,
            (LB_MAC, ROUTER_MAC),
        );
        assert_eq!(out, expected);
    });
}

#[test]
fn packet_too_big_from_the_client_side_reaches_the_ipv6_nat_backend() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        fixture.run(&Pkt::udp("fd77::2", 5353, "fd77:100::1", 53).bytes());
        let reply_as_sent = Pkt::udp("fd77:100::1", 53, "fd77::2", 5353);
        let error = icmp_error(
            "fd77::1",
            "fd77:100::1",
            IcmpError::TooBig(1280),
            &reply_as_sent,
            None,
            to_lb(),
        );
        let (verdict, out) = fixture.run(&error);
        assert_eq!(verdict, XDP_TX);
        let backend = ip("fd77:1::11");
        let expected = icmp_error(
            "fd77::1",
            "fd77:1::11",
            IcmpError::TooBig(1280),
            &reply_as_sent.with(backend, 53, ip("fd77::2"), 5353),
            None,
            (LB_MAC, backend_mac(backend)),
        );
        assert_eq!(out, expected);
    });
}

#[test]
fn port_unreachable_from_an_ipv6_snat_backend_reaches_the_client_from_the_vip() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let query = Pkt::udp("fd77::2", 5353, "fd77:100::2", 53);
        let (_, out) = fixture.run(&query.bytes());
        let (snat, snat_port, _, _) = endpoints(&out);
        let as_forwarded = query.with(snat, snat_port, ip("fd77:1::21"), 53);
        let error = icmp_error(
            "fd77:1::21",
            &snat.to_string(),
            IcmpError::PortUnreachable,
            &as_forwarded,
            None,
            to_lb(),
        );
        let (verdict, out) = fixture.run(&error);
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = icmp_error(
            "fd77:100::2",
            "fd77::2",
            IcmpError::PortUnreachable,
            &query,
            None,
            (LB_MAC, ROUTER_MAC),
        );
        assert_eq!(out, expected);
    });
}

#[test]
fn fragmentation_needed_about_a_dr_reply_goes_unchanged_to_its_backend() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        fixture.run(&Pkt::tcp("10.77.0.2", 40002, "10.77.100.3", 80, SYN).bytes());
        let reply = Pkt::tcp("10.77.100.3", 80, "10.77.0.2", 40002, ACK);
        let error = icmp_error(
            "10.77.0.1",
            "10.77.100.3",
            IcmpError::TooBig(1400),
            &reply,
            None,
            to_lb(),
        );
        let (verdict, out) = fixture.run(&error);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out, dr_rewritten(&error, ip("10.77.1.31")));
    });
}

#[test]
fn icmp_errors_about_unknown_flows_pass_untouched() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let stranger = Pkt::tcp("10.77.100.1", 80, "10.77.0.9", 1234, ACK);
        let error = icmp_error(
            "10.77.0.1",
            "10.77.100.1",
            IcmpError::TooBig(1400),
            &stranger,
            None,
            to_lb(),
        );
        let (verdict, out) = fixture.run(&error);
        assert_eq!((verdict, out), (XDP_PASS, error.clone()));
        let elsewhere = icmp_error(
            "10.77.0.1",
            "10.77.1.2",
            IcmpError::PortUnreachable,
            &stranger,
            None,
            to_lb(),
        );
        let (verdict, out) = fixture.run(&elsewhere);
        assert_eq!((verdict, out), (XDP_PASS, elsewhere.clone()));
    });
}
