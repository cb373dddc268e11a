//! ipvsadm rules: `ipvsadm-save` output (with or without `-n`), files for
//! `ipvsadm -R`, and shell scripts of ipvsadm commands. The commands are
//! replayed in order (add, edit, delete, clear), as ipvsadm would apply
//! them; shell variables set by plain assignments are expanded, and a
//! command that needs the shell to compute something is listed instead.

use std::collections::HashMap;
use std::net::IpAddr;

use super::model::{
    ipvs_scheduler, prefix_len, service_name, unusable, Backend, Method, Notes, Protocol,
    Scheduler, SchedulerMapping, Service,
};
use super::names::Resolve;
use super::pool::{add_backend, failover};
use super::render::Head;
use super::{finish, Imported};

/// ipvsadm's persistence timeout when -p has none.
const DEFAULT_PERSISTENCE_SECS: u64 = 300;

pub fn import(text: &str, names: &dyn Resolve, source: &str) -> Imported {
    let mut state = State {
        names,
        notes: Notes::default(),
        services: Vec::new(),
        timeouts: Vec::new(),
        local_addresses: HashMap::new(),
    };
    let mut shell = Shell::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut index = 0;
    while index < lines.len() {
        let line = index + 1;
        // A command continued with `\` at the end of its lines.
        let mut logical = lines[index].to_string();
        while logical.ends_with('\\') && index + 1 < lines.len() {
            logical.pop();
            index += 1;
            logical.push(' ');
            logical.push_str(lines[index]);
        }
        index += 1;
        let trimmed = logical.trim_start();
        if trimmed.starts_with('-') {
            // ipvsadm-save / ipvsadm -R format: the arguments alone.
            let words = split_words(trimmed);
            match shell.expand_all(&words) {
                Ok(args) => state.run(&args, line),
                Err(var) => state.needs_shell(line, &var),
            }
            continue;
        }
        for command in split_commands(trimmed) {
            let heredoc = command.heredoc.clone();
            let body = heredoc.as_ref().map(|end| {
                let mut body = Vec::new();
                while index < lines.len() {
                    let candidate = lines[index];
                    index += 1;
                    if candidate.trim() == end {
                        break;
                    }
                    body.push((index, candidate));
                }
                body
            });
            shell.run(&command, line, body, &mut state);
        }
    }
    let services = state.services();
    let head = Head {
        source: source.to_string(),
        interface: None,
        timeouts: std::mem::take(&mut state.timeouts),
    };
    finish(head, services, state.notes)
}

/// A virtual service as ipvsadm holds it.
struct VirtualService {
    line: usize,
    protocol: Protocol,
    vip: IpAddr,
    port: u16,
    scheduler: String,
    flags: Vec<String>,
    persistence: Option<u64>,
    mask: Option<u8>,
    ops: bool,
    dests: Vec<Dest>,
}

struct Dest {
    line: usize,
    address: IpAddr,
    port: u16,
    method: Method,
    weight: u32,
    upper: Option<u64>,
    gue_port: Option<u16>,
}

struct State<'a> {
    names: &'a dyn Resolve,
    notes: Notes,
    services: Vec<VirtualService>,
    timeouts: Vec<(&'static str, u64)>,
    /// dpvs `--add-laddr`: a full-NAT service's local addresses.
    local_addresses: HashMap<(Protocol, IpAddr, u16), Vec<IpAddr>>,
}

/// One ipvsadm invocation's options.
#[derive(Default)]
struct Options {
    command: Option<&'static str>,
    service: Option<(Protocol, String)>,
    fwmark: bool,
    scheduler: Option<String>,
    persistent: Option<Option<String>>,
    netmask: Option<String>,
    flags: Vec<String>,
    real_server: Option<String>,
    method: Option<Method>,
    weight: Option<String>,
    upper: Option<String>,
    tun_type: Option<String>,
    tun_port: Option<String>,
    ops: bool,
    laddr: Option<String>,
    set: Vec<String>,
}

/// Short options that take a value (`-b` does only for services: dpvs's
/// ipvsadm uses it alone on a real server for full NAT).
fn takes_value(short: char, server_command: bool) -> bool {
    matches!(
        short,
        't' | 'u' | 'f' | 's' | 'M' | 'r' | 'w' | 'x' | 'y' | 'z' | 'F'
    ) || (short == 'b' && !server_command)
}

fn long_name(long: &str) -> Option<char> {
    Some(match long {
        "add-service" => 'A',
        "edit-service" => 'E',
        "delete-service" => 'D',
        "clear" => 'C',
        "restore" => 'R',
        "save" => 'S',
        "add-server" => 'a',
        "edit-server" => 'e',
        "delete-server" => 'd',
        "list" => 'L',
        "zero" => 'Z',
        "tcp-service" => 't',
        "udp-service" => 'u',
        "fwmark-service" => 'f',
        "scheduler" => 's',
        "persistent" => 'p',
        "netmask" => 'M',
        "sched-flags" => 'b',
        "real-server" => 'r',
        "gatewaying" => 'g',
        "ipip" => 'i',
        "masquerading" => 'm',
        "fullnat" => 'b',
        "weight" => 'w',
        "u-threshold" => 'x',
        "l-threshold" => 'y',
        "numeric" => 'n',
        "ops" => 'O',
        "ipv6" => '6',
        "connection" => 'c',
        "help" => 'h',
        "version" => 'V',
        "laddr" => 'z',
        _ => return None,
    })
}

impl State<'_> {
    fn needs_shell(&mut self, line: usize, var: &str) {
        self.notes.skipped(
            line,
            format!("uses ${var}, which the shell computes (a loop, a command or an environment variable); write the value out"),
        );
    }

    /// One ipvsadm invocation.
    fn run(&mut self, args: &[String], line: usize) {
        let server_command = args.iter().any(|a| {
            matches!(
                a.as_str(),
                "-a" | "-e" | "-d" | "--add-server" | "--edit-server" | "--delete-server"
            ) || (a.starts_with('-') && !a.starts_with("--") && a[1..].starts_with(['a', 'e', 'd']))
        });
        let mut options = Options::default();
        let mut rest = args.iter().peekable();
        while let Some(arg) = rest.next() {
            let (letters, attached): (Vec<char>, Option<String>) = if let Some(long) =
                arg.strip_prefix("--")
            {
                let (name, value) = match long.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (long, None),
                };
                match (long_name(name), name) {
                    (Some(c), _) => (vec![c], value),
                    (None, "set") => {
                        options.command = Some("set");
                        options.set = rest.by_ref().take(3).cloned().collect();
                        continue;
                    }
                    (None, "start-daemon" | "stop-daemon") => {
                        options.command = Some("daemon");
                        rest.next();
                        continue;
                    }
                    (None, "sctp-service") => {
                        self.notes
                            .skipped(line, "--sctp-service: pnlb balances TCP and UDP");
                        return;
                    }
                    (None, "pe") => {
                        self.notes.skipped(
                            line,
                            format!(
                                "--pe {}: pnlb persists by client address only",
                                rest.next().map_or("", String::as_str)
                            ),
                        );
                        continue;
                    }
                    (None, "tun-type") => {
                        options.tun_type = value.or_else(|| rest.next().cloned());
                        continue;
                    }
                    (None, "tun-port") => {
                        options.tun_port = value.or_else(|| rest.next().cloned());
                        continue;
                    }
                    (None, "add-laddr") => {
                        options.command = Some("laddr");
                        continue;
                    }
                    (
                        None,
                        "tun-nocsum" | "tun-csum" | "tun-remcsum" | "exact" | "stats" | "rate"
                        | "thresholds" | "persistent-conn" | "nosort" | "sort" | "daemon"
                        | "timeout",
                    ) => continue,
                    (
                        None,
                        "mcast-interface" | "syncid" | "mcast-group" | "mcast-port" | "mcast-ttl"
                        | "sync-maxlen",
                    ) => {
                        rest.next();
                        continue;
                    }
                    (None, other) => {
                        self.notes.skipped(line, format!("--{other}: not an ipvsadm option (ipvsadm rejects the command too)"));
                        return;
                    }
                }
            } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
                // Clustered short options (`-At`): a letter that takes a
                // value takes the rest of the word, or the next word.
                let mut letters = Vec::new();
                let mut attached = None;
                for (at, c) in short.char_indices() {
                    letters.push(c);
                    if takes_value(c, server_command) || c == 'p' {
                        let tail = &short[at + c.len_utf8()..];
                        if !tail.is_empty() {
                            attached = Some(tail.to_string());
                        }
                        break;
                    }
                }
                (letters, attached)
            } else {
                self.notes.skipped(
                    line,
                    format!("{arg:?}: unexpected argument (ipvsadm rejects the command too)"),
                );
                return;
            };
            let last = letters.len() - 1;
            for (at, letter) in letters.into_iter().enumerate() {
                let value = |rest: &mut std::iter::Peekable<std::slice::Iter<'_, String>>| {
                    if at == last {
                        attached.clone().or_else(|| rest.next().cloned())
                    } else {
                        None
                    }
                };
                match letter {
                    'A' => options.command = Some("add-service"),
                    'E' => options.command = Some("edit-service"),
                    'D' => options.command = Some("delete-service"),
                    'C' => options.command = Some("clear"),
                    'a' => options.command = Some("add-server"),
                    'e' => options.command = Some("edit-server"),
                    'd' => options.command = Some("delete-server"),
                    'R' | 'S' | 'L' | 'l' | 'Z' | 'h' | 'V' => options.command = Some("other"),
                    't' => options.service = value(&mut rest).map(|v| (Protocol::Tcp, v)),
                    'u' => options.service = value(&mut rest).map(|v| (Protocol::Udp, v)),
                    'f' => {
                        options.fwmark = true;
                        value(&mut rest);
                    }
                    's' => options.scheduler = value(&mut rest),
                    'p' => {
                        // The timeout is optional: a number next, or none.
                        let timeout = if at == last {
                            attached
                                .clone()
                                .or_else(|| rest.next_if(|n| n.parse::<u64>().is_ok()).cloned())
                        } else {
                            None
                        };
                        options.persistent = Some(timeout);
                    }
                    'M' => options.netmask = value(&mut rest),
                    'b' if server_command => options.method = Some(Method::Snat),
                    'b' => options.flags.extend(
                        value(&mut rest)
                            .unwrap_or_default()
                            .split(',')
                            .map(str::to_string),
                    ),
                    'r' => options.real_server = value(&mut rest),
                    'g' => options.method = Some(Method::Dr),
                    'i' => options.method = Some(Method::Tun),
                    'm' => options.method = Some(Method::Nat),
                    'w' => options.weight = value(&mut rest),
                    'x' => options.upper = value(&mut rest),
                    'y' => {
                        value(&mut rest);
                        self.notes.skipped(line, "-y (lower threshold): pnlb takes new flows again as soon as a backend is below max_conns");
                    }
                    'z' => options.laddr = value(&mut rest),
                    'F' => {
                        value(&mut rest);
                    }
                    'O' => options.ops = true,
                    'n' | 'c' | '6' | 'q' => {}
                    other => {
                        self.notes.skipped(
                            line,
                            format!(
                                "-{other}: not an ipvsadm option (ipvsadm rejects the command too)"
                            ),
                        );
                        return;
                    }
                }
            }
        }
        self.apply(options, line);
    }

    fn apply(&mut self, options: Options, line: usize) {
        let Some(command) = options.command else {
            return; // `ipvsadm` alone lists the table
        };
        match command {
            "other" => return,
            "clear" => {
                self.services.clear();
                return;
            }
            "set" => {
                for (key, value) in ["tcp", "tcp_fin", "udp"].into_iter().zip(&options.set) {
                    match value.parse::<u64>() {
                        Ok(0) => {} // 0 leaves it unchanged
                        Ok(seconds) => self.timeouts.push((key, seconds)),
                        Err(_) => self
                            .notes
                            .skipped(line, format!("--set {value}: not a number of seconds")),
                    }
                }
                return;
            }
            "daemon" => {
                self.notes.skipped(line, "the connection sync daemon: pnlb syncs connections between the nodes of an [ha] pair (docs/ha.md)");
                return;
            }
            _ => {}
        }
        if options.fwmark {
            self.notes.skipped(line, "-f (firewall-mark service): no pnlb equivalent; write one service per VIP and port");
            return;
        }
        let Some((protocol, address)) = options.service.clone() else {
            self.notes.skipped(
                line,
                "no -t or -u service address (ipvsadm rejects the command too)",
            );
            return;
        };
        let (protocol, address) = (&protocol, address.as_str());
        let Some((vip, port)) = self.endpoint(address, *protocol, line) else {
            return;
        };
        let position = self
            .services
            .iter()
            .position(|s| s.protocol == *protocol && s.vip == vip && s.port == port);
        match command {
            "add-service" | "edit-service" => {
                let index = match (command, position) {
                    ("add-service", Some(_)) => {
                        self.notes.skipped(line, format!("{address}: the service already exists (ipvsadm: Service already exists)"));
                        return;
                    }
                    ("edit-service", None) => {
                        self.notes.skipped(
                            line,
                            format!(
                                "{address}: no such service to edit (ipvsadm: No such service)"
                            ),
                        );
                        return;
                    }
                    (_, Some(index)) => index,
                    (_, None) => {
                        self.services.push(VirtualService {
                            line,
                            protocol: *protocol,
                            vip,
                            port,
                            scheduler: "wlc".into(), // ipvsadm's default
                            flags: Vec::new(),
                            persistence: None,
                            mask: None,
                            ops: false,
                            dests: Vec::new(),
                        });
                        self.services.len() - 1
                    }
                };
                let service = &mut self.services[index];
                if let Some(scheduler) = options.scheduler {
                    service.scheduler = scheduler;
                }
                if !options.flags.is_empty() {
                    service.flags = options.flags;
                }
                if let Some(timeout) = options.persistent {
                    service.persistence = Some(
                        timeout
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(DEFAULT_PERSISTENCE_SECS),
                    );
                }
                if let Some(mask) = options.netmask {
                    match prefix_len(&mask) {
                        Some(bits) => service.mask = Some(bits),
                        None => self
                            .notes
                            .skipped(line, format!("-M {mask}: not a netmask")),
                    }
                }
                service.ops |= options.ops;
            }
            "delete-service" => match position {
                Some(index) => {
                    self.services.remove(index);
                }
                None => self
                    .notes
                    .skipped(line, format!("{address}: no such service to delete")),
            },
            "laddr" => {
                if let Some(laddr) = options.laddr.as_deref().and_then(|a| self.names.host(a)) {
                    self.local_addresses
                        .entry((*protocol, vip, port))
                        .or_default()
                        .push(laddr);
                }
            }
            _ => self.apply_server(command, options, position, address, line),
        }
    }

    fn apply_server(
        &mut self,
        command: &str,
        options: Options,
        position: Option<usize>,
        address: &str,
        line: usize,
    ) {
        let Some(index) = position else {
            self.notes.skipped(line, format!("{address}: a real server for a service not added before (ipvsadm: Service not defined)"));
            return;
        };
        let Some(server) = options.real_server.as_deref() else {
            self.notes
                .skipped(line, "no -r real server (ipvsadm rejects the command too)");
            return;
        };
        let protocol = self.services[index].protocol;
        let Some((server_address, server_port)) = self.endpoint(server, protocol, line) else {
            return;
        };
        let service = &self.services[index];
        // A real server without a port takes the service's.
        let server_port = if server_port == 0 {
            service.port
        } else {
            server_port
        };
        let existing = service
            .dests
            .iter()
            .position(|d| d.address == server_address && d.port == server_port);
        let weight = match options.weight.as_deref().map(str::parse::<i64>) {
            None => None,
            Some(Ok(w)) if (0..=65_535).contains(&w) => Some(w as u32),
            Some(_) => {
                self.notes.skipped(
                    line,
                    format!(
                        "-w {}: pnlb takes weights 0 to 65535",
                        options.weight.unwrap_or_default()
                    ),
                );
                return;
            }
        };
        let upper = options.upper.as_deref().and_then(|x| x.parse::<u64>().ok());
        let gue_port = match options.tun_type.as_deref() {
            None | Some("ipip") => None,
            Some("gue") => Some(
                options
                    .tun_port
                    .as_deref()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(6080),
            ),
            Some(other) => {
                self.notes.skipped(
                    line,
                    format!("--tun-type {other}: pnlb tunnels with IPIP or GUE"),
                );
                return;
            }
        };
        let service = &mut self.services[index];
        match (command, existing) {
            ("add-server", Some(_)) => self.notes.skipped(line, format!("{server}: already a real server of {address} (ipvsadm: Destination already exists)")),
            ("add-server", None) => service.dests.push(Dest {
                line,
                address: server_address,
                port: server_port,
                method: options.method.unwrap_or(Method::Dr), // ipvsadm's default: -g
                weight: weight.unwrap_or(1),
                upper,
                gue_port,
            }),
            ("edit-server", Some(at)) => {
                let dest = &mut service.dests[at];
                if let Some(method) = options.method {
                    dest.method = method;
                }
                if let Some(weight) = weight {
                    dest.weight = weight;
                }
                if options.upper.is_some() {
                    dest.upper = upper;
                }
            }
            ("delete-server", Some(at)) => {
                service.dests.remove(at);
            }
            (_, None) => self.notes.skipped(line, format!("{server}: not a real server of {address} (ipvsadm: No such destination)")),
            _ => {}
        }
    }

    /// `host:port`, `[v6]:port` or a bare host, with names resolved.
    fn endpoint(&mut self, text: &str, protocol: Protocol, line: usize) -> Option<(IpAddr, u16)> {
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']')?;
            (host, after.strip_prefix(':'))
        } else if text.matches(':').count() > 1 {
            (text, None) // a bare IPv6 address
        } else {
            match text.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        let Some(address) = self.names.host(host) else {
            self.notes.skipped(
                line,
                format!("{host}: a host name that does not resolve here; run ipvsadm-save with -n"),
            );
            return None;
        };
        let port = match port {
            None => 0,
            Some(name) => {
                match self.names.port(name, protocol) {
                    Some(port) => port,
                    None => {
                        self.notes.skipped(line, format!("{name}: a service name not in /etc/services; run ipvsadm-save with -n"));
                        return None;
                    }
                }
            }
        };
        Some((address, port))
    }

    fn services(&mut self) -> Vec<Service> {
        let mut out = Vec::new();
        for vs in std::mem::take(&mut self.services) {
            let flags: Vec<&str> = vs.flags.iter().map(String::as_str).collect();
            let mut comments = Vec::new();
            let scheduler = match ipvs_scheduler(&vs.scheduler, &flags) {
                SchedulerMapping::Same(s) => s,
                SchedulerMapping::Nearest(s, why) => {
                    comments.push(format!("-s {}: {why}", vs.scheduler));
                    self.notes
                        .approximated(vs.line, format!("-s {} as {}: {why}", vs.scheduler, s.name));
                    s
                }
                SchedulerMapping::Failover => Scheduler {
                    name: "wrr",
                    hash_key: None,
                },
                SchedulerMapping::Refused(why) => {
                    self.notes
                        .skipped(vs.line, format!("{}:{}: {why}", vs.vip, vs.port));
                    continue;
                }
            };
            let method = vs.dests.first().map_or(Method::Dr, |d| d.method);
            let mut backends = Vec::new();
            let mut gue_port = None;
            for dest in vs.dests {
                if dest.method != method {
                    self.notes.skipped(dest.line, format!("real server {}: {} while the service's first is {}; pnlb has one method per service", dest.address, dest.method.name(), method.name()));
                    continue;
                }
                if dest.address.is_ipv4() != vs.vip.is_ipv4() {
                    self.notes.skipped(
                        dest.line,
                        format!(
                            "real server {}: not of the VIP's address family",
                            dest.address
                        ),
                    );
                    continue;
                }
                if let Some(why) = unusable(dest.address) {
                    self.notes
                        .skipped(dest.line, format!("real server {}: {why}", dest.address));
                    continue;
                }
                gue_port = gue_port.or(dest.gue_port);
                let clients_port = !method.translates() || vs.port == 0;
                let mut backend_comments = Vec::new();
                if clients_port && dest.port != vs.port && dest.port != 0 {
                    backend_comments.push(format!(
                        "real server port {}: {} forwards to the port the client asked for",
                        dest.port,
                        if vs.port == 0 {
                            "an all-ports service".to_string()
                        } else {
                            method.name().to_string()
                        }
                    ));
                }
                let backend = Backend {
                    line: dest.line,
                    address: dest.address,
                    port: if clients_port { vs.port } else { dest.port },
                    weight: dest.weight,
                    max_conns: dest.upper.filter(|&x| x > 0),
                    health: None,
                    comments: backend_comments,
                };
                add_backend(&mut backends, backend, method, &mut self.notes);
            }
            let mut fallback = None;
            if vs.scheduler == "fo" {
                failover(
                    &mut backends,
                    &mut fallback,
                    &mut self.notes,
                    vs.line,
                    &mut comments,
                );
            }
            if vs.ops {
                comments.push("-O (one-packet scheduling): pnlb schedules UDP per flow (5-tuple), not per datagram".into());
                self.notes.approximated(
                    vs.line,
                    "-O (one-packet scheduling): pnlb schedules UDP per flow",
                );
            }
            let snat_addresses = if method == Method::Snat {
                let addresses = self
                    .local_addresses
                    .get(&(vs.protocol, vs.vip, vs.port))
                    .cloned()
                    .unwrap_or_default();
                if addresses.is_empty() {
                    self.notes.skipped(vs.line, format!("{}:{}: full NAT without local addresses (--add-laddr); pnlb's snat needs them", vs.vip, vs.port));
                    continue;
                }
                addresses
            } else {
                Vec::new()
            };
            out.push(Service {
                line: vs.line,
                name: service_name(vs.protocol, vs.vip, vs.port),
                vip: vs.vip,
                port: vs.port,
                protocol: vs.protocol,
                method,
                scheduler,
                persistence: vs
                    .persistence
                    .map(|s| (s, vs.mask.filter(|&m| m != 32 && m != 128))),
                snat_addresses,
                gue_port: if method == Method::Tun {
                    gue_port
                } else {
                    None
                },
                health: None,
                backends,
                fallback: fallback.map(|(address, port, _)| (address, port)),
                comments,
            });
        }
        out
    }
}

/// One command of a shell line, with the here-document it reads, if any.
#[derive(Clone)]
struct Command {
    words: Vec<Word>,
    /// The word that ends a `<<WORD` here-document.
    heredoc: Option<String>,
    /// Its standard input comes from a pipe.
    piped: bool,
}

/// A shell word: literal text, with `$NAME` references left to expand
/// (single-quoted text never expands).
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Var(String),
}

type Word = Vec<Part>;

#[derive(Default)]
struct Shell {
    /// Values set by plain assignments; None when the shell computes them.
    vars: HashMap<String, Option<String>>,
}

impl Shell {
    fn expand(&self, word: &Word) -> Result<String, String> {
        let mut out = String::new();
        for part in word {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var(name) => match self.vars.get(name) {
                    Some(Some(value)) => out.push_str(value),
                    _ => return Err(name.clone()),
                },
            }
        }
        Ok(out)
    }

    fn expand_all(&self, words: &[Word]) -> Result<Vec<String>, String> {
        words.iter().map(|w| self.expand(w)).collect()
    }

    fn run(
        &mut self,
        command: &Command,
        line: usize,
        body: Option<Vec<(usize, &str)>>,
        state: &mut State,
    ) {
        let mut words: &[Word] = &command.words;
        // Assignments (`VIP=10.0.0.1`, `export VIP=...`) before or instead
        // of a command.
        if let Some(first) = words.first() {
            if matches!(
                self.expand(first).as_deref(),
                Ok("export" | "local" | "readonly" | "declare")
            ) {
                words = &words[1..];
            }
        }
        while let Some((name, value)) = words.first().and_then(assignment) {
            let value = value.and_then(|v| self.expand(&v).ok());
            self.vars.insert(name, value);
            words = &words[1..];
        }
        // A loop variable takes values the shell computes.
        if let (Ok("for"), Some(name)) = (
            words
                .first()
                .map(|w| self.expand(w))
                .unwrap_or(Err(String::new()))
                .as_deref(),
            words.get(1).and_then(|w| self.expand(w).ok()),
        ) {
            self.vars.insert(name, None);
            return;
        }
        // `sudo`, `exec`, a loop's `do` and the like run the command that follows.
        while let Some(first) = words.first() {
            match self.expand(first).as_deref() {
                Ok("do" | "then" | "else" | "{" | "(") => words = &words[1..],
                Ok("sudo" | "exec" | "command" | "time" | "nohup") => {
                    words = &words[1..];
                    while words
                        .first()
                        .is_some_and(|w| self.expand(w).is_ok_and(|t| t.starts_with('-')))
                    {
                        words = &words[1..];
                    }
                }
                _ => break,
            }
        }
        let Some(program) = words.first() else {
            return;
        };
        let Ok(program) = self.expand(program) else {
            return; // not known to be ipvsadm
        };
        if program.rsplit('/').next() != Some("ipvsadm") {
            return;
        }
        let args = match self.expand_all(&words[1..]) {
            Ok(args) => args,
            Err(var) => return state.needs_shell(line, &var),
        };
        let restore = args.iter().any(|a| a == "-R" || a == "--restore");
        if restore {
            match body {
                Some(body) => {
                    for (body_line, text) in body {
                        let text = text.trim();
                        if text.starts_with('-') {
                            match self.expand_all(&split_words(text)) {
                                Ok(args) => state.run(&args, body_line),
                                Err(var) => state.needs_shell(body_line, &var),
                            }
                        }
                    }
                }
                None => state.notes.skipped(
                    line,
                    if command.piped {
                        "rules piped into ipvsadm -R from another command: not read; import the rules themselves"
                    } else {
                        "ipvsadm -R reads rules from a file not given here; import that file"
                    },
                ),
            }
            return;
        }
        state.run(&args, line);
    }
}

/// `NAME=value` as a word: the name, and the value (None for a value the
/// shell computes: `$(...)` or backquotes).
fn assignment(word: &Word) -> Option<(String, Option<Word>)> {
    let Some(Part::Text(first)) = word.first() else {
        return None;
    };
    let (name, value_start) = first.split_once('=')?;
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return None;
    }
    let mut value: Word = vec![Part::Text(value_start.to_string())];
    value.extend(word[1..].iter().cloned());
    let computed = value
        .iter()
        .any(|p| matches!(p, Part::Text(t) if t.contains("$(") || t.contains('`')));
    Some((name.to_string(), (!computed).then_some(value)))
}

/// The words of an ipvsadm-save line (no shell: whitespace separates).
fn split_words(text: &str) -> Vec<Word> {
    split_commands(text)
        .into_iter()
        .next()
        .map(|c| c.words)
        .unwrap_or_default()
}

/// A shell line as commands: words with quotes and `$` references,
/// split at `;`, `&&`, `||`, `&` and `|`; a `#` starting a word ends it.
fn split_commands(line: &str) -> Vec<Command> {
    let mut commands = Vec::new();
    let mut current = Command {
        words: Vec::new(),
        heredoc: None,
        piped: false,
    };
    let mut word: Word = Vec::new();
    let mut text = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let end_word =
        |word: &mut Word, text: &mut String, in_word: &mut bool, current: &mut Command| {
            if !text.is_empty() {
                word.push(Part::Text(std::mem::take(text)));
            }
            if *in_word {
                current.words.push(std::mem::take(word));
            }
            *in_word = false;
        };
    while let Some(c) = chars.next() {
        match c {
            '#' if !in_word => break,
            ' ' | '\t' => end_word(&mut word, &mut text, &mut in_word, &mut current),
            ';' | '&' | '|' => {
                end_word(&mut word, &mut text, &mut in_word, &mut current);
                let piped = c == '|' && chars.peek() != Some(&'|');
                if chars.peek() == Some(&c) {
                    chars.next();
                }
                commands.push(std::mem::replace(
                    &mut current,
                    Command {
                        words: Vec::new(),
                        heredoc: None,
                        piped,
                    },
                ));
            }
            '<' if !in_word && chars.peek() == Some(&'<') => {
                chars.next();
                if chars.peek() == Some(&'-') {
                    chars.next();
                }
                let rest: String = chars.by_ref().collect();
                let end = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_matches(['\'', '"'])
                    .to_string();
                current.heredoc = Some(end);
                break;
            }
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    text.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            if let Some(next) = chars.next() {
                                text.push(next);
                            }
                        }
                        '$' => variable(&mut chars, &mut word, &mut text),
                        _ => text.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    text.push(next);
                }
            }
            '$' => {
                in_word = true;
                variable(&mut chars, &mut word, &mut text);
            }
            _ => {
                in_word = true;
                text.push(c);
            }
        }
    }
    end_word(&mut word, &mut text, &mut in_word, &mut current);
    commands.push(current);
    commands.retain(|c| !c.words.is_empty() || c.heredoc.is_some());
    commands
}

/// After a `$`: `NAME`, `{NAME}`, or a computed `$(...)` (kept as text so
/// an assignment of it is known to be computed).
fn variable(chars: &mut std::iter::Peekable<std::str::Chars>, word: &mut Word, text: &mut String) {
    let mut name = String::new();
    match chars.peek() {
        Some('{') => {
            chars.next();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
                name.push(c);
            }
        }
        Some('(') => {
            text.push_str("$(");
            chars.next();
            return;
        }
        _ => {
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
        }
    }
    if name.is_empty() {
        text.push('$');
        return;
    }
    if !text.is_empty() {
        word.push(Part::Text(std::mem::take(text)));
    }
    word.push(Part::Var(name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_keep_quotes_variables_and_command_separators() {
        let commands =
            split_commands("VIP=10.0.0.1; sudo ipvsadm -A -t \"$VIP\":80 -s 'r r' # note");
        assert_eq!(commands.len(), 2);
        assert_eq!(
            commands[1].words[4],
            vec![Part::Var("VIP".into()), Part::Text(":80".into())]
        );
        assert_eq!(commands[1].words[6], vec![Part::Text("r r".into())]);
        let heredoc = split_commands("/sbin/ipvsadm -R <<'EOF'");
        assert_eq!(heredoc[0].heredoc.as_deref(), Some("EOF"));
        for junk in [
            "\"", "'", "$", "${", "$(", "\\", "<<", "a=$(b", ";;;", "|||",
        ] {
            let _ = split_commands(junk);
        }
    }
}
