//! Sync messages from whoever can reach the HA network change nothing
//! unless signed with the group key, and a signed one heard again changes
//! nothing either (issue 18): 500 forged messages install no flow and are
//! logged at a bounded rate; a signed message replayed after the flow it
//! carried ended is refused, so the flow stays ended.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

mod support;

use pnlb_lab::{spawn_in_netns, Lab, LabSpec, VIP4};
use support::*;

/// The lab pair's key (support::write_ha_config).
const KEY: &[u8] = b"lab-shared-secret-0123456789abcdef";
const SYNC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 77, 1, 3), 8113);

fn mapped(address: Ipv4Addr) -> [u8; 16] {
    address.to_ipv6_mapped().octets()
}

/// A sync message as docs/ha.md and crates/pnlb/src/ha/sync.rs lay it
/// out (format version 3), from node 1's address, carrying one dr flow from
/// `client_port` to the VIP's port 80 on backend 10.77.1.11:80, signed with
/// `key`.
fn message(kind: u8, sequence: u64, client_port: u16, key: &[u8]) -> Vec<u8> {
    let mut out = b"PNSY".to_vec();
    out.extend_from_slice(&[3, 7, kind, 0]);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&mapped(Ipv4Addr::new(10, 77, 1, 2)));
    out.extend_from_slice(&[0; 12]); // dump, count, serial
                                     // The flow key: source, destination, ports (network order), protocol.
    out.extend_from_slice(&mapped(Ipv4Addr::new(10, 77, 0, 50)));
    out.extend_from_slice(&mapped(VIP4));
    out.extend_from_slice(&client_port.to_be_bytes());
    out.extend_from_slice(&80u16.to_be_bytes());
    out.extend_from_slice(&[6, 0, 0, 0]);
    out.extend_from_slice(&[0; 72]); // the entry: its ids are the receiver's
    out.extend_from_slice(&mapped(VIP4));
    out.extend_from_slice(&80u16.to_be_bytes());
    out.extend_from_slice(&[6, 0]);
    out.extend_from_slice(&mapped(Ipv4Addr::new(10, 77, 1, 11)));
    out.extend_from_slice(&80u16.to_be_bytes());
    let tag = openssl::sign::Signer::new(
        openssl::hash::MessageDigest::sha256(),
        &openssl::pkey::PKey::hmac(key).expect("an HMAC key"),
    )
    .and_then(|mut signer| {
        signer.update(&out)?;
        signer.sign_to_vec()
    })
    .expect("HMAC-SHA256");
    out.extend_from_slice(&tag);
    out
}

/// Sends `messages` to node 2's sync port from the client namespace.
fn send(lab: &Lab, messages: Vec<Vec<u8>>) {
    spawn_in_netns(&lab.client, move || {
        assert_in_lab_netns();
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for message in &messages {
            socket.send_to(message, SYNC).expect("send");
        }
    })
    .expect("client namespace")
    .join()
    .expect("joined")
    .expect("in netns");
    std::thread::sleep(Duration::from_millis(500));
}

/// Node 2's established entries as its status counts them (each sweep, every
/// 5 s), once they read `want` or `within` has passed.
fn entries_once(lab: &Lab, want: u64, within: Duration) -> u64 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let now = entries(lab);
        if now == want || std::time::Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn entries(lab: &Lab) -> u64 {
    let ns = lab.lb2.clone().expect("a pair");
    status_in(&ns)["connections"]["entries"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

#[test]
fn forged_and_replayed_sync_messages_change_nothing() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec {
        ha: true,
        ..LabSpec::default()
    })
    .expect("lab");
    lab.route_servers_via(pnlb_lab::Gateway::Floating).unwrap();
    let everyone: Vec<usize> = (0..lab.servers.len()).collect();
    let base = lab
        .config("dr", 80, &everyone)
        .replacen('\n', "\napi = \"127.0.0.1:9180\"\n", 1);
    let mut node1 = start_ha_node(&lab.lb, &write_ha_config(&lab, &base, 1, 150));
    node1
        .wait_for_line("ha: MASTER", Duration::from_secs(10))
        .expect("node 1 elected");
    let lb2 = lab.lb2.clone().expect("a pair");
    let node2 = start_ha_node(&lb2, &write_ha_config(&lab, &base, 2, 100));
    wait_for_log(&node2, "full table received", Duration::from_secs(30));
    assert_eq!(entries(&lab), 0);

    // 500 forged messages: node 1's address, the right format, a wrong key.
    let epoch = 0x7e57_u64 << 32;
    let forged: Vec<Vec<u8>> = (1..=500)
        .map(|n| {
            message(
                1,
                epoch | n,
                40_000 + n as u16,
                b"not-the-group-key-0123456789",
            )
        })
        .collect();
    send(&lab, forged);
    let after_forged = entries_once(&lab, 1, Duration::from_secs(6));
    let refusals: Vec<String> = node2
        .output()
        .into_iter()
        .filter(|l| l.contains("ha sync: message"))
        .collect();
    eprintln!(
        "500 forged sync messages: node 2 holds {after_forged} flow entries a sweep later; logged {} line(s): {refusals:#?}",
        refusals.len()
    );
    assert_eq!(after_forged, 0, "nothing installed");
    assert!(
        !refusals.is_empty() && refusals.len() <= 2,
        "refusals logged at a bounded rate: {refusals:#?}"
    );

    // Signed: a flow is installed, then ended; its first message replayed.
    let sweeps = Duration::from_secs(12);
    let flows = message(1, epoch | 1_000, 41_000, KEY);
    send(&lab, vec![flows.clone()]);
    let installed = entries_once(&lab, 1, sweeps);
    send(&lab, vec![message(4, epoch | 1_001, 41_000, KEY)]);
    let ended = entries_once(&lab, 0, sweeps);
    send(&lab, vec![flows]);
    // Two sweeps later, still none (waiting for 1: it must not come).
    let replayed = entries_once(&lab, 1, sweeps);
    eprintln!(
        "signed: installed -> {installed} entry, ended -> {ended}, the first replayed -> {replayed}"
    );
    assert_eq!((installed, ended, replayed), (1, 0, 0));
    wait_for_log(&node2, "a replay", Duration::from_secs(15));
    node2.stop(Duration::from_secs(10));
    node1.stop(Duration::from_secs(10));
}
