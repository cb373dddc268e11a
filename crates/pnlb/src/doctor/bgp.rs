//! `pnlb doctor --lb` for a node behind ECMP ([bgp]): BIRD runs and answers
//! on the configured socket, has the protocols pnlb's routes file holds,
//! and has a BGP session up; the routes file can be written.

use pnlb_core::config::Bgp;

use super::{Finding, Level};
use crate::bgp::bird;

pub(super) fn check(bgp: &Bgp) -> Vec<Finding> {
    let mut findings = Vec::new();
    let socket = bgp.bird_socket.display();
    let protocols = match bird::command(&bgp.bird_socket, "show protocols") {
        Ok(text) => {
            findings.push(Finding::ok(format!("BIRD answers on {socket}")));
            text
        }
        Err(err) => {
            findings.push(Finding::problem(
                Level::Fail,
                format!("BIRD: {err}"),
                format!("start BIRD with its control socket at {socket} (bird -s {socket}, or the bird service), or set bgp.bird_socket to where it is"),
            ));
            return findings;
        }
    };
    let routes = bgp.routes_file.display();
    if protocols.contains("pnlb_vips4") && protocols.contains("pnlb_vips6") {
        findings.push(Finding::ok(format!(
            "BIRD has the protocols pnlb_vips4 and pnlb_vips6 ({routes})"
        )));
    } else {
        findings.push(Finding::problem(
            Level::Fail,
            format!("BIRD has no protocol pnlb_vips4 / pnlb_vips6: it does not include {routes}"),
            format!("add `include \"{routes}\";` to bird.conf (pnlb writes the file at start; create it empty before BIRD's first start) and export proto \"pnlb_vips4\" / \"pnlb_vips6\" to the routers"),
        ));
    }
    if protocols.contains("BGP") && protocols.contains("Established") {
        findings.push(Finding::ok("a BGP session of BIRD is established".into()));
    } else {
        findings.push(Finding::problem(
            Level::Warn,
            "no BGP session of BIRD is established: nothing this node announces reaches a router".into(),
            "check BIRD's bgp protocols (birdc show protocols all): neighbor address and AS, and that the router peers with this node".into(),
        ));
    }
    match bgp.routes_file.parent() {
        Some(dir) if dir.is_dir() => {}
        _ => findings.push(Finding::problem(
            Level::Fail,
            format!("the directory of bgp.routes_file {routes} does not exist"),
            "create it, or set bgp.routes_file to a file in an existing directory".into(),
        )),
    }
    findings
}
