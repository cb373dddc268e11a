//! Per-service access rules (service.allow, service.deny) in XDP: the
//! longest matching source prefix decides, IPv4 and IPv6; with allow rules
//! a source none matches is denied; every drop is counted under
//! drop_access_denied and, for a deny rule, as that rule's hit; changes
//! apply to every packet, established flows' included.

mod support;

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
