//! The connection table's rules (docs/conntrack.md), one fixture each:
//! only a packet that can open a flow creates state; a packet of no known
//! flow goes by hash or is dropped, never to a fresh backend; half-open
//! floods cannot evict established flows; a full table refuses new flows
//! instead of losing old ones; translations are never shared; tables carry
//! their own lengths; a flow only ever gets a backend of its own service;
//! connection counts equal what the tables hold.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use pnlb_core::config::Timeouts;
use pnlb_dataplane::abi::{Conn, ConnState, FlowKey};
use pnlb_dataplane::address_filter;
use pnlb_dataplane::conntrack::{monotonic_ns, Table};
use support::*;

/// The backends' port: nat and snat map 80 to 8080, dr and tun cannot.
fn backend_port(method: &str) -> u16 {
    if method.ends_with("nat") {
        8080
    } else {
        80
    }
}

/// One service `web` on 10.77.100.1:80 with `method`, `scheduler` and
/// backends 10.77.1.11.. (see [`backend_port`]), plus `extra` service keys.
fn config(method: &str, scheduler: &str, backends: usize, extra: &str) -> String {
    let mut text = format!(
        "[daemon]\ninterfaces = [\"eth0\"]\n[[service]]\nname = \"web\"\nvip = \"10.77.100.1\"\nport = 80\nmethod = \"{method}\"\nscheduler = \"{scheduler}\"\n{extra}\n"
    );
    if method == "snat" {
        text += "snat_addresses = [\"10.77.1.2\"]\n";
    }
    for i in 0..backends {
        text += &format!(
            "[[service.backend]]\naddress = \"10.77.1.{}\"\nport = {}\n",
            11 + i,
            backend_port(method)
        );
    }
    text
}

fn client(sport: u16, flags: Flags) -> Pkt {
    Pkt::tcp("10.77.0.2", sport, "10.77.100.1", 80, flags)
}

/// The backend address a forwarded packet was sent to (by its MAC).
fn backend_of(out: &[u8]) -> IpAddr {
    (11..=20)
        .map(|last| format!("10.77.1.{last}").parse::<IpAddr>().unwrap())
        .find(|b| backend_mac(*b)[..] == out[0..6])
        .expect("sent to a configured backend")
}

/// SYN, the backend's SYN-ACK (nat/snat: through us), the client's ACK.
/// Returns the backend.
fn handshake(fixture: &Fixture, sport: u16) -> IpAddr {
    let (verdict, out) = fixture.run(&client(sport, SYN).bytes());
    assert_eq!(verdict, XDP_TX, "SYN from port {sport}");
    let backend = backend_of(&out);
    let (_, _, to, _) = endpoints(&out);
    if to != "10.77.100.1".parse::<IpAddr>().unwrap() {
        let (verdict, _) = fixture.run(&backend_answer(&out, SYN_ACK).bytes());
        assert_eq!(verdict, XDP_REDIRECT, "the SYN-ACK goes back to the client");
    }
    let (verdict, out) = fixture.run(&client(sport, ACK).bytes());
    assert_eq!(verdict, XDP_TX, "ACK from port {sport}");
    assert_eq!(backend_of(&out), backend);
    backend
}

fn table_of(fixture: &Fixture, packet: &Pkt) -> Option<Table> {
    fixture
        .dataplane
        .find_connection(&flow_of(&packet.bytes()))
        .map(|(table, _)| table)
}

#[test]
fn only_a_syn_creates_state_and_the_handshake_moves_it_to_the_established_table() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(&config("nat", "rr", 2, ""));
        let stray = client(40000, ACK);
        let (verdict, _) = fixture.run(&stray.bytes());
        assert_eq!(verdict, XDP_DROP, "a mid-flow packet of no flow");
        assert_eq!(fixture.reason("drop_no_flow"), 1);
        assert_eq!(table_of(&fixture, &stray), None, "and it created nothing");
        for flags in [FIN, RST] {
            fixture.run(&client(40001, flags).bytes());
            assert_eq!(table_of(&fixture, &client(40001, flags)), None);
        }

        let (verdict, out) = fixture.run(&client(40000, SYN).bytes());
        assert_eq!(verdict, XDP_TX);
        assert_eq!(table_of(&fixture, &client(40000, SYN)), Some(Table::New));
        let backend = backend_of(&out);
        let answer = Pkt::tcp(&backend.to_string(), 8080, "10.77.0.2", 40000, SYN_ACK)
            .macs(backend_mac(backend), LB_MAC);
        assert_eq!(
            table_of(&fixture, &answer),
            Some(Table::New),
            "the reply entry too"
        );
        assert_eq!(fixture.run(&answer.bytes()).0, XDP_REDIRECT);
        assert_eq!(table_of(&fixture, &client(40000, SYN)), Some(Table::New));

        assert_eq!(fixture.run(&client(40000, ACK).bytes()).0, XDP_TX);
        assert_eq!(
            (
                table_of(&fixture, &client(40000, ACK)),
                table_of(&fixture, &answer)
            ),
            (Some(Table::Established), Some(Table::Established)),
            "the handshake's ACK moves both entries"
        );
        let stats = fixture.dataplane.table_stats().unwrap();
        println!("table events: {stats:?}");
        assert_eq!((stats.created, stats.promoted), (2, 2));
    });
}

#[test]
fn udp_is_established_by_its_second_datagram_or_its_first_reply() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let text = config("nat", "rr", 1, "protocol = \"udp\"");
        let fixture = Fixture::new(&text);
        let datagram = |sport| Pkt::udp("10.77.0.2", sport, "10.77.100.1", 80);
        assert_eq!(fixture.run(&datagram(41000).bytes()).0, XDP_TX);
        assert_eq!(table_of(&fixture, &datagram(41000)), Some(Table::New));
        assert_eq!(fixture.run(&datagram(41000).bytes()).0, XDP_TX);
        assert_eq!(
            table_of(&fixture, &datagram(41000)),
            Some(Table::Established)
        );

        assert_eq!(fixture.run(&datagram(41001).bytes()).0, XDP_TX);
        let answer = Pkt::udp("10.77.1.11", 8080, "10.77.0.2", 41001)
            .macs(backend_mac("10.77.1.11".parse().unwrap()), LB_MAC);
        assert_eq!(fixture.run(&answer.bytes()).0, XDP_REDIRECT);
        assert_eq!(
            table_of(&fixture, &datagram(41001)),
            Some(Table::Established)
        );
    });
}

#[test]
fn a_packet_of_no_known_flow_goes_by_hash_on_dr_maglev_and_is_dropped_without_a_hash() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(&config("dr", "maglev", 3, ""));
    for sport in 42000..42020 {
        let packet = client(sport, ACK);
        let (verdict, out) = fixture.run(&packet.bytes());
        assert_eq!(verdict, XDP_TX, "forwarded without state");
        let predicted = fixture.predicted_backend(
            "web",
            &packet.bytes(),
            pnlb_dataplane::abi::HashKey::PNLB_HASH_5TUPLE,
        );
        assert_eq!(backend_of(&out), predicted, "to the backend the hash gives");
        assert_eq!(table_of(&fixture, &packet), None, "and no state is kept");
    }
    assert_eq!(fixture.reason("fwd_stateless"), 20);

    for (method, scheduler) in [
        ("dr", "rr"),
        ("dr", "lc"),
        ("tun", "wrr"),
        ("nat", "rr"),
        ("snat", "chbl"),
    ] {
        let text = config(
            method,
            scheduler,
            3,
            if method == "tun" {
                "encap = \"ipip\""
            } else {
                ""
            },
        );
        let fixture = Fixture::new(&text);
        let (verdict, _) = fixture.run(&client(42100, ACK).bytes());
        assert_eq!(
            verdict, XDP_DROP,
            "{method}/{scheduler}: a fresh backend would reset the flow"
        );
        assert_eq!(fixture.reason("drop_no_flow"), 1, "{method}/{scheduler}");
    }
}

#[test]
fn a_half_open_flow_whose_reply_entry_was_evicted_gets_it_back() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        for method in ["nat", "snat"] {
            let fixture = Fixture::new(&config(method, "rr", 2, ""));
            let (verdict, out) = fixture.run(&client(42300, SYN).bytes());
            assert_eq!(verdict, XDP_TX);
            let answer = backend_answer(&out, SYN_ACK);
            let reply_key = flow_of(&answer.bytes());
            assert!(
                fixture.dataplane.forget_entry(Table::New, &reply_key),
                "{method}"
            );

            // The SYN-ACK is lost (no entry to translate it); the client
            // retransmits its SYN, which puts the reply entry back.
            let (verdict, again) = fixture.run(&client(42300, SYN).bytes());
            assert_eq!(verdict, XDP_TX, "{method}: the retransmitted SYN goes on");
            assert_eq!(
                endpoints(&again),
                endpoints(&out),
                "{method}: the same translation"
            );
            assert_eq!(
                fixture.run(&answer.bytes()).0,
                XDP_REDIRECT,
                "{method}: translated"
            );
            assert_eq!(fixture.reason("drop_flow_conflict"), 0, "{method}");
        }
    });
}

/// A full new-flow table evicts a half-open nat flow's reply entry before
/// its original: a flow without its reply entry is healed by the client's
/// next packet (above), one without its original is lost (its SYN-ACK goes
/// out, the client's ACK finds no flow). The LRU takes entries oldest and
/// unreferenced first, so both of a new flow's entries must start alike,
/// the reply inserted first.
#[test]
fn a_full_new_flow_table_takes_a_half_open_flows_reply_entry_before_its_original() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        for method in ["nat", "snat"] {
            let fixture = Fixture::with_table_size(&config(method, "rr", 2, ""), 1024);
            let flows: Vec<(FlowKey, FlowKey)> = (0..4000u16)
                .map(|i| {
                    let syn = client(20000 + i, SYN);
                    let (verdict, out) = fixture.run(&syn.bytes());
                    assert_eq!(verdict, XDP_TX, "{method}");
                    let answer = backend_answer(&out, SYN_ACK);
                    (flow_of(&syn.bytes()), flow_of(&answer.bytes()))
                })
                .collect();
            let held = |key: &FlowKey| fixture.dataplane.find_connection(key).is_some();
            // An snat reply key may have gone to a later flow since (its
            // port drawn again): only a reply entry back to this client is
            // this flow's.
            let reply_of = |reply: &FlowKey, original: &FlowKey| {
                fixture
                    .dataplane
                    .find_connection(reply)
                    .is_some_and(|(_, conn)| conn.rewrite_dport == original.src_port)
            };
            let (mut whole, mut healable, mut lost) = (0, 0, 0);
            for (original, reply) in &flows {
                match (held(original), reply_of(reply, original)) {
                    (true, true) => whole += 1,
                    (true, false) => healable += 1,
                    (false, true) => lost += 1,
                    (false, false) => {}
                }
            }
            let stats = fixture.dataplane.table_stats().unwrap();
            println!(
                "{method}: 4000 half-open flows into a new-flow table of {}: {whole} whole, \
                 {healable} without their reply entry (healed by the next packet), \
                 {lost} without their original (lost)",
                stats.new_capacity
            );
            assert!(whole > 0, "{method}");
            assert!(
                lost <= 2,
                "{method}: {lost} flows kept a reply entry and lost their original"
            );
        }
    });
}

#[test]
fn a_nat_or_snat_flow_no_table_holds_is_re_created_by_hash() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        for method in ["nat", "snat"] {
            // Two nodes with the same config: the flow starts on the first,
            // its next packets reach the second (a failover before the flow
            // was synced, or a restart).
            let first = Fixture::new(&config(method, "maglev", 3, ""));
            let second = Fixture::new(&config(method, "maglev", 3, ""));
            let (verdict, there) = first.run(&client(42200, SYN).bytes());
            assert_eq!(verdict, XDP_TX);

            let (verdict, here) = second.run(&client(42200, ACK).bytes());
            assert_eq!(verdict, XDP_TX, "{method}: re-created");
            let backend = backend_of(&here);
            assert_eq!(backend, backend_of(&there), "{method}: the same backend");
            assert_eq!(
                endpoints(&here),
                endpoints(&there),
                "{method}: the same translation"
            );
            assert_eq!(second.reason("fwd_rehashed"), 1);
            let key = flow_of(&client(42200, ACK).bytes());
            assert_eq!(second.run(&client(42200, ACK).bytes()).0, XDP_TX);
            assert_eq!(
                second.dataplane.find_connection(&key).map(|(t, _)| t),
                Some(Table::New),
                "{method}: more client packets prove nothing (a spoofer can send them)"
            );
            let answer = backend_answer(&here, ACK);
            assert_eq!(second.run(&answer.bytes()).0, XDP_REDIRECT);
            assert_eq!(
                second.dataplane.find_connection(&key).map(|(t, _)| t),
                Some(Table::Established),
                "{method}: the backend carrying on does"
            );
            let conn = second.dataplane.lookup_connection(&key).unwrap();
            assert_eq!(
                u32::from(conn.state),
                ConnState::PNLB_CT_ESTABLISHED.0,
                "{method}"
            );

            // A spoofed packet's backend answers with a reset: it stays half-open.
            let (_, spoofed) = second.run(&client(42201, ACK).bytes());
            second.run(&backend_answer(&spoofed, RST).bytes());
            let key = flow_of(&client(42201, ACK).bytes());
            let (table, conn) = second.dataplane.find_connection(&key).unwrap();
            assert_eq!(table, Table::New, "{method}");
            assert_eq!(
                u32::from(conn.state),
                ConnState::PNLB_CT_CLOSE.0,
                "{method}: expires in 10 s"
            );
        }
    });
}

/// A flow re-created from its client's FIN (a failover while it was
/// closing) has that FIN in both entries from the start: a new flow's
/// entries are written as its first packet leaves them, not tracked after.
/// The backend's FIN then closes it (the short tcp_close timeout) instead
/// of leaving it in FIN_WAIT.
#[test]
fn a_flow_re_created_from_its_fin_remembers_it_and_the_backends_fin_closes_it() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        for method in ["nat", "snat"] {
            let fixture = Fixture::new(&config(method, "maglev", 3, ""));
            let fin = client(42300, FIN);
            let (verdict, out) = fixture.run(&fin.bytes());
            assert_eq!(verdict, XDP_TX, "{method}: re-created");
            let key = flow_of(&fin.bytes());
            let (table, conn) = fixture.dataplane.find_connection(&key).unwrap();
            println!(
                "{method}: re-created from a FIN: {table:?}, state {}, fin_seen {}",
                conn.state, conn.fin_seen
            );
            assert_eq!(table, Table::New, "{method}");
            assert_eq!(u32::from(conn.state), ConnState::PNLB_CT_FIN_WAIT.0);
            assert_eq!(conn.fin_seen, 1, "{method}: the client's FIN");

            let answer = backend_answer(&out, FIN);
            assert_eq!(fixture.run(&answer.bytes()).0, XDP_REDIRECT, "{method}");
            let conn = fixture.dataplane.lookup_connection(&key).unwrap();
            println!(
                "{method}: after the backend's FIN: state {}, fin_seen {}",
                conn.state, conn.fin_seen
            );
            assert_eq!(
                u32::from(conn.state),
                ConnState::PNLB_CT_CLOSE.0,
                "{method}: both sides closed"
            );
        }
    });
}

/// The held figure of the issue: 40 idle established flows on a table of
/// the minimum size, then 30,000 spoofed ACKs and 30,000 SYNs with random
/// source ports; every idle flow still reaches its backend.
fn flood_spares_established(method: &str, scheduler: &str) {
    let fixture = Fixture::with_table_size(&config(method, scheduler, 3, ""), 1024);
    let idle: Vec<(u16, IpAddr)> = (0..40)
        .map(|i| {
            let sport = 43000 + i;
            (sport, handshake(&fixture, sport))
        })
        .collect();
    let mut random = 0x2545_f491_u32;
    let mut next_port = move || {
        random ^= random << 13;
        random ^= random >> 17;
        random ^= random << 5;
        1024 + (random % 60000) as u16
    };
    let spoofer = |sport: u16, flags| Pkt::tcp("10.77.0.66", sport, "10.77.100.1", 80, flags);
    for _ in 0..30_000 {
        fixture.run(&spoofer(next_port(), ACK).bytes());
    }
    for _ in 0..30_000 {
        fixture.run(&spoofer(next_port(), SYN).bytes());
    }
    let mut survived = 0;
    for (sport, backend) in &idle {
        let (verdict, out) = fixture.run(&client(*sport, ACK).bytes());
        assert_eq!(verdict, XDP_TX, "{method}/{scheduler}: idle flow {sport}");
        assert_eq!(
            backend_of(&out),
            *backend,
            "{method}/{scheduler}: same backend"
        );
        assert_eq!(
            table_of(&fixture, &client(*sport, ACK)),
            Some(Table::Established)
        );
        survived += 1;
    }
    fixture
        .dataplane
        .sweep_connections_at(&Timeouts::default(), monotonic_ns())
        .unwrap();
    let stats = fixture.dataplane.table_stats().unwrap();
    println!(
        "{method}/{scheduler}: {survived}/40 idle flows on their backend after 30000 ACKs + 30000 SYNs; \
         ACKs dropped (no flow) {}, forwarded by hash {}, re-created by hash {}, half-open evicted {}, new-flow table {}/{}, established {}/{}",
        fixture.reason("drop_no_flow"),
        fixture.reason("fwd_stateless"),
        fixture.reason("fwd_rehashed"),
        stats.evicted,
        stats.new_entries_now,
        stats.new_capacity,
        stats.established_entries,
        stats.established_capacity
    );
}

#[test]
fn packets_stamp_their_entry_after_a_hundred_ticks_and_an_installed_entry_at_once() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(&config("nat", "rr", 2, ""));
        handshake(&fixture, 40000);
        let key = flow_of(&client(40000, ACK).bytes());
        let entry = |what: &str| {
            let (table, conn) = fixture.dataplane.find_connection(&key).expect(what);
            assert_eq!(table, Table::Established, "{what}");
            conn
        };
        let stamped = entry("the handshake's entry");

        // A hundred ticks are 0.1-1 s (HZ 1000-100): after 1.1 s the
        // client's next packet stamps the entry again.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(fixture.run(&client(40000, ACK).bytes()).0, XDP_TX);
        let again = entry("the entry after 1.1 s");
        let ticks = again.touched.wrapping_sub(stamped.touched);
        let ns = again.last_seen_ns.saturating_sub(stamped.last_seen_ns);
        println!(
            "after 1.1 s: last_seen moved {ns} ns, {ticks} ticks (HZ ~{})",
            u64::from(ticks) * 1_000_000_000 / ns.max(1)
        );
        assert!(ticks >= 100, "stamped again once 100 ticks had passed");
        assert!(ns >= 1_000_000_000, "last_seen follows the clock");

        // An entry a peer synced carries the peer's tick, which means
        // nothing here: it is installed without it (as an older data
        // plane's entries hold none), and the next packet stamps it.
        fixture
            .dataplane
            .conns()
            .install_flow(&key, &again)
            .unwrap();
        let installed = entry("the installed entry");
        assert_eq!(installed.touched, 0, "installed without the peer's tick");
        assert_eq!(fixture.run(&client(40000, ACK).bytes()).0, XDP_TX);
        let after = entry("the installed entry after a packet");
        println!(
            "installed entry: touched 0 -> {}, last_seen {} -> {}",
            after.touched, installed.last_seen_ns, after.last_seen_ns
        );
        assert_ne!(after.touched, 0, "the first packet stamps it");
        assert!(after.last_seen_ns >= installed.last_seen_ns);
    });
}

#[test]
fn half_open_floods_never_evict_established_flows() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        flood_spares_established("nat", "rr");
        flood_spares_established("snat", "maglev");
        flood_spares_established("dr", "rr");
    });
}

#[test]
fn a_full_table_refuses_new_nat_flows_and_keeps_every_established_one() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::with_table_size(&config("nat", "rr", 2, ""), 1024);
        let mut admitted = Vec::new();
        for sport in 44000..45000u16 {
            let (verdict, _) = fixture.run(&client(sport, SYN).bytes());
            if verdict == XDP_DROP {
                break;
            }
            fixture.run(&client(sport, ACK).bytes());
            admitted.push(sport);
        }
        // 1/16 stays free for flows admitted before the table filled.
        assert_eq!(admitted.len(), 480, "(1024 - 64) entries, two per nat flow");
        assert_eq!(fixture.reason("drop_table_full"), 1);
        for sport in &admitted {
            assert_eq!(fixture.run(&client(*sport, ACK).bytes()).0, XDP_TX);
        }
        println!(
            "nat on a 1024-entry table: {} flows established, the next refused (drop_table_full {})",
            admitted.len(),
            fixture.reason("drop_table_full")
        );

        // Room comes back when flows end.
        let later = monotonic_ns() + 901_000_000_000;
        let report = fixture
            .dataplane
            .sweep_connections_at(&Timeouts::default(), later)
            .unwrap();
        assert_eq!(report.established, 0, "{report:?}");
        assert_eq!(fixture.run(&client(45500, SYN).bytes()).0, XDP_TX);
    });
}

#[test]
fn a_full_table_leaves_dr_maglev_flows_in_the_new_flow_table_and_forwards_them() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::with_table_size(&config("dr", "maglev", 2, ""), 1024);
    for sport in 46000..47100u16 {
        assert_eq!(fixture.run(&client(sport, SYN).bytes()).0, XDP_TX);
        assert_eq!(fixture.run(&client(sport, ACK).bytes()).0, XDP_TX);
    }
    let stats = fixture.dataplane.table_stats().unwrap();
    assert_eq!(stats.promoted, 1024, "the established table filled up");
    assert_eq!(
        stats.promote_full, 76,
        "the rest stayed half-open, and flowed"
    );
    assert_eq!(fixture.reason("drop_table_full"), 0);
}

#[test]
fn a_service_over_its_new_flow_rate_refuses_or_forwards_statelessly() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let limited = "new_flow_rate = 1\nnew_flow_burst = 5";
        let fixture = Fixture::new(&config("nat", "rr", 2, limited));
        let passed = (47000..47020u16)
            .filter(|sport| fixture.run(&client(*sport, SYN).bytes()).0 == XDP_TX)
            .count();
        let refused = fixture.reason("drop_rate_limited");
        println!("nat at 1 flow/s, burst 5: {passed} of 20 SYNs admitted, {refused} refused");
        assert!((5..=6).contains(&passed), "the burst, and at most one more");
        assert_eq!(refused as usize, 20 - passed);

        let fixture = Fixture::new(&config("dr", "maglev", 2, limited));
        for sport in 47000..47020u16 {
            assert_eq!(fixture.run(&client(sport, SYN).bytes()).0, XDP_TX);
        }
        let stateless = fixture.reason("fwd_stateless");
        assert!(
            (14..=15).contains(&stateless),
            "dr/maglev: over the rate by hash ({stateless})"
        );
        assert_eq!(fixture.reason("drop_rate_limited"), 0);
    });
}

#[test]
fn snat_spreads_flows_over_the_whole_port_range() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let text = config("snat", "rr", 1, "snat_ports = \"30000-30255\"");
        let fixture = Fixture::new(&text);
        let mut ports = HashSet::new();
        for sport in 48000..48200u16 {
            let (verdict, out) = fixture.run(&client(sport, SYN).bytes());
            assert_eq!(verdict, XDP_TX, "200 flows on 256 ports");
            ports.insert(endpoints(&out).1);
        }
        assert_eq!(ports.len(), 200, "no port given twice");
        let low = ports.iter().filter(|p| **p < 30064).count();
        let high = ports.iter().filter(|p| **p >= 30192).count();
        println!("snat 200 flows on 30000-30255: {low} in the first quarter, {high} in the last");
        assert!(low > 20 && high > 20, "spread over the range");
    });
}

#[test]
fn nat_refuses_a_flow_whose_replies_could_not_be_told_from_another_flows() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let mut text = config("nat", "rr", 1, "");
        text +=
            "[[service]]\nname = \"other\"\nvip = \"10.77.100.9\"\nport = 80\nmethod = \"nat\"\n\
                 [[service.backend]]\naddress = \"10.77.1.11\"\nport = 8080\n";
        let fixture = Fixture::new(&text);
        assert_eq!(fixture.run(&client(49000, SYN).bytes()).0, XDP_TX);
        let same_port_other_vip = Pkt::tcp("10.77.0.2", 49000, "10.77.100.9", 80, SYN);
        assert_eq!(
            fixture.run(&same_port_other_vip.bytes()).0,
            XDP_DROP,
            "the backend would answer both flows from 10.77.1.11:8080 to 10.77.0.2:49000"
        );
        assert_eq!(fixture.reason("drop_flow_conflict"), 1);
        // The first flow keeps its reply mapping.
        let answer = Pkt::tcp("10.77.1.11", 8080, "10.77.0.2", 49000, SYN_ACK)
            .macs(backend_mac("10.77.1.11".parse().unwrap()), LB_MAC);
        let (verdict, out) = fixture.run(&answer.bytes());
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(endpoints(&out).0, "10.77.100.1".parse::<IpAddr>().unwrap());
    });
}

#[test]
fn reset_marked_flows_go_to_a_live_backend_on_their_next_packet() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let mut fixture = Fixture::new(&config("nat", "rr", 2, ""));
        let first = handshake(&fixture, 50000);
        let id = fixture.programmer.backend_id("web", first, 8080).unwrap();
        assert_eq!(fixture.dataplane.mark_backend_reset(id).unwrap(), 1);
        // The health checker took it out of the table as well.
        let text = config("nat", "rr", 2, "").replacen(
            &format!("address = \"{first}\"\nport = 8080\n"),
            &format!("address = \"{first}\"\nport = 8080\nweight = 0\n"),
            1,
        );
        fixture.apply(&text);
        let (verdict, out) = fixture.run(&client(50000, ACK).bytes());
        assert_eq!(verdict, XDP_TX);
        assert_ne!(backend_of(&out), first, "a live backend, which resets it");
        assert_eq!(fixture.dataplane.table_stats().unwrap().reset, 1);
        let conn = fixture
            .dataplane
            .lookup_connection(&flow_of(&client(50000, ACK).bytes()))
            .unwrap();
        assert_eq!(
            u32::from(conn.state),
            ConnState::PNLB_CT_CLOSE.0,
            "expires soon"
        );
    });
}

#[test]
fn a_flow_is_only_ever_given_a_backend_of_its_own_service() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let mut text = config("nat", "rr", 1, "");
        text +=
            "[[service]]\nname = \"other\"\nvip = \"10.77.100.9\"\nport = 80\nmethod = \"nat\"\n\
                 [[service.backend]]\naddress = \"10.77.1.19\"\nport = 8080\n";
        let fixture = Fixture::new(&text);
        handshake(&fixture, 51000);
        let key = flow_of(&client(51000, ACK).bytes());
        let mut conn = fixture.dataplane.lookup_connection(&key).unwrap();
        // A synced flow named with the wrong node's ids, say.
        let other = "10.77.1.19".parse().unwrap();
        let other_backend = fixture.programmer.backend_id("other", other, 8080).unwrap();
        let other_service = fixture.programmer.service_id("other").unwrap();
        let (listener, _, _) = fixture
            .programmer
            .names()
            .describe(other_service, other_backend)
            .unwrap();
        let (_, id, generation) = fixture
            .programmer
            .names()
            .resolve(&listener, other, 8080)
            .unwrap();
        conn.backend_id = id;
        conn.backend_generation = generation;
        fixture.dataplane.conns().remove_flow(&key).unwrap();
        fixture.dataplane.conns().install_flow(&key, &conn).unwrap();
        let (verdict, _) = fixture.run(&client(51000, ACK).bytes());
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(fixture.reason("drop_foreign_backend"), 1);
    });
}

/// table_size: a service's Maglev table is as long as its config says
/// (1031 slots here), packets index that table, and applying a change to
/// another service neither rebuilds nor swaps it.
#[test]
fn a_small_table_is_what_packets_index_and_other_services_changes_leave_it_alone() {
    if !privileged() {
        return;
    }
    let text = config("dr", "maglev", 3, "table_size = 1031");
    let mut fixture = Fixture::new(&text);
    let id = fixture.programmer.service_id("web").unwrap();
    let published = fixture.dataplane.published_table(id).unwrap().unwrap();
    println!(
        "published: {} slots, header length {}",
        published.slots.len(),
        published.len
    );
    assert_eq!((published.len, published.slots.len()), (1031, 1031));
    assert_eq!(published.slots, fixture.programmer.table("web").unwrap());
    for sport in 42000..42050 {
        let packet = client(sport, ACK);
        let (verdict, out) = fixture.run(&packet.bytes());
        assert_eq!(verdict, XDP_TX);
        let predicted = fixture.predicted_backend(
            "web",
            &packet.bytes(),
            pnlb_dataplane::abi::HashKey::PNLB_HASH_5TUPLE,
        );
        assert_eq!(backend_of(&out), predicted, "sport {sport}");
    }
    let version = fixture.programmer.table_version("web");
    let other = "[[service]]\nname = \"other\"\nvip = \"10.77.100.2\"\nport = 80\n\
                 [[service.backend]]\naddress = \"10.77.1.20\"\n";
    fixture.apply(&format!("{text}{other}"));
    fixture.apply(&format!("{text}{other}").replace("10.77.1.20", "10.77.1.19"));
    assert!(fixture.programmer.table_version("other") >= Some(2));
    assert_eq!(fixture.programmer.table_version("web"), version);
}

/// New tables are written through mappings placed side by side in
/// reserved address space and unmapped together after the swap (one
/// munmap, one TLB flush, per 16 MiB rather than per table): 40 tables of
/// 65,537 slots (~516 KiB each) span two chunks, and each service's
/// published table is exactly the one built for it.
#[test]
fn tables_written_side_by_side_across_chunks_are_each_their_own() {
    if !privileged() {
        return;
    }
    let mut text = String::from("[daemon]\ninterfaces = [\"eth0\"]\n");
    for i in 0..40 {
        text += &format!(
            "[[service]]\nname = \"s{i}\"\nvip = \"10.77.100.{}\"\nport = 80\nscheduler = \"maglev\"\n",
            i + 1
        );
        for b in 0..3 {
            text += &format!("[[service.backend]]\naddress = \"10.78.{i}.{}\"\n", b + 1);
        }
    }
    let fixture = Fixture::new(&text);
    let mut distinct = std::collections::HashSet::new();
    for i in 0..40 {
        let name = format!("s{i}");
        let id = fixture.programmer.service_id(&name).unwrap();
        let published = fixture.dataplane.published_table(id).unwrap().unwrap();
        assert_eq!(published.len, 65537, "{name}");
        assert_eq!(
            published.slots,
            fixture.programmer.table(&name).unwrap(),
            "{name}"
        );
        distinct.insert(published.slots);
    }
    println!("40 tables published, {} distinct", distinct.len());
    assert_eq!(distinct.len(), 40);
}

/// A table of the shape already published (Maglev after a weight change,
/// a backend removed, a backend back) is written over the published one
/// instead of swapped in (a swap waits for a grace period): the same map,
/// the new slots, packets picking by them at once. A table of another
/// shape (another table_size) is swapped in.
#[test]
fn a_table_of_the_published_shape_is_rewritten_in_place_and_packets_follow_it() {
    if !privileged() {
        return;
    }
    let text = config("dr", "maglev", 3, "table_size = 1031");
    let mut fixture = Fixture::new(&text);
    let id = fixture.programmer.service_id("web").unwrap();
    let first = fixture.dataplane.published_table(id).unwrap().unwrap();
    let heavier = text.replacen(
        "address = \"10.77.1.11\"\n",
        "address = \"10.77.1.11\"\nweight = 5\n",
        1,
    );
    let third = format!(
        "[[service.backend]]\naddress = \"10.77.1.13\"\nport = {}\n",
        backend_port("dr")
    );
    let without_third = |text: &str| text.replace(&third, "");
    let steps = [
        ("10.77.1.11 at weight 5", heavier.clone()),
        ("10.77.1.13 removed", without_third(&heavier)),
        ("10.77.1.13 back", heavier.clone()),
    ];
    for (step, (what, next)) in steps.into_iter().enumerate() {
        let version = fixture.programmer.table_version("web");
        fixture.apply(&next);
        let published = fixture.dataplane.published_table(id).unwrap().unwrap();
        // A removed backend has no slot to name (0 slots).
        let share = |backend: &str| {
            fixture
                .programmer
                .backend_id("web", backend.parse().unwrap(), 80)
                .map_or(0, |id| published.slots.iter().filter(|&&b| b == id).count())
        };
        println!(
            "{what}: map {} (first {}), table version {:?} -> {:?}, slots of 10.77.1.11: {}, of 10.77.1.13: {}",
            published.map_id,
            first.map_id,
            version,
            fixture.programmer.table_version("web"),
            share("10.77.1.11"),
            share("10.77.1.13")
        );
        assert_eq!(published.map_id, first.map_id, "{what}: written in place");
        assert_ne!(
            fixture.programmer.table_version("web"),
            version,
            "{what}: a new table"
        );
        assert_eq!(
            published.slots,
            fixture.programmer.table("web").unwrap(),
            "{what}"
        );
        assert_eq!((published.len, published.list_len), (1031, 0), "{what}");
        // New flows each step (a flow with an entry keeps its backend).
        let first_port = 43000 + 100 * step as u16;
        for sport in first_port..first_port + 40 {
            let packet = client(sport, SYN);
            let (verdict, out) = fixture.run(&packet.bytes());
            assert_eq!(verdict, XDP_TX);
            let predicted = fixture.predicted_backend(
                "web",
                &packet.bytes(),
                pnlb_dataplane::abi::HashKey::PNLB_HASH_5TUPLE,
            );
            assert_eq!(backend_of(&out), predicted, "{what}: sport {sport}");
        }
    }
    fixture.apply(&heavier.replace("table_size = 1031", "table_size = 1033"));
    let resized = fixture.dataplane.published_table(id).unwrap().unwrap();
    println!("table_size 1033: map {}", resized.map_id);
    assert_ne!(resized.map_id, first.map_id, "another shape is swapped in");
    assert_eq!(resized.len, 1033);
}

/// A new service takes a slot that already holds a closed table (a spare
/// published ahead, or a removed service's) and opens it in place: no
/// swap into the map of maps, so no grace period. Its packets pick by the
/// table at once; a table too long for the closed one is swapped in.
#[test]
fn a_new_service_opens_a_spare_or_freed_table_in_place() {
    if !privileged() {
        return;
    }
    let web = config("dr", "maglev", 3, "table_size = 1031");
    let mut fixture = Fixture::new(&web);
    // The spare for the next slot is published in the background.
    let next = fixture.programmer.service_id("web").unwrap() + 1;
    let started = std::time::Instant::now();
    let spare = loop {
        if let Some(id) = fixture.dataplane.table_map_id(next).unwrap() {
            break id;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "no spare table at slot {next}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    println!(
        "spare at slot {next}: map {spare}, after {:?}",
        started.elapsed()
    );
    assert_eq!(
        fixture.dataplane.published_table(next).unwrap(),
        None,
        "closed"
    );
    let other = |name: &str, scheduler: &str, extra: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nvip = \"10.77.100.2\"\nport = 80\nmethod = \"dr\"\nscheduler = \"{scheduler}\"\n{extra}\n\
             [[service.backend]]\naddress = \"10.77.1.15\"\nport = {port}\n\
             [[service.backend]]\naddress = \"10.77.1.16\"\nport = {port}\n",
            port = backend_port("dr")
        )
    };
    let steps = [
        ("a spare", "other", "maglev", "table_size = 1031"),
        ("a removed service's", "again", "rr", ""),
    ];
    let mut previous = spare;
    for (step, (what, name, scheduler, extra)) in steps.into_iter().enumerate() {
        let started = std::time::Instant::now();
        fixture.apply(&format!("{web}{}", other(name, scheduler, extra)));
        let took = started.elapsed();
        let id = fixture.programmer.service_id(name).unwrap();
        let published = fixture.dataplane.published_table(id).unwrap().unwrap();
        println!(
            "{what}: {name} ({scheduler}) at slot {id}, map {} (closed one {previous}), {} slots, applied in {took:?}",
            published.map_id, published.len
        );
        assert_eq!(id, next, "{what}: the lowest free slot");
        assert_eq!(published.map_id, previous, "{what}: opened in place");
        assert_eq!(
            published.slots,
            fixture.programmer.table(name).unwrap(),
            "{what}"
        );
        for sport in 0..20 {
            let packet = Pkt::tcp(
                "10.77.0.2",
                44000 + 100 * step as u16 + sport,
                "10.77.100.2",
                80,
                SYN,
            );
            let (verdict, out) = fixture.run(&packet.bytes());
            assert_eq!(verdict, XDP_TX, "{what}");
            let sent_to = backend_of(&out);
            assert!(
                ["10.77.1.15", "10.77.1.16"].contains(&sent_to.to_string().as_str()),
                "{what}: sent to {sent_to}"
            );
            if scheduler == "maglev" {
                let predicted = fixture.predicted_backend(
                    name,
                    &packet.bytes(),
                    pnlb_dataplane::abi::HashKey::PNLB_HASH_5TUPLE,
                );
                assert_eq!(sent_to, predicted, "{what}: sport {sport}");
            }
        }
        // Removed: its table closed, the slot free for the next step once
        // no packet can still be reading its entries (before, an add takes
        // another slot: a_removal_right_after_an_add_...).
        previous = published.map_id;
        fixture.apply(&web);
        fixture.programmer.wait_for_readers();
        assert_eq!(
            fixture.dataplane.published_table(id).unwrap(),
            None,
            "{what}: closed"
        );
        assert_eq!(fixture.dataplane.table_map_id(id).unwrap(), Some(previous));
    }
    // web's slot (the lowest once it is gone) holds a table of 1031 slots:
    // too short for the default 65537, so the new one is swapped in.
    let web_id = fixture.programmer.service_id("web").unwrap();
    let web_table = fixture.dataplane.table_map_id(web_id).unwrap();
    fixture.apply("[daemon]\ninterfaces = [\"eth0\"]\n");
    fixture.programmer.wait_for_readers();
    fixture.apply(&format!(
        "[daemon]\ninterfaces = [\"eth0\"]\n{}",
        other("big", "maglev", "")
    ));
    let id = fixture.programmer.service_id("big").unwrap();
    let published = fixture.dataplane.published_table(id).unwrap().unwrap();
    println!(
        "too short: big at slot {id}, map {} (closed one {web_table:?}), {} slots",
        published.map_id, published.len
    );
    assert_eq!(id, web_id);
    assert_ne!(Some(published.map_id), web_table, "swapped in");
    assert_eq!((published.len, published.capacity), (65537, 65537));
    let packet = Pkt::tcp("10.77.0.2", 45000, "10.77.100.2", 80, SYN);
    assert_eq!(fixture.run(&packet.bytes()).0, XDP_TX);
}

/// daemon.max_services and max_backends size the maps: a data plane
/// loaded for 16 services and 64 backends holds that many, and refuses the
/// 17th service with the limit named.
#[test]
fn the_data_plane_holds_the_services_its_maps_were_sized_for() {
    if !privileged() {
        return;
    }
    let services = |n: usize| -> String {
        let mut text = String::from("[daemon]\ninterfaces = [\"eth0\"]\nmax_services = 32\n");
        for i in 0..n {
            text += &format!(
                "[[service]]\nname = \"s{i}\"\nvip = \"10.77.100.{}\"\nport = 80\n\
                 [[service.backend]]\naddress = \"10.77.1.{}\"\n",
                i + 1,
                11 + i % 10
            );
        }
        text
    };
    let mut options = pnlb_dataplane::LoadOptions::for_tests(65_536);
    options.limits = pnlb_dataplane::Limits {
        services: 16,
        backends: 64,
    };
    let mut fixture = Fixture::with_options(&services(16), options);
    let last = Pkt::tcp("10.77.0.2", 42000, "10.77.100.16", 80, SYN);
    let (verdict, out) = fixture.run(&last.bytes());
    assert_eq!(verdict, XDP_TX, "the 16th service forwards");
    assert_eq!(backend_of(&out), "10.77.1.16".parse::<IpAddr>().unwrap());
    let refused = fixture
        .programmer
        .apply(
            &fixture.dataplane,
            &parse_config(&services(17)),
            &mut fixture.resolver,
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
    println!("the 17th: {refused}");
    assert!(refused.contains("at most 16"), "{refused}");
}

/// An apply swaps its tables in batches of a bounded size (each pending
/// table is an open file): with the open-file limit at 1,024, 1,200
/// services take ten, and every one is published. The programmer keeps
/// 640 of them open; the others' changes are swapped in whole.
/// An apply of many services builds their Maglev tables on a second
/// thread while it writes the backends, and takes them back as they come:
/// each service publishes its own table, and a change builds it again.
#[test]
fn tables_built_beside_an_apply_are_each_their_services() {
    if !privileged() {
        return;
    }
    let services = 150;
    let server = |i: usize, j: usize| -> IpAddr {
        format!("10.77.1.{}", 11 + (i * 7 + j * 3) % 20)
            .parse()
            .unwrap()
    };
    let config = |first_weight: u32| {
        let mut text = format!(
            "[daemon]\ninterfaces = [\"eth0\"]\nmax_services = {services}\nmax_backends = {}\n",
            services * 6
        );
        for i in 0..services {
            text += &format!(
                "[[service]]\nname = \"s{i}\"\nvip = \"10.90.0.{}\"\nport = 80\nscheduler = \"maglev\"\ntable_size = 251\n",
                i + 1
            );
            // Three of twenty servers, another three for most services.
            for j in 0..3 {
                let weight = if j == 0 { first_weight } else { 1 };
                text += &format!(
                    "[[service.backend]]\naddress = \"{}\"\nweight = {weight}\n",
                    server(i, j)
                );
            }
        }
        text
    };
    // Services whose published table is not the one built for them from
    // their own three backends.
    let published = |fixture: &Fixture| -> Vec<String> {
        (0..services)
            .filter_map(|i| {
                let name = format!("s{i}");
                let id = fixture.programmer.service_id(&name).unwrap();
                let table = fixture.dataplane.published_table(id).unwrap();
                let slots = table.map(|t| t.slots).unwrap_or_default();
                let built = fixture.programmer.table(&name).unwrap_or_default();
                let own: HashSet<u32> = (0..3)
                    .filter_map(|j| fixture.programmer.backend_id(&name, server(i, j), 80))
                    .collect();
                let all_own = slots.iter().all(|id| own.contains(id));
                (slots != built || slots.len() != 251 || !all_own).then_some(name)
            })
            .collect()
    };
    let mut fixture = Fixture::new(&config(1));
    let distinct: HashSet<Vec<u32>> = (0..services)
        .map(|i| fixture.programmer.table(&format!("s{i}")).unwrap().to_vec())
        .collect();
    println!("{services} services, {} distinct tables", distinct.len());
    assert!(distinct.len() > 100, "a mix-up would show");
    assert_eq!(
        published(&fixture),
        Vec::<String>::new(),
        "not their own table"
    );
    fixture.apply(&config(3));
    let rebuilt = (0..services)
        .filter(|i| !distinct.contains(fixture.programmer.table(&format!("s{i}")).unwrap()))
        .count();
    println!("after every first backend's weight went to 3: {rebuilt} tables rebuilt");
    assert_eq!(rebuilt, services);
    assert_eq!(
        published(&fixture),
        Vec::<String>::new(),
        "not their own table"
    );
}

#[test]
fn more_tables_than_one_swap_carries_are_all_published() {
    if !privileged() {
        return;
    }
    let services = 1200;
    let mut text = format!(
        "[daemon]\ninterfaces = [\"eth0\"]\nmax_services = {services}\nmax_backends = {}\n",
        services + 8
    );
    for i in 0..services {
        text += &format!(
            "[[service]]\nname = \"s{i}\"\nvip = \"10.90.{}.{}\"\nport = 80\nscheduler = \"rr\"\n\
             [[service.backend]]\naddress = \"10.77.1.{}\"\n",
            i / 250,
            i % 250 + 1,
            11 + i % 10
        );
    }
    let mut options = pnlb_dataplane::LoadOptions::for_tests(65_536);
    options.limits = pnlb_dataplane::Limits {
        services: services as u32,
        // Room for a backend moved while the one it replaced retires.
        backends: services as u32 + 8,
    };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this test process's own limit, which
    // only goes down (the tests in this binary need far fewer files).
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let lowered = libc::rlimit {
            rlim_cur: limit.rlim_cur.min(1024),
            rlim_max: limit.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &lowered);
    }
    let fixture = Fixture::with_options(&text, options);
    let unpublished: Vec<usize> = (0..services)
        .filter(|i| {
            let id = fixture.programmer.service_id(&format!("s{i}")).unwrap();
            fixture.dataplane.published_table(id).unwrap().is_none()
        })
        .collect();
    assert_eq!(unpublished, Vec::<usize>::new(), "services without a table");
    let last = Pkt::tcp("10.77.0.2", 42000, "10.90.4.200", 80, SYN);
    assert_eq!(
        fixture.run(&last.bytes()).0,
        XDP_TX,
        "the last one forwards"
    );
    // The last ones' tables are past the descriptors the programmer keeps
    // (half of 1,024): moved to another backend, left without one and
    // given one again, each is swapped whole.
    let mut fixture = fixture;
    let block = "[[service.backend]]\naddress = \"10.77.1.20\"\n";
    let at = text.rfind(block).expect("the last service's backend");
    let moved = format!(
        "{}[[service.backend]]\naddress = \"10.77.1.19\"\n{}",
        &text[..at],
        &text[at + block.len()..]
    );
    let without = format!("{}{}", &text[..at], &text[at + block.len()..]);
    let syn = |sport| Pkt::tcp("10.77.0.2", sport, "10.90.4.200", 80, SYN);
    fixture.apply(&moved);
    let (verdict, out) = fixture.run(&syn(42001).bytes());
    assert_eq!(verdict, XDP_TX);
    assert_eq!(backend_of(&out).to_string(), "10.77.1.19", "moved");
    fixture.apply(&without);
    assert_eq!(fixture.run(&syn(42002).bytes()).0, XDP_DROP, "no backend");
    fixture.apply(&moved);
    let (verdict, out) = fixture.run(&syn(42003).bytes());
    assert_eq!(verdict, XDP_TX);
    assert_eq!(backend_of(&out).to_string(), "10.77.1.19", "back");
}

/// Many services lose their last backend in one apply (every backend
/// failing its checks at once): their tables are closed (written in place
/// to length 0: a delete from a map of maps waits for a grace period each,
/// one at a time, and 10,000 of them took minutes), the others' stay,
/// packets follow, and the tables come back with the backends.
#[test]
fn services_that_lose_every_backend_at_once_lose_their_tables_together() {
    if !privileged() {
        return;
    }
    let services = 40;
    let text = |with_backends: &dyn Fn(usize) -> bool| {
        let mut text = format!(
            "[daemon]\ninterfaces = [\"eth0\"]\nmax_services = {services}\nmax_backends = {services}\n"
        );
        for i in 0..services {
            text += &format!(
                "[[service]]\nname = \"s{i}\"\nvip = \"10.90.0.{}\"\nport = 80\nscheduler = \"maglev\"\ntable_size = 251\n",
                i + 1
            );
            if with_backends(i) {
                text += &format!(
                    "[[service.backend]]\naddress = \"10.77.1.{}\"\n",
                    11 + i % 10
                );
            }
        }
        text
    };
    let mut fixture = Fixture::new(&text(&|_| true));
    let published = |fixture: &Fixture| -> Vec<usize> {
        (0..services)
            .filter(|i| {
                let id = fixture.programmer.service_id(&format!("s{i}")).unwrap();
                fixture.dataplane.published_table(id).unwrap().is_some()
            })
            .collect()
    };
    let syn = |i: usize| Pkt::tcp("10.77.0.2", 42000, &format!("10.90.0.{}", i + 1), 80, SYN);
    assert_eq!(published(&fixture).len(), services);
    let maps = |fixture: &Fixture| -> Vec<Option<u32>> {
        (0..services)
            .map(|i| {
                let id = fixture.programmer.service_id(&format!("s{i}")).unwrap();
                fixture.dataplane.table_map_id(id).unwrap()
            })
            .collect()
    };
    let maps_before = maps(&fixture);
    // All but every fourth lose their backend in one apply.
    fixture.apply(&text(&|i| i % 4 == 0));
    let kept: Vec<usize> = (0..services).filter(|i| i % 4 == 0).collect();
    assert_eq!(published(&fixture), kept);
    assert_eq!(fixture.run(&syn(1).bytes()).0, XDP_DROP, "no backend left");
    assert_eq!(fixture.run(&syn(4).bytes()).0, XDP_TX, "still served");
    // And back, each in the table it had (opened in place).
    fixture.apply(&text(&|_| true));
    assert_eq!(published(&fixture).len(), services);
    assert_eq!(maps(&fixture), maps_before);
    assert_eq!(fixture.run(&syn(1).bytes()).0, XDP_TX);
}

#[test]
fn a_shrunk_table_is_published_with_its_own_length() {
    if !privileged() {
        return;
    }
    for scheduler in ["rr", "wrr", "lc", "maglev", "chbl"] {
        let mut fixture = Fixture::new(&config("dr", scheduler, 5, ""));
        let id = fixture.programmer.service_id("web").unwrap();
        let before = fixture.dataplane.published_table(id).unwrap().unwrap();
        fixture.apply(&config("dr", scheduler, 2, ""));
        let after = fixture.dataplane.published_table(id).unwrap().unwrap();
        let mine: HashSet<u32> = ["10.77.1.11", "10.77.1.12"]
            .iter()
            .map(|a| {
                fixture
                    .programmer
                    .backend_id("web", a.parse().unwrap(), 80)
                    .unwrap()
            })
            .collect();
        let used = (after.list_len + after.len) as usize;
        assert!(
            used <= after.capacity as usize && used == after.slots.len(),
            "{scheduler}: the header fits its table"
        );
        assert!(
            after.slots[..used].iter().all(|id| mine.contains(id)),
            "{scheduler}: every slot within the header's length names a current backend"
        );
        assert!(
            after.len < before.len || scheduler == "maglev" || scheduler == "chbl",
            "{scheduler}: {} -> {}",
            before.len,
            after.len
        );
    }
}

#[test]
fn connection_counts_equal_the_tables_after_each_sweep() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let mut fixture = Fixture::new(&config("nat", "lc", 2, ""));
        for sport in 52000..52010u16 {
            if sport % 3 == 0 {
                fixture.run(&client(sport, SYN).bytes());
            } else {
                handshake(&fixture, sport);
            }
        }
        // Drift the data plane's own counts: flows of one backend reset and
        // rescheduled, a backend removed, flows closed on both sides.
        let a = "10.77.1.11".parse().unwrap();
        let id_a = fixture.programmer.backend_id("web", a, 8080).unwrap();
        fixture.dataplane.mark_backend_reset(id_a).unwrap();
        for sport in 52000..52005u16 {
            fixture.run(&client(sport, ACK).bytes());
        }
        fixture.apply(&config("nat", "lc", 2, "").replacen(
            "[[service.backend]]\naddress = \"10.77.1.11\"\nport = 8080\n",
            "",
            1,
        ));
        fixture.run(&client(52007, FIN).bytes());
        fixture
            .dataplane
            .sweep_connections_at(&Timeouts::default(), monotonic_ns())
            .unwrap();

        let mut held: HashMap<u32, (u64, u64)> = HashMap::new();
        let tables = fixture.dataplane.conns();
        let both = Table::BOTH
            .into_iter()
            .flat_map(|t| tables.flows_in(t).unwrap());
        for (_, conn) in both {
            let entry = held.entry(conn.backend_id).or_default();
            if u32::from(conn.state) == ConnState::PNLB_CT_ESTABLISHED.0 {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
        let b = "10.77.1.12".parse().unwrap();
        let id_b = fixture.programmer.backend_id("web", b, 8080).unwrap();
        for id in [id_a, id_b] {
            let load = fixture.dataplane.backend_load(id).unwrap();
            println!(
                "backend slot {id}: load {load:?}, tables hold {:?}",
                held.get(&id)
            );
            assert_eq!(load, held.get(&id).copied().unwrap_or((0, 0)), "slot {id}");
        }

        // Everything expires: every count is 0 and the removed slot is reaped.
        let later = monotonic_ns() + 1_000_000_000_000;
        fixture
            .dataplane
            .sweep_connections_at(&Timeouts::default(), later)
            .unwrap();
        assert_eq!(fixture.dataplane.backend_load(id_b).unwrap(), (0, 0));
        assert_eq!(fixture.dataplane.backend_load(id_a).unwrap(), (0, 0));
        let freed = fixture.programmer.reap(&fixture.dataplane).unwrap();
        assert_eq!(freed.len(), 1, "{freed:?}");
    });
}

/// Backend 10.77.1.11:80 of service "web" (its slot), and an established
/// flow's entry on it, for installing flows in bulk.
fn established_on_web(fixture: &Fixture) -> (u32, Conn) {
    let a = "10.77.1.11".parse().unwrap();
    let backend = fixture.programmer.backend_id("web", a, 80).unwrap();
    let service = fixture.programmer.service_id("web").unwrap();
    let names = fixture.programmer.names();
    let (listener, _, _) = names.describe(service, backend).unwrap();
    let (_, _, generation) = names.resolve(&listener, a, 80).unwrap();
    let entry = Conn {
        service_id: service,
        backend_id: backend,
        backend_generation: generation,
        state: ConnState::PNLB_CT_ESTABLISHED.0 as u8,
        ..Default::default()
    };
    (backend, entry)
}

/// A table of 200,000 flows is read whole: by the failover dump, the sweep
/// and its census, in one pass and in the daemon's steps. (A hash map's batch read ends at bucket boundaries, so
/// batches come back short long before the end; a reader that took a short
/// batch for the last saw a few thousand of half a million flows.)
#[test]
fn every_flow_of_a_big_table_is_read_by_the_dump_and_the_sweep() {
    if !privileged() {
        return;
    }
    const FLOWS: u32 = 200_000;
    let fixture = Fixture::with_table_size(&config("dr", "maglev", 2, ""), 1 << 19);
    let (backend, template) = established_on_web(&fixture);
    for n in 0..FLOWS {
        let mut key = flow_of(&client(1024 + (n % 60_000) as u16, ACK).bytes());
        key.src.words[0] ^= (n / 60_000).to_be();
        fixture
            .dataplane
            .conns()
            .install_flow(&key, &template)
            .unwrap();
    }
    let dumped = fixture.dataplane.conns().flows().unwrap().len();
    let started = std::time::Instant::now();
    let swept = fixture
        .dataplane
        .sweep_connections_at(&Timeouts::default(), monotonic_ns())
        .unwrap();
    let took = started.elapsed();
    let (active, _) = fixture.dataplane.backend_load(backend).unwrap();
    // The daemon's way: a pass in steps of a few thousand entries.
    let sweeper = fixture.dataplane.sweeper().unwrap();
    let mut pass = sweeper.begin_pass().unwrap();
    let mut steps = 1;
    let stepped = loop {
        match sweeper
            .step(&mut pass, &Timeouts::default(), monotonic_ns(), 5000)
            .unwrap()
        {
            Some(report) => break report,
            None => steps += 1,
        }
    };
    let (active_after_steps, _) = fixture.dataplane.backend_load(backend).unwrap();
    eprintln!("{FLOWS} flows installed: dump read {dumped}, sweep counted {} entries in {took:?}, census {active} active on the backend; a pass in {steps} steps counted {} ({active_after_steps} active)", swept.established, stepped.established);
    assert_eq!(dumped, FLOWS as usize);
    assert_eq!(swept.established, FLOWS as usize);
    assert_eq!(active, u64::from(FLOWS));
    assert!(steps >= 20, "{steps} steps");
    assert_eq!(stepped.established, FLOWS as usize);
    assert_eq!(active_after_steps, u64::from(FLOWS));
}

/// 80,000 flows end at once among 5,000 that stay (a flood's leftovers
/// expiring together): one pass removes every one of them, and counts
/// what stays once.
#[test]
fn a_sweep_removes_every_flow_that_ended_at_once_and_counts_the_rest() {
    if !privileged() {
        return;
    }
    const ENDED: u32 = 80_000;
    const STAYING: u32 = 5_000;
    let fixture = Fixture::with_table_size(&config("dr", "maglev", 2, ""), 1 << 18);
    let (backend, established) = established_on_web(&fixture);
    let flow = |state: ConnState| Conn {
        state: state.0 as u8,
        ..established
    };
    // UDP flows idle 300 s end; established TCP flows (900 s) stay.
    for n in 0..ENDED + STAYING {
        let mut key = flow_of(&client(1024 + (n % 60_000) as u16, ACK).bytes());
        key.src.words[0] ^= (n / 60_000).to_be();
        let state = if n < ENDED {
            ConnState::PNLB_CT_UDP
        } else {
            ConnState::PNLB_CT_ESTABLISHED
        };
        fixture
            .dataplane
            .conns()
            .install_flow(&key, &flow(state))
            .unwrap();
    }
    let later = monotonic_ns() + 400_000_000_000;
    let report = fixture
        .dataplane
        .sweep_connections_at(&Timeouts::default(), later)
        .unwrap();
    let left = fixture.dataplane.conns().flows().unwrap().len();
    let load = fixture.dataplane.backend_load(backend).unwrap();
    eprintln!(
        "{} flows, {ENDED} idle past their timeout: {} removed, {} left by the report, {left} by a dump; load {load:?}",
        ENDED + STAYING,
        report.expired,
        report.established
    );
    assert_eq!(report.expired, ENDED as usize);
    assert_eq!(report.established, STAYING as usize);
    assert_eq!(left, STAYING as usize);
    assert_eq!(load, (u64::from(STAYING), 0));
}

/// With no daemon tending it for daemon.unattended_limit, the data plane
/// refuses new flows (nobody checks the backends' health any more) and
/// keeps forwarding the established ones; a daemon's next tick lifts it.
#[test]
fn an_unattended_data_plane_refuses_new_flows_and_keeps_established_ones() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        for method in ["dr", "nat"] {
            let fixture = Fixture::new(&config(method, "rr", 2, ""));
            let limit = Some(std::time::Duration::from_secs(60));
            fixture.dataplane.mark_tended(limit).unwrap();
            handshake(&fixture, 41000);
            // The last tick was two minutes ago.
            let then = monotonic_ns() - 120_000_000_000;
            fixture.dataplane.mark_tended_at(then, limit).unwrap();
            let (verdict, _) = fixture.run(&client(41001, SYN).bytes());
            assert_eq!(verdict, XDP_DROP, "{method}: a new flow");
            assert_eq!(fixture.reason("drop_unattended"), 1, "{method}");
            let (verdict, _) = fixture.run(&client(41000, ACK).bytes());
            assert_eq!(verdict, XDP_TX, "{method}: an established flow goes on");
            fixture.dataplane.mark_tended(limit).unwrap();
            let (verdict, _) = fixture.run(&client(41001, SYN).bytes());
            assert_eq!(verdict, XDP_TX, "{method}: tended again");
            // No limit: never unattended.
            fixture.dataplane.mark_tended_at(then, None).unwrap();
            let (verdict, _) = fixture.run(&client(41002, SYN).bytes());
            assert_eq!(verdict, XDP_TX, "{method}: no limit");
        }
    });
}

/// The address sets as a whole count of `config` gives them: each VIP once
/// per service, each nat/snat backend's address once per backend,
/// configured or retiring.
fn address_sets_of(
    fixture: &Fixture,
    config: &pnlb_core::config::Config,
) -> (
    pnlb_dataplane::programmer::AddressCounts,
    pnlb_dataplane::programmer::AddressCounts,
) {
    let (mut vips, mut replies) = (Default::default(), Default::default());
    let count = |counts: &mut pnlb_dataplane::programmer::AddressCounts, address| {
        *counts.entry(address).or_default() += 1;
    };
    for service in &config.services {
        count(&mut vips, service.vip);
        if service.method.translates() {
            for backend in &service.backends {
                count(&mut replies, backend.address);
            }
            for (address, _, _) in fixture.programmer.retiring_of(&service.name) {
                count(&mut replies, address);
            }
        }
    }
    (vips, replies)
}

/// The address sets are `expected`, and the filters in front of them have
/// exactly their addresses' bits.
fn assert_address_sets(
    fixture: &Fixture,
    expected: &(
        pnlb_dataplane::programmer::AddressCounts,
        pnlb_dataplane::programmer::AddressCounts,
    ),
    step: &str,
) {
    let sets = fixture.dataplane.address_sets().unwrap();
    println!("{step}: VIPs {:?}, replies {:?}", sets.0, sets.1);
    assert_eq!(&sets, expected, "{step}");
    let (vip_filter, reply_filter) = fixture.dataplane.address_filters();
    assert!(
        vip_filter == address_filter::words_of(expected.0.keys().copied()),
        "{step}: the VIP filter has other bits than its addresses'"
    );
    assert!(
        reply_filter == address_filter::words_of(expected.1.keys().copied()),
        "{step}: the reply filter has other bits than its addresses'"
    );
}

#[test]
fn the_address_sets_follow_each_change_as_a_whole_count_would() {
    if !privileged() {
        return;
    }
    let service = |name: &str, vip: &str, port: u16, method: &str, backends: &[&str]| {
        let mut text = format!(
            "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\nmethod = \"{method}\"\n"
        );
        for backend in backends {
            let port = if method == "nat" { 8080 } else { 80 };
            text += &format!("[[service.backend]]\naddress = \"{backend}\"\nport = {port}\n");
        }
        text
    };
    let head = "[daemon]\ninterfaces = [\"eth0\"]\n";
    let a = service("a", "10.90.0.1", 80, "dr", &["10.77.1.11", "10.77.1.12"]);
    let b = service("b", "10.90.0.1", 81, "nat", &["10.77.1.11", "10.77.1.13"]);
    let steps: Vec<(&str, String)> = vec![
        (
            "a VIP shared by two services",
            format!(
                "{head}{a}{b}{}",
                service("c", "10.90.0.2", 80, "nat", &["10.77.1.12"])
            ),
        ),
        (
            "one of them removed",
            format!(
                "{head}{a}{}",
                service("c", "10.90.0.2", 80, "nat", &["10.77.1.12"])
            ),
        ),
        (
            "a backend added, one retiring",
            format!(
                "{head}{a}{}",
                service("c", "10.90.0.2", 80, "nat", &["10.77.1.11"])
            ),
        ),
        (
            "the VIP moved, dr now",
            format!(
                "{head}{a}{}",
                service("c", "10.90.0.3", 80, "dr", &["10.77.1.11"])
            ),
        ),
        (
            "nat again",
            format!(
                "{head}{a}{}",
                service("c", "10.90.0.3", 80, "nat", &["10.77.1.11", "10.77.1.14"])
            ),
        ),
    ];
    let mut fixture = Fixture::new(&steps[0].1);
    for (step, text) in &steps {
        fixture.apply(text);
        let config = parse_config(text);
        assert_address_sets(&fixture, &address_sets_of(&fixture, &config), step);
        assert_copies_mirror_services(&fixture.dataplane, step);
    }
    // The retiring backends' slots freed (no flows): their addresses go.
    let freed = fixture.programmer.reap(&fixture.dataplane).unwrap();
    assert_eq!(freed.len(), 2, "{freed:?}");
    let last = parse_config(&steps[steps.len() - 1].1);
    assert_address_sets(&fixture, &address_sets_of(&fixture, &last), "reaped");
    // A service added and removed by name (an API edit's way).
    let with_d = parse_config(&format!(
        "{}{}",
        steps[steps.len() - 1].1,
        service("d", "10.90.0.1", 82, "nat", &["10.77.1.15"])
    ));
    let named: HashSet<&str> = ["d"].into();
    fixture
        .programmer
        .apply_services(&fixture.dataplane, &with_d, &named, &mut fixture.resolver)
        .unwrap();
    assert_address_sets(
        &fixture,
        &address_sets_of(&fixture, &with_d),
        "d added by name",
    );
    let to_d = Pkt::tcp("10.77.0.2", 42000, "10.90.0.1", 82, SYN);
    assert_eq!(fixture.run(&to_d.bytes()).0, XDP_TX, "d forwards");
    let d = fixture.programmer.service_id("d").unwrap();
    fixture
        .programmer
        .remove(&fixture.dataplane, &["d".to_string()])
        .unwrap();
    assert_address_sets(&fixture, &address_sets_of(&fixture, &last), "d removed");
    assert_copies_mirror_services(&fixture.dataplane, "d removed");
    // Its table closed in place, not taken out of the map of maps (a
    // grace period); nothing names it, and its VIP:port is no service.
    assert_eq!(fixture.dataplane.published_table(d).unwrap(), None);
    assert_eq!(fixture.run(&to_d.bytes()).0, XDP_PASS, "d removed");
}

/// An established flow's packets find their service through their entry's
/// id (pnlb_service_copies), not by hashing their listener; a copy counts
/// only while it is of a listener the packet is for. An established flow
/// stays with the service that took it while that service lasts (as IPVS
/// keeps a connection), and goes where a lookup by listener sends it once
/// it is gone. Each step makes the two ways differ: another service takes
/// a removed one's id; a service on the flow's own port joins the VIP's
/// every-port one; the flow's service gains a deny rule, and loses it; the
/// port's own service leaves its flow to the every-port one.
#[test]
fn an_established_flow_keeps_its_service_while_it_lasts_and_no_longer() {
    if !privileged() {
        return;
    }
    let service = |name: &str, vip: &str, port: u16, backend: &str, extra: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\nprotocol = \"udp\"\nmethod = \"dr\"\nscheduler = \"rr\"\n{extra}[[service.backend]]\naddress = \"{backend}\"\n"
        )
    };
    let head = "[daemon]\ninterfaces = [\"eth0\"]\n";
    let a = service("a", "10.90.0.1", 53, "10.77.1.11", "");
    // On a's VIP, so that a's packets still get past the VIP filter.
    let b = service("b", "10.90.0.1", 54, "10.77.1.12", "");
    let c = service("c", "10.90.0.3", 53, "10.77.1.13", "");
    let every_port = |extra: &str| service("p", "10.90.0.4", 0, "10.77.1.14", extra);
    let q = service("q", "10.90.0.4", 53, "10.77.1.15", "");
    let to_a = Pkt::udp("10.77.0.2", 41000, "10.90.0.1", 53);
    let to_p = Pkt::udp("10.77.0.2", 41001, "10.90.0.4", 53);
    let to_q = Pkt::udp("10.77.0.2", 41002, "10.90.0.4", 53);
    let establish = |fixture: &Fixture, packet: &Pkt| -> IpAddr {
        for _ in 0..2 {
            assert_eq!(fixture.run(&packet.bytes()).0, XDP_TX);
        }
        assert_eq!(table_of(fixture, packet), Some(Table::Established));
        let (_, out) = fixture.run(&packet.bytes());
        backend_of(&out)
    };
    let next_datagram = |fixture: &Fixture, packet: &Pkt| {
        let (verdict, out) = fixture.run(&packet.bytes());
        (verdict, (verdict == XDP_TX).then(|| backend_of(&out)))
    };
    let sent_to = |backend: &str| (XDP_TX, Some(backend.parse::<IpAddr>().unwrap()));

    let mut fixture = Fixture::new(&format!("{head}{a}{b}{}", every_port("")));
    assert_copies_mirror_services(&fixture.dataplane, "a, b and p");
    let a_id = fixture.programmer.service_id("a").unwrap();
    assert_eq!(establish(&fixture, &to_a).to_string(), "10.77.1.11");
    assert_eq!(establish(&fixture, &to_p).to_string(), "10.77.1.14");

    fixture.apply(&format!("{head}{b}{}", every_port("")));
    fixture.programmer.wait_for_readers();
    fixture.apply(&format!("{head}{b}{c}{}", every_port("")));
    assert_copies_mirror_services(&fixture.dataplane, "a removed, c added");
    assert_eq!(
        fixture.programmer.service_id("c"),
        Some(a_id),
        "c took a's id (else this step shows nothing)"
    );
    let after = next_datagram(&fixture, &to_a);
    println!("a's flow after c took a's id: {after:?}");
    assert_eq!(after, (XDP_PASS, None), "a's port is no service now");

    fixture.apply(&format!("{head}{b}{c}{}{q}", every_port("")));
    assert_copies_mirror_services(&fixture.dataplane, "q on p's VIP and port");
    let after = next_datagram(&fixture, &to_p);
    println!("p's flow after q joined on its port: {after:?}");
    assert_eq!(after, sent_to("10.77.1.14"), "the flow stays with p");
    assert_eq!(establish(&fixture, &to_q).to_string(), "10.77.1.15");

    fixture.apply(&format!(
        "{head}{b}{c}{}{q}",
        every_port("deny = [\"10.77.0.2/32\"]\n")
    ));
    assert_copies_mirror_services(&fixture.dataplane, "p denies the client");
    let after = next_datagram(&fixture, &to_p);
    println!("p's flow with its client denied: {after:?}");
    assert_eq!(after, (XDP_DROP, None));

    fixture.apply(&format!("{head}{b}{c}{}{q}", every_port("")));
    assert_copies_mirror_services(&fixture.dataplane, "p allows it again");
    let after = next_datagram(&fixture, &to_p);
    println!("p's flow allowed again: {after:?}");
    assert_eq!(after, sent_to("10.77.1.14"));

    // q's entry, of a service gone, gives way to p's: every datagram
    // after goes on (it used to stay in the way until it expired).
    fixture.apply(&format!("{head}{b}{c}{}", every_port("")));
    assert_copies_mirror_services(&fixture.dataplane, "q removed");
    let after: Vec<_> = (0..3).map(|_| next_datagram(&fixture, &to_q)).collect();
    println!("q's flow after q left: {after:?}");
    assert_eq!(after, vec![sent_to("10.77.1.14"); 3]);
    assert_eq!(table_of(&fixture, &to_q), Some(Table::Established));
}
