//! Config validation: every rule with the error it gives, and the
//! documented and packaged example configs.

use super::*;

const GOOD: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "10.77.100.1"
port = 80
protocol = "tcp"
method = "dr"
scheduler = "maglev"

[[service.backend]]
address = "10.77.1.11"

[[service.backend]]
address = "10.77.1.12"
weight = 3

[[service]]
name = "dns6"
vip = "fd77:100::1"
port = 0
protocol = "udp"

[[service.backend]]
address = "fd77:1::11"
"#;

fn error_of(text: &str) -> ConfigError {
    parse(Path::new("lb.toml"), text).expect_err("config should be rejected")
}

#[test]
fn a_good_config_parses_with_defaults_filled_in() {
    let config = parse(Path::new("lb.toml"), GOOD).unwrap();
    assert_eq!(config.daemon.interfaces, ["eth0"]);
    assert_eq!(config.daemon.xdp_mode, XdpMode::Native);
    assert_eq!(config.services.len(), 2);
    let web = &config.services[0];
    assert_eq!(web.backends[0].port, 80);
    assert_eq!(web.backends[0].weight, 1);
    assert_eq!(web.backends[1].weight, 3);
    assert_eq!(web.hash_key, HashKey::FiveTuple);
    let dns = &config.services[1];
    assert_eq!((dns.port, dns.protocol), (0, Protocol::Udp));
    assert_eq!(dns.method, Method::Dr);
}

#[test]
fn errors_name_file_key_reason_and_fix_on_one_line() {
    let err = error_of(&GOOD.replace("10.77.1.12", "10.77.1.x"));
    let text = err.to_string();
    assert_eq!(err.key, "service[0] (web).backend[1].address");
    assert!(
        text.starts_with(
            "lb.toml: service[0] (web).backend[1].address: \"10.77.1.x\" is not an IP address;"
        ),
        "{text}"
    );
    assert!(!text.contains('\n'));
}

#[test]
fn syntax_errors_point_at_the_line() {
    let err = error_of("[daemon]\ninterfaces = [\"eth0\"\n");
    assert!(err.key.starts_with("line "), "{err}");
}

#[test]
fn unknown_keys_are_rejected_not_ignored() {
    let err = error_of(&GOOD.replace("scheduler = \"maglev\"", "schedular = \"maglev\""));
    assert!(err.reason.contains("schedular"), "{err}");
}

#[test]
fn bad_values_are_rejected_with_the_key() {
    let cases = [
        (
            GOOD.replace("interfaces = [\"eth0\"]", "interfaces = []"),
            "daemon.interfaces",
        ),
        (
            GOOD.replace("port = 80", "port = 70000"),
            "service[0] (web).port",
        ),
        (
            GOOD.replace("protocol = \"tcp\"", "protocol = \"sctp\""),
            "service[0] (web).protocol",
        ),
        (
            GOOD.replace("method = \"dr\"", "method = \"magic\""),
            "service[0] (web).method",
        ),
        (
            GOOD.replace("scheduler = \"maglev\"", "scheduler = \"random\""),
            "service[0] (web).scheduler",
        ),
        (
            GOOD.replace("weight = 3", "weight = -1"),
            "service[0] (web).backend[1].weight",
        ),
        (
            GOOD.replace("fd77:1::11", "10.77.1.13"),
            "service[1] (dns6).backend[0].address",
        ),
        (
            GOOD.replace("name = \"dns6\"", "name = \"web\""),
            "service[1].name",
        ),
        (
            GOOD.replace("vip = \"10.77.100.1\"", "vip = \"127.0.0.1\""),
            "service[0] (web).vip",
        ),
        // Keys written out only when an error names them (LazyKey, Field).
        (
            GOOD.replace("weight = 3", "weight = 3\nport = 70000"),
            "service[0] (web).backend[1].port",
        ),
        (
            GOOD.replace(
                "weight = 3",
                "weight = 3\n[service.backend.health]\ninterval = \"soon\"",
            ),
            "service[0] (web).backend[1].health.interval",
        ),
        (
            GOOD.replace(
                "scheduler = \"maglev\"",
                "scheduler = \"maglev\"\nslow_start = \"later\"",
            ),
            "service[0] (web).slow_start",
        ),
        (
            GOOD.replace("10.77.1.12", "10.77.1.11"),
            "service[0] (web).backend[1]",
        ),
    ];
    for (text, key) in cases {
        assert_eq!(error_of(&text).key, key);
    }
}

#[test]
fn dr_backends_cannot_map_ports() {
    let err = error_of(&GOOD.replace(
        "address = \"10.77.1.11\"",
        "address = \"10.77.1.11\"\nport = 8080",
    ));
    assert!(err.fix.contains("cannot rewrite ports"), "{err}");
}

#[test]
fn duplicate_backends_and_listeners_are_rejected() {
    let err = error_of(&GOOD.replace("10.77.1.12", "10.77.1.11"));
    assert!(err.reason.contains("listed twice"), "{err}");
    let err = error_of(
        &GOOD
            .replace(
                "vip = \"fd77:100::1\"\nport = 0\nprotocol = \"udp\"",
                "vip = \"10.77.100.1\"\nport = 80\nprotocol = \"tcp\"",
            )
            .replace("fd77:1::11", "10.77.1.13"),
    );
    assert!(err.reason.contains("already listens"), "{err}");
}

#[test]
fn tun_takes_an_encapsulation_and_tunnel_keys_need_tun() {
    let tun = |extra: &str| GOOD.replace("method = \"dr\"", &format!("method = \"tun\"{extra}"));
    let config = parse(Path::new("t.toml"), &tun("")).unwrap();
    assert_eq!(
        config.services[0].tunnel,
        Some(Tunnel {
            encap: Encap::Ipip,
            source: None,
            source_entropy_bits: 0,
        })
    );
    let config = parse(
        Path::new("t.toml"),
        &tun("\nencap = \"gue\"\ntunnel_source = \"10.77.1.2\""),
    )
    .unwrap();
    assert_eq!(
        config.services[0].tunnel,
        Some(Tunnel {
            encap: Encap::Gue {
                port: DEFAULT_GUE_PORT
            },
            source: Some("10.77.1.2".parse().unwrap()),
            source_entropy_bits: 0,
        })
    );
    for (prefix, bits) in [("10.77.200.0/24", 8), ("10.0.0.0/8", 16)] {
        let text = tun(&format!("\ntunnel_source = \"{prefix}\""));
        let tunnel = parse(Path::new("t.toml"), &text).unwrap().services[0].tunnel;
        assert_eq!(
            tunnel.map(|t| t.source_entropy_bits),
            Some(bits),
            "{prefix}: at most 16 bits vary"
        );
    }
    for (extra, key) in [
        ("\ntunnel_source = \"10.77.200.1/24\"", "tunnel_source"),
        ("\ntunnel_source = \"10.77.200.0/32\"", "tunnel_source"),
        ("\ntunnel_source = \"10.0.0.0/7\"", "tunnel_source"),
        ("\ntunnel_source = \"10.77.200.0/x\"", "tunnel_source"),
        ("\nencap = \"gre\"", "encap"),
        ("\nencap = \"gue\"\ngue_port = 0", "gue_port"),
        ("\ngue_port = 7000", "gue_port"),
        ("\ntunnel_source = \"fd77:1::2\"", "tunnel_source"),
    ] {
        let err = error_of(&tun(extra));
        assert!(err.key.ends_with(key), "{extra}: {err}");
    }
    let err = error_of(&GOOD.replace("method = \"dr\"", "method = \"dr\"\nencap = \"ipip\""));
    assert!(err.key.ends_with("encap"), "{err}");
    assert!(err.reason.contains("only applies"), "{err}");
}

#[test]
fn a_failover_group_is_validated() {
    let ha = |table: &str| format!("{GOOD}\n[ha]\n{table}");
    let good = "group = 7\ninterface = \"eth0\"\npeers = [\"10.77.1.3\"]\nkey_file = \"/etc/pnlb/ha.key\"\nfloating = [\"10.77.1.254\"]";
    let config = parse(Path::new("lb.toml"), &ha(good)).unwrap();
    let group = config.ha.unwrap();
    assert_eq!((group.group, group.priority), (7, 100));
    assert_eq!(group.advert_interval, Duration::from_millis(200));
    for (change, key) in [
        (good.replace("group = 7", "group = 0"), "ha.group"),
        (good.replace("\"eth0\"", "\"eth9\""), "ha.interface"),
        (good.replace("[\"10.77.1.3\"]", "[]"), "ha.peers"),
        (good.replace("/etc/pnlb/ha.key", "ha.key"), "ha.key_file"),
        (format!("{good}\npriority = 255"), "ha.priority"),
        (
            format!("{good}\nadvert_interval = \"1ms\""),
            "ha.advert_interval",
        ),
    ] {
        assert_eq!(error_of(&ha(&change)).key, key, "{change}");
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let err = load(Path::new("/nonexistent/pnlb.toml")).unwrap_err();
    assert!(err.to_string().contains("cannot read the file"), "{err}");
}

#[test]
fn the_packaged_config_is_valid_as_installed_and_with_its_example_service_uncommented() {
    let text = include_str!("../../../../packaging/pnlb.toml");
    let installed = parse(Path::new("packaging/pnlb.toml"), text).unwrap();
    assert!(installed.services.is_empty());
    // The example service is the block of "# " lines after the [daemon] keys.
    let start = text.find("# [[service]]").expect("an example service");
    let uncommented: String = text[..start]
        .lines()
        .chain(text[start..].lines().map(|line| {
            line.strip_prefix("# ")
                .or_else(|| line.strip_prefix('#'))
                .unwrap_or(line)
        }))
        .map(|line| format!("{line}\n"))
        .collect();
    let edited = parse(Path::new("packaging/pnlb.toml"), &uncommented).unwrap();
    assert_eq!(edited.services.len(), 1);
    assert_eq!(edited.services[0].backends.len(), 2);
}

#[test]
fn the_documented_example_configs_are_valid() {
    let text = include_str!("../../../../docs/examples/lab-dr.toml");
    let config = parse(Path::new("docs/examples/lab-dr.toml"), text).unwrap();
    assert_eq!(config.services.len(), 2);
    let text = include_str!("../../../../docs/examples/lab-snat.toml");
    let config = parse(Path::new("docs/examples/lab-snat.toml"), text).unwrap();
    assert_eq!(config.services[0].method, Method::Snat);
    let text = include_str!("../../../../docs/examples/lab-tun.toml");
    let config = parse(Path::new("docs/examples/lab-tun.toml"), text).unwrap();
    assert_eq!(config.services[0].method, Method::Tun);
    for (path, text, priority) in [
        (
            "lab-ha-node1.toml",
            include_str!("../../../../docs/examples/lab-ha-node1.toml"),
            150,
        ),
        (
            "lab-ha-node2.toml",
            include_str!("../../../../docs/examples/lab-ha-node2.toml"),
            100,
        ),
    ] {
        let config = parse(Path::new(path), text).unwrap();
        assert_eq!(config.ha.map(|ha| ha.priority), Some(priority));
    }
}

#[test]
fn nat_allows_port_mapping_and_snat_needs_its_addresses() {
    let nat = parse(
        Path::new("lb.toml"),
        &GOOD.replace("method = \"dr\"", "method = \"nat\"").replace(
            "address = \"10.77.1.11\"\n",
            "address = \"10.77.1.11\"\nport = 8080\n",
        ),
    )
    .unwrap();
    assert_eq!(nat.services[0].method, Method::Nat);
    assert_eq!(nat.services[0].backends[0].port, 8080);
    assert_eq!(nat.services[0].snat, None);

    let err = error_of(&GOOD.replace("method = \"dr\"", "method = \"snat\""));
    assert!(err.key.ends_with("snat_addresses"), "{err}");

    let snat = parse(
        Path::new("lb.toml"),
        &GOOD.replace(
            "method = \"dr\"",
            "method = \"snat\"\nsnat_addresses = [\"10.77.1.2\", \"10.77.1.3\"]\nsnat_ports = \"20000-20099\"",
        ),
    )
    .unwrap();
    let pool = snat.services[0].snat.clone().unwrap();
    assert_eq!(pool.addresses.len(), 2);
    assert_eq!((pool.port_min, pool.port_max), (20000, 20099));
    assert_eq!(pool.reuse_after, DEFAULT_SNAT_REUSE_AFTER);
    // 2 addresses x 100 ports, each resting 120 s: 1.67 new flows/s per backend.
    let sustained = pool.sustained_rate().unwrap();
    assert!((sustained - 200.0 / 120.0).abs() < 1e-9, "{sustained}");
}

#[test]
fn an_snat_address_may_not_be_a_vip() {
    let err = error_of(&GOOD.replace(
        "method = \"dr\"",
        "method = \"snat\"\nsnat_addresses = [\"10.77.1.2\", \"10.77.100.1\"]",
    ));
    assert_eq!(err.key, "service[0] (web).snat_addresses[1]");
    assert!(err.reason.contains("is a VIP"), "its own: {err}");
    let mut other = GOOD.replace(
        "method = \"dr\"",
        "method = \"snat\"\nsnat_addresses = [\"10.77.100.7\"]",
    );
    other += "\n[[service]]\nname = \"other\"\nvip = \"10.77.100.7\"\nport = 53\nprotocol = \"udp\"\n[[service.backend]]\naddress = \"10.77.1.11\"\n";
    let err = error_of(&other);
    assert!(
        err.reason.contains("is a VIP"),
        "another service's VIP too: {err}"
    );
}

#[test]
fn snat_reuse_and_the_new_flow_rate_are_checked() {
    let snat = |extra: &str| {
        GOOD.replace(
            "method = \"dr\"",
            &format!("method = \"snat\"\nsnat_addresses = [\"10.77.1.2\"]\n{extra}"),
        )
    };
    let config = parse(Path::new("lb.toml"), &snat("snat_reuse_after = \"0s\"")).unwrap();
    let pool = config.services[0].snat.clone().unwrap();
    assert_eq!(pool.reuse_after, std::time::Duration::ZERO);
    assert_eq!(pool.sustained_rate(), None, "no rest: no limit from it");
    let err = error_of(&snat("snat_reuse_after = \"2h\""));
    assert!(err.key.ends_with("snat_reuse_after"), "{err}");
    let err = error_of(&GOOD.replace(
        "method = \"dr\"",
        "method = \"dr\"\nsnat_reuse_after = \"1s\"",
    ));
    assert!(err.reason.contains("only applies"), "{err}");

    let rate = |extra: &str| GOOD.replace("method = \"dr\"", &format!("method = \"dr\"\n{extra}"));
    let config = parse(Path::new("lb.toml"), &rate("new_flow_rate = 50000")).unwrap();
    assert_eq!(
        config.services[0].new_flow_rate,
        Some(NewFlowRate {
            per_second: 50_000,
            burst: 5_000
        }),
        "the burst defaults to a tenth of the rate"
    );
    assert_eq!(config.services[1].new_flow_rate, None, "off by default");
    let config = parse(Path::new("lb.toml"), &rate("source_max_flows = 100")).unwrap();
    assert_eq!(config.services[0].source_max_flows, Some(100));
    assert_eq!(config.services[1].source_max_flows, None, "off by default");
    for (extra, key) in [
        ("new_flow_rate = 0", "new_flow_rate"),
        ("new_flow_rate = 1000000000", "new_flow_rate"),
        ("new_flow_rate = 10\nnew_flow_burst = 0", "new_flow_burst"),
        ("new_flow_burst = 10", "new_flow_burst"),
        ("source_max_flows = 0", "source_max_flows"),
        ("source_max_flows = 2000000", "source_max_flows"),
    ] {
        let err = error_of(&rate(extra));
        assert!(err.key.ends_with(key), "{extra}: {err}");
    }
}

#[test]
fn table_sizes_and_the_data_plane_limits_are_checked() {
    let config = parse(Path::new("lb.toml"), GOOD).unwrap();
    assert_eq!(config.services[0].table_size, 65_537, "the default");
    assert_eq!(
        (config.daemon.max_services, config.daemon.max_backends),
        (DEFAULT_MAX_SERVICES, DEFAULT_MAX_BACKENDS)
    );
    let sized = |extra: &str| {
        GOOD.replace(
            "scheduler = \"maglev\"",
            &format!("scheduler = \"maglev\"\n{extra}"),
        )
    };
    let config = parse(Path::new("lb.toml"), &sized("table_size = 1031")).unwrap();
    assert_eq!(config.services[0].table_size, 1031);
    for (extra, reason) in [
        ("table_size = 1000", "not a prime"),
        ("table_size = 65539", "not a prime from 3 to 65537"),
        ("table_size = 2", "not a prime"),
        ("table_size = 0", "not a prime"),
    ] {
        let err = error_of(&sized(extra));
        assert!(
            err.key.ends_with("table_size") && err.reason.contains(reason),
            "{extra}: {err}"
        );
    }
    let err = error_of(&sized("table_size = 1000"));
    assert!(err.fix.contains("1031"), "the fix names a size: {err}");
    // Not above the backends it holds (two here).
    let err = error_of(&sized("table_size = 2"));
    assert!(err.key.ends_with("table_size"), "{err}");
    let err = error_of(&GOOD.replace(
        "scheduler = \"maglev\"",
        "scheduler = \"rr\"\ntable_size = 1031",
    ));
    assert!(err.reason.contains("builds no Maglev table"), "{err}");

    // The configured services and backends must fit the maps.
    let limited = |limits: &str| GOOD.replace("[daemon]\n", &format!("[daemon]\n{limits}\n"));
    let err = error_of(&limited("max_services = 1"));
    assert!(
        err.key == "daemon.max_services" && err.reason.contains("2 services"),
        "{err}"
    );
    assert!(err.fix.contains("max_services = 2"), "{err}");
    let err = error_of(&limited("max_services = 16\nmax_backends = 2"));
    assert!(
        err.key == "daemon.max_backends" && err.reason.contains("3 backends"),
        "{err}"
    );
    for bad in ["max_services = 0", "max_backends = 1000000"] {
        let err = error_of(&limited(bad));
        assert!(err.reason.contains("out of range"), "{bad}: {err}");
    }
}

#[test]
fn bad_snat_settings_are_rejected() {
    let with =
        |extra: &str| GOOD.replace("method = \"dr\"", &format!("method = \"snat\"\n{extra}"));
    let cases = [
        ("snat_addresses = [\"fd77::1\"]", "snat_addresses[0]"),
        (
            "snat_addresses = [\"10.77.1.2\"]\nsnat_ports = \"80-90\"",
            "snat_ports",
        ),
        (
            "snat_addresses = [\"10.77.1.2\"]\nsnat_ports = \"30000-20000\"",
            "snat_ports",
        ),
        (
            "snat_addresses = [\"10.77.1.2\", \"10.77.1.2\"]",
            "snat_addresses[1]",
        ),
    ];
    for (extra, key) in cases {
        let err = error_of(&with(extra));
        assert!(err.key.ends_with(key), "{extra}: {err}");
    }
    let err = error_of(&GOOD.replace(
        "method = \"dr\"",
        "method = \"nat\"\nsnat_addresses = [\"10.77.1.2\"]",
    ));
    assert!(err.reason.contains("only applies"), "{err}");
}

#[test]
fn timeouts_and_table_size_have_ipvs_like_defaults_and_can_be_set() {
    let config = parse(Path::new("lb.toml"), GOOD).unwrap();
    assert_eq!(config.timeouts, Timeouts::default());
    assert_eq!(config.timeouts.tcp, Duration::from_secs(900));
    assert_eq!(config.daemon.conn_table_size, DEFAULT_CONN_TABLE_SIZE);
    let text = GOOD.replace(
        "[daemon]\n",
        "[timeouts]\ntcp = \"1h\"\nudp = \"30s\"\n\n[daemon]\nconn_table_size = 100000\n",
    );
    let config = parse(Path::new("lb.toml"), &text).unwrap();
    assert_eq!(config.timeouts.tcp, Duration::from_secs(3600));
    assert_eq!(config.timeouts.udp, Duration::from_secs(30));
    assert_eq!(config.timeouts.tcp_fin, Duration::from_secs(120));
    assert_eq!(config.daemon.conn_table_size, 100_000);
    let err = error_of(&GOOD.replace("[daemon]\n", "[timeouts]\ntcp = \"10ms\"\n\n[daemon]\n"));
    assert_eq!(err.key, "timeouts.tcp");
    let err = error_of(&GOOD.replace("[daemon]\n", "[daemon]\nconn_table_size = 10\n"));
    assert_eq!(err.key, "daemon.conn_table_size");
}

#[test]
fn schedulers_default_their_hash_key_and_persistence_parses() {
    let with = |extra: &str| {
        parse(
            Path::new("lb.toml"),
            &GOOD.replace("scheduler = \"maglev\"", extra),
        )
    };
    assert_eq!(
        with("scheduler = \"sh\"").unwrap().services[0].hash_key,
        HashKey::Source
    );
    assert_eq!(
        with("scheduler = \"dh\"").unwrap().services[0].hash_key,
        HashKey::Destination
    );
    assert_eq!(
        with("scheduler = \"wrr\"").unwrap().services[0].scheduler,
        Scheduler::Wrr
    );
    let err = with("scheduler = \"rr\"\nhash_key = \"source\"").unwrap_err();
    assert!(err.key.ends_with("hash_key"), "{err}");
    let config = with("scheduler = \"rr\"\npersistence = \"300s\"\npersistence_mask = 24").unwrap();
    let persistence = config.services[0].persistence.unwrap();
    assert_eq!(
        (persistence.timeout, persistence.prefix_len),
        (Duration::from_secs(300), 24)
    );
    assert_eq!(
        with("persistence = \"60s\"").unwrap().services[0]
            .persistence
            .unwrap()
            .prefix_len,
        32
    );
    assert!(with("persistence_mask = 24")
        .unwrap_err()
        .key
        .ends_with("persistence_mask"));
    assert!(with("persistence = \"60s\"\npersistence_mask = 33")
        .unwrap_err()
        .key
        .ends_with("persistence_mask"));
}

/// GOOD with `daemon` lines added and an exec check of `command` on web.
fn with_exec_check(daemon: &str, command: &str) -> Result<Config, ConfigError> {
    let text = GOOD
        .replacen("[daemon]\n", &format!("[daemon]\n{daemon}"), 1)
        .replacen(
            "scheduler = \"maglev\"\n",
            &format!(
                "scheduler = \"maglev\"\n[service.health]\nkind = \"exec\"\ncommand = [\"{command}\", \"--quiet\"]\n"
            ),
            1,
        );
    parse(Path::new("lb.toml"), &text)
}

#[test]
fn exec_checks_keep_to_their_directory_and_the_api_needs_one_to_set_them() {
    let dir = "exec_check_dir = \"/etc/pnlb/checks\"\n";
    let config = with_exec_check(dir, "/etc/pnlb/checks/web").unwrap();
    assert_eq!(config.exec_commands().len(), 1);
    assert!(!config.daemon.api_exec_checks, "off unless set");
    for outside in [
        "/bin/sh",
        "/etc/pnlb/checks/../../../bin/sh",
        "/etc/pnlb/checks/sub/web",
        "web",
    ] {
        let err = with_exec_check(dir, outside).unwrap_err();
        assert_eq!(
            err.key, "service[0] (web).health.command",
            "{outside}: {err}"
        );
        assert!(err.fix.contains("/etc/pnlb/checks/check-web"), "{err}");
    }
    // Without a directory, commands may be anywhere (the file is root's).
    assert!(with_exec_check("", "/bin/true").is_ok());
    let err = with_exec_check("api_exec_checks = true\n", "/bin/true").unwrap_err();
    assert_eq!(err.key, "daemon.api_exec_checks");
    let both = format!("{dir}api_exec_checks = true\nexec_check_user = \"nobody\"\n");
    let config = with_exec_check(&both, "/etc/pnlb/checks/web").unwrap();
    assert!(config.daemon.api_exec_checks);
    assert_eq!(config.daemon.exec_check_user.as_deref(), Some("nobody"));
    let err = with_exec_check("exec_check_user = \"no body\"\n", "/bin/true").unwrap_err();
    assert_eq!(err.key, "daemon.exec_check_user");
    let err = with_exec_check("exec_check_dir = \"checks\"\n", "/bin/true").unwrap_err();
    assert!(err.fix.contains("/etc/pnlb/checks"), "{err}");
}

#[test]
fn access_rules_are_prefixes_and_a_prefix_is_not_both_allowed_and_denied() {
    let with = |rules: &str| {
        parse(
            Path::new("lb.toml"),
            &GOOD.replacen(
                "scheduler = \"maglev\"\n",
                &format!("scheduler = \"maglev\"\n{rules}"),
                1,
            ),
        )
    };
    let config = with(
        "allow = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]\ndeny = [\"10.66.0.0/16\"]\n",
    )
    .unwrap();
    let access = &config.services[0].access;
    assert_eq!(access.len(), 4);
    assert_eq!(access.allow[2].to_string(), "192.0.2.7/32");
    assert!(config.services[1].access.is_empty());
    let err = with("allow = [\"10.0.0.1/8\"]\n").unwrap_err();
    assert_eq!(err.key, "service[0] (web).allow[0]");
    assert!(err.reason.contains("did you mean 10.0.0.0/8"), "{err}");
    let err = with("deny = [\"example.org\"]\n").unwrap_err();
    assert_eq!(err.key, "service[0] (web).deny[0]");
    let err = with("allow = [\"10.0.0.0/8\"]\ndeny = [\"10.0.0.0/8\"]\n").unwrap_err();
    assert!(err.reason.contains("both allowed and denied"), "{err}");
}

#[test]
fn bgp_needs_birds_socket_its_routes_file_and_a_shared_seed() {
    let with = |daemon_extra: &str, bgp: &str| {
        GOOD.replacen("[daemon]\n", &format!("[daemon]\n{daemon_extra}"), 1)
            + &format!("\n[bgp]\n{bgp}")
    };
    let seeded = "hash_seed_file = \"/etc/pnlb/hash-seed\"\n";
    let full = "bird_socket = \"/run/bird/bird.ctl\"\nroutes_file = \"/etc/bird/pnlb-vips.conf\"\n";
    let config = parse(Path::new("lb.toml"), &with(seeded, full)).unwrap();
    let bgp = config.bgp.expect("[bgp]");
    assert_eq!(bgp.bird_socket, Path::new("/run/bird/bird.ctl"));
    assert_eq!(bgp.drain_deadline, DEFAULT_DRAIN_DEADLINE);
    for (daemon_extra, bgp, key) in [
        ("", full, "daemon.hash_seed_file"),
        (
            seeded,
            "routes_file = \"/etc/bird/pnlb-vips.conf\"\n",
            "bgp.bird_socket",
        ),
        (
            seeded,
            "bird_socket = \"/run/bird/bird.ctl\"\nroutes_file = \"pnlb.conf\"\n",
            "bgp.routes_file",
        ),
        (
            seeded,
            &format!("{full}drain_deadline = \"2d\"\n"),
            "bgp.drain_deadline",
        ),
        (seeded, &format!("{full}neighbours = []\n"), "neighbours"),
        (
            seeded,
            &format!("{full}peers = [\"10.0.1.3\"]\n"),
            "bgp.key_file",
        ),
        (
            seeded,
            &format!("{full}key_file = \"/k\"\n"),
            "bgp.key_file",
        ),
        (
            seeded,
            &format!("{full}peers = [\"10.0.1.3\", \"fd00::3\"]\nkey_file = \"/k\"\n"),
            "bgp.peers",
        ),
        (
            seeded,
            &format!("{full}peers = [\"nope\"]\nkey_file = \"/k\"\n"),
            "bgp.peers[0]",
        ),
    ] {
        let err = error_of(&with(daemon_extra, bgp));
        assert!(
            err.key.contains(key) || err.reason.contains(key),
            "{bgp}: {err}"
        );
    }
    let synced = with(
        seeded,
        &format!("{full}peers = [\"10.0.1.3\", \"10.0.1.4\"]\nkey_file = \"/k\"\n"),
    );
    let bgp = parse(Path::new("lb.toml"), &synced).unwrap().bgp.unwrap();
    assert_eq!(bgp.peers.len(), 2);
    let both = with(seeded, full).replace(
        "[bgp]",
        "[ha]\ngroup = 1\ninterface = \"eth0\"\npeers = [\"10.77.1.3\"]\nkey_file = \"/etc/pnlb/ha.key\"\n\n[bgp]",
    );
    let err = error_of(&both);
    assert_eq!(err.key, "bgp", "{err}");
}
