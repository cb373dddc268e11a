//! The benchmark ceiling (bpf/xdp_ceiling.bpf.c): MAC rewrite and XDP_TX
//! for one IPv4 address, nothing else.

use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};
use pnlb_core::config::XdpMode;

use crate::ceiling_skel::{XdpCeilingSkel, XdpCeilingSkelBuilder};
use crate::loader::{attach_program, Attachment, DataplaneError};

pub struct XdpCeiling {
    skel: XdpCeilingSkel<'static>,
}

impl XdpCeiling {
    pub fn load() -> Result<Self, DataplaneError> {
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = XdpCeilingSkelBuilder::default()
            .open(storage)
            .map_err(DataplaneError::Load)?;
        Ok(Self {
            skel: open.load().map_err(DataplaneError::Load)?,
        })
    }

    /// Forward packets to `vip` to `mac` (from `src_mac`).
    pub fn configure(
        &self,
        vip: Ipv4Addr,
        mac: [u8; 6],
        src_mac: [u8; 6],
    ) -> Result<(), DataplaneError> {
        let mut value = [0u8; 16];
        value[..4].copy_from_slice(&vip.octets());
        value[4..10].copy_from_slice(&mac);
        value[10..16].copy_from_slice(&src_mac);
        self.skel
            .maps
            .pnlb_ceiling_config
            .update(&0u32.to_ne_bytes(), &value, MapFlags::ANY)
            .map_err(|source| DataplaneError::Map {
                map: "pnlb_ceiling_config",
                source,
            })
    }

    pub fn attach(&self, interface: &str) -> Result<Attachment, DataplaneError> {
        attach_program(
            self.skel
                .progs
                .pnlb_xdp_ceiling
                .as_fd()
                .try_clone_to_owned(),
            interface,
            XdpMode::Native,
        )
    }
}
