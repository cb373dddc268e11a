//! The interfaces (links): their names, MACs, and for an 802.1Q VLAN
//! device its parent and id.

use std::io;

use super::{attributes, dump, u16_at, u32_at, RTM_GETLINK, RTM_NEWLINK};

/// struct ifinfomsg: family, pad, type (u16), index (i32), flags, change.
const IFINFOMSG_LEN: usize = 16;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_VLAN_ID: u16 = 1;
const IFLA_VLAN_PROTOCOL: u16 = 5;
const ETH_P_8021Q: u16 = 0x8100;

/// One interface of this network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// Its MAC; None for devices without one (loopback, tunnels).
    pub mac: Option<[u8; 6]>,
    /// For an 802.1Q VLAN device whose parent is in this namespace: the
    /// parent's ifindex and the VLAN id.
    pub vlan: Option<(u32, u16)>,
}

/// Every interface of this network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    dump(RTM_GETLINK, &[0u8; IFINFOMSG_LEN], RTM_NEWLINK, parse_link)
}

fn parse_link(body: &[u8]) -> Option<Link> {
    let mut link = Link {
        ifindex: u32_at(body.get(..IFINFOMSG_LEN)?, 4)?,
        ..Default::default()
    };
    let (mut parent, mut parent_elsewhere, mut vlan_id) = (None, false, None);
    for (attribute, value) in attributes(&body[IFINFOMSG_LEN..]) {
        match attribute {
            IFLA_ADDRESS => link.mac = <[u8; 6]>::try_from(value).ok(),
            IFLA_IFNAME => {
                let name = value.split(|&b| b == 0).next().unwrap_or_default();
                link.name = String::from_utf8_lossy(name).into_owned();
            }
            IFLA_LINK => parent = u32_at(value, 0),
            IFLA_LINK_NETNSID => parent_elsewhere = true,
            IFLA_LINKINFO => vlan_id = dot1q_vlan_id(value),
            _ => {}
        }
    }
    if !parent_elsewhere {
        link.vlan = parent.filter(|&p| p != 0).zip(vlan_id);
    }
    Some(link)
}

/// The VLAN id in an IFLA_LINKINFO value, if the device is an 802.1Q VLAN
/// (802.1ad devices and other kinds are not ours).
fn dot1q_vlan_id(linkinfo: &[u8]) -> Option<u16> {
    let (mut vlan, mut data) = (false, None);
    for (attribute, value) in attributes(linkinfo) {
        match attribute {
            IFLA_INFO_KIND => vlan = value.split(|&b| b == 0).next() == Some(b"vlan"),
            IFLA_INFO_DATA => data = Some(value),
            _ => {}
        }
    }
    let (mut id, mut protocol) = (None, None);
    for (attribute, value) in attributes(data.filter(|_| vlan)?) {
        match attribute {
            IFLA_VLAN_ID => id = u16_at(value, 0),
            IFLA_VLAN_PROTOCOL => {
                protocol = <[u8; 2]>::try_from(value).ok().map(u16::from_be_bytes)
            }
            _ => {}
        }
    }
    // A VLAN device made without a protocol is 802.1Q.
    (protocol.unwrap_or(ETH_P_8021Q) == ETH_P_8021Q).then_some(id?)
}

#[cfg(test)]
mod tests {
    use super::super::tests::attribute;
    use super::*;

    fn link(ifindex: u32, attributes: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        for a in attributes {
            body.extend_from_slice(a);
        }
        body
    }

    fn linkinfo(kind: &[u8], data: &[Vec<u8>]) -> Vec<u8> {
        let mut info = attribute(IFLA_INFO_KIND, kind);
        info.extend(attribute(IFLA_INFO_DATA | 0x8000, &data.concat()));
        attribute(IFLA_LINKINFO | 0x8000, &info)
    }

    #[test]
    fn vlan_devices_name_their_parent_and_id_and_others_do_not() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let dot1q = link(
            5,
            &[
                attribute(IFLA_IFNAME, b"eth0.100\0"),
                attribute(IFLA_ADDRESS, &mac),
                attribute(IFLA_LINK, &2u32.to_ne_bytes()),
                linkinfo(
                    b"vlan\0",
                    &[
                        attribute(IFLA_VLAN_PROTOCOL, &0x8100u16.to_be_bytes()),
                        attribute(IFLA_VLAN_ID, &100u16.to_ne_bytes()),
                    ],
                ),
            ],
        );
        assert_eq!(
            parse_link(&dot1q),
            Some(Link {
                ifindex: 5,
                name: "eth0.100".into(),
                mac: Some(mac),
                vlan: Some((2, 100)),
            })
        );
        let dot1ad = link(
            6,
            &[
                attribute(IFLA_LINK, &2u32.to_ne_bytes()),
                linkinfo(
                    b"vlan\0",
                    &[
                        attribute(IFLA_VLAN_PROTOCOL, &0x88a8u16.to_be_bytes()),
                        attribute(IFLA_VLAN_ID, &7u16.to_ne_bytes()),
                    ],
                ),
            ],
        );
        assert_eq!(parse_link(&dot1ad).unwrap().vlan, None, "802.1ad");
        let veth = link(
            7,
            &[
                attribute(IFLA_LINK, &8u32.to_ne_bytes()),
                attribute(IFLA_LINK_NETNSID, &0u32.to_ne_bytes()),
                linkinfo(b"veth\0", &[]),
            ],
        );
        assert_eq!(parse_link(&veth).unwrap().vlan, None, "not a VLAN");
        let mut vlan_elsewhere = dot1q.clone();
        vlan_elsewhere.extend(attribute(IFLA_LINK_NETNSID, &1u32.to_ne_bytes()));
        assert_eq!(
            parse_link(&vlan_elsewhere).unwrap().vlan,
            None,
            "a parent in another namespace is not one we can send on"
        );
        let lo = link(1, &[attribute(IFLA_IFNAME, b"lo\0")]);
        assert_eq!(parse_link(&lo).unwrap().mac, None);
        for cut in 0..dot1q.len() {
            let _ = parse_link(&dot1q[..cut]);
        }
        let mut lying = dot1q;
        lying[IFINFOMSG_LEN] = 0xff;
        let _ = parse_link(&lying);
    }
}
