//! A malformed-packet corpus, per method (issue 18): packets to each
//! method's VIP truncated at every offset, with every bad IPv4 header
//! length, IHL and TCP data offset, IPv4 options, IPv6 extension-header
//! chains, bad TCP flag sets and fragments. Whatever the case, nothing is
//! forwarded that should not be, and every packet is booked under a reason:
//! a drop under a drop reason, a pass untouched under a pass reason.

mod support;

use pnlb_dataplane::abi;
use support::*;

const CONFIG: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "dr"
vip = "10.77.100.1"
port = 0
method = "dr"
scheduler = "maglev"
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "dr-udp"
vip = "10.77.100.1"
port = 0
protocol = "udp"
method = "dr"
scheduler = "maglev"
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "nat"
vip = "10.77.100.2"
port = 0
method = "nat"
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "nat-udp"
vip = "10.77.100.2"
port = 0
protocol = "udp"
method = "nat"
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "snat"
vip = "10.77.100.3"
port = 0
method = "snat"
snat_addresses = ["10.77.1.254"]
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "snat-udp"
vip = "10.77.100.3"
port = 0
protocol = "udp"
method = "snat"
snat_addresses = ["10.77.1.254"]
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "tun"
vip = "10.77.100.4"
port = 0
method = "tun"
encap = "ipip"
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "tun-udp"
vip = "10.77.100.4"
port = 0
protocol = "udp"
method = "tun"
encap = "ipip"
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "dr6"
vip = "fd77:100::1"
port = 0
method = "dr"
[[service.backend]]
address = "fd77:1::11"

[[service]]
name = "dr6-udp"
vip = "fd77:100::1"
port = 0
protocol = "udp"
method = "dr"
[[service.backend]]
address = "fd77:1::11"

[[service]]
name = "nat6"
vip = "fd77:100::2"
port = 0
method = "nat"
[[service.backend]]
address = "fd77:1::11"

[[service]]
name = "nat6-udp"
vip = "fd77:100::2"
port = 0
protocol = "udp"
method = "nat"
[[service.backend]]
address = "fd77:1::11"
"#;

const METHODS4: [(&str, &str); 4] = [
    ("dr", "10.77.100.1"),
    ("nat", "10.77.100.2"),
    ("snat", "10.77.100.3"),
    ("tun", "10.77.100.4"),
];
const METHODS6: [(&str, &str); 2] = [("dr6", "fd77:100::1"), ("nat6", "fd77:100::2")];

/// What one run did to the counters: (verdict, output, reasons that grew).
fn run_counted(fixture: &Fixture, packet: &[u8]) -> (u32, Vec<u8>, Vec<&'static str>) {
    let before = fixture.dataplane.reason_counters().expect("counters");
    let (verdict, out) = fixture.run(packet);
    let after = fixture.dataplane.reason_counters().expect("counters");
    let grew = (0..abi::REASON_COUNT)
        .filter(|&i| after[i] > before[i])
        .map(pnlb_dataplane::stats::reason_name)
        .collect();
    (verdict, out, grew)
}

/// The corpus' one rule: dropped under one drop reason, or passed
/// untouched under one pass reason; never forwarded.
fn refused(fixture: &Fixture, packet: &[u8], what: &str) -> &'static str {
    let (verdict, out, grew) = run_counted(fixture, packet);
    match verdict {
        XDP_DROP => {
            assert!(
                grew.len() == 1 && grew[0].starts_with("drop_"),
                "{what}: dropped, booked under {grew:?}"
            );
        }
        XDP_PASS => {
            assert_eq!(out, packet, "{what}: passed, so untouched");
            assert!(
                grew.len() == 1 && grew[0].starts_with("pass_"),
                "{what}: passed, booked under {grew:?}"
            );
        }
        other => panic!("{what}: verdict {other} (forwarded), booked under {grew:?}"),
    }
    grew[0]
}

/// The seeds: a TCP SYN and a UDP datagram with a payload, per VIP.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (method, vip) in METHODS4 {
        let syn = Pkt::tcp("10.77.0.2", 40000, vip, 80, SYN).with_payload(b"hello".to_vec());
        seeds.push((format!("{method} tcp4"), syn.bytes()));
        seeds.push((
            format!("{method} udp4"),
            udp4("10.77.0.2", 40001, vip, 53, b"query"),
        ));
    }
    for (method, vip) in METHODS6 {
        let syn = Pkt::tcp("fd77::2", 40000, vip, 80, SYN).with_payload(b"hello".to_vec());
        seeds.push((format!("{method} tcp6"), syn.bytes()));
        seeds.push((
            format!("{method} udp6"),
            udp6("fd77::2", 40001, vip, 53, b"query"),
        ));
    }
    seeds
}

#[test]
fn the_seeds_are_forwarded_by_every_method() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    for (what, packet) in seeds() {
        let (verdict, _) = fixture.run(&packet);
        assert!(
            verdict == XDP_TX || verdict == XDP_REDIRECT,
            "{what}: verdict {verdict}"
        );
    }
}

#[test]
fn a_packet_cut_short_at_any_offset_is_never_forwarded() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let mut runs = 0;
    let mut booked = std::collections::BTreeMap::<&str, usize>::new();
    for (what, packet) in seeds() {
        // From a whole Ethernet header (the kernel hands XDP nothing shorter).
        for cut in 14..packet.len() {
            let reason = refused(&fixture, &packet[..cut], &format!("{what} cut at {cut}"));
            *booked.entry(reason).or_default() += 1;
            runs += 1;
        }
    }
    eprintln!("{runs} truncated packets, none forwarded: {booked:?}");
}

#[test]
fn bad_lengths_offsets_options_and_extension_chains_are_never_forwarded() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let mut runs = 0;
    for (method, vip) in METHODS4 {
        let seed = Pkt::tcp("10.77.0.2", 40000, vip, 80, SYN)
            .with_payload(b"hello".to_vec())
            .bytes();
        let ip_len = seed.len() - 14;
        // Total lengths shorter than the IP and TCP headers, or past the frame.
        for total in [0, 1, 19, 20, 21, 39, ip_len + 1, ip_len + 100, 0xffff] {
            let mut packet = seed.clone();
            packet[16..18].copy_from_slice(&(total as u16).to_be_bytes());
            fix_ipv4_checksum(&mut packet);
            refused(
                &fixture,
                &packet,
                &format!("{method}: total length {total}"),
            );
            runs += 1;
        }
        // Every IHL but 5: too short, or options (not taken to a VIP).
        for ihl in (0u8..16).filter(|&ihl| ihl != 5) {
            let mut packet = seed.clone();
            packet[14] = 0x40 | ihl;
            refused(&fixture, &packet, &format!("{method}: IHL {ihl}"));
            runs += 1;
        }
        // Versions other than 4 in an IPv4 frame.
        for version in [0u8, 5, 6, 15] {
            let mut packet = seed.clone();
            packet[14] = (version << 4) | 5;
            refused(&fixture, &packet, &format!("{method}: version {version}"));
            runs += 1;
        }
        // TCP data offsets under a header, or past the packet.
        for offset in [0u8, 1, 4, 7, 15] {
            let mut packet = seed.clone();
            packet[14 + 20 + 12] = offset << 4;
            refused(
                &fixture,
                &packet,
                &format!("{method}: TCP data offset {offset}"),
            );
            runs += 1;
        }
        // A later fragment of a flow whose first was never seen.
        let mut later = seed.clone();
        later[20..22].copy_from_slice(&0x0010u16.to_be_bytes()); // offset 128 bytes
        fix_ipv4_checksum(&mut later);
        refused(&fixture, &later, &format!("{method}: a later fragment"));
        runs += 1;
    }
    for (method, vip) in METHODS6 {
        let seed = Pkt::tcp("fd77::2", 40000, vip, 80, SYN)
            .with_payload(b"hello".to_vec())
            .bytes();
        let payload = seed.len() - 54;
        for length in [0, 1, 19, payload + 1, 0xffff] {
            let mut packet = seed.clone();
            packet[18..20].copy_from_slice(&(length as u16).to_be_bytes());
            refused(
                &fixture,
                &packet,
                &format!("{method}: payload length {length}"),
            );
            runs += 1;
        }
        // Extension-header chains: hop-by-hop, routing, dest options, one to
        // three deep, before TCP, and a fragment header next to another.
        // (A fragment header alone, offset 0 and no more fragments, is an
        // atomic fragment: a whole packet, forwarded.)
        let chains: [&[u8]; 7] = [
            &[0],
            &[43],
            &[60],
            &[0, 60],
            &[60, 44],
            &[0, 43, 60],
            &[44, 60],
        ];
        for chain in chains {
            let mut packet = seed[..54].to_vec();
            packet[20] = chain[0];
            for (i, _) in chain.iter().enumerate() {
                let next = chain.get(i + 1).copied().unwrap_or(6);
                packet.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 1]);
            }
            packet.extend_from_slice(&seed[54..]);
            let length = (packet.len() - 54) as u16;
            packet[18..20].copy_from_slice(&length.to_be_bytes());
            refused(
                &fixture,
                &packet,
                &format!("{method}: extension chain {chain:?}"),
            );
            runs += 1;
        }
    }
    eprintln!("{runs} packets with bad lengths, offsets, options and chains: none forwarded");
}

/// Flag sets no connection starts with, and no mid-flow packet carries:
/// they open no flow, nor re-create one by hash (nat/snat; dr and tun with
/// a hashing scheduler forward what they hold no state for by hash, by
/// design, and keep none).
#[test]
fn packets_of_no_flow_with_odd_flags_never_open_one() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let odd = [
        Flags {
            syn: false,
            ack: false,
            fin: false,
            rst: false,
        },
        Flags {
            syn: true,
            ack: true,
            fin: false,
            rst: false,
        },
        Flags {
            syn: true,
            ack: false,
            fin: true,
            rst: false,
        },
        Flags {
            syn: true,
            ack: false,
            fin: false,
            rst: true,
        },
        Flags {
            syn: false,
            ack: false,
            fin: true,
            rst: false,
        },
        Flags {
            syn: false,
            ack: true,
            fin: false,
            rst: true,
        },
    ];
    for (method, vip) in METHODS4
        .into_iter()
        .filter(|(m, _)| *m == "nat" || *m == "snat")
    {
        for flags in odd {
            let packet = Pkt::tcp("10.77.0.9", 41000, vip, 80, flags).bytes();
            let (verdict, _, grew) = run_counted(&fixture, &packet);
            assert_eq!(verdict, XDP_DROP, "{method} {flags:?}: {grew:?}");
            assert_eq!(grew, vec!["drop_no_flow"], "{method} {flags:?}");
        }
    }
    assert_eq!(fixture.dataplane.entries(), (0, 0), "no flow opened");
}
