//! keepalived's health checkers as pnlb checks. keepalived marks a server
//! up on its first passing check and down after the check and `retry`
//! retries fail; pnlb's rise = 1 and fall = retry + 1 say the same, with
//! every check one interval apart.

use std::net::IpAddr;

use super::super::model::{CheckKind, Health, Notes};
use super::super::render::duration;
use super::syntax::Statement;

/// Settings a virtual server passes to its real servers, and a real server
/// to its checkers (keepalived.conf(5): "the virtual server setting is the
/// default for real servers, and the real server setting is the default
/// for checkers").
#[derive(Clone, Debug, Default)]
pub struct Inherited {
    pub delay_loop_ms: Option<u64>,
    pub retry: Option<u32>,
    pub delay_before_retry_ms: Option<u64>,
    pub virtualhost: Option<String>,
    pub alpha: bool,
}

impl Inherited {
    /// Takes the keywords of `statement`'s level that later levels inherit;
    /// true when the keyword was one of them.
    pub fn take(&mut self, statement: &Statement) -> bool {
        let arg = statement.arg(1);
        match statement.keyword() {
            "delay_loop" => self.delay_loop_ms = arg.and_then(seconds_ms),
            "retry" | "nb_get_retry" => self.retry = arg.and_then(|a| a.parse().ok()),
            "delay_before_retry" => self.delay_before_retry_ms = arg.and_then(seconds_ms),
            "virtualhost" => self.virtualhost = arg.map(str::to_string),
            "alpha" => self.alpha = arg.is_none_or(is_true),
            "warmup" => {}
            _ => return false,
        }
        true
    }
}

fn is_true(word: &str) -> bool {
    matches!(word, "on" | "true" | "yes")
}

/// keepalived timers: seconds, with a fraction allowed.
pub fn seconds_ms(text: &str) -> Option<u64> {
    let seconds: f64 = text.parse().ok()?;
    (0.0..1e9)
        .contains(&seconds)
        .then(|| (seconds * 1000.0).round() as u64)
}

/// keepalived's default delay_loop and connect_timeout.
const DEFAULT_DELAY_LOOP_MS: u64 = 60_000;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// The checkers keepalived knows; others are not checkers at all.
pub fn is_checker(keyword: &str) -> bool {
    matches!(
        keyword,
        "TCP_CHECK"
            | "HTTP_GET"
            | "SSL_GET"
            | "MISC_CHECK"
            | "SMTP_CHECK"
            | "DNS_CHECK"
            | "UDP_CHECK"
            | "PING_CHECK"
            | "FILE_CHECK"
            | "BFD_CHECK"
    )
}

/// A checker as a pnlb check, with comments on how they differ; None when
/// pnlb has nothing like it (noted).
pub fn checker(
    statement: &Statement,
    inherited: &Inherited,
    backend: IpAddr,
    notes: &mut Notes,
    comments: &mut Vec<String>,
) -> Option<Health> {
    let kind_name = statement.keyword();
    let mut settings = inherited.clone();
    let mut connect_timeout_ms = None;
    let mut port = None;
    for child in statement.children() {
        if settings.take(child) {
            continue;
        }
        match child.keyword() {
            "connect_timeout" => connect_timeout_ms = child.arg(1).and_then(seconds_ms),
            "connect_port" => port = child.arg(1).and_then(|p| p.parse::<u16>().ok()),
            "connect_ip"
                if child.arg(1).and_then(|a| a.parse::<IpAddr>().ok()) != Some(backend) =>
            {
                notes.skipped(
                    child.line,
                    format!(
                        "{kind_name} connect_ip {}: pnlb checks the backend's own address",
                        child.arg(1).unwrap_or("")
                    ),
                );
            }
            _ => {}
        }
    }
    // MISC_CHECK retries not at all by default, DNS_CHECK three times.
    let default_retry = match kind_name {
        "MISC_CHECK" => 0,
        "DNS_CHECK" => 3,
        _ => 1,
    };
    let retry = settings.retry.unwrap_or(default_retry);
    let interval_ms = settings
        .delay_loop_ms
        .unwrap_or(DEFAULT_DELAY_LOOP_MS)
        .max(100);

    let kind = match kind_name {
        "TCP_CHECK" => CheckKind::Tcp,
        "HTTP_GET" | "SSL_GET" => http(statement, &settings, notes, comments),
        "MISC_CHECK" => {
            let (kind, timeout) = misc(statement, interval_ms, notes, comments)?;
            connect_timeout_ms = Some(timeout);
            kind
        }
        "SMTP_CHECK" => {
            comments.push("SMTP_CHECK: pnlb checks that the SMTP port accepts a connection; keepalived also reads the 220/250/221 replies".into());
            for host in statement
                .children()
                .iter()
                .filter(|c| c.keyword() == "host")
            {
                let ip = host
                    .children()
                    .iter()
                    .find(|c| c.keyword() == "connect_ip")
                    .and_then(|c| c.arg(1));
                match ip.and_then(|ip| ip.parse::<IpAddr>().ok()) {
                    Some(ip) if ip == backend || ip.is_unspecified() => {
                        if let Some(p) = host
                            .children()
                            .iter()
                            .find(|c| c.keyword() == "connect_port")
                            .and_then(|c| c.arg(1)?.parse().ok())
                        {
                            port = Some(p);
                        }
                    }
                    _ => notes.skipped(
                        host.line,
                        format!(
                            "SMTP_CHECK host {}: pnlb checks the backend's own address only",
                            ip.unwrap_or("(no connect_ip)")
                        ),
                    ),
                }
            }
            CheckKind::Tcp
        }
        "DNS_CHECK" => dns(statement, notes, comments)?,
        "UDP_CHECK" => udp(statement, notes, comments)?,
        "PING_CHECK" => {
            let timeout = connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS);
            comments.push("PING_CHECK: pnlb runs `ping` as an exec check (install iputils-ping); keepalived sends the echo request itself".into());
            CheckKind::Exec {
                command: vec![
                    "ping".into(),
                    "-c".into(),
                    "1".into(),
                    "-W".into(),
                    timeout.div_ceil(1000).max(1).to_string(),
                    backend.to_string(),
                ],
            }
        }
        other => {
            notes.skipped(
                statement.line,
                format!("{other}: pnlb has no check like it; the backend is not checked"),
            );
            return None;
        }
    };

    let mut timeout_ms = connect_timeout_ms
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS)
        .max(1);
    let mut interval_ms = interval_ms;
    if timeout_ms > interval_ms {
        // keepalived starts the next check delay_loop after the last one
        // ends, so a slow answer within connect_timeout still counts.
        comments.push(format!(
            "keepalived: delay_loop {} with connect_timeout {}; pnlb's interval is at least its timeout",
            duration(interval_ms),
            duration(timeout_ms)
        ));
        interval_ms = timeout_ms;
    }
    if retry > 0 {
        let delay = settings.delay_before_retry_ms.unwrap_or(1000);
        comments.push(format!(
            "keepalived retries a failed check {retry} time(s), {} apart; pnlb takes a backend down after {} failed checks, one interval apart",
            duration(delay),
            retry + 1
        ));
    }
    if settings.alpha {
        comments.push("alpha: keepalived starts each server down until a check passes; pnlb sends it traffic until a check fails".into());
    }
    timeout_ms = timeout_ms.min(interval_ms);
    Some(Health {
        kind,
        interval_ms,
        timeout_ms,
        rise: 1,
        fall: (retry + 1).min(100),
        port,
    })
}

fn http(
    statement: &Statement,
    settings: &Inherited,
    notes: &mut Notes,
    comments: &mut Vec<String>,
) -> CheckKind {
    let urls: Vec<&Statement> = statement
        .children()
        .iter()
        .filter(|c| c.keyword() == "url")
        .collect();
    let mut path = "/".to_string();
    let mut host = settings.virtualhost.clone();
    // keepalived accepts any 2xx unless told otherwise.
    let mut expect_status = "200-299".to_string();
    if let Some(url) = urls.first() {
        for item in url.children() {
            match (item.keyword(), item.arg(1)) {
                ("path", Some(p)) if p.starts_with('/') => path = p.to_string(),
                ("path", Some(p)) => path = format!("/{p}"),
                ("status_code", Some(code)) => {
                    if item.words.len() > 2 {
                        comments.push(format!(
                            "status_code {}: pnlb takes one code or range; the first is used",
                            item.words[1..].join(" ")
                        ));
                    }
                    expect_status = code.to_string();
                }
                ("virtualhost", Some(h)) => host = Some(h.to_string()),
                ("digest", Some(_)) => comments.push(
                    "HTTP check: keepalived also compares the body's MD5 digest; pnlb checks the status only".into(),
                ),
                ("regex", Some(_)) => comments.push(
                    "HTTP check: keepalived also matches the body against a regex; pnlb checks the status only".into(),
                ),
                _ => {}
            }
        }
    }
    for extra in urls.iter().skip(1) {
        notes.skipped(
            extra.line,
            "a second url in one HTTP check: pnlb checks one path per backend (the first)",
        );
    }
    CheckKind::Http {
        tls: statement.keyword() == "SSL_GET",
        path,
        host,
        expect_status,
    }
}

/// MISC_CHECK runs a program; exit 0 is up, 1 down, and with misc_dynamic
/// 2-255 are up too (with a new weight, which pnlb does not take).
fn misc(
    statement: &Statement,
    delay_loop_ms: u64,
    notes: &mut Notes,
    comments: &mut Vec<String>,
) -> Option<(CheckKind, u64)> {
    let mut path = None;
    let mut timeout = None;
    let mut dynamic = false;
    for item in statement.children() {
        match item.keyword() {
            "misc_path" => path = Some(item.words[1..].join(" ")),
            "misc_timeout" => timeout = item.arg(1).and_then(seconds_ms),
            "misc_dynamic" => dynamic = true,
            "user" => notes.skipped(
                item.line,
                "MISC_CHECK user: pnlb runs exec checks as its own user",
            ),
            _ => {}
        }
    }
    let Some(path) = path.filter(|p| !p.trim().is_empty()) else {
        notes.skipped(
            statement.line,
            "MISC_CHECK without misc_path (keepalived drops it too)",
        );
        return None;
    };
    let shell = path.contains(|c: char| "$;|&<>`'\"*?()[]{}~\\".contains(c));
    let command = if dynamic {
        comments.push("misc_dynamic: exit codes 2-255 count as up, as in keepalived; the weight they set is not taken".into());
        vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("{path}; [ $? -ne 1 ]"),
        ]
    } else if shell {
        vec!["/bin/sh".into(), "-c".into(), path]
    } else {
        path.split_whitespace().map(str::to_string).collect()
    };
    Some((
        CheckKind::Exec { command },
        timeout.unwrap_or(delay_loop_ms),
    ))
}

/// DNS_CHECK asks for `name` (default ".") of `type` (default SOA).
fn dns(statement: &Statement, notes: &mut Notes, comments: &mut Vec<String>) -> Option<CheckKind> {
    let mut name = ".".to_string();
    let mut qtype = "SOA".to_string();
    for item in statement.children() {
        match (item.keyword(), item.arg(1)) {
            ("name", Some(n)) => name = n.to_string(),
            ("type", Some(t)) => qtype = t.to_ascii_uppercase(),
            _ => {}
        }
    }
    let Some(query) = dns_query(&name, &qtype) else {
        notes.skipped(
            statement.line,
            format!("DNS_CHECK for {name:?} type {qtype}: cannot be sent as a pnlb udp check"),
        );
        return None;
    };
    comments.push(format!(
        "DNS_CHECK ({qtype} {name}): pnlb sends the same query and accepts any answer; keepalived also checks the answer's header"
    ));
    Some(CheckKind::Udp {
        payload: query,
        expect: None,
    })
}

/// A DNS query in 7-bit bytes (what a pnlb udp payload can carry): ID
/// "pn", recursion desired, one question.
pub fn dns_query(name: &str, qtype: &str) -> Option<Vec<u8>> {
    let code: u8 = match qtype {
        "A" => 1,
        "NS" => 2,
        "CNAME" => 5,
        "SOA" => 6,
        "PTR" => 12,
        "MX" => 15,
        "TXT" => 16,
        "AAAA" => 28,
        _ => return None,
    };
    let mut query = vec![b'p', b'n', 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        if label.len() > 63 || !label.is_ascii() {
            return None;
        }
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, code, 0, 1]);
    query.iter().all(|&b| b < 0x80).then_some(query)
}

fn udp(statement: &Statement, notes: &mut Notes, comments: &mut Vec<String>) -> Option<CheckKind> {
    let mut payload = Vec::new();
    let mut expect = None;
    let mut require_reply = false;
    for item in statement.children() {
        match item.keyword() {
            "payload" => match hex(&item.words[1..].join("")) {
                Some(bytes) if bytes.iter().all(|&b| b < 0x80) => payload = bytes,
                _ => {
                    notes.skipped(
                        item.line,
                        "UDP_CHECK payload: pnlb's udp check sends text (7-bit bytes); the backend is not checked",
                    );
                    return None;
                }
            },
            "require_reply" => {
                require_reply = true;
                if item.words.len() > 1 {
                    match hex(&item.words[1..].join("")).and_then(|b| String::from_utf8(b).ok()) {
                        Some(text) if text.chars().all(|c| c.is_ascii_graphic() || c == ' ') => {
                            comments.push("UDP_CHECK require_reply: keepalived matches the reply's first bytes; pnlb looks for them anywhere in it".into());
                            expect = Some(text);
                        }
                        _ => comments.push("UDP_CHECK require_reply data: not comparable by pnlb; any reply counts".into()),
                    }
                }
            }
            "min_reply_length" | "max_reply_length" => notes.skipped(
                item.line,
                format!(
                    "UDP_CHECK {}: pnlb does not check the reply's length",
                    item.keyword()
                ),
            ),
            _ => {}
        }
    }
    if !require_reply {
        comments.push("UDP_CHECK: keepalived passes when no ICMP error comes back; pnlb's udp check needs an answer: if the service does not answer this payload, use kind = \"none\" or an exec check".into());
        notes.approximated(
            statement.line,
            "UDP_CHECK without require_reply: pnlb's udp check needs an answer (keepalived only needs no ICMP error)",
        );
    }
    Some(CheckKind::Udp { payload, expect })
}

/// keepalived's hex strings: pairs of hex digits, spaces allowed.
fn hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dns_query_is_seven_bit_and_well_formed() {
        let query = dns_query("example.com.", "A").unwrap();
        assert_eq!(&query[12..], b"\x07example\x03com\x00\x00\x01\x00\x01");
        assert!(dns_query(".", "SOA").is_some());
        assert!(dns_query("x", "BOGUS").is_none());
        assert!(dns_query("b\u{fc}cher.de", "A").is_none());
    }

    #[test]
    fn timers_take_fractions_and_hex_takes_spaces() {
        assert_eq!(seconds_ms("1.5"), Some(1500));
        assert_eq!(seconds_ms("-1"), None);
        assert_eq!(seconds_ms("inf"), None);
        assert_eq!(hex("de ad"), Some(vec![0xde, 0xad]));
        assert_eq!(hex("abc"), None);
    }
}
