//! A long file parsed on every core: the text cut at `[[service]]` headers
//! into one piece per core, each piece parsed on a thread of its own, and
//! the pieces' services joined in order. At 10,000 services (7.8 MB) one
//! TOML parse took 300-500 ms, a third or more of a start from the file;
//! in two pieces on two cores, 190-215 ms (docs/benchmarks.md).
//!
//! A cut only ever lands on a line that is exactly `[[service]]`, so each
//! piece after the first is whole services. Wherever that could read the
//! file otherwise than one parse would (a cut inside a multi-line string,
//! a section that two pieces define, any piece that does not parse), the
//! text is parsed whole instead: the result, and every error with its
//! line, are those of one parse.

use super::RawConfig;

/// Below this, one parse is quick and threads would cost more than they save.
const PIECE_AT_LEAST: usize = 512 * 1024;

/// The raw config of `text`, parsed in pieces when it is long.
pub(super) fn raw_config(text: &str) -> Result<RawConfig, toml::de::Error> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pieces = cores.min(text.len() / PIECE_AT_LEAST).max(1);
    raw_config_in(text, pieces)
}

/// [`raw_config`] in at most `pieces` pieces.
pub(super) fn raw_config_in(text: &str, pieces: usize) -> Result<RawConfig, toml::de::Error> {
    let cuts = cuts(text, pieces);
    if cuts.is_empty() {
        return toml::from_str(text);
    }
    let bounds: Vec<(usize, usize)> = std::iter::once(0)
        .chain(cuts.iter().copied())
        .zip(cuts.iter().copied().chain(std::iter::once(text.len())))
        .collect();
    // A piece that does not parse is None: the whole parse below says why.
    let parsed: Vec<Option<RawConfig>> = std::thread::scope(|scope| {
        let threads: Vec<_> = bounds[1..]
            .iter()
            .map(|&(start, end)| scope.spawn(move || toml::from_str(&text[start..end]).ok()))
            .collect();
        let (start, end) = bounds[0];
        let first = toml::from_str(&text[start..end]).ok();
        std::iter::once(first)
            .chain(
                threads
                    .into_iter()
                    .map(|thread| thread.join().ok().flatten()),
            )
            .collect()
    });
    match parsed
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .and_then(join)
    {
        Some(joined) => Ok(joined),
        None => toml::from_str(text),
    }
}

/// Where the pieces after the first start: byte offsets of `[[service]]`
/// lines, the first header never among them (so that every piece holds a
/// service header, and an inline `service = [...]` before it stays an
/// error of its own piece), at most `pieces - 1` of them, spread by size.
fn cuts(text: &str, pieces: usize) -> Vec<usize> {
    if pieces < 2 {
        return Vec::new();
    }
    let headers: Vec<usize> = line_starts(text)
        .filter(|&start| {
            let line = text[start..].split('\n').next().unwrap_or("");
            line.trim_end() == "[[service]]"
        })
        .skip(1)
        .collect();
    let mut cuts: Vec<usize> = (1..pieces)
        .filter_map(|k| {
            let target = text.len() * k / pieces;
            headers.iter().copied().find(|&start| start >= target)
        })
        .collect();
    cuts.dedup();
    cuts
}

fn line_starts(text: &str) -> impl Iterator<Item = usize> + '_ {
    std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1))
}

/// The pieces as one config; None when two define the same section (one
/// parse decides whether the file may do that).
fn join(pieces: Vec<RawConfig>) -> Option<RawConfig> {
    let mut joined = RawConfig {
        daemon: None,
        timeouts: None,
        ha: None,
        bgp: None,
        service: Vec::new(),
    };
    for piece in pieces {
        joined.daemon = only_one(joined.daemon, piece.daemon)?;
        joined.timeouts = only_one(joined.timeouts, piece.timeouts)?;
        joined.ha = only_one(joined.ha, piece.ha)?;
        joined.bgp = only_one(joined.bgp, piece.bgp)?;
        joined.service.extend(piece.service);
    }
    Some(joined)
}

/// `a` or `b`, whichever is set; None (give up) when both are.
fn only_one<T>(a: Option<T>, b: Option<T>) -> Option<Option<T>> {
    match (a, b) {
        (Some(_), Some(_)) => None,
        (a, b) => Some(a.or(b)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{syntax_error, Config, ConfigError, Validator};
    use super::*;

    /// `text` read in at most `pieces` pieces, validated as a file is.
    fn read(text: &str, pieces: usize) -> Result<Config, ConfigError> {
        let path = Path::new("lb.toml");
        let raw = raw_config_in(text, pieces).map_err(|err| syntax_error(path, text, &err))?;
        Validator { file: path }.config(raw)
    }

    fn service(i: usize) -> String {
        format!(
            "[[service]]\nname = \"svc-{i}\"\nvip = \"10.200.{}.{}\"\nport = 80\n\
             [service.health]\nkind = \"tcp\"\ninterval = \"2s\"\n\
             [[service.backend]]\naddress = \"10.201.0.{}\"\nweight = {}\n\
             [[service.backend]]\naddress = \"10.201.1.{}\"\n",
            i / 250,
            i % 250 + 1,
            i % 250 + 1,
            1 + i % 3,
            i % 250 + 1
        )
    }

    fn services(range: std::ops::Range<usize>) -> String {
        range.map(service).collect()
    }

    const HEAD: &str = "[daemon]\ninterfaces = [\"eth0\"]\n";

    /// Many pieces: every `[[service]]` line after the first is a cut.
    const EVERY_HEADER: usize = 1000;

    #[test]
    fn a_long_file_in_pieces_reads_exactly_as_one_parse() {
        let text = format!("{HEAD}{}[timeouts]\ntcp = \"10m\"\n", services(0..200));
        let whole = read(&text, 1).expect("valid");
        assert_eq!(whole.services.len(), 200);
        for pieces in [2, 3, 8, EVERY_HEADER] {
            assert!(!cuts(&text, pieces).is_empty(), "{pieces} pieces: not cut");
            assert_eq!(read(&text, pieces), Ok(whole.clone()), "{pieces} pieces");
        }
        // Long enough, the public entry cuts it too (on more than one core).
        let long = format!("{HEAD}{}", services(0..8000));
        assert!(long.len() > 2 * PIECE_AT_LEAST);
        assert_eq!(
            super::super::parse(Path::new("lb.toml"), &long),
            read(&long, 1)
        );
    }

    #[test]
    fn a_header_line_inside_a_multi_line_string_is_not_a_cut() {
        let text = format!(
            "{HEAD}{}[[service]]\nname = \"probe\"\nvip = \"10.9.9.9\"\nport = 53\nprotocol = \"udp\"\n\
             [service.health]\nkind = \"udp\"\npayload = \"\"\"\nhello\n[[service]]\nname = \"x\"\n\"\"\"\n\
             [[service.backend]]\naddress = \"10.9.8.1\"\n{}",
            services(0..3),
            services(3..6)
        );
        let whole = read(&text, 1).expect("valid");
        assert!(whole.services.iter().any(|s| s.name == "probe"));
        assert_eq!(whole.services.len(), 7);
        assert_eq!(read(&text, EVERY_HEADER), Ok(whole));
    }

    #[test]
    fn what_one_parse_rejects_pieces_reject_with_the_same_error() {
        let cases = [
            // A section defined twice, the second time after a cut.
            format!("{HEAD}{}{HEAD}", services(0..4)),
            // An inline service array and headers after it.
            format!("service = []\n{HEAD}{}", services(0..4)),
            // A syntax error in the last piece: its line in the file.
            format!("{HEAD}{}vip = \n", services(0..4)),
            // A backend table before any service.
            format!(
                "{HEAD}[[service.backend]]\naddress = \"10.1.1.1\"\n{}",
                services(0..4)
            ),
        ];
        for text in &cases {
            let whole = read(text, 1).expect_err("one parse rejects it");
            assert_eq!(read(text, EVERY_HEADER), Err(whole), "{text}");
        }
    }
}
