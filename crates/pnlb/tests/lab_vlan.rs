//! 802.1Q-tagged VIP traffic on the LB's link, end to end: tagged UDP
//! datagrams (VLAN 100, priority 5) from the client's address are put on
//! the LAN as a trunk would deliver them, and must be balanced and answered
//! through dr, tun, nat and snat, over IPv4 and IPv6, instead of bypassing
//! the LB; QinQ frames must go to the kernel untouched, counted.
//!
//! The CI kernel has no 802.1Q devices (CONFIG_VLAN_8021Q is off), so
//! neither the LB nor the servers can have VLAN sub-interfaces: tagged
//! frames are written whole onto the LB's link from the switch's port
//! (pnlb_lab::frames), and the backends are untagged, so pnlb forwards the
//! requests untagged. (Written through the bridge instead, the tag would
//! reach the LB as skb metadata, not in the frame, as a NIC with VLAN
//! stripping on delivers it: see `pnlb doctor --lb`.) Tag handling towards
//! tagged backends and out of VLAN devices is checked byte for byte by the
//! fixtures (fixtures_vlan.rs). Without pnlb's tag handling none of these
//! datagrams is answered: the LB's kernel drops frames of VLANs it has no
//! device for.

mod support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use pnlb_lab::{
    frames, in_netns, netns, spawn_in_netns, Lab, LabProcess, LabSpec, CLIENT4, CLIENT6,
    LB_INTERFACE, MIRROR_PORT, VIP4, VIP6,
};
use support::*;

const DATAGRAMS: u16 = 10;
/// Priority 5, VLAN 100.
const TCI: u16 = 0xa064;

fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let out = netns::ip(ns, &["-j", "link", "show", "dev", dev]).expect("ip link");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    let text = links[0]["address"].as_str().expect("a MAC").to_string();
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("hex");
    }
    mac
}

/// Sends DATAGRAMS tagged datagrams per family onto the LB's link (source:
/// the client, ports 41000+); returns how many echoes reached the client.
fn tagged_echoes(lab: &Lab, vip: IpAddr, client: IpAddr) -> usize {
    let first_port = if vip.is_ipv4() { 41000 } else { 42000 };
    let listeners = spawn_in_netns(&lab.client, move || {
        let sockets: Vec<UdpSocket> = (0..DATAGRAMS)
            .map(|i| {
                let socket = UdpSocket::bind(SocketAddr::new(client, first_port + i)).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                socket
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut echoed = vec![false; sockets.len()];
        let mut buf = [0u8; 256];
        while Instant::now() < deadline && echoed.iter().any(|e| !e) {
            for (i, socket) in sockets.iter().enumerate() {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let expected = format!("tagged {i}");
                    if from == SocketAddr::new(vip, MIRROR_PORT) && buf[..n] == *expected.as_bytes()
                    {
                        echoed[i] = true;
                    }
                }
            }
        }
        echoed.iter().filter(|e| **e).count()
    })
    .expect("client listeners");
    std::thread::sleep(Duration::from_millis(200));
    let macs = (mac_of(&lab.router, "eth1"), mac_of(&lab.lb, LB_INTERFACE));
    let frames: Vec<Vec<u8>> = (0..DATAGRAMS)
        .map(|i| {
            frames::tagged_udp(
                macs,
                &[(0x8100, TCI)],
                (client, first_port + i),
                (vip, MIRROR_PORT),
                format!("tagged {i}").as_bytes(),
            )
        })
        .collect();
    frames::send(&lab.switch, "lb", frames).expect("tagged frames");
    listeners
        .join()
        .expect("listeners")
        .expect("in the client namespace")
}

fn check(lab: &Lab, what: &str, config: &str) {
    let path = write_config(lab, &udp_with_api(config));
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    wait_for_log(&daemon, "API on", Duration::from_secs(5));
    for (vip, client) in [
        (IpAddr::V4(VIP4), IpAddr::V4(CLIENT4)),
        (IpAddr::V6(VIP6), IpAddr::V6(CLIENT6)),
    ] {
        let echoed = tagged_echoes(lab, vip, client);
        println!("{what} {vip}: {echoed}/{DATAGRAMS} VLAN-tagged datagrams balanced and answered");
        assert_eq!(echoed, usize::from(DATAGRAMS), "{what} {vip}");
    }
    // Two tags: the kernel's business, untouched and counted.
    let macs = (mac_of(&lab.router, "eth1"), mac_of(&lab.lb, LB_INTERFACE));
    let qinq = frames::tagged_udp(
        macs,
        &[(0x88a8, 7), (0x8100, TCI)],
        (IpAddr::V4(CLIENT4), 43000),
        (IpAddr::V4(VIP4), MIRROR_PORT),
        b"qinq",
    );
    frames::send(&lab.switch, "lb", vec![qinq]).expect("QinQ frame");
    std::thread::sleep(Duration::from_millis(200));
    let passed = reason_counter(lab, "pass_qinq");
    println!("{what}: QinQ frames passed to the kernel: {passed}");
    assert_eq!(passed, 1, "{what}: the QinQ frame is counted");
    drop(daemon);
}

#[test]
fn vlan_tagged_vip_traffic_is_balanced_through_every_method() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::echo()).expect("lab");
    for method in ["dr", "snat"] {
        check(&lab, method, &lab.config(method, MIRROR_PORT, &[0, 1, 2]));
    }
    let decaps: Vec<LabProcess> = (0..lab.servers.len())
        .map(|i| lab.start_decap(PNLB, i).expect("pnlb decap"))
        .collect();
    check(
        &lab,
        "tun",
        &lab.tun_config("ipip", MIRROR_PORT, &[0, 1, 2]),
    );
    drop(decaps);
    drop(lab);

    let lab = Lab::up(&LabSpec::echo_via_lb()).expect("lab");
    check(&lab, "nat", &lab.config("nat", MIRROR_PORT, &[0, 1, 2]));
    in_netns(&lab.lb, || ()).expect("lab still there");
}
