//! `pnlb-lab bench`: one lab run comparing the floor (no LB), the kernel
//! (nftables NAT), HAProxy and pnlb's methods on the same client, servers
//! and veths. Each figure is the median of several repetitions with its
//! min and max, and its ratio to the kernel baseline. A benchmark, not a
//! test: nothing here asserts on speed.

mod daemon_cpu;
mod flood;
mod setups;
mod tools;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use pnlb_lab::{Lab, LabProcess, LabSpec};
use serde::Serialize;

use setups::{Setup, IPERF_PORT};
use tools::{parse_iperf3, parse_wrk, HttpRun, ProgramRunTimes};

#[derive(Args)]
pub struct BenchArgs {
    /// Repetitions of every measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Seconds per wrk/iperf3 run.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Measure only these setups (names as printed, e.g. "pnlb dr"); the
    /// kernel baseline is always included.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Measure only the workloads whose names (as printed) contain this,
    /// e.g. "new connection per request, concurrency 1" (names hold
    /// commas, so give the flag once per workload).
    #[arg(long)]
    workload: Vec<String>,
    /// Stop (SIGSTOP) each pnlb daemon while its calm workloads run: the
    /// data plane forwards alone, which tells the daemon's share of the
    /// latency figures.
    #[arg(long)]
    pause_daemon: bool,
    /// Take the setups in turn for every repetition of the calm
    /// workloads, each started afresh, instead of measuring each setup's
    /// repetitions in one block: a VM's slow and quick phases (every
    /// figure 2-3x for minutes) then fall on every setup alike. (snat
    /// takes new SNAT addresses at every start: a fresh start forgets the
    /// ports that rest after use.)
    #[arg(long)]
    interleave: bool,
    /// Where to write the machine-readable results.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Measure only the daemon's own CPU with 10k, 100k and 1M live flows.
    #[arg(long)]
    daemon_cpu: bool,
}

/// The kernel baseline first (each setup also gets a fresh client address).
const SETUPS: [Setup; 9] = [
    Setup::Nftables,
    Setup::NftablesXdpPass,
    Setup::Direct,
    Setup::Haproxy,
    Setup::Pnlb("dr"),
    Setup::Pnlb("tun"),
    Setup::Pnlb("nat"),
    Setup::Pnlb("snat"),
    Setup::Ceiling,
];

/// The HTTP workloads: (name, connections, new connection per request).
const HTTP: [(&str, u32, bool); 4] = [
    ("new connection per request, concurrency 1", 1, true),
    ("new connection per request, concurrency 32", 32, true),
    ("kept-alive connections, concurrency 1", 1, false),
    ("kept-alive connections, concurrency 32", 32, false),
];

const IPERF: [(&str, u32); 2] = [("bulk TCP, 1 stream", 1), ("bulk TCP, 4 streams", 4)];

/// New connections under a SYN flood: spoofed SYNs from the client's
/// address with random source ports, at this rate, for the whole run.
const SYN_FLOOD_PPS: u64 = 50_000;
const UNDER_SYN_FLOOD: &str = "new connection per request, concurrency 32, under a 50k/s SYN flood";
const SMALL_UDP: &str = "small packets: 64-byte UDP, one client thread sending as fast as it can";

/// snat at c=1 with a new connection per request, twice in a row: ports
/// used in the first run rest (TIME_WAIT on the servers) during the second.
const BACK_TO_BACK_SECONDS: u32 = 10;

#[derive(Default, Serialize)]
struct Results {
    repetitions: usize,
    seconds: u32,
    /// workload -> setup -> one result per repetition
    http: BTreeMap<String, BTreeMap<String, Vec<HttpRun>>>,
    /// workload -> setup -> Gbit/s per repetition
    bulk_gbps: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    /// setup -> one 64-byte UDP flood per repetition
    small_udp: BTreeMap<String, Vec<flood::FloodRun>>,
    /// snat, c=1, new connection per request: two runs back to back.
    snat_back_to_back: Option<(HttpRun, HttpRun)>,
    /// setup -> per repetition of the SYN flood run: the packets each lab
    /// link dropped during it (Lab::link_drops' names).
    flood_drops: BTreeMap<String, Vec<BTreeMap<String, u64>>>,
}

pub fn bench(args: BenchArgs, binary: &str) -> Result<()> {
    println!(
        "== pnlb-lab bench: {} repetitions of {} s per figure ==",
        args.repetitions, args.seconds
    );
    println!("building the lab (client, router, LB, 3 nginx + iperf3 servers in namespaces)");
    let lab = Lab::up(&LabSpec {
        prefix: Some(format!("pnlbbench{}", std::process::id())),
        ..LabSpec::default()
    })?;
    if args.daemon_cpu {
        println!("the daemon's own CPU by live flows (nat, UDP; 60 s windows):");
        let measured = daemon_cpu::measure(&lab, binary)?;
        println!("\n| live flows | daemon CPU, ms per second |\n|---|---|");
        for m in &measured {
            println!("| {} | {:.1} |", m.flows, m.cpu_ms_per_s);
        }
        return Ok(());
    }
    let mut iperf_servers = Vec::new();
    for server in &lab.servers {
        let port = IPERF_PORT.to_string();
        iperf_servers.push(LabProcess::spawn(
            &server.ns,
            "iperf3",
            "iperf3",
            &["-s", "-p", &port],
        )?);
        pnlb_lab::wait_for_port(&server.ns, std::net::IpAddr::V4(server.ipv4), IPERF_PORT)?;
    }

    // Ctrl-C stops between measurements; the lab is then removed on the way out.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let interrupted = || stop.load(std::sync::atomic::Ordering::Relaxed);
    let mut results = Results {
        repetitions: args.repetitions,
        seconds: args.seconds,
        ..Results::default()
    };
    let wanted = |workload: &str| {
        args.workload.is_empty() || args.workload.iter().any(|w| workload.contains(w.as_str()))
    };
    let chosen = SETUPS.iter().copied().filter(|s| {
        args.only.is_empty()
            || s.name() == BASELINE
            || args.only.iter().any(|o| s.name().starts_with(o.as_str()))
    });
    let setups: Vec<Setup> = chosen.collect();
    // Two rounds over the setups: the calm workloads, then the floods. A
    // flood leaves work behind (servers retransmitting SYN-ACKs to spoofed
    // ports for a minute, tables full of flood entries) that would weigh
    // on whatever is measured next, latency at c=1 most of all.
    let runner = Runner {
        lab: &lab,
        binary,
        args: &args,
        wanted: &wanted,
        interrupted: &interrupted,
        starts: Default::default(),
    };
    let calm_rounds = if args.interleave { args.repetitions } else { 1 };
    let calm_repetitions = if args.interleave { 1 } else { args.repetitions };
    for round in 0..calm_rounds {
        for (index, &setup) in setups.iter().enumerate() {
            let last = round + 1 == calm_rounds;
            runner.measure(&mut results, setup, index, false, calm_repetitions, last)?;
        }
    }
    for (index, &setup) in setups.iter().enumerate() {
        runner.measure(&mut results, setup, index, true, args.repetitions, true)?;
    }
    drop(iperf_servers);

    print!("{}", render(&results));
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("\nmachine-readable results: {}", args.json.display());
    Ok(())
}

/// What every measurement of a run shares.
struct Runner<'a> {
    lab: &'a Lab,
    binary: &'a str,
    args: &'a BenchArgs,
    wanted: &'a dyn Fn(&str) -> bool,
    interrupted: &'a dyn Fn() -> bool,
    /// Setups started so far.
    starts: std::cell::Cell<usize>,
}

impl Runner<'_> {
    /// Starts `setup` and measures `repetitions` repetitions of its calm
    /// workloads (or, with `floods`, of the floods), then stops it. snat's
    /// back-to-back runs come with its `last` calm measurement.
    fn measure(
        &self,
        results: &mut Results,
        setup: Setup,
        index: usize,
        floods: bool,
        repetitions: usize,
        last: bool,
    ) -> Result<()> {
        let (lab, args, wanted) = (self.lab, self.args, self.wanted);
        let measures_here = if floods {
            wanted(UNDER_SYN_FLOOD) || (setup.small_udp_program().is_some() && wanted(SMALL_UDP))
        } else {
            HTTP.iter().any(|(name, _, _)| wanted(name))
                || IPERF.iter().any(|(name, _)| wanted(name))
                || (setup == Setup::Pnlb("snat") && wanted("back to back"))
        };
        if !measures_here {
            return Ok(());
        }
        if (self.interrupted)() {
            anyhow::bail!("interrupted; the lab is removed");
        }
        use_fresh_client_address(lab, index + usize::from(floods) * SETUPS.len())?;
        println!(
            "measuring {}{}",
            setup.name(),
            if floods { " under floods" } else { "" }
        );
        let running = setup
            .start(lab, self.binary, self.starts.replace(self.starts.get() + 1))
            .with_context(|| format!("starting {}", setup.name()))?;
        let paused = args.pause_daemon && !floods && matches!(setup, Setup::Pnlb(_));
        if paused {
            println!("  (its daemon stopped while measured)");
            running.pause(true);
        }
        let target = setup.target(lab);
        let timed = running.run_times_map();
        if let Some(id) = timed {
            println!("  (its program's run time per packet read from map {id})");
        }
        for _ in 0..repetitions {
            if (self.interrupted)() {
                anyhow::bail!("interrupted; the lab is removed");
            }
            if floods {
                if wanted(UNDER_SYN_FLOOD) {
                    let before = lab.link_drops()?;
                    let softnet_before = flood::softnet_drops_and_squeezes();
                    let run = under_syn_flood(lab, target, args.seconds)?;
                    let softnet = flood::softnet_drops_and_squeezes();
                    let after = lab.link_drops()?;
                    record(&mut results.http, UNDER_SYN_FLOOD, &setup.name(), run);
                    let softnet = [
                        (BACKLOG_DROPS, softnet.0.saturating_sub(softnet_before.0)),
                        (SQUEEZES, softnet.1.saturating_sub(softnet_before.1)),
                    ];
                    let dropped = after
                        .into_iter()
                        .map(|(link, n)| {
                            let then = before.get(&link).copied().unwrap_or(0);
                            (link, n.saturating_sub(then))
                        })
                        .chain(softnet.map(|(name, n)| (name.to_string(), n)))
                        .collect();
                    results
                        .flood_drops
                        .entry(setup.name())
                        .or_default()
                        .push(dropped);
                }
                if let Some(program) = setup.small_udp_program().filter(|_| wanted(SMALL_UDP)) {
                    let run = flood::flood(lab, target, args.seconds, program)?;
                    results.small_udp.entry(setup.name()).or_default().push(run);
                }
                continue;
            }
            for (name, connections, close) in HTTP {
                if wanted(name) {
                    let run = wrk(lab, target, connections, close, args.seconds, timed)?;
                    record(&mut results.http, name, &setup.name(), run);
                }
            }
            for (name, streams) in IPERF {
                if wanted(name) {
                    let gbps = iperf3(lab, target, streams, args.seconds)?;
                    record(&mut results.bulk_gbps, name, &setup.name(), gbps);
                }
            }
        }
        if !floods && last && setup == Setup::Pnlb("snat") && wanted("back to back") {
            let first = wrk(lab, target, 1, true, BACK_TO_BACK_SECONDS, None)?;
            let second = wrk(lab, target, 1, true, BACK_TO_BACK_SECONDS, None)?;
            results.snat_back_to_back = Some((first, second));
        }
        running.pause(false);
        Ok(())
    }
}

/// Adds one repetition's figure under (workload, setup).
fn record<T>(
    table: &mut BTreeMap<String, BTreeMap<String, Vec<T>>>,
    workload: &str,
    setup: &str,
    value: T,
) {
    table
        .entry(workload.into())
        .or_default()
        .entry(setup.into())
        .or_default()
        .push(value);
}

/// Each setup gets its own client source address: servers keep earlier
/// setups' connections in TIME_WAIT, and a 4-tuple reused on another path
/// (another TCP timestamp offset) is refused until TCP retries, which would
/// make the later setups' new-connection figures measure the lab. A
/// setup measured again (the next repetition) takes its own again.
fn use_fresh_client_address(lab: &Lab, index: usize) -> Result<()> {
    let address = format!("10.77.0.{}", 10 + index);
    pnlb_lab::netns::ip(
        &lab.client,
        &["addr", "replace", &format!("{address}/24"), "dev", "eth0"],
    )?;
    pnlb_lab::netns::ip(
        &lab.client,
        &[
            "route",
            "replace",
            "default",
            "via",
            "10.77.0.1",
            "src",
            &address,
        ],
    )?;
    Ok(())
}

fn wrk(
    lab: &Lab,
    target: std::net::IpAddr,
    connections: u32,
    close: bool,
    seconds: u32,
    run_times: Option<u32>,
) -> Result<HttpRun> {
    let url = format!("http://{target}/");
    let (threads, connections, duration) = (
        connections.min(2).to_string(),
        connections.to_string(),
        format!("{seconds}s"),
    );
    let mut args = vec![
        "-t",
        &threads,
        "-c",
        &connections,
        "-d",
        &duration,
        "--latency",
    ];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let timed = || run_times.and_then(pnlb_dataplane::run_times::RunTimes::read);
    let times_before = timed();
    let busy_before = flood::busy_ns();
    let output = lab.client_command("wrk", &args)?;
    let busy = flood::busy_ns().saturating_sub(busy_before);
    let program = timed()
        .zip(times_before)
        .map(|(after, before)| ProgramRunTimes::of(&after.since(&before)));
    let mut run = parse_wrk(&output).with_context(|| format!("unreadable wrk output: {output}"))?;
    run.program = program;
    let requests = run.requests_per_sec * f64::from(seconds);
    if requests > 0.0 {
        run.machine_us_per_request = busy as f64 / 1000.0 / requests;
    }
    Ok(run)
}

/// wrk, new connection per request at c=32, while spoofed SYNs flood the
/// target's port 80.
fn under_syn_flood(lab: &Lab, target: std::net::IpAddr, seconds: u32) -> Result<HttpRun> {
    let std::net::IpAddr::V4(target4) = target else {
        anyhow::bail!("the SYN flood is IPv4 only");
    };
    let flood = pnlb_lab::spoof::start(
        &lab.client,
        pnlb_lab::spoof::Flood {
            kind: pnlb_lab::spoof::Kind::Syn,
            source: pnlb_lab::CLIENT4,
            target: std::net::SocketAddrV4::new(target4, 80),
            count: SYN_FLOOD_PPS * u64::from(seconds + 5),
            limit: Duration::from_secs(u64::from(seconds) + 5),
            rate: SYN_FLOOD_PPS,
            seed: 0x5f1d,
            repeat_each: 0,
        },
    )?;
    let run = wrk(lab, target, 32, true, seconds, None);
    flood.finish()?;
    run
}

fn iperf3(lab: &Lab, target: std::net::IpAddr, streams: u32, seconds: u32) -> Result<f64> {
    let (target, port, streams, time) = (
        target.to_string(),
        IPERF_PORT.to_string(),
        streams.to_string(),
        seconds.to_string(),
    );
    let output = lab.client_command(
        "iperf3",
        &[
            "-c", &target, "-p", &port, "-P", &streams, "-t", &time, "-J",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(200)); // let the server take the next client
    parse_iperf3(&output).with_context(|| "unreadable iperf3 output".to_string())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// (median, min, max)
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(&mut values), min, max)
}

const BASELINE: &str = "kernel nftables";

/// The program's own run time per packet, for the setups whose pnlb was
/// built with `run-times` (the worst of the repetitions).
fn render_program_run_times(
    out: &mut String,
    order: &[String],
    setups: &BTreeMap<String, Vec<HttpRun>>,
) {
    let timed: Vec<(&String, Vec<ProgramRunTimes>)> = order
        .iter()
        .filter_map(|name| {
            let runs: Vec<ProgramRunTimes> =
                setups.get(name)?.iter().filter_map(|r| r.program).collect();
            (!runs.is_empty()).then_some((name, runs))
        })
        .collect();
    if timed.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  the XDP program's own run time per packet (ns, at most; worst repetition):\n  {:<15} {:>10} {:>7} {:>7} {:>7} {:>8} {:>9}",
        "setup", "packets", "p50", "p99", "p99.9", "max", ">= 8 us"
    );
    for (name, runs) in timed {
        let worst = |f: fn(&ProgramRunTimes) -> u64| runs.iter().map(f).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "  {:<15} {:>10} {:>7} {:>7} {:>7} {:>8} {:>9}",
            name,
            worst(|r| r.packets),
            worst(|r| r.p50_ns),
            worst(|r| r.p99_ns),
            worst(|r| r.p999_ns),
            worst(|r| r.max_ns),
            worst(|r| r.from_8us),
        );
    }
}

/// The machine-wide softnet figures kept beside the links' drops.
const BACKLOG_DROPS: &str = "backlog drops";
const SQUEEZES: &str = "softirq squeezes";

/// Where packets were lost during the SYN flood runs: per setup, the
/// median over repetitions of every link's drops, the largest first, then
/// the machine's backlog drops and softirq squeezes.
fn render_flood_drops(
    out: &mut String,
    order: &[String],
    drops: &BTreeMap<String, Vec<BTreeMap<String, u64>>>,
) {
    const SHOWN: usize = 4;
    if drops.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n== packets dropped on the lab's links during the SYN flood run (medians; the {SHOWN} largest) =="
    );
    for name in order.iter().filter(|n| drops.contains_key(*n)) {
        let runs = &drops[name];
        let links: std::collections::BTreeSet<&String> =
            runs.iter().flat_map(|run| run.keys()).collect();
        let median = |link: &str| {
            let values = runs
                .iter()
                .map(|run| run.get(link).copied().unwrap_or(0) as f64)
                .collect();
            spread(values).0 as u64
        };
        let mut medians: Vec<(u64, &String)> = links
            .into_iter()
            .filter(|link| ![BACKLOG_DROPS, SQUEEZES].contains(&link.as_str()))
            .map(|link| (median(link), link))
            .filter(|(n, _)| *n > 0)
            .collect();
        medians.sort_by(|a, b| b.cmp(a));
        let total: u64 = medians.iter().map(|(n, _)| n).sum();
        let largest: Vec<String> = medians
            .iter()
            .take(SHOWN)
            .map(|(n, link)| format!("{link} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "{name:<17} {total:>9} in all: {}; machine: {BACKLOG_DROPS} {}, {SQUEEZES} {}",
            largest.join(", "),
            median(BACKLOG_DROPS),
            median(SQUEEZES)
        );
    }
    let _ = writeln!(
        out,
        "a veth counts on its sending side ('tx') what its peer could not take: the receiving CPU's \
         backlog full (counted by the receiver's 'rx' too, and in the machine's backlog drops), or, \
         with an XDP program on the peer, its 256-packet ring (switch/lb tx: the LB's)."
    );
}

fn render(results: &Results) -> String {
    let mut out = String::new();
    let order: Vec<String> = SETUPS.iter().map(|s| s.name()).collect();
    for (workload, setups) in &results.http {
        let _ = writeln!(out, "\n== HTTP, {workload} ==");
        let _ = writeln!(
            out,
            "{:<17} {:>24} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>7}",
            "setup",
            "req/s median (min-max)",
            "x kernel",
            "mean us",
            "stdev us",
            "p50 us",
            "p99 us",
            "mean xk",
            "CPU us/req",
            "errors"
        );
        let stat = |name: &str, f: &dyn Fn(&HttpRun) -> f64| {
            setups
                .get(name)
                .map(|runs| spread(runs.iter().map(f).collect()).0)
        };
        let base_rps = stat(BASELINE, &|r| r.requests_per_sec);
        let base_mean = stat(BASELINE, &|r| r.latency_mean_us);
        for name in order.iter().filter(|n| setups.contains_key(*n)) {
            let runs = &setups[name];
            let (rps, lo, hi) = spread(runs.iter().map(|r| r.requests_per_sec).collect());
            let mean = stat(name, &|r| r.latency_mean_us).unwrap_or(0.0);
            let _ = writeln!(
                out,
                "{:<17} {:>24} {:>8} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>8} {:>9.1} {:>7}",
                name,
                format!("{rps:.0} ({lo:.0}-{hi:.0})"),
                ratio(rps, base_rps),
                mean,
                stat(name, &|r| r.latency_stdev_us).unwrap_or(0.0),
                stat(name, &|r| r.latency_p50_us).unwrap_or(0.0),
                stat(name, &|r| r.latency_p99_us).unwrap_or(0.0),
                ratio(mean, base_mean),
                stat(name, &|r| r.machine_us_per_request).unwrap_or(0.0),
                runs.iter().map(|r| r.errors).sum::<u64>(),
            );
        }
        render_program_run_times(&mut out, &order, setups);
    }
    for (workload, setups) in &results.bulk_gbps {
        let _ = writeln!(out, "\n== {workload} ==");
        let _ = writeln!(
            out,
            "{:<17} {:>24} {:>8}",
            "setup", "Gbit/s median (min-max)", "x kernel"
        );
        let base = setups.get(BASELINE).map(|v| spread(v.clone()).0);
        for name in order.iter().filter(|n| setups.contains_key(*n)) {
            let (gbps, lo, hi) = spread(setups[name].clone());
            let _ = writeln!(
                out,
                "{:<17} {:>24} {:>8}",
                name,
                format!("{gbps:.2} ({lo:.2}-{hi:.2})"),
                ratio(gbps, base)
            );
        }
    }
    if !results.small_udp.is_empty() {
        let _ = writeln!(out, "\n== {SMALL_UDP} ==");
        let _ = writeln!(
            out,
            "{:<17} {:>12} {:>28} {:>8} {:>14} {:>11}",
            "setup",
            "offered pps",
            "delivered pps median (min-max)",
            "x kernel",
            "machine ns/pkt",
            "XDP ns/pkt"
        );
        let base = results
            .small_udp
            .get(BASELINE)
            .map(|runs| spread(runs.iter().map(|r| r.delivered_pps).collect()).0);
        for name in order.iter().filter(|n| results.small_udp.contains_key(*n)) {
            let runs = &results.small_udp[name];
            let (pps, lo, hi) = spread(runs.iter().map(|r| r.delivered_pps).collect());
            let offered = spread(runs.iter().map(|r| r.offered_pps).collect()).0;
            let machine = spread(runs.iter().map(|r| r.machine_ns_per_packet).collect()).0;
            let xdp: Vec<f64> = runs.iter().filter_map(|r| r.xdp_ns_per_packet).collect();
            let xdp = if xdp.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", spread(xdp).0)
            };
            let _ = writeln!(
                out,
                "{:<17} {:>12.0} {:>28} {:>8} {:>14.0} {:>11}",
                name,
                offered,
                format!("{pps:.0} ({lo:.0}-{hi:.0})"),
                ratio(pps, base),
                machine,
                xdp
            );
        }
        let _ = writeln!(
            out,
            "machine ns/pkt: busy CPU time of the whole VM (client, LB, servers) per delivered packet; \
             XDP ns/pkt: the data-plane program's own run time per packet (kernel BPF accounting). \
             haproxy is left out: it has no UDP in mode tcp."
        );
    }
    render_flood_drops(&mut out, &order, &results.flood_drops);
    if let Some((first, second)) = &results.snat_back_to_back {
        let _ = writeln!(
            out,
            "\n== pnlb snat, new connection per request at concurrency 1, two {BACK_TO_BACK_SECONDS} s runs back to back ==\n\
             first {:.0} req/s, second {:.0} req/s ({:+.1}%); errors {} and {}",
            first.requests_per_sec,
            second.requests_per_sec,
            (second.requests_per_sec / first.requests_per_sec.max(1e-9) - 1.0) * 100.0,
            first.errors,
            second.errors
        );
    }
    let _ = writeln!(
        out,
        "\nx kernel = this setup's median / the kernel baseline's (nftables NAT). For req/s and Gbit/s higher is better; \
         'mean xk' is mean latency / the kernel's: lower is better."
    );
    out
}

fn ratio(value: f64, baseline: Option<f64>) -> String {
    match baseline {
        Some(base) if base > 0.0 => format!("{:.2}", value / base),
        _ => "-".into(),
    }
}
