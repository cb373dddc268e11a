//! The data plane's side of failover sync: reading the flows the program
//! reports (pnlb_conn_events), listing the table for a full dump, and
//! installing flows a peer reported. Entries are the flows' original
//! (client -> VIP) entries; a nat/snat flow's reply entry is derived from
//! it, as the program itself derives it.

use std::cell::RefCell;
use std::rc::Rc;

use libbpf_rs::{MapCore, MapFlags, RingBuffer, RingBufferBuilder};

use crate::abi::{self, bytes_of, from_bytes, Conn, FlowKey};
use crate::conntrack::{monotonic_ns, peer_key};
use crate::loader::{Dataplane, DataplaneError};

/// One flow: its original key and entry.
pub type Flow = (FlowKey, Conn);

/// Flows the program reported since the last [`ConnEvents::take`].
pub struct ConnEvents {
    ring: RingBuffer<'static>,
    queue: Rc<RefCell<Vec<Flow>>>,
}

impl ConnEvents {
    /// Everything reported so far.
    pub fn take(&self) -> Vec<Flow> {
        let _ = self.ring.consume();
        std::mem::take(&mut *self.queue.borrow_mut())
    }
}

fn map_err(source: libbpf_rs::Error) -> DataplaneError {
    DataplaneError::Map {
        map: "pnlb_conns",
        source,
    }
}

impl Dataplane {
    /// Starts reading the program's flow reports (loaded with sync on).
    pub fn conn_events(&self) -> Result<ConnEvents, DataplaneError> {
        let queue: Rc<RefCell<Vec<Flow>>> = Rc::default();
        let sink = queue.clone();
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&self.maps().pnlb_conn_events, move |data: &[u8]| {
                if let Some(event) = from_bytes::<abi::ConnEvent>(data) {
                    sink.borrow_mut().push((event.key, event.conn));
                }
                0
            })
            .map_err(|source| DataplaneError::Map {
                map: "pnlb_conn_events",
                source,
            })?;
        let ring = builder.build().map_err(|source| DataplaneError::Map {
            map: "pnlb_conn_events",
            source,
        })?;
        Ok(ConnEvents { ring, queue })
    }

    /// Every flow in the table (its original entry), for a full dump.
    pub fn flows(&self) -> Result<Vec<Flow>, DataplaneError> {
        Ok(self
            .maps()
            .pnlb_conns
            .lookup_batch(4096, MapFlags::ANY, MapFlags::ANY)
            .map_err(map_err)?
            .filter_map(|(key, value)| {
                Some((from_bytes::<FlowKey>(&key)?, from_bytes::<Conn>(&value)?))
            })
            .filter(|(_, conn)| conn.direction == abi::ConnDirection::PNLB_DIR_ORIGINAL.0 as u8)
            .collect())
    }

    /// Removes a flow a peer reported ended: its original entry and, for
    /// nat/snat, its reply entry.
    pub fn remove_flow(&self, key: &FlowKey) -> Result<(), DataplaneError> {
        let map = &self.maps().pnlb_conns;
        if let Some(conn) = self.lookup_connection(key) {
            if conn.flags & abi::ConnFlags::PNLB_CONN_F_NAT.0 as u8 != 0 {
                let _ = map.delete(bytes_of(&peer_key(&conn, key.protocol)));
            }
            let _ = map.delete(bytes_of(key));
        }
        Ok(())
    }

    /// Installs a flow a peer reported (ids already translated to ours):
    /// its original entry and, for nat/snat, its reply entry; idle clocks
    /// start now.
    pub fn install_flow(&self, key: &FlowKey, conn: &Conn) -> Result<(), DataplaneError> {
        let map = &self.maps().pnlb_conns;
        let now = monotonic_ns();
        let mut original = *conn;
        original.direction = abi::ConnDirection::PNLB_DIR_ORIGINAL.0 as u8;
        original.created_ns = now;
        original.last_seen_ns = now;
        if original.flags & abi::ConnFlags::PNLB_CONN_F_NAT.0 as u8 != 0 {
            let mut reply = original;
            reply.direction = abi::ConnDirection::PNLB_DIR_REPLY.0 as u8;
            reply.rewrite_src = key.dst;
            reply.rewrite_sport = key.dst_port;
            reply.rewrite_dst = key.src;
            reply.rewrite_dport = key.src_port;
            let reply_key = peer_key(&original, key.protocol);
            map.update(bytes_of(&reply_key), bytes_of(&reply), MapFlags::ANY)
                .map_err(map_err)?;
        }
        map.update(bytes_of(key), bytes_of(&original), MapFlags::ANY)
            .map_err(map_err)
    }
}
