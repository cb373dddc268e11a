//! Tunneling end to end: `pnlb run` wraps client packets in IPIP / IP6IP6
//! or GUE, `pnlb decap` on each real server unwraps them (this kernel has
//! no ipip/fou modules), nginx answers the client directly. Path MTU: a
//! smaller LAN MTU, full-size uploads answered with ICMP by the LB.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

mod support;

use pnlb_lab::{
    in_netns, Lab, LabProcess, LabSpec, DECAP_FROM, ECHO_PORT, LB_INTERFACE, VIP4, VIP6,
};
use support::*;

fn start_decap_everywhere(lab: &Lab) -> Vec<LabProcess> {
    (0..lab.servers.len())
        .map(|i| lab.start_decap(PNLB, i).expect("pnlb decap"))
        .collect()
}

/// Stops every `pnlb decap`; returns their exit lines.
fn stop_decap(decaps: Vec<LabProcess>) -> Vec<String> {
    decaps
        .into_iter()
        .map(|decap| {
            let (status, output) = decap.stop(Duration::from_secs(10));
            assert!(
                status.is_some_and(|s| s.success()),
                "pnlb decap exits 0 on SIGTERM: {output:?}"
            );
            output
                .into_iter()
                .find(|l| l.contains("detached from"))
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn curl_reaches_nginx_through_tun_ipip_and_gue_and_replies_bypass_the_lb() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let decaps = start_decap_everywhere(&lab);
    for encap in ["ipip", "gue"] {
        let path = write_config(&lab, &lab.tun_config(encap, 80, &[0, 1, 2]));
        let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");

        for (vip, url) in [
            (IpAddr::V4(VIP4), format!("http://{VIP4}/")),
            (IpAddr::V6(VIP6), format!("http://[{VIP6}]/")),
        ] {
            let answers = spread(&lab, vip, 60);
            assert!(
                ["s1", "s2", "s3"]
                    .iter()
                    .all(|s| answers.get(*s).copied().unwrap_or(0) > 5),
                "{encap} {vip}: 60 requests over three servers: {answers:?}"
            );

            // Replies go from the server straight to the client.
            let before = lab.rx_bytes(&lab.lb, LB_INTERFACE).unwrap();
            let size = lab
                .client_download(&format!("{url}blob"), 10)
                .expect("curl blob");
            let received = lab.rx_bytes(&lab.lb, LB_INTERFACE).unwrap() - before;
            assert_eq!(size, pnlb_lab::nginx::BLOB_SIZE as u64, "{encap} {url}");
            assert!(
                received < 200_000,
                "{encap}: the LB received {received} bytes during a 1 MiB download"
            );
        }
        let (status, output) = daemon.stop(Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "{output:?}");
        assert!(
            output
                .iter()
                .any(|l| l.starts_with("TCP  10.77.100.1:80") && l.contains(" tun ")),
            "{encap}: the exit table names the method: {output:?}"
        );
    }
    for line in stop_decap(decaps) {
        // "... decapsulated N IPIP/IP6IP6 and M GUE; passed ..."
        let number_after = |marker: &str| -> u64 {
            line.split(marker)
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        assert!(
            number_after("decapsulated ") > 0 && number_after("IP6IP6 and ") > 0,
            "every server unwrapped both kinds: {line}"
        );
        assert!(
            line.contains(" 0 from outside --from, 0 holding a packet not for this host"),
            "the LB's tunnels are all from --from and for the VIPs: {line}"
        );
    }
}

/// An IPv4 UDP datagram from `src` to `dst`, port 9 (discard), header
/// checksum computed (UDP's left out: 0 is allowed over IPv4).
fn udp4(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr) -> Vec<u8> {
    let mut packet = vec![0x45, 0, 0, 20 + 8 + 4, 0, 0, 0, 0, 64, 17, 0, 0];
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    let sum = packet
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !((folded & 0xffff) + (folded >> 16)) as u16;
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet.extend_from_slice(&[0x9c, 0x40, 0, 9, 0, 12, 0, 0]);
    packet.extend_from_slice(b"ping");
    packet
}

/// `pnlb decap --from`: unwrapping hands the stack an inner source it never
/// checked (a way around uRPF and ACLs), so a tunnel from outside the
/// balancers' prefixes — here the client, wrapping a datagram for the VIP —
/// is left alone (this kernel then drops it: no ipip module), and counted.
#[test]
fn a_tunnel_from_outside_the_balancers_prefixes_is_not_unwrapped() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec {
        servers: 1,
        nginx: false,
        ..LabSpec::default()
    })
    .expect("lab");
    let decap = lab.start_decap(PNLB, 0).expect("pnlb decap");
    let server = lab.servers[0].ipv4;
    const SENT: usize = 20;
    let sent = in_netns(&lab.client, move || {
        assert_in_lab_netns();
        // SAFETY: plain socket(2), closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_IPIP) };
        assert!(
            fd >= 0,
            "raw IPIP socket: {}",
            std::io::Error::last_os_error()
        );
        let inner = udp4(pnlb_lab::CLIENT4, VIP4);
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(server).to_be(),
            },
            sin_zero: [0; 8],
        };
        let mut sent = 0;
        for _ in 0..SENT {
            // SAFETY: a valid buffer and address of their sizes.
            let n = unsafe {
                libc::sendto(
                    fd,
                    inner.as_ptr().cast(),
                    inner.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            sent += usize::from(n == inner.len() as isize);
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        sent
    })
    .expect("in the client namespace");
    std::thread::sleep(Duration::from_millis(500));
    let line = stop_decap(vec![decap]).remove(0);
    eprintln!("{sent} IPIP packets from the client to {server}; pnlb decap: {line}");
    assert_eq!(sent, SENT);
    assert!(
        line.contains("decapsulated 0 IPIP/IP6IP6")
            && line.contains(&format!(" {SENT} from outside --from")),
        "{line}"
    );
}

/// Sends `len` bytes to the echo service and reads them back; returns
/// the answering server.
fn echo_round_trip(vip: IpAddr, len: usize) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::new(vip, ECHO_PORT), Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut greeting = [0u8; 3];
    stream
        .read_exact(&mut greeting)
        .map_err(|e| format!("greeting: {e}"))?;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sent = data.clone();
    let sender = std::thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0u8; len];
    stream
        .read_exact(&mut back)
        .map_err(|e| format!("reading the echo: {e}"))?;
    sender
        .join()
        .map_err(|_| "sender panicked".to_string())?
        .map_err(|e| format!("sending: {e}"))?;
    if back != data {
        return Err("the echo differs from what was sent".into());
    }
    Ok(String::from_utf8_lossy(&greeting[..2]).to_string())
}

#[test]
fn full_size_uploads_through_a_smaller_mtu_tunnel_complete_via_icmp_too_big() {
    if !privileged() {
        return;
    }
    // Client link 1500, the servers' LAN 1400: the client's full-size
    // segments do not fit the tunnel until the LB's too-big answers
    // lower its path MTU to the VIP.
    let lab = Lab::up(&LabSpec {
        lan_mtu: Some(1400),
        echo: true,
        ..LabSpec::default()
    })
    .expect("lab");
    let decaps = start_decap_everywhere(&lab);
    let config = lab.tun_config("ipip", 80, &[0, 1, 2])
        + &lab
            .tun_config("gue", ECHO_PORT, &[0, 1, 2])
            .replace("[daemon]\ninterfaces = [\"eth0\"]\n", "")
            .replace("name = \"web", "name = \"echo");
    let path = write_config(&lab, &config);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");

    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let server = in_netns(&lab.client, move || echo_round_trip(vip, 4 << 20))
            .unwrap()
            .unwrap_or_else(|err| panic!("4 MiB up and back through {vip} (gue): {err}"));
        assert!(["s1", "s2", "s3"].contains(&server.as_str()));
    }
    // A large download through ipip: replies go direct, at the LAN's MTU.
    for url in [
        format!("http://{VIP4}/blob"),
        format!("http://[{VIP6}]/blob"),
    ] {
        let size = lab.client_download(&url, 20).expect("curl blob");
        assert_eq!(size, pnlb_lab::nginx::BLOB_SIZE as u64, "{url}");
    }
    let (_, output) = daemon.stop(Duration::from_secs(10));
    assert!(
        output
            .iter()
            .any(|l| l.contains("answered") && l.contains("tx_icmp_too_big")),
        "the LB answered full-size packets with too-big: {output:?}"
    );
    stop_decap(decaps);
}

/// Runs `pnlb doctor` on server s1: (exit code, output).
fn doctor(lab: &Lab, vip: IpAddr, method: &str) -> (i32, String) {
    let vip = vip.to_string();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.servers[0].ns,
            PNLB,
            "doctor",
            "--real-server",
        ])
        .args(["--vip", &vip, "--method", method])
        .output()
        .expect("run pnlb doctor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

fn on_s1(lab: &Lab, script: &str) {
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.servers[0].ns, "sh", "-c", script])
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

#[test]
fn doctor_finds_each_prerequisite_left_out_and_its_fix_works() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec {
        servers: 1,
        nginx: false,
        ..LabSpec::default()
    })
    .expect("lab");
    let vip4 = IpAddr::V4(VIP4);

    // The lab's servers are set up for dr: that passes as it is.
    let (code, report) = doctor(&lab, vip4, "dr");
    assert_eq!(code, 0, "{report}");
    assert!(!report.contains("FAIL"), "{report}");

    // For tun, nothing decapsulates yet, and the MSS leaves no headroom.
    let (code, report) = doctor(&lab, vip4, "tun");
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("FAIL  nothing decapsulates"), "{report}");
    assert!(fix_for(&report, "nothing decapsulates").starts_with("pnlb decap --interface eth0"));
    // pnlb decap without --from: found, and the printed fix names it.
    let mut open = LabProcess::spawn(
        &lab.servers[0].ns,
        "pnlb decap without --from",
        PNLB,
        &["decap", "--interface", "eth0"],
    )
    .expect("pnlb decap");
    open.wait_for_line("decapsulating", Duration::from_secs(30))
        .expect("attached");
    let (code, report) = doctor(&lab, vip4, "tun");
    assert_eq!(code, 0, "a warning alone does not fail: {report}");
    assert!(
        report.contains("unwraps tunnels from any source"),
        "{report}"
    );
    assert!(
        fix_for(&report, "from any source").starts_with("pnlb decap --interface eth0 --from"),
        "{report}"
    );
    stop_decap(vec![open]);
    let mut decap = Some(lab.start_decap(PNLB, 0).expect("pnlb decap"));
    let (code, report) = doctor(&lab, vip4, "tun");
    assert_eq!(code, 0, "a warning alone does not fail: {report}");
    assert!(
        report.contains("from 2 load-balancer prefix(es) only"),
        "{report}"
    );
    on_s1(&lab, &fix_for(&report, "WARN  MSS"));
    let (code, report) = doctor(&lab, vip4, "tun");
    assert_eq!(
        (code, report.contains("ready: 0 warning(s)")),
        (0, true),
        "{report}"
    );

    // Each prerequisite taken away is found, and the printed fix restores it.
    for (break_it, problem) in [
        (
            "ip addr del 10.77.100.1/32 dev lo",
            "FAIL  VIP 10.77.100.1 is not on lo",
        ),
        (
            "sysctl -qw net.ipv4.conf.all.arp_ignore=0 net.ipv4.conf.eth0.arp_ignore=0",
            "FAIL  arp_ignore is below 1 on eth0",
        ),
        (
            "sysctl -qw net.ipv4.conf.all.arp_announce=1 net.ipv4.conf.eth0.arp_announce=0",
            "FAIL  arp_announce is below 2 on eth0",
        ),
        (
            "sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.eth0.rp_filter=0",
            "FAIL  rp_filter is strict (1) on eth0",
        ),
    ] {
        on_s1(&lab, break_it);
        let (code, report) = doctor(&lab, vip4, "tun");
        assert_eq!(code, 1, "{break_it}: {report}");
        assert!(report.contains(problem), "{break_it}: {report}");
        on_s1(&lab, &fix_for(&report, problem));
        let (code, report) = doctor(&lab, vip4, "tun");
        assert_eq!(code, 0, "after the fix for {problem:?}: {report}");
    }

    // IPv6: the VIP on lo (no ARP there).
    let vip6 = IpAddr::V6(VIP6);
    on_s1(&lab, &format!("ip -6 addr del {VIP6}/128 dev lo"));
    let (code, report) = doctor(&lab, vip6, "dr");
    assert_eq!(code, 1, "{report}");
    on_s1(&lab, &fix_for(&report, "is not on lo"));
    let (code, report) = doctor(&lab, vip6, "dr");
    assert_eq!(code, 0, "{report}");

    // Decapsulation gone again: found.
    if let Some(decap) = decap.take() {
        decap.stop(Duration::from_secs(10));
    }
    let (code, report) = doctor(&lab, vip4, "tun");
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("FAIL  nothing decapsulates"), "{report}");
}

/// The daemon and `pnlb decap` read the kernel's routes, links, neighbours
/// and addresses over rtnetlink: with no `ip` to run (an empty PATH for
/// both), every backend resolves and every server unwraps for its own
/// addresses. (It also means they start no process on a timer.)
#[test]
fn tun_balances_with_no_iproute2_to_run() {
    if !privileged() {
        return;
    }
    const NO_PATH: &str = "PATH=/nonexistent";
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let decaps: Vec<LabProcess> = lab
        .servers
        .iter()
        .map(|server| {
            let mut decap = LabProcess::spawn(
                &server.ns,
                "pnlb decap",
                "env",
                &[
                    NO_PATH,
                    PNLB,
                    "decap",
                    "--interface",
                    "eth0",
                    "--from",
                    DECAP_FROM,
                ],
            )
            .expect("pnlb decap");
            decap
                .wait_for_line("decapsulating", Duration::from_secs(30))
                .expect("pnlb decap attaches");
            decap
        })
        .collect();
    let path = write_config(&lab, &lab.tun_config("ipip", 80, &[0, 1, 2]));
    let config = path.display().to_string();
    let mut daemon = LabProcess::spawn(
        &lab.lb,
        "pnlb run",
        "env",
        &[NO_PATH, PNLB, "run", "--config", &config],
    )
    .expect("pnlb run");
    daemon
        .wait_for_line("forwarding", Duration::from_secs(30))
        .expect("pnlb run forwards");
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let answers = spread(&lab, vip, 60);
        println!("{vip}: {answers:?}");
        assert!(
            ["s1", "s2", "s3"]
                .iter()
                .all(|s| answers.get(*s).copied().unwrap_or(0) > 5),
            "{vip}: 60 requests over three servers: {answers:?}"
        );
    }
    let (status, output) = daemon.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{output:?}");
    assert!(
        !output.iter().any(|l| l.contains("cannot")),
        "nothing it could not do: {output:?}"
    );
    stop_decap(decaps);
}
