//! Per-service access rules (service.allow, service.deny) in XDP: the
//! longest matching source prefix decides, IPv4 and IPv6; with allow rules
//! a source none matches is denied; every drop is counted under
//! drop_access_denied and, for a deny rule, as that rule's hit; changes
//! apply to every packet, established flows' included. And the
//! per-source limits: new flows per second (source_new_flow_rate) and
//! flows open at once (source_max_flows).

mod support;

use std::time::Duration;

use pnlb_core::config::Timeouts;
use pnlb_dataplane::conntrack::{monotonic_ns, Table};
use support::*;

fn config(web_rules: &str) -> String {
    format!(
        r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "10.77.100.1"
port = 80
method = "dr"
{web_rules}
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "open"
vip = "10.77.100.2"
port = 80
method = "dr"
deny = ["192.0.2.0/24"]
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "web6"
vip = "fd77:100::1"
port = 80
method = "dr"
allow = ["fd77::/16"]
deny = ["fd77:0:0:66::/64"]
[[service.backend]]
address = "fd77:1::11"
"#
    )
}

const RULES: &str = "allow = [\"10.77.0.0/24\"]\ndeny = [\"10.77.0.64/26\"]\n";

fn verdict(fixture: &Fixture, src: &str, vip: &str) -> u32 {
    fixture.run(&Pkt::tcp(src, 40000, vip, 80, SYN).bytes()).0
}

#[test]
fn the_longest_matching_prefix_decides_and_every_drop_is_counted() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(&config(RULES));
    for (src, vip, expected, why) in [
        (
            "10.77.0.2",
            "10.77.100.1",
            XDP_TX,
            "allowed by 10.77.0.0/24",
        ),
        (
            "10.77.0.66",
            "10.77.100.1",
            XDP_DROP,
            "denied by the longer 10.77.0.64/26",
        ),
        (
            "10.77.5.5",
            "10.77.100.1",
            XDP_DROP,
            "no allow rule matches",
        ),
        (
            "10.77.5.5",
            "10.77.100.2",
            XDP_TX,
            "a deny list alone lets others in",
        ),
        (
            "192.0.2.7",
            "10.77.100.2",
            XDP_DROP,
            "denied by 192.0.2.0/24",
        ),
        ("fd77::2", "fd77:100::1", XDP_TX, "allowed by fd77::/16"),
        (
            "fd77:0:0:66::9",
            "fd77:100::1",
            XDP_DROP,
            "denied by fd77:0:0:66::/64",
        ),
        (
            "2001:db8::1",
            "fd77:100::1",
            XDP_DROP,
            "no IPv6 allow rule matches",
        ),
    ] {
        assert_eq!(
            verdict(&fixture, src, vip),
            expected,
            "{src} -> {vip}: {why}"
        );
    }
    assert_eq!(fixture.reason("drop_access_denied"), 5);
    let hits = fixture.programmer.access_hits(&fixture.dataplane, "web");
    let deny_hits: Vec<(String, u64)> = hits
        .iter()
        .filter(|(_, allows, _)| !allows)
        .map(|(prefix, _, n)| (prefix.to_string(), *n))
        .collect();
    assert_eq!(deny_hits, vec![("10.77.0.64/26".to_string(), 1)]);
}

#[test]
fn rules_change_with_the_config_for_established_flows_too() {
    if !privileged() {
        return;
    }
    let mut fixture = Fixture::new(&config(RULES));
    // A flow from an allowed source, established.
    let syn = Pkt::tcp("10.77.0.2", 40001, "10.77.100.1", 80, SYN);
    let ack = Pkt {
        tcp: Some(ACK),
        ..syn.clone()
    };
    assert_eq!(fixture.run(&syn.bytes()).0, XDP_TX);
    assert_eq!(fixture.run(&ack.bytes()).0, XDP_TX);
    // Now denied: its next packet is dropped.
    fixture.apply(&config("deny = [\"10.77.0.0/24\"]\n"));
    assert_eq!(fixture.run(&ack.bytes()).0, XDP_DROP, "denied mid-flow");
    assert_eq!(
        verdict(&fixture, "10.77.5.5", "10.77.100.1"),
        XDP_TX,
        "no allow list any more"
    );
    // No rules: everyone.
    fixture.apply(&config(""));
    assert_eq!(fixture.run(&ack.bytes()).0, XDP_TX);
    assert_eq!(verdict(&fixture, "10.77.0.66", "10.77.100.1"), XDP_TX);
    assert!(fixture
        .programmer
        .access_hits(&fixture.dataplane, "web")
        .is_empty());
}

/// source_new_flow_rate: each source's new flows on its own budget; one
/// source over it is refused while another is not, and its established
/// flows go on.
#[test]
fn a_source_over_its_new_flow_rate_is_refused_and_others_are_not() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(&config(
        "source_new_flow_rate = 1\nsource_new_flow_burst = 3\n",
    ));
    let syn = |src: &str, port: u16| Pkt::tcp(src, port, "10.77.100.1", 80, SYN);
    let verdicts: Vec<u32> = (0..5)
        .map(|n| fixture.run(&syn("10.77.0.2", 41000 + n).bytes()).0)
        .collect();
    assert_eq!(verdicts, vec![XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP]);
    assert_eq!(fixture.reason("drop_source_rate_limited"), 2);
    assert_eq!(
        fixture.run(&syn("10.77.0.3", 41000).bytes()).0,
        XDP_TX,
        "another source"
    );
    let ack = Pkt {
        tcp: Some(ACK),
        ..syn("10.77.0.2", 41000)
    };
    assert_eq!(
        fixture.run(&ack.bytes()).0,
        XDP_TX,
        "its established flow goes on"
    );
}

/// source_max_flows: a source with all its flows open gets no new one
/// until one ends, by its FIN or RST (seen at once) or unseen (idle,
/// evicted: the next census); other sources are not affected.
#[test]
fn a_source_with_its_flows_open_gets_no_more_until_one_ends() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(&config("source_max_flows = 3\n"));
    let packet = |src: &str, port: u16, flags| Pkt::tcp(src, port, "10.77.100.1", 80, flags);
    let verdict = |src: &str, port: u16, flags| fixture.run(&packet(src, port, flags).bytes()).0;
    let sweep_at = |now: u64| {
        fixture
            .dataplane
            .sweep_connections_at(&Timeouts::default(), now)
            .expect("sweep")
    };
    let opened: Vec<u32> = (41000..41004)
        .map(|port| verdict("10.77.0.2", port, SYN))
        .collect();
    assert_eq!(opened, vec![XDP_TX, XDP_TX, XDP_TX, XDP_DROP]);
    assert_eq!(fixture.reason("drop_source_flows_limited"), 1);
    assert_eq!(verdict("10.77.0.3", 41000, SYN), XDP_TX, "another source");
    assert_eq!(verdict("10.77.0.2", 41000, ACK), XDP_TX, "its flows go on");
    assert_eq!(
        verdict("10.77.0.2", 41003, SYN),
        XDP_DROP,
        "established: still open"
    );

    // Flows the data plane sees end make room at once.
    assert_eq!(verdict("10.77.0.2", 41000, RST), XDP_TX);
    assert_eq!(verdict("10.77.0.2", 41003, SYN), XDP_TX, "after a reset");
    assert_eq!(verdict("10.77.0.2", 41001, FIN), XDP_TX);
    assert_eq!(verdict("10.77.0.2", 41004, SYN), XDP_TX, "after a FIN");
    assert_eq!(verdict("10.77.0.2", 41005, SYN), XDP_DROP, "3 open again");

    // A flow that leaves unseen (evicted from the new-flow table) holds
    // its place until the census finds it gone.
    let evicted = flow_of(&packet("10.77.0.2", 41002, SYN).bytes());
    assert!(fixture.dataplane.forget_entry(Table::New, &evicted));
    assert_eq!(
        verdict("10.77.0.2", 41005, SYN),
        XDP_DROP,
        "before a census"
    );
    let report = sweep_at(monotonic_ns());
    eprintln!("census after an eviction: {report:?}");
    assert_eq!(verdict("10.77.0.2", 41005, SYN), XDP_TX, "after the census");
    assert_eq!(verdict("10.77.0.2", 41006, SYN), XDP_DROP);

    // Once every flow has gone idle and expired, the source starts afresh.
    let later = monotonic_ns() + Duration::from_secs(3600).as_nanos() as u64;
    sweep_at(later);
    let opened: Vec<u32> = (42000..42004)
        .map(|port| verdict("10.77.0.2", port, SYN))
        .collect();
    assert_eq!(
        opened,
        vec![XDP_TX, XDP_TX, XDP_TX, XDP_DROP],
        "after expiry"
    );
    assert_eq!(fixture.reason("drop_source_flows_limited"), 6);
}

/// source_max_flows set, changed and lifted by a reload: flows opened
/// before the limit count from the next census on.
#[test]
fn the_flow_limit_follows_the_config() {
    if !privileged() {
        return;
    }
    let mut fixture = Fixture::new(&config(""));
    let verdict = |fixture: &Fixture, port: u16| {
        let syn = Pkt::tcp("10.77.0.2", port, "10.77.100.1", 80, SYN);
        fixture.run(&syn.bytes()).0
    };
    let opened = (44000..44004)
        .filter(|&p| verdict(&fixture, p) == XDP_TX)
        .count();
    assert_eq!(opened, 4, "no limit");
    fixture.apply(&config("source_max_flows = 5\n"));
    fixture
        .dataplane
        .sweep_connections_at(&Timeouts::default(), monotonic_ns())
        .expect("sweep");
    let opened = (44100..44104)
        .filter(|&p| verdict(&fixture, p) == XDP_TX)
        .count();
    assert_eq!(opened, 1, "the 4 opened before count once censused");
    fixture.apply(&config("source_max_flows = 7\n"));
    let opened = (44200..44204)
        .filter(|&p| verdict(&fixture, p) == XDP_TX)
        .count();
    assert_eq!(opened, 2, "raised to 7");
    fixture.apply(&config(""));
    let opened = (44300..44304)
        .filter(|&p| verdict(&fixture, p) == XDP_TX)
        .count();
    assert_eq!(opened, 4, "lifted");
}

/// source_max_flows with nat: a flow ended from the backend's side (its
/// reset, on the reply entry) counts for the client's source too.
#[test]
fn a_reset_from_the_backend_frees_the_clients_place() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(
            r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "nat4"
vip = "10.77.100.1"
port = 80
method = "nat"
source_max_flows = 1
[[service.backend]]
address = "10.77.1.11"
port = 8080
"#,
        );
        let client = |port, flags| Pkt::tcp("10.77.0.2", port, "10.77.100.1", 80, flags);
        let verdict = |packet: Pkt| fixture.run(&packet.bytes()).0;
        assert_eq!(verdict(client(43000, SYN)), XDP_TX);
        assert_eq!(verdict(client(43001, SYN)), XDP_DROP, "one open");
        let reset = Pkt::tcp("10.77.1.11", 8080, "10.77.0.2", 43000, RST);
        assert_eq!(
            verdict(reset),
            XDP_REDIRECT,
            "the backend's reset goes back"
        );
        assert_eq!(verdict(client(43001, SYN)), XDP_TX, "its place is free");
        assert_eq!(fixture.reason("drop_source_flows_limited"), 1);
    });
}

/// Thousands of prefixes (the issue's scale): 5,000 /32 deny rules apply,
/// the 4,321st drops its source, a source outside them all passes.
#[test]
fn thousands_of_rules_apply_and_decide() {
    if !privileged() {
        return;
    }
    let denied: Vec<String> = (0..5000u32)
        .map(|n| format!("\"10.1.{}.{}\"", n / 250, n % 250))
        .collect();
    let started = std::time::Instant::now();
    let fixture = Fixture::new(&config(&format!("deny = [{}]\n", denied.join(", "))));
    let took = started.elapsed();
    eprintln!("5,000 deny rules loaded and applied in {took:?}");
    let n = 4321u32;
    let inside = format!("10.1.{}.{}", n / 250, n % 250);
    assert_eq!(verdict(&fixture, &inside, "10.77.100.1"), XDP_DROP);
    assert_eq!(verdict(&fixture, "10.1.200.1", "10.77.100.1"), XDP_TX);
    assert_eq!(
        fixture
            .programmer
            .access_hits(&fixture.dataplane, "web")
            .len(),
        5000
    );
}
