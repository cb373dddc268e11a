//! `pnlb doctor --real-server --vip ADDR [--method dr|tun]`: what a real
//! server needs for direct routing or tunneling.

use std::net::IpAddr;

use anyhow::Result;
use serde::Deserialize;

use super::{effective_ipv4, ip_json, links, DoctorMethod, Finding, Level, Link};

#[derive(Deserialize)]
struct Route {
    gateway: Option<String>,
    dev: Option<String>,
    #[serde(default)]
    metrics: Vec<serde_json::Value>,
}

pub(super) fn check(vip: IpAddr, method: DoctorMethod) -> Result<Vec<Finding>> {
    let links = links()?;
    let method_name = match method {
        DoctorMethod::Dr => "dr",
        DoctorMethod::Tun => "tun",
    };
    println!("pnlb doctor: this host as a real server for VIP {vip} (method {method_name})");
    let mut findings = vec![vip_on_lo(&links, vip)];
    let interfaces: Vec<&Link> = links
        .iter()
        .filter(|l| l.link_type.as_deref() != Some("loopback") && l.is_up())
        .collect();
    if vip.is_ipv4() {
        findings.extend(arp_checks(&interfaces)?);
        findings.extend(rp_filter_checks(&interfaces)?);
    }
    if method == DoctorMethod::Tun {
        let family = if vip.is_ipv4() { "-4" } else { "-6" };
        let routes: Vec<Route> = ip_json(&[family, "route", "show", "default"])?;
        let default_route = routes.first();
        findings.push(decapsulation(&links, vip, default_route));
        findings.extend(decap_limits(&links));
        findings.push(mtu_headroom(&links, family, default_route));
    }
    Ok(findings)
}

fn vip_on_lo(links: &[Link], vip: IpAddr) -> Finding {
    let on_lo = links
        .iter()
        .filter(|l| l.link_type.as_deref() == Some("loopback"))
        .flat_map(|l| &l.addr_info)
        .any(|a| a.local.as_deref().and_then(|t| t.parse().ok()) == Some(vip));
    if on_lo {
        return Finding::ok(format!(
            "VIP {vip} is on lo: the stack accepts packets for it"
        ));
    }
    let (family, len) = if vip.is_ipv4() {
        ("", 32)
    } else {
        ("-6 ", 128)
    };
    Finding::problem(
        Level::Fail,
        format!("VIP {vip} is not on lo: the stack drops packets addressed to it"),
        format!("ip {family}addr add {vip}/{len} dev lo"),
    )
}

fn arp_checks(interfaces: &[&Link]) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    for (key, wanted, why) in [
        (
            "arp_ignore",
            1,
            "answers ARP for the VIP, so the router may send VIP traffic here instead of to the load balancer",
        ),
        (
            "arp_announce",
            2,
            "may announce the VIP as the source of its own ARP requests, teaching neighbours that the VIP lives here",
        ),
    ] {
        let wrong: Vec<String> = interfaces
            .iter()
            .map(|l| Ok((l.ifname.clone(), effective_ipv4(&l.ifname, key)?)))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|(_, value)| *value < wanted)
            .map(|(dev, value)| format!("{dev} ({value})"))
            .collect();
        findings.push(if wrong.is_empty() {
            Finding::ok(format!("{key} is at least {wanted} on every interface"))
        } else {
            Finding::problem(
                Level::Fail,
                format!("{key} is below {wanted} on {}: this host {why}", wrong.join(", ")),
                format!("sysctl -w net.ipv4.conf.all.{key}={wanted}"),
            )
        });
    }
    Ok(findings)
}

fn rp_filter_checks(interfaces: &[&Link]) -> Result<Vec<Finding>> {
    let strict: Vec<String> = interfaces
        .iter()
        .map(|l| Ok((l.ifname.clone(), effective_ipv4(&l.ifname, "rp_filter")?)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|(_, value)| *value == 1)
        .map(|(dev, _)| dev)
        .collect();
    Ok(vec![if strict.is_empty() {
        Finding::ok("rp_filter is loose (2) or off (0): client packets are not dropped for arriving on an unexpected interface".into())
    } else {
        Finding::problem(
            Level::Fail,
            format!(
                "rp_filter is strict (1) on {}: client packets that arrive where the route back does not leave (always for a kernel tunnel device) are dropped",
                strict.join(", ")
            ),
            "sysctl -w net.ipv4.conf.all.rp_filter=2".into(),
        )
    }])
}

fn decapsulation(links: &[Link], vip: IpAddr, default_route: Option<&Route>) -> Finding {
    let decap_on: Vec<&str> = links
        .iter()
        .filter(|l| l.xdp_program() == Some("pnlb_decap"))
        .map(|l| l.ifname.as_str())
        .collect();
    if !decap_on.is_empty() {
        return Finding::ok(format!("pnlb decap is attached on {}", decap_on.join(", ")));
    }
    let kind = if vip.is_ipv4() { "ipip" } else { "ip6tnl" };
    let kernel: Vec<&str> = links
        .iter()
        .filter(|l| l.kind() == Some(kind) && l.is_up())
        .map(|l| l.ifname.as_str())
        .collect();
    if !kernel.is_empty() {
        return Finding::ok(format!(
            "kernel {kind} device {} is up (for encap = \"gue\" also `ip fou add port 6080 gue`)",
            kernel.join(", ")
        ));
    }
    // Tunnel packets come in where the route to the load balancer goes out.
    let interface = default_route.and_then(|r| r.dev.as_deref()).unwrap_or("IF");
    Finding::problem(
        Level::Fail,
        "nothing decapsulates tunnel packets: no pnlb decap attached and no kernel tunnel device up".into(),
        format!(
            "pnlb decap --interface {interface}   (or, where the kernel has ipip/fou: modprobe ipip && ip link set tunl0 up)"
        ),
    )
}

/// A running `pnlb decap` without `--from` unwraps tunnels from anyone: a
/// way around uRPF and the interface's ACLs (the stack sees the inner
/// source). Its `--vip` list may be empty: the VIPs on lo are this host's.
fn decap_limits(links: &[Link]) -> Vec<Finding> {
    links
        .iter()
        .filter(|l| l.xdp_program() == Some("pnlb_decap"))
        .map(|link| {
            let interface = &link.ifname;
            match link.xdp_program_id().and_then(pnlb_dataplane::decap::running_options) {
                Some((0, _)) => Finding::problem(
                    Level::Warn,
                    format!("pnlb decap on {interface} unwraps tunnels from any source (no --from): anyone who can reach this host can send it packets with any inner source, past uRPF and interface ACLs"),
                    format!("pnlb decap --interface {interface} --from <the load balancers' addresses or prefixes>"),
                ),
                Some((from, vips)) => Finding::ok(format!(
                    "pnlb decap on {interface} unwraps tunnels from {from} load-balancer prefix(es) only, for this host's addresses and {vips} --vip address(es)"
                )),
                None => Finding::problem(
                    Level::Warn,
                    format!("cannot read what pnlb decap on {interface} accepts (an older pnlb decap, or no privileges)"),
                    "run pnlb doctor as root; restart pnlb decap with --from".into(),
                ),
            }
        })
        .collect()
}

/// Clients send segments as large as this server's MSS allows; wrapped in a
/// tunnel they no longer fit the link, and each new connection's first
/// full-size packet costs an ICMP round trip through the LB. Lowering the
/// advertised MSS by the tunnel's overhead avoids that.
fn mtu_headroom(links: &[Link], family: &str, default_route: Option<&Route>) -> Finding {
    let Some(route) = default_route else {
        return Finding::problem(
            Level::Warn,
            "no default route: cannot tell which link answers clients".into(),
            format!("ip {family} route add default via ROUTER"),
        );
    };
    let dev = route.dev.clone().unwrap_or_default();
    let mtu = links
        .iter()
        .find(|l| l.ifname == dev)
        .and_then(|l| l.mtu)
        .unwrap_or(1500);
    // IP + TCP headers, and the larger (GUE) tunnel overhead.
    let (headers, overhead) = if family == "-4" { (40, 28) } else { (60, 48) };
    let fitting = mtu.saturating_sub(headers + overhead);
    let advmss = route
        .metrics
        .iter()
        .find_map(|m| m.get("advmss").and_then(|v| v.as_u64()));
    if let Some(mss) = advmss.filter(|&mss| mss <= u64::from(fitting)) {
        return Finding::ok(format!(
            "advertised MSS {mss} leaves room for the tunnel on {dev} (MTU {mtu})"
        ));
    }
    let via = route
        .gateway
        .as_deref()
        .map(|g| format!("via {g} "))
        .unwrap_or_default();
    Finding::problem(
        Level::Warn,
        format!(
            "MSS {} on {dev} (MTU {mtu}) leaves no room for the tunnel: the first full-size packet of each connection is answered with ICMP too-big by the load balancer and resent smaller",
            advmss.map_or_else(|| format!("{} (from the MTU)", mtu.saturating_sub(headers)), |m| m.to_string())
        ),
        format!("ip {family} route change default {via}dev {dev} advmss {fitting}"),
    )
}
