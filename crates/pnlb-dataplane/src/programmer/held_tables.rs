//! The table maps this process put into the map of maps, kept open.
//!
//! Writing a published table in place, closing it and opening it again
//! need a file descriptor of it. Reading one back from the map of maps
//! gives only the map's id, and an id becomes a descriptor only with
//! CAP_SYS_ADMIN (BPF_MAP_GET_FD_BY_ID), which the packaged unit does not
//! grant. So the descriptor a table was created with is kept, as many as
//! five eighths of the open-file limit (an apply's batch of new tables
//! takes up to an eighth more, the rest is the daemon's sockets and
//! maps); a table not kept (over that budget,
//! or published by an earlier process) is swapped whole when it changes,
//! as every table was before in-place writes.

use std::collections::HashMap;

use libbpf_rs::MapHandle;

pub(super) struct HeldTables {
    /// By service slot.
    maps: HashMap<u32, MapHandle>,
    /// Most descriptors kept.
    budget: usize,
    /// A table was not kept for want of budget.
    refused_one: bool,
    /// ... and the operator was told (once is enough).
    told: bool,
}

impl Default for HeldTables {
    fn default() -> Self {
        Self {
            maps: HashMap::new(),
            budget: open_file_limit() / 8 * 5,
            refused_one: false,
            told: false,
        }
    }
}

impl HeldTables {
    /// The table published at `slot`, if this process holds it.
    pub(super) fn get(&self, slot: u32) -> Option<&MapHandle> {
        self.maps.get(&slot)
    }

    /// Keeps `map`, now published at `slot` (the descriptor of the one it
    /// replaced is closed), if the budget allows.
    pub(super) fn hold(&mut self, slot: u32, map: MapHandle) {
        if self.maps.contains_key(&slot) || self.has_room() {
            self.maps.insert(slot, map);
        } else {
            self.refused_one = true;
        }
    }

    /// The first time a table could not be kept: what to tell the operator.
    pub(super) fn budget_problem(&mut self) -> Option<String> {
        if !self.refused_one || self.told {
            return None;
        }
        self.told = true;
        Some(format!(
            "scheduling tables: {} kept open (5/8 of the open-file limit, {}); changes to the others' tables are swapped in whole and wait for an RCU grace period each apply, and new services get no spare table. Raise LimitNOFILE (ulimit -n)",
            self.maps.len(),
            open_file_limit()
        ))
    }

    /// `slot`'s table is no longer known to be the one published there.
    pub(super) fn forget(&mut self, slot: u32) {
        self.maps.remove(&slot);
    }

    pub(super) fn has_room(&self) -> bool {
        self.maps.len() < self.budget
    }
}

/// The process's soft limit on open files.
pub(super) fn open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    }
}
