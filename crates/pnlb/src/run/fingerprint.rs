//! The fingerprint of what every node behind the same VIPs must agree on
//! to give a flow the same backend (docs/scale-out.md): each service's
//! listener, method and scheduling, its backends in order with their
//! weights, and the flow-hash seed. Settings that are each node's own (SNAT
//! addresses, tunnel sources, health checks, limits) stay out.
//!
//! The seed is a secret: it goes in through PBKDF2 (100,000 rounds of
//! HMAC-SHA256, salted with the deployment's VIPs), so the fingerprint,
//! which remote readers of the API see, does not give it away to a cheap
//! search of its 2^32 values. That slow part is redone only when the VIPs
//! change. Each service is hashed on its own and the fingerprint is the
//! hash of the tag and those, in the config's order: a change to one
//! service hashes that one again (the whole config's text took 42 ms at
//! 10,000 services), and only when the fingerprint is next read (an API
//! edit does not wait for it).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use openssl::hash::{hash, MessageDigest};
use pnlb_core::config::{Config, Service};

const ROUNDS: usize = 100_000;

/// Fingerprints configs for one flow-hash seed.
pub struct Fingerprinter {
    seed: u32,
    /// The seed through PBKDF2, and the VIPs it was salted with.
    tag: Option<(Vec<IpAddr>, [u8; 32])>,
    /// Each service's own hash, by name.
    services: HashMap<String, [u8; 32]>,
    /// The fingerprint as last worked out; None once a service changed.
    value: Option<String>,
}

impl Fingerprinter {
    pub fn new(seed: u32) -> Self {
        Self {
            seed,
            tag: None,
            services: HashMap::new(),
            value: None,
        }
    }

    /// The fingerprint of `config`: 16 hex digits.
    pub fn of(&mut self, config: &Config) -> String {
        self.services.clear();
        self.value = None;
        self.current(config)
    }

    /// Service `name` changed (or was added or removed) since the config
    /// last fingerprinted: [`Self::current`] hashes it again.
    pub fn changed(&mut self, name: &str) {
        self.services.remove(name);
        self.value = None;
    }

    /// The fingerprint of `config`, which differs from the one last
    /// fingerprinted at most in the services named to [`Self::changed`].
    pub fn current(&mut self, config: &Config) -> String {
        if let Some(value) = &self.value {
            return value.clone();
        }
        let value = self.combine(config);
        self.value = Some(value.clone());
        value
    }

    /// The fingerprint as last worked out ([`Self::current`] first).
    pub fn last(&self) -> &str {
        self.value.as_deref().unwrap_or("unavailable")
    }

    fn combine(&mut self, config: &Config) -> String {
        let mut vips: Vec<IpAddr> = config.services.iter().map(|s| s.vip).collect();
        vips.sort();
        vips.dedup();
        if self.tag.as_ref().is_none_or(|(salted, _)| *salted != vips) {
            let salt: Vec<u8> = vips
                .iter()
                .flat_map(|vip| vip.to_string().into_bytes())
                .collect();
            let mut tag = [0u8; 32];
            if let Err(err) = openssl::pkcs5::pbkdf2_hmac(
                &self.seed.to_be_bytes(),
                &salt,
                ROUNDS,
                MessageDigest::sha256(),
                &mut tag,
            ) {
                return format!("unavailable ({err})");
            }
            self.tag = Some((vips, tag));
        }
        let Some((_, tag)) = &self.tag else {
            return "unavailable".into();
        };
        let mut input = Vec::with_capacity(32 * (config.services.len() + 1));
        input.extend_from_slice(tag);
        for service in &config.services {
            let digest = match self.services.get(&service.name) {
                Some(digest) => *digest,
                None => match hash(MessageDigest::sha256(), canonical(service).as_bytes()) {
                    Ok(digest) => {
                        let mut own = [0u8; 32];
                        own.copy_from_slice(&digest);
                        self.services.insert(service.name.clone(), own);
                        own
                    }
                    Err(err) => return format!("unavailable ({err})"),
                },
            };
            input.extend_from_slice(&digest);
        }
        match hash(MessageDigest::sha256(), &input) {
            Ok(digest) => digest[..8].iter().fold(String::new(), |mut text, byte| {
                let _ = write!(text, "{byte:02x}");
                text
            }),
            Err(err) => format!("unavailable ({err})"),
        }
    }
}

/// What the fingerprint covers of a service, a line for it and one per
/// backend.
fn canonical(service: &Service) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "service {} {} {} {} {} {} {:?} {} {:?} {:?}",
        service.name,
        service.vip,
        service.port,
        service.protocol,
        service.method,
        service.scheduler,
        service.hash_key,
        service.table_size,
        service.persistence,
        service.tunnel.as_ref().map(|t| t.encap),
    );
    for backend in &service.backends {
        let _ = writeln!(
            out,
            "backend {} {} {}",
            backend.address, backend.port, backend.weight
        );
    }
    if let Some(fallback) = &service.fallback {
        let _ = writeln!(
            out,
            "fallback {} {} {}",
            fallback.address, fallback.port, fallback.weight
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(config: &Config, seed: u32) -> String {
        Fingerprinter::new(seed).of(config)
    }

    fn config(extra: &str) -> Config {
        let text = format!(
            "[daemon]\ninterfaces = [\"eth0\"]\n\n[[service]]\nname = \"web\"\nvip = \"10.77.100.1\"\nport = 80\nmethod = \"dr\"\n{extra}\n[[service.backend]]\naddress = \"10.77.1.11\"\n[[service.backend]]\naddress = \"10.77.1.12\"\n"
        );
        pnlb_core::config::parse(std::path::Path::new("lb.toml"), &text).unwrap()
    }

    #[test]
    fn nodes_agree_on_scheduling_and_the_seed_not_on_their_own_settings() {
        let base = of(&config(""), 7);
        assert_eq!(base.len(), 16, "{base}");
        assert_eq!(of(&config(""), 7), base, "deterministic");
        assert_ne!(of(&config(""), 8), base, "another seed");
        assert_ne!(
            of(&config("scheduler = \"rr\""), 7),
            base,
            "another scheduler"
        );
        assert_eq!(
            of(&config("source_max_flows = 10\nnew_flow_rate = 100"), 7),
            base,
            "limits are each node's own"
        );
    }

    #[test]
    fn a_fingerprint_worked_out_again_for_one_service_is_the_whole_ones() {
        let mut config = config("");
        let mut fingerprinter = Fingerprinter::new(7);
        fingerprinter.of(&config);
        config.services[0].backends[1].weight = 5;
        fingerprinter.changed("web");
        assert_eq!(fingerprinter.current(&config), of(&config, 7));
        assert_eq!(fingerprinter.last(), of(&config, 7));
        config.services.clear();
        fingerprinter.changed("web");
        assert_eq!(fingerprinter.current(&config), of(&config, 7));
    }
}
