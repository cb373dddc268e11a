//! Schedulers end to end: wrr ratios over real connections, and source
//! persistence with its timeout.

mod support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use pnlb_lab::{in_netns, Lab, LabSpec, VIP4};
use support::*;

fn weighted_config(lab: &Lab, scheduler: &str, weights: &[u32], extra: &str) -> String {
    let mut text = lab.config("dr", 80, &[0, 1, 2]).replace(
        "scheduler = \"maglev\"",
        &format!("scheduler = \"{scheduler}\"\n{extra}"),
    );
    for (server, weight) in lab.servers.iter().zip(weights) {
        text = text.replace(
            &format!("address = \"{}\"\n", server.ipv4),
            &format!("address = \"{}\"\nweight = {weight}\n", server.ipv4),
        );
    }
    text
}

#[test]
fn wrr_three_two_one_over_six_hundred_connections() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let path = write_config(&lab, &weighted_config(&lab, "wrr", &[3, 2, 1], ""));
    let _daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let answers = spread(&lab, IpAddr::V4(VIP4), 600);
    for (server, want) in [("s1", 50.0), ("s2", 100.0 / 3.0), ("s3", 100.0 / 6.0)] {
        let share = *answers.get(server).unwrap_or(&0) as f64 / 6.0;
        assert!(
            (share - want).abs() <= 5.0,
            "{server}: {share:.1}% of 600, want {want:.1}% ± 5: {answers:?}"
        );
    }
}

#[test]
fn persistence_keeps_a_client_on_one_backend_until_the_timeout() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let path = write_config(
        &lab,
        &weighted_config(&lab, "rr", &[1, 1, 1], "persistence = \"2s\""),
    );
    let _daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let during = spread(&lab, IpAddr::V4(VIP4), 20);
    assert_eq!(
        during.len(),
        1,
        "rr alone would rotate; persistence keeps one backend: {during:?}"
    );
    let first = during.keys().next().cloned().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let after = in_netns(&lab.client, || request(IpAddr::V4(VIP4)))
        .unwrap()
        .expect("request");
    assert_ne!(
        after, first,
        "after the timeout the client is scheduled again (rr moves on)"
    );
    let counts: HashMap<String, usize> = spread(&lab, IpAddr::V4(VIP4), 10);
    assert_eq!(
        counts.get(&after),
        Some(&10),
        "and sticks to its new backend: {counts:?}"
    );
}

/// Holds a connection to the echo service open: returns it and its server.
fn hold(vip: std::net::SocketAddr) -> (std::net::TcpStream, String) {
    use std::io::Read;
    let mut stream =
        std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(2)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut greeting = [0u8; 3];
    stream.read_exact(&mut greeting).expect("greeting");
    (stream, String::from_utf8_lossy(&greeting[..2]).to_string())
}

/// The echo lab with pnlb in dr mode; `options` replace the scheduler line.
fn echo_lab(options: &str) -> (Lab, pnlb_lab::LabProcess) {
    let lab = Lab::up(&LabSpec {
        nginx: false,
        echo: true,
        ..LabSpec::default()
    })
    .expect("lab");
    let text = lab
        .config("dr", pnlb_lab::ECHO_PORT, &[0, 1, 2])
        .replace("scheduler = \"maglev\"", options);
    let path = write_config(&lab, &text);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    (lab, daemon)
}

#[test]
fn nq_sends_each_new_connection_to_an_idle_backend_first() {
    if !privileged() {
        return;
    }
    let (lab, _daemon) = echo_lab("scheduler = \"nq\"");
    let vip = std::net::SocketAddr::new(IpAddr::V4(VIP4), pnlb_lab::ECHO_PORT);
    let servers = in_netns(&lab.client, move || {
        let held: Vec<_> = (0..3).map(|_| hold(vip)).collect();
        held.into_iter()
            .map(|(_, server)| server)
            .collect::<Vec<_>>()
    })
    .unwrap();
    let distinct: std::collections::HashSet<_> = servers.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "three held connections, three idle servers: {servers:?}"
    );
}

#[test]
fn lc_gives_a_slow_backend_fewer_new_connections() {
    if !privileged() {
        return;
    }
    let (lab, _daemon) = echo_lab("scheduler = \"lc\"");
    let vip = std::net::SocketAddr::new(IpAddr::V4(VIP4), pnlb_lab::ECHO_PORT);
    // s1 is slow: its clients hold their connection 10 times longer.
    let counts = in_netns(&lab.client, move || {
        let mut threads = Vec::new();
        for _ in 0..90 {
            threads.push(std::thread::spawn(move || {
                let (stream, server) = hold(vip);
                std::thread::sleep(Duration::from_millis(if server == "s1" {
                    1500
                } else {
                    150
                }));
                drop(stream);
                server
            }));
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        for thread in threads {
            *counts.entry(thread.join().unwrap()).or_default() += 1;
        }
        counts
    })
    .unwrap();
    eprintln!("lc with a slow s1: {counts:?}");
    let slow = *counts.get("s1").unwrap_or(&0) as f64;
    let others = (*counts.get("s2").unwrap_or(&0) + *counts.get("s3").unwrap_or(&0)) as f64 / 2.0;
    assert!(
        slow < others * 0.6,
        "s1 (slow) got {slow}, the others {others} on average: {counts:?}"
    );
}

/// One client, many concurrent flows, hashed by source: Maglev puts them
/// all on one backend; bounded loads spill them once it reaches its cap.
#[test]
fn a_hot_source_stays_on_one_backend_with_maglev_and_spills_with_chbl() {
    if !privileged() {
        return;
    }
    for scheduler in ["maglev", "chbl"] {
        let (lab, _daemon) = echo_lab(&format!(
            "scheduler = \"{scheduler}\"\nhash_key = \"source\""
        ));
        let vip = std::net::SocketAddr::new(IpAddr::V4(VIP4), pnlb_lab::ECHO_PORT);
        let counts = in_netns(&lab.client, move || {
            let held: Vec<_> = (0..30).map(|_| hold(vip)).collect();
            let mut counts: HashMap<String, usize> = HashMap::new();
            for (_, server) in &held {
                *counts.entry(server.clone()).or_default() += 1;
            }
            counts
        })
        .unwrap();
        eprintln!("{scheduler}, one source, 30 concurrent flows: {counts:?}");
        let most = counts.values().copied().max().unwrap_or(0);
        match scheduler {
            "maglev" => assert_eq!(most, 30, "maglev: all on one backend: {counts:?}"),
            _ => assert!(
                most <= 13 && counts.len() >= 2,
                "chbl: the owner stops at its cap: {counts:?}"
            ),
        }
    }
}
