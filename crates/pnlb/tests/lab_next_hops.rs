//! Next hops that follow the network: a UDP stream through nat runs while
//! its server's MAC changes and then the router's (a VRRP failover, as the
//! LB sees it), each announced by gratuitous ARP / unsolicited neighbour
//! advertisement as Linux (arp_notify, ndisc_notify) and VRRP routers send
//! them. The server's MAC is in pnlb's backend map (kept by rtnetlink
//! events); the router's is read by the data plane from the kernel's
//! table. Then the server's MAC changes again without a word, which only
//! the kernel's re-verification of the neighbours pnlb forwards to finds.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use pnlb_lab::{netns, spawn_in_netns, Gateway, Lab, LabSpec, MIRROR_PORT, VIP4, VIP6};
use support::*;

/// Datagrams every this often, per address family.
const INTERVAL: Duration = Duration::from_millis(10);

/// A stream of datagrams to the VIP, one flow per family, until stopped:
/// the instants its answers arrived.
struct Stream {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Instant>>>,
    sender: std::thread::JoinHandle<Result<(), pnlb_lab::LabError>>,
}

impl Stream {
    fn start(lab: &Lab, vip: IpAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (flag, log) = (stop.clone(), answers.clone());
        let sender = spawn_in_netns(&lab.client, move || {
            let socket =
                udp_connected(SocketAddr::new(vip, MIRROR_PORT), Duration::from_millis(50));
            let receiver = socket.try_clone().unwrap();
            let (done, answered) = (flag.clone(), log.clone());
            let reader = std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !done.load(Ordering::Relaxed) {
                    if receiver.recv(&mut buf).is_ok() {
                        answered.lock().unwrap().push(Instant::now());
                    }
                }
            });
            // Bounded: a minute at most, whatever the test does.
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut seq = 0u64;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let _ = socket.send(&seq.to_be_bytes());
                seq += 1;
                sleep(INTERVAL);
            }
            flag.store(true, Ordering::Relaxed);
            let _ = reader.join();
        })
        .expect("stream in the client namespace");
        Self {
            stop,
            answers,
            sender,
        }
    }

    /// The longest time without an answer between `from` and `to`.
    fn longest_silence(&self, from: Instant, to: Instant) -> Duration {
        let answers = self.answers.lock().unwrap();
        let mut last = from;
        let mut longest = Duration::ZERO;
        for &t in answers.iter().filter(|&&t| t > from && t <= to) {
            longest = longest.max(t.duration_since(last));
            last = t;
        }
        longest.max(to.saturating_duration_since(last))
    }

    /// Waits (up to `limit` after `at`) until the stream has been answered
    /// for the last 200 ms, at least 1 s after `at`; then the longest
    /// silence since `at`, or None if it never came back.
    fn outage_after(&self, at: Instant, limit: Duration) -> Option<Duration> {
        let steady = Duration::from_millis(200);
        loop {
            let now = Instant::now();
            if now >= at + Duration::from_secs(1)
                && self.longest_silence(now - steady, now) < steady / 2
            {
                return Some(self.longest_silence(at, now));
            }
            if now >= at + limit {
                return None;
            }
            sleep(Duration::from_millis(50));
        }
    }

    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.sender.join();
        let n = self.answers.lock().unwrap().len();
        n
    }
}

fn sysctls(ns: &str, settings: &[&str]) {
    for setting in settings {
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-qw", setting])
            .status()
            .expect("sysctl");
        assert!(status.success(), "{ns}: sysctl {setting}");
    }
}

/// Gives `dev` in `ns` a new MAC; returns when the command did.
fn change_mac(ns: &str, dev: &str, mac: &str) -> Instant {
    let at = Instant::now();
    netns::ip(ns, &["link", "set", "dev", dev, "address", mac]).expect("ip link set address");
    at
}

#[test]
fn a_stream_continues_within_a_second_when_a_servers_or_routers_mac_changes() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec {
        servers: 1,
        servers_route_via: Gateway::Lb,
        nginx: false,
        echo: true,
        ..LabSpec::default()
    })
    .expect("lab");
    let server = lab.servers[0].ns.clone();
    let announce = [
        "net.ipv4.conf.all.arp_notify=1",
        "net.ipv4.conf.eth0.arp_notify=1",
        "net.ipv6.conf.all.ndisc_notify=1",
        "net.ipv6.conf.eth0.ndisc_notify=1",
    ];
    sysctls(&server, &announce);
    sysctls(
        &lab.router,
        &[
            "net.ipv4.conf.all.arp_notify=1",
            "net.ipv4.conf.eth1.arp_notify=1",
            "net.ipv6.conf.all.ndisc_notify=1",
            "net.ipv6.conf.eth1.ndisc_notify=1",
        ],
    );
    let config = lab
        .config("nat", MIRROR_PORT, &[0])
        .replace("protocol = \"tcp\"", "protocol = \"udp\"");
    let path = write_config(&lab, &config);
    let _daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");

    let streams = [
        ("IPv4", Stream::start(&lab, IpAddr::V4(VIP4))),
        ("IPv6", Stream::start(&lab, IpAddr::V6(VIP6))),
    ];
    sleep(Duration::from_secs(1));
    let mut report = Vec::new();
    for (what, ns, dev, mac) in [
        (
            "the server's MAC (announced)",
            server.as_str(),
            "eth0",
            "02:5e:00:00:00:01",
        ),
        (
            "the router's MAC (announced)",
            lab.router.as_str(),
            "eth1",
            "02:5e:00:00:00:02",
        ),
    ] {
        let at = change_mac(ns, dev, mac);
        for (family, stream) in &streams {
            let resumed = stream.outage_after(at, Duration::from_secs(5));
            println!("{what}, {family}: longest silence {resumed:?}");
            report.push((what, *family, resumed));
        }
        sleep(Duration::from_secs(1));
    }

    // Unannounced: the LB learns it only by asking (re-verification).
    let quiet: Vec<String> = announce.iter().map(|s| s.replace("=1", "=0")).collect();
    sysctls(
        &server,
        &quiet.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let at = change_mac(&server, "eth0", "02:5e:00:00:00:03");
    for (family, stream) in &streams {
        let resumed = stream.outage_after(at, Duration::from_secs(30));
        println!("the server's MAC (unannounced), {family}: longest silence {resumed:?}");
        assert!(
            resumed.is_some(),
            "{family}: an unannounced MAC change is found by re-verification"
        );
    }
    for (family, stream) in streams {
        println!("{family}: {} answers in all", stream.stop());
    }
    for (what, family, resumed) in report {
        let resumed = resumed.unwrap_or(Duration::MAX);
        assert!(
            resumed < Duration::from_secs(1),
            "{what}, {family}: silent for {resumed:?}, not under 1 s"
        );
    }
}
