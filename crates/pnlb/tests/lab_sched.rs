//! Schedulers end to end: wrr ratios over real connections, and source
//! persistence with its timeout.

mod support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use pnlb_lab::{in_netns, Lab, LabSpec, VIP4};
use support::*;

fn weighted_config(lab: &Lab, scheduler: &str, weights: &[u32], extra: &str) -> String {
    let mut text = lab.config("dr", 80, &[0, 1, 2]).replace(
        "scheduler = \"maglev\"",
        &format!("scheduler = \"{scheduler}\"\n{extra}"),
    );
    for (server, weight) in lab.servers.iter().zip(weights) {
        text = text.replace(
            &format!("address = \"{}\"\n", server.ipv4),
            &format!("address = \"{}\"\nweight = {weight}\n", server.ipv4),
        );
    }
    text
}

#[test]
fn wrr_three_two_one_over_six_hundred_connections() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let path = write_config(&lab, &weighted_config(&lab, "wrr", &[3, 2, 1], ""));
    let _daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let answers = spread(&lab, IpAddr::V4(VIP4), 600);
    for (server, want) in [("s1", 50.0), ("s2", 100.0 / 3.0), ("s3", 100.0 / 6.0)] {
        let share = *answers.get(server).unwrap_or(&0) as f64 / 6.0;
        assert!(
            (share - want).abs() <= 5.0,
            "{server}: {share:.1}% of 600, want {want:.1}% ± 5: {answers:?}"
        );
    }
}

#[test]
fn persistence_keeps_a_client_on_one_backend_until_the_timeout() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let path = write_config(
        &lab,
        &weighted_config(&lab, "rr", &[1, 1, 1], "persistence = \"2s\""),
    );
    let _daemon = lab.start_pnlb(PNLB, &path).expect("pnlb run");
    let during = spread(&lab, IpAddr::V4(VIP4), 20);
    assert_eq!(
        during.len(),
        1,
        "rr alone would rotate; persistence keeps one backend: {during:?}"
    );
    let first = during.keys().next().cloned().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let after = in_netns(&lab.client, || request(IpAddr::V4(VIP4)))
        .unwrap()
        .expect("request");
    assert_ne!(
        after, first,
        "after the timeout the client is scheduled again (rr moves on)"
    );
    let counts: HashMap<String, usize> = spread(&lab, IpAddr::V4(VIP4), 10);
    assert_eq!(
        counts.get(&after),
        Some(&10),
        "and sticks to its new backend: {counts:?}"
    );
}
