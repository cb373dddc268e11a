//! Small Rust servers for long-lived flows, bulk transfers and UDP: on
//! ECHO_PORT/tcp it greets each connection with its host name, then echoes
//! everything back; on BULK_PORT/tcp it serves [`crate::bulk`] downloads;
//! on ECHO_PORT/udp it answers each datagram with its host name, on
//! MIRROR_PORT/udp with the datagram itself.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::bulk::{self, BULK_PORT};
use crate::netns::in_netns;
use crate::LabError;

pub const ECHO_PORT: u16 = 7000;
/// UDP: each datagram is sent back as it came, whatever its size (tests of
/// fragmented datagrams compare the echo byte for byte).
pub const MIRROR_PORT: u16 = 7001;

/// Runs until the lab drops it.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    /// Serves TCP on every address and UDP on each of `udp_addresses`: a
    /// UDP server must answer from the address it was asked on (the VIP in
    /// direct routing), which an unbound socket would not do.
    pub fn start(ns: &str, name: &str, udp_addresses: &[IpAddr]) -> Result<Self, LabError> {
        let udp_addresses = udp_addresses.to_vec();
        let (tcp, udp) = in_netns(ns, move || {
            let mut tcp = Vec::new();
            for port in [ECHO_PORT, BULK_PORT] {
                tcp.push((
                    port,
                    TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))),
                ));
                tcp.push((port, listen_v6_only(port)));
            }
            let udp: Vec<(u16, std::io::Result<UdpSocket>)> = udp_addresses
                .iter()
                .flat_map(|&a| {
                    [ECHO_PORT, MIRROR_PORT]
                        .map(|port| (port, UdpSocket::bind(SocketAddr::new(a, port))))
                })
                .collect();
            (tcp, udp)
        })?;
        let failed = |what: &str, err: std::io::Error| LabError::Command {
            command: what.into(),
            reason: err.to_string(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        for (port, socket) in udp {
            let socket = socket.map_err(|err| failed("bind udp echo", err))?;
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .map_err(|err| failed("udp echo timeout", err))?;
            let stop = stop.clone();
            let answer = if port == MIRROR_PORT {
                None
            } else {
                Some(name.to_string())
            };
            std::thread::spawn(move || udp_loop(socket, answer.as_deref(), &stop));
        }
        for (port, listener) in tcp {
            let listener = listener.map_err(|err| failed("bind echo", err))?;
            listener
                .set_nonblocking(true)
                .map_err(|err| failed("echo nonblocking", err))?;
            let stop = stop.clone();
            let greeting = format!("{name}\n");
            let handler: Handler = if port == BULK_PORT {
                Arc::new(|mut stream: TcpStream| {
                    let _ = bulk::serve(&mut stream);
                })
            } else {
                Arc::new(move |stream: TcpStream| echo(stream, &greeting))
            };
            std::thread::spawn(move || accept_loop(listener, handler, &stop));
        }
        Ok(Self { stop })
    }
}

type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn listen_v6_only(port: u16) -> std::io::Result<TcpListener> {
    // std binds [::] dual-stack; the v4 listener already holds the port, so
    // make this one IPv6-only before binding.
    // SAFETY: plain socket syscalls on a fresh fd that TcpListener then owns.
    unsafe {
        use std::os::fd::FromRawFd;
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let listener = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&one as *const libc::c_int).cast(),
            size,
        );
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            size,
        );
        let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
        addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        addr.sin6_port = port.to_be();
        if libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::listen(fd, 1024) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(listener)
    }
}

/// Answers each datagram with `name`, or with the datagram itself.
fn udp_loop(socket: UdpSocket, name: Option<&str>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let answer = name.map_or(&buf[..n], str::as_bytes);
            let _ = socket.send_to(answer, peer);
        }
    }
}

/// How long a connection may sit idle before the server gives up on it:
/// longer than any test holds one open.
const IDLE_LIMIT: Duration = Duration::from_secs(600);

fn accept_loop(listener: TcpListener, handler: Handler, stop: &AtomicBool) {
    use std::os::fd::AsRawFd;
    while !stop.load(Ordering::Relaxed) {
        // Wait for a connection (or 100 ms, to see `stop`), so that a burst
        // of connections is taken as fast as it comes.
        let mut ready = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        if unsafe { libc::poll(&mut ready, 1, 100) } <= 0 {
            continue;
        }
        while let Ok((stream, _)) = listener.accept() {
            let handler = handler.clone();
            std::thread::spawn(move || {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(IDLE_LIMIT));
                handler(stream);
            });
        }
    }
}

fn echo(mut stream: TcpStream, greeting: &str) {
    if stream.write_all(greeting.as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 16384];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}
