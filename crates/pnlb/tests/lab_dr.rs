//! End to end through the namespace lab: real clients (curl and our own),
//! real servers (nginx and our echo server), `pnlb run` on the LB in `dr`
//! mode, IPv4 and IPv6.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

mod support;

use pnlb_lab::{in_netns, Lab, LabSpec, ECHO_PORT, LB_INTERFACE, VIP4, VIP6};
use support::*;

#[test]
fn curl_reaches_nginx_through_the_vip_and_replies_bypass_the_lb() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let path = write_config(&lab, &lab.dr_config(80, &[0, 1, 2]));
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    assert!(xdp_attached(&lab));

    for url in [format!("http://{VIP4}/"), format!("http://[{VIP6}]/")] {
        let body = lab
            .client_command("curl", &["-sS", "-g", "--max-time", "5", &url])
            .expect("curl");
        assert!(
            ["s1", "s2", "s3"].contains(&body.trim()),
            "{url} answered {body:?}"
        );

        // A 1 MiB download: if replies came back through the LB, its
        // interface would receive at least that much.
        let blob = format!("{url}blob");
        let before = lab.rx_bytes(&lab.lb, LB_INTERFACE).unwrap();
        let size = lab.client_download(&blob, 10).expect("curl blob");
        let received = lab.rx_bytes(&lab.lb, LB_INTERFACE).unwrap() - before;
        assert_eq!(size, pnlb_lab::nginx::BLOB_SIZE as u64);
        assert!(
            received < 200_000,
            "the LB received {received} bytes during a 1 MiB download: replies went through it"
        );
    }

    let (status, output) = daemon.stop(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "pnlb run exits 0 on SIGTERM: {output:?}"
    );
    assert!(!xdp_attached(&lab), "SIGTERM detaches the program");
    assert!(
        output.iter().any(|l| l.starts_with("TCP  10.77.100.1:80")),
        "counter table at exit: {output:?}"
    );
}

#[test]
fn a_backend_that_does_not_answer_arp_is_left_out_and_logged() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let text = lab.dr_config(80, &[0, 1]).replace(
        "[[service.backend]]\naddress = \"10.77.1.12\"\n",
        "[[service.backend]]\naddress = \"10.77.1.12\"\n\n[[service.backend]]\naddress = \"10.77.1.99\"\n",
    );
    let path = write_config(&lab, &text);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    assert!(
        daemon
            .output()
            .iter()
            .any(|l| l.contains("backend 10.77.1.99 gets no new flows")),
        "{:?}",
        daemon.output()
    );
    let answers = spread(&lab, IpAddr::V4(VIP4), 40);
    assert_eq!(
        answers.values().sum::<usize>(),
        40,
        "every request is answered: {answers:?}"
    );
}

#[test]
fn generic_xdp_mode_forwards_as_well() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let text = lab
        .dr_config(80, &[0, 1, 2])
        .replace("[daemon]\n", "[daemon]\nxdp_mode = \"generic\"\n");
    let path = write_config(&lab, &text);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    assert!(
        daemon.output().iter().any(|l| l.contains("generic XDP")),
        "the log says which mode: {:?}",
        daemon.output()
    );
    let answers = spread(&lab, IpAddr::V4(VIP4), 30);
    assert_eq!(answers.values().sum::<usize>(), 30, "{answers:?}");
    let (status, _) = daemon.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()));
    assert!(!xdp_attached(&lab), "generic mode detaches too");
}

#[test]
fn three_hundred_new_connections_spread_over_three_backends() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let path = write_config(&lab, &lab.dr_config(80, &[0, 1, 2]));
    let _daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let answers = spread(&lab, vip, 300);
        assert_eq!(answers.values().sum::<usize>(), 300, "{answers:?}");
        for server in ["s1", "s2", "s3"] {
            let share = *answers.get(server).unwrap_or(&0) as f64 / 300.0;
            assert!(
                (0.20..=0.46).contains(&share),
                "{vip}: {server} got {:.0}% of 300: {answers:?}",
                share * 100.0
            );
        }
    }
}

/// Streams data through an echo connection for `duration`, checking every
/// byte that comes back.
fn stream_for(stream: &mut TcpStream, duration: Duration, seed: &mut u8) -> u64 {
    let deadline = Instant::now() + duration;
    let mut total = 0u64;
    let mut chunk = [0u8; 4096];
    let mut back = [0u8; 4096];
    while Instant::now() < deadline {
        for byte in chunk.iter_mut() {
            *byte = *seed;
            *seed = seed.wrapping_add(7);
        }
        stream.write_all(&chunk).expect("the stream stays up");
        stream.read_exact(&mut back).expect("the echo comes back");
        assert_eq!(chunk, back, "echoed bytes are exact");
        total += chunk.len() as u64;
        std::thread::sleep(Duration::from_millis(5));
    }
    total
}

/// Opens a connection to the echo service; returns it and the greeting's server name.
fn echo_connect(vip: IpAddr) -> (TcpStream, String) {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::new(vip, ECHO_PORT), Duration::from_secs(3))
            .expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut greeting = [0u8; 3];
    stream.read_exact(&mut greeting).expect("greeting");
    (stream, String::from_utf8_lossy(&greeting[..2]).to_string())
}

#[test]
fn a_long_lived_connection_keeps_streaming_while_backends_are_added_and_removed() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec {
        servers: 4,
        nginx: false,
        echo: true,
        ..LabSpec::default()
    })
    .expect("lab");
    let path = write_config(&lab, &lab.dr_config(ECHO_PORT, &[0, 1, 2]));
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");

    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let (mut stream, server) = in_netns(&lab.client, move || echo_connect(vip)).unwrap();
        let serving: usize = server[1..]
            .parse::<usize>()
            .expect("greeting names the server")
            - 1;
        let mut seed = 1u8;
        let before = stream_for(&mut stream, Duration::from_millis(800), &mut seed);

        // Add s4, remove another server that is not carrying our stream.
        let removed = (0..3).find(|&i| i != serving).unwrap();
        let members: Vec<usize> = (0..4).filter(|&i| i != removed).collect();
        reload(&daemon, &path, &lab.dr_config(ECHO_PORT, &members));
        let after = stream_for(&mut stream, Duration::from_millis(1500), &mut seed);
        assert!(
            before > 0 && after > 0,
            "{vip}: streamed {before} then {after} bytes"
        );

        // New connections now reach the new server and never the removed one.
        let seen = in_netns(&lab.client, move || {
            let mut seen = std::collections::HashSet::new();
            for _ in 0..60 {
                seen.insert(echo_connect(vip).1);
            }
            seen
        })
        .unwrap();
        assert!(
            seen.contains("s4"),
            "{vip}: the added backend gets new flows: {seen:?}"
        );
        assert!(
            !seen.contains(&format!("s{}", removed + 1)),
            "{vip}: the removed backend gets none: {seen:?}"
        );

        // Restore the original pool for the next address family.
        reload(&daemon, &path, &lab.dr_config(ECHO_PORT, &[0, 1, 2]));
    }
}

#[test]
fn udp_datagrams_are_balanced_and_answered_from_the_vip() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec {
        servers: 3,
        nginx: false,
        echo: true,
        ..LabSpec::default()
    })
    .expect("lab");
    let text = lab
        .dr_config(ECHO_PORT, &[0, 1, 2])
        .replace("protocol = \"tcp\"", "protocol = \"udp\"");
    let path = write_config(&lab, &text);
    let _daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let answers = in_netns(&lab.client, move || {
            let mut answers: HashMap<String, usize> = HashMap::new();
            for _ in 0..60 {
                // A connected socket only accepts replies whose source is
                // the VIP: direct server return must keep it.
                let bind: SocketAddr = if vip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                    .parse()
                    .unwrap();
                let socket = UdpSocket::bind(bind).unwrap();
                socket.connect(SocketAddr::new(vip, ECHO_PORT)).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                socket.send(b"ping").unwrap();
                let mut buf = [0u8; 64];
                let n = socket.recv(&mut buf).expect("a reply from the VIP");
                *answers
                    .entry(String::from_utf8_lossy(&buf[..n]).to_string())
                    .or_default() += 1;
            }
            answers
        })
        .unwrap();
        assert_eq!(answers.values().sum::<usize>(), 60);
        assert_eq!(
            answers.len(),
            3,
            "{vip}: 60 flows reach all three servers: {answers:?}"
        );
    }
}

#[test]
fn a_bad_config_exits_non_zero_with_one_line_and_attaches_nothing() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec {
        servers: 1,
        nginx: false,
        echo: false,
        ..LabSpec::default()
    })
    .expect("lab");
    let good = lab.dr_config(80, &[0]);
    let cases = [
        (
            good.replace("port = 80", "port = 99999"),
            "service[0] (web).port",
        ),
        (
            good.replace("method = \"dr\"", "method = \"bogus\""),
            "service[0] (web).method",
        ),
        (good.replace(LB_INTERFACE, "nosuch0"), "nosuch0"),
    ];
    for (text, expected) in cases {
        let path = write_config(&lab, &text);
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.lb, PNLB, "run", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!xdp_attached(&lab), "nothing attached after: {stderr}");
    }
}
