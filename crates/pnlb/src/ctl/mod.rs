//! `pnlb ctl`: the API from the command line, with verbs an ipvsadm user
//! knows (`list`, `add-service`, `add-backend`, `edit`, `remove`, `drain`,
//! `zero`), plus `reload` and `import` of ipvsadm / keepalived setups.

mod client;
pub(crate) mod import;
mod list;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use self::client::{Client, Endpoint};
use crate::api::edit::BackendSelector;
use crate::api::model::{Done, Status};

#[derive(Args)]
pub struct CtlArgs {
    /// The API address (daemon.api); default 127.0.0.1:9180, or $PNLB_API.
    #[arg(long, global = true)]
    api: Option<SocketAddr>,
    /// The API's unix socket (daemon.api_socket).
    #[arg(long, global = true, conflicts_with = "api")]
    socket: Option<PathBuf>,
    /// With --api: HTTPS, trusting this PEM certificate (the API's own,
    /// daemon.api_tls_cert_file, or its CA's).
    #[arg(long, global = true, requires = "api")]
    tls_ca: Option<PathBuf>,
    /// Take the API address, socket and token file from this config file.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// File holding the API token (daemon.api_token_file); or $PNLB_TOKEN.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Services and backends, as `ipvsadm -L -n` lays them out.
    List {
        /// Counters (ipvsadm --stats).
        #[arg(long, conflicts_with = "rate")]
        stats: bool,
        /// Per-second rates over one second (ipvsadm --rate).
        #[arg(long)]
        rate: bool,
    },
    /// Add a service (ipvsadm -A).
    AddService {
        name: String,
        #[arg(long)]
        vip: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "tcp")]
        protocol: String,
        #[arg(long, default_value = "dr")]
        method: String,
        #[arg(long, default_value = "maglev")]
        scheduler: String,
        /// Any other service key, as in the config file: KEY=VALUE (TOML value).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Add a backend to a service (ipvsadm -a).
    AddBackend {
        service: String,
        address: String,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Change keys of a service, or of one of its backends (ipvsadm -E / -e).
    Edit {
        service: String,
        /// A backend (address or address:port); without it the service is edited.
        backend: Option<String>,
        #[arg(long = "set", value_name = "KEY=VALUE", required = true)]
        set: Vec<String>,
    },
    /// Remove a service, or one of its backends (ipvsadm -D / -d). A removed
    /// backend's established connections continue until they end.
    Remove {
        service: String,
        backend: Option<String>,
    },
    /// No new flows to a backend; established ones continue.
    Drain { service: String, backend: String },
    /// Undo drain.
    Undrain { service: String, backend: String },
    /// With [bgp]: withdraw every VIP of this node, then wait until no
    /// packet reaches it for 2 s (the routers moved its flows elsewhere)
    /// or the deadline passes. It stays withdrawn until resume-node.
    DrainNode {
        /// How long to wait (default: bgp.drain_deadline), e.g. "60s".
        #[arg(long)]
        deadline: Option<String>,
        /// Return once the VIPs are withdrawn, without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Undo drain-node: announce the VIPs again.
    ResumeNode,
    /// Re-read the config file (API edits since are replaced by it).
    Reload,
    /// Zero the packet and byte counters (ipvsadm -Z).
    Zero,
    /// Convert an ipvsadm or keepalived setup to a pnlb config (offline):
    /// the config to stdout (or --output), what did not carry over to stderr.
    Import {
        /// ipvsadm rules: `ipvsadm-save` output (with or without -n), a file
        /// for `ipvsadm -R`, or a shell script of ipvsadm commands; `-` for stdin.
        #[arg(
            long,
            conflicts_with = "keepalived",
            required_unless_present = "keepalived"
        )]
        ipvsadm: Option<PathBuf>,
        /// A keepalived.conf (its includes are read too); `-` for stdin.
        #[arg(long)]
        keepalived: Option<PathBuf>,
        /// Write the config here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

pub fn ctl(args: CtlArgs) -> Result<()> {
    if let Verb::Import {
        ipvsadm,
        keepalived,
        output,
    } = &args.verb
    {
        return import_setup(ipvsadm.as_deref(), keepalived.as_deref(), output.as_deref());
    }
    let client = connect(&args)?;
    match args.verb {
        Verb::List { stats, rate } => {
            let first: Status = client.call("GET", "/api/v1/status", None)?;
            if rate {
                let started = Instant::now();
                std::thread::sleep(Duration::from_secs(1));
                let second: Status = client.call("GET", "/api/v1/status", None)?;
                let seconds = started.elapsed().as_secs_f64();
                print!(
                    "{}",
                    list::render(&second, list::Mode::Rate(seconds), Some(&first))
                );
            } else {
                let mode = if stats {
                    list::Mode::Stats
                } else {
                    list::Mode::Plain
                };
                print!("{}", list::render(&first, mode, None));
            }
        }
        Verb::AddService {
            name,
            vip,
            port,
            protocol,
            method,
            scheduler,
            set,
        } => {
            let mut body = json!({
                "name": name, "vip": vip, "port": port, "protocol": protocol,
                "method": method, "scheduler": scheduler,
            });
            apply_sets(&mut body, &set)?;
            done(client.call("POST", "/api/v1/services", Some(&body))?);
        }
        Verb::AddBackend {
            service,
            address,
            port,
            weight,
            set,
        } => {
            let mut body = json!({ "address": address });
            if let Some(port) = port {
                body["port"] = json!(port);
            }
            if let Some(weight) = weight {
                body["weight"] = json!(weight);
            }
            apply_sets(&mut body, &set)?;
            done(client.call(
                "POST",
                &format!("/api/v1/services/{}/backends", path(&service)),
                Some(&body),
            )?);
        }
        Verb::Edit {
            service,
            backend,
            set,
        } => {
            // Read-modify-write of the service's (or backend's) own keys.
            let document: Value = client.call("GET", "/api/v1/config", None)?;
            let table = find_service(&document, &service)?;
            match backend {
                None => {
                    let mut body = table.clone();
                    apply_sets(&mut body, &set)?;
                    done(client.call(
                        "PUT",
                        &format!("/api/v1/services/{}", path(&service)),
                        Some(&body),
                    )?);
                }
                Some(backend) => {
                    let selector =
                        BackendSelector::parse(&backend).map_err(|e| anyhow::anyhow!(e.error))?;
                    let mut body = find_backend(table, &selector)?.clone();
                    apply_sets(&mut body, &set)?;
                    let url = format!(
                        "/api/v1/services/{}/backends/{}",
                        path(&service),
                        path(&selector.to_string())
                    );
                    done(client.call("PUT", &url, Some(&body))?);
                }
            }
        }
        Verb::Remove { service, backend } => {
            let url = match backend {
                None => format!("/api/v1/services/{}", path(&service)),
                Some(backend) => format!(
                    "/api/v1/services/{}/backends/{}",
                    path(&service),
                    path(&backend)
                ),
            };
            done(client.call("DELETE", &url, None)?);
        }
        Verb::Drain { service, backend } => drain(&client, &service, &backend, "drain")?,
        Verb::Undrain { service, backend } => drain(&client, &service, &backend, "undrain")?,
        Verb::DrainNode { deadline, no_wait } => drain_node(&client, deadline, no_wait)?,
        Verb::ResumeNode => done(client.call("POST", "/api/v1/node/resume", None)?),
        Verb::Reload => done(client.call("POST", "/api/v1/reload", None)?),
        Verb::Zero => done(client.call("POST", "/api/v1/zero", None)?),
        Verb::Import { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn drain(client: &Client, service: &str, backend: &str, action: &str) -> Result<()> {
    let url = format!(
        "/api/v1/services/{}/backends/{}/{action}",
        path(service),
        path(backend)
    );
    done(client.call("POST", &url, None)?);
    Ok(())
}

/// drain-node: withdraws, then follows the drain once a second until the
/// node is quiet or the deadline passes.
fn drain_node(client: &Client, deadline: Option<String>, no_wait: bool) -> Result<()> {
    let body = deadline.map(|deadline| json!({ "deadline": deadline }));
    done(client.call("POST", "/api/v1/node/drain", body.as_ref())?);
    if no_wait {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let status: Status = client.call("GET", "/api/v1/status", None)?;
        let Some(drain) = status.node.bgp.and_then(|bgp| bgp.drain) else {
            println!("the node was resumed meanwhile");
            return Ok(());
        };
        println!(
            "{:>5.0} s: {}, {:.0} packets/s, quiet for {:.1} s, {} established entries",
            drain.seconds,
            drain.state,
            drain.packets_per_second,
            drain.quiet_seconds,
            drain.established_entries
        );
        match drain.state.as_str() {
            "drained" => return Ok(()),
            "deadline passed" => bail!(
                "the deadline ({:.0} s) passed with packets still arriving; the node stays withdrawn",
                drain.deadline_seconds
            ),
            _ => {}
        }
    }
}

fn done(done: Done) {
    println!("{} (config version {})", done.done, done.config_version);
}

/// A path segment, with what URLs cannot carry escaped.
fn path(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn connect(args: &CtlArgs) -> Result<Client> {
    let mut endpoint = match (&args.socket, args.api, &args.tls_ca) {
        (Some(path), _, _) => Some(Endpoint::Unix(path.clone())),
        (None, Some(address), Some(trusted)) => Some(Endpoint::Tls(address, trusted.clone())),
        (None, Some(address), None) => Some(Endpoint::Tcp(address)),
        (None, None, _) => None,
    };
    let mut token_file = args.token_file.clone();
    if let Some(config) = &args.config {
        let config = pnlb_core::config::load(config)?;
        if endpoint.is_none() {
            endpoint = match (
                &config.daemon.api_socket,
                config.daemon.api,
                &config.daemon.api_tls,
            ) {
                (Some(path), _, _) => Some(Endpoint::Unix(path.clone())),
                (None, Some(address), Some(tls)) => {
                    Some(Endpoint::Tls(address, tls.cert_file.clone()))
                }
                (None, Some(address), None) => Some(Endpoint::Tcp(address)),
                (None, None, _) => {
                    bail!("the config has neither daemon.api nor daemon.api_socket")
                }
            };
        }
        token_file = token_file.or(config.daemon.api_token_file);
    }
    let endpoint = match endpoint {
        Some(endpoint) => endpoint,
        None => {
            let text = std::env::var("PNLB_API").unwrap_or_else(|_| "127.0.0.1:9180".into());
            Endpoint::Tcp(
                text.parse()
                    .with_context(|| format!("PNLB_API={text:?} is not address:port"))?,
            )
        }
    };
    let token = match token_file {
        Some(path) => Some(crate::api::read_token(&path)?),
        None => std::env::var("PNLB_TOKEN").ok(),
    };
    Ok(Client { endpoint, token })
}

/// `KEY=VALUE` pairs into a JSON object; VALUE is read as TOML (`3`,
/// `"300s"`, `["10.0.0.1"]`), or taken as a plain string.
fn apply_sets(body: &mut Value, sets: &[String]) -> Result<()> {
    let object = body.as_object_mut().context("not an object")?;
    for set in sets {
        let (key, value) = set
            .split_once('=')
            .with_context(|| format!("--set {set:?}: write it as KEY=VALUE"))?;
        let key = key.trim();
        let parsed = format!("v = {}", value.trim())
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .map_or_else(
                || Ok(Value::String(value.trim().to_string())),
                serde_json::to_value,
            )?;
        object.insert(key.to_string(), parsed);
    }
    Ok(())
}

fn find_service<'a>(document: &'a Value, name: &str) -> Result<&'a Value> {
    document
        .get("service")
        .and_then(Value::as_array)
        .and_then(|list| {
            list.iter()
                .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
        })
        .with_context(|| format!("no service named {name:?}; `pnlb ctl list` shows them"))
}

fn find_backend<'a>(service: &'a Value, selector: &BackendSelector) -> Result<&'a Value> {
    let port = service.get("port").and_then(Value::as_u64);
    service
        .get("backend")
        .and_then(Value::as_array)
        .and_then(|list| {
            list.iter().find(|b| {
                b.get("address")
                    .and_then(Value::as_str)
                    .and_then(|a| a.parse().ok())
                    == Some(selector.address)
                    && selector.port.is_none_or(|p| {
                        b.get("port").and_then(Value::as_u64).or(port) == Some(u64::from(p))
                    })
            })
        })
        .with_context(|| format!("the service has no backend {selector}"))
}

/// `pnlb ctl import`: the config to stdout or `output`, the summary to
/// stderr; fails when nothing could be imported.
fn import_setup(
    ipvsadm: Option<&std::path::Path>,
    keepalived: Option<&std::path::Path>,
    output: Option<&std::path::Path>,
) -> Result<()> {
    let read = |path: &std::path::Path| -> Result<String> {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading standard input")?;
            Ok(text)
        } else {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        }
    };
    let (imported, source) = match (ipvsadm, keepalived) {
        (Some(path), _) => {
            let names = import::names::System::new();
            let source = path.display().to_string();
            (
                import::ipvsadm::import(&read(path)?, &names, &source),
                source,
            )
        }
        (None, Some(path)) => {
            let text = read(path)?;
            let file = (path.as_os_str() != "-").then_some(path);
            (
                import::keepalived::import(&text, file),
                path.display().to_string(),
            )
        }
        (None, None) => bail!("give --ipvsadm FILE or --keepalived FILE"),
    };
    eprint!("{}", imported.summary(&source));
    if imported.services == 0 {
        bail!("{source}: no service could be imported (see above)");
    }
    match output {
        Some(path) => std::fs::write(path, &imported.toml)
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{}", imported.toml),
    }
    Ok(())
}
