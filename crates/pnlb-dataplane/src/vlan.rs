//! The VLAN devices the data plane may route replies out of
//! (bpf/lib/vlan.h, pnlb_vlan_devices): the FIB names a VLAN device, the
//! program sends on its parent with the device's tag.

use libbpf_rs::{MapCore, MapFlags};

use crate::abi::{bytes_of, VlanDeviceEntry};
use crate::loader::{Dataplane, DataplaneError};
use crate::nexthop::VlanDevice;

impl Dataplane {
    /// Makes the program's VLAN device table exactly `devices`.
    pub fn set_vlan_devices(&self, devices: &[VlanDevice]) -> Result<(), DataplaneError> {
        let map = &self.maps().pnlb_vlan_devices;
        let failed = |source| DataplaneError::Map {
            map: "pnlb_vlan_devices",
            source,
        };
        let stale: Vec<Vec<u8>> = map
            .keys()
            .filter(|key| {
                let ifindex = key
                    .as_slice()
                    .try_into()
                    .map(u32::from_ne_bytes)
                    .unwrap_or(0);
                !devices.iter().any(|d| d.ifindex == ifindex)
            })
            .collect();
        for key in stale {
            map.delete(&key).map_err(failed)?;
        }
        for device in devices {
            let value = VlanDeviceEntry {
                parent_ifindex: device.parent_ifindex,
                vid: device.vid,
                ..Default::default()
            };
            map.update(
                &device.ifindex.to_ne_bytes(),
                bytes_of(&value),
                MapFlags::ANY,
            )
            .map_err(failed)?;
        }
        Ok(())
    }
}
