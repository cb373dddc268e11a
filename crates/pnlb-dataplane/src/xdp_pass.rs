//! The pass-everything XDP program (bpf/xdp_pass.bpf.c).
//!
//! On veth, frames sent with native XDP_TX/XDP_REDIRECT are dropped unless
//! the receiving peer runs an XDP program, so anything that forwards over
//! veth (the lab, containers) attaches this to the peers.

use std::mem::MaybeUninit;
use std::os::fd::AsFd;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;
use pnlb_core::config::XdpMode;

use crate::loader::{attach_program, Attachment, DataplaneError};
use crate::pass_skel::{XdpPassSkel, XdpPassSkelBuilder};

pub struct XdpPass {
    skel: XdpPassSkel<'static>,
}

impl XdpPass {
    pub fn load() -> Result<Self, DataplaneError> {
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = XdpPassSkelBuilder::default()
            .open(storage)
            .map_err(DataplaneError::Load)?;
        Ok(Self {
            skel: open.load().map_err(DataplaneError::Load)?,
        })
    }

    /// The program, e.g. for BPF_PROG_TEST_RUN (the benchmarks' floor: a
    /// program that does nothing).
    pub fn program(&self) -> &libbpf_rs::ProgramMut<'static> {
        &self.skel.progs.pnlb_xdp_pass
    }

    /// Attaches in native mode. Returns the attachment; dropping it detaches.
    pub fn attach(&self, interface: &str) -> Result<Attachment, DataplaneError> {
        attach_program(
            self.skel.progs.pnlb_xdp_pass.as_fd().try_clone_to_owned(),
            interface,
            XdpMode::Native,
        )
    }
}
