//! Parity between the data plane and pnlb-core's reference schedulers for
//! the deterministic ones (rr, wrr, sh, dh), and source affinity
//! (persistence) with its timeout, mask and quiescent backends.

mod support;

use std::net::IpAddr;

use pnlb_core::sched::{
    rr::RoundRobin, wrr::WeightedRoundRobin, BackendLoad, FlowInput, Scheduler,
};
use pnlb_dataplane::abi::HashKey;
use support::*;

fn config(scheduler: &str, weights: &[u32], extra: &str) -> String {
    let mut text = format!(
        "[daemon]\ninterfaces = [\"eth0\"]\n[[service]]\nname = \"web\"\nvip = \"10.77.100.1\"\nport = 80\nmethod = \"dr\"\nscheduler = \"{scheduler}\"\n{extra}\n"
    );
    for (i, w) in weights.iter().enumerate() {
        text += &format!(
            "[[service.backend]]\naddress = \"10.77.1.{}\"\nweight = {w}\n",
            11 + i
        );
    }
    text
}

/// Which backend (index into the config's list) the data plane gave a new
/// flow from `src`:`sport`.
fn pick(fixture: &Fixture, src: &str, sport: u16) -> usize {
    let packet = tcp4(src, sport, "10.77.100.1", 80, b"");
    let (verdict, out) = fixture.run(&packet);
    assert_eq!(verdict, XDP_TX);
    let mac = &out[0..6];
    (0..8)
        .find(|i| backend_mac(format!("10.77.1.{}", 11 + i).parse::<IpAddr>().unwrap())[..] == *mac)
        .expect("a configured backend")
}

fn loads(weights: &[u32]) -> Vec<BackendLoad> {
    weights
        .iter()
        .map(|&weight| BackendLoad {
            weight,
            ..BackendLoad::default()
        })
        .collect()
}

#[test]
fn wrr_in_the_data_plane_follows_the_reference_cycle() {
    if !privileged() {
        return;
    }
    let weights = [3, 2, 1];
    let fixture = Fixture::new(&config("wrr", &weights, ""));
    let mut reference = WeightedRoundRobin::new(&weights);
    for i in 0..60u16 {
        let expected = reference
            .pick(&loads(&weights), FlowInput::default())
            .unwrap();
        assert_eq!(
            pick(&fixture, "10.77.0.2", 30000 + i),
            expected,
            "new flow {i}"
        );
    }
}

#[test]
fn rr_in_the_data_plane_follows_the_reference_and_skips_quiescent_backends() {
    if !privileged() {
        return;
    }
    let weights = [1, 0, 7, 1];
    let fixture = Fixture::new(&config("rr", &weights, ""));
    let mut reference = RoundRobin::default();
    for i in 0..30u16 {
        let expected = reference
            .pick(&loads(&weights), FlowInput::default())
            .unwrap();
        assert_eq!(
            pick(&fixture, "10.77.0.2", 31000 + i),
            expected,
            "new flow {i}"
        );
    }
}

#[test]
fn sh_keeps_a_source_on_one_backend_and_dh_keeps_a_destination() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(&config("sh", &[1, 1, 1, 1], ""));
    for client in ["10.77.0.2", "10.77.0.3", "10.77.0.4"] {
        let first = pick(&fixture, client, 40000);
        assert!(
            (1..40).all(|p| pick(&fixture, client, 40000 + p) == first),
            "{client} moved"
        );
    }
    let spread: std::collections::HashSet<usize> = (0..64)
        .map(|i| pick(&fixture, &format!("10.77.0.{}", 10 + i), 40000))
        .collect();
    assert!(
        spread.len() >= 3,
        "sources spread over backends: {spread:?}"
    );

    let fixture = Fixture::new(&config("dh", &[1, 1, 1, 1], ""));
    let first = pick(&fixture, "10.77.0.2", 40000);
    assert!(
        (0..40).all(|i| pick(&fixture, &format!("10.77.0.{}", 3 + i), 41000) == first),
        "one destination, one backend"
    );
}

#[test]
fn the_hash_seed_decides_where_a_flow_lands() {
    if !privileged() {
        return;
    }
    let text = config("maglev", &[1, 1, 1, 1, 1, 1, 1, 1], "");
    let public = Fixture::new(&text);
    let secret = Fixture::with_seed(&text, 0x5eed_1234);
    let mut moved = 0;
    for sport in 0..200u16 {
        let packet = tcp4("10.77.0.2", 30000 + sport, "10.77.100.1", 80, b"");
        let with_secret = pick(&secret, "10.77.0.2", 30000 + sport);
        let predicted = secret.predicted_backend("web", &packet, HashKey::PNLB_HASH_5TUPLE);
        assert_eq!(
            predicted,
            format!("10.77.1.{}", 11 + with_secret)
                .parse::<IpAddr>()
                .unwrap(),
            "the program hashes with the seed it was given"
        );
        if pick(&public, "10.77.0.2", 30000 + sport) != with_secret {
            moved += 1;
        }
    }
    println!("another seed moved {moved} of 200 flows over 8 backends (7/8 expected: 175)");
    assert!(
        moved > 120,
        "a different seed is a different spread: {moved}"
    );
}

#[test]
fn persistence_keeps_a_client_prefix_on_its_backend_while_it_takes_new_flows() {
    if !privileged() {
        return;
    }
    // rr alone would move every new flow to the next backend.
    let mut fixture = Fixture::new(&config(
        "rr",
        &[1, 1, 1],
        "persistence = \"300s\"\npersistence_mask = 24",
    ));
    let first = pick(&fixture, "10.77.0.2", 50000);
    assert!(
        (1..20).all(|p| pick(&fixture, "10.77.0.2", 50000 + p) == first),
        "one client sticks"
    );
    assert!(
        (0..20).all(|i| pick(&fixture, &format!("10.77.0.{}", 30 + i), 51000) == first),
        "its /24 sticks too"
    );
    let other = pick(&fixture, "10.77.9.2", 52000);
    assert_ne!(other, first, "another /24 is scheduled (rr moves on)");

    // A quiescent backend takes no new flows, affinity or not.
    let mut weights = [1, 1, 1];
    weights[first] = 0;
    fixture.apply(&config(
        "rr",
        &weights,
        "persistence = \"300s\"\npersistence_mask = 24",
    ));
    assert_ne!(pick(&fixture, "10.77.0.2", 53000), first);
}

#[test]
fn without_persistence_rr_moves_every_new_flow() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(&config("rr", &[1, 1, 1], ""));
    let picks: Vec<usize> = (0..6)
        .map(|p| pick(&fixture, "10.77.0.2", 54000 + p))
        .collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
}

/// The data plane's live counts as the reference schedulers see them.
fn live_loads(fixture: &Fixture, weights: &[u32]) -> Vec<BackendLoad> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            let address: IpAddr = format!("10.77.1.{}", 11 + i).parse().unwrap();
            let id = fixture.programmer.backend_id("web", address, 80).unwrap();
            let (active, inactive) = fixture.dataplane.backend_load(id).unwrap();
            BackendLoad {
                weight,
                active: active as u32,
                inactive: inactive as u32,
                max_conns: None,
            }
        })
        .collect()
}

/// Opens flows one by one (some completing the handshake, so both active
/// and inactive counts move) and checks every pick against the reference.
fn least_load_parity(scheduler: &str, reference: &mut dyn Scheduler) {
    let weights = [3, 1, 2];
    let fixture = Fixture::new(&config(scheduler, &weights, ""));
    for i in 0..40u16 {
        let expected = reference
            .pick(&live_loads(&fixture, &weights), FlowInput::default())
            .unwrap();
        let got = pick(&fixture, "10.77.0.2", 60000 + i);
        assert_eq!(
            got,
            expected,
            "{scheduler}: new flow {i}, loads {:?}",
            live_loads(&fixture, &weights)
        );
        if i % 3 != 0 {
            // The client's ACK: the flow becomes established (active).
            let (verdict, _) =
                fixture.run(&Pkt::tcp("10.77.0.2", 60000 + i, "10.77.100.1", 80, ACK).bytes());
            assert_eq!(verdict, XDP_TX);
        }
    }
}

#[test]
fn lc_wlc_sed_and_nq_pick_what_the_reference_picks_from_live_counts() {
    if !privileged() {
        return;
    }
    use pnlb_core::sched::{
        lc::LeastConnection, nq::NeverQueue, sed::ShortestExpectedDelay,
        wlc::WeightedLeastConnection,
    };
    least_load_parity("lc", &mut LeastConnection);
    least_load_parity("wlc", &mut WeightedLeastConnection);
    least_load_parity("sed", &mut ShortestExpectedDelay);
    least_load_parity("nq", &mut NeverQueue);
}

#[test]
fn connection_counts_follow_state_and_expiry() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(&config("lc", &[1], ""));
    fixture.run(&Pkt::tcp("10.77.0.2", 61000, "10.77.100.1", 80, SYN).bytes());
    fixture.run(&Pkt::tcp("10.77.0.2", 61001, "10.77.100.1", 80, SYN).bytes());
    assert_eq!(
        live_loads(&fixture, &[1])[0],
        BackendLoad {
            weight: 1,
            active: 0,
            inactive: 2,
            max_conns: None
        }
    );
    fixture.run(&Pkt::tcp("10.77.0.2", 61000, "10.77.100.1", 80, ACK).bytes());
    assert_eq!(
        (
            live_loads(&fixture, &[1])[0].active,
            live_loads(&fixture, &[1])[0].inactive
        ),
        (1, 1)
    );
    fixture.run(&Pkt::tcp("10.77.0.2", 61000, "10.77.100.1", 80, FIN).bytes());
    assert_eq!(
        (
            live_loads(&fixture, &[1])[0].active,
            live_loads(&fixture, &[1])[0].inactive
        ),
        (0, 2)
    );
    let later = pnlb_dataplane::conntrack::monotonic_ns() + 1_000_000_000_000;
    fixture
        .dataplane
        .sweep_connections_at(&pnlb_core::config::Timeouts::default(), later)
        .unwrap();
    assert_eq!(
        (
            live_loads(&fixture, &[1])[0].active,
            live_loads(&fixture, &[1])[0].inactive
        ),
        (0, 0),
        "expiry counts down"
    );
}

#[test]
fn a_backend_at_max_conns_is_skipped_and_all_full_drops() {
    if !privileged() {
        return;
    }
    for scheduler in ["rr", "wlc", "maglev", "p2c"] {
        let mut text = config(scheduler, &[1, 1], "");
        text = text.replace("weight = 1\n", "weight = 1\nmax_conns = 2\n");
        let fixture = Fixture::new(&text);
        let picks: Vec<usize> = (0..4)
            .map(|p| pick(&fixture, "10.77.0.2", 62000 + p))
            .collect();
        assert_eq!(
            picks.iter().filter(|&&b| b == 0).count(),
            2,
            "{scheduler}: {picks:?}"
        );
        assert_eq!(
            picks.iter().filter(|&&b| b == 1).count(),
            2,
            "{scheduler}: {picks:?}"
        );
        let (verdict, _) = fixture.run(&tcp4("10.77.0.2", 62999, "10.77.100.1", 80, b""));
        assert_eq!(verdict, XDP_DROP, "{scheduler}: every backend full");
        assert_eq!(fixture.reason("drop_backends_full"), 1);
    }
}

#[test]
fn p2c_spreads_new_flows_and_never_overloads_one_backend() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(&config("p2c", &[1, 1, 1, 1], ""));
    let mut counts = [0usize; 4];
    for p in 0..400u16 {
        counts[pick(&fixture, "10.77.0.2", 63000 + p)] += 1;
        // Established: p2c compares active connections.
        fixture.run(&Pkt::tcp("10.77.0.2", 63000 + p, "10.77.100.1", 80, ACK).bytes());
    }
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 20, "two choices keep counts close: {counts:?}");
}

#[test]
fn chbl_follows_the_reference_and_spills_a_hot_source_at_its_cap() {
    if !privileged() {
        return;
    }
    use pnlb_core::sched::{chbl::BoundedLoad, maglev_sched::TableHash};
    let weights = [1, 1, 1];
    let fixture = Fixture::new(&config(
        "chbl",
        &weights,
        "hash_key = \"source\"\nchbl_epsilon = 0.25",
    ));
    let keys: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("10.77.1.{}:80", 11 + i).into_bytes())
        .collect();
    let mut reference = BoundedLoad::new(
        TableHash::new(&weights, &keys, pnlb_core::maglev::TABLE_SIZE),
        0.25,
    );
    let mut picks = Vec::new();
    for p in 0..30u16 {
        let packet = tcp4("10.77.0.2", 64000 + p, "10.77.100.1", 80, b"");
        let hash = pnlb_dataplane::abi::flow_hash(
            &flow_of(&packet),
            pnlb_dataplane::abi::HashKey::PNLB_HASH_SOURCE,
            fixture.dataplane.hash_seed(),
        );
        let expected = reference
            .pick(
                &live_loads(&fixture, &weights),
                FlowInput { hash, random: 0 },
            )
            .unwrap();
        let got = pick(&fixture, "10.77.0.2", 64000 + p);
        assert_eq!(got, expected, "flow {p}");
        picks.push(got);
    }
    let owner_share = picks.iter().filter(|&&b| b == picks[0]).count();
    assert!(
        owner_share <= 13,
        "the hot source's owner stops at its cap, ceil(1.25 x 30 / 3): {picks:?}"
    );
    assert!(picks.iter().any(|&b| b != picks[0]), "the rest spills over");
}
