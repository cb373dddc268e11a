//! A small HTTP/1.1 client for the API, over TCP (TLS when the API has it)
//! or a unix socket: one request per connection, JSON in and out. (The API
//! is local and small; a full HTTP client library would be most of the
//! binary.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

use crate::api::model::ApiError;

const TIMEOUT: Duration = Duration::from_secs(15);

pub enum Endpoint {
    Tcp(SocketAddr),
    /// HTTPS, trusting the certificate in this file (daemon.api_tls_cert_file
    /// or a CA's): the API's own certificate, not a public name, is checked.
    Tls(SocketAddr, PathBuf),
    Unix(PathBuf),
}

pub struct Client {
    pub endpoint: Endpoint,
    pub token: Option<String>,
}

/// A response: status code and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Client {
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer> {
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: pnlb\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        );
        if body.is_some() {
            head += "Content-Type: application/json\r\n";
        }
        if let Some(token) = &self.token {
            head += &format!("Authorization: Bearer {token}\r\n");
        }
        head += "\r\n";
        let raw = match &self.endpoint {
            Endpoint::Tcp(address) => {
                let mut stream = TcpStream::connect_timeout(address, TIMEOUT).with_context(|| {
                    format!("cannot reach the pnlb API at {address}: is `pnlb run` running with daemon.api = \"{address}\"?")
                })?;
                stream.set_read_timeout(Some(TIMEOUT))?;
                exchange(&mut stream, &head, &payload)?
            }
            Endpoint::Tls(address, trusted) => {
                let stream = TcpStream::connect_timeout(address, TIMEOUT).with_context(|| {
                    format!("cannot reach the pnlb API at {address}: is `pnlb run` running with daemon.api = \"{address}\"?")
                })?;
                stream.set_read_timeout(Some(TIMEOUT))?;
                let mut tls = tls_connect(stream, trusted)
                    .with_context(|| format!("TLS with the pnlb API at {address}"))?;
                exchange(&mut tls, &head, &payload)?
            }
            Endpoint::Unix(path) => {
                let mut stream = UnixStream::connect(path).with_context(|| {
                    format!("cannot reach the pnlb API at {}: is `pnlb run` running with daemon.api_socket set to it?", path.display())
                })?;
                stream.set_read_timeout(Some(TIMEOUT))?;
                exchange(&mut stream, &head, &payload)?
            }
        };
        parse_response(&raw)
    }

    /// A request whose success body is JSON of type T; an error status
    /// becomes the API's own error message.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        let answer = self.request(method, path, body)?;
        if answer.status >= 400 {
            let err: Option<ApiError> = serde_json::from_slice(&answer.body).ok();
            match err {
                Some(err) => match err.fix {
                    Some(fix) => bail!("{} ({}); {fix}", err.error, answer.status),
                    None => bail!("{} ({})", err.error, answer.status),
                },
                None => bail!(
                    "the API answered {}: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                ),
            }
        }
        serde_json::from_slice(&answer.body).context("unexpected answer from the API")
    }
}

/// A TLS session with the API, whose certificate must be signed by (or be)
/// the one in `trusted`; the name in it is not checked (the API is reached
/// by address).
fn tls_connect(
    stream: TcpStream,
    trusted: &std::path::Path,
) -> Result<openssl::ssl::SslStream<TcpStream>> {
    use openssl::ssl::{SslConnector, SslMethod};
    let mut builder = SslConnector::builder(SslMethod::tls())?;
    builder
        .set_ca_file(trusted)
        .with_context(|| format!("{}: not a PEM certificate", trusted.display()))?;
    let mut config = builder.build().configure()?;
    config.set_verify_hostname(false);
    Ok(config.connect("pnlb", stream)?)
}

fn exchange(stream: &mut (impl Read + Write), head: &str, payload: &str) -> Result<Vec<u8>> {
    // One write: a head and a body sent apart waited for the server's
    // delayed ACK (40 ms) before the body went out.
    stream.write_all(format!("{head}{payload}").as_bytes())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .context("reading the API's answer")?;
    Ok(raw)
}

fn parse_response(raw: &[u8]) -> Result<Answer> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the API's answer has no header end")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .context("the API's answer has no status line")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(Answer { status, body })
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || body.len() < end + 2 + size {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[(end + 4 + size).min(body.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_and_without_chunking() {
        let plain =
            parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((plain.status, plain.body.as_slice()), (404, &b"{}"[..]));
        let chunked = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.body, b"abcde");
        assert!(parse_response(b"garbage").is_err());
    }
}
