//! 802.1Q VLANs (bpf/lib/vlan.h): a tagged frame is balanced like an
//! untagged one and leaves tagged for the VLAN it leaves on: the backend's,
//! the FIB's for a routed reply, its own when it goes back or to the kernel.
//! QinQ and tagged non-IP frames pass untouched.

mod support;

use std::net::IpAddr;

use pnlb_dataplane::last_known::LastKnownNeighbours;
use pnlb_dataplane::nexthop::VlanDevice;
use support::*;

const CONFIG: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "dr4"
vip = "10.77.100.1"
port = 80
method = "dr"
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "tun6"
vip = "fd77:100::1"
port = 80
method = "tun"
[[service.backend]]
address = "fd77:1::11"

[[service]]
name = "nat4"
vip = "10.77.100.2"
port = 80
method = "nat"
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
"#;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A fixture whose backends sit on VLAN `vlan` of the test interface.
fn fixture_on_vlan(vlan: u16) -> Fixture {
    let mut fixture = Fixture::new(CONFIG);
    fixture.resolver.vlan = vlan;
    fixture.apply(CONFIG);
    fixture
}

/// The TCI of a tagged frame, or None.
fn tci_of(frame: &[u8]) -> Option<u16> {
    (frame[12..14] == [0x81, 0x00]).then(|| u16::from_be_bytes([frame[14], frame[15]]))
}

fn untagged(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&frame[16..]);
    out
}

#[test]
fn dr_keeps_the_whole_tag_on_the_same_vlan_and_retags_for_another() {
    if !privileged() {
        return;
    }
    let same = fixture_on_vlan(100);
    // Priority 3, VLAN 100.
    let syn = Pkt::tcp("10.77.0.2", 40000, "10.77.100.1", 80, SYN).tagged(0x6064);
    let (verdict, out) = same.run(&syn.bytes());
    assert_eq!(verdict, XDP_TX);
    let plain = Pkt::tcp("10.77.0.2", 40000, "10.77.100.1", 80, SYN).bytes();
    assert_eq!(
        out,
        tag(&dr_rewritten(&plain, ip("10.77.1.11")), 0x6064),
        "same VLAN: the tag as it came, priority and all"
    );

    let other = fixture_on_vlan(200);
    let (verdict, out) = other.run(&syn.bytes());
    assert_eq!(verdict, XDP_TX);
    assert_eq!(
        out,
        tag(&dr_rewritten(&plain, ip("10.77.1.11")), 200),
        "the backend's VLAN, priority 0"
    );
    let (_, out) = other.run(&plain);
    assert_eq!(
        tci_of(&out),
        Some(200),
        "untagged in, tagged for the backend"
    );
    let (_, out) = Fixture::new(CONFIG).run(&syn.bytes());
    assert_eq!(tci_of(&out), None, "tagged in, to an untagged backend");
    assert_eq!(out, dr_rewritten(&plain, ip("10.77.1.11")));
}

#[test]
fn tun_wraps_the_untagged_packet_and_tags_the_outer_frame() {
    if !privileged() {
        return;
    }
    let fixture = fixture_on_vlan(200);
    let plain = Pkt::tcp("fd77::2", 40001, "fd77:100::1", 80, SYN);
    let (_, want) = Fixture::new(CONFIG).run(&plain.bytes());
    let (verdict, out) = fixture.run(&plain.tagged(100).bytes());
    assert_eq!(verdict, XDP_TX);
    assert_eq!(tci_of(&out), Some(200));
    assert_eq!(untagged(&out), want, "the same IP6IP6 packet, tagged 200");
}

#[test]
fn nat_and_snat_translate_tagged_frames_and_route_replies_out_of_a_vlan() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        // Clients in 10.79.0.0/24 and fd79::/64 are reached through their
        // own router on d0. This kernel has no 802.1Q devices
        // (CONFIG_VLAN_8021Q is off), so d0 stands in for "d0.300": the
        // table says the FIB's d0 is VLAN 300 on parent d0.
        let router2 = "02:52:54:00:00:02";
        let script = format!(
            "set -e
            ip addr add 10.79.1.2/24 dev d0
            ip -6 addr add fd79:1::2/64 dev d0 nodad
            ip route add 10.79.0.0/24 via 10.79.1.1 dev d0
            ip -6 route add fd79::/64 via fd79:1::1 dev d0
            ip neigh add 10.79.1.1 lladdr {router2} dev d0 nud permanent
            ip -6 neigh add fd79:1::1 lladdr {router2} dev d0 nud permanent"
        );
        sh(&script);
        let fixture = fixture_on_vlan(200);
        let d0 = pnlb_dataplane::loader::ifindex_of("d0").unwrap();
        fixture
            .dataplane
            .set_vlan_devices(&[VlanDevice {
                ifindex: d0,
                parent_ifindex: d0,
                vid: 300,
            }])
            .unwrap();

        let syn = Pkt::tcp("10.79.0.2", 40002, "10.77.100.2", 80, SYN).tagged(300);
        let (verdict, out) = fixture.run(&syn.bytes());
        assert_eq!(verdict, XDP_TX);
        let backend = ip("10.77.1.21");
        assert_eq!(
            out,
            Pkt::tcp("10.79.0.2", 40002, "10.77.1.21", 8080, SYN)
                .routed()
                .macs(LB_MAC, backend_mac(backend))
                .tagged(200)
                .bytes(),
            "translated, tagged for the backend's VLAN"
        );
        let answer = Pkt::tcp("10.77.1.21", 8080, "10.79.0.2", 40002, SYN_ACK)
            .macs(backend_mac(backend), LB_MAC)
            .tagged(200);
        let (verdict, out) = fixture.run(&answer.bytes());
        assert_eq!(
            verdict, XDP_REDIRECT,
            "sent on d0, the VLAN device's parent"
        );
        let router2_mac = [0x02, 0x52, 0x54, 0, 0, 2];
        assert_eq!(
            out,
            Pkt::tcp("10.77.100.2", 80, "10.79.0.2", 40002, SYN_ACK)
                .routed()
                .macs(LB_MAC, router2_mac)
                .tagged(300)
                .bytes(),
            "the reply leaves tagged 300, to the router behind VLAN 300"
        );

        // The kernel loses router 2's entry: its last known MAC, on the
        // same VLAN.
        let mut known = LastKnownNeighbours::default();
        assert!(known.look(&[(d0, ip("10.79.1.1"))]).unwrap());
        fixture
            .dataplane
            .set_last_known_neighbours(&known.entries())
            .unwrap();
        sh("ip neigh del 10.79.1.1 dev d0");
        let data = Pkt::tcp("10.77.1.21", 8080, "10.79.0.2", 40002, ACK)
            .macs(backend_mac(backend), LB_MAC)
            .tagged(200);
        let (verdict, out) = fixture.run(&data.bytes());
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            out,
            Pkt::tcp("10.77.100.2", 80, "10.79.0.2", 40002, ACK)
                .routed()
                .macs(LB_MAC, router2_mac)
                .tagged(300)
                .bytes(),
            "to router 2's last known MAC, tagged 300"
        );
        assert_eq!(fixture.dataplane.last_known_sent().unwrap(), 1);

        let query = Pkt::udp("fd79::2", 5353, "fd77:100::2", 53).tagged(300);
        let (verdict, out) = fixture.run(&query.bytes());
        assert_eq!(verdict, XDP_TX);
        assert_eq!(tci_of(&out), Some(200));
        let (_, sport, _, _) = endpoints(&out);
        let answer = Pkt::udp("fd77:1::21", 53, "fd77:1::2", sport).tagged(200);
        let (verdict, out) = fixture.run(&answer.bytes());
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(tci_of(&out), Some(300));
        assert_eq!(out[..6], router2_mac, "to the router behind VLAN 300");
    });
}

#[test]
fn answers_and_passed_frames_keep_their_tag_and_qinq_passes_untouched() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = fixture_on_vlan(200);
        // Time exceeded goes back on the VLAN it came from.
        let expiring = Pkt::tcp("10.77.0.2", 40003, "10.77.100.2", 80, SYN).with_ttl(1);
        let (verdict, out) = fixture.run(&expiring.tagged(0x2064).bytes());
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            out,
            tag(
                &icmp_error(
                    "10.77.100.2",
                    "10.77.0.2",
                    IcmpError::TimeExceeded,
                    &expiring,
                    Some(20 + 8),
                    (LB_MAC, ROUTER_MAC),
                ),
                0x2064
            )
        );

        // Not ours: to the kernel as it came.
        let other = Pkt::tcp("10.77.0.2", 40004, "10.77.0.9", 80, SYN)
            .tagged(100)
            .bytes();
        assert_eq!(fixture.run(&other), (XDP_PASS, other.clone()));
        let mut arp = other[..16].to_vec();
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        assert_eq!(fixture.run(&arp), (XDP_PASS, arp.clone()));

        // QinQ: an 802.1ad outer tag, or two 802.1Q tags.
        let to_vip = Pkt::tcp("10.77.0.2", 40005, "10.77.100.1", 80, SYN)
            .tagged(100)
            .bytes();
        let double = tag(&to_vip, 0x0007);
        assert_eq!(fixture.run(&double), (XDP_PASS, double.clone()));
        let mut ad = double.clone();
        ad[12..14].copy_from_slice(&[0x88, 0xa8]);
        assert_eq!(fixture.run(&ad), (XDP_PASS, ad.clone()));
        assert_eq!(fixture.reason("pass_qinq"), 2);
    });
}
