//! What a network device offers XDP, read without changing it: its driver,
//! the XDP features the kernel reports for it (Linux 6.3 and later, through
//! libbpf's `bpf_xdp_query` and the "netdev" netlink family), and the
//! offloads native XDP cares about (the ethtool ioctls `ethtool -k` uses).

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libbpf_rs::libbpf_sys;

/// The XDP actions a device's driver supports (`enum netdev_xdp_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpFeatures(pub u64);

impl XdpFeatures {
    const NAMES: [(u64, &'static str); 7] = [
        (1, "basic"),
        (2, "redirect"),
        (4, "ndo-xmit"),
        (8, "xsk-zerocopy"),
        (16, "hw-offload"),
        (32, "rx-sg"),
        (64, "ndo-xmit-sg"),
    ];

    /// XDP_PASS, XDP_DROP, XDP_TX in the driver: native XDP.
    pub fn native(self) -> bool {
        self.0 & 1 != 0
    }

    /// The driver can redirect to another device (two-arm forwarding).
    pub fn redirect(self) -> bool {
        self.0 & 2 != 0
    }

    /// Other devices can redirect to this one (it is a two-arm egress).
    pub fn redirect_target(self) -> bool {
        self.0 & 4 != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|&(_, name)| name)
            .collect()
    }
}

/// The XDP features `ifindex` reports. Kernels before 6.3 report none (0).
pub fn xdp_features(ifindex: u32) -> io::Result<XdpFeatures> {
    let index = i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _,
        ..Default::default()
    };
    // SAFETY: opts is a valid, sized bpf_xdp_query_opts that outlives the call.
    let rc = unsafe { libbpf_sys::bpf_xdp_query(index, 0, &mut opts) };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok(XdpFeatures(opts.feature_flags))
}

/// Offloads that decide whether native XDP attaches and sees whole packets.
#[derive(Clone, Copy, Debug)]
pub struct Offloads {
    /// Large receive offload: the kernel refuses native XDP while it is on.
    pub lro: bool,
    pub rx_checksum: bool,
    pub tx_checksum: bool,
    /// rx-vlan-offload: the device strips 802.1Q tags into metadata, and
    /// XDP sees tagged frames untagged.
    pub rx_vlan: bool,
}

const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GRXCSUM: u32 = 0x14;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETH_FLAG_LRO: u32 = 1 << 15;
const ETH_FLAG_RXVLAN: u32 = 1 << 8;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The driver bound to `interface` (`veth`, `mlx5_core`, `ixgbe`, ...).
pub fn driver(interface: &str) -> io::Result<String> {
    // SAFETY: all-zero bytes are a valid ethtool_drvinfo.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    ethtool(interface, (&mut info as *mut EthtoolDrvinfo).cast())?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

pub fn offloads(interface: &str) -> io::Result<Offloads> {
    let value = |cmd| -> io::Result<u32> {
        let mut v = EthtoolValue { cmd, data: 0 };
        ethtool(interface, (&mut v as *mut EthtoolValue).cast())?;
        Ok(v.data)
    };
    let flags = value(ETHTOOL_GFLAGS)?;
    Ok(Offloads {
        lro: flags & ETH_FLAG_LRO != 0,
        rx_vlan: flags & ETH_FLAG_RXVLAN != 0,
        rx_checksum: value(ETHTOOL_GRXCSUM)? != 0,
        tx_checksum: value(ETHTOOL_GTXCSUM)? != 0,
    })
}

fn ethtool(interface: &str, data: *mut c_void) -> io::Result<()> {
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero bytes are a valid ifreq.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, &byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_data = data.cast();
    // SAFETY: request names the device and points at a command buffer of
    // the size its cmd implies, alive for the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_bits_read_as_their_kernel_names() {
        let veth = XdpFeatures(1 | 2 | 4 | 32 | 64);
        assert!(veth.native() && veth.redirect() && veth.redirect_target());
        assert_eq!(
            veth.names(),
            ["basic", "redirect", "ndo-xmit", "rx-sg", "ndo-xmit-sg"]
        );
        assert!(!XdpFeatures(0).native());
    }
}
