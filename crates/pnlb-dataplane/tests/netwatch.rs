//! The kernel's neighbour table through rtnetlink (netwatch.rs): a MAC
//! change arrives as an event, and a STALE entry that nothing else uses is
//! re-verified when asked (what keeps entries true while XDP forwards).
//! Two network namespaces of the test's own, joined by a veth pair: this
//! thread's, and one held by a `sleep` child (no named namespaces, which
//! need a shared /run mount that the fresh-machine root does not have).

mod support;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use pnlb_dataplane::netwatch::{NetEvent, NetWatch};
use support::{privileged, sh};

/// Runs `body` on a thread in a network namespace of its own, with a veth
/// pair n0 (10.99.0.1/24) - n1 up and `setup` (shell lines) run first.
fn in_own_netns<T: Send + 'static>(
    setup: &'static str,
    body: impl FnOnce() -> T + Send + 'static,
) -> std::thread::Result<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare on this thread only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        sh(&format!(
            "set -e
            ip link add n0 type veth peer name n1
            ip addr add 10.99.0.1/24 dev n0
            ip link set n0 up
            ip link set n1 up
            {setup}"
        ));
        body()
    })
    .join()
}

/// Runs `body(peer)` on a thread in a network namespace of its own, with a
/// veth pair n0 - n1 whose n1 is in a second namespace, held by a child
/// (bounded: 60 s; ended by its own PID after) that `nsenter -t {peer} -n`
/// reaches; `setup(peer)` (shell lines) runs first.
fn with_peer_netns<T: Send + 'static>(
    setup: impl FnOnce(u32) -> String,
    body: impl FnOnce(u32) -> T + Send + 'static,
) -> std::thread::Result<T> {
    let mut holder = Command::new("unshare")
        .args(["--net", "sleep", "60"])
        .spawn()
        .expect("unshare --net sleep");
    let peer = holder.id();
    std::thread::sleep(Duration::from_millis(200));
    let setup = setup(peer);
    let result = std::thread::spawn(move || {
        // SAFETY: unshare on this thread only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        sh(&format!(
            "set -e
            ip link set lo up
            ip link add n0 type veth peer name n1
            ip link set n1 netns {peer}
            {setup}"
        ));
        body(peer)
    })
    .join();
    let _ = holder.kill();
    let _ = holder.wait();
    result
}

fn state_of(neighbour: &str) -> String {
    let out = Command::new("ip")
        .args(["neigh", "show", neighbour, "dev", "n0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_stale_neighbour_is_reverified_on_request_and_a_new_mac_is_an_event() {
    if !privileged() {
        return;
    }
    let setup = |peer: u32| {
        format!(
            "ip addr add 10.99.0.1/24 dev n0
            ip link set n0 up
            nsenter -t {peer} -n ip addr add 10.99.0.2/24 dev n1
            nsenter -t {peer} -n ip link set n1 up
            sysctl -qw net.ipv4.neigh.n0.delay_first_probe_time=1"
        )
    };
    let result = with_peer_netns(setup, |peer| {
        let mut watch = NetWatch::subscribe().expect("rtnetlink");
        let n0 = pnlb_dataplane::loader::ifindex_of("n0").unwrap();
        let neighbour: IpAddr = "10.99.0.2".parse().unwrap();
        // One datagram: the kernel resolves its neighbour.
        let socket = std::net::UdpSocket::bind("10.99.0.1:0").unwrap();
        socket.send_to(b"", "10.99.0.2:9").unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while !state_of("10.99.0.2").contains("REACHABLE") {
            assert!(
                Instant::now() < deadline,
                "never resolved: {}",
                state_of("10.99.0.2")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // What an entry becomes when only XDP uses it: STALE, for good.
        let mac = state_of("10.99.0.2")
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_string();
        sh(&format!(
            "ip neigh change 10.99.0.2 dev n0 lladdr {mac} nud stale"
        ));
        assert!(state_of("10.99.0.2").contains("STALE"));
        let _ = watch.wait(Duration::ZERO);
        assert_eq!(
            watch.reverify(&[(n0, neighbour)]),
            1,
            "a STALE entry is asked about"
        );
        // Used while STALE: DELAY (only a use does that), then after
        // delay_first_probe_time a unicast probe, answered: REACHABLE.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while Instant::now() < deadline && !seen.iter().any(|s: &String| s.contains("REACHABLE")) {
            let state = state_of("10.99.0.2");
            if seen.last() != Some(&state) {
                seen.push(state);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("after confirm: {seen:?}");
        assert!(
            seen.first().is_some_and(|s| s.contains("DELAY")),
            "the request counts as a use: {seen:?}"
        );
        assert!(
            seen.iter().any(|s| s.contains("REACHABLE")),
            "re-verified: {seen:?}"
        );

        // A gratuitous ARP with a new MAC is an event naming it.
        sh(&format!(
            "nsenter -t {peer} -n sysctl -qw net.ipv4.conf.n1.arp_notify=1
            nsenter -t {peer} -n ip link set n1 address 02:99:00:00:00:02"
        ));
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut learned = false;
        while Instant::now() < deadline && !learned {
            for event in watch.wait(Duration::from_millis(200)).unwrap() {
                if event
                    == (NetEvent::Neighbour {
                        ifindex: n0,
                        address: neighbour,
                        mac: [0x02, 0x99, 0, 0, 0, 2],
                    })
                {
                    learned = true;
                }
            }
        }
        assert!(learned, "the new MAC arrived as an event");
    });
    result.expect("test body");
}

/// An operator's static entry (`nud permanent`) stays as it is when the
/// watch re-verifies the neighbours we forward to (a confirmation made it
/// INCOMPLETE, then FAILED: the static MAC lost).
#[test]
fn a_permanent_neighbour_stays_permanent_when_reverified() {
    if !privileged() {
        return;
    }
    let result = in_own_netns(
        "ip neigh replace 10.99.0.7 dev n0 lladdr 02:99:00:00:00:07 nud permanent",
        || {
            let watch = NetWatch::subscribe().expect("rtnetlink");
            let n0 = pnlb_dataplane::loader::ifindex_of("n0").unwrap();
            let before = state_of("10.99.0.7");
            let asked = watch.reverify(&[(n0, "10.99.0.7".parse().unwrap())]);
            assert_eq!(asked, 0, "a static entry is not asked about");
            std::thread::sleep(Duration::from_millis(500));
            let after = state_of("10.99.0.7");
            println!("before: {before:?}; after reverify: {after:?}");
            (before, after)
        },
    );
    let (before, after) = result.expect("the test thread");
    assert!(before.contains("PERMANENT"), "{before}");
    assert_eq!(after, before);
}

/// The daemon's periodic questions (which neighbours are STALE, which
/// routers the default routes use) answered over rtnetlink in process, as
/// `ip` lists them: the main table's default routes only (each router of
/// a multipath one), STALE entries only.
#[test]
fn stale_neighbours_and_default_routers_are_read_over_rtnetlink() {
    if !privileged() {
        return;
    }
    let result = in_own_netns(
        "ip -6 addr add fd99::1/64 dev n0 nodad
            ip route add default via 10.99.0.254 dev n0
            ip -6 route add default nexthop via fd99::254 dev n0 nexthop via fd99::251 dev n0
            ip route add default via 10.99.0.253 dev n0 table 100
            ip route add 10.98.0.0/16 via 10.99.0.252 dev n0
            ip neigh replace 10.99.0.7 dev n0 lladdr 02:99:00:00:00:07 nud stale
            ip neigh replace 10.99.0.8 dev n0 lladdr 02:99:00:00:00:08 nud permanent
            ip neigh replace 10.99.0.9 dev n0 lladdr 02:99:00:00:00:09 nud reachable
            ip neigh replace fd99::7 dev n0 lladdr 02:99:00:00:00:17 nud stale",
        || {
            let n0 = pnlb_dataplane::loader::ifindex_of("n0").unwrap();
            let started = Instant::now();
            let gateways =
                pnlb_dataplane::rtnetlink::routes::default_gateways().expect("route dump");
            let stale =
                pnlb_dataplane::rtnetlink::neighbours::stale_neighbours().expect("neighbour dump");
            println!(
                "both dumps in {:?}: default routers {gateways:?}, stale {stale:?}",
                started.elapsed()
            );
            (n0, gateways, stale)
        },
    );
    let (n0, gateways, stale) = result.expect("the test thread");
    let ip = |text: &str| text.parse::<IpAddr>().unwrap();
    assert_eq!(
        gateways,
        vec![
            (n0, ip("10.99.0.254")),
            (n0, ip("fd99::254")),
            (n0, ip("fd99::251"))
        ]
    );
    let expected = [(n0, ip("10.99.0.7")), (n0, ip("fd99::7"))];
    assert_eq!(stale, expected.into_iter().collect());
}

/// Every backend's next hop, read over rtnetlink (routes asked together,
/// links and neighbours dumped): on-link, behind a router, on an 802.1Q
/// VLAN device (sent on its parent, tagged; where the kernel has 802.1Q,
/// which this machine's does not: there the parse test covers it), IPv6,
/// and the two ways one fails (no route, no neighbour). Then a thousand
/// routes asked at once, more than the socket's buffer holds answers for
/// in one go.
#[test]
fn next_hops_vlans_and_local_addresses_are_read_over_rtnetlink() {
    use pnlb_dataplane::nexthop::{vlan_devices, KernelResolver, Resolver, VlanDevice};
    use pnlb_dataplane::rtnetlink::{addresses::local_addresses, routes::routes_to};

    if !privileged() {
        return;
    }
    let result = in_own_netns(
        "ip link set n0 address 02:99:00:00:00:01
            ip -6 addr add fd99::1/64 dev n0 nodad
            ip route add 10.98.0.0/16 via 10.99.0.7 dev n0 src 10.99.0.1
            ip route add unreachable 10.96.0.0/16
            ip neigh replace 10.99.0.7 dev n0 lladdr 02:99:00:00:00:07 nud permanent
            ip neigh replace fd99::7 dev n0 lladdr 02:99:00:00:00:17 nud permanent
            ip neigh replace 10.99.0.66 dev n0 nud failed",
        || {
            let vlans_here = Command::new("sh")
                .args([
                    "-c",
                    "ip link add link n0 name n0.42 type vlan id 42 2>/dev/null",
                ])
                .status()
                .is_ok_and(|status| status.success());
            if vlans_here {
                sh("set -e
                    ip link add link n0 name n0.ad type vlan proto 802.1ad id 43
                    ip link set n0.42 address 02:99:00:00:00:42
                    ip link set n0.42 up
                    ip addr add 10.99.42.1/24 dev n0.42
                    ip route add 10.97.0.0/16 dev n0.42 src 10.99.42.1
                    ip neigh replace 10.99.42.9 dev n0.42 lladdr 02:99:00:00:42:09 nud stale
                    ip neigh replace 10.97.0.5 dev n0.42 lladdr 02:99:00:00:97:05 nud reachable");
            } else {
                println!("this kernel makes no 802.1Q devices: the VLAN case is left out");
            }
            let index = |name: &str| pnlb_dataplane::loader::ifindex_of(name).unwrap();
            let n0 = index("n0");
            let vlan = vlans_here.then(|| index("n0.42"));
            let mut backends = vec![
                "10.99.0.7",
                "10.98.1.1",
                "fd99::7",
                "10.96.0.1",
                "10.99.0.66",
            ];
            if vlans_here {
                backends.extend(["10.99.42.9", "10.97.0.5"]);
            }
            let backends: Vec<IpAddr> = backends.iter().map(|a| a.parse().unwrap()).collect();
            let started = Instant::now();
            let resolution = KernelResolver {
                probe_wait: Duration::ZERO,
            }
            .resolve(&backends);
            println!(
                "{} backends resolved in {:?}",
                backends.len(),
                started.elapsed()
            );
            let hops: Vec<String> = backends
                .iter()
                .map(|b| match &resolution[b] {
                    Ok(hop) => format!(
                        "{b}: send on {} vlan {} device {} to {:02x?} from {:02x?} gateway {:?} source {:?}",
                        hop.ifindex, hop.vlan, hop.device, hop.mac, hop.src_mac, hop.gateway,
                        hop.source
                    ),
                    Err(err) => format!("{b}: {err}"),
                })
                .collect();
            let vlans = vlan_devices().expect("link dump");
            let local = local_addresses().expect("address dump");

            let many: Vec<IpAddr> = (0..1000u32)
                .map(|i| IpAddr::from([10, 98, (i / 250) as u8, (i % 250) as u8 + 1]))
                .collect();
            let started = Instant::now();
            let routes = routes_to(&many).expect("routes asked together");
            println!("{} routes asked in {:?}", many.len(), started.elapsed());
            (n0, vlan, hops, vlans, local, routes.len())
        },
    );
    let (n0, vlan, hops, vlans, local, many) = result.expect("the test thread");
    for hop in &hops {
        println!("{hop}");
    }
    let mut expected = vec![
        format!("10.99.0.7: send on {n0} vlan 0 device {n0} to [02, 99, 00, 00, 00, 07] from [02, 99, 00, 00, 00, 01] gateway None source Some(10.99.0.1)"),
        format!("10.98.1.1: send on {n0} vlan 0 device {n0} to [02, 99, 00, 00, 00, 07] from [02, 99, 00, 00, 00, 01] gateway Some(10.99.0.7) source Some(10.99.0.1)"),
        format!("fd99::7: send on {n0} vlan 0 device {n0} to [02, 99, 00, 00, 00, 17] from [02, 99, 00, 00, 00, 01] gateway None source Some(fd99::1)"),
        "10.96.0.1: no route to 10.96.0.1".to_string(),
        "10.99.0.66: 10.99.0.66 does not answer ARP/neighbour discovery on n0".to_string(),
    ];
    let mut expected_vlans = Vec::new();
    if let Some(vlan) = vlan {
        expected.extend([
            format!("10.99.42.9: send on {n0} vlan 42 device {vlan} to [02, 99, 00, 00, 42, 09] from [02, 99, 00, 00, 00, 42] gateway None source Some(10.99.42.1)"),
            format!("10.97.0.5: send on {n0} vlan 42 device {vlan} to [02, 99, 00, 00, 97, 05] from [02, 99, 00, 00, 00, 42] gateway None source Some(10.99.42.1)"),
        ]);
        // The 802.1ad device is not ours.
        expected_vlans.push(VlanDevice {
            ifindex: vlan,
            parent_ifindex: n0,
            vid: 42,
        });
    }
    assert_eq!(hops, expected);
    assert_eq!(vlans, expected_vlans);
    let ip = |text: &str| text.parse::<IpAddr>().unwrap();
    for address in ["10.99.0.1", "fd99::1"] {
        assert!(local.contains(&ip(address)), "{address} in {local:?}");
    }
    assert!(!local.contains(&ip("10.99.0.7")));
    assert_eq!(many, 1000, "every route of a thousand asked together");
}

/// The host addresses that change hands with HA mastership, added and
/// removed over rtnetlink (a takeover forks no `ip`): IPv4 /32 and IPv6
/// /128 without DAD (usable at once, not "tentative"); adding one that is
/// there, or removing one that is gone, is fine.
#[test]
fn host_addresses_are_added_and_removed_over_rtnetlink() {
    use pnlb_dataplane::rtnetlink::addresses::{
        add_host_address, interface_addresses, remove_host_address,
    };

    if !privileged() {
        return;
    }
    let result = in_own_netns("ip -6 addr add fd99::1/64 dev n0 nodad", || {
        let n0 = pnlb_dataplane::loader::ifindex_of("n0").unwrap();
        let floating: [IpAddr; 2] = ["10.99.0.254".parse().unwrap(), "fd99::254".parse().unwrap()];
        let started = Instant::now();
        for address in floating {
            add_host_address(n0, address).expect("added");
            add_host_address(n0, address).expect("added again: fine");
        }
        println!("added (twice each) in {:?}", started.elapsed());
        let held: Vec<(IpAddr, u8)> = interface_addresses()
            .unwrap()
            .into_iter()
            .filter(|a| a.ifindex == n0)
            .map(|a| (a.address, a.prefix_len))
            .collect();
        let shown = Command::new("ip")
            .args(["addr", "show", "dev", "n0"])
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&shown.stdout).to_string();
        for address in floating {
            remove_host_address(n0, address).expect("removed");
            remove_host_address(n0, address).expect("removed again: fine");
        }
        let after: Vec<IpAddr> = interface_addresses()
            .unwrap()
            .into_iter()
            .filter(|a| a.ifindex == n0)
            .map(|a| a.address)
            .collect();
        (held, shown, after)
    });
    let (held, shown, after) = result.expect("the test thread");
    println!("{shown}");
    let ip = |text: &str| text.parse::<IpAddr>().unwrap();
    assert!(held.contains(&(ip("10.99.0.254"), 32)), "{held:?}");
    assert!(held.contains(&(ip("fd99::254"), 128)), "{held:?}");
    assert!(held.contains(&(ip("10.99.0.1"), 24)), "{held:?}");
    let line = shown
        .lines()
        .find(|l| l.contains("inet6 fd99::254/128"))
        .unwrap_or_default();
    assert!(
        line.contains("nodad") && !line.contains("tentative"),
        "added without DAD: {shown}"
    );
    assert!(!after.contains(&ip("10.99.0.254")) && !after.contains(&ip("fd99::254")));
    assert!(
        after.contains(&ip("10.99.0.1")),
        "only the host addresses went"
    );
}

/// Default routers the kernel has no neighbour entry for are probed
/// (`nexthop::probe_unresolved`, the daemon's neighbour watch): an IPv4
/// router, and an IPv6 one by its link-local address (as router
/// advertisements install it), probed on its own interface while another
/// (m0) has link-local routes too. Resolved ones are left alone.
#[test]
fn unresolved_routers_are_probed_link_local_ones_on_their_interface() {
    if !privileged() {
        return;
    }
    // The routers are the peer namespace's n1.
    let setup = |peer: u32| {
        format!(
            "ip addr add 10.99.0.1/24 dev n0
            ip -6 addr add fe80::1/64 dev n0 nodad
            ip link set n0 up
            nsenter -t {peer} -n ip addr add 10.99.0.254/24 dev n1
            nsenter -t {peer} -n ip -6 addr add fe80::254/64 dev n1 nodad
            nsenter -t {peer} -n ip link set n1 up
            ip route add default via 10.99.0.254 dev n0
            ip -6 route add default via fe80::254 dev n0
            ip link add m0 type veth peer name m1
            ip -6 addr add fe80::1/64 dev m0 nodad
            ip link set m0 up
            ip link set m1 up"
        )
    };
    let result = with_peer_netns(setup, |_| {
        let gateways = pnlb_dataplane::rtnetlink::routes::default_gateways().expect("route dump");
        let probed = pnlb_dataplane::nexthop::probe_unresolved(&gateways);
        let deadline = Instant::now() + Duration::from_secs(3);
        let resolved = |neighbour: &str| state_of(neighbour).contains("REACHABLE");
        while !(resolved("10.99.0.254") && resolved("fe80::254")) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let states = (state_of("10.99.0.254"), state_of("fe80::254"));
        let probed_again = pnlb_dataplane::nexthop::probe_unresolved(&gateways);
        (gateways, probed, states, probed_again)
    });
    let (gateways, probed, (v4, v6), probed_again) = result.expect("the test thread");
    println!(
        "routers {gateways:?}: {probed} probed; then {v4:?} and {v6:?}; {probed_again} probed again"
    );
    assert_eq!(gateways.len(), 2, "{gateways:?}");
    assert_eq!(probed, 2, "neither had an entry");
    assert!(v4.contains("REACHABLE"), "IPv4 router: {v4:?}");
    assert!(v6.contains("REACHABLE"), "link-local IPv6 router: {v6:?}");
    assert_eq!(probed_again, 0, "resolved ones are not probed again");
}
