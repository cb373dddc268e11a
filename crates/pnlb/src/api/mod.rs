//! The REST/JSON API of `pnlb run` (design.md §5): on `daemon.api` (TCP)
//! and, if set, `daemon.api_socket` (unix), served by [`http`] (deadlines,
//! bounded connections). Requests are parsed and authorized on their
//! connection's thread; everything that reads or changes state is handed
//! to the daemon loop as an [`ApiCall`] and answered from there, so the
//! data plane has one writer and a change is applied whole or not at all.
//!
//! Access: mutations need `Authorization: Bearer <token>` (the contents of
//! `daemon.api_token_file`); without a token file the API is read-only
//! (403). Reads are open on loopback and the unix socket, and need that
//! token or the read-only one (`daemon.api_read_token_file`, for a
//! Prometheus scraper) from anywhere else. Who may ask is decided from the
//! request line and headers: a refused request's body is never read.

pub mod edit;
pub mod http;
pub mod model;
pub(crate) mod routes;

use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use pnlb_core::config::Daemon as DaemonConfig;

use self::edit::{BackendSelector, Edit};
use self::http::{Head, Listener, Origin, Refusal, Response};
use self::model::{ApiError, Done, ServiceStatus, Status};

/// Largest request body accepted (a service with thousands of backends fits).
const MAX_BODY: u64 = 1 << 20;
/// How long a request waits for the daemon loop.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);

/// What the daemon loop is asked to do.
#[derive(Debug)]
pub enum Op {
    Status,
    /// One service's status (its own slots read, not every one).
    ServiceStatus(String),
    /// The desired state as a document (the config file's keys, as JSON).
    Document,
    Edit(Edit),
    Drain {
        service: String,
        backend: BackendSelector,
        drained: bool,
    },
    Reload,
    Zero,
    /// `pnlb ctl drain-node` / `resume-node` (with [bgp]): withdraw every
    /// VIP, or announce them again. `deadline`: how long a drain waits for
    /// the node to go quiet (None: bgp.drain_deadline).
    Node {
        drained: bool,
        deadline: Option<std::time::Duration>,
    },
}

#[derive(Debug)]
pub enum Reply {
    Status(Box<Status>),
    Service(Option<Box<ServiceStatus>>),
    Document(serde_json::Value),
    Done(Done),
    Failed(ApiError),
}

pub struct ApiCall {
    pub op: Op,
    pub reply: mpsc::Sender<Reply>,
}

/// The listeners; dropping it stops them.
pub struct ApiServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    socket: Option<std::path::PathBuf>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

struct Access {
    token: Option<String>,
    read_token: Option<String>,
}

impl Access {
    fn check(&self, head: &Head, mutation: bool) -> Result<(), ApiError> {
        if !mutation && head.origin == Origin::Local {
            return Ok(());
        }
        let presented = head
            .header("Authorization")
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        let matches = |token: &Option<String>| {
            token
                .as_ref()
                .zip(presented)
                .is_some_and(|(token, given)| constant_time_eq(given.as_bytes(), token.as_bytes()))
        };
        if matches(&self.token) || (!mutation && matches(&self.read_token)) {
            return Ok(());
        }
        if mutation && self.token.is_none() {
            return Err(ApiError::new(
                403,
                "the API is read-only here: no daemon.api_token_file is configured",
            )
            .with_fix("set daemon.api_token_file to a file holding a token, and restart"));
        }
        if self.token.is_none() && self.read_token.is_none() {
            return Err(ApiError::new(
                403,
                "reads from other hosts need an API token, and neither daemon.api_token_file nor daemon.api_read_token_file is configured",
            )
            .with_fix("read on the host itself (loopback or daemon.api_socket), or configure a token"));
        }
        let which = if mutation {
            "the token from daemon.api_token_file (the read-only token changes nothing)"
        } else {
            "the token from daemon.api_token_file or daemon.api_read_token_file"
        };
        match presented {
            Some(_) => Err(ApiError::new(401, "wrong token")
                .with_fix(format!("send {which} as `Authorization: Bearer <token>`"))),
            None => Err(ApiError::new(401, "this request needs an API token")
                .with_fix(format!("send `Authorization: Bearer <token>`: {which}"))),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the token file (daemon.api_token_file).
pub fn read_token(path: &std::path::Path) -> Result<String> {
    crate::secret::read(path, "daemon.api_token_file")
}

/// Reads the read-only token file (daemon.api_read_token_file).
pub fn read_read_token(path: &std::path::Path) -> Result<String> {
    crate::secret::read(path, "daemon.api_read_token_file")
}

/// The HTTPS side of daemon.api: the certificate (chain) and its key, the
/// key readable by its owner only; Mozilla's "intermediate" settings.
pub fn tls_acceptor(tls: &pnlb_core::config::ApiTls) -> Result<openssl::ssl::SslAcceptor> {
    use anyhow::Context;
    use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
    crate::secret::check_private(&tls.key_file, "daemon.api_tls_key_file")?;
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    builder
        .set_certificate_chain_file(&tls.cert_file)
        .with_context(|| {
            format!(
                "daemon.api_tls_cert_file {}: not a PEM certificate (chain)",
                tls.cert_file.display()
            )
        })?;
    builder
        .set_private_key_file(&tls.key_file, SslFiletype::PEM)
        .with_context(|| {
            format!(
                "daemon.api_tls_key_file {}: not a PEM private key",
                tls.key_file.display()
            )
        })?;
    builder.check_private_key().with_context(|| {
        format!(
            "daemon.api_tls_key_file {} is not the key of {}",
            tls.key_file.display(),
            tls.cert_file.display()
        )
    })?;
    Ok(builder.build())
}

/// Starts the listeners the config asks for (none: returns Ok(None)).
pub fn start(config: &DaemonConfig, calls: mpsc::Sender<ApiCall>) -> Result<Option<ApiServer>> {
    if config.api.is_none() && config.api_socket.is_none() {
        return Ok(None);
    }
    let token = config
        .api_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let read_token = config
        .api_read_token_file
        .as_deref()
        .map(read_read_token)
        .transpose()?;
    let api = Arc::new(Api {
        access: Access { token, read_token },
        calls,
    });
    let mut server = ApiServer {
        stop: Arc::new(AtomicBool::new(false)),
        threads: Vec::new(),
        socket: None,
    };
    if let Some(address) = config.api {
        let listener = std::net::TcpListener::bind(address).map_err(|err| {
            anyhow::anyhow!("daemon.api {address}: cannot listen: {err}; pick a free address:port")
        })?;
        let listener = match &config.api_tls {
            Some(tls) => Listener::Tls(listener, Arc::new(tls_acceptor(tls)?)),
            None => Listener::Tcp(listener),
        };
        server.listen(listener, api.clone())?;
    }
    if let Some(path) = &config.api_socket {
        // A socket left by a previous run would make the bind fail.
        if std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            let _ = std::fs::remove_file(path);
        }
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(|err| {
            anyhow::anyhow!("daemon.api_socket {}: cannot listen: {err}", path.display())
        })?;
        server.socket = Some(path.clone());
        server.listen(Listener::Unix(listener), api)?;
    }
    Ok(Some(server))
}

impl ApiServer {
    fn listen(&mut self, listener: Listener, api: Arc<Api>) -> Result<()> {
        self.threads
            .push(http::serve(listener, api, self.stop.clone())?);
        Ok(())
    }
}

/// What answers the API's requests.
struct Api {
    access: Access,
    /// To the daemon loop.
    calls: mpsc::Sender<ApiCall>,
}

impl http::Handler for Api {
    /// Who may ask is decided from the head: a refused request's body is
    /// never read.
    fn handle(
        &self,
        head: &Head,
        body: &mut dyn FnMut(u64) -> Result<Vec<u8>, Refusal>,
    ) -> Response {
        match routes::route(&head.method, &head.target)
            .and_then(|route| self.access.check(head, route.mutates()).map(|()| route))
            .and_then(|route| {
                let body = body(MAX_BODY).map_err(refusal_error)?;
                Ok((route, body))
            }) {
            Err(err) => routes::error(&err),
            Ok((route, body)) => routes::serve(route, &body, &self.calls),
        }
    }

    fn refused(&self, refusal: Refusal) -> Response {
        routes::error(&refusal_error(refusal))
    }
}

fn refusal_error(refusal: Refusal) -> ApiError {
    ApiError::new(refusal.status(), refusal.reason())
}

/// Asks the daemon loop and waits for its answer.
pub fn ask(calls: &mpsc::Sender<ApiCall>, op: Op) -> Reply {
    let (reply, answer) = mpsc::channel();
    if calls.send(ApiCall { op, reply }).is_err() {
        return Reply::Failed(ApiError::new(503, "the daemon is shutting down"));
    }
    answer
        .recv_timeout(DAEMON_TIMEOUT)
        .unwrap_or_else(|_| Reply::Failed(ApiError::new(503, "the daemon did not answer in time")))
}
