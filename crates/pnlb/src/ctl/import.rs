//! `pnlb ctl import`: an existing IPVS setup as pnlb TOML, from
//! `ipvsadm-save -n` output or keepalived `virtual_server` blocks. What has
//! no pnlb equivalent is refused with the line it is on, not dropped.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};

/// One imported service, before it is written out.
#[derive(Debug, Default, PartialEq)]
struct Service {
    vip: Option<IpAddr>,
    port: u16,
    protocol: &'static str,
    scheduler: String,
    method: Option<&'static str>,
    persistence: Option<u64>,
    persistence_mask: Option<u8>,
    health: Option<Health>,
    backends: Vec<Backend>,
}

#[derive(Debug, Default, PartialEq)]
struct Backend {
    address: Option<IpAddr>,
    port: u16,
    weight: i64,
    max_conns: Option<u64>,
    health: Option<Health>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Health {
    kind: &'static str,
    interval: Option<u64>,
    timeout: Option<u64>,
    path: Option<String>,
    expect_status: Option<String>,
    port: Option<u16>,
    command: Option<Vec<String>>,
}

fn scheduler(ipvs: &str, at: &str) -> Result<String> {
    Ok(match ipvs {
        "rr" | "wrr" | "lc" | "wlc" | "sed" | "nq" | "sh" | "dh" => ipvs.to_string(),
        "mh" => "maglev".into(),
        "twos" => "p2c".into(),
        other => bail!(
            "{at}: scheduler {other:?} has no pnlb equivalent; use one of rr wrr lc wlc sed nq sh dh mh twos"
        ),
    })
}

fn method(kind: &str, at: &str) -> Result<&'static str> {
    Ok(match kind.to_ascii_uppercase().as_str() {
        "DR" | "-G" | "--GATEWAYING" => "dr",
        "NAT" | "-M" | "--MASQUERADING" => "nat",
        "TUN" | "-I" | "--IPIP" => "tun",
        other => bail!("{at}: forwarding method {other:?} has no pnlb equivalent (DR, NAT, TUN)"),
    })
}

fn endpoint(text: &str, at: &str) -> Result<(IpAddr, u16)> {
    let socket: SocketAddr = text
        .parse()
        .with_context(|| format!("{at}: {text:?} is not address:port (use ipvsadm-save -n)"))?;
    Ok((socket.ip(), socket.port()))
}

/// Parses `ipvsadm-save -n` (or `ipvsadm -S -n`) output.
pub fn from_ipvsadm(text: &str) -> Result<String> {
    let mut services: Vec<Service> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let at = format!("line {}", number + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(command) = words.first() else {
            continue;
        };
        let mut args = words[1..].iter();
        let mut service = Service::default();
        let mut backend = Backend {
            weight: 1,
            ..Backend::default()
        };
        let mut key: Option<(IpAddr, u16, &'static str)> = None;
        while let Some(&option) = args.next() {
            let mut value = || -> Result<&str> {
                args.next()
                    .copied()
                    .with_context(|| format!("{at}: {option} needs a value"))
            };
            match option {
                "-t" | "--tcp-service" | "-u" | "--udp-service" => {
                    let (vip, port) = endpoint(value()?, &at)?;
                    let protocol = if option.starts_with("-t") || option == "--tcp-service" {
                        "tcp"
                    } else {
                        "udp"
                    };
                    key = Some((vip, port, protocol));
                }
                "-f" | "--fwmark-service" => {
                    bail!("{at}: firewall-mark services have no pnlb equivalent; list the VIP:port services instead")
                }
                "-s" | "--scheduler" => service.scheduler = scheduler(value()?, &at)?,
                "-p" | "--persistent" => {
                    // The timeout is optional in ipvsadm; 300 s by default.
                    let timeout = match args.clone().next() {
                        Some(next) if !next.starts_with('-') => {
                            args.next();
                            next.parse()
                                .with_context(|| format!("{at}: -p {next:?} is not seconds"))?
                        }
                        _ => 300,
                    };
                    service.persistence = Some(timeout);
                }
                "-M" | "--netmask" => {
                    let mask = value()?;
                    let bits = match mask.parse::<std::net::Ipv4Addr>() {
                        Ok(v4) => u32::from(v4).count_ones() as u8,
                        Err(_) => mask
                            .parse()
                            .with_context(|| format!("{at}: -M {mask:?} is not a netmask"))?,
                    };
                    service.persistence_mask = Some(bits);
                }
                "-r" | "--real-server" => {
                    let (address, port) = endpoint(value()?, &at)?;
                    backend.address = Some(address);
                    backend.port = port;
                }
                "-g" | "--gatewaying" | "-m" | "--masquerading" | "-i" | "--ipip" => {
                    service.method = Some(method(option, &at)?);
                }
                "-w" | "--weight" => {
                    backend.weight = value()?
                        .parse()
                        .with_context(|| format!("{at}: weight is not a number"))?;
                }
                "-x" | "--u-threshold" => {
                    let n: u64 = value()?
                        .parse()
                        .with_context(|| format!("{at}: -x is not a number"))?;
                    backend.max_conns = (n > 0).then_some(n);
                }
                "-y" | "--l-threshold" | "-b" | "--sched-flags" | "--pe" => {
                    value()?;
                }
                other => bail!("{at}: option {other:?} is not understood"),
            }
        }
        let Some((vip, port, protocol)) = key else {
            bail!("{at}: no -t or -u service");
        };
        match *command {
            "-A" | "--add-service" => {
                service.vip = Some(vip);
                service.port = port;
                service.protocol = protocol;
                if service.scheduler.is_empty() {
                    service.scheduler = "wlc".into(); // ipvsadm's default
                }
                services.push(service);
            }
            "-a" | "--add-server" => {
                let owner = services
                    .iter_mut()
                    .find(|s| s.vip == Some(vip) && s.port == port && s.protocol == protocol)
                    .with_context(|| {
                        format!("{at}: real server for {vip}:{port} before its -A line")
                    })?;
                let kind = service.method.unwrap_or("dr"); // ipvsadm's default: -g
                match owner.method {
                    Some(existing) if existing != kind => bail!(
                        "{at}: {vip}:{port} mixes forwarding methods ({existing} and {kind}); pnlb has one per service: split it"
                    ),
                    _ => owner.method = Some(kind),
                }
                owner.backends.push(backend);
            }
            other => bail!("{at}: {other:?} is not -A or -a"),
        }
    }
    Ok(render(&services, "ipvsadm-save"))
}

/// A keepalived config's blocks: `word args... { children }` or `word args...`.
#[derive(Debug)]
struct Block {
    words: Vec<String>,
    children: Vec<Block>,
    line: usize,
}

fn tokens(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split(['#', '!']).next().unwrap_or("");
        for word in line
            .replace('{', " { ")
            .replace('}', " } ")
            .split_whitespace()
        {
            out.push((word.to_string(), number + 1));
        }
        out.push(("\n".to_string(), number + 1));
    }
    out
}

fn blocks(tokens: &[(String, usize)], at: &mut usize) -> Result<Vec<Block>> {
    let mut out = Vec::new();
    let mut words = Vec::new();
    let mut line = 0;
    while *at < tokens.len() {
        let (token, number) = &tokens[*at];
        *at += 1;
        match token.as_str() {
            "{" => {
                let children = blocks(tokens, at)?;
                let mut words = std::mem::take(&mut words);
                if words.is_empty() {
                    // A block without a name: kept, but nothing matches it.
                    words.push("{".to_string());
                    line = *number;
                }
                out.push(Block {
                    words,
                    children,
                    line,
                });
            }
            "}" => {
                if !words.is_empty() {
                    out.push(Block {
                        words,
                        children: Vec::new(),
                        line,
                    });
                }
                return Ok(out);
            }
            "\n" => {
                if !words.is_empty() {
                    out.push(Block {
                        words: std::mem::take(&mut words),
                        children: Vec::new(),
                        line,
                    });
                }
            }
            word => {
                if words.is_empty() {
                    line = *number;
                }
                words.push(word.to_string());
            }
        }
    }
    Ok(out)
}

fn seconds(word: Option<&String>, at: &str) -> Result<Option<u64>> {
    word.map(|w| {
        w.parse::<f64>()
            .map(|s| s.ceil().max(1.0) as u64)
            .with_context(|| format!("{at}: {w:?} is not seconds"))
    })
    .transpose()
}

fn keepalived_check(block: &Block, delay_loop: Option<u64>) -> Result<Option<Health>> {
    let at = format!("line {}", block.line);
    let kind = match block.words[0].as_str() {
        "TCP_CHECK" => "tcp",
        "HTTP_GET" => "http",
        "SSL_GET" => "https",
        "MISC_CHECK" => "exec",
        "inhibit_on_failure" | "weight" | "notify_up" | "notify_down" | "uthreshold"
        | "lthreshold" => return Ok(None),
        other => bail!("{at}: {other} is not understood inside real_server"),
    };
    let mut health = Health {
        kind,
        interval: delay_loop,
        ..Health::default()
    };
    let mut walk = vec![block];
    while let Some(b) = walk.pop() {
        for child in &b.children {
            let at = format!("line {}", child.line);
            let arg = child.words.get(1);
            match child.words[0].as_str() {
                "connect_timeout" => health.timeout = seconds(arg, &at)?,
                "connect_port" => health.port = arg.and_then(|p| p.parse().ok()),
                "delay_loop" => health.interval = seconds(arg, &at)?,
                "path" => health.path = arg.cloned(),
                "status_code" => health.expect_status = arg.cloned(),
                "misc_path" => {
                    let command = child.words[1..].join(" ");
                    let command = command.trim_matches('"');
                    health.command = Some(command.split_whitespace().map(String::from).collect());
                }
                "url" => walk.push(child),
                _ => {}
            }
        }
    }
    Ok(Some(health))
}

/// Parses keepalived `virtual_server` blocks (other blocks are ignored).
pub fn from_keepalived(text: &str) -> Result<String> {
    let tokens = tokens(text);
    let mut at = 0;
    let mut services = Vec::new();
    for block in blocks(&tokens, &mut at)? {
        if block.words[0] != "virtual_server" {
            continue;
        }
        let line = format!("line {}", block.line);
        if block.words.get(1).map(String::as_str) == Some("fwmark") {
            bail!("{line}: firewall-mark services have no pnlb equivalent; list the VIP:port services instead");
        }
        if block.words.get(1).map(String::as_str) == Some("group") {
            bail!("{line}: virtual_server_group is not supported; write one virtual_server per VIP:port");
        }
        let vip: IpAddr = block
            .words
            .get(1)
            .and_then(|w| w.parse().ok())
            .with_context(|| format!("{line}: virtual_server needs an address"))?;
        let port: u16 = block
            .words
            .get(2)
            .and_then(|w| w.parse().ok())
            .with_context(|| format!("{line}: virtual_server needs a port"))?;
        let mut service = Service {
            vip: Some(vip),
            port,
            protocol: "tcp",
            scheduler: "wlc".into(),
            method: Some("nat"), // keepalived's default lb_kind
            ..Service::default()
        };
        let delay_loop = block
            .children
            .iter()
            .find(|c| c.words[0] == "delay_loop")
            .map(|c| seconds(c.words.get(1), &format!("line {}", c.line)))
            .transpose()?
            .flatten();
        for child in &block.children {
            let at = format!("line {}", child.line);
            let arg = child.words.get(1).map(String::as_str).unwrap_or("");
            match child.words[0].as_str() {
                "lb_algo" | "lvs_sched" => service.scheduler = scheduler(arg, &at)?,
                "lb_kind" | "lvs_method" => service.method = Some(method(arg, &at)?),
                "persistence_timeout" => service.persistence = seconds(child.words.get(1), &at)?,
                "protocol" => {
                    service.protocol = match arg.to_ascii_uppercase().as_str() {
                        "TCP" => "tcp",
                        "UDP" => "udp",
                        other => bail!("{at}: protocol {other} is not supported (TCP, UDP)"),
                    }
                }
                "real_server" => {
                    let address = arg
                        .parse()
                        .with_context(|| format!("{at}: real_server needs an address"))?;
                    let port = child
                        .words
                        .get(2)
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(port);
                    let mut backend = Backend {
                        address: Some(address),
                        port,
                        weight: 1,
                        ..Backend::default()
                    };
                    for item in &child.children {
                        let at = format!("line {}", item.line);
                        match item.words[0].as_str() {
                            "weight" => {
                                backend.weight = item
                                    .words
                                    .get(1)
                                    .and_then(|w| w.parse().ok())
                                    .with_context(|| format!("{at}: weight is not a number"))?
                            }
                            "uthreshold" => {
                                backend.max_conns = item.words.get(1).and_then(|w| w.parse().ok())
                            }
                            _ => {
                                if let Some(health) = keepalived_check(item, delay_loop)? {
                                    backend.health = Some(health);
                                }
                            }
                        }
                    }
                    service.backends.push(backend);
                }
                _ => {}
            }
        }
        services.push(service);
    }
    if services.is_empty() {
        bail!("no virtual_server blocks found");
    }
    Ok(render(&services, "keepalived"))
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}

fn write_health(out: &mut String, table: &str, health: &Health) {
    let _ = writeln!(out, "\n[{table}]\nkind = \"{}\"", health.kind);
    if let Some(interval) = health.interval {
        let _ = writeln!(out, "interval = \"{interval}s\"");
    }
    if let Some(timeout) = health.timeout {
        let _ = writeln!(out, "timeout = \"{timeout}s\"");
    }
    if let Some(port) = health.port {
        let _ = writeln!(out, "port = {port}");
    }
    if let Some(path) = &health.path {
        let _ = writeln!(out, "path = {}", quoted(path));
    }
    if let Some(status) = &health.expect_status {
        let _ = writeln!(out, "expect_status = {}", quoted(status));
    }
    if let Some(command) = &health.command {
        let list: Vec<String> = command.iter().map(|c| quoted(c)).collect();
        let _ = writeln!(out, "command = [{}]", list.join(", "));
    }
}

fn render(services: &[Service], from: &str) -> String {
    let mut out = format!(
        "# Imported from {from} by `pnlb ctl import`. Check [daemon] (the interface\n\
         # that receives VIP traffic), then `pnlb check --config` this file.\n\n\
         [daemon]\ninterfaces = [\"eth0\"]\n"
    );
    for service in services {
        let Some(vip) = service.vip else { continue };
        let name =
            format!("{}-{}-{}", service.protocol, vip, service.port).replace([':', '.'], "_");
        let _ = writeln!(
            out,
            "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {}\nprotocol = \"{}\"\nmethod = \"{}\"\nscheduler = \"{}\"",
            service.port,
            service.protocol,
            service.method.unwrap_or("dr"),
            service.scheduler
        );
        if let Some(timeout) = service.persistence {
            let _ = writeln!(out, "persistence = \"{timeout}s\"");
        }
        if let Some(mask) = service.persistence_mask.filter(|&m| m != 32 && m != 128) {
            let _ = writeln!(out, "persistence_mask = {mask}");
        }
        for backend in &service.backends {
            let Some(address) = backend.address else {
                continue;
            };
            let _ = writeln!(out, "\n[[service.backend]]\naddress = \"{address}\"");
            if backend.port != service.port {
                let _ = writeln!(out, "port = {}", backend.port);
            }
            if backend.weight != 1 {
                let _ = writeln!(out, "weight = {}", backend.weight);
            }
            if let Some(max) = backend.max_conns {
                let _ = writeln!(out, "max_conns = {max}");
            }
            if let Some(health) = &backend.health {
                write_health(&mut out, "service.backend.health", health);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn valid(toml: &str) -> pnlb_core::config::Config {
        pnlb_core::config::parse(Path::new("imported.toml"), toml)
            .unwrap_or_else(|err| panic!("{err}\n{toml}"))
    }

    #[test]
    fn ipvsadm_save_output_becomes_a_valid_config() {
        let saved = "\
-A -t 10.77.100.1:80 -s wlc -p 600 -M 255.255.255.0
-a -t 10.77.100.1:80 -r 10.77.1.11:80 -g -w 1
-a -t 10.77.100.1:80 -r 10.77.1.12:80 -g -w 3 -x 500
-A -u 10.77.100.1:53 -s rr
-a -u 10.77.100.1:53 -r 10.77.1.21:5353 -m -w 1
-A -t [fd77:100::1]:443 -s mh
-a -t [fd77:100::1]:443 -r [fd77:1::11]:443 -i -w 2
";
        let config = valid(&from_ipvsadm(saved).unwrap());
        assert_eq!(config.services.len(), 3);
        let web = &config.services[0];
        assert_eq!(
            (web.scheduler.to_string(), web.method.to_string()),
            ("wlc".into(), "dr".into())
        );
        assert_eq!(web.persistence.unwrap().prefix_len, 24);
        assert_eq!(
            (web.backends[1].weight, web.backends[1].max_conns),
            (3, Some(500))
        );
        let dns = &config.services[1];
        assert_eq!(
            (dns.method.to_string(), dns.backends[0].port),
            ("nat".into(), 5353)
        );
        let v6 = &config.services[2];
        assert_eq!(
            (v6.scheduler.to_string(), v6.method.to_string()),
            ("maglev".into(), "tun".into())
        );
    }

    #[test]
    fn what_pnlb_cannot_do_is_refused_with_its_line() {
        let err = from_ipvsadm("-A -f 1 -s rr\n").unwrap_err().to_string();
        assert!(
            err.contains("line 1") && err.contains("firewall-mark"),
            "{err}"
        );
        let err = from_ipvsadm("-A -t 10.0.0.1:80 -s lblc\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lblc"), "{err}");
        let mixed = "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g\n-a -t 10.0.0.1:80 -r 10.0.0.3:80 -m\n";
        let err = from_ipvsadm(mixed).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("mixes"), "{err}");
    }

    #[test]
    fn keepalived_virtual_servers_become_a_valid_config() {
        let conf = r#"
global_defs { router_id lb1 }
vrrp_instance VI_1 { state MASTER  interface eth0  virtual_router_id 51 }
virtual_server 10.77.100.1 80 {
    delay_loop 6
    lb_algo wrr
    lb_kind DR
    persistence_timeout 50
    protocol TCP
    real_server 10.77.1.11 80 {
        weight 2
        HTTP_GET {
            url { path /health  status_code 200 }
            connect_timeout 3
        }
    }
    real_server 10.77.1.12 80 {
        weight 1
        TCP_CHECK { connect_timeout 2  connect_port 80 }   # a comment
    }
}
virtual_server fd77:100::1 53 {
    lvs_sched sh
    lvs_method NAT
    protocol UDP
    real_server fd77:1::21 53 {
        MISC_CHECK { misc_path "/usr/local/bin/check-dns --quick" }
    }
}
"#;
        let toml = from_keepalived(conf).unwrap();
        let config = valid(&toml);
        let web = &config.services[0];
        assert_eq!(
            (web.scheduler.to_string(), web.method.to_string()),
            ("wrr".into(), "dr".into())
        );
        assert_eq!(web.backends[0].weight, 2);
        let check = web.backends[0].health.as_ref().unwrap();
        assert_eq!(check.interval, std::time::Duration::from_secs(6));
        assert!(toml.contains("path = \"/health\""), "{toml}");
        assert!(
            toml.contains("command = [\"/usr/local/bin/check-dns\", \"--quick\"]"),
            "{toml}"
        );
        assert_eq!(config.services[1].protocol.to_string(), "udp");
        assert!(from_keepalived("virtual_server fwmark 1 { }").is_err());
        // Malformed input is an error or ignored, never a panic.
        for junk in [
            "{ }",
            "}}}",
            "virtual_server",
            "virtual_server 10.0.0.1 80 { real_server { } }",
            "{ { weight } }",
        ] {
            let _ = from_keepalived(junk);
        }
        for junk in [
            "-A",
            "-a -t",
            "-A -t 10.0.0.1:80 -s",
            "-x -y -z",
            "-A -t [::1]:80 -p",
        ] {
            let _ = from_ipvsadm(junk);
        }
    }
}
