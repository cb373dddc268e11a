//! Bounded fuzzing on stable Rust (issue 18): every parser that takes input
//! from outside — the config file, API request heads, URLs and bodies, the
//! keepalived and ipvsadm importers, HA adverts and sync messages — is fed
//! mutations of real inputs (the shipped and documented configs, the
//! import corpus, messages as pnlb emits them) for a bounded time, and
//! must answer each with a value or an error, never a panic. cargo-fuzz
//! needs a nightly toolchain; this needs none and runs in CI.
//!
//! `PNLB_FUZZ_SECONDS` sets the time per target (default 2);
//! `PNLB_FUZZ_SEED` the mutator's seed (default: fixed per target, so a
//! failure reproduces). A panic names the target, the seed and the input.

use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: a fast, reproducible source of mutations.
pub struct Mutator(u64);

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `seed` changed in one to four places: bits flipped, bytes set to
    /// edge values, ranges deleted, duplicated or cut off, tokens of
    /// `dictionary` inserted or spliced in.
    pub fn mutate(&mut self, seed: &[u8], dictionary: &[&[u8]]) -> Vec<u8> {
        let mut out = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(out.len() + 1);
            match self.below(7) {
                0 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] ^= 1 << self.below(8);
                }
                1 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] = [0, 0xff, 0x7f, 0x80, b'"', b'\n'][self.below(6)];
                }
                2 => {
                    let end = (at + 1 + self.below(16)).min(out.len());
                    out.drain(at.min(end)..end);
                }
                3 => {
                    let end = (at + 1 + self.below(32)).min(out.len());
                    let copy = out[at.min(end)..end].to_vec();
                    out.splice(at..at, copy);
                }
                4 if !dictionary.is_empty() => {
                    let token = dictionary[self.below(dictionary.len())];
                    out.splice(at..at, token.iter().copied());
                }
                5 => out.truncate(at),
                _ if !dictionary.is_empty() => {
                    let end = (at + self.below(8)).min(out.len());
                    let token = dictionary[self.below(dictionary.len())];
                    out.splice(at..end, token.iter().copied());
                }
                _ => {}
            }
        }
        out
    }
}

fn budget() -> Duration {
    let seconds = std::env::var("PNLB_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(seconds.max(0.01))
}

fn seed_for(target: &str) -> u64 {
    if let Some(seed) = std::env::var("PNLB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return seed;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    target.hash(&mut hasher);
    hasher.finish()
}

/// Feeds `check` mutations of `seeds` for the time budget; panics (naming
/// the input) if `check` does. Returns how many inputs it tried.
pub fn run(
    target: &str,
    seeds: &[Vec<u8>],
    dictionary: &[&[u8]],
    mut check: impl FnMut(&[u8]),
) -> u64 {
    assert!(!seeds.is_empty(), "{target}: no seeds");
    let seed = seed_for(target);
    let mut mutator = Mutator::new(seed);
    let (started, budget) = (Instant::now(), budget());
    let mut tried = 0u64;
    // The seeds themselves first: they must pass too.
    for input in seeds {
        check(input);
    }
    while started.elapsed() < budget {
        let pick = mutator.below(seeds.len());
        let input = mutator.mutate(&seeds[pick], dictionary);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            panic!(
                "fuzz {target} (PNLB_FUZZ_SEED={seed}): a panic on input {:?}",
                String::from_utf8_lossy(&input)
            );
        }
        tried += 1;
    }
    eprintln!(
        "fuzz {target}: {tried} inputs in {:.1} s, no panic",
        started.elapsed().as_secs_f64()
    );
    tried
}

/// Files in `dir` (relative to the repository), sorted, as seeds.
pub fn files_in(dir: &str, keep: impl Fn(&Path) -> bool) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|err| panic!("{}: {err}", root.display()))
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.is_file() && keep(path))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| std::fs::read(path).expect("seed file"))
        .collect()
}

mod targets {
    use std::net::IpAddr;
    use std::path::Path;

    use super::*;
    use crate::api::edit::{self, BackendSelector, Edit};
    use crate::api::http::{self, Method, Origin};
    use crate::ctl::import::{ipvsadm, keepalived, names};
    use crate::ha::advert::{sign, Advert};
    use crate::ha::sync::{Kind, Message, SyncedFlow};

    const TOML: &[&[u8]] = &[
        b"[[service]]\n",
        b"[[service.backend]]\n",
        b"[daemon]\n",
        b"[ha]\n",
        b"[service.health]\n",
        b" = ",
        b"\"",
        b"[",
        b"]",
        b"{",
        b"}",
        b"=",
        b"\n",
        b"999999999999999999999",
        b"-1",
        b"0",
        b"65536",
        b"\"::\"",
        b"\"0.0.0.0\"",
        b"\"fd77::1/129\"",
        b"\"1s\"",
        b"\"-5ms\"",
        b"true",
        b"1e400",
        b"nan",
        b"weight = ",
        b"port = ",
        b"method = \"nat\"\n",
        b"scheduler = \"maglev\"\n",
        b"table_size = 65537\n",
    ];

    fn config_seeds() -> Vec<Vec<u8>> {
        let mut seeds = files_in("docs/examples", |p| {
            p.extension().is_some_and(|e| e == "toml")
        });
        seeds.extend(files_in("packaging", |p| {
            p.extension().is_some_and(|e| e == "toml")
        }));
        seeds
    }

    #[test]
    fn config_files() {
        run("config", &config_seeds(), TOML, |input| {
            let _ =
                pnlb_core::config::parse(Path::new("fuzz.toml"), &String::from_utf8_lossy(input));
        });
    }

    const JSON: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"\"",
        b"null",
        b"true",
        b"-1",
        b"1e999",
        b"\"name\"",
        b"\"backend\"",
        b"\"address\"",
        b"\"weight\"",
        b"\"health\"",
        b"{\"kind\": \"exec\", \"command\": [\"/bin/true\"]}",
        b"\"\\u0000\"",
        b"18446744073709551616",
        b"\"10.77.1.999\"",
        b"\"fd77::1\"",
    ];

    #[test]
    fn api_bodies() {
        let seeds = vec![
            br#"{"name": "fuzzed", "vip": "10.77.100.9", "port": 80, "method": "nat", "scheduler": "maglev", "backend": [{"address": "10.77.1.11", "port": 8080, "weight": 2}]}"#.to_vec(),
            br#"{"address": "10.77.1.13", "port": 80, "weight": 5}"#.to_vec(),
            br#"{"name": "web", "vip": "fd77:100::1", "port": 0, "protocol": "udp", "health": {"kind": "udp", "payload": "x"}, "backend": []}"#.to_vec(),
        ];
        let text = std::str::from_utf8(&config_seeds()[0])
            .unwrap_or_default()
            .to_string();
        let document: pnlb_core::config::Document = toml::from_str(&text).unwrap_or_default();
        let service = document
            .get("service")
            .and_then(|s| s.as_array())
            .and_then(|s| s.first())
            .and_then(|s| s.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("web")
            .to_string();
        let selector = BackendSelector::parse("10.77.1.11").expect("a selector");
        let origin = Path::new("api");
        let base = pnlb_core::config::validate_document(origin, &document).expect("a valid seed");
        // The daemon validates an edit's one service and the rules across
        // services (edit::revalidate); the whole document validated must
        // come to the same verdict and the same services.
        let verdicts = std::cell::Cell::new((0u64, 0u64));
        let agree = |edit: &Edit| {
            let mut changed = document.clone();
            let Ok(applied) = edit::apply(&mut changed, edit) else {
                return;
            };
            let (accepted, refused) = verdicts.get();
            let whole = pnlb_core::config::validate_document(origin, &changed);
            let mut services = base.services.clone();
            let one = edit::revalidate(
                origin,
                &changed,
                &applied.change,
                &base.daemon,
                &mut services,
            );
            assert_eq!(
                whole.is_ok(),
                one.is_ok(),
                "{edit:?}: the whole document {whole:?}, its one service {one:?}"
            );
            match whole {
                Ok(config) => {
                    assert!(config.services == services, "{edit:?}: other services");
                    verdicts.set((accepted + 1, refused));
                }
                Err(_) => {
                    assert!(services == base.services, "{edit:?}: not undone");
                    verdicts.set((accepted, refused + 1));
                }
            }
        };
        agree(&Edit::RemoveService(service.clone()));
        agree(&Edit::RemoveBackend(service.clone(), selector));
        run("api-bodies", &seeds, JSON, |input| {
            let Ok(body) = serde_json::from_slice::<serde_json::Value>(input) else {
                return;
            };
            for edit in [
                Edit::AddService(body.clone()),
                Edit::ReplaceService(service.clone(), body.clone()),
                Edit::AddBackend(service.clone(), body.clone()),
                Edit::ReplaceBackend(service.clone(), selector, body.clone()),
            ] {
                agree(&edit);
            }
        });
        let (accepted, refused) = verdicts.get();
        println!("api-bodies: whole document and one service agreed on {accepted} accepted and {refused} refused edits");
        assert!(accepted > 0 && refused > 0, "both verdicts tried");
    }

    #[test]
    fn api_heads_and_urls() {
        let seeds = vec![
            b"GET /api/v1/services/web/backends/10.77.1.11:8080 HTTP/1.1\r\nHost: lb\r\nAuthorization: Bearer x".to_vec(),
            b"POST /api/v1/services/web%20x/backends/%5Bfd77%3A%3A1%5D/drain HTTP/1.1\r\nContent-Length: 12\r\nExpect: 100-continue".to_vec(),
            b"DELETE /api/v1/services/w/backends/10.77.1.11?x=1 HTTP/1.0".to_vec(),
        ];
        let tokens: &[&[u8]] = &[
            b"%",
            b"%zz",
            b"%00",
            b"/",
            b"..",
            b"\r\n",
            b":",
            b" ",
            b"HTTP/1.1",
            b"?",
            b"[",
            b"]",
        ];
        let origin = Origin::Remote(IpAddr::from([10, 77, 0, 2]));
        run("api-heads", &seeds, tokens, |input| {
            if let Ok(head) = http::parse_head(input, origin) {
                let _ = head.content_length();
                let _ = crate::api::routes::route(&head.method, &head.target);
            }
            let url = String::from_utf8_lossy(input);
            let _ = crate::api::routes::route(&Method::Get, &url);
        });
    }

    #[test]
    fn keepalived_imports() {
        let seeds = files_in("crates/pnlb/tests/import_corpus/keepalived", |p| {
            !p.to_string_lossy().ends_with(".tsv")
        });
        let tokens: &[&[u8]] = &[
            b"{",
            b"}",
            b"\n",
            b"virtual_server ",
            b"real_server ",
            b"include ",
            b"!",
            b"\"",
            b" 0 ",
            b"65536",
            b"-1",
            b"TCP_CHECK",
            b"MISC_CHECK",
            b"misc_path ",
            b"lb_kind DR",
            b"persistence_timeout",
            b"10.0.0.1",
            b"fd00::1",
            b"@",
        ];
        run("keepalived", &seeds, tokens, |input| {
            let _ = keepalived::import(&String::from_utf8_lossy(input), None);
        });
    }

    #[test]
    fn ipvsadm_imports() {
        let seeds = files_in("crates/pnlb/tests/import_corpus/ipvsadm", |p| {
            !p.to_string_lossy().ends_with(".tsv")
        });
        let tokens: &[&[u8]] = &[
            b" -A",
            b" -a",
            b" -t ",
            b" -u ",
            b" -f ",
            b" -r ",
            b" -s ",
            b" -w ",
            b" -g",
            b" -m",
            b" -i",
            b" -p ",
            b"\\\n",
            b"'",
            b"\"",
            b"$",
            b":",
            b"[fd00::1]:80",
            b"10.0.0.1:0",
            b"-1",
            b"4294967296",
            b"\n",
        ];
        let offline = names::System::offline();
        run("ipvsadm", &seeds, tokens, |input| {
            let _ = ipvsadm::import(&String::from_utf8_lossy(input), &offline, "fuzz");
        });
    }

    const KEY: &[u8] = b"fuzz-shared-secret-0123456789";

    /// A mutation of a signed message, signed again: the parser past the
    /// MAC is what is fuzzed (a bad MAC stops at the first check).
    fn resigned(input: &[u8]) -> Vec<u8> {
        let body = &input[..input.len().saturating_sub(32)];
        let mut out = body.to_vec();
        out.extend_from_slice(&sign(KEY, body));
        out
    }

    #[test]
    fn sync_messages() {
        let flow = SyncedFlow {
            key: Default::default(),
            conn: Default::default(),
            service: Default::default(),
            backend: "10.77.1.11".parse().expect("an address"),
            backend_port: 8080,
        };
        let sender: IpAddr = "10.77.1.2".parse().expect("an address");
        let seeds: Vec<Vec<u8>> = [
            (Kind::Flows, vec![flow, flow]),
            (Kind::Ended, vec![flow]),
            (Kind::Nack, Vec::new()),
            (Kind::End, Vec::new()),
            (Kind::Request, Vec::new()),
        ]
        .into_iter()
        .map(|(kind, flows)| Message::new(kind, 1, sender, flows).emit(KEY))
        .collect();
        run("sync", &seeds, &[b"PNSY", &[3], &[0xff; 4]], |input| {
            let _ = Message::parse(input, KEY);
            let _ = Message::parse(&resigned(input), KEY);
        });
    }

    #[test]
    fn adverts() {
        let advert = Advert {
            group: 1,
            priority: 150,
            master: true,
            sender: "10.77.1.2".parse().expect("an address"),
            sequence: 42,
        };
        let seeds = vec![advert.emit(KEY).to_vec()];
        run("adverts", &seeds, &[&[0xff; 4], &[0]], |input| {
            let _ = Advert::parse(input, KEY);
            let _ = Advert::parse(&resigned(input), KEY);
        });
    }

    #[test]
    fn the_mutator_changes_things_and_reproduces() {
        let (mut a, mut b) = (Mutator::new(7), Mutator::new(7));
        let seed = b"[daemon]\ninterfaces = [\"eth0\"]\n";
        let mutated: Vec<Vec<u8>> = (0..100).map(|_| a.mutate(seed, TOML)).collect();
        assert!(mutated.iter().filter(|m| m.as_slice() != seed).count() > 90);
        assert!(
            (0..100).all(|i| b.mutate(seed, TOML) == mutated[i]),
            "same seed, same inputs"
        );
    }
}
