//! TCP connections from a chosen source address of a namespace (std's
//! TcpStream cannot bind before it connects): for tests that hold flows
//! open from one client address while another carries the load.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut out: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    out.sin_family = libc::AF_INET as libc::sa_family_t;
    out.sin_port = addr.port().to_be();
    out.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    out
}

/// Connects from `source` (any port) to `target` within `timeout` (a
/// blocking connect honours SO_SNDTIMEO); the calling thread's namespace.
pub fn connect_from(
    source: Ipv4Addr,
    target: SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let check = |result: libc::c_int| {
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    };
    // SAFETY: plain socket calls on a descriptor owned here; the pointers
    // are to live values of the sizes passed.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let owned = OwnedFd::from_raw_fd(fd);
        let limit = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        check(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&limit as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        ))?;
        let local = sockaddr(SocketAddrV4::new(source, 0));
        check(libc::bind(
            fd,
            (&local as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        ))?;
        let remote = sockaddr(target);
        match check(libc::connect(
            fd,
            (&remote as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        )) {
            Ok(_) => Ok(TcpStream::from(owned)),
            Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))
            }
            Err(err) => Err(err),
        }
    }
}
