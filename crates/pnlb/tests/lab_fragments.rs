//! Fragmented UDP through every method, end to end: 8,000-byte datagrams
//! (six fragments each on the client's 1,500-byte link) from the client to
//! the VIP, sent back by the servers as they came, compared byte for byte,
//! through dr, tun (IPIP and GUE), nat and snat, over IPv4 and IPv6.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pnlb_lab::{in_netns, netns, Lab, LabSpec, MIRROR_PORT, VIP4, VIP6};
use support::*;

const DATAGRAMS: usize = 12;
const SIZE: usize = 8000;

/// What a run of datagrams came to.
#[derive(Debug, Default)]
struct Echoes {
    exact: usize,
    /// Datagrams that needed a second send (the first lost to path-MTU
    /// discovery, as a DNS client would retry).
    retried: usize,
}

/// Sends DATAGRAMS datagrams of SIZE bytes to `vip`, each from a new
/// socket (a new flow), and checks each echo byte for byte.
fn echo_big_datagrams(lab: &Lab, vip: IpAddr) -> Echoes {
    in_netns(&lab.client, move || {
        let mut echoes = Echoes::default();
        for i in 0..DATAGRAMS {
            let socket = udp_connected(SocketAddr::new(vip, MIRROR_PORT), Duration::from_secs(2));
            let datagram: Vec<u8> = (0..SIZE).map(|j| (j * 31 + i * 7) as u8).collect();
            let mut answer = vec![0u8; 65536];
            for attempt in 0..2 {
                socket.send(&datagram).unwrap();
                if let Ok(n) = socket.recv(&mut answer) {
                    if answer[..n] == datagram[..] {
                        echoes.exact += 1;
                    }
                    echoes.retried += attempt;
                    break;
                }
            }
        }
        echoes
    })
    .unwrap()
}

/// Runs both VIPs through `config`; prints and checks what came back.
fn check_method(lab: &Lab, what: &str, config: &str) {
    let path = write_config(lab, &udp_with_api(config));
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    wait_for_log(&daemon, "API on", Duration::from_secs(5));
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let echoes = echo_big_datagrams(lab, vip);
        println!(
            "{what} {vip}: {}/{DATAGRAMS} datagrams of {SIZE} bytes echoed byte-exact ({} needed a second send)",
            echoes.exact, echoes.retried
        );
        assert_eq!(echoes.exact, DATAGRAMS, "{what} {vip}: {echoes:?}");
    }
    let (forwarded, unmatched) = (
        reason_counter(lab, "fwd_fragment"),
        reason_counter(lab, "drop_fragment"),
    );
    println!("{what}: fwd_fragment {forwarded}, drop_fragment {unmatched}");
    assert!(
        forwarded >= (2 * DATAGRAMS * 6) as u64,
        "{what}: every fragment went through the data plane ({forwarded})"
    );
    assert_eq!(unmatched, 0, "{what}: no fragment without its first");
    drop(daemon);
}

#[test]
fn fragmented_udp_through_dr_and_snat_comes_back_byte_exact() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::echo()).expect("lab");
    for method in ["dr", "snat"] {
        check_method(&lab, method, &lab.config(method, MIRROR_PORT, &[0, 1, 2]));
    }
}

#[test]
fn fragmented_udp_through_nat_comes_back_byte_exact() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::echo_via_lb()).expect("lab");
    check_method(&lab, "nat", &lab.config("nat", MIRROR_PORT, &[0, 1, 2]));
}

/// tun adds a header to every fragment: a full-size fragment fits only a
/// network with room for it (IPv4 fragments carry no DF, so no sender can
/// be told to send smaller). As tunnels are deployed, the servers' LAN has
/// a larger MTU (1,600) and their way out to clients the usual 1,500.
#[test]
fn fragmented_udp_through_tun_comes_back_byte_exact() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec {
        lan_mtu: Some(1600),
        ..LabSpec::echo()
    })
    .expect("lab");
    for server in &lab.servers {
        for family in ["-4", "-6"] {
            let out = netns::ip(&server.ns, &[family, "route", "show", "default"]).unwrap();
            let route = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let mut args = vec![family, "route", "change"];
            args.extend(route.split_whitespace().filter(|w| !w.is_empty()));
            args.extend(["mtu", "1500"]);
            netns::ip(&server.ns, &args).expect("route mtu 1500 towards the clients");
        }
    }
    let decaps: Vec<_> = (0..lab.servers.len())
        .map(|i| lab.start_decap(PNLB, i).expect("pnlb decap"))
        .collect();
    for encap in ["ipip", "gue"] {
        check_method(
            &lab,
            &format!("tun/{encap}"),
            &lab.tun_config(encap, MIRROR_PORT, &[0, 1, 2]),
        );
    }
    drop(decaps);
}
