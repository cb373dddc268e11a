//! One health check of one backend, from this host's network context, to
//! the backend's own address (never the VIP). Every probe finishes within
//! its timeout.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use pnlb_core::config::{CheckKind, HealthCheck, HttpCheck};

use super::exec;

/// Largest HTTP response read (status line, headers and enough body).
const MAX_RESPONSE: usize = 64 * 1024;

/// Ok if healthy, else what was wrong (for the one log line per transition).
/// Exec checks run as `exec_as` when given.
pub fn probe(
    check: &HealthCheck,
    address: IpAddr,
    exec_as: Option<exec::Identity>,
) -> Result<(), String> {
    let target = SocketAddr::new(address, check.port);
    let deadline = Instant::now() + check.timeout;
    match &check.kind {
        CheckKind::Tcp => connect(target, check.timeout).map(drop),
        CheckKind::Http(http) => {
            let mut stream = connect(target, check.timeout)?;
            set_deadline(&stream, deadline)?;
            http_exchange(&mut stream, http, address)
        }
        CheckKind::Https(http) => {
            let stream = connect(target, check.timeout)?;
            set_deadline(&stream, deadline)?;
            let mut tls = tls_connect(stream, http.host.as_deref())?;
            http_exchange(&mut tls, http, address)
        }
        CheckKind::Udp { payload, expect } => {
            udp(target, payload, expect.as_deref(), check.timeout)
        }
        CheckKind::Exec { command } => {
            exec::run(command, address, check.port, check.timeout, exec_as)
        }
    }
}

fn connect(target: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    TcpStream::connect_timeout(&target, timeout)
        .map_err(|err| format!("tcp connect to {target}: {err}"))
}

fn set_deadline(stream: &TcpStream, deadline: Instant) -> Result<(), String> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(left))
        .and_then(|()| stream.set_write_timeout(Some(left)))
        .map_err(|err| format!("socket timeouts: {err}"))
}

fn tls_connect(
    stream: TcpStream,
    host: Option<&str>,
) -> Result<openssl::ssl::SslStream<TcpStream>, String> {
    let mut builder = SslConnector::builder(SslMethod::tls_client())
        .map_err(|err| format!("tls setup: {err}"))?;
    // Like keepalived's SSL_GET: the check is about liveness, not identity.
    builder.set_verify(SslVerifyMode::NONE);
    let connector = builder.build();
    let mut config = connector
        .configure()
        .map_err(|err| format!("tls setup: {err}"))?;
    config.set_verify_hostname(false);
    config.set_use_server_name_indication(host.is_some());
    config
        .connect(host.unwrap_or(""), stream)
        .map_err(|err| format!("tls handshake: {err}"))
}

fn http_exchange(
    stream: &mut (impl Read + Write),
    http: &HttpCheck,
    address: IpAddr,
) -> Result<(), String> {
    let host = match (&http.host, address) {
        (Some(host), _) => host.clone(),
        (None, IpAddr::V4(v4)) => v4.to_string(),
        (None, IpAddr::V6(v6)) => format!("[{v6}]"),
    };
    let request = format!(
        "{} {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: pnlb-health-check\r\nConnection: close\r\n\r\n",
        http.method, http.path
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|err| format!("http request: {err}"))?;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while response.len() < MAX_RESPONSE {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(err) if response.is_empty() => return Err(format!("http response: {err}")),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .filter(|_| text.starts_with("HTTP/"))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| "no HTTP status line in the response".to_string())?;
    let (lo, hi) = http.expect_status;
    if !(lo..=hi).contains(&status) {
        return Err(format!("http status {status}, expected {lo}-{hi}"));
    }
    if let Some(expected) = &http.expect_body {
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        if !body.contains(expected.as_str()) {
            return Err(format!("http body does not contain {expected:?}"));
        }
    }
    Ok(())
}

fn udp(
    target: SocketAddr,
    payload: &[u8],
    expect: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let bind = match target {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let socket = UdpSocket::bind(bind).map_err(|err| format!("udp socket: {err}"))?;
    // Connected: an ICMP port-unreachable comes back as an error.
    socket
        .connect(target)
        .map_err(|err| format!("udp connect to {target}: {err}"))?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|err| format!("udp timeout: {err}"))?;
    socket
        .send(payload)
        .map_err(|err| format!("udp send to {target}: {err}"))?;
    let mut buf = [0u8; 2048];
    let n = socket
        .recv(&mut buf)
        .map_err(|err| format!("udp reply from {target}: {err}"))?;
    match expect {
        Some(expected) if !String::from_utf8_lossy(&buf[..n]).contains(expected) => {
            Err(format!("udp reply does not contain {expected:?}"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A probe as the monitor runs it when no exec_check_user is set.
    fn probe_local(check: &HealthCheck, address: IpAddr) -> Result<(), String> {
        probe(check, address, None)
    }

    fn check(kind: CheckKind, port: u16) -> HealthCheck {
        HealthCheck {
            kind,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 1,
            port,
        }
    }

    fn http(body: Option<&str>, status: (u16, u16)) -> HttpCheck {
        HttpCheck {
            method: "GET".into(),
            path: "/health".into(),
            host: None,
            expect_status: status,
            expect_body: body.map(str::to_string),
        }
    }

    /// A one-shot HTTP server on loopback answering with `response`.
    fn serve_once(response: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(response.as_bytes());
            }
        });
        port
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn http_checks_read_the_status_and_the_body() {
        let ok = "HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nall ok\n";
        assert_eq!(
            probe_local(
                &check(
                    CheckKind::Http(http(Some("ok"), (200, 399))),
                    serve_once(ok)
                ),
                LOCAL
            ),
            Ok(())
        );
        let err = probe_local(
            &check(
                CheckKind::Http(http(Some("fine"), (200, 399))),
                serve_once(ok),
            ),
            LOCAL,
        )
        .unwrap_err();
        assert!(err.contains("body"), "{err}");
        let missing = "HTTP/1.0 503 Service Unavailable\r\n\r\n";
        let err = probe_local(
            &check(CheckKind::Http(http(None, (200, 399))), serve_once(missing)),
            LOCAL,
        )
        .unwrap_err();
        assert!(err.contains("503"), "{err}");
        let garbage = "SSH-2.0-OpenSSH\r\n";
        assert!(probe_local(
            &check(CheckKind::Http(http(None, (200, 399))), serve_once(garbage)),
            LOCAL
        )
        .is_err());
    }

    /// A loopback TCP port bound but not listening: connections to it are
    /// refused, and while the socket is held no other socket (another
    /// test's listener, or a connect's own source port, which would make a
    /// TCP self-connection) can take it.
    fn closed_port() -> (std::os::fd::OwnedFd, u16) {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a socket this function owns; the
        // address structs are fully initialised and their sizes given.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0, "socket");
            let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut address = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
                },
                sin_zero: [0; 8],
            };
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let at = &mut address as *mut libc::sockaddr_in as *mut libc::sockaddr;
            assert_eq!(libc::bind(fd, at, len), 0, "bind");
            assert_eq!(libc::getsockname(fd, at, &mut len), 0, "getsockname");
            (owned, u16::from_be(address.sin_port))
        }
    }

    #[test]
    fn tcp_checks_fail_on_a_closed_port_within_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(probe_local(&check(CheckKind::Tcp, port), LOCAL), Ok(()));
        let (_held, closed) = closed_port();
        let started = Instant::now();
        assert!(probe_local(&check(CheckKind::Tcp, closed), LOCAL).is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn exec_checks_see_the_backend_and_are_cut_off_at_the_timeout() {
        let script = |s: &str| CheckKind::Exec {
            command: vec!["sh".into(), "-c".into(), s.into()],
        };
        assert_eq!(
            probe_local(
                &check(
                    script("test \"$PNLB_BACKEND_ADDRESS:$PNLB_BACKEND_PORT\" = 127.0.0.1:81"),
                    81
                ),
                LOCAL
            ),
            Ok(())
        );
        assert!(probe_local(&check(script("exit 3"), 81), LOCAL)
            .unwrap_err()
            .contains("exit"));
        let started = Instant::now();
        assert!(probe_local(&check(script("sleep 5"), 81), LOCAL)
            .unwrap_err()
            .contains("did not finish"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn udp_checks_need_a_matching_reply() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            for _ in 0..2 {
                if let Ok((_, peer)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(b"pong", peer);
                }
            }
        });
        let kind = |expect: &str| CheckKind::Udp {
            payload: b"ping".to_vec(),
            expect: Some(expect.into()),
        };
        assert_eq!(probe_local(&check(kind("pong"), port), LOCAL), Ok(()));
        assert!(probe_local(&check(kind("PONG"), port), LOCAL).is_err());
    }
}
