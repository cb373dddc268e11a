//! Failover of a pair in the lab (two LB namespaces, the router sending the
//! VIPs to the floating address the active one holds): the active node
//! killed, its link cut, and its return with preemption, each while a
//! 1 GiB download and a stream of short requests run through the VIP; a
//! forged advert changes nothing. For every method: dr and tun flows keep
//! their server because both nodes compute the same Maglev table; nat and
//! snat flows keep their translations (and snat its ports) because the
//! active node streams its connection table to the backup.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use pnlb_lab::{spawn_in_netns, Lab, LabProcess, LabSpec, BULK_PORT, LB_INTERFACE, VIP4};
use support::*;

const GIB: u64 = 1 << 30;

fn pair_config(lab: &Lab, method: &str, node: u8, priority: u8) -> std::path::PathBuf {
    let everyone: Vec<usize> = (0..lab.servers.len()).collect();
    let base = if method == "tun" {
        lab.tun_config("ipip", 80, &everyone)
    } else {
        lab.config(method, 80, &everyone)
    };
    let bulk = base
        .replace("port = 80", &format!("port = {BULK_PORT}"))
        .replace("name = \"web", "name = \"bulk");
    let bulk_services = bulk.split_once("\n\n").map_or("", |(_, s)| s);
    // snat's source address moves with mastership: the floating one.
    let base = base
        .replace(
            "snat_addresses = [\"10.77.1.2\"]",
            "snat_addresses = [\"10.77.1.254\"]",
        )
        .replace(
            "snat_addresses = [\"fd77:1::2\"]",
            "snat_addresses = [\"fd77:1::254\"]",
        );
    let bulk_services = bulk_services
        .replace(
            "snat_addresses = [\"10.77.1.2\"]",
            "snat_addresses = [\"10.77.1.254\"]",
        )
        .replace(
            "snat_addresses = [\"fd77:1::2\"]",
            "snat_addresses = [\"fd77:1::254\"]",
        );
    write_ha_config(lab, &format!("{base}\n{bulk_services}"), node, priority)
}

/// A 1 GiB download through the VIP's bulk service, checked byte for byte.
fn long_download(
    lab: &Lab,
) -> std::thread::JoinHandle<Result<Result<(), String>, pnlb_lab::LabError>> {
    spawn_in_netns(&lab.client, || {
        let vip = SocketAddr::new(IpAddr::V4(VIP4), BULK_PORT);
        let mut stream =
            TcpStream::connect_timeout(&vip, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let done = pnlb_lab::bulk::download(&mut stream, GIB, 11)
            .map_err(|e| format!("the download broke: {e}"))?;
        if done.received != GIB || done.client_checksum != done.server_checksum {
            return Err(format!("{done:?}: not the bytes the server sent"));
        }
        Ok(())
    })
    .expect("client namespace")
}

/// Runs `fault` in the middle of a long download and short requests;
/// returns the takeover time (fault until `taker` logs it is master).
fn through(lab: &Lab, what: &str, taker: &LabProcess, fault: impl FnOnce()) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let requests = short_requests(lab, stop.clone(), Duration::from_secs(120));
    let download = long_download(lab);
    std::thread::sleep(Duration::from_millis(800));
    let masters_before = taker
        .output()
        .iter()
        .filter(|l| l.contains("ha: MASTER"))
        .count();
    let at = Instant::now();
    fault();
    let deadline = Instant::now() + Duration::from_secs(15);
    while taker
        .output()
        .iter()
        .filter(|l| l.contains("ha: MASTER"))
        .count()
        == masters_before
    {
        assert!(
            Instant::now() < deadline,
            "{what}: no takeover: {:?}",
            taker.output()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let takeover = at.elapsed();
    download
        .join()
        .unwrap()
        .unwrap()
        .unwrap_or_else(|err| panic!("{what}: {err}"));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = requests.join().unwrap().unwrap();
    eprintln!(
        "{what}: takeover after {takeover:?}; short requests: {ok} answered, {failed} failed"
    );
    assert!(ok > 20, "{what}: only {ok} requests answered");
    // Each failure is a second without an answer (the connect timeout):
    // a takeover's gap is well under one; more than three is an outage.
    assert!(failed <= 3, "{what}: {failed} requests failed");
    // IPv6 follows the floating fd77:1::254 (unsolicited neighbour advertisement).
    let v6 = pnlb_lab::in_netns(&lab.client, || request(IpAddr::V6(pnlb_lab::VIP6))).unwrap();
    if v6.is_err() {
        taker.signal(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert!(
        v6.is_ok(),
        "{what}: IPv6 through the VIP after the takeover: {v6:?}; {:?}",
        taker.output()
    );
    takeover
}

fn failover_keeps_transfers_going(method: &str) {
    let lab = Lab::up(&LabSpec {
        ha: true,
        echo: true,
        ..LabSpec::default()
    })
    .expect("lab");
    let decaps: Vec<LabProcess> = if method == "tun" {
        (0..lab.servers.len())
            .map(|i| lab.start_decap(PNLB, i).unwrap())
            .collect()
    } else {
        Vec::new()
    };
    if method == "nat" {
        // nat replies go back through the pair: via its floating address.
        lab.route_servers_via(pnlb_lab::Gateway::Floating).unwrap();
    }
    let lb2 = lab.lb2.clone().unwrap();
    let config1 = pair_config(&lab, method, 1, 150);
    let config2 = pair_config(&lab, method, 2, 100);
    let mut node1 = start_ha_node(&lab.lb, &config1);
    node1
        .wait_for_line("ha: MASTER", Duration::from_secs(10))
        .expect("node 1 elected");
    let node2 = start_ha_node(&lb2, &config2);
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        !node2.output().iter().any(|l| l.contains("ha: MASTER")),
        "node 2 stays backup"
    );
    // The backup asked for, and got, the active node's table.
    wait_for_log(&node2, "full table received", Duration::from_secs(5));
    wait_for_log(&node1, "sent full dump", Duration::from_secs(5));
    let answer = pnlb_lab::in_netns(&lab.client, || request(IpAddr::V4(VIP4))).unwrap();
    assert!(answer.is_ok(), "{answer:?}: {:?}", node1.output());

    // A forged advert (wrong key, top priority, claiming node 1's address)
    // changes nothing.
    spawn_in_netns(&lab.client, || {
        let forged = forged_advert();
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..20 {
            socket.send_to(&forged, "10.77.1.3:8112").unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !node2.output().iter().any(|l| l.contains("ha: MASTER")),
        "{:?}",
        node2.output()
    );
    wait_for_log(&node2, "bad authentication", Duration::from_secs(2));

    // 1. The active node's process is killed.
    let killed = through(
        &lab,
        &format!("{method}: kill -9 of the active node"),
        &node2,
        || {
            node1.signal(libc::SIGKILL);
        },
    );
    node1.stop(Duration::from_secs(5));
    // A killed daemon leaves its program and addresses behind (as a
    // SIGKILLed keepalived does); an operator would clean up before a restart.
    pnlb_lab::netns::ip(&lab.lb, &["link", "set", LB_INTERFACE, "xdp", "off"]).unwrap();
    for floating in ["10.77.1.254/32", "10.77.100.1/32"] {
        let _ = pnlb_lab::netns::ip(&lab.lb, &["addr", "del", floating, "dev", LB_INTERFACE]);
    }
    let _ = pnlb_lab::netns::ip(
        &lab.lb,
        &[
            "-6",
            "addr",
            "flush",
            "dev",
            LB_INTERFACE,
            "scope",
            "global",
        ],
    );
    pnlb_lab::netns::ip(
        &lab.lb,
        &[
            "-6",
            "addr",
            "add",
            "fd77:1::2/64",
            "dev",
            LB_INTERFACE,
            "nodad",
        ],
    )
    .unwrap();

    // 2. Node 1 returns and preempts node 2 after its delay.
    let node1 = start_ha_node(&lab.lb, &config1);
    let preempted = through(
        &lab,
        &format!("{method}: node 1 returns and preempts"),
        &node1,
        || {},
    );
    wait_for_log(&node2, "ha: BACKUP", Duration::from_secs(5));

    // 3. The active node's link is cut.
    let cut = through(
        &lab,
        &format!("{method}: the active node's link cut"),
        &node2,
        || {
            pnlb_lab::netns::ip(&lab.lb, &["link", "set", LB_INTERFACE, "down"]).unwrap();
        },
    );
    eprintln!("{method}: takeover times: kill {killed:?}, preempt (incl. 2 s delay) {preempted:?}, link cut {cut:?}");
    assert!(
        killed < Duration::from_secs(2) && cut < Duration::from_secs(2),
        "kill {killed:?}, cut {cut:?}"
    );
    node1.stop(Duration::from_secs(5));
    node2.stop(Duration::from_secs(5));
    drop(decaps);
}

/// An advert for group 7 from 10.77.1.2 at priority 254, signed with the wrong key.
fn forged_advert() -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    bytes[0..4].copy_from_slice(b"PNHA");
    bytes[4] = 1;
    bytes[5] = 7;
    bytes[6] = 254;
    bytes[7] = 1;
    bytes[8..24].copy_from_slice(
        &std::net::Ipv4Addr::new(10, 77, 1, 2)
            .to_ipv6_mapped()
            .octets(),
    );
    bytes[24..32].copy_from_slice(&u64::MAX.to_be_bytes());
    bytes[32..].copy_from_slice(&[0x5a; 32]);
    bytes
}

#[test]
fn dr_failover_keeps_a_long_download_going_through_kill_preemption_and_link_cut() {
    if !privileged() {
        return;
    }
    failover_keeps_transfers_going("dr");
}

#[test]
fn tun_failover_keeps_a_long_download_going_through_kill_preemption_and_link_cut() {
    if !privileged() {
        return;
    }
    failover_keeps_transfers_going("tun");
}

#[test]
fn nat_failover_keeps_a_long_download_going_through_kill_preemption_and_link_cut() {
    if !privileged() {
        return;
    }
    failover_keeps_transfers_going("nat");
}

#[test]
fn snat_failover_keeps_a_long_download_going_through_kill_preemption_and_link_cut() {
    if !privileged() {
        return;
    }
    failover_keeps_transfers_going("snat");
}

/// A backup that starts after flows ended on the active node, and then
/// takes over having carried no traffic and never sent to its router.
/// snat: the full dump carries the ended flows' rests (the SNAT ports the
/// servers may still hold in TIME_WAIT). nat and snat: the first new
/// connections after the takeover are answered, their replies translated
/// in XDP towards a router the daemon resolved beforehand (the kernel
/// could not forward them: their source, the VIP, is its own address on
/// the node that holds it). Then the node's kernel loses its entry for the
/// router (as neighbour garbage collection does between two of the
/// daemon's probes): replies go on, to the router's last known MAC.
fn a_fresh_backup_takes_over(method: &str) {
    const REQUESTS: u64 = 6;
    let lab = Lab::up(&LabSpec {
        ha: true,
        ..LabSpec::default()
    })
    .expect("lab");
    if method == "nat" {
        // nat replies go back through the pair: via its floating address.
        lab.route_servers_via(pnlb_lab::Gateway::Floating).unwrap();
    }
    // Closed flows live tcp_close (5 s, one sweep period: the first sweep
    // after the requests still counts them, a later one ends them); the
    // API tells the sweeps' counts.
    let with_api_and_short_close = |path: std::path::PathBuf| {
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replacen('\n', "\napi = \"127.0.0.1:9180\"\n", 1);
        std::fs::write(&path, format!("[timeouts]\ntcp_close = \"5s\"\n\n{text}")).unwrap();
        path
    };
    let config1 = with_api_and_short_close(pair_config(&lab, method, 1, 150));
    let config2 = with_api_and_short_close(pair_config(&lab, method, 2, 100));
    let mut node1 = start_ha_node(&lab.lb, &config1);
    node1
        .wait_for_line("ha: MASTER", Duration::from_secs(10))
        .expect("node 1 elected");
    for n in 0..REQUESTS {
        let answer = pnlb_lab::in_netns(&lab.client, || request(IpAddr::V4(VIP4))).unwrap();
        assert!(
            answer.is_ok(),
            "request {n}: {answer:?}: {:?}",
            node1.output()
        );
    }
    // Every flow closed, swept and (snat) put to rest on node 1 before
    // node 2 first starts: a sweep counts them, a later one none. The
    // sweep runs at idle priority, so a busy machine may hold it back.
    let entries = || status_in(&lab.lb)["connections"]["entries"].as_u64();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = false;
    while !(seen && entries() == Some(0)) {
        seen |= entries().is_some_and(|n| n > 0);
        assert!(Instant::now() < deadline, "the flows were never swept");
        std::thread::sleep(Duration::from_millis(200));
    }

    let lb2 = lab.lb2.clone().unwrap();
    let node2 = start_ha_node(&lb2, &config2);
    let received = wait_for_log(&node2, "full table received", Duration::from_secs(10));
    let sent = wait_for_log(&node1, "sent full dump", Duration::from_secs(5));
    eprintln!("{method}: node 1: {sent}\n{method}: node 2: {received}");
    let count_before = |line: &str, words: &str| -> u64 {
        line.split(words)
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count before {words:?} in {line:?}"))
    };
    let rests = if method == "snat" { REQUESTS } else { 0 };
    assert!(
        count_before(&sent, " SNAT rest(s) in ") >= rests,
        "node 1 sent every rest: {sent}"
    );
    assert!(
        count_before(&received, " SNAT rest(s) taken on") >= rests,
        "node 2 took every rest on: {received}"
    );

    // Node 1 steps down; node 2, idle so far (a second and a half up: its
    // first neighbour round is within a second), takes over.
    std::thread::sleep(Duration::from_millis(1500));
    node1.signal(libc::SIGTERM);
    wait_for_log(&node2, "ha: MASTER", Duration::from_secs(5));
    let taken_over = Instant::now();
    let answers: Vec<Result<String, String>> = (0..3)
        .map(|_| pnlb_lab::in_netns(&lab.client, || request(IpAddr::V4(VIP4))).unwrap())
        .collect();
    eprintln!(
        "{method}: the first three connections after the takeover, within {:?}: {answers:?}",
        taken_over.elapsed()
    );
    assert!(
        answers.iter().all(Result::is_ok),
        "{answers:?}: {:?}",
        node2.output()
    );

    pnlb_lab::netns::ip(&lb2, &["neigh", "del", "10.77.1.1", "dev", LB_INTERFACE]).unwrap();
    let forgotten = Instant::now();
    let answers: Vec<Result<String, String>> = (0..3)
        .map(|_| pnlb_lab::in_netns(&lab.client, || request(IpAddr::V4(VIP4))).unwrap())
        .collect();
    let within = forgotten.elapsed();
    let sent = status_in(&lb2)["reasons"]["fwd_last_known_neigh"].as_u64();
    eprintln!(
        "{method}: three connections once node 2's kernel forgot the router, within {within:?}: \
         {answers:?}; replies sent to its last known MAC: {sent:?}"
    );
    assert!(
        answers.iter().all(Result::is_ok),
        "{answers:?}: {:?}",
        node2.output()
    );
    assert!(sent.is_some_and(|n| n > 0), "{sent:?}");
    node1.stop(Duration::from_secs(5));
    node2.stop(Duration::from_secs(5));
}

#[test]
fn snat_rests_reach_a_fresh_backup_which_then_serves_at_once_on_takeover() {
    if !privileged() {
        return;
    }
    a_fresh_backup_takes_over("snat");
}

#[test]
fn nat_a_fresh_backup_serves_at_once_on_takeover() {
    if !privileged() {
        return;
    }
    a_fresh_backup_takes_over("nat");
}
