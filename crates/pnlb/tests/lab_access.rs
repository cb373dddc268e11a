//! Per-service access rules in the lab (issue 18): short requests from an
//! allowed client address run without a failure while another address of
//! the same client, denied, gets no answer; a reload that lifts the rule
//! lets it in, an API edit that puts it back shuts it out again, the load
//! going on throughout.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod support;

use pnlb_lab::{Lab, LabSpec, VIP4};
use support::*;

const DENIED: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 99);

/// One request from the client namespace, from `source` (None: the
/// client's own address); whether it was answered.
fn answered(lab: &Lab, source: Option<Ipv4Addr>) -> bool {
    let mut command = std::process::Command::new("ip");
    command.args([
        "netns",
        "exec",
        &lab.client,
        "curl",
        "-s",
        "-m",
        "2",
        "-o",
        "/dev/null",
    ]);
    command.args(["-w", "%{http_code}"]);
    if let Some(source) = source {
        command.args(["--interface", &source.to_string()]);
    }
    command
        .arg(format!("http://{VIP4}/"))
        .output()
        .is_ok_and(|out| out.stdout == b"200")
}

/// Requests from the client's own address until `stop` or `limit`:
/// (answered, failed).
fn load(lab: &Lab, stop: &AtomicBool, limit: Duration) -> (u32, u32) {
    let (mut ok, mut failed) = (0u32, 0u32);
    let deadline = std::time::Instant::now() + limit;
    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
        if answered(lab, None) {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    (ok, failed)
}

/// A reason's count on the exit summary's "Not forwarded" line.
fn not_forwarded(output: &[String], reason: &str) -> u64 {
    output
        .iter()
        .find(|l| l.starts_with("Not forwarded"))
        .and_then(|l| l.split(&format!("{reason} ")).nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `count` spoofed SYNs from 10.77.0.98 to the VIP's port 80, `rate` a
/// second for at most `seconds`.
fn syn_flood(
    lab: &Lab,
    count: u64,
    rate: u64,
    seconds: u64,
    seed: u32,
) -> pnlb_lab::spoof::Running {
    pnlb_lab::spoof::start(
        &lab.client,
        pnlb_lab::spoof::Flood {
            kind: pnlb_lab::spoof::Kind::Syn,
            source: Ipv4Addr::new(10, 77, 0, 98),
            target: std::net::SocketAddrV4::new(VIP4, 80),
            count,
            limit: Duration::from_secs(seconds),
            rate,
            seed,
            repeat_each: 0,
        },
    )
    .expect("flood")
}

#[test]
fn allowed_clients_are_served_under_load_and_denied_ones_are_not() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    pnlb_lab::netns::ip(
        &lab.client,
        &["addr", "add", "10.77.0.99/24", "dev", "eth0"],
    )
    .expect("a second client address");
    let everyone: Vec<usize> = (0..lab.servers.len()).collect();
    let token_file = lab.dir.join("api.token");
    write_secret(&token_file, &format!("{TOKEN}\n"));
    let open = lab.config("dr", 80, &everyone).replacen(
        '\n',
        &format!(
            "\napi = \"127.0.0.1:9180\"\napi_token_file = \"{}\"\n",
            token_file.display()
        ),
        1,
    );
    let guarded = open.replace(
        "scheduler = \"maglev\"\n",
        "scheduler = \"maglev\"\ndeny = [\"10.77.0.96/29\"]\n",
    );
    let path = write_config(&lab, &guarded);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");

    // The load: requests from the allowed address until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = std::thread::scope(|scope| {
        let load = scope.spawn(|| load(&lab, &stop, Duration::from_secs(60)));
        let from_denied = || (0..5).filter(|_| answered(&lab, Some(DENIED))).count();
        let denied_before = from_denied();
        // The rule's drops, in the API and in /metrics.
        let (_, services) = api(&lab, "GET", "/api/v1/services", None, None);
        let services: serde_json::Value = serde_json::from_str(&services).unwrap_or_default();
        let dropped: u64 = services
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["access"].as_array().cloned().unwrap_or_default())
            .filter(|rule| rule["prefix"] == "10.77.0.96/29" && rule["action"] == "deny")
            .filter_map(|rule| rule["dropped"].as_u64())
            .sum();
        let (_, metrics) = api(&lab, "GET", "/metrics", None, None);
        eprintln!("the deny rule's drops in the API: {dropped}");
        assert!(dropped >= 5, "{services}");
        assert!(
            metrics.contains("pnlb_service_access_dropped_total{")
                && metrics.contains("prefix=\"10.77.0.96/29\""),
            "{metrics}"
        );
        reload(&daemon, &path, &open);
        let denied_after = from_denied();
        // The rule back through the API: the service as the config holds
        // it, with the deny list, PUT in its place.
        let (_, document) = api(&lab, "GET", "/api/v1/config", None, None);
        let document: serde_json::Value = serde_json::from_str(&document).unwrap_or_default();
        let mut service = document["service"][0].clone();
        let name = service["name"].as_str().unwrap_or_default().to_string();
        service["deny"] = serde_json::json!(["10.77.0.96/29"]);
        let (status, answer) = api(
            &lab,
            "PUT",
            &format!("/api/v1/services/{name}"),
            Some(TOKEN),
            Some(&service.to_string()),
        );
        assert_eq!(status, 200, "PUT /api/v1/services/{name}: {answer}");
        let denied_by_api = from_denied();
        stop.store(true, Ordering::Relaxed);
        let (ok, failed) = load.join().expect("joined");
        (denied_before, denied_after, denied_by_api, ok, failed)
    });
    let (denied_before, denied_after, denied_by_api, ok, failed) = load;
    eprintln!(
        "from {DENIED} (denied by 10.77.0.96/29): {denied_before}/5 answered; after the reload lifting it: {denied_after}/5; after the API put it back: {denied_by_api}/5; meanwhile from 10.77.0.2: {ok} answered, {failed} failed"
    );
    assert_eq!((denied_before, denied_after, denied_by_api), (0, 5, 0));
    assert!(ok > 20 && failed == 0, "{ok} answered, {failed} failed");
    let (_, output) = daemon.stop(Duration::from_secs(10));
    let counted: Vec<&String> = output
        .iter()
        .filter(|l| l.contains("drop_access_denied") || l.contains("deny "))
        .collect();
    eprintln!("exit summary: {counted:#?}");
    assert!(
        output.iter().any(|l| l.contains("drop_access_denied")),
        "the exit summary counts the denied packets: {output:#?}"
    );
}

/// source_new_flow_rate: a source flooding SYNs at 30,000/s spends its own
/// budget of 200 new flows a second, not the service's; short requests
/// from another source all succeed meanwhile.
#[test]
fn a_flooding_source_spends_its_own_budget_not_the_services() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let everyone: Vec<usize> = (0..lab.servers.len()).collect();
    let limited = lab.config("dr", 80, &everyone).replace(
        "scheduler = \"maglev\"\n",
        "scheduler = \"maglev\"\nsource_new_flow_rate = 200\nsource_new_flow_burst = 20\n",
    );
    let path = write_config(&lab, &limited);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let flood = syn_flood(&lab, 90_000, 30_000, 5, 0xf100d);
    let started = std::time::Instant::now();
    let (mut ok, mut failed) = (0u32, 0u32);
    while started.elapsed() < Duration::from_secs(3) {
        if answered(&lab, None) {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    let sent = flood.finish().expect("flood sent");
    let (_, output) = daemon.stop(Duration::from_secs(10));
    let limited = not_forwarded(&output, "drop_source_rate_limited");
    eprintln!(
        "{} spoofed SYNs from 10.77.0.98 in {:.1} s: {limited} refused for the source's rate; meanwhile from 10.77.0.2: {ok} answered, {failed} failed",
        sent.packets,
        sent.elapsed.as_secs_f64()
    );
    assert!(ok > 10 && failed == 0, "{ok} answered, {failed} failed");
    assert!(
        limited + 200 * 6 >= sent.packets,
        "every SYN over 200/s refused: {limited} of {}",
        sent.packets
    );
}

/// source_max_flows: one client address holds at most 10 connections open
/// (the 11th waits until one of its own ends), a SYN flood from another
/// address gets 10 flows and no more, and short requests from the client's
/// own address all succeed throughout.
#[test]
fn a_source_holds_at_most_its_flows_open_under_load() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let holder = Ipv4Addr::new(10, 77, 0, 98);
    pnlb_lab::netns::ip(
        &lab.client,
        &["addr", "add", "10.77.0.98/24", "dev", "eth0"],
    )
    .expect("a second client address");
    let everyone: Vec<usize> = (0..lab.servers.len()).collect();
    let limited = lab.config("dr", 80, &everyone).replace(
        "scheduler = \"maglev\"\n",
        "scheduler = \"maglev\"\nsource_max_flows = 10\n",
    );
    let path = write_config(&lab, &limited);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let target = std::net::SocketAddrV4::new(VIP4, 80);

    let stop = Arc::new(AtomicBool::new(false));
    let ((first, second), (flooded, ok, failed)) = std::thread::scope(|scope| {
        let load = scope.spawn(|| load(&lab, &stop, Duration::from_secs(90)));
        // From the holder: 16 tries while holding what opens, 5 closed,
        // then 8 more tries.
        let held = pnlb_lab::in_netns(&lab.client, move || {
            let open = |tries: usize| -> Vec<std::net::TcpStream> {
                (0..tries)
                    .filter_map(|_| {
                        pnlb_lab::connect::connect_from(holder, target, Duration::from_secs(1)).ok()
                    })
                    .collect()
            };
            let mut streams = open(16);
            let first = streams.len();
            streams.truncate(first.saturating_sub(5));
            std::thread::sleep(Duration::from_millis(300));
            let second = open(8).len();
            (first, second)
        })
        .expect("client namespace");
        let sent = pnlb_lab::spoof::send(
            &lab.client,
            pnlb_lab::spoof::Flood {
                kind: pnlb_lab::spoof::Kind::Syn,
                source: Ipv4Addr::new(10, 77, 0, 97),
                target,
                count: 20_000,
                limit: Duration::from_secs(5),
                rate: 10_000,
                seed: 0x5eed,
                repeat_each: 0,
            },
        )
        .expect("flood sent");
        stop.store(true, Ordering::Relaxed);
        let (ok, failed) = load.join().expect("joined");
        (held, (sent.packets, ok, failed))
    });
    let (_, output) = daemon.stop(Duration::from_secs(10));
    let limited = not_forwarded(&output, "drop_source_flows_limited");
    eprintln!(
        "source_max_flows = 10: from {holder}, {first} of 16 connections opened while it held them; after closing 5, {second} of 8 more; {flooded} spoofed SYNs from 10.77.0.97: {limited} refused as at its limit (with the holder's refused SYNs and their retries); meanwhile from 10.77.0.2: {ok} answered, {failed} failed"
    );
    assert_eq!(
        (first, second),
        (10, 5),
        "10 open at most, 5 freed by closing 5"
    );
    assert!(ok > 10 && failed == 0, "{ok} answered, {failed} failed");
    assert!(
        limited >= flooded - 10,
        "every spoofed SYN past the source's 10 flows refused: {limited} of {flooded}"
    );
}

/// new_flow_rate: a burst of SYNs over the service's 20 new flows a second
/// is refused, and the daemon says so once and says once when it is over.
/// A dr service has no SNAT rate to watch, so the daemon looks at it only
/// because a refusal was counted since its last look.
#[test]
fn a_service_over_its_new_flow_rate_is_said_once_and_when_it_ends() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let everyone: Vec<usize> = (0..lab.servers.len()).collect();
    let limited = lab.config("dr", 80, &everyone).replace(
        "scheduler = \"maglev\"\n",
        // rr: a dr Maglev service forwards statelessly over its rate.
        "scheduler = \"rr\"\nnew_flow_rate = 20\nnew_flow_burst = 20\n",
    );
    let path = write_config(&lab, &limited);
    let mut daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let flood = syn_flood(&lab, 2_000, 1_000, 3, 0x5e1f);
    // finish() stops it: the 3 s it was given first.
    std::thread::sleep(Duration::from_secs(3));
    let sent = flood.finish().expect("flood sent");
    let started = daemon
        .wait_for_line("over new_flow_rate", Duration::from_secs(15))
        .expect("the refusals said");
    let ended = daemon
        .wait_for_line("no longer refusing", Duration::from_secs(20))
        .expect("their end said");
    let (_, output) = daemon.stop(Duration::from_secs(10));
    let said = output
        .iter()
        .filter(|l| l.contains("over new_flow_rate"))
        .count();
    let limited = not_forwarded(&output, "drop_rate_limited");
    eprintln!(
        "{} SYNs at 1,000/s: {limited} refused; said: {started:?}, then {ended:?} ({said} start line(s))",
        sent.packets
    );
    assert_eq!(said, 1, "one episode, one line");
    assert!(limited > sent.packets / 2, "{limited} of {}", sent.packets);
}
