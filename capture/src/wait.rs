//! Waiting for a live capture's next block of packets without handing the wait to libpcap.
//!
//! With its memory-mapped ring (TPACKET_V3), libpcap's blocking read waits in `poll` until the kernel
//! retires a block, and the kernel never retires an empty one: on a quiet link a read can wait for the
//! next packet forever, and `pcap_breakloop` did not wake it on Debian 12's libpcap 1.10.3 (the wait
//! resumed after the wake-up). So the capture reads in non-blocking mode and waits here, in `poll(2)` on
//! libpcap's selectable descriptor with our own timeout: a stop is seen within that timeout whatever the
//! traffic. The pcap crate has no wait of its own, and `libc::poll` is the one call this needs.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// Waits until `fd` is readable or `timeout_ms` has passed; `true` when readable (or on an error,
/// which the next read then reports).
pub fn readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid `pollfd`, owned by this frame for the whole call; `nfds` is 1.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
    ready != 0
}
