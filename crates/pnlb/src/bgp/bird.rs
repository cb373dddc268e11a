//! BIRD, as pnlb drives it: the routes file it includes (static protocols
//! `pnlb_vips4` and `pnlb_vips6` holding the VIPs this node announces) and
//! its control socket, where `configure` makes it read the file again.
//!
//! The control socket speaks lines of a four-digit code and text: a `-`
//! after the code continues the reply, a space ends it; codes from 8000 up
//! are errors (BIRD's doc/reply_codes).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long BIRD may take to answer (a reconfiguration reads the files).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The routes file for `vips`: one blackhole route per VIP (BIRD exports
/// it with its own next hop; nothing goes to the kernel unless BIRD's
/// config says so).
pub fn routes_file(vips: &BTreeSet<IpAddr>) -> String {
    let mut out = String::from(
        "# Written by pnlb (bgp.routes_file): the VIPs this node announces now.\n\
         # Do not edit; include it in bird.conf and export proto \"pnlb_vips4\" / \"pnlb_vips6\".\n",
    );
    for (name, channel, v6) in [("pnlb_vips4", "ipv4", false), ("pnlb_vips6", "ipv6", true)] {
        let _ = writeln!(out, "protocol static {name} {{\n\t{channel};");
        for vip in vips.iter().filter(|vip| vip.is_ipv6() == v6) {
            let length = if v6 { 128 } else { 32 };
            let _ = writeln!(out, "\troute {vip}/{length} blackhole;");
        }
        out.push_str("}\n");
    }
    out
}

/// Writes `text` to `path` whole (a temporary file renamed over it), so
/// BIRD never reads half a file.
pub fn write_routes(path: &Path, text: &str) -> Result<(), String> {
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: not a file name", path.display()))?;
    let temporary = path.with_file_name(format!(".{}.pnlb-new", name.to_string_lossy()));
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|err| format!("writing {}: {err}", path.display()))
}

/// Asks BIRD at `socket` to read its configuration again; its answer.
pub fn configure(socket: &Path) -> Result<String, String> {
    command(socket, "configure")
        .map_err(|err| err.replace("BIRD refused the command", "BIRD refused the configuration"))
}

/// Sends one command to BIRD at `socket`; its whole answer, or why not.
pub fn command(socket: &Path, command: &str) -> Result<String, String> {
    let stream = UnixStream::connect(socket).map_err(|err| {
        format!(
            "BIRD's control socket {}: {err} (is bird running with -s {}?)",
            socket.display(),
            socket.display()
        )
    })?;
    let _ = stream.set_read_timeout(Some(ANSWER_WITHIN));
    let _ = stream.set_write_timeout(Some(ANSWER_WITHIN));
    let mut reader = BufReader::new(
        stream
            .try_clone()
            .map_err(|err| format!("BIRD's control socket: {err}"))?,
    );
    let greeting = read_reply(&mut reader)?;
    if greeting.code != 1 {
        return Err(format!("BIRD greeted with {}", greeting.text));
    }
    (&stream)
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|err| format!("BIRD's control socket: {err}"))?;
    let reply = read_reply(&mut reader)?;
    if reply.code >= 8000 {
        return Err(format!("BIRD refused the command: {}", reply.text));
    }
    Ok(reply.text)
}

/// A whole reply: its last code, and its lines' text joined.
#[derive(Debug)]
struct Reply {
    code: u32,
    text: String,
}

fn read_reply(reader: &mut impl BufRead) -> Result<Reply, String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let read = reader
            .read_line(&mut line)
            .map_err(|err| format!("reading BIRD's answer: {err}"))?;
        if read == 0 {
            return Err("BIRD closed its control socket mid-answer".into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (code, last, text) = parse_line(line);
        lines.push(text.to_string());
        if last {
            return Ok(Reply {
                code: code.unwrap_or(0),
                text: lines.join(" / "),
            });
        }
    }
}

/// A reply line: its code (none on a continuation line that starts with a
/// space), whether it ends the reply, and its text.
fn parse_line(line: &str) -> (Option<u32>, bool, &str) {
    let code = line
        .get(..4)
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse().ok());
    match (code, line.as_bytes().get(4)) {
        (Some(code), Some(b' ')) => (Some(code), true, &line[5..]),
        (Some(code), None) => (Some(code), true, ""),
        (Some(code), Some(_)) => (Some(code), false, line.get(5..).unwrap_or("")),
        (None, _) => (None, false, line.trim_start()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routes_file_holds_each_family_in_its_own_protocol() {
        let vips: BTreeSet<IpAddr> = ["10.77.100.1", "fd77:100::1", "10.77.100.2"]
            .iter()
            .map(|v| v.parse().unwrap())
            .collect();
        let text = routes_file(&vips);
        assert!(text.contains(
            "protocol static pnlb_vips4 {\n\tipv4;\n\troute 10.77.100.1/32 blackhole;\n\troute 10.77.100.2/32 blackhole;\n}\n"
        ), "{text}");
        assert!(
            text.contains(
                "protocol static pnlb_vips6 {\n\tipv6;\n\troute fd77:100::1/128 blackhole;\n}\n"
            ),
            "{text}"
        );
        let none = routes_file(&BTreeSet::new());
        assert!(
            none.contains("protocol static pnlb_vips4 {\n\tipv4;\n}\n"),
            "{none}"
        );
    }

    #[test]
    fn replies_end_at_a_code_followed_by_a_space() {
        let answer = b"0002-Reading configuration from /etc/bird/bird.conf\n0003 Reconfigured\n";
        let reply = read_reply(&mut &answer[..]).unwrap();
        assert_eq!(reply.code, 3);
        let answer = b"0002-Reading configuration from /etc/bird/bird.conf\n8002 /etc/bird/pnlb.conf:3:23 syntax error\n";
        let reply = read_reply(&mut &answer[..]).unwrap();
        assert_eq!(reply.code, 8002);
        assert!(reply.text.contains("syntax error"));
        let cut = b"0002-Reading configuration\n";
        assert!(read_reply(&mut &cut[..]).is_err());
        assert_eq!(parse_line(" lb_a BGP up"), (None, false, "lb_a BGP up"));
        assert_eq!(parse_line("0000"), (Some(0), true, ""));
    }
}
