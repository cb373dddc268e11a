//! Health checks end to end: a stopped server leaves the pool within the
//! detection window and comes back when restarted, with a client opening
//! about 20 connections a second throughout; a draining backend finishes
//! its long transfer; each check kind against a real server.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pnlb_lab::{in_netns, Lab, LabSpec, ECHO_PORT, VIP4};
use support::*;

/// `method` = dr over the three lab servers, with a [service.health] table.
fn config_with_health(lab: &Lab, port: u16, health: &str) -> String {
    lab.config("dr", port, &[0, 1, 2]).replace(
        "scheduler = \"maglev\"\n",
        &format!("scheduler = \"maglev\"\n[service.health]\n{health}\n"),
    )
}

const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 100;
const FALL: u64 = 2;
const RISE: u64 = 2;

#[test]
fn a_stopped_server_leaves_within_the_detection_window_and_comes_back() {
    if !privileged() {
        return;
    }
    let mut lab = Lab::up(&LabSpec::default()).expect("lab");
    let health = format!("kind = \"tcp\"\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"{TIMEOUT_MS}ms\"\nrise = {RISE}\nfall = {FALL}");
    let path = write_config(&lab, &config_with_health(&lab, 80, &health));
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    // Detection: fall checks at up to 1.1 x interval each, plus a timeout,
    // plus the daemon's 100 ms tick; with margin for a 2-core machine.
    let window = Duration::from_millis(FALL * INTERVAL_MS * 11 / 10 + TIMEOUT_MS + 100 + 400);

    // ~20 new connections a second, bounded: 2 s healthy, s2 stopped for
    // 3 s, then restarted and watched for 3 s.
    let client = lab.client.clone();
    let run = |seconds: u64| {
        let client = client.clone();
        in_netns(&client, move || {
            let mut results = Vec::new();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(seconds) {
                results.push((Instant::now(), request(IpAddr::V4(VIP4))));
                std::thread::sleep(Duration::from_millis(50));
            }
            results
        })
        .unwrap()
    };
    let before = run(2);
    assert!(
        before.iter().all(|(_, r)| r.is_ok()),
        "all healthy at first: {before:?}"
    );

    // The window starts when the server is gone: stopping it waits for
    // nginx to exit, which on a loaded machine has taken over a second
    // (and the server listened until then).
    let stopping = Instant::now();
    lab.stop_nginx(1);
    let stopped_at = Instant::now();
    println!("nginx on s2 took {:?} to stop", stopped_at - stopping);
    let during = run(3);
    let late: Vec<_> = during
        .iter()
        .filter(|(t, _)| t.duration_since(stopped_at) > window)
        .collect();
    assert!(late.len() > 20, "enough requests after the window");
    for (t, result) in &late {
        assert!(
            matches!(result, Ok(server) if server != "s2"),
            "{:?} after stopping s2: {result:?}",
            t.duration_since(stopped_at)
        );
    }
    wait_for_log(
        &daemon,
        "backend 10.77.1.12:80 is DOWN",
        Duration::from_secs(1),
    );

    lab.start_nginx(1).expect("restart nginx on s2");
    let restarted = run(3);
    assert!(
        restarted.iter().all(|(_, r)| r.is_ok()),
        "no failures while s2 comes back: {restarted:?}"
    );
    assert!(
        restarted.iter().any(|(_, r)| r.as_deref() == Ok("s2")),
        "s2 gets new connections again"
    );
    wait_for_log(
        &daemon,
        "backend 10.77.1.12:80 is UP",
        Duration::from_secs(1),
    );
}

/// slow_start: a backend back from down takes a growing share, not all
/// of its weight at once; the daemon works out its weight again every
/// second until the ramp ends (the weights the data plane was given, read
/// from the API while it ramps).
#[test]
fn a_recovered_backend_ramps_up_over_its_slow_start() {
    if !privileged() {
        return;
    }
    let mut lab = Lab::up(&LabSpec::default()).expect("lab");
    let health = format!("kind = \"tcp\"\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"{TIMEOUT_MS}ms\"\nrise = {RISE}\nfall = {FALL}");
    let text = config_with_health(&lab, 80, &health)
        .replacen('\n', "\napi = \"127.0.0.1:9180\"\n", 1)
        .replace(
            "scheduler = \"maglev\"\n",
            "scheduler = \"maglev\"\nslow_start = \"4s\"\n",
        )
        .replace(
            "address = \"10.77.1.12\"\n",
            "address = \"10.77.1.12\"\nweight = 100\n",
        );
    let path = write_config(&lab, &text);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    wait_for_log(&daemon, "API on", Duration::from_secs(5));
    let lb = lab.lb.clone();
    let weight_of_s2 = || -> Option<u64> {
        let status = status_in(&lb);
        status["services"][0]["backends"]
            .as_array()?
            .iter()
            .find(|b| b["address"] == "10.77.1.12")?["effective_weight"]
            .as_u64()
    };
    assert_eq!(weight_of_s2(), Some(100), "in service at its weight");
    lab.stop_nginx(1);
    wait_for_log(
        &daemon,
        "backend 10.77.1.12:80 is DOWN",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(300));
    let down = weight_of_s2();
    lab.start_nginx(1).expect("restart nginx on s2");
    wait_for_log(
        &daemon,
        "backend 10.77.1.12:80 is UP",
        Duration::from_secs(5),
    );
    let up_at = Instant::now();
    let mut seen = Vec::new();
    while up_at.elapsed() < Duration::from_secs(7) {
        seen.push((up_at.elapsed().as_millis(), weight_of_s2()));
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("s2 down: weight {down:?}; after it came back (ms, weight): {seen:?}");
    assert_eq!(down, Some(0));
    let weights: Vec<u64> = seen.iter().filter_map(|(_, w)| *w).collect();
    let ramping: Vec<u64> = weights
        .iter()
        .copied()
        .filter(|w| (1..100).contains(w))
        .collect();
    assert!(
        ramping.len() >= 3,
        "several steps between 0 and 100: {seen:?}"
    );
    assert!(
        ramping.windows(2).all(|pair| pair[0] <= pair[1]),
        "it only grows: {seen:?}"
    );
    assert_eq!(
        weights.last(),
        Some(&100),
        "at its weight after the ramp: {seen:?}"
    );
}

#[test]
fn a_draining_backend_finishes_its_transfer_and_gets_no_new_flows() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec {
        nginx: false,
        echo: true,
        ..LabSpec::default()
    })
    .expect("lab");
    let path = write_config(&lab, &lab.config("dr", ECHO_PORT, &[0, 1, 2]));
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let vip = SocketAddr::new(IpAddr::V4(VIP4), ECHO_PORT);
    let connect = move || {
        let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut greeting = [0u8; 3];
        stream.read_exact(&mut greeting).unwrap();
        (stream, String::from_utf8_lossy(&greeting[..2]).to_string())
    };
    let (mut stream, server) = in_netns(&lab.client, connect).unwrap();
    let index: usize = server[1..].parse::<usize>().unwrap() - 1;

    // Drain it: weight 0 in the config, then SIGHUP.
    let address = lab.servers[index].ipv4.to_string();
    let text = lab.config("dr", ECHO_PORT, &[0, 1, 2]).replacen(
        &format!("address = \"{address}\"\n"),
        &format!("address = \"{address}\"\nweight = 0\n"),
        1,
    );
    std::fs::write(&path, text).unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for_log(&daemon, "reloaded", Duration::from_secs(5));

    // The long transfer goes on to the end...
    let mut sent = 0usize;
    let chunk = vec![0x5au8; 64 * 1024];
    let mut back = vec![0u8; chunk.len()];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        stream
            .write_all(&chunk)
            .expect("the drained backend's flow continues");
        stream.read_exact(&mut back).expect("and is answered");
        assert_eq!(back, chunk);
        sent += chunk.len();
    }
    assert!(sent > 1 << 20, "streamed {sent} bytes while draining");
    // ...while new flows avoid the drained backend.
    let seen = in_netns(&lab.client, move || {
        (0..60).map(|_| connect().1).collect::<Vec<_>>()
    })
    .unwrap();
    assert!(
        !seen.contains(&server),
        "{server} is draining but got a new flow: {seen:?}"
    );
}

/// Starts pnlb with a check of `kind`, breaks server s1 with `break_s1`,
/// and checks that it goes DOWN and that requests then avoid it.
fn check_kind_takes_a_broken_server_out(health: &str, port: u16, break_s1: impl FnOnce(&mut Lab)) {
    let mut lab = Lab::up(&LabSpec {
        echo: true,
        ..LabSpec::default()
    })
    .expect("lab");
    let text = config_with_health(
        &lab,
        port,
        &format!("{health}\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 2"),
    );
    let path = write_config(&lab, &text);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        !daemon.output().iter().any(|l| l.contains("is DOWN")),
        "{health}: healthy servers pass the check: {:?}",
        daemon.output()
    );
    break_s1(&mut lab);
    wait_for_log(
        &daemon,
        &format!("backend 10.77.1.11:{port} is DOWN"),
        Duration::from_secs(3),
    );
    if port == 80 {
        std::thread::sleep(Duration::from_millis(300));
        let answers = in_netns(&lab.client, || {
            (0..30)
                .map(|_| request(IpAddr::V4(VIP4)))
                .collect::<Vec<_>>()
        })
        .unwrap();
        assert!(
            answers.iter().all(|a| matches!(a, Ok(s) if s != "s1")),
            "{health}: {answers:?}"
        );
    }
}

#[test]
fn an_http_check_reads_status_and_body() {
    if privileged() {
        check_kind_takes_a_broken_server_out(
            "kind = \"http\"\npath = \"/\"\nexpect_status = \"200\"\nexpect_body = \"s\"",
            80,
            |lab| lab.stop_nginx(0),
        );
    }
}

#[test]
fn an_https_check_talks_tls() {
    if privileged() {
        check_kind_takes_a_broken_server_out(
            "kind = \"https\"\nport = 443\nhost = \"pnlb-lab\"\nexpect_body = \"s\"",
            80,
            |lab| lab.stop_nginx(0),
        );
    }
}

#[test]
fn a_udp_check_needs_the_expected_reply() {
    if privileged() {
        let health =
            format!("kind = \"udp\"\nport = {ECHO_PORT}\npayload = \"ping\"\nexpect = \"s\"");
        check_kind_takes_a_broken_server_out(&health, 80, |lab| lab.stop_echo(0));
    }
}

#[test]
fn an_exec_check_runs_a_command_with_the_backend_address() {
    if privileged() {
        let flag_dir = std::env::temp_dir().join(format!("pnlb-exec-check-{}", std::process::id()));
        std::fs::create_dir_all(&flag_dir).unwrap();
        let health = format!(
            "kind = \"exec\"\ncommand = [\"sh\", \"-c\", \"test ! -e {}/down-$PNLB_BACKEND_ADDRESS\"]",
            flag_dir.display()
        );
        let flag = flag_dir.join("down-10.77.1.11");
        check_kind_takes_a_broken_server_out(&health, 80, |_| std::fs::write(&flag, b"").unwrap());
        let _ = std::fs::remove_dir_all(&flag_dir);
    }
}

/// An exec check per backend driven by flag files: `down(i)` fails server i.
struct Flags(std::path::PathBuf);

impl Flags {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pnlb-flags-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn health(&self) -> String {
        format!(
            "kind = \"exec\"\ncommand = [\"sh\", \"-c\", \"test ! -e {}/down-$PNLB_BACKEND_ADDRESS\"]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 1",
            self.0.display()
        )
    }

    fn down(&self, lab: &Lab, index: usize) {
        std::fs::write(
            self.0.join(format!("down-{}", lab.servers[index].ipv4)),
            b"",
        )
        .unwrap();
    }
}

impl Drop for Flags {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// With `keep` a down backend's established flow goes on (the server may
/// be fine, only its check failed); with `reset` its entries are flushed,
/// the next packet lands on another backend, which resets it.
#[test]
fn on_backend_down_keep_lets_flows_finish_and_reset_cuts_them() {
    if !privileged() {
        return;
    }
    for policy in ["keep", "reset"] {
        let lab = Lab::up(&LabSpec {
            nginx: false,
            echo: true,
            ..LabSpec::default()
        })
        .expect("lab");
        let flags = Flags::new();
        let text = config_with_health(&lab, ECHO_PORT, &flags.health()).replace(
            "scheduler = \"maglev\"\n",
            &format!("scheduler = \"maglev\"\non_backend_down = \"{policy}\"\n"),
        );
        let path = write_config(&lab, &text);
        let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
        let vip = SocketAddr::new(IpAddr::V4(VIP4), ECHO_PORT);
        let (mut stream, server) = in_netns(&lab.client, move || {
            let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut greeting = [0u8; 3];
            stream.read_exact(&mut greeting).unwrap();
            (stream, String::from_utf8_lossy(&greeting[..2]).to_string())
        })
        .unwrap();
        let index: usize = server[1..].parse::<usize>().unwrap() - 1;
        flags.down(&lab, index);
        wait_for_log(&daemon, "is DOWN", Duration::from_secs(3));
        std::thread::sleep(Duration::from_millis(300));
        let survived = (0..5).all(|_| {
            let ok = stream.write_all(b"ping").is_ok();
            let mut back = [0u8; 4];
            let echoed = ok && stream.read_exact(&mut back).is_ok() && &back == b"ping";
            std::thread::sleep(Duration::from_millis(100));
            echoed
        });
        match policy {
            "keep" => assert!(survived, "keep: the established flow on {server} continues"),
            _ => {
                assert!(!survived, "reset: the established flow on {server} is cut");
                wait_for_log(&daemon, "reset", Duration::from_secs(1));
            }
        }
    }
}

#[test]
fn the_fallback_takes_new_flows_only_while_every_backend_is_down() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let flags = Flags::new();
    // s1 and s2 serve; s3 is the fallback.
    let text = lab.config("dr", 80, &[0, 1]).replacen(
        "scheduler = \"maglev\"\n",
        &format!(
            "scheduler = \"maglev\"\n[service.fallback]\naddress = \"{}\"\n[service.health]\n{}\n",
            lab.servers[2].ipv4,
            flags.health()
        ),
        1,
    );
    let path = write_config(&lab, &text);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let answers = |n| {
        in_netns(&lab.client, move || {
            (0..n)
                .map(|_| request(IpAddr::V4(VIP4)))
                .collect::<Vec<_>>()
        })
        .unwrap()
    };
    assert!(
        answers(20).iter().all(|a| matches!(a, Ok(s) if s != "s3")),
        "the fallback idles while backends are up"
    );
    flags.down(&lab, 0);
    flags.down(&lab, 1);
    wait_for_log(
        &daemon,
        "backend 10.77.1.11:80 is DOWN",
        Duration::from_secs(3),
    );
    wait_for_log(
        &daemon,
        "backend 10.77.1.12:80 is DOWN",
        Duration::from_secs(3),
    );
    std::thread::sleep(Duration::from_millis(300));
    let during = answers(20);
    assert!(
        during.iter().all(|a| a.as_deref() == Ok("s3")),
        "all down: the fallback answers: {during:?}"
    );
}
