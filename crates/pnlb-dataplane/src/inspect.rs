//! Reading a running data plane from outside the daemon that loaded it:
//! the pnlb program attached to an interface leads to its maps, which any
//! process with CAP_BPF may read. What the connection tables hold, counted
//! this way, is the reference the daemon's own counts are checked against.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use libbpf_rs::libbpf_sys;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::abi::{from_bytes, ip_of, Backend, BackendFlags, Conn};
use crate::conntrack::{is_established, is_original};
use crate::loader::DataplaneError;

/// The maps of an attached pnlb program.
pub struct AttachedTables {
    maps: BTreeMap<String, MapHandle>,
}

fn failed(what: &'static str) -> impl Fn(libbpf_rs::Error) -> DataplaneError {
    move |source| DataplaneError::Map { map: what, source }
}

fn os_error(what: &'static str) -> DataplaneError {
    DataplaneError::Map {
        map: what,
        source: libbpf_rs::Error::from(std::io::Error::last_os_error()),
    }
}

impl AttachedTables {
    /// The maps of the XDP program attached to `ifindex` (in this thread's
    /// network namespace).
    pub fn of_interface(ifindex: u32) -> Result<Self, DataplaneError> {
        let mut query = libbpf_sys::bpf_xdp_query_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _,
            ..Default::default()
        };
        // SAFETY: valid opts of the declared size.
        if unsafe { libbpf_sys::bpf_xdp_query(ifindex as i32, 0, &mut query) } != 0 {
            return Err(os_error("xdp query"));
        }
        let prog_id = if query.prog_id != 0 {
            query.prog_id
        } else {
            query.drv_prog_id.max(query.skb_prog_id)
        };
        // SAFETY: plain syscall wrapper.
        let prog = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(prog_id) };
        if prog < 0 {
            return Err(os_error("attached program"));
        }
        let mut ids = vec![0u32; 64];
        let mut info = libbpf_sys::bpf_prog_info {
            nr_map_ids: ids.len() as u32,
            map_ids: ids.as_mut_ptr() as u64,
            ..Default::default()
        };
        let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
        // SAFETY: info and len describe a valid buffer; map_ids has room for
        // nr_map_ids entries.
        let rc = unsafe {
            libbpf_sys::bpf_prog_get_info_by_fd(
                prog,
                (&mut info as *mut libbpf_sys::bpf_prog_info).cast(),
                &mut len,
            )
        };
        // SAFETY: prog is our fd.
        unsafe { libc::close(prog) };
        if rc != 0 {
            return Err(os_error("program info"));
        }
        ids.truncate((info.nr_map_ids as usize).min(64));
        let mut maps = BTreeMap::new();
        for id in ids {
            let map = MapHandle::from_map_id(id).map_err(failed("map by id"))?;
            maps.insert(map.name().to_string_lossy().into_owned(), map);
        }
        Ok(Self { maps })
    }

    fn map(&self, name: &'static str) -> Result<&MapHandle, DataplaneError> {
        self.maps.get(name).ok_or_else(|| DataplaneError::Map {
            map: name,
            source: libbpf_rs::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound)),
        })
    }

    /// Entries in each connection map: (established, new).
    pub fn entries(&self) -> Result<(usize, usize), DataplaneError> {
        Ok((
            self.map("pnlb_conns")?.keys().count(),
            self.map("pnlb_conns_new")?.keys().count(),
        ))
    }

    /// Flows per backend (address, port) as the tables hold them now:
    /// (established, other), by each flow's original entry, counting only
    /// flows of the backend slot's current occupant.
    pub fn flows_per_backend(&self) -> Result<BTreeMap<SocketAddr, (u64, u64)>, DataplaneError> {
        let mut occupants: BTreeMap<u32, (u32, SocketAddr)> = BTreeMap::new();
        let copies = self.map("pnlb_live_copy")?;
        let backends = self.map("pnlb_backends")?;
        for (key, value) in crate::batch::entries(copies, 4096) {
            let (Some(id), Some(copy)) = (from_bytes::<u32>(&key), from_bytes::<u32>(&value))
            else {
                continue;
            };
            let index = id * 2 + (copy & 1);
            let Some(backend) = backends
                .lookup(&index.to_ne_bytes(), MapFlags::ANY)
                .map_err(failed("pnlb_backends"))?
                .and_then(|v| from_bytes::<Backend>(&v))
            else {
                continue;
            };
            if backend.flags & BackendFlags::PNLB_BACKEND_F_PRESENT.0 as u8 != 0 {
                let address = SocketAddr::new(ip_of(&backend.addr), u16::from_be(backend.port));
                occupants.insert(id, (backend.generation, address));
            }
        }
        let mut flows: BTreeMap<SocketAddr, (u64, u64)> = occupants
            .values()
            .map(|(_, address)| (*address, (0, 0)))
            .collect();
        for name in ["pnlb_conns", "pnlb_conns_new"] {
            for (_, value) in crate::batch::entries(self.map(name)?, 4096) {
                let Some(conn) = from_bytes::<Conn>(&value) else {
                    continue;
                };
                if !is_original(&conn) {
                    continue;
                }
                let Some((generation, address)) = occupants.get(&conn.backend_id) else {
                    continue;
                };
                if *generation != conn.backend_generation {
                    continue;
                }
                let count = flows.entry(*address).or_default();
                if is_established(&conn) {
                    count.0 += 1;
                } else {
                    count.1 += 1;
                }
            }
        }
        Ok(flows)
    }
}
