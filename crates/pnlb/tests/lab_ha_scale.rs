//! Failover at scale (issue 16): 500,000 nat flows on the active node, all
//! of them on the backup before it takes over, with 1% of the sync traffic
//! (UDP batches and the TCP dump's segments alike) dropped on the way in;
//! the adverts keep their interval while the active node sweeps that table.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

mod support;

use pnlb_lab::spoof::{self, Flood};
use pnlb_lab::{Lab, LabProcess, LabSpec, LB2_4, VIP4};
use support::*;

const FLOWS: u64 = 500_000;
/// More flows once the backup is synced: these travel as incremental batches.
const LATER_FLOWS: u64 = 20_000;
const PORT: u16 = 9000;

fn node_config(lab: &Lab, node: u8, priority: u8) -> std::path::PathBuf {
    let everyone: Vec<usize> = (0..lab.servers.len()).collect();
    let base = udp_with_api(&lab.config("nat", PORT, &everyone)).replacen(
        '\n',
        // Two entries per nat flow, and room to spare.
        "\nconn_table_size = 2097152\n",
        1,
    );
    write_ha_config(lab, &base, node, priority)
}

/// `count` UDP flows to the VIP, two datagrams each (established on the
/// second), walking source ports and addresses from `first`.
fn flows(lab: &Lab, first: Ipv4Addr, count: u64) -> spoof::Sent {
    let flood = Flood::udp_flows(first, SocketAddrV4::new(VIP4, PORT), count);
    spoof::send(&lab.client, flood).expect("flows sent")
}

/// The node's status through its API (127.0.0.1:9180 in its namespace).
fn status(ns: &str) -> serde_json::Value {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-m",
            "5",
            "http://127.0.0.1:9180/api/v1/status",
        ])
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Entries of both tables: a UDP flow the generator's second datagram never
/// reached (lost on a loaded machine) is half-open in the active node's
/// new-flow table, and a backup installs every synced UDP flow in its
/// established table; a flow is in one table or the other on each node.
fn entries(ns: &str) -> u64 {
    let status = status(ns);
    let table = &status["connections"];
    table["entries"].as_u64().unwrap_or(0) + table["new_entries"].as_u64().unwrap_or(0)
}

/// The node's table entries once two readings two expiry passes apart
/// agree (a pass spans its 5 s period, so readings closer than two passes
/// can both come from the same one).
fn settled_entries(ns: &str) -> u64 {
    let mut last = entries(ns);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_secs(12));
        let now = entries(ns);
        if now == last && now > 0 {
            return now;
        }
        last = now;
    }
    last
}

/// Waits (up to `timeout`) until the node's table holds `want` entries.
fn wait_for_entries(ns: &str, want: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let now = entries(ns);
        if now == want || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// "N flow(s)" in a dump's log line.
fn flows_in(line: &str) -> u64 {
    line.split(" flow(s)")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Backends' inactive connections (UDP flows), summed over the node's services.
fn inactive_conns(ns: &str) -> u64 {
    let status = status(ns);
    let mut total = 0;
    for service in status["services"].as_array().into_iter().flatten() {
        for backend in service["backends"].as_array().into_iter().flatten() {
            total += backend["inactive_conns"].as_u64().unwrap_or(0);
        }
    }
    total
}

/// The active node's adverts as the peer's address receives them, for
/// `window`: the longest gap between two.
fn longest_advert_gap(lab: &Lab, window: Duration) -> (usize, Duration) {
    let lb2 = lab.lb2.clone().expect("a pair");
    pnlb_lab::spawn_in_netns(&lb2, move || {
        let socket = UdpSocket::bind(SocketAddrV4::new(LB2_4, 8112)).expect("bind 8112");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let start = Instant::now();
        let (mut heard, mut last, mut longest) = (0, None::<Instant>, Duration::ZERO);
        let mut buffer = [0u8; 512];
        while start.elapsed() < window {
            if socket.recv_from(&mut buffer).is_ok() {
                let now = Instant::now();
                if let Some(last) = last {
                    longest = longest.max(now - last);
                }
                last = Some(now);
                heard += 1;
            }
        }
        (heard, longest)
    })
    .expect("listener")
    .join()
    .expect("joined")
    .expect("in netns")
}

/// Drops 1% of what reaches the backup from the sync port, both ways of
/// sync: UDP batches to it, TCP segments of the dump from the active node.
fn lossy_sync_link(ns: &str) {
    for rule in [
        "add table inet lossy",
        "add chain inet lossy input { type filter hook input priority 0; }",
        "add rule inet lossy input udp dport 8113 numgen random mod 100 0 counter drop",
        "add rule inet lossy input tcp sport 8113 numgen random mod 100 0 counter drop",
    ] {
        let mut args = vec!["netns", "exec", ns, "nft"];
        args.extend(rule.split(' '));
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "nft {rule}: {out:?}");
    }
}

/// Packets the lossy rules dropped: (udp, tcp).
fn dropped_on_the_way(ns: &str) -> (u64, u64) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", "inet", "lossy"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let count = |proto: &str| {
        text.lines()
            .find(|l| l.contains(proto) && l.contains("counter"))
            .and_then(|l| l.split("packets ").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (count("udp dport"), count("tcp sport"))
}

#[test]
fn half_a_million_flows_reach_the_backup_through_a_lossy_link_before_it_takes_over() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec {
        ha: true,
        ..LabSpec::default()
    })
    .expect("lab");
    lab.route_servers_via(pnlb_lab::Gateway::Floating).unwrap();
    let lb2 = lab.lb2.clone().unwrap();
    let mut node1 = start_ha_node(&lab.lb, &node_config(&lab, 1, 150));
    node1
        .wait_for_line("ha: MASTER", Duration::from_secs(10))
        .expect("node 1 elected");

    // 1. 500,000 flows through the active node (a few datagrams are lost
    // on the way: the flows it holds are what must reach the backup).
    let sent = flows(&lab, Ipv4Addr::new(10, 77, 0, 100), FLOWS);
    let held = settled_entries(&lab.lb);
    eprintln!(
        "generator: {} datagrams in {:.1} s ({:.0}/s); node 1 holds {held} entries ({} nat flows)",
        sent.packets,
        sent.elapsed.as_secs_f64(),
        sent.rate(),
        held / 2
    );
    assert!(
        held >= 2 * FLOWS * 95 / 100,
        "node 1 holds {held} entries: {}",
        status(&lab.lb)["connections"]
    );

    // 2. Its adverts while it sweeps that table (every 5 s): 12 s of them;
    // meanwhile its API, which the daemon loop answers, is asked every
    // 200 ms (a sweep on the loop's thread would hold answers back).
    let lb = lab.lb.clone();
    let asking = std::thread::spawn(move || {
        let (mut slowest, start) = (Duration::ZERO, Instant::now());
        while start.elapsed() < Duration::from_secs(12) {
            let asked = Instant::now();
            let _ = status(&lb);
            slowest = slowest.max(asked.elapsed());
            std::thread::sleep(Duration::from_millis(200));
        }
        slowest
    });
    let (heard, gap) = longest_advert_gap(&lab, Duration::from_secs(12));
    let slowest = asking.join().unwrap();
    eprintln!("over 12 s of sweeps of {held} entries: {heard} adverts heard, longest gap {gap:?} (interval 100 ms; a backup takes over after 300 ms); slowest API answer {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "the daemon loop stalled {slowest:?}: its watchdog heartbeat allows 2 s"
    );
    assert!(heard > 60, "{heard} adverts");
    assert!(
        gap < Duration::from_millis(300),
        "an advert {gap:?} late: a backup would have taken over"
    );

    // 3. The backup starts behind a lossy link and fetches the table.
    lossy_sync_link(&lb2);
    let started = Instant::now();
    let mut node2 = start_ha_node(&lb2, &node_config(&lab, 2, 100));
    let received = wait_for_log(&node2, "full table received", Duration::from_secs(120));
    let dumped = wait_for_log(&node1, "sent full dump", Duration::from_secs(5));
    eprintln!(
        "node 2 (synced {:.1} s after start): {received}\nnode 1: {dumped}",
        started.elapsed().as_secs_f64()
    );
    let in_dump = flows_in(&dumped);
    assert!(in_dump >= held / 2, "{dumped}");
    assert_eq!(flows_in(&received), in_dump, "{received}");
    assert!(
        received.contains(&format!("{in_dump} installed")),
        "{received}"
    );

    // 4. More flows while it is backup: incremental batches, some lost and
    // asked for again.
    let later = flows(&lab, Ipv4Addr::new(10, 77, 0, 200), LATER_FLOWS);
    let on_master = settled_entries(&lab.lb);
    let on_backup = wait_for_entries(&lb2, on_master, Duration::from_secs(30));
    let (udp, tcp) = dropped_on_the_way(&lb2);
    let repairs: Vec<String> = node2
        .output()
        .into_iter()
        .filter(|l| l.contains("asked for again") || l.contains("beyond repair"))
        .collect();
    eprintln!(
        "{} more datagrams; entries: node 1 {on_master}, node 2 {on_backup}; dropped on the way in: {udp} sync datagrams, {tcp} dump segments; {repairs:#?}",
        later.packets
    );
    assert!(on_master >= held + 2 * LATER_FLOWS * 95 / 100);
    assert_eq!(on_backup, on_master, "every flow on the backup");
    assert!(udp > 0 && tcp > 0, "the link did lose sync traffic");
    let (counted, theirs) = (inactive_conns(&lb2), inactive_conns(&lab.lb));
    eprintln!(
        "inactive (UDP) connections on the backends: node 2 counts {counted}, node 1 {theirs}"
    );
    assert_eq!(counted, theirs, "synced flows counted on the backup");

    // 5. No role change so far; then the active node stops and the backup
    // takes over holding every flow.
    let roles = |node: &LabProcess| -> Vec<String> {
        node.output()
            .into_iter()
            .filter(|l| l.contains("ha: MASTER") || l.contains("ha: BACKUP"))
            .collect()
    };
    assert_eq!(roles(&node1).len(), 1, "node 1: {:?}", roles(&node1));
    assert!(roles(&node2).is_empty(), "node 2: {:?}", roles(&node2));
    node1.stop(Duration::from_secs(10));
    node2
        .wait_for_line("ha: MASTER", Duration::from_secs(5))
        .expect("node 2 takes over");
    assert_eq!(
        entries(&lb2),
        on_master,
        "node 2 holds every flow as master"
    );
    node2.stop(Duration::from_secs(10));
}
