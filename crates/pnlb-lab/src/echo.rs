//! Small Rust servers for long-lived flows and UDP: over TCP it greets each
//! connection with its host name, then echoes everything back; over UDP it
//! answers each datagram with its host name.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::netns::in_netns;
use crate::LabError;

pub const ECHO_PORT: u16 = 7000;

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
        let (listeners, udp) = in_netns(ns, move || {
            let v4 = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], ECHO_PORT)));
            let v6 = socket_v6_only();
            let udp: Vec<std::io::Result<UdpSocket>> = udp_addresses
                .iter()
                .map(|&a| UdpSocket::bind(SocketAddr::new(a, ECHO_PORT)))
                .collect();
            ((v4, v6), udp)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        for socket in udp {
            let socket = socket.map_err(|err| LabError::Command {
                command: "bind udp echo".into(),
                reason: err.to_string(),
            })?;
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .map_err(|err| LabError::Command {
                    command: "udp echo timeout".into(),
                    reason: err.to_string(),
                })?;
            let stop = stop.clone();
            let name = name.to_string();
            std::thread::spawn(move || udp_loop(socket, &name, &stop));
        }
        for listener in [listeners.0, listeners.1] {
            let listener = listener.map_err(|err| LabError::Command {
                command: "bind echo".into(),
                reason: err.to_string(),
            })?;
            listener
                .set_nonblocking(true)
                .map_err(|err| LabError::Command {
                    command: "echo nonblocking".into(),
                    reason: err.to_string(),
                })?;
            let stop = stop.clone();
            let greeting = format!("{name}\n");
            std::thread::spawn(move || accept_loop(listener, &greeting, &stop));
        }
        Ok(Self { stop })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn socket_v6_only() -> std::io::Result<TcpListener> {
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
        addr.sin6_port = ECHO_PORT.to_be();
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

fn udp_loop(socket: UdpSocket, name: &str, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(name.as_bytes(), peer);
        }
    }
}

fn accept_loop(listener: TcpListener, greeting: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let greeting = greeting.to_string();
                std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    if stream.write_all(greeting.as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
