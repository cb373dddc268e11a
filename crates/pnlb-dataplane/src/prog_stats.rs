//! CPU time spent in BPF programs, from the kernel's own accounting
//! (BPF_ENABLE_STATS): what the benchmark reports as the data plane's cost
//! per packet. Accounting is on only while the returned guard lives.

use std::os::fd::{FromRawFd, OwnedFd};

use libbpf_rs::libbpf_sys;

/// Turns run-time accounting on until the guard is dropped.
pub fn enable_run_time_stats() -> std::io::Result<OwnedFd> {
    // SAFETY: a plain syscall wrapper; a non-negative result is a new fd we own.
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// (run time in ns, runs) summed over every loaded program called `name`
/// (the kernel keeps the first 15 bytes of a program's name).
pub fn run_stats(name: &str) -> (u64, u64) {
    let mut totals = (0u64, 0u64);
    let mut id = 0u32;
    loop {
        let mut next = 0u32;
        // SAFETY: next is a valid out-pointer.
        if unsafe { libbpf_sys::bpf_prog_get_next_id(id, &mut next) } != 0 {
            break;
        }
        id = next;
        // SAFETY: returns a new fd or a negative error.
        let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
        if fd < 0 {
            continue;
        }
        // SAFETY: fd is ours to close.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut info = libbpf_sys::bpf_prog_info::default();
        let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
        // SAFETY: info is a valid buffer of len bytes.
        let rc = unsafe {
            libbpf_sys::bpf_prog_get_info_by_fd(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &mut info,
                &mut len,
            )
        };
        if rc != 0 {
            continue;
        }
        let prog_name: Vec<u8> = info
            .name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let wanted = &name.as_bytes()[..name.len().min(15)];
        if prog_name == wanted {
            totals.0 += info.run_time_ns;
            totals.1 += info.run_cnt;
        }
    }
    totals
}
