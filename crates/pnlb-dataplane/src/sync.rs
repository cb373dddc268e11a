//! The data plane's side of failover sync: reading the flows the program
//! reports (pnlb_conn_events), listing the table for a full dump, and
//! installing flows a peer reported. Entries are the flows' original
//! (client -> VIP) entries; a nat/snat flow's reply entry is derived from
//! it, as the program itself derives it.

use std::cell::RefCell;
use std::rc::Rc;

use libbpf_rs::{MapCore, MapFlags, MapHandle, RingBuffer, RingBufferBuilder};

use crate::abi::{self, bytes_of, from_bytes, Conn, FlowKey};
use crate::conntrack::{handle, has_flag, is_original, monotonic_ns, peer_key, ConnTables, Table};
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

fn map_err(table: Table) -> impl Fn(libbpf_rs::Error) -> DataplaneError {
    move |source| DataplaneError::Map {
        map: table.map_name(),
        source,
    }
}

impl Dataplane {
    /// A handle on the ring the program reports flows in (loaded with sync
    /// on), for the thread that reads it ([`ConnEvents::open`]).
    pub fn conn_event_ring(&self) -> Result<MapHandle, DataplaneError> {
        handle(&self.maps().pnlb_conn_events, "pnlb_conn_events")
    }
}

impl ConnEvents {
    /// Starts reading the program's flow reports from `ring`.
    pub fn open(ring: &MapHandle) -> Result<ConnEvents, DataplaneError> {
        let queue: Rc<RefCell<Vec<Flow>>> = Rc::default();
        let sink = queue.clone();
        let mut builder = RingBufferBuilder::new();
        builder
            .add(ring, move |data: &[u8]| {
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
}

impl ConnTables {
    /// Every flow in the tables (its original entry), for a full dump.
    pub fn flows(&self) -> Result<Vec<Flow>, DataplaneError> {
        let mut flows = Vec::new();
        for table in Table::BOTH {
            flows.extend(
                crate::batch::entries(self.map(table), 4096)
                    .filter_map(|(key, value)| {
                        Some((from_bytes::<FlowKey>(&key)?, from_bytes::<Conn>(&value)?))
                    })
                    .filter(|(_, conn)| is_original(conn)),
            );
        }
        Ok(flows)
    }

    /// Removes a flow a peer reported ended: its original entry and, for
    /// nat/snat, its reply entry.
    pub fn remove_flow(&self, key: &FlowKey) -> Result<(), DataplaneError> {
        for table in Table::BOTH {
            self.remove_from(table, key);
        }
        Ok(())
    }

    /// Removes a flow's entries (both directions) from one table.
    fn remove_from(&self, table: Table, key: &FlowKey) {
        if let Some(conn) = self.lookup_in(table, key) {
            let map = self.map(table);
            if has_flag(&conn, abi::ConnFlags::PNLB_CONN_F_NAT) {
                let _ = map.delete(bytes_of(&peer_key(&conn, key.protocol)));
            }
            let _ = map.delete(bytes_of(key));
        }
    }

    /// Installs a flow a peer reported (ids already translated to ours):
    /// its original entry and, for nat/snat, its reply entry, in the table
    /// its state belongs to; idle clocks start now. A flow whose reply key
    /// another flow holds here is not installed (its replies would reach
    /// the wrong client), nor is one the established table has no room for.
    pub fn install_flow(&self, key: &FlowKey, conn: &Conn) -> Result<(), DataplaneError> {
        let now = monotonic_ns();
        let mut original = *conn;
        original.direction = abi::ConnDirection::PNLB_DIR_ORIGINAL.0 as u8;
        original.created_ns = now;
        original.last_seen_ns = now;
        let table = if u32::from(original.state) == abi::ConnState::PNLB_CT_SYN_SENT.0 {
            Table::New
        } else {
            Table::Established
        };
        if table == Table::Established {
            // A copy reported while the flow was half-open goes: a flow is
            // held (and counted) in one table.
            self.remove_from(Table::New, key);
        }
        let map = self.map(table);
        let mut reply_key = None;
        if has_flag(&original, abi::ConnFlags::PNLB_CONN_F_NAT) {
            let mut reply = original;
            reply.direction = abi::ConnDirection::PNLB_DIR_REPLY.0 as u8;
            reply.rewrite_src = key.dst;
            reply.rewrite_sport = key.dst_port;
            reply.rewrite_dst = key.src;
            reply.rewrite_dport = key.src_port;
            let key_of_reply = peer_key(&original, key.protocol);
            let held_by_other = Table::BOTH.into_iter().any(|t| {
                self.lookup_in(t, &key_of_reply).is_some_and(|held| {
                    held.rewrite_dst.words != key.src.words || held.rewrite_dport != key.src_port
                })
            });
            if held_by_other {
                return Ok(());
            }
            map.update(bytes_of(&key_of_reply), bytes_of(&reply), MapFlags::ANY)
                .map_err(map_err(table))?;
            reply_key = Some(key_of_reply);
        }
        let installed = map
            .update(bytes_of(key), bytes_of(&original), MapFlags::ANY)
            .map_err(map_err(table));
        if let (Err(_), Some(reply_key)) = (&installed, reply_key) {
            // No half-installed flow: its reply entry goes too.
            let _ = map.delete(bytes_of(&reply_key));
        }
        installed
    }
}
