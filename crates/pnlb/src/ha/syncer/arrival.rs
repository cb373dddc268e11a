//! Datagrams with the instant the kernel received them (SO_TIMESTAMPNS),
//! not the instant the sync thread got to them: behind a queue of flow
//! batches a Hello can wait tens of ms, and the instant a node's list
//! switches is reckoned from its arrival (ha/membership.rs).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Asks the kernel to stamp every datagram `socket` receives.
pub(super) fn stamp_arrivals(socket: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of its size.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One datagram into `buffer`: its length, sender and arrival (now, when
/// the kernel gave no stamp).
pub(super) fn receive(
    socket: &UdpSocket,
    buffer: &mut [u8],
) -> io::Result<(usize, SocketAddr, Instant)> {
    // SAFETY: plain data; zeroed is a valid start for each.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: plain data; every pointer set below outlives the call.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: the header points at live buffers of the sizes it states.
    let len = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut header, 0) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let now = Instant::now();
    let arrived = stamp(&header)
        .and_then(|stamp| SystemTime::now().duration_since(stamp).ok())
        .map_or(now, |ago| now.checked_sub(ago).unwrap_or(now));
    let sender = address(&from).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "a datagram from no IP address")
    })?;
    Ok((len as usize, sender, arrived))
}

/// The SCM_TIMESTAMPNS stamp among `header`'s control messages.
fn stamp(header: &libc::msghdr) -> Option<SystemTime> {
    // SAFETY: the CMSG_* walk stays within the control buffer the kernel
    // filled (msg_controllen), as its macros guarantee.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let time: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                let since = Duration::new(
                    u64::try_from(time.tv_sec).ok()?,
                    u32::try_from(time.tv_nsec).ok()?,
                );
                return UNIX_EPOCH.checked_add(since);
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
}

fn address(from: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(from.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let v4: &libc::sockaddr_in =
                unsafe { &*(from as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(v4.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let v6: &libc::sockaddr_in6 =
                unsafe { &*(from as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            Some(SocketAddr::new(ip, u16::from_be(v6.sin6_port)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_carries_when_the_kernel_took_it() {
        let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
        stamp_arrivals(&receiver).expect("SO_TIMESTAMPNS");
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        // The kernel turns its receive stamps on a moment after the first
        // socket asks (a deferred static key); a long-lived socket never
        // sees that moment.
        std::thread::sleep(Duration::from_millis(100));
        sender
            .send_to(b"hello", receiver.local_addr().expect("address"))
            .expect("send");
        let sent = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let mut buffer = [0u8; 64];
        let (len, from, arrived) = receive(&receiver, &mut buffer).expect("receive");
        assert_eq!(
            (&buffer[..len], from),
            (&b"hello"[..], sender.local_addr().expect("address"))
        );
        let late = arrived.saturating_duration_since(sent);
        assert!(
            late < Duration::from_millis(20),
            "stamped on arrival, not when read: {late:?}"
        );
    }
}
