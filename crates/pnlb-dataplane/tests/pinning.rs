//! A data plane pinned in a bpffs (pinning.rs): a second load adopts the
//! maps (flows, slots, generations, the seed) and a programmer rebuilt from
//! them keeps every slot; a data plane of another ABI, or maps of another
//! size, are refused with the command that clears the way. The bpffs is
//! the test's own ([`support::Bpffs`]).

mod support;

use std::path::Path;

use pnlb_dataplane::abi::{self, MetaSlot};
use pnlb_dataplane::pinning;
use pnlb_dataplane::{Dataplane, DataplaneError, LoadOptions, Programmer};
use support::*;

const CONFIG: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "nat4"
vip = "10.77.100.1"
port = 80
method = "nat"
scheduler = "rr"
[[service.backend]]
address = "10.77.1.11"
[[service.backend]]
address = "10.77.1.12"
"#;

fn options(dir: &Path, conn_table_size: u32, hash_seed: u32) -> LoadOptions {
    LoadOptions {
        hash_seed,
        pin_dir: Some(dir.to_path_buf()),
        ..LoadOptions::for_tests(conn_table_size)
    }
}

#[test]
fn a_second_load_adopts_flows_and_slots_and_refuses_what_it_cannot_read() {
    if !privileged() {
        return;
    }
    let bpffs = Bpffs::mount("pin-test");
    assert!(pinning::on_bpffs(&bpffs.0));
    let dir = pinning::instance_dir(&bpffs.0);
    let config = parse_config(CONFIG);

    let first = Dataplane::load_with(options(&dir, 65_536, 0x1234_5678)).expect("first load");
    assert!(!first.adopted());
    let mut programmer = Programmer::adopt(&first, &config).unwrap();
    let mut resolver = StaticResolver {
        ifindex: TEST_RUN_IFINDEX,
        vlan: 0,
        unreachable: Vec::new(),
    };
    programmer.apply(&first, &config, &mut resolver).unwrap();
    let syn = Pkt::tcp("10.77.0.2", 40000, "10.77.100.1", 80, SYN).bytes();
    assert_eq!(test_run(first.program(), &syn).0, XDP_TX);
    let ids = [
        programmer.backend_id("nat4", "10.77.1.11".parse().unwrap(), 80),
        programmer.backend_id("nat4", "10.77.1.12".parse().unwrap(), 80),
    ];
    assert!(ids.iter().all(Option::is_some), "{ids:?}");
    let flow = first.lookup_connection(&flow_of(&syn)).expect("the flow");
    assert_copies_mirror_services(&first, "first load");
    drop(programmer);
    drop(first);
    // Copies by id a process of another version might have left: every
    // one of nat4's listener, none of its service. Adoption trusts none.
    let stale = libbpf_rs::MapHandle::from_pinned_path(dir.join("pnlb_service_copies")).unwrap();
    for index in 0..8u32 {
        let copy = abi::ServiceCopy {
            key: abi::ServiceKey {
                vip: abi::addr("10.77.100.1".parse().unwrap()),
                port: 80u16.to_be(),
                protocol: 6,
                _pad: 0,
            },
            service: abi::Service {
                id: index / 2,
                method: abi::Method::PNLB_METHOD_DR.0 as u8,
                ..Default::default()
            },
        };
        stale
            .update(
                &index.to_ne_bytes(),
                abi::bytes_of(&copy),
                libbpf_rs::MapFlags::ANY,
            )
            .unwrap();
    }
    drop(stale);

    let meta = pinning::pinned_meta(&dir)
        .unwrap()
        .expect("meta left behind");
    assert_eq!(meta.abi_version, abi::ABI_VERSION);
    assert_eq!(meta.hash_seed, 0x1234_5678, "the seed is kept for the next");
    let second = Dataplane::load_with(options(&dir, 65_536, meta.hash_seed)).expect("adopt");
    assert!(second.adopted());
    let adopted = second
        .lookup_connection(&flow_of(&syn))
        .expect("the flow outlived the first load");
    assert_eq!(
        (adopted.backend_id, adopted.backend_generation),
        (flow.backend_id, flow.backend_generation)
    );
    let mut programmer = Programmer::adopt(&second, &config).unwrap();
    assert_copies_mirror_services(&second, "adopted over stale copies");
    assert_eq!(programmer.slots_in_use(), (1, 2));
    programmer.apply(&second, &config, &mut resolver).unwrap();
    assert_eq!(
        [
            programmer.backend_id("nat4", "10.77.1.11".parse().unwrap(), 80),
            programmer.backend_id("nat4", "10.77.1.12".parse().unwrap(), 80),
        ],
        ids,
        "every backend keeps its slot"
    );
    // The flow's next packet goes where it went.
    let ack = Pkt::tcp("10.77.0.2", 40000, "10.77.100.1", 80, ACK).bytes();
    let (verdict, out) = test_run(second.program(), &ack);
    assert_eq!(verdict, XDP_TX);
    let (_, _, backend, _) = endpoints(&out);
    assert_eq!(
        Some(flow.backend_id),
        programmer.backend_id("nat4", backend, 80)
    );
    drop(programmer);
    drop(second);

    // A config changed while no daemon ran: the removed backend retires
    // (its flows go on), the kept one keeps its slot, a new service and
    // backend get slots nobody holds.
    let changed = parse_config(
        &(CONFIG.replace("[[service.backend]]\naddress = \"10.77.1.12\"\n", "")
            + "\n[[service]]\nname = \"dr4\"\nvip = \"10.77.100.5\"\nport = 80\nmethod = \"dr\"\n[[service.backend]]\naddress = \"10.77.1.51\"\n"),
    );
    let third = Dataplane::load_with(options(&dir, 65_536, meta.hash_seed)).expect("adopt again");
    let mut programmer = Programmer::adopt(&third, &changed).unwrap();
    programmer.apply(&third, &changed, &mut resolver).unwrap();
    assert_eq!(
        programmer.backend_id("nat4", "10.77.1.11".parse().unwrap(), 80),
        ids[0],
        "the kept backend keeps its slot"
    );
    let retiring = programmer.retiring();
    assert_eq!(retiring.len(), 1, "{retiring:?}");
    assert_eq!(
        Some(retiring[0].3),
        ids[1],
        "the removed one retires in its slot"
    );
    let fresh = programmer
        .backend_id("dr4", "10.77.1.51".parse().unwrap(), 80)
        .expect("a slot for the new backend");
    assert!(!ids.contains(&Some(fresh)), "not a slot in use");
    assert_ne!(programmer.service_id("dr4"), programmer.service_id("nat4"));
    drop(programmer);
    drop(third);

    // Maps of another size do not fit.
    match Dataplane::load_with(options(&dir, 131_072, meta.hash_seed)) {
        Err(err @ DataplaneError::Incompatible { .. }) => {
            println!("{err}");
            assert!(err.to_string().contains("pnlb down"), "{err}");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a table of another size was adopted"),
    }

    // Another ABI: refused before anything is loaded.
    let meta_map =
        libbpf_rs::MapHandle::from_pinned_path(dir.join("pnlb_meta")).expect("pinned meta");
    use libbpf_rs::MapCore;
    meta_map
        .update(
            &MetaSlot::PNLB_META_ABI_VERSION.0.to_ne_bytes(),
            &999u32.to_ne_bytes(),
            libbpf_rs::MapFlags::ANY,
        )
        .unwrap();
    match Dataplane::load_with(options(&dir, 65_536, meta.hash_seed)) {
        Err(err) => {
            println!("{err}");
            assert!(err.to_string().contains("ABI version 999"), "{err}");
        }
        Ok(_) => panic!("another ABI was adopted"),
    }
    let removed = pinning::remove(&dir).unwrap();
    assert!(removed.len() > 10, "{removed:?}");
    assert!(!dir.exists());
}
