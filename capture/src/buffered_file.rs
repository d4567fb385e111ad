//! A capture file opened for libpcap with a large stdio read buffer.
//!
//! libpcap reads a savefile through C stdio (`fread` of each record header and each packet), and
//! glibc gives a stream a buffer of the file's block size: 4 KiB on ext4 and overlayfs. A 1 GB capture
//! is then about 250,000 `read` system calls, which can be most of the libpcap floor's time (system
//! time above user time; `benches/RESULTS.md`). Opening the file ourselves lets us give the stream a larger
//! buffer before its first read (`setvbuf`, as C requires) and hand it to libpcap
//! (`pcap_fopen_offline`); libpcap reads exactly as before, in fewer, larger system calls. The pcap
//! crate opens files only by name or by descriptor, without a buffer, so this is the one place where the
//! project calls C itself.
//!
//! The same opening lets us turn off the stream's own locking (`__fsetlocking`, `FSETLOCKING_BYCALLER`,
//! glibc's and musl's `stdio_ext.h`). Once a process has a second thread, glibc locks a stream around
//! every `fread`: two atomic read-modify-writes per call and two calls per packet. In the pipeline's
//! reader that is a large share of its CPU (perf annotate: the `lock cmpxchg` in `fread`), because a
//! locked instruction waits for the reader's pending stores into the batch. The stream is
//! reached only through the capture, which Rust lends to one thread at a time (`&mut`), so the lock
//! guards nothing here.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::mem::ManuallyDrop;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;

extern "C" {
    /// libpcap, `pcap/pcap.h` (linked through the pcap crate): a savefile capture on an open stream.
    /// On failure the stream is left open and `errbuf` holds the reason.
    fn pcap_fopen_offline(fp: *mut libc::FILE, errbuf: *mut libc::c_char) -> *mut libc::c_void;
}

#[cfg(target_os = "linux")]
extern "C" {
    /// `stdio_ext.h` (glibc, musl): sets how `fp` is locked; returns the previous setting.
    fn __fsetlocking(fp: *mut libc::FILE, kind: libc::c_int) -> libc::c_int;
}

/// `FSETLOCKING_BYCALLER` in `stdio_ext.h`: the stream's functions take no lock; the caller serialises.
#[cfg(target_os = "linux")]
const FSETLOCKING_BYCALLER: libc::c_int = 2;

/// `PCAP_ERRBUF_SIZE` in `pcap/pcap.h`.
const ERRBUF_SIZE: usize = 256;

/// A libpcap file capture that reads through a buffer it owns. The capture (and with it the stream) is
/// closed before the buffer is freed.
pub(crate) struct BufferedOffline {
    capture: ManuallyDrop<pcap::Capture<pcap::Offline>>,
    buffer: NonNull<[u8]>,
}

// SAFETY: the buffer is reached only through the stream, which only the capture uses; the capture is
// Send (the pcap crate says so), and the buffer moves with it.
unsafe impl Send for BufferedOffline {}

impl BufferedOffline {
    /// Opens `path` read-only with a stdio buffer of `buffer_bytes` and hands the stream to libpcap.
    pub(crate) fn open(path: &Path, buffer_bytes: usize) -> Result<BufferedOffline, String> {
        let name = CString::new(path.as_os_str().as_bytes()).map_err(|_| "the path holds a NUL byte".to_owned())?;
        let buffer = NonNull::from(Box::leak(vec![0u8; buffer_bytes.max(1)].into_boxed_slice()));
        let free_buffer = || {
            // SAFETY: made from a leaked Box just above; nothing refers to it any more.
            drop(unsafe { Box::from_raw(buffer.as_ptr()) });
        };
        // SAFETY: `name` is a NUL-terminated string; the mode is a C string literal.
        let stream = unsafe { libc::fopen(name.as_ptr(), c"rb".as_ptr()) };
        if stream.is_null() {
            free_buffer();
            return Err(std::io::Error::last_os_error().to_string());
        }
        // SAFETY: `stream` is open and nothing has read it yet (setvbuf must come first); the buffer
        // outlives the stream (freed only after the capture, which closes the stream, is dropped). Should
        // setvbuf refuse (non-zero), the stream keeps its default buffer, which reads the same bytes in
        // more calls; ours then goes unused until the drop, so its answer is not needed.
        let _ = unsafe { libc::setvbuf(stream, buffer.as_ptr().cast(), libc::_IOFBF, buffer.len()) };
        // SAFETY: `stream` is open. Only the capture reads it, through `&mut` (one thread at a time, and
        // a move between threads synchronises), so no two stdio calls on it can overlap. It answers the
        // previous setting, not an error.
        #[cfg(target_os = "linux")]
        let _ = unsafe { __fsetlocking(stream, FSETLOCKING_BYCALLER) };
        let mut errbuf = [0 as libc::c_char; ERRBUF_SIZE];
        // SAFETY: `stream` is an open stream; `errbuf` has libpcap's size.
        let handle = unsafe { pcap_fopen_offline(stream, errbuf.as_mut_ptr()) };
        let Some(handle) = NonNull::new(handle) else {
            // SAFETY: libpcap wrote a NUL-terminated message into `errbuf` and left the stream open.
            let message = unsafe { CStr::from_ptr(errbuf.as_ptr()) }.to_string_lossy().into_owned();
            // SAFETY: the stream is open and ours.
            unsafe { libc::fclose(stream) };
            free_buffer();
            return Err(message);
        };
        Ok(BufferedOffline { capture: ManuallyDrop::new(pcap::Capture::from(handle.cast())), buffer })
    }

    pub(crate) fn capture(&mut self) -> &mut pcap::Capture<pcap::Offline> {
        &mut self.capture
    }
}

impl Drop for BufferedOffline {
    fn drop(&mut self) {
        // SAFETY: the capture is dropped once, here, before the buffer; dropping it closes the stream
        // (pcap_close), after which nothing reads the buffer. The buffer came from a leaked Box.
        unsafe {
            ManuallyDrop::drop(&mut self.capture);
            drop(Box::from_raw(self.buffer.as_ptr()));
        }
    }
}
