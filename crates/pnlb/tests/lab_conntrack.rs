//! The connection table under pressure, end to end with the real data
//! plane (docs/conntrack.md): idle established connections outlive spoofed
//! ACK and SYN floods on a table of the minimum size; a long transfer
//! outlives a UDP flood that fills the table; after churn, resets and a
//! backend removed and re-added, the connection counts equal what the
//! tables hold, read from outside the daemon, and return to zero.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use pnlb_lab::spoof::{self, Flood, Kind};
use pnlb_lab::{
    bulk, in_netns, Gateway, Lab, LabSpec, BULK_PORT, CLIENT4, ECHO_PORT, LB_INTERFACE, VIP4,
};
use support::*;

/// The echo lab for `method`: nat servers route via the LB.
fn lab_for(method: &str) -> Lab {
    Lab::up(&LabSpec {
        servers_route_via: if method == "nat" {
            Gateway::Lb
        } else {
            Gateway::Router
        },
        nginx: false,
        echo: true,
        ..LabSpec::default()
    })
    .expect("lab")
}

/// The smallest connection table the config allows.
fn minimum_table(text: &str) -> String {
    text.replace("[daemon]\n", "[daemon]\nconn_table_size = 1024\n")
}

/// A connection to the echo service, greeted: (stream, server name).
fn hold(vip: SocketAddr) -> std::io::Result<(TcpStream, String)> {
    let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut greeting = [0u8; 3];
    stream.read_exact(&mut greeting)?;
    Ok((stream, String::from_utf8_lossy(&greeting[..2]).to_string()))
}

/// Whether the connection still echoes.
fn echoes(stream: &mut TcpStream) -> bool {
    let mut back = [0u8; 5];
    stream.write_all(b"ping\n").is_ok()
        && stream.read_exact(&mut back).is_ok()
        && &back == b"ping\n"
}

/// The line of the daemon's exit summary about the connection table.
fn table_line(output: &[String]) -> String {
    output
        .iter()
        .find(|l| l.starts_with("Connection table:"))
        .cloned()
        .unwrap_or_else(|| format!("no table line in {output:?}"))
}

fn flood(kind: Kind, target: SocketAddrV4, count: u64, seed: u32) -> Flood {
    Flood {
        kind,
        source: CLIENT4,
        target,
        count,
        limit: Duration::from_secs(60),
        rate: 0,
        seed,
        repeat_each: 0,
    }
}

/// 40 idle established connections on a 1024-entry table, then 30,000
/// spoofed ACKs and 30,000 SYNs from the client's address with random
/// source ports: every idle connection still echoes, so it still reaches
/// its original backend (any other would reset it).
fn idle_connections_outlive_floods(method: &str, scheduler: &str) {
    let lab = lab_for(method);
    let text = minimum_table(&lab.config(method, ECHO_PORT, &[0, 1, 2])).replace(
        "scheduler = \"maglev\"",
        &format!("scheduler = \"{scheduler}\""),
    );
    let path = write_config(&lab, &text);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let vip = SocketAddr::new(IpAddr::V4(VIP4), ECHO_PORT);
    let mut idle: Vec<(TcpStream, String)> = in_netns(&lab.client, move || {
        (0..40)
            .map(|i| hold(vip).unwrap_or_else(|err| panic!("connection {i}: {err}")))
            .collect()
    })
    .unwrap();
    let target = SocketAddrV4::new(VIP4, ECHO_PORT);
    let acks = spoof::send(&lab.client, flood(Kind::Ack, target, 30_000, 7)).expect("ACK flood");
    let syns = spoof::send(&lab.client, flood(Kind::Syn, target, 30_000, 11)).expect("SYN flood");
    assert_eq!((acks.packets, syns.packets), (30_000, 30_000));

    let answered = idle
        .iter_mut()
        .map(|(stream, _)| echoes(stream))
        .filter(|ok| *ok)
        .count();
    let mut per_server: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, server) in &idle {
        *per_server.entry(server.as_str()).or_default() += 1;
    }
    let (_, output) = daemon.stop(Duration::from_secs(10));
    let not_forwarded = output
        .iter()
        .find(|l| l.starts_with("Not forwarded:"))
        .cloned()
        .unwrap_or_default();
    println!(
        "{method}/{scheduler}: {answered}/40 idle connections answered on their backends {per_server:?} after \
         30000 ACKs ({:.0}/s) and 30000 SYNs ({:.0}/s) on a 1024-entry table\n  {}\n  {not_forwarded}",
        acks.rate(),
        syns.rate(),
        table_line(&output)
    );
    assert_eq!(answered, 40, "{method}/{scheduler}: {output:?}");
}

#[test]
fn idle_nat_rr_connections_outlive_ack_and_syn_floods() {
    if privileged() {
        idle_connections_outlive_floods("nat", "rr");
    }
}

#[test]
fn idle_snat_maglev_connections_outlive_ack_and_syn_floods() {
    if privileged() {
        idle_connections_outlive_floods("snat", "maglev");
    }
}

#[test]
fn idle_dr_rr_connections_outlive_ack_and_syn_floods() {
    if privileged() {
        idle_connections_outlive_floods("dr", "rr");
    }
}

const TRANSFER: u64 = 256 << 20;

/// A 256 MiB download, byte for byte, while spoofed UDP datagrams from
/// random ports (answered by the servers, so they become established
/// flows) fill a 1024-entry table.
fn transfer_outlives_udp_flood(method: &str) {
    let lab = lab_for(method);
    let mut text = minimum_table(&lab.config(method, BULK_PORT, &[0, 1, 2]));
    text += &format!(
        "\n[[service]]\nname = \"udp\"\nvip = \"{VIP4}\"\nport = {ECHO_PORT}\nprotocol = \"udp\"\nmethod = \"{method}\"\n"
    );
    if method == "snat" {
        text += "snat_addresses = [\"10.77.1.2\"]\n";
    }
    for server in &lab.servers {
        text += &format!("[[service.backend]]\naddress = \"{}\"\n", server.ipv4);
    }
    let path = write_config(&lab, &text);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");

    let vip = SocketAddr::new(IpAddr::V4(VIP4), BULK_PORT);
    let stream = in_netns(&lab.client, move || {
        TcpStream::connect_timeout(&vip, Duration::from_secs(3))
    })
    .unwrap()
    .expect("connect before the flood");
    let target = SocketAddrV4::new(VIP4, ECHO_PORT);
    let mut udp = flood(Kind::Udp, target, 5_000_000, 13);
    udp.limit = Duration::from_secs(120);
    let running = spoof::start(&lab.client, udp).expect("UDP flood");
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let result = std::thread::spawn(move || {
        let mut stream = stream;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        bulk::download(&mut stream, TRANSFER, 0x5eed)
    })
    .join()
    .unwrap();
    let took = started.elapsed();
    let sent = running.finish().expect("flood");
    let (_, output) = daemon.stop(Duration::from_secs(10));
    let download =
        result.unwrap_or_else(|err| panic!("{method}: download failed: {err}; {output:?}"));
    let line = table_line(&output);
    println!(
        "{method}: {} MiB in {took:.1?} byte-exact: {} while {} spoofed UDP datagrams ({:.0}/s) hit the table\n  {line}",
        download.received >> 20,
        download.client_checksum == download.server_checksum,
        sent.packets,
        sent.rate()
    );
    assert_eq!(download.received, TRANSFER, "{method}");
    assert_eq!(
        download.client_checksum, download.server_checksum,
        "{method}: bytes differ"
    );
    assert!(
        line.contains("refused (table full)") || line.contains("half-open evicted"),
        "{method}: the flood put the table under pressure: {line}"
    );
}

#[test]
fn a_256_mib_transfer_through_nat_outlives_a_udp_flood_that_fills_the_table() {
    if privileged() {
        transfer_outlives_udp_flood("nat");
    }
}

#[test]
fn a_256_mib_transfer_through_snat_outlives_a_udp_flood_that_fills_the_table() {
    if privileged() {
        transfer_outlives_udp_flood("snat");
    }
}

/// The churn config: nat with lc over the three echo servers, TCP health
/// checks that reset a down backend's flows, short timeouts for closing
/// flows (idle established ones keep the default 900 s), the API on.
fn churn_config(lab: &Lab, members: &[usize]) -> String {
    let mut text = format!(
        "[timeouts]\ntcp_fin = \"2s\"\ntcp_close = \"2s\"\ntcp_syn = \"2s\"\n\n\
         [daemon]\ninterfaces = [\"{LB_INTERFACE}\"]\napi = \"127.0.0.1:9180\"\n\n\
         [[service]]\nname = \"echo\"\nvip = \"{VIP4}\"\nport = {ECHO_PORT}\nmethod = \"nat\"\nscheduler = \"lc\"\n\
         on_backend_down = \"reset\"\n\
         [service.health]\nkind = \"tcp\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\nrise = 1\nfall = 2\n"
    );
    for &i in members {
        text += &format!(
            "[[service.backend]]\naddress = \"{}\"\n",
            lab.servers[i].ipv4
        );
    }
    text
}

/// `count` short connections (greeting read, then closed) over 4 threads;
/// returns how many failed.
fn short_connections(lab: &Lab, count: usize) -> usize {
    let vip = SocketAddr::new(IpAddr::V4(VIP4), ECHO_PORT);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            pnlb_lab::spawn_in_netns(&lab.client, move || {
                (0..count / 4).filter(|_| hold(vip).is_err()).count()
            })
            .unwrap()
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .sum()
}

/// Per backend: (active, inactive) or (established, other).
type Counts = BTreeMap<SocketAddr, (u64, u64)>;

/// Per backend (active, inactive) as the API reports them.
fn api_counts(lab: &Lab) -> Counts {
    let (_, body) = api(lab, "GET", "/api/v1/services/echo", None, None);
    let service: serde_json::Value = serde_json::from_str(&body).expect("service JSON");
    service["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            let address: IpAddr = b["address"].as_str().unwrap().parse().unwrap();
            let port = b["port"].as_u64().unwrap() as u16;
            (
                SocketAddr::new(address, port),
                (
                    b["active_conns"].as_u64().unwrap(),
                    b["inactive_conns"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

/// Per backend (established, other) as the tables hold them, read from
/// the maps of the program attached in the LB namespace.
fn table_counts(lab: &Lab) -> Counts {
    in_netns(&lab.lb, || {
        let ifindex = pnlb_dataplane::loader::ifindex_of(LB_INTERFACE)?;
        pnlb_dataplane::inspect::AttachedTables::of_interface(ifindex)?.flows_per_backend()
    })
    .unwrap()
    .expect("read the attached tables")
}

/// The API's counts next to the tables', once no sweep ran between two
/// reads of the tables (a sweep may expire entries meanwhile).
fn counts_agree(lab: &Lab) -> (Counts, Counts) {
    let mut last = (BTreeMap::new(), BTreeMap::new());
    for _ in 0..10 {
        let before = table_counts(lab);
        let reported = api_counts(lab);
        let after = table_counts(lab);
        if before == after {
            let held: BTreeMap<_, _> = after
                .into_iter()
                .filter(|(a, _)| reported.contains_key(a))
                .collect();
            if held == reported {
                return (reported, held);
            }
            last = (reported, held);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    last
}

#[test]
fn after_churn_resets_and_a_backend_removed_and_re_added_the_counts_are_what_the_tables_hold() {
    if !privileged() {
        return;
    }
    let mut lab = lab_for("nat");
    let path = write_config(&lab, &churn_config(&lab, &[0, 1, 2]));
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    wait_for_log(&daemon, "API on", Duration::from_secs(5));
    let vip = SocketAddr::new(IpAddr::V4(VIP4), ECHO_PORT);
    let started = Instant::now();
    // Connections held open across the churn, on every backend.
    let mut held: Vec<(TcpStream, String)> = in_netns(&lab.client, move || {
        (0..30).map(|_| hold(vip).expect("hold")).collect()
    })
    .unwrap();
    let mut failed = short_connections(&lab, 8_000);
    let alive = held
        .iter()
        .filter(|(stream, _)| echoes(&mut stream.try_clone().unwrap()))
        .count();
    assert_eq!(alive, 30, "held connections outlive 8000 short ones");

    // s1 goes down: its flows are reset by their next packet.
    lab.stop_echo(0);
    wait_for_log(
        &daemon,
        "will be reset by their next packet",
        Duration::from_secs(5),
    );
    let (on_s1, others): (Vec<_>, Vec<_>) = held.drain(..).partition(|(_, server)| server == "s1");
    let reset = on_s1
        .into_iter()
        .filter(|(stream, _)| {
            let mut stream = stream.try_clone().unwrap();
            !echoes(&mut stream)
        })
        .count();
    held = others;
    failed += short_connections(&lab, 4_000);

    // s2 leaves the config: its held flows go on; once they end, its slot is
    // freed; then it comes back (a new slot, a new generation).
    reload(&daemon, &path, &churn_config(&lab, &[0, 2]));
    let (on_s2, others): (Vec<_>, Vec<_>) = held.drain(..).partition(|(_, server)| server == "s2");
    held = others;
    let s2_survived = on_s2
        .into_iter()
        .filter(|(stream, _)| {
            let mut stream = stream.try_clone().unwrap();
            echoes(&mut stream)
        })
        .count();
    failed += short_connections(&lab, 4_000);
    wait_for_log(&daemon, "slot freed", Duration::from_secs(20));
    reload(&daemon, &path, &churn_config(&lab, &[0, 1, 2]));
    failed += short_connections(&lab, 4_000);

    let (reported, held_now) = counts_agree(&lab);
    println!(
        "lc churn: 20000 short connections ({failed} failed) in {:.1?}, {reset} held connections reset with s1, \
         {s2_survived} kept while s2 was removed\n  API (active, inactive): {reported:?}\n  tables:                 {held_now:?}",
        started.elapsed()
    );
    assert_eq!(reported, held_now, "the counts are what the tables hold");
    assert!(
        held_now.values().any(|c| c.0 > 0),
        "held connections are active: {held_now:?}"
    );

    // Everything closes and expires: every count returns to 0.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (reported, tables) = counts_agree(&lab);
        if reported.values().all(|c| *c == (0, 0)) && tables.values().all(|c| *c == (0, 0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counts stay up: API {reported:?}, tables {tables:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, output) = daemon.stop(Duration::from_secs(10));
    println!("  after expiry: all 0; {}", table_line(&output));
    assert!(failed < 200, "{failed} of 20000 short connections failed");
}

/// The scheduling policy (`/proc/PID/task/TID/stat` field 41) of each of
/// a process's threads, by thread name.
fn thread_policies(pid: i32) -> BTreeMap<String, i32> {
    let mut policies = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let path = task.expect("task").path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        // Fields after the name (which may hold spaces) start at field 3.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if let Some(policy) = after_name.split_whitespace().nth(41 - 3) {
            policies.insert(comm.trim().to_string(), policy.parse().unwrap_or(-1));
        }
    }
    policies
}

/// Expiry walks the tables beside the traffic's processes: its thread is
/// in the idle scheduling class, so a process the traffic wakes takes the
/// core from it at once (docs/benchmarks.md, the c=1 spread).
#[test]
fn the_expiry_thread_runs_in_the_idle_scheduling_class() {
    if !privileged() {
        return;
    }
    let lab = lab_for("dr");
    let path = write_config(&lab, &lab.config("dr", ECHO_PORT, &[0, 1, 2]));
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    wait_for_log(&daemon, "forwarding", Duration::from_secs(10));
    let policies = thread_policies(daemon.pid());
    println!("threads and their policies: {policies:?}");
    assert_eq!(
        policies.get("pnlb-sweep"),
        Some(&libc::SCHED_IDLE),
        "{policies:?}"
    );
    assert_eq!(
        policies.get("pnlb"),
        Some(&libc::SCHED_OTHER),
        "the daemon loop stays in the normal class: {policies:?}"
    );
}
