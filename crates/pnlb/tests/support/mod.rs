//! Helpers shared by the lab end-to-end tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use pnlb_lab::{in_netns, Lab, ECHO_PORT, LB_INTERFACE, VIP4};

pub const PNLB: &str = env!("CARGO_BIN_EXE_pnlb");

pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI must run the lab tests as root");
    }
    eprintln!("skipping: the lab needs root (network namespaces, XDP)");
    false
}

pub fn write_config(lab: &Lab, text: &str) -> PathBuf {
    let path = lab.dir.join("pnlb.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

pub fn xdp_attached(lab: &Lab) -> bool {
    let out = std::process::Command::new("ip")
        .args(["-n", &lab.lb, "link", "show", LB_INTERFACE])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

/// `count` HTTP/1.0 requests to vip:80 from the client, one new connection
/// each; returns how many each server answered.
pub fn spread(lab: &Lab, vip: IpAddr, count: usize) -> HashMap<String, usize> {
    in_netns(&lab.client, move || {
        let mut answers: HashMap<String, usize> = HashMap::new();
        for _ in 0..count {
            let mut stream =
                TcpStream::connect_timeout(&SocketAddr::new(vip, 80), Duration::from_secs(3))
                    .expect("connect to the VIP");
            stream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut response = String::new();
            stream
                .read_to_string(&mut response)
                .expect("read the response");
            let server = response
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string();
            *answers.entry(server).or_default() += 1;
        }
        answers
    })
    .expect("client namespace")
}

/// Waits until the daemon has printed a line containing `needle`.
pub fn wait_for_log(daemon: &pnlb_lab::LabProcess, needle: &str, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(line) = daemon.output().into_iter().find(|l| l.contains(needle)) {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line with {needle:?} within {timeout:?}: {:?}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Refuses to send from the root network namespace: lab traffic must
/// never leave the lab (a helper called from the test's own thread would
/// send it out of the host's default route).
pub fn assert_in_lab_netns() {
    let mine = std::fs::read_link("/proc/thread-self/ns/net").ok();
    let root = std::fs::read_link("/proc/1/ns/net").ok();
    assert!(
        mine.is_some() && mine != root,
        "lab traffic from the root network namespace: call this inside in_netns(&lab.client, ...)"
    );
}

/// One HTTP/1.0 request to vip:80 on a new connection: the answering
/// server's name, or why it failed. Only from inside a lab namespace.
pub fn request(vip: IpAddr) -> Result<String, String> {
    assert_in_lab_netns();
    let mut stream = TcpStream::connect_timeout(&SocketAddr::new(vip, 80), Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let server = response
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    if server.is_empty() {
        return Err("empty response".into());
    }
    Ok(server)
}

pub const TOKEN: &str = "lab-token-0123456789abcdef";

/// Writes a secret as an operator should: readable by its owner only
/// (pnlb refuses a token or key file others may read).
pub fn write_secret(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A config with the API on (TCP 127.0.0.1:9180 and a unix socket, with
/// or without a token file) and two dr services, web and echo, over s1, s2.
pub fn api_config(lab: &Lab, with_token: bool) -> String {
    let token_file = lab.dir.join("api.token");
    write_secret(&token_file, &format!("{TOKEN}\n"));
    let mut text = format!(
        "[daemon]\ninterfaces = [\"{LB_INTERFACE}\"]\napi = \"127.0.0.1:9180\"\napi_socket = \"{}\"\n",
        lab.dir.join("api.sock").display()
    );
    if with_token {
        text += &format!("api_token_file = \"{}\"\n", token_file.display());
    }
    for (name, port) in [("web", 80), ("echo", ECHO_PORT)] {
        text += &format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{VIP4}\"\nport = {port}\nmethod = \"dr\"\nscheduler = \"maglev\"\n\
             [[service.backend]]\naddress = \"10.77.1.11\"\n[[service.backend]]\naddress = \"10.77.1.12\"\n"
        );
    }
    text
}

/// `pnlb run` with [`api_config`] in the LB namespace, once its API
/// listens: (config path, daemon).
pub fn start_with_api(lab: &Lab, with_token: bool) -> (PathBuf, pnlb_lab::LabProcess) {
    let path = write_config(lab, &api_config(lab, with_token));
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    wait_for_log(&daemon, "API on", Duration::from_secs(5));
    (path, daemon)
}

/// One HTTP request to the API from the LB namespace: (status, body).
pub fn api(
    lab: &Lab,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    api_from(&lab.lb, "http://127.0.0.1:9180", method, path, token, body)
}

/// One HTTP request from namespace `ns` to the API at `base` (scheme,
/// address and port): (status, body; status 0 when none came).
pub fn api_from(
    ns: &str,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut args = vec![
        "netns".to_string(),
        "exec".into(),
        ns.to_string(),
        "curl".into(),
        "-s".into(),
        "-m".into(),
        "15".into(),
        "-X".into(),
        method.into(),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    if let Some(token) = token {
        args.extend(["-H".into(), format!("Authorization: Bearer {token}")]);
    }
    if let Some(body) = body {
        args.extend([
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data-binary".into(),
            body.into(),
        ]);
    }
    args.push(format!("{base}{path}"));
    let out = std::process::Command::new("ip")
        .args(&args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The status of the node whose API listens on 127.0.0.1:9180 in `ns`
/// (null when it does not answer).
pub fn status_in(ns: &str) -> serde_json::Value {
    let (_, body) = api_from(
        ns,
        "http://127.0.0.1:9180",
        "GET",
        "/api/v1/status",
        None,
        None,
    );
    serde_json::from_str(&body).unwrap_or_default()
}

/// The `fix:` line that follows the FAIL/WARN line containing `problem`.
pub fn fix_for(report: &str, problem: &str) -> String {
    let mut lines = report.lines().skip_while(|l| !l.contains(problem));
    lines.next();
    lines
        .next()
        .and_then(|l| l.trim().strip_prefix("fix: "))
        .unwrap_or_else(|| panic!("no fix after {problem:?}: {report}"))
        .to_string()
}

/// Rewrites the config, sends SIGHUP and waits until the daemon logs the reload.
pub fn reload(daemon: &pnlb_lab::LabProcess, path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
    let reloads = || {
        daemon
            .output()
            .iter()
            .filter(|l| l.contains("reloaded"))
            .count()
    };
    let before = reloads();
    daemon.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reloads() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "reload not logged: {:?}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A global `reason` counter from the daemon's /metrics (its config must
/// have `api = "127.0.0.1:9180"`).
pub fn reason_counter(lab: &Lab, name: &str) -> u64 {
    let (_, body) = api(lab, "GET", "/metrics", None, None);
    body.lines()
        .find(|l| l.starts_with("pnlb_reason_total{") && l.contains(&format!("\"{name}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `config` for UDP, with the API on 127.0.0.1:9180 (for [`reason_counter`]).
pub fn udp_with_api(config: &str) -> String {
    config
        .replace("protocol = \"tcp\"", "protocol = \"udp\"")
        .replacen('\n', "\napi = \"127.0.0.1:9180\"\n", 1)
}

/// A UDP socket of `to`'s family, connected to it, with a read timeout.
pub fn udp_connected(to: SocketAddr, timeout: Duration) -> std::net::UdpSocket {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("an address");
    let socket = std::net::UdpSocket::bind(bind).expect("bind");
    socket.connect(to).expect("connect");
    socket
        .set_read_timeout(Some(timeout))
        .expect("read timeout");
    socket
}

/// Node `node`'s config of a failover pair (the lab's shared key), written
/// next to the lab's other files.
pub fn write_ha_config(lab: &Lab, base: &str, node: u8, priority: u8) -> PathBuf {
    let key = lab.dir.join("ha.key");
    write_secret(&key, "lab-shared-secret-0123456789abcdef\n");
    let path = lab.dir.join(format!("pnlb-node{node}.toml"));
    std::fs::write(&path, lab.ha_config(base, node, priority, &key)).unwrap();
    path
}

/// `pnlb run` of a failover node in `ns`, once it stands by.
pub fn start_ha_node(ns: &str, config: &std::path::Path) -> pnlb_lab::LabProcess {
    let config = config.display().to_string();
    let mut node =
        pnlb_lab::LabProcess::spawn(ns, "pnlb run (ha)", PNLB, &["run", "--config", &config])
            .expect("spawn");
    node.wait_for_line("standing by", Duration::from_secs(30))
        .expect("started");
    node
}

/// The capability names in the packaged unit's CapabilityBoundingSet=.
pub fn unit_capabilities() -> Vec<String> {
    let line = unit_directive("CapabilityBoundingSet").expect("the unit bounds its capabilities");
    line.split_whitespace().map(str::to_string).collect()
}

/// The value of `name=` in the packaged systemd unit, if it sets it.
pub fn unit_directive(name: &str) -> Option<String> {
    let unit = include_str!("../../../../packaging/pnlb.service");
    unit.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_string)
}

/// `setpriv` arguments that leave a root process only `capabilities`.
pub fn bounding_set(capabilities: &[String]) -> String {
    let names: Vec<String> = capabilities
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("--bounding-set=-all,{}", names.join(","))
}

/// `at` as HH:MM:SS.micros (UTC), as the daemon's log lines show time.
pub fn time_of_day(at: std::time::SystemTime) -> String {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        since.subsec_micros()
    )
}

/// Short requests to the IPv4 VIP from the client, one every 20 ms, until
/// `stop` or `limit`: (answered, failed). Each failure is printed with the
/// time it was asked.
pub fn short_requests(
    lab: &Lab,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    limit: Duration,
) -> std::thread::JoinHandle<Result<(u32, u32), pnlb_lab::LabError>> {
    use std::sync::atomic::Ordering;
    pnlb_lab::spawn_in_netns(&lab.client, move || {
        let (mut ok, mut failed) = (0, 0);
        let deadline = std::time::Instant::now() + limit;
        while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            let asked = std::time::SystemTime::now();
            match request(IpAddr::V4(VIP4)) {
                Ok(_) => ok += 1,
                Err(err) => {
                    failed += 1;
                    eprintln!(
                        "a short request asked at {} UTC failed: {err}",
                        time_of_day(asked)
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, failed)
    })
    .expect("client namespace")
}
