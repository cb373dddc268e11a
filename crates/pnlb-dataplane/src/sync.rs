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
    /// Every established flow (its original entry), for a full dump: what
    /// the sync carries. Half-open flows stay out, as the data plane keeps
    /// them out of its reports: a flood of them churns only this node's
    /// new-flow table, never the sync stream or a peer's tables.
    pub fn flows(&self) -> Result<Vec<Flow>, DataplaneError> {
        self.flows_in(Table::Established)
    }

    /// Every flow (its original entry) in one table.
    pub fn flows_in(&self, table: Table) -> Result<Vec<Flow>, DataplaneError> {
        Ok(
            crate::batch::entries(self.map(table), crate::batch::HASH_BATCH)
                .filter_map(|(key, value)| {
                    Some((from_bytes::<FlowKey>(&key)?, from_bytes::<Conn>(&value)?))
                })
                .filter(|(_, conn)| is_original(conn))
                .collect(),
        )
    }

    /// The established flows this node carries: those it saw packets of,
    /// not those only installed from a peer's report (nodes behind ECMP
    /// each tell the others of their own).
    pub fn own_flows(&self) -> Result<Vec<Flow>, DataplaneError> {
        let synced = abi::ConnFlags::PNLB_CONN_F_SYNCED;
        Ok(self
            .flows()?
            .into_iter()
            .filter(|(_, conn)| !has_flag(conn, synced))
            .collect())
    }

    /// Removes the established flows (both entries of nat/snat ones) that
    /// nothing installed, reported or carried since `since_ns` (monotonic):
    /// after a whole dump fetched from then on, those the active node no
    /// longer holds — ends this node missed. Returns how many went.
    pub fn purge_untouched_since(&self, since_ns: u64) -> Result<u64, DataplaneError> {
        let stale: Vec<FlowKey> =
            crate::batch::entries(self.map(Table::Established), crate::batch::HASH_BATCH)
                .filter_map(|(key, value)| {
                    Some((from_bytes::<FlowKey>(&key)?, from_bytes::<Conn>(&value)?))
                })
                .filter(|(_, conn)| is_original(conn) && conn.last_seen_ns < since_ns)
                .map(|(key, _)| key)
                .collect();
        let mut purged = 0;
        for key in &stale {
            // Read again: a packet or a report may have touched it since.
            if self
                .lookup_in(Table::Established, key)
                .is_some_and(|conn| conn.last_seen_ns < since_ns)
            {
                self.remove_from(Table::Established, key);
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// The established flow under `key`, as the sync carries it.
    pub fn established(&self, key: &FlowKey) -> Option<Conn> {
        self.lookup_in(Table::Established, key)
    }

    /// Removes a flow a peer reported ended: its original entry and, for
    /// nat/snat, its reply entry. An snat flow's reply key rests here as it
    /// does on the peer: this node may take the traffic over, and must not
    /// hand that port to a new flow while the backend holds it.
    pub fn remove_flow(&self, key: &FlowKey) -> Result<(), DataplaneError> {
        for table in Table::BOTH {
            self.remove_from(table, key);
        }
        Ok(())
    }

    /// Removes a flow's entries (both directions) from one table; an
    /// established TCP snat flow's reply key rests from now (as the sweep
    /// rests the flows it ends).
    fn remove_from(&self, table: Table, key: &FlowKey) {
        if let Some(conn) = self.lookup_in(table, key) {
            let map = self.map(table);
            let reply_key = peer_key(&conn, key.protocol);
            if has_flag(&conn, abi::ConnFlags::PNLB_CONN_F_NAT) {
                let _ = map.delete(bytes_of(&reply_key));
            }
            let _ = map.delete(bytes_of(key));
            if table == Table::Established
                && is_original(&conn)
                && key.protocol == libc::IPPROTO_TCP as u8
                && has_flag(&conn, abi::ConnFlags::PNLB_CONN_F_SNAT)
            {
                self.rest_snat_key(&reply_key, monotonic_ns());
            }
        }
    }

    /// Installs an established flow a peer reported (ids already
    /// translated to ours): its original entry and, for nat/snat, its
    /// reply entry, in the established table, as on the peer; idle clocks
    /// start now. A flow whose reply key another flow holds here is not
    /// installed (its replies would reach the wrong client), nor is one the
    /// established table has no room for.
    pub fn install_flow(&self, key: &FlowKey, conn: &Conn) -> Result<(), DataplaneError> {
        let now = monotonic_ns();
        let mut original = *conn;
        original.direction = abi::ConnDirection::PNLB_DIR_ORIGINAL.0 as u8;
        original.created_ns = now;
        original.last_seen_ns = now;
        // The peer's kernel tick means nothing here: 0 has the flow's next
        // packet here stamp it (conntrack.h, PNLB_CONN_TOUCH_TICKS).
        original.touched = 0;
        // A peer's flow until a packet of it comes here; one this node
        // carries too (its client's packets come here, its replies there)
        // stays carried here, or each node's next packet would claim it
        // back and report it again, packet after packet.
        let synced = abi::ConnFlags::PNLB_CONN_F_SYNCED;
        let carried_here = self
            .lookup_in(Table::Established, key)
            .is_some_and(|held| !has_flag(&held, synced));
        original.flags &= !(synced.0 as u8);
        if !carried_here {
            original.flags |= synced.0 as u8;
        }
        let table = Table::Established;
        // A copy this node holds half-open goes: a flow is held (and
        // counted) in one table.
        self.remove_from(Table::New, key);
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
