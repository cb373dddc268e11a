//! The nodes behind ECMP, for nat (pnlb_abi.h's `pnlb_nodes`): the live
//! nodes in address order, self included, and their MACs, so that a packet
//! of a flow this node holds no entry of goes to the flow's designated
//! node (bpf/lib/nodes.h).

use libbpf_rs::{MapCore, MapFlags};

use crate::abi::{self, bytes_of, MetaSlot};
use crate::loader::{Dataplane, DataplaneError};

/// One node as the data plane reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    pub mac: [u8; 6],
    /// Our MAC on `ifindex`.
    pub src_mac: [u8; 6],
    pub ifindex: u32,
    pub is_self: bool,
}

/// The most nodes the data plane takes.
pub const MAX_NODES: usize = abi::NodeLimits::PNLB_MAX_NODES.0 as usize;

impl Dataplane {
    /// Publishes the live nodes (in the order every node agrees on:
    /// their addresses'; fewer than two turns designated nodes off), the
    /// list before the last change (a flow's second chance; empty: none),
    /// and the MAC of every other node known, live or not: a frame from
    /// any of them is never handed on again (two nodes whose lists
    /// disagree must not pass a packet back and forth). Each count goes to
    /// 0 first and to its value last, so no packet reads a half-written
    /// list.
    pub fn set_nodes(
        &self,
        nodes: &[Node],
        previous: &[Node],
        peer_macs: &[[u8; 6]],
    ) -> Result<(), DataplaneError> {
        let maps = self.maps();
        self.write_nodes(
            &maps.pnlb_nodes_previous,
            "pnlb_nodes_previous",
            MetaSlot::PNLB_META_NODES_PREVIOUS,
            previous,
        )?;
        self.write_nodes(
            &maps.pnlb_nodes,
            "pnlb_nodes",
            MetaSlot::PNLB_META_NODES,
            nodes,
        )?;
        let map_err = |source| DataplaneError::Map {
            map: "pnlb_node_macs",
            source,
        };
        let macs = &maps.pnlb_node_macs;
        let old: Vec<Vec<u8>> = macs.keys().collect();
        for key in old {
            let _ = macs.delete(&key);
        }
        let others = nodes.iter().chain(previous).filter(|node| !node.is_self);
        for mac in others.map(|node| node.mac).chain(peer_macs.iter().copied()) {
            let key = abi::MacKey {
                mac,
                ..Default::default()
            };
            macs.update(bytes_of(&key), &1u32.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err)?;
        }
        Ok(())
    }

    fn write_nodes(
        &self,
        map: &dyn MapCore,
        name: &'static str,
        count: MetaSlot,
        nodes: &[Node],
    ) -> Result<(), DataplaneError> {
        let nodes = &nodes[..nodes.len().min(MAX_NODES)];
        self.set_meta(count, 0)?;
        for (index, node) in nodes.iter().enumerate() {
            let entry = abi::Node {
                mac: node.mac,
                src_mac: node.src_mac,
                ifindex: node.ifindex,
                is_self: u32::from(node.is_self),
            };
            map.update(
                &(index as u32).to_ne_bytes(),
                bytes_of(&entry),
                MapFlags::ANY,
            )
            .map_err(|source| DataplaneError::Map { map: name, source })?;
        }
        if nodes.len() >= 2 {
            self.set_meta(count, nodes.len() as u32)?;
        }
        Ok(())
    }
}
