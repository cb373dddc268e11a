//! The importer's mappings, one behaviour per test, on small inputs; the
//! corpus test runs it over real files.

use std::path::Path;

use pnlb_core::config::{CheckKind, Config, Method};

use super::{ipvsadm, keepalived, names, Imported, NoteKind};

fn valid(imported: &Imported) -> Config {
    pnlb_core::config::parse(Path::new("imported.toml"), &imported.toml)
        .unwrap_or_else(|err| panic!("{err}\n{}", imported.toml))
}

fn skipped(imported: &Imported) -> Vec<String> {
    imported
        .notes
        .iter()
        .filter(|n| n.kind == NoteKind::Skipped)
        .map(|n| format!("{}: {}", n.line, n.text))
        .collect()
}

fn from_keepalived(text: &str) -> (Imported, Config) {
    let imported = keepalived::import(text, None);
    let config = valid(&imported);
    (imported, config)
}

fn from_ipvsadm(text: &str) -> (Imported, Config) {
    let imported = ipvsadm::import(text, &names::System::offline(), "rules");
    let config = valid(&imported);
    (imported, config)
}

#[test]
fn a_connect_timeout_longer_than_delay_loop_raises_the_interval_to_it() {
    let (imported, config) = from_keepalived(
        "virtual_server 10.0.0.1 80 {\n delay_loop 1\n lb_kind NAT\n real_server 10.0.1.1 80 {\n  TCP_CHECK { connect_timeout 3 }\n }\n}\n",
    );
    let check = config.services[0].backends[0]
        .health
        .as_ref()
        .expect("a check");
    assert_eq!((check.interval.as_secs(), check.timeout.as_secs()), (3, 3));
    assert!(
        imported
            .toml
            .contains("delay_loop 1s with connect_timeout 3s"),
        "{}",
        imported.toml
    );
}

#[test]
fn uthreshold_zero_means_no_limit_and_others_become_max_conns() {
    let (_, config) = from_keepalived(
        "virtual_server 10.0.0.1 80 {\n real_server 10.0.1.1 80 { uthreshold 0 }\n real_server 10.0.1.2 80 { uthreshold 500 }\n}\n",
    );
    let backends = &config.services[0].backends;
    assert_eq!(
        (backends[0].max_conns, backends[1].max_conns),
        (None, Some(500))
    );
}

#[test]
fn a_dr_real_server_on_another_port_is_imported_on_the_port_clients_use() {
    let (imported, config) = from_keepalived(
        "virtual_server 10.0.0.1 80 {\n lb_kind DR\n real_server 10.0.1.1 8080 { weight 3 }\n}\n",
    );
    let backend = &config.services[0].backends[0];
    assert_eq!((backend.port, backend.weight), (80, 3));
    assert!(
        imported.toml.contains("real_server port 8080: dr forwards"),
        "{}",
        imported.toml
    );
}

#[test]
fn two_virtual_servers_never_share_a_service_and_a_repeat_is_listed() {
    let (imported, config) = from_keepalived(
        "virtual_server 10.0.0.1 53 { protocol UDP\n real_server 10.0.1.1 53 { } }\n\
         virtual_server 10.0.0.1 53 { protocol TCP\n real_server 10.0.1.1 53 { } }\n\
         virtual_server 10.0.0.1 53 { protocol TCP\n real_server 10.0.1.2 53 { } }\n",
    );
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["udp-10_0_0_1-53", "tcp-10_0_0_1-53"]);
    assert!(
        skipped(&imported)
            .iter()
            .any(|n| n.starts_with("5:") && n.contains("already defined at line 3")),
        "{:?}",
        imported.notes
    );
}

#[test]
fn groups_expand_to_one_service_per_address_and_checker_braces_may_open_on_the_next_line() {
    let (imported, config) = from_keepalived(
        "virtual_server_group web {\n 10.0.0.1-3 80\n fwmark 7\n}\n\
         virtual_server group web\n{\n lb_algo wrr\n lb_kind DR\n retry 2\n\
           real_server 10.0.1.1 80\n {\n  HTTP_GET\n  {\n   url { path /health }\n   connect_timeout 2\n  }\n }\n}\n",
    );
    assert_eq!(config.services.len(), 3);
    let check = config.services[2].backends[0]
        .health
        .as_ref()
        .expect("a check");
    assert_eq!((check.rise, check.fall), (1, 3));
    assert!(
        matches!(&check.kind, CheckKind::Http(http) if http.path == "/health" && http.expect_status == (200, 299))
    );
    assert_eq!(
        skipped(&imported).len(),
        1,
        "only the fwmark entry: {:?}",
        imported.notes
    );
}

#[test]
fn every_keepalived_checker_maps_to_the_nearest_pnlb_check() {
    let (imported, config) = from_keepalived(
        "virtual_server 10.0.0.1 53 {\n protocol UDP\n delay_loop 10\n\
         real_server 10.0.1.1 53 { DNS_CHECK {\n name example.com\n type A\n } }\n\
         real_server 10.0.1.2 53 { UDP_CHECK {\n payload 70696e67\n require_reply 706f6e67\n } }\n\
         real_server 10.0.1.3 53 { PING_CHECK { connect_timeout 2 } }\n\
         real_server 10.0.1.4 53 { MISC_CHECK { misc_path \"/usr/local/bin/check --dns\"\n misc_dynamic } }\n\
         real_server 10.0.1.5 53 { SMTP_CHECK { connect_port 25 } }\n\
         real_server 10.0.1.6 53 { BFD_CHECK { name b1 } }\n}\n",
    );
    let service = &config.services[0];
    let kinds: Vec<String> = (0..6)
        .map(
            |i| match service.backends[i].health.as_ref().map(|h| h.kind.clone()) {
                Some(CheckKind::Udp { payload, expect }) => {
                    format!("udp {} {expect:?}", payload.len())
                }
                Some(CheckKind::Exec { command }) => format!("exec {}", command.join(" ")),
                Some(CheckKind::Tcp) => "tcp".into(),
                Some(other) => format!("{other:?}"),
                None => "none".into(),
            },
        )
        .collect();
    assert_eq!(kinds[0], "udp 29 None");
    assert_eq!(kinds[1], "udp 4 Some(\"pong\")");
    assert_eq!(kinds[2], "exec ping -c 1 -W 2 10.0.1.3");
    assert_eq!(
        kinds[3],
        "exec /bin/sh -c /usr/local/bin/check --dns; [ $? -ne 1 ]"
    );
    assert_eq!(kinds[4], "tcp");
    assert_eq!(kinds[5], "none");
    assert!(skipped(&imported).iter().any(|n| n.contains("BFD_CHECK")));
    // DNS_CHECK retries 3 times by default: down after the 4th failure.
    assert_eq!(service.backends[0].health.as_ref().map(|h| h.fall), Some(4));
}

#[test]
fn a_virtual_server_without_a_port_takes_every_port_and_its_check_the_connect_port() {
    let (_, config) = from_keepalived(
        "virtual_server 10.0.0.1 {\n lb_kind DR\n persistence_timeout\n real_server 10.0.1.1 { TCP_CHECK { connect_port 443 } }\n}\n",
    );
    let service = &config.services[0];
    assert_eq!(service.port, 0);
    assert_eq!(service.persistence.map(|p| p.timeout.as_secs()), Some(360));
    assert_eq!(
        service.backends[0].health.as_ref().map(|h| h.port),
        Some(443)
    );
}

#[test]
fn weighted_failover_keeps_the_heaviest_server_and_the_next_as_fallback() {
    let (_, config) = from_keepalived(
        "virtual_server 10.0.0.1 80 {\n lb_algo fo\n\
         real_server 10.0.1.1 80 { weight 1 }\n real_server 10.0.1.2 80 { weight 5 }\n real_server 10.0.1.3 80 { weight 3 }\n}\n",
    );
    let service = &config.services[0];
    assert_eq!(service.backends.len(), 1);
    assert_eq!(service.backends[0].address.to_string(), "10.0.1.2");
    assert_eq!(
        service
            .fallback
            .as_ref()
            .map(|f| f.address.to_string())
            .as_deref(),
        Some("10.0.1.3")
    );
}

#[test]
fn ipvsadm_save_output_becomes_a_valid_config() {
    let (_, config) = from_ipvsadm(
        "-A -t 10.77.100.1:80 -s wlc -p 600 -M 255.255.255.0\n\
         -a -t 10.77.100.1:80 -r 10.77.1.11:80 -g -w 1\n\
         -a -t 10.77.100.1:80 -r 10.77.1.12:80 -g -w 3 -x 500\n\
         -A -u 10.77.100.1:53 -s rr\n-a -u 10.77.100.1:53 -r 10.77.1.21:5353 -m -w 1\n\
         -A -t [fd77:100::1]:443 -s mh -b mh-port\n-a -t [fd77:100::1]:443 -r [fd77:1::11]:443 -i -w 2\n",
    );
    assert_eq!(config.services.len(), 3);
    let web = &config.services[0];
    assert_eq!(
        (web.scheduler.to_string(), web.method),
        ("wlc".into(), Method::Dr)
    );
    assert_eq!(web.persistence.map(|p| p.prefix_len), Some(24));
    assert_eq!(
        (web.backends[1].weight, web.backends[1].max_conns),
        (3, Some(500))
    );
    assert_eq!(
        (
            config.services[1].method,
            config.services[1].backends[0].port
        ),
        (Method::Nat, 5353)
    );
    assert_eq!(config.services[2].scheduler.to_string(), "maglev");
}

#[test]
fn save_output_without_n_resolves_service_names_and_lists_host_names() {
    let (imported, config) = from_ipvsadm(
        "-A -t 10.0.0.1:https -s rr\n-a -t 10.0.0.1:https -r 10.0.1.1:https -m -w 1\n-A -t web.example:http -s rr\n",
    );
    assert_eq!(config.services[0].port, 443);
    assert!(
        skipped(&imported)[0].contains("web.example: a host name"),
        "{:?}",
        imported.notes
    );
}

#[test]
fn a_script_is_replayed_with_its_variables_edits_and_deletes() {
    let (imported, config) = from_ipvsadm(
        "#!/bin/sh\nVIP=10.0.0.1\nipv=/sbin/ipvsadm\n$ipv -C\n$ipv -At $VIP:80 -s rr\n\
         sudo $ipv -at ${VIP}:80 -r 10.0.1.1 -g\n$ipv -a -t \"$VIP:80\" -r 10.0.1.2:80 -g -w 2\n\
         $ipv -e -t $VIP:80 -r 10.0.1.2:80 -g -w 5\n$ipv -E -t $VIP:80 -s wlc\n\
         $ipv -A -t $VIP:81 -s rr\n$ipv -D -t $VIP:81\n\
         for rs in $SERVERS; do ipvsadm -a -t $VIP:80 -r $rs -g; done\n\
         ipvsadm --set 900 120 300\nipvsadm -L -n\n",
    );
    assert_eq!(config.services.len(), 1);
    let service = &config.services[0];
    assert_eq!(service.scheduler.to_string(), "wlc");
    assert_eq!(
        service
            .backends
            .iter()
            .map(|b| b.weight)
            .collect::<Vec<_>>(),
        [1, 5]
    );
    assert_eq!(config.timeouts.tcp.as_secs(), 900);
    assert!(
        skipped(&imported).iter().any(|n| n.contains("uses $rs")),
        "{:?}",
        imported.notes
    );
}

#[test]
fn rules_in_a_here_document_for_ipvsadm_restore_are_read() {
    let (_, config) = from_ipvsadm(
        "/usr/sbin/ipvsadm -R <<EOF\n-A -t 192.168.23.253:0 -s wrr -p 360\n-a -t 192.168.23.253:0 -r 192.168.23.65:0 -g -w 3\nEOF\n",
    );
    assert_eq!(
        (config.services[0].port, config.services[0].backends.len()),
        (0, 1)
    );
}

#[test]
fn what_ipvsadm_itself_rejects_is_listed_not_guessed() {
    let (imported, config) = from_ipvsadm(
        "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 (null) -w 100\n\
         -a -t 10.0.0.9:80 -r 10.0.0.2:80 -g\n-A -t 10.0.0.1:80 -s rr\n\
         -a -t 10.0.0.1:80 -r 10.0.0.3:80 -g\n-a -t 10.0.0.1:80 -r 10.0.0.4:80 -m\n-A -f 1 -s rr\n",
    );
    let notes = skipped(&imported);
    assert!(notes[0].contains("(null)"), "{notes:?}");
    assert!(notes[1].contains("Service not defined"), "{notes:?}");
    assert!(notes[2].contains("Service already exists"), "{notes:?}");
    assert!(notes[3].contains("one method per service"), "{notes:?}");
    assert!(notes[4].contains("firewall-mark"), "{notes:?}");
    assert_eq!(config.services[0].backends.len(), 1);
}

#[test]
fn malformed_input_is_listed_never_a_panic() {
    for junk in [
        "{ }", "}}}", "virtual_server", "virtual_server 10.0.0.1 80 { real_server { } }",
        "{ { weight } }", "virtual_server group", "virtual_server_group g { 10.0.0.1-0 }\nvirtual_server group g { }",
        "virtual_server 10.0.0.1 99999 { }", "virtual_server ::1 80 { real_server 10.0.0.1 80 { } }",
        "virtual_server 10.0.0.1 80 { real_server 10.0.0.2 80 { HTTP_GET { url { status_code } } } }",
        "virtual_server 10.0.0.1 80 { real_server 10.0.0.2 80 { UDP_CHECK { payload zz } } }",
        "virtual_server 10.0.0.1 80 { real_server 10.0.0.2 80 { weight -1 MISC_CHECK { } } }",
    ] {
        let imported = keepalived::import(junk, None);
        valid(&imported);
    }
    for junk in [
        "-A",
        "-a -t",
        "-A -t 10.0.0.1:80 -s",
        "-x -y -z",
        "-A -t [::1]:80 -p",
        "ipvsadm -A -t",
        "-A -t 10.0.0.1:99999",
        "-A -t [fe80::1:80",
        "--set a b c",
        "ipvsadm -R",
        "echo x | ipvsadm -R",
    ] {
        let imported = ipvsadm::import(junk, &names::System::offline(), "junk");
        valid(&imported);
    }
}
