//! The load balancer host as an operator sets it up: `pnlb doctor --lb`
//! finds each prerequisite taken away and prints the fix that restores it,
//! and the daemon forwards with only the capabilities the packaged systemd
//! unit grants it.

mod support;

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use pnlb_lab::{in_netns, Lab, LabProcess, LabSpec, LB_INTERFACE, VIP4, VIP6};
use support::*;

/// nat for IPv4 and snat for IPv6 on the LB's interface (plus `extra`
/// interfaces): both need the kernel's forwarding.
fn translating_config(lab: &Lab, extra: &[&str], xdp_mode: &str) -> std::path::PathBuf {
    let interfaces: Vec<String> = std::iter::once(LB_INTERFACE)
        .chain(extra.iter().copied())
        .map(|i| format!("\"{i}\""))
        .collect();
    write_config(
        lab,
        &format!(
            "[daemon]\ninterfaces = [{}]\nxdp_mode = \"{xdp_mode}\"\n\
             [[service]]\nname = \"web\"\nvip = \"{VIP4}\"\nport = 80\nmethod = \"nat\"\nscheduler = \"rr\"\n\
             [[service.backend]]\naddress = \"10.77.1.11\"\n\
             [[service]]\nname = \"web6\"\nvip = \"{VIP6}\"\nport = 80\nmethod = \"snat\"\nscheduler = \"rr\"\n\
             snat_addresses = [\"fd77:1::2\"]\n[[service.backend]]\naddress = \"fd77:1::11\"\n",
            interfaces.join(", ")
        ),
    )
}

/// Runs `prefix... pnlb doctor --lb --config CONFIG` in the LB namespace,
/// after `setup` (a shell line, run in the same mount namespace):
/// (exit code, report).
fn doctor(lab: &Lab, config: &std::path::Path, setup: &str, prefix: &str) -> (i32, String) {
    let script = format!(
        "{setup}\nexec {prefix} {PNLB} doctor --lb --config {}",
        config.display()
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.lb, "sh", "-c", &script])
        .output()
        .expect("run pnlb doctor --lb");
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("{report}");
    (out.status.code().unwrap_or(-1), report)
}

fn on_lb(lab: &Lab, script: &str) {
    let status = Command::new("ip")
        .args(["netns", "exec", &lab.lb, "sh", "-c", script])
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

/// `ip netns exec` gives each command a mount namespace of its own without
/// bpffs; mounting it there is what an LB host's boot does.
const MOUNT_BPFFS: &str = "mount -t bpf bpf /sys/fs/bpf";

#[test]
fn doctor_lb_finds_each_prerequisite_left_out_and_its_fix_works() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec {
        servers: 1,
        nginx: false,
        ..LabSpec::default()
    })
    .expect("lab");
    let config = translating_config(&lab, &[], "native");

    // The lab's LB is set up for nat and snat; only bpffs is missing.
    let (code, report) = doctor(&lab, &config, "", "");
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("ok    eth0 (veth): native XDP (basic, redirect"),
        "{report}"
    );
    assert!(report.contains("WARN  bpffs is not mounted"), "{report}");
    assert_eq!(fix_for(&report, "WARN  bpffs"), MOUNT_BPFFS);
    let (code, report) = doctor(&lab, &config, MOUNT_BPFFS, "");
    assert_eq!(
        (code, report.contains("ready: 0 warning(s)")),
        (0, true),
        "{report}"
    );

    // Each prerequisite taken away is found, and the printed fix restores it.
    for (break_it, problem) in [
        (
            "sysctl -qw net.ipv4.conf.all.forwarding=0",
            "FAIL  ipv4 forwarding is off on eth0",
        ),
        (
            "sysctl -qw net.ipv6.conf.all.forwarding=0",
            "FAIL  ipv6 forwarding is off on eth0",
        ),
        (
            "ethtool -K eth0 tx on",
            "WARN  eth0: checksum offload is on",
        ),
        (
            "sysctl -qw net.ipv4.conf.all.rp_filter=1",
            "WARN  rp_filter is strict (1) on eth0",
        ),
    ] {
        on_lb(&lab, break_it);
        let (code, report) = doctor(&lab, &config, MOUNT_BPFFS, "");
        assert!(report.contains(problem), "{break_it}: {report}");
        assert_eq!(
            code,
            i32::from(problem.starts_with("FAIL")),
            "{break_it}: {report}"
        );
        on_lb(&lab, &fix_for(&report, problem));
        let (code, report) = doctor(&lab, &config, MOUNT_BPFFS, "");
        assert_eq!(
            (code, report.contains("ready: 0 warning(s)")),
            (0, true),
            "after the fix for {problem:?}: {report}"
        );
    }

    // Another XDP program on the interface: pnlb run would refuse to start.
    let decap = LabProcess::spawn(
        &lab.lb,
        "pnlb decap on the LB",
        PNLB,
        &["decap", "--interface", LB_INTERFACE],
    )
    .and_then(|mut p| {
        p.wait_for_line("decapsulating", Duration::from_secs(30))
            .map(|_| p)
    })
    .expect("pnlb decap");
    let (code, report) = doctor(&lab, &config, MOUNT_BPFFS, "");
    let problem = "FAIL  eth0: another XDP program (pnlb_decap) is attached";
    assert_eq!((code, report.contains(problem)), (1, true), "{report}");
    on_lb(&lab, &fix_for(&report, problem));
    let (code, report) = doctor(&lab, &config, MOUNT_BPFFS, "");
    assert_eq!(code, 0, "{report}");
    decap.stop(Duration::from_secs(10));

    // A device without native XDP (a bridge), one that does not exist, and
    // a veth whose MTU is too large for single-buffer XDP.
    on_lb(
        &lab,
        "ip link add pnlbbr0 type bridge && ip link set pnlbbr0 up && \
         ip link add pnlbv0 mtu 9000 type veth peer name pnlbv1 && ip link set pnlbv0 up && \
         ethtool -K pnlbv0 rx off tx off >/dev/null",
    );
    let two_more = translating_config(&lab, &["pnlbbr0", "pnlbv0", "nope0"], "native");
    let (code, report) = doctor(&lab, &two_more, MOUNT_BPFFS, "");
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("FAIL  pnlbbr0: its driver (bridge) has no native XDP"),
        "{report}"
    );
    assert!(
        report.contains("FAIL  interface nope0 does not exist here"),
        "{report}"
    );
    let problem = "WARN  pnlbv0: MTU 9000 is above 3498";
    assert!(report.contains(problem), "{report}");
    on_lb(&lab, &fix_for(&report, problem));
    // The fix for the bridge is the config's: generic XDP works anywhere.
    on_lb(&lab, "ip link del pnlbv0");
    let generic = translating_config(&lab, &["pnlbbr0"], "generic");
    let (code, report) = doctor(&lab, &generic, MOUNT_BPFFS, "");
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("ok    pnlbbr0 (bridge): generic XDP, as configured"),
        "{report}"
    );

    // Without the capabilities to load and attach the program.
    let (code, report) = doctor(
        &lab,
        &config,
        MOUNT_BPFFS,
        "setpriv --bounding-set=-all,+net_admin,+sys_admin --",
    );
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("FAIL  missing privileges: CAP_BPF, CAP_PERFMON"),
        "{report}"
    );
}

#[test]
fn the_daemon_forwards_with_only_the_capabilities_of_the_systemd_unit() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    // snat over IPv4 with HTTP health checks and the API; dr over IPv6.
    let config = write_config(
        &lab,
        &format!(
            "[daemon]\ninterfaces = [\"{LB_INTERFACE}\"]\napi = \"127.0.0.1:9180\"\n\
             [[service]]\nname = \"web\"\nvip = \"{VIP4}\"\nport = 80\nmethod = \"snat\"\nscheduler = \"rr\"\n\
             snat_addresses = [\"10.77.1.2\"]\n\
             [[service.backend]]\naddress = \"10.77.1.11\"\n[[service.backend]]\naddress = \"10.77.1.12\"\n\
             [service.health]\nkind = \"http\"\ninterval = \"300ms\"\nrise = 1\n\
             [[service]]\nname = \"web6\"\nvip = \"{VIP6}\"\nport = 80\nmethod = \"dr\"\nscheduler = \"rr\"\n\
             [[service.backend]]\naddress = \"fd77:1::11\"\n[[service.backend]]\naddress = \"fd77:1::12\"\n"
        ),
    );
    let config_arg = config.display().to_string();
    let capabilities = unit_capabilities();
    println!("the unit's capabilities: {}", capabilities.join(" "));
    let start = |caps: &[String]| {
        LabProcess::spawn(
            &lab.lb,
            "pnlb run (unit capabilities)",
            "setpriv",
            &[
                &bounding_set(caps),
                "--",
                PNLB,
                "run",
                "--config",
                &config_arg,
            ],
        )
        .expect("spawn pnlb run under setpriv")
    };

    let mut daemon = start(&capabilities);
    daemon
        .wait_for_line("forwarding", Duration::from_secs(30))
        .expect("pnlb run starts with the unit's capabilities");
    wait_for_log(&daemon, "API on", Duration::from_secs(5));
    let answers = in_netns(&lab.client, || {
        let mut answers = Vec::new();
        for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
            for _ in 0..4 {
                answers.push(request(vip));
            }
        }
        answers
    })
    .expect("client namespace");
    println!("answers through snat (IPv4) and dr (IPv6): {answers:?}");
    if !answers.iter().all(Result::is_ok) {
        let (_, out) = daemon.stop(Duration::from_secs(5));
        panic!("{answers:?}: {out:#?}");
    }
    let (status, body) = api(&lab, "GET", "/api/v1/services", None, None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"up\""), "health checks ran: {body}");
    let (status, _) = daemon.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "clean stop");

    // Each capability that loads or attaches the program is needed: without
    // it the daemon stops at once with a reason, and attaches nothing.
    for needed in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"] {
        let fewer: Vec<String> = capabilities
            .iter()
            .filter(|c| *c != needed)
            .cloned()
            .collect();
        let daemon = start(&fewer);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline
            && !daemon.output().iter().any(|l| l.contains("error"))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let (status, output) = daemon.stop(Duration::from_secs(5));
        println!("without {needed}: {:?}", output.last());
        assert!(
            status.is_some_and(|s| !s.success()),
            "without {needed}: {output:?}"
        );
        assert!(
            !xdp_attached(&lab),
            "without {needed} nothing stays attached"
        );
    }
}
