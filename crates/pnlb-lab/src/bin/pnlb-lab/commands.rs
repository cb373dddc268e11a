//! `pnlb-lab up|down`: a lab that stays up for people to use.

use anyhow::Result;
use pnlb_lab::{Lab, LabSpec, VIP4, VIP6};

/// The fixed prefix of the lab `pnlb-lab up` leaves running.
const PERSISTENT_PREFIX: &str = "pnlb-lab";

/// Removes the lab `pnlb-lab up` built: its processes, then its namespaces.
pub fn down() -> Result<()> {
    let removed = Lab::tear_down(&format!("{PERSISTENT_PREFIX}-"));
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{PERSISTENT_PREFIX}-lab")));
    println!("removed {removed} namespace(s)");
    Ok(())
}

/// Builds the lab and leaves it running, with the commands to use it.
pub fn up(servers: usize, ha: bool, ecmp: usize) -> Result<()> {
    if !pnlb_lab::netns::list(&format!("{PERSISTENT_PREFIX}-")).is_empty() {
        anyhow::bail!("a lab is already up; remove it with `pnlb-lab down`");
    }
    let spec = LabSpec {
        servers,
        ha,
        ecmp,
        prefix: Some(PERSISTENT_PREFIX.into()),
        ..LabSpec::default()
    };
    let lab = Lab::up(&spec)?;
    println!(
        "lab up: namespaces {0}-client, {0}-router, {0}-switch, {0}-lb, {0}-s1..s{servers}",
        lab.prefix
    );
    println!("  client 10.77.0.2 / fd77::2, LB 10.77.1.2 / fd77:1::2 ({}), servers 10.77.1.11.. / fd77:1::11..", pnlb_lab::LB_INTERFACE);
    println!(
        "  the router sends {VIP4} and {VIP6} to the LB; the servers hold them on lo (DR-ready)"
    );
    println!(
        "run the balancer:  ip netns exec {}-lb pnlb run --config docs/examples/lab-dr.toml",
        lab.prefix
    );
    println!(
        "try it:            ip netns exec {}-client curl http://{VIP4}/",
        lab.prefix
    );
    if ha {
        println!("a failover pair:   a second LB {}-lb2 (10.77.1.3); the VIPs go to the floating 10.77.1.254", lab.prefix);
        println!("                   (umask 077; openssl rand -hex 32 > /tmp/pnlb-lab-ha.key)");
        println!("                   ip netns exec {0}-lb pnlb run --config docs/examples/lab-ha-node1.toml &", lab.prefix);
        println!("                   ip netns exec {0}-lb2 pnlb run --config docs/examples/lab-ha-node2.toml &", lab.prefix);
    }
    if ecmp > 0 {
        let everyone: Vec<usize> = (0..servers).collect();
        let base = lab.config("dr", 80, &everyone);
        println!("behind ECMP:       {ecmp} LB nodes, the router (BIRD) spreads {VIP4} over those that announce it");
        for index in 1..=ecmp {
            let bird = lab.start_node_bird(index)?;
            std::mem::forget(bird);
            let path = lab.dir.join(format!("lab-ecmp-node{index}.toml"));
            std::fs::write(&path, lab.ecmp_config(&base, index))?;
            let node = &lab.ecmp_nodes[index - 1];
            println!(
                "                   ip netns exec {} pnlb run --config {} &   # {} (BIRD running)",
                node.ns,
                path.display(),
                node.ipv4
            );
        }
        println!(
            "                   ip netns exec {}-router ip route show {VIP4}   # the next hops",
            lab.prefix
        );
    }
    println!("remove it:         pnlb-lab down");
    lab.keep();
    Ok(())
}
