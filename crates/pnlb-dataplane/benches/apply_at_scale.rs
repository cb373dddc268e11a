//! The control plane at scale: a config of thousands of services with ten
//! backends each, parsed from its text and applied to a freshly loaded data
//! plane; then the same config again (nothing to do), one backend's weight
//! changed (the whole config compared, then the service named as the
//! daemon's health verdicts and drains name it), and one service added. Prints each time; a benchmark, not a
//! test (nothing asserts on speed). Needs root (it loads the program).
//!
//! Run: cargo bench -p pnlb-dataplane --bench apply_at_scale [-- SERVICES...]
//! (default 1000 and 10000).

mod support;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use pnlb_core::config::Config;
use pnlb_dataplane::{Dataplane, Limits, LoadOptions, Programmer};
use support::Static;

const BACKENDS_PER_SERVICE: usize = 10;
/// Distinct servers the backends are drawn from (services share them).
const SERVERS: usize = 1000;
/// Maglev table of each service: a prime over 100x its backends.
const TABLE_SIZE: u32 = 1031;

fn server(k: usize) -> IpAddr {
    IpAddr::from([10, 201, (k / 250) as u8, (k % 250 + 1) as u8])
}

/// Service `i`: its own VIP, ten of the servers, weight 1 (`first_weight`
/// for its first backend); dr on port 80 for even `i`, nat to port
/// 8000 + i % 1000 for odd (whose backends' replies the data plane must
/// recognise).
fn service_text(i: usize, first_weight: u32) -> String {
    let vip = IpAddr::from([10, 200, (i / 250) as u8, (i % 250 + 1) as u8]);
    let (method, port) = if i.is_multiple_of(2) {
        ("dr", 80)
    } else {
        ("nat", 8000 + i % 1000)
    };
    let mut text = format!(
        "[[service]]\nname = \"svc-{i}\"\nvip = \"{vip}\"\nport = 80\nmethod = \"{method}\"\nscheduler = \"maglev\"\ntable_size = {TABLE_SIZE}\n"
    );
    for j in 0..BACKENDS_PER_SERVICE {
        let weight = if j == 0 { first_weight } else { 1 };
        text += &format!(
            "[[service.backend]]\naddress = \"{}\"\nport = {port}\nweight = {weight}\n",
            server((i * BACKENDS_PER_SERVICE + j) % SERVERS),
        );
    }
    text
}

/// `services` services (the one in the middle with `changed_weight` on its
/// first backend), then `extra` more; room for two more than that.
fn config_text(services: usize, changed_weight: u32, extra: usize) -> String {
    let mut text = format!(
        "[daemon]\ninterfaces = [\"eth0\"]\nmax_services = {}\nmax_backends = {}\n",
        services + 4,
        (services + 4) * BACKENDS_PER_SERVICE
    );
    for i in 0..services {
        text += &service_text(i, if i == services / 2 { changed_weight } else { 1 });
    }
    for i in services..services + extra {
        text += &service_text(i, 1);
    }
    text
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    let took = start.elapsed();
    println!("  {what:<44} {:>10.1} ms", took.as_secs_f64() * 1000.0);
    (value, took)
}

fn parse(text: &str) -> Config {
    pnlb_core::config::parse(Path::new("scale.toml"), text).expect("the generated config is valid")
}

fn run(services: usize) {
    println!(
        "{services} services x {BACKENDS_PER_SERVICE} backends (Maglev tables of {TABLE_SIZE}):"
    );
    let text = config_text(services, 1, 0);
    println!("  config file: {:.1} MB", text.len() as f64 / 1e6);
    let (config, parse_took) = timed("parse and validate", || parse(&text));
    let mut options = LoadOptions::for_tests(1 << 16);
    options.limits = Limits::of(&config.daemon);
    let (dataplane, _) = timed("load the program (maps sized for them)", || {
        Dataplane::load_with(options).expect("load")
    });
    let mut programmer = Programmer::new();
    let (report, apply_took) = timed("apply all (a daemon's start)", || {
        programmer
            .apply(&dataplane, &config, &mut Static)
            .expect("apply")
    });
    assert_eq!(report.changes.len(), services, "every service added");
    println!(
        "  {:<44} {:>10.1} ms",
        "=> from the file to the data plane",
        (parse_took + apply_took).as_secs_f64() * 1000.0
    );
    timed("apply the same config again (no change)", || {
        programmer
            .apply(&dataplane, &config, &mut Static)
            .expect("apply")
    });
    let changed = parse(&config_text(services, 3, 0));
    let changed_service = format!("svc-{}", services / 2);
    let version = programmer.table_version(&changed_service);
    timed("apply one backend's weight changed", || {
        programmer
            .apply(&dataplane, &changed, &mut Static)
            .expect("apply")
    });
    assert_ne!(
        programmer.table_version(&changed_service),
        version,
        "its table was swapped"
    );
    // As the daemon applies a health verdict or a drain: the service named.
    let again = parse(&config_text(services, 7, 0));
    let version = programmer.table_version(&changed_service);
    let named: HashSet<&str> = [changed_service.as_str()].into();
    timed("apply one backend's weight changed, named", || {
        programmer
            .apply_services(&dataplane, &again, &named, &mut Static)
            .expect("apply")
    });
    assert_ne!(
        programmer.table_version(&changed_service),
        version,
        "its table was written"
    );
    let added = parse(&config_text(services, 7, 1));
    let (report, _) = timed("apply one service added", || {
        programmer
            .apply(&dataplane, &added, &mut Static)
            .expect("apply")
    });
    assert_eq!(report.changes.len(), 1, "{:?}", report.changes);
    // As API edits apply: the service removed by name and added back named,
    // at once and then as a later call would (the removal's grace period
    // for the elements it freed passes in the background meanwhile); then
    // a service new to the data plane, in a slot never used.
    let extra = format!("svc-{services}");
    let named: HashSet<&str> = [extra.as_str()].into();
    for (round, pause) in [("at once", 0), ("100 ms later", 100)] {
        let (report, _) = timed("remove one service, named", || {
            programmer
                .remove(&dataplane, std::slice::from_ref(&extra))
                .expect("remove")
        });
        assert_eq!(report.changes.len(), 1, "{:?}", report.changes);
        std::thread::sleep(Duration::from_millis(pause));
        let (report, _) = timed(&format!("add it back, named, {round}"), || {
            programmer
                .apply_services(&dataplane, &added, &named, &mut Static)
                .expect("apply")
        });
        assert_eq!(report.changes.len(), 1, "{:?}", report.changes);
    }
    let fresh = parse(&config_text(services, 7, 2));
    let new_name = format!("svc-{}", services + 1);
    let named: HashSet<&str> = [new_name.as_str()].into();
    let (report, _) = timed("add a new service, named", || {
        programmer
            .apply_services(&dataplane, &fresh, &named, &mut Static)
            .expect("apply")
    });
    assert_eq!(report.changes.len(), 1, "{:?}", report.changes);
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("apply_at_scale: needs root (it loads the XDP program); skipped");
        return;
    }
    // `cargo bench` passes --bench; sizes are the numeric arguments.
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 10_000]
    } else {
        sizes
    };
    for services in sizes {
        run(services);
    }
}
