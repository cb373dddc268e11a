//! A data plane that outlives its daemon (docs/operations.md): with
//! daemon.pin_dir on a bpffs, `pnlb run` stopped with SIGTERM, and then
//! killed with SIGKILL, leaves XDP forwarding; the next `pnlb run` takes it
//! over, and so does a binary built from other sources (an upgrade; the
//! `upgrade-variant` build scripts/test.sh makes) and this one again after
//! it (a rollback). 40 idle established connections per service (dr and nat with rr,
//! snat and tun with maglev) each answer afterwards, on their original
//! backend (another would reset them), and a stream through the VIP loses
//! nothing. `pnlb down` then removes it all.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pnlb_lab::{in_netns, Lab, LabProcess, LabSpec, ECHO_PORT, LB_INTERFACE, VIP4, VIP6};
use support::*;

const IDLE: usize = 40;

/// An established connection: its stream and the server that greeted it.
struct Idle {
    stream: TcpStream,
    server: String,
}

/// A connection through the VIP, greeted by its server (in the client's
/// namespace).
fn connect_greeted(target: SocketAddr) -> Idle {
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(3))
        .expect("connect through the VIP");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut greeting = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut greeting)
        .expect("greeting");
    Idle {
        stream,
        server: greeting.trim().to_string(),
    }
}

fn open_idle(lab: &Lab, target: SocketAddr) -> Vec<Idle> {
    in_netns(&lab.client, move || {
        (0..IDLE).map(|_| connect_greeted(target)).collect()
    })
    .expect("client namespace")
}

/// How many of the idle connections echo a message back.
fn still_answering(idle: &mut [Idle]) -> usize {
    let mut answering = 0;
    for c in idle.iter_mut() {
        let message = b"still there?\n";
        let mut answer = [0u8; 13];
        if c.stream.write_all(message).is_ok()
            && c.stream.read_exact(&mut answer).is_ok()
            && answer == *message
        {
            answering += 1;
        }
    }
    answering
}

/// A stream of numbered lines echoed back, until stopped: (sent, wrong).
fn start_stream(
    lab: &Lab,
    target: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64)> {
    let mut stream = open_idle_one(lab, target);
    std::thread::spawn(move || {
        let (mut sent, mut wrong) = (0u64, 0u64);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let line = format!("{sent:012}\n");
            let mut back = [0u8; 13];
            if stream.write_all(line.as_bytes()).is_err() || stream.read_exact(&mut back).is_err() {
                wrong += 1;
                break;
            }
            if back != *line.as_bytes() {
                wrong += 1;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        (sent, wrong)
    })
}

fn open_idle_one(lab: &Lab, target: SocketAddr) -> TcpStream {
    in_netns(&lab.client, move || connect_greeted(target).stream).expect("client namespace")
}

fn services_config(lab: &mut Lab, nat: bool) -> String {
    let pin_dir = lab.bpffs().expect("a bpffs for the lab");
    let mut text = format!(
        "[daemon]\ninterfaces = [\"{LB_INTERFACE}\"]\npin_dir = \"{}\"\n",
        pin_dir.display()
    );
    let services: &[(&str, IpAddr, u16, &str, &str)] = if nat {
        &[("nat-rr", IpAddr::V4(VIP4), ECHO_PORT, "nat", "rr")]
    } else {
        &[
            ("dr-rr", IpAddr::V4(VIP4), ECHO_PORT, "dr", "rr"),
            ("snat-maglev", IpAddr::V4(VIP4), 8000, "snat", "maglev"),
            ("tun-maglev", IpAddr::V6(VIP6), ECHO_PORT, "tun", "maglev"),
        ]
    };
    for (name, vip, port, method, scheduler) in services {
        text += &format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\nmethod = \"{method}\"\nscheduler = \"{scheduler}\"\n"
        );
        if *method == "snat" {
            text += "snat_addresses = [\"10.77.1.2\"]\n";
        }
        for server in &lab.servers {
            let address = if vip.is_ipv4() {
                IpAddr::V4(server.ipv4)
            } else {
                IpAddr::V6(server.ipv6)
            };
            text += &format!("[[service.backend]]\naddress = \"{address}\"\nport = {ECHO_PORT}\n");
        }
    }
    text
}

fn restart_keeps_every_flow(mut lab: Lab, nat: bool, targets: &[(&str, SocketAddr)]) {
    let text = services_config(&mut lab, nat);
    let path = write_config(&lab, &text);
    let mut daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    // A second daemon in the namespace would take the data plane over.
    let second = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.lb, PNLB, "run", "--config"])
        .arg(&path)
        .output()
        .expect("a second pnlb run");
    let said = String::from_utf8_lossy(&second.stderr).to_string();
    assert!(
        !second.status.success() && said.contains("another `pnlb run`"),
        "a second daemon is refused: {said}"
    );
    let mut idle: Vec<(String, Vec<Idle>)> = targets
        .iter()
        .map(|(name, target)| (name.to_string(), open_idle(&lab, *target)))
        .collect();
    for (name, connections) in &idle {
        let servers: std::collections::BTreeSet<&str> =
            connections.iter().map(|c| c.server.as_str()).collect();
        println!("{name}: {IDLE} idle connections over {servers:?}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stream = start_stream(&lab, targets[0].1, stop.clone());

    // Restarts, a kill, then an upgrade to a binary built from other
    // sources and a rollback to this one.
    let variant = upgrade_variant();
    let steps = [
        ("SIGTERM, restart", libc::SIGTERM, PNLB),
        ("SIGKILL, restart", libc::SIGKILL, PNLB),
        ("upgrade", libc::SIGTERM, variant.as_str()),
        ("rollback", libc::SIGTERM, PNLB),
    ];
    let own_program = attached_program(&lab);
    println!("this build's program: {own_program:?}");
    for (how, signal, binary) in steps {
        let stopped_at = Instant::now();
        daemon.signal(signal);
        let (status, output) = daemon.stop(Duration::from_secs(10));
        println!("{how}: pnlb run exited ({status:?})");
        if signal == libc::SIGTERM {
            assert!(
                output.iter().any(|l| l.contains("keeps forwarding")),
                "says the data plane stays: {output:?}"
            );
        }
        assert!(
            xdp_attached(&lab),
            "{how}: XDP stays attached without a daemon"
        );
        // Without a daemon, established flows go on.
        for (name, connections) in &mut idle {
            let answering = still_answering(connections);
            println!("{how}, no daemon: {name}: {answering}/{IDLE} idle connections answer");
            assert_eq!(answering, IDLE, "{how}, no daemon: {name}");
        }
        daemon = lab.start_pnlb(binary, &path).expect("pnlb run again");
        let adopted = daemon
            .output()
            .into_iter()
            .find(|l| l.contains("adopting the data plane"))
            .unwrap_or_default();
        let program = attached_program(&lab);
        println!(
            "{how}: {binary} took over {:.1} s after the stop, program {program:?}: {adopted}",
            stopped_at.elapsed().as_secs_f64()
        );
        assert!(!adopted.is_empty(), "{how}: the new daemon adopts");
        // The program's tag is a hash of its instructions: the variant's
        // differs, a restart of the same build keeps it.
        let from_variant = binary == variant;
        assert_eq!(
            program.as_ref().map(|p| &p.tag) != own_program.as_ref().map(|p| &p.tag),
            from_variant,
            "{how}: the attached program is {binary}'s"
        );
        for (name, connections) in &mut idle {
            let answering = still_answering(connections);
            println!("{how}, taken over: {name}: {answering}/{IDLE} idle connections answer on their own backend");
            assert_eq!(answering, IDLE, "{how}, after takeover: {name}");
        }
    }
    // The variant's own map stayed pinned after the rollback (this build
    // does not know it); `pnlb down` below removes it with the rest.
    let pin_dir = lab.bpffs().expect("the lab's bpffs");
    let variant_map = std::fs::read_dir(&pin_dir)
        .expect("the pin dir")
        .filter_map(|instance| instance.ok())
        .any(|instance| instance.path().join("pnlb_variant_packets").exists());
    assert!(variant_map, "the variant pinned its map");
    stop.store(true, Ordering::Relaxed);
    let (sent, wrong) = stream.join().expect("stream");
    println!(
        "stream through {}: {sent} lines echoed, {wrong} lost or wrong",
        targets[0].0
    );
    assert!(sent > 100, "the stream ran throughout");
    assert_eq!(wrong, 0, "the stream lost nothing");

    // `pnlb down` removes it: XDP detached.
    let (status, _) = daemon.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()));
    let down = pnlb_down(&mut lab);
    let said = String::from_utf8_lossy(&down.stdout).trim().to_string();
    println!("pnlb down: {said}");
    assert!(
        down.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!xdp_attached(&lab), "pnlb down detaches");
}

#[test]
fn dr_snat_and_tun_flows_outlive_a_stopped_and_a_killed_daemon() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::echo()).expect("lab");
    let decaps: Vec<LabProcess> = (0..lab.servers.len())
        .map(|i| lab.start_decap(PNLB, i).expect("pnlb decap"))
        .collect();
    restart_keeps_every_flow(
        lab,
        false,
        &[
            ("snat-maglev", SocketAddr::new(IpAddr::V4(VIP4), 8000)),
            ("dr-rr", SocketAddr::new(IpAddr::V4(VIP4), ECHO_PORT)),
            ("tun-maglev", SocketAddr::new(IpAddr::V6(VIP6), ECHO_PORT)),
        ],
    );
    drop(decaps);
}

#[test]
fn nat_flows_outlive_a_stopped_and_a_killed_daemon() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::echo_via_lb()).expect("lab");
    restart_keeps_every_flow(
        lab,
        true,
        &[("nat-rr", SocketAddr::new(IpAddr::V4(VIP4), ECHO_PORT))],
    );
}

/// `systemctl restart pnlb` as far as the lab can run it (there is no
/// systemd in it): the packaged unit's ExecStartPre and ExecStart, under its
/// capability bounding set, stopped with its KillSignal within its
/// TimeoutStopSec, and started again. The new daemon, with only the unit's
/// privileges, adopts the pinned data plane, and 40 idle nat connections
/// answer on their own backend.
#[test]
fn a_restart_of_the_packaged_systemd_unit_keeps_every_flow() {
    if !privileged() {
        return;
    }
    let mut lab = Lab::up(&LabSpec::echo_via_lb()).expect("lab");
    let text = services_config(&mut lab, true);
    let path = write_config(&lab, &text).display().to_string();
    let bounding = bounding_set(&unit_capabilities());
    let unit_command = |directive: &str| -> Vec<String> {
        let line = unit_directive(directive).unwrap_or_else(|| panic!("the unit has {directive}="));
        line.replace("/usr/sbin/pnlb", PNLB)
            .replace("/etc/pnlb/pnlb.toml", &path)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let kill_signal = match unit_directive("KillSignal").as_deref() {
        None | Some("SIGTERM") => libc::SIGTERM,
        Some(other) => panic!("the unit stops with {other}; this test sends SIGTERM"),
    };
    let stop_timeout = unit_directive("TimeoutStopSec")
        .and_then(|t| t.strip_suffix('s')?.parse().ok())
        .map_or(Duration::from_secs(90), Duration::from_secs);
    let start = || {
        let check = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.lb, "setpriv", &bounding, "--"])
            .args(unit_command("ExecStartPre"))
            .output()
            .expect("ExecStartPre");
        assert!(
            check.status.success(),
            "ExecStartPre: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let exec = unit_command("ExecStart");
        let args: Vec<&str> = [bounding.as_str(), "--"]
            .into_iter()
            .chain(exec.iter().map(String::as_str))
            .collect();
        let mut daemon = LabProcess::spawn(&lab.lb, "pnlb.service", "setpriv", &args)
            .expect("spawn the unit's ExecStart");
        daemon
            .wait_for_line("forwarding", Duration::from_secs(30))
            .expect("the unit's ExecStart forwards");
        daemon
    };

    let daemon = start();
    let target = SocketAddr::new(IpAddr::V4(VIP4), ECHO_PORT);
    let mut idle = open_idle(&lab, target);
    daemon.signal(kill_signal);
    let stopped_at = Instant::now();
    let (status, _) = daemon.stop(stop_timeout);
    println!(
        "systemctl stop: signal {kill_signal}, exited {:?} after {:.2} s (TimeoutStopSec {} s)",
        status,
        stopped_at.elapsed().as_secs_f64(),
        stop_timeout.as_secs()
    );
    assert!(status.is_some_and(|s| s.success()), "a clean stop");
    let daemon = start();
    let adopted = daemon
        .output()
        .into_iter()
        .find(|l| l.contains("adopting the data plane"))
        .unwrap_or_default();
    println!("systemctl start: {adopted}");
    assert!(!adopted.is_empty(), "the unit's daemon adopts");
    let answering = still_answering(&mut idle);
    println!(
        "after the restart: {answering}/{IDLE} idle nat connections answer on their own backend"
    );
    assert_eq!(answering, IDLE);

    // Tables changed by the unit's daemon with only its privileges (a
    // table map can be opened by its id only with CAP_SYS_ADMIN): a
    // backend removed, the service removed, and the service back.
    let mut daemon = daemon;
    let greeted = |lab: &Lab| -> BTreeSet<String> {
        open_idle(lab, target)
            .into_iter()
            .map(|c| c.server)
            .collect()
    };
    let every_server = greeted(&lab);
    let last = lab.servers.last().expect("servers").ipv4;
    let without_last = text.replace(
        &format!("[[service.backend]]\naddress = \"{last}\"\nport = {ECHO_PORT}\n"),
        "",
    );
    let without_service = text[..text.find("\n[[service]]").expect("a service")].to_string();
    let mut reloads = 0;
    let mut reload = |daemon: &mut LabProcess, text: &str| {
        std::fs::write(&path, text).expect("write config");
        daemon.signal(libc::SIGHUP);
        reloads += 1;
        let deadline = Instant::now() + Duration::from_secs(15);
        while daemon
            .output()
            .iter()
            .filter(|l| l.contains("reloaded"))
            .count()
            < reloads
        {
            assert!(
                Instant::now() < deadline,
                "reload {reloads} not applied: {:#?}",
                daemon.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    reload(&mut daemon, &without_last);
    let fewer = greeted(&lab);
    reload(&mut daemon, &without_service);
    let refused = in_netns(&lab.client, move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_err()
    })
    .expect("client namespace");
    reload(&mut daemon, &text);
    let back = greeted(&lab);
    println!(
        "under the unit's privileges: servers {every_server:?}; {last} removed: {fewer:?}; the service removed: a new connection refused: {refused}; back: {back:?}"
    );
    let failed: Vec<String> = daemon
        .output()
        .into_iter()
        .filter(|l| l.contains("pnlb_table") || l.contains("not permitted"))
        .collect();
    assert_eq!(failed, Vec::<String>::new(), "table writes refused");
    assert_eq!(fewer.len() + 1, every_server.len(), "{fewer:?}");
    assert!(fewer.is_subset(&every_server));
    assert!(refused, "no service, no connection");
    assert_eq!(back, every_server);
    let (status, _) = daemon.stop(stop_timeout);
    assert!(status.is_some_and(|s| s.success()));
    let down = pnlb_down(&mut lab);
    assert!(down.status.success());
}

/// daemon.unattended_limit bounds how long a data plane takes new flows
/// with nobody checking its backends: after a kill -9 and that long, new
/// connections are refused (counted), established ones still answer, and
/// the next daemon takes new flows again at once.
#[test]
fn a_data_plane_left_unattended_past_its_limit_refuses_new_flows_only() {
    if !privileged() {
        return;
    }
    let mut lab = Lab::up(&LabSpec::echo_via_lb()).expect("lab");
    let text = services_config(&mut lab, true).replacen(
        '\n',
        "\nunattended_limit = \"10s\"\napi = \"127.0.0.1:9180\"\n",
        1,
    );
    let path = write_config(&lab, &text);
    let target = SocketAddr::new(IpAddr::V4(VIP4), ECHO_PORT);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let mut idle = open_idle(&lab, target);
    daemon.signal(libc::SIGKILL);
    daemon.stop(Duration::from_secs(10));
    let killed = Instant::now();
    let new_connection = |lab: &Lab| {
        in_netns(&lab.client, move || {
            TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_ok()
        })
        .expect("client namespace")
    };
    assert!(
        new_connection(&lab),
        "within the limit, new flows are taken"
    );
    std::thread::sleep(Duration::from_secs(11).saturating_sub(killed.elapsed()));
    let refused = !new_connection(&lab);
    let answering = still_answering(&mut idle);
    println!(
        "{:.0} s after kill -9 (limit 10 s): a new connection refused: {refused}; {answering}/{IDLE} idle connections answer",
        killed.elapsed().as_secs_f64()
    );
    assert!(refused, "past the limit, a new flow is refused");
    assert_eq!(answering, IDLE, "established flows go on");

    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run again");
    assert!(new_connection(&lab), "a daemon again: new flows are taken");
    // The data plane takes new flows before the API listens.
    wait_for_log(&daemon, "API on", Duration::from_secs(10));
    let counted = reason_counter(&lab, "drop_unattended");
    println!("after the restart: drop_unattended = {counted}");
    assert!(counted > 0, "the refusals are counted");
    assert_eq!(still_answering(&mut idle), IDLE);
    drop(daemon);
    pnlb_down(&mut lab);
}

/// `pnlb down` of the lab's pinned data plane.
/// The upgrade test's second build of pnlb, next to this one (scripts/test.sh
/// builds it before the tests run: a build from inside `cargo test` would
/// wait for the lock cargo holds on the target directory).
fn upgrade_variant() -> String {
    let path = std::path::Path::new(PNLB).with_file_name("pnlb-upgrade-variant");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p pnlb --bin pnlb --features upgrade-variant && cp target/debug/pnlb target/debug/pnlb-upgrade-variant` (scripts/test.sh does)",
        path.display()
    );
    path.display().to_string()
}

/// The XDP program attached to the lab's LB interface: its id and tag (a
/// hash of its instructions).
#[derive(Debug, PartialEq)]
struct AttachedProgram {
    id: u64,
    tag: String,
}

fn attached_program(lab: &Lab) -> Option<AttachedProgram> {
    let out = std::process::Command::new("ip")
        .args(["-n", &lab.lb, "-d", "-j", "link", "show", LB_INTERFACE])
        .output()
        .expect("ip link show");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let prog = links.get(0)?.get("xdp")?.get("prog")?;
    Some(AttachedProgram {
        id: prog.get("id")?.as_u64()?,
        tag: prog.get("tag")?.as_str()?.to_string(),
    })
}

fn pnlb_down(lab: &mut Lab) -> std::process::Output {
    let pin_dir = lab.bpffs().expect("the lab's bpffs");
    std::process::Command::new("ip")
        .args(["netns", "exec", &lab.lb, PNLB, "down", "--pin-dir"])
        .arg(&pin_dir)
        .output()
        .expect("pnlb down")
}
