//! URL + method -> what to do, and the JSON that answers it. The routes
//! are docs/api/openapi.json's; a test checks the two agree.

use std::sync::mpsc;

use serde::Serialize;

use super::edit::{BackendSelector, Edit};
use super::http::{Method, Response};
use super::model::{ApiError, ServiceStatus, Status};
use super::{ask, ApiCall, Op, Reply};
use crate::metrics;

pub enum Route {
    Dashboard,
    Metrics,
    Status,
    Document,
    Services,
    Service(String),
    Backends(String),
    Backend(String, BackendSelector),
    Change(Op, u16),
}

impl Route {
    /// Whether it changes state (and so needs the token).
    pub fn mutates(&self) -> bool {
        matches!(self, Route::Change(..))
    }
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn not_allowed(method: &Method, allowed: &str) -> ApiError {
    ApiError::new(405, format!("{method} is not allowed here")).with_fix(format!("use {allowed}"))
}

pub fn route(method: &Method, url: &str) -> Result<Route, ApiError> {
    let path = url.split('?').next().unwrap_or("");
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get = *method == Method::Get;
    let mutation = |op: Op, created: bool| Route::Change(op, if created { 201 } else { 200 });
    match parts.as_slice() {
        [""] if get => Ok(Route::Dashboard),
        ["metrics"] if get => Ok(Route::Metrics),
        ["api", "v1", "status"] if get => Ok(Route::Status),
        ["api", "v1", "config"] if get => Ok(Route::Document),
        ["api", "v1", "services"] => match method {
            Method::Get => Ok(Route::Services),
            Method::Post => Ok(mutation(
                Op::Edit(Edit::AddService(Default::default())),
                true,
            )),
            _ => Err(not_allowed(method, "GET or POST")),
        },
        ["api", "v1", "services", name] => match method {
            Method::Get => Ok(Route::Service(name.to_string())),
            Method::Put => Ok(mutation(
                Op::Edit(Edit::ReplaceService(name.to_string(), Default::default())),
                false,
            )),
            Method::Delete => Ok(mutation(
                Op::Edit(Edit::RemoveService(name.to_string())),
                false,
            )),
            _ => Err(not_allowed(method, "GET, PUT or DELETE")),
        },
        ["api", "v1", "services", name, "backends"] => match method {
            Method::Get => Ok(Route::Backends(name.to_string())),
            Method::Post => Ok(mutation(
                Op::Edit(Edit::AddBackend(name.to_string(), Default::default())),
                true,
            )),
            _ => Err(not_allowed(method, "GET or POST")),
        },
        ["api", "v1", "services", name, "backends", backend] => {
            let selector = BackendSelector::parse(backend)?;
            match method {
                Method::Get => Ok(Route::Backend(name.to_string(), selector)),
                Method::Put => Ok(mutation(
                    Op::Edit(Edit::ReplaceBackend(
                        name.to_string(),
                        selector,
                        Default::default(),
                    )),
                    false,
                )),
                Method::Delete => Ok(mutation(
                    Op::Edit(Edit::RemoveBackend(name.to_string(), selector)),
                    false,
                )),
                _ => Err(not_allowed(method, "GET, PUT or DELETE")),
            }
        }
        ["api", "v1", "services", name, "backends", backend, action @ ("drain" | "undrain")] => {
            if *method != Method::Post {
                return Err(not_allowed(method, "POST"));
            }
            Ok(mutation(
                Op::Drain {
                    service: name.to_string(),
                    backend: BackendSelector::parse(backend)?,
                    drained: *action == "drain",
                },
                false,
            ))
        }
        ["api", "v1", "node", action @ ("drain" | "resume")] => {
            if *method != Method::Post {
                return Err(not_allowed(method, "POST"));
            }
            Ok(mutation(
                Op::Node {
                    drained: *action == "drain",
                    deadline: None,
                },
                false,
            ))
        }
        ["api", "v1", "reload"] if *method == Method::Post => Ok(mutation(Op::Reload, false)),
        ["api", "v1", "zero"] if *method == Method::Post => Ok(mutation(Op::Zero, false)),
        ["api", "v1", "reload" | "zero"] => Err(not_allowed(method, "POST")),
        ["" | "metrics"] | ["api", "v1", "status" | "config"] => Err(not_allowed(method, "GET")),
        _ => Err(ApiError::new(404, format!("no such resource: {path}"))
            .with_fix("see docs/api/openapi.json for the routes")),
    }
}

fn json<T: Serialize>(status: u16, value: &T) -> Response {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    Response::new(status, "application/json", body)
}

pub fn error(err: &ApiError) -> Response {
    json(err.status, err)
}

/// The body of a change, filled into its edit.
fn with_body(op: Op, body: &[u8]) -> Result<Op, ApiError> {
    let parse = || -> Result<serde_json::Value, ApiError> {
        serde_json::from_slice(body).map_err(|err| {
            ApiError::new(400, format!("the body is not JSON: {err}"))
                .with_fix("send a JSON object with the config file's keys")
        })
    };
    Ok(match op {
        Op::Edit(Edit::AddService(_)) => Op::Edit(Edit::AddService(parse()?)),
        Op::Edit(Edit::ReplaceService(name, _)) => Op::Edit(Edit::ReplaceService(name, parse()?)),
        Op::Edit(Edit::AddBackend(name, _)) => Op::Edit(Edit::AddBackend(name, parse()?)),
        Op::Edit(Edit::ReplaceBackend(name, selector, _)) => {
            Op::Edit(Edit::ReplaceBackend(name, selector, parse()?))
        }
        Op::Node {
            drained: true,
            deadline: _,
        } if !body.iter().all(u8::is_ascii_whitespace) => Op::Node {
            drained: true,
            deadline: Some(drain_deadline(&parse()?)?),
        },
        other => other,
    })
}

/// A drain's body: `{"deadline": "60s"}` (or no body: bgp.drain_deadline).
fn drain_deadline(body: &serde_json::Value) -> Result<std::time::Duration, ApiError> {
    let fix = "send {\"deadline\": \"60s\"} (at most \"24h\"), or no body for bgp.drain_deadline";
    let text = body
        .as_object()
        .filter(|object| object.keys().all(|key| key == "deadline"))
        .and_then(|object| object.get("deadline"))
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| ApiError::new(400, "the body holds no deadline").with_fix(fix))?;
    pnlb_core::duration::parse(text)
        .filter(|deadline| *deadline <= std::time::Duration::from_secs(24 * 3600))
        .ok_or_else(|| ApiError::new(400, format!("{text:?} is not a deadline")).with_fix(fix))
}

fn status(calls: &mpsc::Sender<ApiCall>) -> Result<Status, ApiError> {
    match ask(calls, Op::Status) {
        Reply::Status(status) => Ok(*status),
        Reply::Failed(err) => Err(err),
        _ => Err(ApiError::new(500, "unexpected answer from the daemon")),
    }
}

fn service_status(calls: &mpsc::Sender<ApiCall>, name: &str) -> Result<ServiceStatus, ApiError> {
    match ask(calls, Op::ServiceStatus(name.to_string())) {
        Reply::Service(Some(service)) => Ok(*service),
        Reply::Service(None) => Err(no_service(name)),
        Reply::Failed(err) => Err(err),
        _ => Err(ApiError::new(500, "unexpected answer from the daemon")),
    }
}

fn no_service(name: &str) -> ApiError {
    ApiError::new(404, format!("no service named {name:?}"))
        .with_fix("GET /api/v1/services lists them")
}

pub fn serve(route: Route, body: &[u8], calls: &mpsc::Sender<ApiCall>) -> Response {
    let answer = || -> Result<Response, ApiError> {
        Ok(match route {
            Route::Dashboard => Response::new(
                200,
                "text/html; charset=utf-8",
                crate::dashboard::PAGE.as_bytes().to_vec(),
            ),
            Route::Metrics => Response::new(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(&status(calls)?).into_bytes(),
            ),
            Route::Status => json(200, &status(calls)?),
            Route::Document => match ask(calls, Op::Document) {
                Reply::Document(document) => json(200, &document),
                Reply::Failed(err) => return Err(err),
                _ => return Err(ApiError::new(500, "unexpected answer from the daemon")),
            },
            Route::Services => json(200, &status(calls)?.services),
            Route::Service(name) => json(200, &service_status(calls, &name)?),
            Route::Backends(name) => json(200, &service_status(calls, &name)?.backends),
            Route::Backend(name, selector) => {
                let service = service_status(calls, &name)?;
                let backend = service
                    .backends
                    .iter()
                    .find(|b| {
                        b.address == selector.address && selector.port.is_none_or(|p| p == b.port)
                    })
                    .ok_or_else(|| {
                        ApiError::new(404, format!("service {name} has no backend {selector}"))
                    })?;
                json(200, backend)
            }
            Route::Change(op, code) => match ask(calls, with_body(op, body)?) {
                Reply::Done(done) => json(code, &done),
                Reply::Failed(err) => return Err(err),
                _ => return Err(ApiError::new(500, "unexpected answer from the daemon")),
            },
        })
    };
    answer().unwrap_or_else(|err| error(&err))
}
