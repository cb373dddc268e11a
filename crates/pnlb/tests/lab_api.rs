//! The management plane end to end: `pnlb ctl` and the REST API against a
//! running `pnlb run` in the lab, changes applied under client load, bad
//! requests refused whole, /metrics agreeing with the API.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use pnlb_lab::{in_netns, spawn_in_netns, Lab, LabSpec, ECHO_PORT, VIP4};
use support::*;

/// `pnlb ctl --config … ARGS` in the LB namespace: (success, stdout + stderr).
fn ctl(lab: &Lab, config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.lb, PNLB, "ctl", "--config"])
        .arg(config)
        .args(args)
        .output()
        .expect("run pnlb ctl");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn ctl_ok(lab: &Lab, config: &std::path::Path, args: &[&str]) -> String {
    let (ok, text) = ctl(lab, config, args);
    assert!(ok, "pnlb ctl {args:?}: {text}");
    text
}

/// A long-lived echo connection through the VIP: greets with its server's
/// name, then echoes 1 KiB chunks until told to stop. Returns (server,
/// bytes echoed) or the first error.
type Joined<T> = std::thread::JoinHandle<Result<T, pnlb_lab::LabError>>;

fn echo_stream(lab: &Lab, stop: Arc<AtomicBool>) -> Joined<Result<(String, u64), String>> {
    spawn_in_netns(&lab.client, move || {
        let vip = SocketAddr::new(IpAddr::V4(VIP4), ECHO_PORT);
        let mut stream =
            TcpStream::connect_timeout(&vip, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut greeting = [0u8; 3];
        stream
            .read_exact(&mut greeting)
            .map_err(|e| format!("greeting: {e}"))?;
        let server = String::from_utf8_lossy(&greeting[..2]).to_string();
        let mut echoed = 0u64;
        let mut chunk = vec![0u8; 1024];
        let mut back = vec![0u8; 1024];
        let mut n = 0u8;
        while !stop.load(Ordering::Relaxed) {
            n = n.wrapping_add(1);
            chunk
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = n ^ i as u8);
            stream
                .write_all(&chunk)
                .map_err(|e| format!("after {echoed} bytes: send: {e}"))?;
            stream
                .read_exact(&mut back)
                .map_err(|e| format!("after {echoed} bytes: read: {e}"))?;
            if back != chunk {
                return Err(format!("after {echoed} bytes: the echo differs"));
            }
            echoed += 1024;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((server, echoed))
    })
    .expect("client namespace")
}

#[test]
fn ctl_changes_services_and_backends_under_load_without_failing_a_request_or_resetting_a_flow() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec {
        echo: true,
        ..LabSpec::default()
    })
    .expect("lab");
    let (path, daemon) = start_with_api(&lab, true);

    let stop = Arc::new(AtomicBool::new(false));
    let stream = echo_stream(&lab, stop.clone());
    let load_stop = stop.clone();
    let load = spawn_in_netns(&lab.client, move || {
        let (mut ok, mut failed) = (0u32, Vec::new());
        let deadline = Instant::now() + Duration::from_secs(60);
        while !load_stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match request(IpAddr::V4(VIP4)) {
                Ok(_) => ok += 1,
                Err(err) => failed.push(err),
            }
        }
        (ok, failed)
    })
    .expect("client namespace");
    std::thread::sleep(Duration::from_millis(500));

    ctl_ok(&lab, &path, &["add-backend", "web", "10.77.1.13"]);
    ctl_ok(&lab, &path, &["add-backend", "echo", "10.77.1.13"]);
    for server in ["10.77.1.11", "10.77.1.12"] {
        // Both echo backends go: the stream's among them, which must go on.
        ctl_ok(&lab, &path, &["remove", "echo", server]);
    }
    let listed = ctl_ok(&lab, &path, &["list"]);
    assert!(
        listed.contains("removed"),
        "the stream's backend is listed as removed while it has flows: {listed}"
    );
    ctl_ok(
        &lab,
        &path,
        &[
            "add-service",
            "web8080",
            "--vip",
            "10.77.100.1",
            "--port",
            "8080",
        ],
    );
    ctl_ok(&lab, &path, &["add-backend", "web8080", "10.77.1.11"]);
    ctl_ok(&lab, &path, &["remove", "web", "10.77.1.11"]);
    ctl_ok(
        &lab,
        &path,
        &["edit", "web", "10.77.1.12", "--set", "weight=3"],
    );
    ctl_ok(&lab, &path, &["drain", "web", "10.77.1.12"]);
    std::thread::sleep(Duration::from_millis(300));
    ctl_ok(&lab, &path, &["undrain", "web", "10.77.1.12"]);
    ctl_ok(&lab, &path, &["remove", "web8080"]);
    let listed = ctl_ok(&lab, &path, &["list"]);
    assert!(
        listed.contains("10.77.1.12:80") && listed.contains("Route   3"),
        "{listed}"
    );
    ctl_ok(&lab, &path, &["reload"]);
    let listed = ctl_ok(&lab, &path, &["list"]);
    assert!(
        listed.contains("(file ") && !listed.contains("API edits"),
        "reload goes back to the file: {listed}"
    );
    std::thread::sleep(Duration::from_millis(500));

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap().unwrap();
    let streamed = stream.join().unwrap().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the changes: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests ran");
    let (server, bytes) =
        streamed.unwrap_or_else(|err| panic!("the long-lived stream broke: {err}"));
    assert!(
        bytes > 20 * 1024,
        "the stream on {server} echoed {bytes} bytes"
    );
    let (status, _) = daemon.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()));
}

#[test]
fn bad_requests_are_refused_whole_and_mutations_need_the_token() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let (path, daemon) = start_with_api(&lab, true);
    let version = |lab: &Lab| -> u64 {
        let (_, body) = api(lab, "GET", "/api/v1/status", None, None);
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        status["config_version"].as_u64().unwrap()
    };
    let before = version(&lab);

    let backend = r#"{"address": "10.77.1.13"}"#;
    // (method, route, token, body, expected status)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, u16);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/v1/services/web/backends",
            None,
            Some(backend),
            401,
        ),
        (
            "POST",
            "/api/v1/services/web/backends",
            Some("wrong-token-0123456789"),
            Some(backend),
            401,
        ),
        (
            "POST",
            "/api/v1/services/web/backends",
            Some(TOKEN),
            Some("{not json"),
            400,
        ),
        (
            "POST",
            "/api/v1/services/web/backends",
            Some(TOKEN),
            Some(r#"{"address": "10.77.1.13", "weight": -1}"#),
            422,
        ),
        (
            "POST",
            "/api/v1/services/web/backends",
            Some(TOKEN),
            Some(r#"{"address": "10.77.1.13", "colour": "red"}"#),
            422,
        ),
        (
            "POST",
            "/api/v1/services",
            Some(TOKEN),
            Some(r#"{"name": "x", "vip": "10.77.100.1", "port": 80}"#),
            422,
        ),
        (
            "POST",
            "/api/v1/services/nope/backends",
            Some(TOKEN),
            Some(backend),
            404,
        ),
        (
            "DELETE",
            "/api/v1/services/web/backends/10.77.1.99",
            Some(TOKEN),
            None,
            404,
        ),
        ("PATCH", "/api/v1/services/web", Some(TOKEN), None, 405),
        // An exec check runs a command on the LB: not through the API
        // (daemon.api_exec_checks is off).
        (
            "POST",
            "/api/v1/services",
            Some(TOKEN),
            Some(
                r#"{"name": "probed", "vip": "10.77.100.1", "port": 8080, "method": "dr",
                    "health": {"kind": "exec", "command": ["/bin/sh", "-c", "id > /tmp/owned"]},
                    "backend": [{"address": "10.77.1.11"}]}"#,
            ),
            403,
        ),
        ("GET", "/api/v1/nothing", None, None, 404),
    ];
    for (method, route, token, body, expected) in cases {
        let (status, answer) = api(&lab, method, route, token, body);
        assert_eq!(status, expected, "{method} {route} {body:?}: {answer}");
        let error: serde_json::Value =
            serde_json::from_str(&answer).unwrap_or_else(|_| panic!("JSON error body: {answer}"));
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    assert_eq!(version(&lab), before, "nothing was applied");

    // An invalid file on reload is refused; the running config stays.
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("port = 80", "port = 80000")).unwrap();
    let (status, answer) = api(&lab, "POST", "/api/v1/reload", Some(TOKEN), None);
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains("port"), "{answer}");
    assert_eq!(version(&lab), before);
    assert!(spread(&lab, IpAddr::V4(VIP4), 10).values().sum::<usize>() == 10);

    // A valid change works, with the token.
    let (status, answer) = api(
        &lab,
        "POST",
        "/api/v1/services/web/backends",
        Some(TOKEN),
        Some(backend),
    );
    assert_eq!(status, 201, "{answer}");
    assert_eq!(version(&lab), before + 1);
    daemon.stop(Duration::from_secs(10));
}

/// One HTTP request from namespace `ns` to the API on the LB's lab
/// address (a remote origin): (status, body).
fn remote(ns: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let base = format!("http://{}:9180", pnlb_lab::LB4);
    let body = (method == "POST").then_some("{}");
    api_from(ns, &base, method, path, token, body)
}

const READER: &str = "lab-read-token-0123456789abcdef";

/// `pnlb run` with the API on the LB's lab address (reachable from the
/// client and the servers), the token and the read-only token [`READER`].
fn start_with_remote_api(lab: &Lab) -> pnlb_lab::LabProcess {
    let reader = lab.dir.join("api.read-token");
    write_secret(&reader, READER);
    let text = api_config(lab, true)
        .replace(
            "api = \"127.0.0.1:9180\"",
            &format!("api = \"{}:9180\"", pnlb_lab::LB4),
        )
        .replacen(
            "\n",
            &format!("\napi_read_token_file = \"{}\"\n", reader.display()),
            1,
        );
    let path = write_config(lab, &text);
    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let started = wait_for_log(&daemon, "API on", Duration::from_secs(5));
    eprintln!("{started}");
    daemon
}

/// Slowloris: 20 connections from the client, each sending half a request
/// head and then nothing, cannot stall the API. The client gets its share
/// of 8 connections (the other 12 are refused with 503 at once), those 8
/// are cut off with 408 at the 5 s deadline, and meanwhile the host and
/// another client are answered at once.
#[test]
fn slow_clients_are_cut_off_and_never_stall_the_others() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let daemon = start_with_remote_api(&lab);
    const SLOW: usize = 20;
    let slow = spawn_in_netns(&lab.client, || {
        assert_in_lab_netns();
        let opened = Instant::now();
        let mut streams: Vec<TcpStream> = (0..SLOW)
            .filter_map(|_| TcpStream::connect((pnlb_lab::LB4, 9180)).ok())
            .collect();
        for stream in &mut streams {
            let _ = stream.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: lb\r\n");
            let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
        }
        // Each answer as it comes: its status line and when.
        let answers: Vec<(String, Duration)> = streams
            .iter_mut()
            .map(|stream| {
                let mut answer = vec![0u8; 256];
                let n = stream.read(&mut answer).unwrap_or(0);
                let line = String::from_utf8_lossy(&answer[..n])
                    .lines()
                    .next()
                    .unwrap_or("(nothing)")
                    .to_string();
                (line, opened.elapsed())
            })
            .collect();
        answers
    })
    .expect("client namespace");
    std::thread::sleep(Duration::from_secs(1));
    // The host, on the unix socket.
    let asked = Instant::now();
    let socket = lab.dir.join("api.sock").display().to_string();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.lb,
            "curl",
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}", "--unix-socket", &socket])
        .arg("http://pnlb/api/v1/status")
        .output()
        .expect("curl");
    let local: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let local_took = asked.elapsed();
    let asked = Instant::now();
    let (other, _) = remote(&lab.servers[0].ns, "GET", "/metrics", Some(READER));
    let other_took = asked.elapsed();
    let answers = slow.join().expect("joined").expect("in netns");
    let count = |status: &str| answers.iter().filter(|(l, _)| l.contains(status)).count();
    let cut_at = answers
        .iter()
        .filter(|(l, _)| l.contains(" 408 "))
        .map(|(_, at)| *at)
        .max()
        .unwrap_or_default();
    eprintln!(
        "{SLOW} slow connections from the client: {} refused at once (503), {} cut off (408) by {cut_at:?}; meanwhile the host answered {local} in {local_took:?}, another client {other} in {other_took:?}",
        count(" 503 "),
        count(" 408 ")
    );
    assert_eq!((local, other), (200, 200));
    assert!(local_took < Duration::from_secs(1) && other_took < Duration::from_secs(1));
    assert_eq!(count(" 503 "), SLOW - 8, "{answers:?}");
    assert_eq!(count(" 408 "), 8, "{answers:?}");
    assert!(
        cut_at < Duration::from_secs(8),
        "cut off at the deadline: {cut_at:?}"
    );
    daemon.stop(Duration::from_secs(10));
}

/// From another host: reads need a token, and the read-only one
/// (`api_read_token_file`, for a Prometheus scraper) changes nothing; a
/// request is refused from its headers, before its body is read (a client
/// announcing 100 MB without the token is answered at once).
#[test]
fn remote_reads_need_a_token_the_read_only_one_changes_nothing_and_refusals_read_no_body() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let daemon = start_with_remote_api(&lab);

    for (method, route, token, expected) in [
        ("GET", "/metrics", None, 401),
        ("GET", "/metrics", Some("wrong-token-0123456789"), 401),
        ("GET", "/metrics", Some(READER), 200),
        ("GET", "/api/v1/status", Some(READER), 200),
        ("GET", "/api/v1/status", Some(TOKEN), 200),
        ("POST", "/api/v1/zero", Some(READER), 401),
        ("POST", "/api/v1/zero", None, 401),
        ("POST", "/api/v1/zero", Some(TOKEN), 200),
    ] {
        let (status, body) = remote(&lab.client, method, route, token);
        let shown = token.map_or("no token", |t| {
            if t == READER {
                "the read-only token"
            } else if t == TOKEN {
                "the token"
            } else {
                "a wrong token"
            }
        });
        eprintln!("{method} {route} with {shown}: {status}");
        assert_eq!(status, expected, "{method} {route} with {shown}: {body}");
    }

    // 100 MB announced, nothing sent, no token: answered from the headers.
    let answer = pnlb_lab::in_netns(&lab.client, || {
        assert_in_lab_netns();
        let mut stream = TcpStream::connect((pnlb_lab::LB4, 9180)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let asked = Instant::now();
        stream
            .write_all(b"POST /api/v1/services HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n")
            .unwrap();
        let mut answer = vec![0u8; 512];
        let n = stream.read(&mut answer).unwrap_or(0);
        (String::from_utf8_lossy(&answer[..n]).to_string(), asked.elapsed())
    })
    .expect("in the client namespace");
    eprintln!(
        "100 MB announced without a token: answered in {:?}: {}",
        answer.1,
        answer.0.lines().next().unwrap_or("")
    );
    assert!(answer.0.starts_with("HTTP/1.1 401"), "{answer:?}");
    daemon.stop(Duration::from_secs(10));
}

/// HTTPS on daemon.api (api_tls_cert_file, api_tls_key_file): curl that
/// trusts the certificate is answered, plain HTTP is not, `pnlb ctl --api
/// --tls-ca` works; a key file others may read stops `pnlb run` at once.
#[test]
fn the_api_over_tls() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let (cert, key) = (lab.dir.join("api.crt"), lab.dir.join("api.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=pnlb"])
        .args(["-addext", &format!("subjectAltName=IP:{}", pnlb_lab::LB4)])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{made:?}");
    let token = lab.dir.join("api.token");
    let text = api_config(&lab, true)
        .replace(
            "api = \"127.0.0.1:9180\"",
            &format!(
                "api = \"{}:9443\"\napi_tls_cert_file = \"{}\"\napi_tls_key_file = \"{}\"",
                pnlb_lab::LB4,
                cert.display(),
                key.display()
            ),
        )
        .replace(
            &format!("api_socket = \"{}\"\n", lab.dir.join("api.sock").display()),
            "",
        );
    let path = write_config(&lab, &text);

    // The key as openssl wrote it (mode 644 under the usual umask): refused.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.lb, PNLB, "run", "--config"])
        .arg(&path)
        .output()
        .expect("pnlb run");
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        !refused.status.success() && said.contains("chmod 600"),
        "{said}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let started = wait_for_log(&daemon, "API on", Duration::from_secs(5));
    assert!(started.contains("https://"), "{started}");
    let curl = |url: &str, trust: bool| {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &lab.client, "curl", "-s", "-m", "5"]);
        command.args(["-o", "/dev/null", "-w", "%{http_code}"]);
        command.args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
        if trust {
            command.arg("--cacert").arg(&cert);
        }
        let out = command.arg(url).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let https = format!("https://{}:9443/api/v1/status", pnlb_lab::LB4);
    let http = format!("http://{}:9443/api/v1/status", pnlb_lab::LB4);
    let (secure, untrusted, plain) = (curl(&https, true), curl(&https, false), curl(&http, false));
    eprintln!("{started}\nhttps with the certificate: {secure}; without trusting it: {untrusted}; plain http: {plain}");
    assert_eq!(
        (secure.as_str(), untrusted.as_str(), plain.as_str()),
        ("200", "000", "000")
    );

    let api = format!("{}:9443", pnlb_lab::LB4);
    let ctl = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client,
            PNLB,
            "ctl",
            "--api",
            &api,
            "--tls-ca",
        ])
        .arg(&cert)
        .arg("--token-file")
        .arg(&token)
        .arg("list")
        .output()
        .expect("pnlb ctl");
    let listed = String::from_utf8_lossy(&ctl.stdout).to_string();
    assert!(
        ctl.status.success() && listed.contains("10.77.100.1"),
        "{listed} {ctl:?}"
    );
    daemon.stop(Duration::from_secs(10));
}

#[test]
fn without_a_token_file_the_api_is_read_only_and_metrics_agree_with_it() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let (path, daemon) = start_with_api(&lab, false);
    let (status, answer) = api(&lab, "POST", "/api/v1/zero", Some(TOKEN), None);
    assert_eq!(status, 403, "{answer}");
    let (ok, text) = ctl(&lab, &path, &["drain", "web", "10.77.1.11"]);
    assert!(!ok && text.contains("read-only"), "{text}");

    let answers = spread(&lab, IpAddr::V4(VIP4), 20);
    assert_eq!(answers.values().sum::<usize>(), 20);
    // Over the unix socket too.
    let listed = ctl_ok(&lab, &path, &["list", "--stats"]);
    assert!(
        listed.contains("TCP  10.77.100.1:80") && listed.contains("(web)"),
        "{listed}"
    );
    let (_, body) = api(&lab, "GET", "/api/v1/services/web", None, None);
    let web: serde_json::Value = serde_json::from_str(&body).unwrap();
    // One service is read alone (its own slots), the whole status by
    // batched reads of every slot: the same figures. (Connection counts
    // may move between the two reads as the sweep expires closed flows.)
    let (_, body) = api(&lab, "GET", "/api/v1/status", None, None);
    let whole: serde_json::Value = serde_json::from_str(&body).unwrap();
    let in_whole = whole["services"]
        .as_array()
        .and_then(|services| services.iter().find(|s| s["name"] == "web"))
        .expect("web in the status");
    let without_conns = |service: &serde_json::Value| {
        let mut service = service.clone();
        for backend in service["backends"].as_array_mut().unwrap() {
            let backend = backend.as_object_mut().unwrap();
            backend.remove("active_conns");
            backend.remove("inactive_conns");
        }
        service
    };
    assert_eq!(without_conns(in_whole), without_conns(&web));
    let (_, metrics) = api(&lab, "GET", "/metrics", None, None);
    let metric = |name: &str, labels: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                if labels.is_empty() {
                    l.starts_with(&format!("{name} "))
                } else {
                    l.starts_with(&format!("{name}{{{labels}"))
                }
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}{{{labels}… in {metrics}"))
    };
    assert_eq!(
        metric("pnlb_service_new_flows_total", "service=\"web\""),
        20
    );
    assert_eq!(web["counters"]["new_flows"], 20);
    let packets = web["counters"]["packets"].as_u64().unwrap();
    assert_eq!(
        metric("pnlb_service_packets_total", "service=\"web\""),
        packets
    );
    for backend in web["backends"].as_array().unwrap() {
        let labels = format!(
            "service=\"web\",backend=\"{}:80\"",
            backend["address"].as_str().unwrap()
        );
        assert_eq!(
            metric("pnlb_backend_new_flows_total", &labels),
            backend["counters"]["new_flows"].as_u64().unwrap()
        );
        assert_eq!(metric("pnlb_backend_up", &labels), 1);
    }
    assert_eq!(
        metric("pnlb_conntrack_capacity", "table=\"established\""),
        262_144
    );
    assert_eq!(metric("pnlb_conntrack_capacity", "table=\"new\""), 65_536);
    assert_eq!(
        metric("pnlb_conntrack_events_total", "event=\"refused_full\""),
        0
    );
    daemon.stop(Duration::from_secs(10));
}

#[test]
fn json_logs_are_one_object_per_line_with_the_events_fields() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let text = api_config(&lab, false).replace(
        "[[service.backend]]\naddress = \"10.77.1.12\"\n",
        "[[service.backend]]\naddress = \"10.77.1.12\"\n[service.backend.health]\nkind = \"http\"\ninterval = \"200ms\"\nrise = 1\n",
    );
    let path = write_config(&lab, &text);
    let config = path.display().to_string();
    let mut daemon = pnlb_lab::LabProcess::spawn(
        &lab.lb,
        "pnlb run (json logs)",
        PNLB,
        &["--log-format", "json", "run", "--config", &config],
    )
    .expect("spawn");
    daemon
        .wait_for_line("forwarding", Duration::from_secs(30))
        .expect("forwarding");
    let up = wait_for_log(&daemon, "\"health\":\"up\"", Duration::from_secs(10));
    let event: serde_json::Value = serde_json::from_str(&up).expect("a JSON object");
    assert_eq!(event["level"], "INFO");
    assert_eq!(event["service"], "web");
    assert_eq!(event["backend"], "10.77.1.12:80");
    assert!(event["message"].as_str().unwrap().contains("is UP"), "{up}");
    let (_, output) = daemon.stop(Duration::from_secs(10));
    for line in output.iter().take_while(|l| !l.starts_with("Prot ")) {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            event["timestamp"].is_string() && event["message"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn the_grafana_dashboard_asks_only_for_metrics_pnlb_exports() {
    if !privileged() {
        return;
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana/pnlb-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let (_, daemon) = start_with_api(&lab, false);
    spread(&lab, IpAddr::V4(VIP4), 5);
    let (_, metrics) = api(&lab, "GET", "/metrics", None, None);
    // Every family is declared, samples or not (a drop reason may never occur).
    let exported: std::collections::BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            })
        })
        .collect();
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if name.starts_with("pnlb_") {
                    asked += 1;
                    assert!(
                        exported.contains(name),
                        "{name} (panel {:?}) is not in /metrics",
                        panel["title"]
                    );
                }
            }
        }
    }
    assert!(asked >= 10);
    daemon.stop(Duration::from_secs(10));
}

/// The health of each backend of `service` as the API shows it, by address.
fn health_of(lab: &Lab, service: &str) -> Vec<(String, String)> {
    let (_, body) = api(
        lab,
        "GET",
        &format!("/api/v1/services/{service}"),
        None,
        None,
    );
    let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    status["backends"]
        .as_array()
        .map(|backends| {
            backends
                .iter()
                .map(|b| {
                    let field = |key: &str| b[key].as_str().unwrap_or_default().to_string();
                    (field("address"), field("health"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_edit_changes_its_own_service_in_the_data_plane_and_leaves_the_others_flows_alone() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec {
        echo: true,
        ..LabSpec::default()
    })
    .expect("lab");
    let (_, daemon) = start_with_api(&lab, true);
    let stop = Arc::new(AtomicBool::new(false));
    // The other service's flow, open through every edit of web.
    let stream = echo_stream(&lab, stop.clone());
    let servers = |n| spread(&lab, IpAddr::V4(VIP4), n);
    let edit = |method: &str, route: &str, body: Option<&str>| {
        let (status, answer) = api(&lab, method, route, Some(TOKEN), body);
        println!("{method} {route}: {status} {answer}");
        (status, answer)
    };

    // web replaced: one backend, checked. Traffic and checks follow.
    let only = |address: &str| {
        format!(
            r#"{{"vip": "{VIP4}", "port": 80, "method": "dr", "scheduler": "maglev",
                "health": {{"kind": "tcp", "interval": "200ms", "rise": 1}},
                "backend": [{{"address": "{address}"}}]}}"#
        )
    };
    assert_eq!(
        edit("PUT", "/api/v1/services/web", Some(&only("10.77.1.12"))).0,
        200
    );
    let twelve = servers(10);
    println!("web on 10.77.1.12 alone: {twelve:?}");
    assert_eq!(twelve.len(), 1, "{twelve:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    // 10.77.1.11 may still be listed as "removed" until its slot is freed
    // (after an expiry pass finds it without connections).
    let judged = |lab: &Lab| {
        health_of(lab, "web")
            .into_iter()
            .filter(|(_, health)| health != "removed")
            .collect::<Vec<_>>()
    };
    while judged(&lab) != [("10.77.1.12".to_string(), "up".to_string())] {
        assert!(
            Instant::now() < deadline,
            "the edited service's check did not judge its backend: {:?}",
            health_of(&lab, "web")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        edit("PUT", "/api/v1/services/web", Some(&only("10.77.1.11"))).0,
        200
    );
    let eleven = servers(10);
    println!("web on 10.77.1.11 alone: {eleven:?}");
    assert_eq!(eleven.len(), 1, "{eleven:?}");
    assert_ne!(eleven.keys().next(), twelve.keys().next());

    // Refused across services: the listener is web's. Nothing changes.
    let (_, before) = api(&lab, "GET", "/api/v1/config", None, None);
    let (status, answer) = edit(
        "POST",
        "/api/v1/services",
        Some(&format!(
            r#"{{"name": "copy", "vip": "{VIP4}", "port": 80, "backend": [{{"address": "10.77.1.12"}}]}}"#
        )),
    );
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains("already listens"), "{answer}");
    let (_, after) = api(&lab, "GET", "/api/v1/config", None, None);
    assert_eq!(before, after, "the refused edit was undone");
    assert_eq!(
        servers(5).keys().collect::<Vec<_>>(),
        eleven.keys().collect::<Vec<_>>()
    );

    // Removed: the VIP's port 80 is no service's any more; added back.
    assert_eq!(edit("DELETE", "/api/v1/services/web", None).0, 200);
    let unserved = in_netns(&lab.client, || request(IpAddr::V4(VIP4))).expect("client namespace");
    assert!(unserved.is_err(), "removed, yet answered by {unserved:?}");
    let (status, _) = edit(
        "POST",
        "/api/v1/services",
        Some(&format!(
            r#"{{"name": "web", "vip": "{VIP4}", "port": 80, "method": "dr",
                "backend": [{{"address": "10.77.1.11"}}, {{"address": "10.77.1.12"}}]}}"#
        )),
    );
    assert_eq!(status, 201);
    let both = servers(20);
    println!("web added back with both: {both:?}");
    assert_eq!(both.len(), 2, "{both:?}");

    stop.store(true, Ordering::Relaxed);
    let (server, bytes) = stream
        .join()
        .unwrap()
        .unwrap()
        .unwrap_or_else(|err| panic!("echo's flow broke while web was edited: {err}"));
    println!("echo's flow on {server}: {bytes} bytes echoed through the edits");
    let (status, log) = daemon.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()));
    let failed: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("programming the data plane"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}
