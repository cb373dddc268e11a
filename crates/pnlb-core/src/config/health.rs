//! `[service.health]` (and per-backend `[service.backend.health]`, whose
//! keys override the service's): what to probe, how often, and what counts
//! as healthy. Modelled on keepalived's and HAProxy's checks.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Field, Validator};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Successes in a row that bring a backend up.
    pub rise: u32,
    /// Failures in a row that take it down.
    pub fall: u32,
    /// Port to probe (the backend's port unless set).
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// A TCP connection is accepted.
    Tcp,
    Http(HttpCheck),
    /// HTTP over TLS; the certificate is not verified (as keepalived's SSL_GET).
    Https(HttpCheck),
    /// A datagram is answered (with `expect` in it, when set).
    Udp {
        payload: Vec<u8>,
        expect: Option<String>,
    },
    /// A command exits 0; it gets PNLB_BACKEND_ADDRESS and PNLB_BACKEND_PORT.
    Exec {
        command: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpCheck {
    pub method: String,
    pub path: String,
    /// Host header and TLS server name; the backend's address when unset.
    pub host: Option<String>,
    /// Inclusive range of healthy status codes.
    pub expect_status: (u16, u16),
    pub expect_body: Option<String>,
}

/// What happens to a down backend's established flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownPolicy {
    /// Let them finish (the server may still answer them, e.g. when only
    /// the check's port failed).
    Keep,
    /// Drop their connection-table entries: their next packets are
    /// scheduled to a live backend, which resets them, so clients reconnect.
    Reset,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    kind: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
    port: Option<i64>,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<String>,
    expect_body: Option<String>,
    payload: Option<String>,
    expect: Option<String>,
    command: Option<Vec<String>>,
}

impl RawHealth {
    /// The service's settings with a backend's overrides on top.
    pub(super) fn merge(service: Option<&RawHealth>, backend: Option<RawHealth>) -> RawHealth {
        let base = service.cloned().unwrap_or_default();
        let Some(own) = backend else { return base };
        RawHealth {
            kind: own.kind.or(base.kind),
            interval: own.interval.or(base.interval),
            timeout: own.timeout.or(base.timeout),
            rise: own.rise.or(base.rise),
            fall: own.fall.or(base.fall),
            port: own.port.or(base.port),
            method: own.method.or(base.method),
            path: own.path.or(base.path),
            host: own.host.or(base.host),
            expect_status: own.expect_status.or(base.expect_status),
            expect_body: own.expect_body.or(base.expect_body),
            payload: own.payload.or(base.payload),
            expect: own.expect.or(base.expect),
            command: own.command.or(base.command),
        }
    }
}

impl Validator<'_> {
    /// A validated check, or None for `kind = "none"`.
    pub(super) fn health_check(
        &self,
        key: &dyn fmt::Display,
        raw: RawHealth,
        backend_port: u16,
    ) -> Result<Option<HealthCheck>, ConfigError> {
        let at = |field: &str| format!("{key}.{field}");
        let interval = match &raw.interval {
            Some(text) => self.duration(&Field(key, "interval"), text)?,
            None => DEFAULT_INTERVAL,
        };
        let timeout = match &raw.timeout {
            Some(text) => self.duration(&Field(key, "timeout"), text)?,
            None => DEFAULT_TIMEOUT.min(interval),
        };
        if interval < Duration::from_millis(100) {
            return Err(self.error(
                at("interval"),
                "shorter than 100ms",
                "check at most ten times a second",
            ));
        }
        if timeout.is_zero() || timeout > interval {
            return Err(self.error(
                at("timeout"),
                format!("{timeout:?} is not between 0 and the interval ({interval:?})"),
                "make the timeout shorter than the interval",
            ));
        }
        let count = |name: &str, value: Option<i64>, default: u32| -> Result<u32, ConfigError> {
            match value {
                None => Ok(default),
                Some(n) if (1..=100).contains(&n) => Ok(n as u32),
                Some(n) => {
                    Err(self.error(at(name), format!("{n} is out of range"), "use 1 to 100"))
                }
            }
        };
        let rise = count("rise", raw.rise, DEFAULT_RISE)?;
        let fall = count("fall", raw.fall, DEFAULT_FALL)?;
        let port = match raw.port {
            None if backend_port == 0 => {
                return Err(self.error(
                    at("port"),
                    "a port-0 service has no port to probe",
                    "set port = 80 (the port to check) in the health table",
                ))
            }
            None => backend_port,
            Some(p) => match u16::try_from(p) {
                Ok(p) if p != 0 => p,
                _ => {
                    return Err(self.error(
                        at("port"),
                        format!("port {p} is out of range"),
                        "use 1 to 65535",
                    ))
                }
            },
        };

        let kind_name = raw.kind.clone().unwrap_or_else(|| "tcp".into());
        let only_for = |field: &str, present: bool, kinds: &str| -> Result<(), ConfigError> {
            if present {
                return Err(self.error(
                    at(field),
                    format!("{field} does not apply to kind = {kind_name:?}"),
                    format!("remove it, or use it with {kinds}"),
                ));
            }
            Ok(())
        };
        let http_fields = raw.method.is_some()
            || raw.path.is_some()
            || raw.host.is_some()
            || raw.expect_status.is_some()
            || raw.expect_body.is_some();
        let kind = match kind_name.as_str() {
            "none" => return Ok(None),
            "tcp" => {
                only_for("path", http_fields, "http/https")?;
                only_for(
                    "payload",
                    raw.payload.is_some() || raw.expect.is_some(),
                    "udp",
                )?;
                only_for("command", raw.command.is_some(), "exec")?;
                CheckKind::Tcp
            }
            "http" | "https" => {
                only_for(
                    "payload",
                    raw.payload.is_some() || raw.expect.is_some(),
                    "udp",
                )?;
                only_for("command", raw.command.is_some(), "exec")?;
                let check = self.http_check(&at, &raw)?;
                if kind_name == "http" {
                    CheckKind::Http(check)
                } else {
                    CheckKind::Https(check)
                }
            }
            "udp" => {
                only_for("path", http_fields, "http/https")?;
                only_for("command", raw.command.is_some(), "exec")?;
                let payload = raw.payload.clone().ok_or_else(|| {
                    self.error(
                        at("payload"),
                        "a udp check needs something to send",
                        "add payload = \"ping\"",
                    )
                })?;
                CheckKind::Udp {
                    payload: payload.into_bytes(),
                    expect: raw.expect.clone(),
                }
            }
            "exec" => {
                only_for("path", http_fields, "http/https")?;
                only_for(
                    "payload",
                    raw.payload.is_some() || raw.expect.is_some(),
                    "udp",
                )?;
                let command = raw
                    .command
                    .clone()
                    .filter(|c| !c.is_empty() && !c[0].is_empty())
                    .ok_or_else(|| {
                        self.error(
                            at("command"),
                            "an exec check needs a command",
                            "add command = [\"/usr/local/bin/check\", \"--quiet\"]",
                        )
                    })?;
                CheckKind::Exec { command }
            }
            other => {
                return Err(self.error(
                    at("kind"),
                    format!("unknown health check kind {other:?}"),
                    "use \"tcp\", \"http\", \"https\", \"udp\", \"exec\" or \"none\"",
                ))
            }
        };
        Ok(Some(HealthCheck {
            kind,
            interval,
            timeout,
            rise,
            fall,
            port,
        }))
    }

    fn http_check(
        &self,
        at: &dyn Fn(&str) -> String,
        raw: &RawHealth,
    ) -> Result<HttpCheck, ConfigError> {
        let method = raw.method.clone().unwrap_or_else(|| "GET".into());
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(self.error(
                at("method"),
                format!("{method:?} is not an HTTP method"),
                "use GET or HEAD",
            ));
        }
        let path = raw.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.error(
                at("path"),
                format!("{path:?} is not a request path"),
                "write it like \"/health\"",
            ));
        }
        if let Some(host) = &raw.host {
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.error(
                    at("host"),
                    format!("{host:?} is not a host name"),
                    "write it like \"www.example.com\"",
                ));
            }
        }
        let expect_status = match raw.expect_status.as_deref() {
            None => (200, 399),
            Some(text) => parse_status_range(text).ok_or_else(|| {
                self.error(
                    at("expect_status"),
                    format!("{text:?} is not a status range"),
                    "write \"200\" or \"200-399\"",
                )
            })?,
        };
        Ok(HttpCheck {
            method,
            path,
            host: raw.host.clone(),
            expect_status,
            expect_body: raw.expect_body.clone(),
        })
    }
}

fn parse_status_range(text: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
        None => {
            let code = text.trim().parse().ok()?;
            (code, code)
        }
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse;

    const BASE: &str = "[daemon]\ninterfaces = [\"eth0\"]\n\n[[service]]\nname = \"web\"\nvip = \"10.77.100.1\"\nport = 80\n";

    fn with(health: &str, backends: &str) -> Result<crate::config::Config, ConfigError> {
        parse(Path::new("lb.toml"), &format!("{BASE}{health}\n{backends}"))
    }

    const TWO: &str = "[[service.backend]]\naddress = \"10.77.1.11\"\n[[service.backend]]\naddress = \"10.77.1.12\"\n";

    #[test]
    fn no_health_table_means_unchecked_backends() {
        let config = with("", TWO).unwrap();
        assert!(config.services[0]
            .backends
            .iter()
            .all(|b| b.health.is_none()));
    }

    #[test]
    fn a_tcp_check_gets_haproxy_like_defaults() {
        let config = with("[service.health]\nkind = \"tcp\"\n", TWO).unwrap();
        let check = config.services[0].backends[0].health.clone().unwrap();
        assert_eq!(check.kind, CheckKind::Tcp);
        assert_eq!(
            (
                check.interval,
                check.timeout,
                check.rise,
                check.fall,
                check.port
            ),
            (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, 2, 3, 80)
        );
    }

    #[test]
    fn http_checks_take_method_path_host_status_and_body() {
        let health = "[service.health]\nkind = \"https\"\npath = \"/health\"\nhost = \"www.example.com\"\nexpect_status = \"200-204\"\nexpect_body = \"ok\"\nport = 443\n";
        let config = with(health, TWO).unwrap();
        let check = config.services[0].backends[1].health.clone().unwrap();
        let CheckKind::Https(http) = check.kind else {
            panic!("https")
        };
        assert_eq!(
            (http.method.as_str(), http.path.as_str()),
            ("GET", "/health")
        );
        assert_eq!(http.host.as_deref(), Some("www.example.com"));
        assert_eq!(http.expect_status, (200, 204));
        assert_eq!(check.port, 443);
    }

    #[test]
    fn a_backend_overrides_the_services_check_key_by_key() {
        let health = "[service.health]\nkind = \"http\"\npath = \"/a\"\ninterval = \"1s\"\n";
        let backends = "[[service.backend]]\naddress = \"10.77.1.11\"\n[service.backend.health]\npath = \"/b\"\n[[service.backend]]\naddress = \"10.77.1.12\"\n";
        let config = with(health, backends).unwrap();
        let path = |i: usize| match &config.services[0].backends[i].health.as_ref().unwrap().kind {
            CheckKind::Http(h) => h.path.clone(),
            _ => panic!("http"),
        };
        assert_eq!((path(0), path(1)), ("/b".to_string(), "/a".to_string()));
        assert_eq!(
            config.services[0].backends[0]
                .health
                .as_ref()
                .unwrap()
                .interval,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn udp_and_exec_checks_need_their_inputs() {
        let err = with("[service.health]\nkind = \"udp\"\n", TWO).unwrap_err();
        assert!(err.key.ends_with("health.payload"), "{err}");
        let err = with("[service.health]\nkind = \"exec\"\ncommand = []\n", TWO).unwrap_err();
        assert!(err.key.ends_with("health.command"), "{err}");
        let config = with(
            "[service.health]\nkind = \"exec\"\ncommand = [\"/bin/true\"]\n",
            TWO,
        )
        .unwrap();
        assert!(matches!(
            config.services[0].backends[0].health.as_ref().unwrap().kind,
            CheckKind::Exec { .. }
        ));
    }

    #[test]
    fn settings_of_the_wrong_kind_and_bad_values_are_rejected() {
        let cases = [
            ("kind = \"tcp\"\npath = \"/\"\n", "health.path"),
            ("kind = \"http\"\npayload = \"x\"\n", "health.payload"),
            (
                "kind = \"http\"\nexpect_status = \"99\"\n",
                "health.expect_status",
            ),
            ("kind = \"http\"\npath = \"health\"\n", "health.path"),
            (
                "kind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"2s\"\n",
                "health.timeout",
            ),
            ("kind = \"tcp\"\nrise = 0\n", "health.rise"),
            ("kind = \"ping\"\n", "health.kind"),
            ("kind = \"tcp\"\nport = 70000\n", "health.port"),
        ];
        for (health, key) in cases {
            let err = with(&format!("[service.health]\n{health}"), TWO).unwrap_err();
            assert!(err.key.ends_with(key), "{health}: {err}");
        }
    }

    #[test]
    fn down_policy_slow_start_and_fallback_parse() {
        let text = "on_backend_down = \"reset\"\nslow_start = \"30s\"\n[service.fallback]\naddress = \"10.77.1.99\"\n";
        let config = with(text, TWO).unwrap();
        let service = &config.services[0];
        assert_eq!(service.on_backend_down, DownPolicy::Reset);
        assert_eq!(service.slow_start, Duration::from_secs(30));
        assert_eq!(service.fallback.as_ref().unwrap().port, 80);
        let err = with("on_backend_down = \"panic\"\n", TWO).unwrap_err();
        assert!(err.key.ends_with("on_backend_down"), "{err}");
    }
}
