//! nat and snat end to end through the namespace lab: curl to nginx over
//! IPv4 and IPv6, gigabyte downloads checked byte for byte, and ten
//! thousand concurrent connections through snat.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use pnlb_lab::{bulk, in_netns, Gateway, Lab, LabSpec, BULK_PORT, VIP4, VIP6};
use support::*;

/// The lab each method needs: nat servers route via the LB, snat ones do not.
fn lab_for(method: &str, nginx: bool) -> Lab {
    let servers_route_via = if method == "nat" {
        Gateway::Lb
    } else {
        Gateway::Router
    };
    Lab::up(&LabSpec {
        servers_route_via,
        nginx,
        echo: !nginx,
        ..LabSpec::default()
    })
    .expect("lab")
}

fn curl_through(method: &str) {
    let lab = lab_for(method, true);
    let path = write_config(&lab, &lab.config(method, 80, &[0, 1, 2]));
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    for url in [format!("http://{VIP4}/"), format!("http://[{VIP6}]/")] {
        let body = lab
            .client_command("curl", &["-sS", "-g", "--max-time", "5", &url])
            .expect("curl");
        assert!(
            ["s1", "s2", "s3"].contains(&body.trim()),
            "{method} {url} answered {body:?}"
        );
        let size = lab
            .client_download(&format!("{url}blob"), 10)
            .expect("curl blob");
        assert_eq!(
            size,
            pnlb_lab::nginx::BLOB_SIZE as u64,
            "{method} {url}blob"
        );
    }
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let answers = spread(&lab, vip, 60);
        assert_eq!(
            answers.values().sum::<usize>(),
            60,
            "{method} {vip}: {answers:?}"
        );
        assert!(
            answers.len() >= 2,
            "{method} {vip}: spread over servers: {answers:?}"
        );
    }
    let (status, output) = daemon.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{output:?}");
}

#[test]
fn curl_reaches_nginx_through_nat_over_ipv4_and_ipv6() {
    if privileged() {
        curl_through("nat");
    }
}

#[test]
fn curl_reaches_nginx_through_snat_over_ipv4_and_ipv6() {
    if privileged() {
        curl_through("snat");
    }
}

const GIB: u64 = 1 << 30;

fn gigabyte_through(method: &str) {
    let lab = lab_for(method, false);
    let path = write_config(&lab, &lab.config(method, BULK_PORT, &[0, 1, 2]));
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    for (vip, length) in [(IpAddr::V4(VIP4), GIB), (IpAddr::V6(VIP6), GIB / 4)] {
        let result = in_netns(&lab.client, move || {
            let mut stream = TcpStream::connect_timeout(
                &SocketAddr::new(vip, BULK_PORT),
                Duration::from_secs(3),
            )?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            bulk::download(&mut stream, length, 0x5eed)
        })
        .unwrap()
        .unwrap_or_else(|err| {
            panic!(
                "{method} {vip}: download failed: {err}; pnlb: {:?}",
                daemon.output()
            )
        });
        assert_eq!(result.received, length, "{method} {vip}");
        assert_eq!(
            result.client_checksum, result.server_checksum,
            "{method} {vip}: bytes differ"
        );
    }
    // The data crossed the LB's translation, not some other path.
    let (_, output) = daemon.stop(Duration::from_secs(10));
    let line = output
        .iter()
        .find(|l| l.starts_with(&format!("TCP  {VIP4}:{BULK_PORT}")))
        .expect("counter table");
    let out_bytes: u64 = line
        .split_whitespace()
        .nth(8)
        .and_then(|n| n.parse().ok())
        .expect("OutBytes column");
    assert!(
        out_bytes > GIB,
        "{method}: the LB translated {out_bytes} reply bytes: {line}"
    );
}

#[test]
fn a_gigabyte_downloads_byte_exact_through_nat() {
    if privileged() {
        gigabyte_through("nat");
    }
}

#[test]
fn a_gigabyte_downloads_byte_exact_through_snat() {
    if privileged() {
        gigabyte_through("snat");
    }
}

/// Lets this process hold `wanted` sockets (the hard limit here is 20000).
fn raise_open_files(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer; RLIMIT_NOFILE exists.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(wanted.max(limit.rlim_cur));
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

#[test]
fn ten_thousand_concurrent_connections_through_snat_are_all_translated_right() {
    if !privileged() {
        return;
    }
    const CONNECTIONS: usize = 10_000;
    raise_open_files(CONNECTIONS as u64 + 2000);
    let lab = lab_for("snat", true);
    let path = write_config(&lab, &lab.config("snat", 80, &[0, 1, 2]));
    let _daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");

    let answers = in_netns(&lab.client, move || {
        // Open them all first, so all 10,000 are live at once...
        let vip = SocketAddr::new(IpAddr::V4(VIP4), 80);
        let mut streams = Vec::with_capacity(CONNECTIONS);
        for i in 0..CONNECTIONS {
            let stream = TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                .unwrap_or_else(|err| panic!("connection {i}: {err}"));
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            streams.push(stream);
        }
        // ...then use each: a mis-translated connection gets no answer,
        // someone else's, or a reset.
        let mut answers = std::collections::HashMap::<String, usize>::new();
        for (i, stream) in streams.iter_mut().enumerate() {
            let request = format!("GET / HTTP/1.1\r\nHost: c{i}\r\n\r\n");
            stream
                .write_all(request.as_bytes())
                .unwrap_or_else(|err| panic!("connection {i}: {err}"));
            let mut buf = [0u8; 512];
            let n = stream
                .read(&mut buf)
                .unwrap_or_else(|err| panic!("connection {i}: {err}"));
            let response = String::from_utf8_lossy(&buf[..n]);
            assert!(
                response.starts_with("HTTP/1.1 200"),
                "connection {i}: {response}"
            );
            let server = response
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string();
            *answers.entry(server).or_default() += 1;
        }
        answers
    })
    .unwrap();
    assert_eq!(answers.values().sum::<usize>(), CONNECTIONS, "{answers:?}");
    for server in ["s1", "s2", "s3"] {
        let share = *answers.get(server).unwrap_or(&0) as f64 / CONNECTIONS as f64;
        assert!((0.25..=0.42).contains(&share), "{server}: {answers:?}");
    }
}

/// The router's path to the client takes 1400 bytes at most; downloads
/// only complete if its ICMP errors, addressed to the VIP, reach the
/// backend translated (otherwise the backend keeps sending 1500-byte
/// packets into a black hole).
fn path_mtu_discovery_through(method: &str) {
    let servers_route_via = if method == "nat" {
        Gateway::Lb
    } else {
        Gateway::Router
    };
    let spec = LabSpec {
        servers_route_via,
        client_path_mtu: Some(1400),
        ..LabSpec::default()
    };
    let lab = Lab::up(&spec).expect("lab");
    let path = write_config(&lab, &lab.config(method, 80, &[0, 1, 2]));
    let _daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    for (url, client, learnt_for) in [
        (
            format!("http://{VIP4}/blob"),
            "10.77.0.2",
            if method == "nat" {
                "10.77.0.2"
            } else {
                "10.77.1.2"
            },
        ),
        (
            format!("http://[{VIP6}]/blob"),
            "fd77::2",
            if method == "nat" {
                "fd77::2"
            } else {
                "fd77:1::2"
            },
        ),
    ] {
        let size = lab
            .client_download(&url, 15)
            .unwrap_or_else(|err| panic!("{method} {url}: {err}"));
        assert_eq!(size, pnlb_lab::nginx::BLOB_SIZE as u64, "{method} {url}");
        // The backend that served it learnt the path MTU from the translated error.
        let learnt = lab.servers.iter().any(|server| {
            let out = std::process::Command::new("ip")
                .args(["-n", &server.ns, "route", "get", learnt_for])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("mtu 1400")
        });
        assert!(
            learnt,
            "{method}: no backend learnt MTU 1400 towards {learnt_for} (client {client})"
        );
    }
}

#[test]
fn path_mtu_discovery_works_through_nat() {
    if privileged() {
        path_mtu_discovery_through("nat");
    }
}

#[test]
fn path_mtu_discovery_works_through_snat() {
    if privileged() {
        path_mtu_discovery_through("snat");
    }
}

/// A four-port SNAT pool in front of one backend (ports are unique per
/// backend, so one backend makes four the limit): the fifth concurrent
/// connection is refused and
/// logged while the four keep working; once they close, the running
/// daemon's sweeper frees their ports for new connections.
#[test]
fn exhausted_snat_ports_are_logged_and_freed_again_after_close() {
    if !privileged() {
        return;
    }
    let lab = lab_for("snat", false);
    let text = lab
        .config("snat", pnlb_lab::ECHO_PORT, &[0])
        .replace(
            "snat_addresses = [\"10.77.1.2\"]",
            "snat_addresses = [\"10.77.1.2\"]\nsnat_ports = \"20000-20003\"\nsnat_reuse_after = \"1s\"",
        )
        .replace(
            "[daemon]\n",
            "[timeouts]\ntcp_fin = \"1s\"\ntcp_close = \"1s\"\n\n[daemon]\n",
        );
    let path = write_config(&lab, &text);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let vip = SocketAddr::new(IpAddr::V4(VIP4), pnlb_lab::ECHO_PORT);
    let connect = move || -> std::io::Result<TcpStream> {
        let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut greeting = [0u8; 3];
        stream.read_exact(&mut greeting)?;
        Ok(stream)
    };

    let (held, refused) = in_netns(&lab.client, move || {
        let held: Vec<TcpStream> = (0..4)
            .map(|i| connect().unwrap_or_else(|err| panic!("connection {i}: {err}")))
            .collect();
        (held, connect().is_err())
    })
    .unwrap();
    assert!(refused, "a fifth concurrent connection finds no SNAT port");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !daemon
        .output()
        .iter()
        .any(|l| l.contains("SNAT ports exhausted"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no exhaustion log line: {:?}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for mut stream in held {
        stream
            .write_all(b"still here")
            .expect("established flows are unaffected");
        let mut echo = [0u8; 10];
        stream.read_exact(&mut echo).expect("and answered");
        assert_eq!(&echo, b"still here");
    }
    // Closed flows expire after tcp_close/tcp_fin = 1s, at the daemon's
    // next sweep (every 5 s); their ports rest for snat_reuse_after = 1s,
    // then serve new connections.
    std::thread::sleep(Duration::from_secs(7));
    let again = in_netns(&lab.client, move || {
        (0..4).map(|_| connect().is_ok()).filter(|ok| *ok).count()
    })
    .unwrap();
    assert_eq!(again, 4, "freed ports serve new connections");
}
