//! A capture file as the probe opens it: the input is written to a file (in /dev/shm where it exists)
//! and read through `FileSource` whole, so libpcap's reader behind our buffered stdio opening (the
//! probe's unsafe code, `capture/src/stdio.rs`) and the pure-Rust pcapng fallback (for pcapng files
//! whose interfaces differ) both run. A file either reads or fails with an error; never a panic, and
//! never more frames than its bytes can hold.
#![no_main]
use gtpcharge_capture::FileSource;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn path() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        dir.join(format!("gtpcharge-fuzz-{}.pcap", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    if std::fs::write(path(), data).is_err() {
        return;
    }
    let Ok(mut source) = FileSource::open(path(), None) else { return };
    let mut frames = 0u64;
    let mut bytes = 0usize;
    let result = source.for_each(|frame| {
        frames += 1;
        bytes += frame.data.len();
    });
    if let Ok(count) = result {
        assert_eq!(count, frames);
    }
    // Every frame costs at least a 16-byte record header (pcap) or a 28-byte block (pcapng).
    assert!(frames as usize * 16 <= data.len(), "{frames} frames from {} bytes", data.len());
    assert!(bytes <= data.len(), "{bytes} frame bytes from a {}-byte file", data.len());
});
