//! `pnlb lab demo`: builds the lab, runs `pnlb run` in `dr` mode on the LB,
//! sends real HTTP requests with curl from the client, shows which server
//! answered each, proves replies bypassed the LB, and prints the data
//! plane's own counters.

use std::time::Duration;

use anyhow::{Context, Result};
use pnlb_lab::{Lab, LabSpec, LB_INTERFACE, VIP4, VIP6};

const REQUESTS_V4: usize = 12;
const REQUESTS_V6: usize = 6;

pub fn demo() -> Result<()> {
    let binary = std::env::current_exe().context("locating the pnlb binary")?;
    let binary = binary.display().to_string();
    println!("== pnlb demo: Direct Routing with Maglev, IPv4 and IPv6 ==");
    println!("building the lab: client -> router -> [switch] -> LB + 3 nginx servers (network namespaces)");
    let lab = Lab::up(&LabSpec {
        prefix: Some(format!("pnlbdemo{}", std::process::id())),
        ..LabSpec::default()
    })?;
    let config_path = lab.dir.join("pnlb.toml");
    let everyone: Vec<usize> = (0..lab.servers.len()).collect();
    std::fs::write(&config_path, lab.dr_config(80, &everyone))
        .context("writing the demo config")?;
    println!("starting `pnlb run` on the LB ({LB_INTERFACE}, native XDP), VIPs {VIP4}:80 and [{VIP6}]:80\n");
    let daemon = lab.start_pnlb(&binary, &config_path)?;

    for (count, url) in [
        (REQUESTS_V4, format!("http://{VIP4}/")),
        (REQUESTS_V6, format!("http://[{VIP6}]/")),
    ] {
        for i in 1..=count {
            let out = lab.client_command(
                "curl",
                &["-sS", "-g", "--max-time", "3", "-w", " %{local_port}", &url],
            )?;
            let mut parts = out.split_whitespace();
            let server = parts.next().unwrap_or("?").to_string();
            let port = parts.next().unwrap_or("?");
            let address = lab.server(&server).map(|s| {
                if url.contains('[') {
                    s.ipv6.to_string()
                } else {
                    s.ipv4.to_string()
                }
            });
            println!(
                "  GET {url:<24} #{i:<2} from client port {port:<5} -> {server} ({})",
                address.unwrap_or_else(|| "?".into())
            );
        }
    }

    let before = lab.rx_bytes(&lab.lb, LB_INTERFACE)?;
    let blob = lab.client_command(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("http://{VIP4}/blob"),
        ],
    )?;
    let after = lab.rx_bytes(&lab.lb, LB_INTERFACE)?;
    println!(
        "\n  downloaded {} bytes through the VIP; the LB received {} bytes meanwhile:\n  the replies went from the server straight to the client (direct server return)",
        blob.trim(),
        after - before
    );

    let (_, output) = daemon.stop(Duration::from_secs(5));
    println!("\ncounters read from the XDP data plane when `pnlb run` stopped:");
    let table: Vec<&String> = output
        .iter()
        .skip_while(|line| !line.starts_with("Prot "))
        .collect();
    for line in table {
        println!("  {line}");
    }
    println!("\ntearing the lab down");
    drop(lab);
    Ok(())
}
