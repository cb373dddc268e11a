//! Scale-out behind ECMP (issue 19, docs/scale-out.md): LB nodes running
//! pnlb with [bgp] and BIRD, the lab's router running BIRD and spreading
//! each VIP over the nodes that announce it. Each test prints what it
//! measured.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use pnlb_lab::{spawn_in_netns, Lab, LabProcess, LabSpec, BULK_PORT, VIP4, VIP6};
use support::*;

/// A node running: its BIRD and its pnlb.
struct Node {
    index: usize,
    bird: LabProcess,
    pnlb: LabProcess,
}

fn node_config(lab: &Lab, base: &str, index: usize) -> PathBuf {
    let token = lab.dir.join("api.token");
    write_secret(&token, &format!("{TOKEN}\n"));
    let text = lab.ecmp_config(base, index).replacen(
        "[daemon]\n",
        &format!(
            "[daemon]\napi = \"127.0.0.1:9180\"\napi_token_file = \"{}\"\n",
            token.display()
        ),
        1,
    );
    let path = lab.dir.join(format!("lb{index}.toml"));
    std::fs::write(&path, text).expect("write the node's config");
    path
}

fn start_node(lab: &Lab, base: &str, index: usize) -> Node {
    let bird = lab.start_node_bird(index).expect("BIRD on the node");
    let path = node_config(lab, base, index);
    let pnlb = lab
        .start_node_pnlb(PNLB, index, &path)
        .expect("pnlb on the node");
    Node { index, bird, pnlb }
}

/// Waits until the router's next hops for `vip` are the nodes `want`
/// (1-based) and returns how long that took; on a timeout, fails with
/// `what`, what each node announces and the router's sessions.
fn routed(
    lab: &Lab,
    nodes: &[Node],
    vip: impl Into<IpAddr>,
    want: &[usize],
    seconds: u64,
    what: &str,
) -> Duration {
    lab.wait_for_next_hops(vip, want, Duration::from_secs(seconds))
        .unwrap_or_else(|err| panic!("{what}: {err}\n{}", announcements(lab, nodes)))
}

/// What each running node announces and why not, for a failure message.
fn announcements(lab: &Lab, nodes: &[Node]) -> String {
    let each: Vec<String> = nodes
        .iter()
        .map(|node| {
            let status = status_in(&ns_of(lab, node.index));
            let recent: Vec<String> = node.pnlb.output().into_iter().rev().take(30).collect();
            format!("lb{}: {} {recent:#?}", node.index, status["node"]["bgp"])
        })
        .collect();
    format!(
        "{}\nthe router's sessions:\n{}\nwhat the router logged of them: {:#?}",
        each.join("\n"),
        lab.router_sessions(),
        lab.router_session_changes()
    )
}

/// The router's route to `vip` and its neighbours, for a failure message:
/// a node in the multipath route that takes no flows (a CI run saw one
/// IPv6 node at 0% with the route naming it) shows here why.
fn router_view(lab: &Lab, vip: IpAddr) -> String {
    let family = if vip.is_ipv6() { "-6" } else { "-4" };
    let vip = vip.to_string();
    [
        vec![family, "route", "show", vip.as_str()],
        vec![family, "neigh", "show"],
    ]
    .iter()
    .map(|args| {
        pnlb_lab::netns::exec(&lab.router, "ip", args)
            .map(|out| String::from_utf8_lossy(&out.stdout).to_string())
            .unwrap_or_else(|err| err.to_string())
    })
    .collect::<Vec<_>>()
    .join("\n")
}

/// What each node logged of its node lists, sync and BGP: when a short
/// request failed while a node joined or left, the times to set beside
/// the failure's.
fn node_lists(lab: &Lab, nodes: &[Node]) -> String {
    let lists = nodes
        .iter()
        .map(|node| {
            let lines: Vec<String> = node
                .pnlb
                .output()
                .into_iter()
                .filter(|l| l.contains("ECMP") || l.contains("sync") || l.contains("bgp"))
                .collect();
            format!("lb{}'s node lists, sync and BGP: {lines:#?}", node.index)
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "{lists}\nwhat the router logged of its sessions: {:#?}",
        lab.router_session_changes()
    )
}

fn ns_of(lab: &Lab, index: usize) -> String {
    lab.ecmp_nodes[index - 1].ns.clone()
}

/// The lab's service on `vip`: "web" on the IPv4 VIP, "web6" on the IPv6.
fn service_on(vip: IpAddr) -> &'static str {
    if vip.is_ipv6() {
        "web6"
    } else {
        "web"
    }
}

/// New flows node `index` has taken for `service`.
fn new_flows(lab: &Lab, index: usize, service: &str) -> u64 {
    status_in(&ns_of(lab, index))["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == service)
        .filter_map(|s| s["counters"]["new_flows"].as_u64())
        .sum()
}

/// Short HTTP requests from the client to `vip`, each on a new
/// connection; how many failed.
fn requests(lab: &Lab, vip: IpAddr, count: usize) -> usize {
    pnlb_lab::in_netns(&lab.client, move || {
        (0..count).filter(|_| request(vip).is_err()).count()
    })
    .expect("client namespace")
}

#[test]
fn new_connections_spread_over_every_node_and_a_vip_without_backends_is_withdrawn() {
    if !privileged() {
        return;
    }
    let mut lab = Lab::up(&LabSpec {
        ecmp: 3,
        ..LabSpec::default()
    })
    .expect("lab");
    let everyone: Vec<usize> = (0..lab.servers.len()).collect();
    let base = lab.config("dr", 80, &everyone).replace(
        "scheduler = \"maglev\"\n",
        "scheduler = \"maglev\"\n[service.health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 2\n",
    );
    let started = Instant::now();
    let nodes: Vec<Node> = (1..=3)
        .map(|index| start_node(&lab, &base, index))
        .collect();
    let converged = routed(
        &lab,
        &nodes,
        VIP4,
        &[1, 2, 3],
        20,
        "the router spreads the VIP over 3 nodes",
    );
    eprintln!(
        "3 nodes started and announced in {:.1} s (the router's multipath route {:.1} s after the last started)",
        started.elapsed().as_secs_f64(),
        converged.as_secs_f64()
    );
    let fingerprints: Vec<String> = (1..=3)
        .map(|i| {
            status_in(&ns_of(&lab, i))["node"]["fingerprint"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    eprintln!("fingerprints: {fingerprints:?}");
    let lists: Vec<String> = (1..=3)
        .map(|i| status_in(&ns_of(&lab, i))["node"]["bgp"]["nodes"].to_string())
        .collect();
    eprintln!("the nodes taking new flows, as each node sees them: {lists:?}");
    assert!(
        lists
            .iter()
            .all(|l| *l == lists[0] && l.matches("10.77.1.").count() == 3),
        "{lists:?}"
    );
    let doctor = pnlb_lab::netns::exec(
        &ns_of(&lab, 1),
        PNLB,
        &[
            "doctor",
            "--lb",
            "--config",
            &lab.dir.join("lb1.toml").display().to_string(),
        ],
    )
    .expect("pnlb doctor");
    let doctor = String::from_utf8_lossy(&doctor.stdout).to_string();
    let bird_lines: Vec<&str> = doctor
        .lines()
        .filter(|l| l.contains("BIRD") || l.contains("BGP"))
        .collect();
    eprintln!("pnlb doctor --lb on node 1: {bird_lines:#?}");
    assert!(
        doctor.contains("BIRD answers on")
            && doctor.contains("pnlb_vips4 and pnlb_vips6")
            && doctor.contains("a BGP session of BIRD is established"),
        "{doctor}"
    );
    assert!(
        fingerprints
            .iter()
            .all(|f| f.len() == 16 && *f == fingerprints[0]),
        "{fingerprints:?}"
    );

    // The IPv6 VIP too: its own sessions, next hops and multipath route.
    routed(
        &lab,
        &nodes,
        VIP6,
        &[1, 2, 3],
        20,
        "the router spreads the IPv6 VIP over 3 nodes",
    );
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let (failed, shares) = spread(&lab, vip, &[1, 2, 3], 300);
        eprintln!("300 new connections to {vip}: {failed} failed; per node {shares:.1?} %");
        assert_eq!(failed, 0);
        assert!(
            shares.iter().all(|s| (20.0..=46.0).contains(s)),
            "{shares:?}\n{}\n{}",
            router_view(&lab, vip),
            announcements(&lab, &nodes)
        );
    }

    // Every backend down: every node withdraws the VIP; back up: announced.
    for server in 0..lab.servers.len() {
        lab.stop_nginx(server);
    }
    let withdrawn = routed(&lab, &nodes, VIP4, &[], 30, "withdrawn by every node");
    routed(&lab, &nodes, VIP6, &[], 30, "IPv6 VIP withdrawn");
    let reason = status_in(&ns_of(&lab, 2))["node"]["bgp"]["withdrawn"].to_string();
    eprintln!(
        "every backend down: both VIPs withdrawn by every node {:.1} s after nginx stopped ({reason})",
        withdrawn.as_secs_f64()
    );
    assert!(reason.contains("no usable backend"), "{reason}");
    for server in 0..lab.servers.len() {
        lab.start_nginx(server).expect("nginx again");
    }
    let announced = routed(
        &lab,
        &nodes,
        VIP4,
        &[1, 2, 3],
        30,
        "announced again by every node",
    );
    routed(
        &lab,
        &nodes,
        VIP6,
        &[1, 2, 3],
        30,
        "the IPv6 VIP announced again by every node",
    );
    eprintln!(
        "backends up again: announced by every node {:.1} s after nginx started",
        announced.as_secs_f64()
    );
    assert_eq!(requests(&lab, IpAddr::V4(VIP4), 20), 0, "served again");
    assert_eq!(
        requests(&lab, IpAddr::V6(VIP6), 20),
        0,
        "served again over IPv6"
    );

    for node in nodes {
        let (_, output) = node.pnlb.stop(Duration::from_secs(10));
        assert!(
            output
                .iter()
                .any(|l| l.contains("bgp: stopping: every VIP withdrawn")),
            "node {} withdrew at stop: {output:#?}",
            node.index
        );
        drop(node.bird);
    }
}

/// Bytes of each long transfer, and the rate the client reads them at:
/// each lasts ~25 s, through everything the test does to the nodes.
const LONG: u64 = 25 << 20;
const LONG_RATE: u64 = 1 << 20;

/// `count` long byte-exact downloads through the VIP's bulk service, each
/// on its own connection; each one's result.
fn long_transfers(
    lab: &Lab,
    count: u64,
) -> Vec<std::thread::JoinHandle<Result<Result<(), String>, pnlb_lab::LabError>>> {
    (0..count)
        .map(|n| {
            spawn_in_netns(&lab.client, move || {
                let vip = SocketAddr::new(IpAddr::V4(VIP4), BULK_PORT);
                let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(3))
                    .map_err(|e| format!("connect: {e}"))?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(15)))
                    .map_err(|e| e.to_string())?;
                let done = pnlb_lab::bulk::download_at(&mut stream, LONG, 100 + n, Some(LONG_RATE))
                    .map_err(|e| format!("broke: {e}"))?;
                if done.received != LONG || done.client_checksum != done.server_checksum {
                    return Err(format!("{done:?}: not the bytes the server sent"));
                }
                Ok(())
            })
            .expect("client namespace")
        })
        .collect()
}

/// Runs `change` with short requests going on; (answered, failed, what
/// `change` returned).
fn during<T>(lab: &Lab, change: impl FnOnce() -> T) -> (u32, u32, T) {
    let stop = Arc::new(AtomicBool::new(false));
    let requests = short_requests(lab, stop.clone(), Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let result = change();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = requests.join().expect("joined").expect("client namespace");
    (ok, failed, result)
}

/// 30 long transfers and a stream of short requests while a 4th node is
/// added, one node drained and one killed (kill -9 and its link cut), for
/// `method` with `scheduler`.
fn through_node_changes(method: &str, scheduler: &str) {
    // What each line it prints begins with: "nat", "dr rr".
    let label = if scheduler == "maglev" {
        method.to_string()
    } else {
        format!("{method} {scheduler}")
    };
    let mut lab = Lab::up(&LabSpec {
        ecmp: 4,
        nginx: true,
        echo: true,
        ..LabSpec::default()
    })
    .expect("lab");
    let everyone: Vec<usize> = (0..lab.servers.len()).collect();
    let web = if method == "tun" {
        lab.tun_config("ipip", 80, &everyone)
    } else {
        lab.config(method, 80, &everyone)
    };
    let bulk = web
        .replace("port = 80", &format!("port = {BULK_PORT}"))
        .replace("name = \"web", "name = \"bulk");
    let bulk_services = bulk.split_once("\n\n").map_or("", |(_, s)| s);
    let base = with_health(&format!("{web}\n{bulk_services}")).replace(
        "scheduler = \"maglev\"",
        &format!("scheduler = \"{scheduler}\""),
    );
    let decaps: Vec<LabProcess> = if method == "tun" {
        (0..lab.servers.len())
            .map(|i| lab.start_decap(PNLB, i).expect("decap"))
            .collect()
    } else {
        Vec::new()
    };
    let mut nodes: Vec<Node> = (1..=3)
        .map(|index| start_node(&lab, &base, index))
        .collect();
    routed(&lab, &nodes, VIP4, &[1, 2, 3], 20, "3 nodes announced");
    // nat's replies go back through the nodes the servers' routing picks:
    // it follows the node set as the router's does.
    let route_servers = |nodes: &[usize]| {
        if method == "nat" {
            lab.route_servers_via_nodes(nodes)
                .expect("the servers' routes");
        }
    };
    route_servers(&[1, 2, 3]);

    let (failed, shares) = spread(&lab, IpAddr::V4(VIP4), &[1, 2, 3], 150);
    eprintln!(
        "{label}: 150 new connections over 3 nodes: {failed} failed; per node {shares:.1?} %"
    );
    assert_eq!(failed, 0);
    assert!(
        shares.iter().all(|s| (20.0..=46.0).contains(s)),
        "{shares:?}"
    );

    let transfers = long_transfers(&lab, 30);
    std::thread::sleep(Duration::from_secs(2));

    // A 4th node joins.
    let (ok, failed, joined) = during(&lab, || {
        let started = Instant::now();
        nodes.push(start_node(&lab, &base, 4));
        routed(&lab, &nodes, VIP4, &[1, 2, 3, 4], 20, "4 nodes announced");
        route_servers(&[1, 2, 3, 4]);
        started.elapsed()
    });
    eprintln!("{label}: node 4 added: in the route {:.1} s after it started; short requests meanwhile: {ok} answered, {failed} failed", joined.as_secs_f64());
    let added_failed = failed;
    if failed > 0 {
        eprintln!("{}", node_lists(&lab, &nodes));
    }

    // Node 2 drained: withdrawn, then quiet.
    let (ok, failed, (withdrawn, drained, ctl)) = during(&lab, || {
        let started = Instant::now();
        route_servers(&[1, 3, 4]);
        let token = lab.dir.join("api.token").display().to_string();
        let ctl = std::thread::scope(|scope| {
            let ctl = scope.spawn(|| {
                pnlb_lab::netns::exec(&ns_of(&lab, 2), PNLB, &drain_args(&token, method))
            });
            let withdrawn = lab
                .wait_for_next_hops(VIP4, &[1, 3, 4], Duration::from_secs(10))
                .unwrap_or_else(|err| {
                    panic!(
                        "node 2 withdrawn: {err}; its log: {:#?}",
                        nodes[1].pnlb.output()
                    )
                });
            let out = ctl.join().expect("joined").expect("pnlb ctl drain-node");
            (withdrawn, out)
        });
        (ctl.0, started.elapsed(), ctl.1)
    });
    let ctl_output = String::from_utf8_lossy(&ctl.stdout).to_string();
    eprintln!(
        "{label}: node 2 drained: out of the route in {:.2} s, quiet (ctl drain-node returned) in {:.1} s; short requests meanwhile: {ok} answered, {failed} failed\n{ctl_output}",
        withdrawn.as_secs_f64(),
        drained.as_secs_f64()
    );
    assert!(
        ctl.status.success(),
        "drain-node: {ctl_output} {}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    let drained_failed = failed;
    if failed > 0 {
        eprintln!("{}", node_lists(&lab, &nodes));
    }

    // Node 3 killed: kill -9 of its pnlb and BIRD, its link cut. snat
    // flows whose source is its SNAT address cannot survive it.
    let through_killed = if method == "snat" {
        transfers_from(&lab, lab.ecmp_nodes[2].ipv4.into())
    } else {
        0
    };
    let (ok, failed, gone) = during(&lab, || {
        let victim = nodes.remove(2);
        assert_eq!(victim.index, 3);
        victim.pnlb.signal(libc::SIGKILL);
        victim.bird.signal(libc::SIGKILL);
        pnlb_lab::netns::ip(&ns_of(&lab, 3), &["link", "set", "eth0", "down"]).expect("link cut");
        route_servers(&[1, 4]);
        let gone = routed(&lab, &nodes, VIP4, &[1, 4], 10, "node 3 out of the route");
        drop(victim);
        gone
    });
    eprintln!("{label}: node 3 killed: out of the route in {:.2} s (BFD); short requests meanwhile: {ok} answered, {failed} failed", gone.as_secs_f64());

    let results: Vec<Result<(), String>> = transfers
        .into_iter()
        .map(|t| t.join().expect("joined").expect("client namespace"))
        .collect();
    let broken: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    eprintln!(
        "{label}: {} of 30 long transfers ({} MiB each) completed byte-exact ({through_killed} had the killed node's SNAT address); broken: {broken:?}",
        30 - broken.len(),
        LONG >> 20
    );
    assert_eq!(
        (added_failed, drained_failed),
        (0, 0),
        "no failed request while adding or draining"
    );
    assert!(broken.len() <= through_killed, "{broken:?}");

    // Every backend of the VIP down (both its services): withdrawn by
    // every node still announcing it, and announced again on recovery.
    for server in 0..lab.servers.len() {
        lab.stop_nginx(server);
        lab.stop_echo(server);
    }
    let withdrawn = routed(&lab, &nodes, VIP4, &[], 30, "withdrawn by every node");
    for server in 0..lab.servers.len() {
        lab.start_nginx(server).expect("nginx again");
        lab.start_echo(server).expect("echo again");
    }
    let announced = routed(&lab, &nodes, VIP4, &[1, 4], 30, "announced again");
    eprintln!(
        "{label}: every backend down: withdrawn by nodes 1 and 4 {:.1} s after the servers stopped; announced again {:.1} s after they started",
        withdrawn.as_secs_f64(),
        announced.as_secs_f64()
    );
    drop(decaps);
}

/// Each service's health check: quick, so that a VIP whose backends all
/// stop is withdrawn within a few seconds, with room for a 2-core VM busy
/// with 30 transfers and a program load.
const HEALTH: &str =
    "[service.health]\nkind = \"tcp\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\nrise = 1\nfall = 2\n";

/// `config` with HEALTH for each of its services (after the service's
/// own keys, before its first backend).
fn with_health(config: &str) -> String {
    config
        .split("[[service]]")
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part.to_string()
            } else {
                part.replacen(
                    "[[service.backend]]",
                    &format!("{HEALTH}\n[[service.backend]]"),
                    1,
                )
            }
        })
        .collect::<Vec<_>>()
        .join("[[service]]")
}

/// `count` new connections from the client to `vip`: (failed, each node's
/// share of them in %, by its new-flow counter for the VIP's service).
fn spread(lab: &Lab, vip: IpAddr, nodes: &[usize], count: usize) -> (usize, Vec<f64>) {
    let service = service_on(vip);
    let before: Vec<u64> = nodes.iter().map(|i| new_flows(lab, *i, service)).collect();
    let failed = requests(lab, vip, count);
    let taken: Vec<u64> = nodes
        .iter()
        .zip(&before)
        .map(|(i, was)| new_flows(lab, *i, service) - was)
        .collect();
    let total: u64 = taken.iter().sum();
    let shares = taken
        .iter()
        .map(|n| 100.0 * *n as f64 / total.max(1) as f64)
        .collect();
    (failed, shares)
}

/// `pnlb ctl drain-node` on a node: waiting for quiet, except for snat,
/// whose replies come to the drained node's own SNAT address while its
/// flows last (waiting would outlast the transfers).
fn drain_args<'a>(token: &'a str, method: &str) -> Vec<&'a str> {
    let mut args = vec!["ctl", "--api", "127.0.0.1:9180", "--token-file", token];
    args.extend(["drain-node", "--deadline", "20s"]);
    if method == "snat" {
        args.push("--no-wait");
    }
    args
}

/// Long transfers the servers hold open with `peer` (snat: the flows
/// whose source address is that node's).
fn transfers_from(lab: &Lab, peer: IpAddr) -> usize {
    lab.servers
        .iter()
        .map(|server| {
            let out = pnlb_lab::netns::exec(
                &server.ns,
                "ss",
                &[
                    "-Htn",
                    "state",
                    "established",
                    &format!("( sport = :{BULK_PORT} )"),
                ],
            )
            .expect("ss on the server");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|line| line.contains(&format!("{peer}:")))
                .count()
        })
        .sum()
}

#[test]
fn dr_flows_survive_a_node_added_drained_and_killed() {
    if !privileged() {
        return;
    }
    through_node_changes("dr", "maglev");
}

#[test]
fn tun_flows_survive_a_node_added_drained_and_killed() {
    if !privileged() {
        return;
    }
    through_node_changes("tun", "maglev");
}

/// nat: the servers' replies come back through any node; a flow's
/// packets go to its designated node until it is synced everywhere.
#[test]
fn nat_flows_survive_a_node_added_drained_and_killed() {
    if !privileged() {
        return;
    }
    through_node_changes("nat", "maglev");
}

/// rr decides per node: a flow the routers move to another node goes on
/// only because connection sync put it there first.
#[test]
fn dr_rr_flows_survive_a_node_added_drained_and_killed() {
    if !privileged() {
        return;
    }
    through_node_changes("dr", "rr");
}

#[test]
fn snat_flows_survive_a_node_added_drained_and_killed() {
    if !privileged() {
        return;
    }
    through_node_changes("snat", "maglev");
}
