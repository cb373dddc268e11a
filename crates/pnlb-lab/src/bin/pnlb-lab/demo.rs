//! `pnlb-lab demo`: builds the lab and, for each forwarding method (dr,
//! tun, snat, nat), runs `pnlb run` on the LB, sends real HTTP requests with
//! curl from the client, shows which server answered and which client
//! address it saw, where the replies went, and the data plane's counters.

use std::time::Duration;

use anyhow::{Context, Result};
use pnlb_lab::{Gateway, Lab, LabSpec, LB_INTERFACE, VIP4, VIP6};

const REQUESTS_V4: usize = 6;
const REQUESTS_V6: usize = 3;

struct Act {
    method: &'static str,
    title: &'static str,
    servers_route_via: Gateway,
    /// Run `pnlb decap` on the servers for this act.
    decap: bool,
}

const ACTS: [Act; 4] = [
    Act {
        method: "dr",
        title: "Direct Routing: the LB rewrites MACs only; servers hold the VIP on lo and answer the client directly",
        servers_route_via: Gateway::Router,
        decap: false,
    },
    Act {
        method: "tun",
        title: "Tunneling: the LB wraps packets in IPIP to the server, `pnlb decap` unwraps them there; servers answer the client directly",
        servers_route_via: Gateway::Router,
        decap: true,
    },
    Act {
        method: "snat",
        title: "SNAT (full NAT): the LB rewrites source and destination; servers need nothing, but see the LB's address",
        servers_route_via: Gateway::Router,
        decap: false,
    },
    Act {
        method: "nat",
        title: "NAT: the LB rewrites the destination; servers see the client and route replies back via the LB",
        servers_route_via: Gateway::Lb,
        decap: false,
    },
];

pub fn demo(binary: &str) -> Result<()> {
    println!("== pnlb demo: one VIP pair ({VIP4}:80, [{VIP6}]:80), 3 nginx servers, Maglev, four methods ==");
    println!("building the lab: client -> router -> [switch] -> LB + 3 nginx servers (network namespaces)");
    let lab = Lab::up(&LabSpec {
        prefix: Some(format!("pnlbdemo{}", std::process::id())),
        ..LabSpec::default()
    })?;
    let everyone: Vec<usize> = (0..lab.servers.len()).collect();
    for act in &ACTS {
        println!("\n== {}: {} ==", act.method, act.title);
        lab.route_servers_via(act.servers_route_via)?;
        let config_path = lab.dir.join(format!("pnlb-{}.toml", act.method));
        std::fs::write(&config_path, lab.config(act.method, 80, &everyone))
            .context("writing the demo config")?;
        let decaps = if act.decap {
            (0..lab.servers.len())
                .map(|i| lab.start_decap(binary, i))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        let daemon = lab.start_pnlb(binary, &config_path)?;
        requests(&lab)?;
        download(&lab, act.method)?;
        let (_, output) = daemon.stop(Duration::from_secs(5));
        for (server, decap) in lab.servers.iter().zip(decaps) {
            let (_, lines) = decap.stop(Duration::from_secs(5));
            if let Some(line) = lines.iter().find(|l| l.contains("detached from")) {
                let counts = line.split(": ").last().unwrap_or(line);
                println!("  pnlb decap on {}: {counts}", server.name);
            }
        }
        println!("  counters read from the XDP data plane when `pnlb run` stopped:");
        for line in output.iter().skip_while(|line| !line.starts_with("Prot ")) {
            println!("    {line}");
        }
    }
    println!("\ntearing the lab down");
    drop(lab);
    Ok(())
}

fn requests(lab: &Lab) -> Result<()> {
    for (count, url) in [
        (REQUESTS_V4, format!("http://{VIP4}/whoami")),
        (REQUESTS_V6, format!("http://[{VIP6}]/whoami")),
    ] {
        for i in 1..=count {
            let out = lab.client_command(
                "curl",
                &["-sS", "-g", "--max-time", "3", "-w", " %{local_port}", &url],
            )?;
            let mut parts = out.split_whitespace();
            let (server, seen, port) = (
                parts.next().unwrap_or("?"),
                parts.next().unwrap_or("?"),
                parts.next().unwrap_or("?"),
            );
            println!("  GET {url:<30} #{i} from client port {port:<5} -> {server}, which saw the client as {seen}");
        }
    }
    Ok(())
}

fn download(lab: &Lab, method: &str) -> Result<()> {
    let before = lab.rx_bytes(&lab.lb, LB_INTERFACE)?;
    let url = format!("http://{VIP4}/blob");
    let size = lab.client_download(&url, 10)?;
    let received = lab.rx_bytes(&lab.lb, LB_INTERFACE)? - before;
    let path = if matches!(method, "dr" | "tun") {
        "the replies went from the server straight to the client"
    } else {
        "the replies came back through the LB, which translated them"
    };
    println!("  downloaded {size} bytes; the LB received {received} bytes meanwhile: {path}");
    Ok(())
}
