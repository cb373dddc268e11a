//! Scale-out behind ECMP (issue 19, docs/scale-out.md): LB nodes running
//! pnlb with [bgp] and BIRD, the lab's router running BIRD and spreading
//! each VIP over the nodes that announce it. Each test prints what it
//! measured.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod support;

use pnlb_lab::{Lab, LabProcess, LabSpec, VIP4};
use support::*;

/// A node running: its BIRD and its pnlb.
struct Node {
    index: usize,
    bird: LabProcess,
    pnlb: LabProcess,
}

fn node_config(lab: &Lab, base: &str, index: usize) -> PathBuf {
    let text = lab.ecmp_config(base, index).replacen(
        "[daemon]\n",
        "[daemon]\napi = \"127.0.0.1:9180\"\n",
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

fn ns_of(lab: &Lab, index: usize) -> String {
    lab.ecmp_nodes[index - 1].ns.clone()
}

/// New flows node `index` has taken for service "web".
fn new_flows(lab: &Lab, index: usize) -> u64 {
    status_in(&ns_of(lab, index))["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == "web")
        .filter_map(|s| s["counters"]["new_flows"].as_u64())
        .sum()
}

/// Short HTTP requests from the client, each on a new connection; how many
/// failed.
fn requests(lab: &Lab, count: usize) -> usize {
    let vip = IpAddr::V4(VIP4);
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
    let converged = lab
        .wait_for_next_hops(VIP4, &[1, 2, 3], Duration::from_secs(20))
        .expect("the router spreads the VIP over 3 nodes");
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
    assert!(
        fingerprints
            .iter()
            .all(|f| f.len() == 16 && *f == fingerprints[0]),
        "{fingerprints:?}"
    );

    let before: Vec<u64> = (1..=3).map(|i| new_flows(&lab, i)).collect();
    let failed = requests(&lab, 300);
    let taken: Vec<u64> = (1..=3)
        .map(|i| new_flows(&lab, i) - before[i - 1])
        .collect();
    let total: u64 = taken.iter().sum();
    let shares: Vec<f64> = taken
        .iter()
        .map(|n| 100.0 * *n as f64 / total.max(1) as f64)
        .collect();
    eprintln!("300 new connections: {failed} failed; taken per node {taken:?} ({shares:.1?} %)");
    assert_eq!(failed, 0);
    assert!(total >= 300, "every connection counted: {taken:?}");
    assert!(
        shares.iter().all(|s| (20.0..=46.0).contains(s)),
        "{shares:?}"
    );

    // Every backend down: every node withdraws the VIP; back up: announced.
    for server in 0..lab.servers.len() {
        lab.stop_nginx(server);
    }
    let withdrawn = lab
        .wait_for_next_hops(VIP4, &[], Duration::from_secs(30))
        .expect("withdrawn by every node");
    let reason = status_in(&ns_of(&lab, 2))["node"]["bgp"]["withdrawn"].to_string();
    eprintln!(
        "every backend down: withdrawn by every node {:.1} s after nginx stopped ({reason})",
        withdrawn.as_secs_f64()
    );
    assert!(reason.contains("no usable backend"), "{reason}");
    for server in 0..lab.servers.len() {
        lab.start_nginx(server).expect("nginx again");
    }
    let announced = lab
        .wait_for_next_hops(VIP4, &[1, 2, 3], Duration::from_secs(30))
        .expect("announced again by every node");
    eprintln!(
        "backends up again: announced by every node {:.1} s after nginx started",
        announced.as_secs_f64()
    );
    assert_eq!(requests(&lab, 20), 0, "served again");

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
