//! A small HTTP/1.1 server for the API, on std alone, built for what a
//! management port facing a hostile network needs and a general server
//! library left out: a deadline for each request's head and body (a
//! client that sends slowly is cut off with 408), a bound on connections
//! in all and per source address (one client cannot take every slot; the
//! host itself has slots of its own), heads of 16 KiB at most, and the
//! caller deciding from the head alone whether the body is read at all.
//! One request per connection (`Connection: close`): `pnlb ctl`, curl,
//! Prometheus and the dashboard need no more. TLS, when configured, is
//! OpenSSL's (already linked for HMAC and https health checks), its
//! handshake on the connection's own thread and within the deadline.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openssl::ssl::{SslAcceptor, SslStream};

/// A request's head must arrive within this, its body within as long again.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Connections being served at once, in all and per remote address.
pub const MAX_CONNECTIONS: usize = 64;
pub const MAX_PER_SOURCE: usize = 8;
const MAX_HEAD: usize = 16 * 1024;
/// How often the accept loop looks at the stop flag (a connection that
/// comes is taken at once).
const POLL: Duration = Duration::from_millis(50);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Other(String),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Other(other) => other,
        })
    }
}

/// Where a connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Loopback or the unix socket: this host.
    Local,
    Remote(IpAddr),
}

/// A request's head: what is decided on before any of its body is read.
pub struct Head {
    pub method: Method,
    pub target: String,
    headers: Vec<(String, String)>,
    pub origin: Origin,
}

impl Head {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("Content-Length")?.trim().parse().ok()
    }
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type,
            body,
        }
    }
}

/// What the server asks of the API: an answer to a head, reading the body
/// through `body` (at most `limit` bytes) only if it wants it.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        head: &Head,
        body: &mut dyn FnMut(u64) -> Result<Vec<u8>, Refusal>,
    ) -> Response;
    /// The answer to a request the server itself refuses.
    fn refused(&self, refusal: Refusal) -> Response;
}

/// Why the server refused a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 408: the head or the body did not arrive in time.
    TooSlow,
    /// 400: not HTTP/1.x as this server reads it.
    Malformed,
    /// 431: a head over 16 KiB.
    HeadTooLarge,
    /// 413: a body over what the handler takes.
    BodyTooLarge,
    /// 411: a body without Content-Length (chunked uploads are not taken).
    LengthRequired,
    /// 503: every connection slot (or this source's share) is taken.
    Busy,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::TooSlow => 408,
            Refusal::Malformed => 400,
            Refusal::HeadTooLarge => 431,
            Refusal::BodyTooLarge => 413,
            Refusal::LengthRequired => 411,
            Refusal::Busy => 503,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooSlow => "the request did not arrive within 5 s",
            Refusal::Malformed => "not an HTTP/1.1 request",
            Refusal::HeadTooLarge => "the request head is over 16 KiB",
            Refusal::BodyTooLarge => "the request body is over 1 MiB",
            Refusal::LengthRequired => "a request body needs a Content-Length",
            Refusal::Busy => "too many connections (from this address, or in all)",
        }
    }
}

/// A connection of any kind.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeouts(&self, read: Duration, write: Duration) {
        let _ = match self {
            Stream::Tcp(s) => s
                .set_read_timeout(Some(read))
                .and_then(|()| s.set_write_timeout(Some(write))),
            Stream::Tls(s) => s
                .get_ref()
                .set_read_timeout(Some(read))
                .and_then(|()| s.get_ref().set_write_timeout(Some(write))),
            Stream::Unix(s) => s
                .set_read_timeout(Some(read))
                .and_then(|()| s.set_write_timeout(Some(write))),
        };
    }

    /// Reads, waiting no later than DEADLINE after `started`.
    fn read_by(&mut self, buf: &mut [u8], started: Instant) -> Result<usize, Refusal> {
        let left = DEADLINE.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(Refusal::TooSlow);
        }
        self.set_timeouts(left, DEADLINE);
        match self.read(buf) {
            Ok(0) => Err(Refusal::Malformed),
            Ok(n) => Ok(n),
            Err(err) if is_timeout(&err) => Err(Refusal::TooSlow),
            Err(_) => Err(Refusal::Malformed),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// Connection slots: taken on accept, given back when the connection ends.
#[derive(Default)]
struct Slots {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// One slot, given back on drop.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    source: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.total -= 1;
            if let Some(source) = self.source {
                if let Some(n) = slots.per_source.get_mut(&source) {
                    *n -= 1;
                    if *n == 0 {
                        slots.per_source.remove(&source);
                    }
                }
            }
        }
    }
}

/// Takes a slot for a connection from `origin`: local ones are bounded only
/// by the total (the host itself is never locked out by remote clients,
/// which get MAX_CONNECTIONS - MAX_PER_SOURCE of it at most).
fn take_slot(slots: &Arc<Mutex<Slots>>, origin: Origin) -> Option<Slot> {
    let mut guard = slots.lock().ok()?;
    let source = match origin {
        Origin::Local => None,
        Origin::Remote(ip) => Some(ip),
    };
    let remote_total: usize = guard.per_source.values().sum();
    let allowed = match source {
        None => guard.total < MAX_CONNECTIONS,
        Some(ip) => {
            guard.per_source.get(&ip).copied().unwrap_or(0) < MAX_PER_SOURCE
                && remote_total < MAX_CONNECTIONS - MAX_PER_SOURCE
        }
    };
    if !allowed {
        return None;
    }
    guard.total += 1;
    if let Some(ip) = source {
        *guard.per_source.entry(ip).or_default() += 1;
    }
    Some(Slot {
        slots: slots.clone(),
        source,
    })
}

/// A listener of any kind.
pub enum Listener {
    Tcp(TcpListener),
    /// HTTPS: each connection's handshake by this acceptor.
    Tls(TcpListener, Arc<SslAcceptor>),
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> std::io::Result<(Stream, Origin)> {
        match self {
            Listener::Tcp(listener) | Listener::Tls(listener, _) => {
                let (stream, peer) = listener.accept()?;
                let origin = if peer.ip().to_canonical().is_loopback() {
                    Origin::Local
                } else {
                    Origin::Remote(peer.ip().to_canonical())
                };
                Ok((Stream::Tcp(stream), origin))
            }
            Listener::Unix(listener) => Ok((Stream::Unix(listener.accept()?.0), Origin::Local)),
        }
    }

    /// Waits up to `timeout` for a connection to accept: a sleep instead
    /// made every request wait half of POLL on average.
    fn wait_for_connection(&self, timeout: Duration) {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Listener::Tcp(l) | Listener::Tls(l, _) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        };
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one pollfd, valid for the call; the listener outlives it.
        unsafe { libc::poll(&mut poll, 1, millis) };
    }

    fn set_nonblocking(&self) -> std::io::Result<()> {
        match self {
            Listener::Tcp(l) | Listener::Tls(l, _) => l.set_nonblocking(true),
            Listener::Unix(l) => l.set_nonblocking(true),
        }
    }

    fn tls(&self) -> Option<Arc<SslAcceptor>> {
        match self {
            Listener::Tls(_, acceptor) => Some(acceptor.clone()),
            _ => None,
        }
    }
}

/// Serves `listener` on a thread of its own until `stop`; each connection
/// on a thread of its own, within the slots.
pub fn serve(
    listener: Listener,
    handler: Arc<dyn Handler>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking()?;
    let tls = listener.tls();
    let slots = Arc::new(Mutex::new(Slots::default()));
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let (mut stream, origin) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    listener.wait_for_connection(POLL);
                    continue;
                }
                Err(_) => {
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            // Accepted sockets inherit nothing from the listener's mode on
            // Linux, but say so: reads block, up to the deadline.
            if let Stream::Tcp(s) = &stream {
                let _ = s.set_nonblocking(false);
                // Answers are one write each; no need to wait for an ACK.
                let _ = s.set_nodelay(true);
            }
            stream.set_timeouts(DEADLINE, DEADLINE);
            let Some(slot) = take_slot(&slots, origin) else {
                let _ = write_response(&mut stream, &handler.refused(Refusal::Busy));
                continue;
            };
            let (handler, tls) = (handler.clone(), tls.clone());
            std::thread::spawn(move || {
                let _slot = slot;
                let stream = match (tls, stream) {
                    (Some(acceptor), Stream::Tcp(tcp)) => match acceptor.accept(tcp) {
                        Ok(tls) => Stream::Tls(Box::new(tls)),
                        // Not TLS, or too slow to shake hands: nothing to say.
                        Err(_) => return,
                    },
                    (_, stream) => stream,
                };
                serve_one(stream, origin, handler.as_ref());
            });
        }
    }))
}

fn serve_one(mut stream: Stream, origin: Origin, handler: &dyn Handler) {
    let started = Instant::now();
    let response = match read_head(&mut stream, started, origin) {
        Err(refusal) => handler.refused(refusal),
        Ok((head, already)) => {
            let mut already = Some(already);
            let expects_continue = head
                .header("Expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
            let mut body = |limit: u64| -> Result<Vec<u8>, Refusal> {
                let early = already.take().unwrap_or_default();
                if head.header("Transfer-Encoding").is_some() {
                    return Err(Refusal::LengthRequired);
                }
                let length = match head.content_length() {
                    Some(length) => length,
                    None if early.is_empty() => return Ok(Vec::new()),
                    None => return Err(Refusal::LengthRequired),
                };
                if length > limit {
                    return Err(Refusal::BodyTooLarge);
                }
                if expects_continue && (early.len() as u64) < length {
                    let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                read_body(&mut stream, early, length, Instant::now())
            };
            handler.handle(&head, &mut body)
        }
    };
    let _ = write_response(&mut stream, &response);
}

/// The head, and whatever of the body came with it.
fn read_head(
    stream: &mut Stream,
    started: Instant,
    origin: Origin,
) -> Result<(Head, Vec<u8>), Refusal> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > MAX_HEAD {
            return Err(Refusal::HeadTooLarge);
        }
        let n = stream.read_by(&mut chunk, started)?;
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = parse_head(&buffer[..end], origin)?;
    Ok((head, buffer[end + 4..].to_vec()))
}

/// A request head (request line and headers, without the blank line).
pub fn parse_head(bytes: &[u8], origin: Origin) -> Result<Head, Refusal> {
    let text = std::str::from_utf8(bytes).map_err(|_| Refusal::Malformed)?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (
        request_line.next(),
        request_line.next(),
        request_line.next(),
    ) else {
        return Err(Refusal::Malformed);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(Refusal::Malformed);
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(Refusal::Malformed)?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_string()),
    };
    Ok(Head {
        method,
        target: target.to_string(),
        headers,
        origin,
    })
}

fn read_body(
    stream: &mut Stream,
    mut body: Vec<u8>,
    length: u64,
    started: Instant,
) -> Result<Vec<u8>, Refusal> {
    body.truncate(length as usize);
    let mut chunk = [0u8; 16 * 1024];
    while (body.len() as u64) < length {
        let want = ((length - body.len() as u64) as usize).min(chunk.len());
        let n = stream.read_by(&mut chunk[..want], started)?;
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(body)
}

fn is_timeout(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn write_response(stream: &mut Stream, response: &Response) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    // One write: a head and a body written apart waited for the client's
    // delayed ACK (40 ms) before the body went out.
    let mut whole = head.into_bytes();
    whole.extend_from_slice(&response.body);
    stream.write_all(&whole)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_share_and_the_host_keeps_slots_of_its_own() {
        let slots = Arc::new(Mutex::new(Slots::default()));
        let a = Origin::Remote("10.77.0.2".parse().unwrap());
        let mut held: Vec<Slot> = (0..MAX_PER_SOURCE)
            .map(|_| take_slot(&slots, a).expect("within the share"))
            .collect();
        assert!(take_slot(&slots, a).is_none(), "one source's share is full");
        // Other sources fill what remote clients may have.
        let mut n = 3u8;
        while let Some(slot) = take_slot(&slots, Origin::Remote(IpAddr::from([10, 77, 0, n]))) {
            held.push(slot);
            n += 1;
        }
        assert_eq!(held.len(), MAX_CONNECTIONS - MAX_PER_SOURCE);
        let local: Vec<Slot> = (0..MAX_PER_SOURCE)
            .map(|_| take_slot(&slots, Origin::Local).expect("the host's own slots"))
            .collect();
        assert!(take_slot(&slots, Origin::Local).is_none(), "all taken");
        drop(local);
        held.truncate(0);
        assert_eq!(slots.lock().unwrap().total, 0, "every slot given back");
        assert!(slots.lock().unwrap().per_source.is_empty());
        assert!(take_slot(&slots, a).is_some());
    }
}
