//! Per-packet cost of the XDP program, timed by the kernel in
//! BPF_PROG_TEST_RUN (mean over many single runs of one packet of an
//! established flow). A benchmark, not a test: it prints, it asserts
//! nothing. Needs root.
//! Run: cargo bench -p pnlb-dataplane --bench xdp_per_packet

use std::net::IpAddr;
use std::path::Path;

use libbpf_rs::ProgramInput;
use pnlb_dataplane::nexthop::{NextHop, Resolution, Resolver};
use pnlb_dataplane::{Dataplane, Programmer};

const RUNS: u32 = 200_000;

struct Static;

impl Resolver for Static {
    fn resolve(&mut self, backends: &[IpAddr]) -> Resolution {
        let hop = NextHop {
            ifindex: 1,
            mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            gateway: None,
            source: Some(IpAddr::from([10, 77, 1, 2])),
        };
        backends.iter().map(|&b| (b, Ok(hop))).collect()
    }
}

const CONFIG: &str = r#"
[daemon]
interfaces = ["eth0"]
[[service]]
name = "dr"
vip = "10.77.100.1"
port = 80
method = "dr"
[[service.backend]]
address = "10.77.1.11"
[[service.backend]]
address = "10.77.1.12"
[[service]]
name = "nat"
vip = "10.77.100.2"
port = 80
method = "nat"
[[service.backend]]
address = "10.77.1.21"
[[service]]
name = "snat"
vip = "10.77.100.3"
port = 80
method = "snat"
snat_addresses = ["10.77.1.2"]
[[service.backend]]
address = "10.77.1.31"
[[service]]
name = "wlc"
vip = "10.77.100.4"
port = 80
method = "dr"
scheduler = "wlc"
[[service.backend]]
address = "10.77.1.41"
[[service.backend]]
address = "10.77.1.42"
[[service]]
name = "tun"
vip = "10.77.100.5"
port = 80
method = "tun"
[[service.backend]]
address = "10.77.1.51"
[[service]]
name = "tun-gue"
vip = "10.77.100.6"
port = 80
method = "tun"
encap = "gue"
[[service.backend]]
address = "10.77.1.61"
"#;

fn tcp(dst: &str, syn: bool) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 2])
        .ipv4(
            [10, 77, 0, 2],
            dst.parse::<std::net::Ipv4Addr>().unwrap().octets(),
            64,
        )
        .tcp(40000, 80, 1, 64240);
    let builder = if syn { builder.syn() } else { builder.ack(1) };
    let mut out = Vec::new();
    builder.write(&mut out, &[0u8; 18]).unwrap();
    out
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("xdp_per_packet: needs root (BPF_PROG_TEST_RUN); skipped");
        return;
    }
    let dataplane = Dataplane::load(262_144).expect("load");
    let config = pnlb_core::config::parse(Path::new("bench.toml"), CONFIG).expect("config");
    Programmer::new()
        .apply(&dataplane, &config, &mut Static)
        .expect("program");
    let cases = [
        ("not a service (pass)", tcp("10.77.1.99", false)),
        ("dr, established flow", tcp("10.77.100.1", false)),
        ("nat, established flow", tcp("10.77.100.2", false)),
        ("snat, established flow", tcp("10.77.100.3", false)),
        ("dr + wlc, established flow", tcp("10.77.100.4", false)),
        ("tun ipip, established flow", tcp("10.77.100.5", false)),
        ("tun gue, established flow", tcp("10.77.100.6", false)),
    ];
    for (name, packet) in cases {
        let mut out = vec![0u8; packet.len() + 64];
        // One run per call, so every run sees the original packet (repeat
        // mode would feed a rewritten nat packet back in); the kernel times
        // each run itself. The first call creates the flow.
        let mut total = std::time::Duration::ZERO;
        let mut verdict = 0;
        for run in 0..=RUNS {
            let input = ProgramInput {
                data_in: Some(&packet),
                data_out: Some(&mut out),
                ..Default::default()
            };
            let result = dataplane.program().test_run(input).expect("test run");
            if run > 0 {
                total += result.duration;
                verdict = result.return_value;
            }
        }
        println!(
            "{name:<28} {:>6.0} ns/packet  (verdict {verdict}, mean of {RUNS} runs)",
            total.as_nanos() as f64 / f64::from(RUNS)
        );
    }
}
