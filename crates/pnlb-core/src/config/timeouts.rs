//! `[timeouts]`: idle timeouts per connection state, with IPVS's defaults.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};

/// Idle timeouts per connection state, as IPVS has them (`ipvsadm --set`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: Duration,
    pub tcp_fin: Duration,
    pub tcp_syn: Duration,
    pub tcp_close: Duration,
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp: Duration::from_secs(900),
            tcp_fin: Duration::from_secs(120),
            tcp_syn: Duration::from_secs(60),
            tcp_close: Duration::from_secs(10),
            udp: Duration::from_secs(300),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    tcp: Option<String>,
    tcp_fin: Option<String>,
    tcp_syn: Option<String>,
    tcp_close: Option<String>,
    udp: Option<String>,
}

impl Validator<'_> {
    pub(super) fn timeouts(&self, raw: Option<RawTimeouts>) -> Result<Timeouts, ConfigError> {
        let mut timeouts = Timeouts::default();
        let Some(raw) = raw else { return Ok(timeouts) };
        for (name, text, slot) in [
            ("tcp", raw.tcp, &mut timeouts.tcp),
            ("tcp_fin", raw.tcp_fin, &mut timeouts.tcp_fin),
            ("tcp_syn", raw.tcp_syn, &mut timeouts.tcp_syn),
            ("tcp_close", raw.tcp_close, &mut timeouts.tcp_close),
            ("udp", raw.udp, &mut timeouts.udp),
        ] {
            if let Some(text) = text {
                let value = self.duration(&format!("timeouts.{name}"), &text)?;
                if value < Duration::from_secs(1) {
                    return Err(self.error(
                        format!("timeouts.{name}"),
                        format!("{text:?} is too short"),
                        "use at least \"1s\" (idle entries are swept once a second)",
                    ));
                }
                *slot = value;
            }
        }
        Ok(timeouts)
    }
}
