//! Malformed capture files: truncated at every offset of the headers, wrong magic, absurd snap and record
//! lengths, pcapng with unknown blocks. Each gives a clear error naming the file (or reads what is
//! valid), never a panic (exit code 101) and never an unbounded allocation (libpcap caps record sizes;
//! the pcapng fallback is used only for libpcap's multi-interface limitation).
mod common;

use common::gtpcharge;
use gtpcharge_capture::{FileReading, FileSource};
use std::path::Path;

fn sample() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.pcap")).unwrap()
}

fn read_all(path: &Path) -> Result<u64, String> {
    let mut source = FileSource::open(path, None).map_err(|e| e.to_string())?;
    source.for_each(|_| {}).map_err(|e| e.to_string())
}

#[test]
fn truncated_at_every_header_offset() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sample();
    let path = dir.path().join("cut.pcap");
    // The global header (24 bytes), the first record header (16) and into the first frame.
    for cut in 0..80 {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        match read_all(&path) {
            Ok(frames) => assert!(cut >= 24 && frames == 0, "cut {cut}: {frames} frames from a cut header"),
            Err(message) => assert!(message.contains("cut.pcap"), "cut {cut}: {message}"),
        }
    }
    // Through the binary, a few of them: a clear one-line error, not a panic.
    for cut in [0, 3, 23, 30, 50] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let output = gtpcharge(&["replay", path.to_str().unwrap()]);
        assert_ne!(output.status.code(), Some(101), "panic at cut {cut}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        // The binary agrees with the reader: an error names the file, a readable header reads no frame.
        match read_all(&path) {
            Ok(_) => assert!(output.status.success(), "cut {cut}: {stderr}"),
            Err(_) => {
                assert!(!output.status.success(), "cut {cut}: a cut header must fail the run: {stderr}");
                assert!(stderr.contains("cut.pcap"), "cut {cut}: {stderr}");
            }
        }
    }
}

#[test]
fn wrong_magic_and_absurd_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let good = sample();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("magic", {
            let mut b = good.clone();
            b[..4].copy_from_slice(b"GIF8");
            b
        }),
        ("snaplen", {
            let mut b = good.clone();
            b[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
            b
        }),
        ("record-caplen", {
            let mut b = good.clone();
            b[24 + 8..24 + 12].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
            b
        }),
        ("linktype", {
            let mut b = good.clone();
            b[20..24].copy_from_slice(&0xFFFFu32.to_le_bytes());
            b
        }),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(format!("{name}.pcap"));
        std::fs::write(&path, bytes).unwrap();
        let output = gtpcharge(&["replay", path.to_str().unwrap()]);
        assert_ne!(output.status.code(), Some(101), "{name}: panic");
        let stderr = String::from_utf8_lossy(&output.stderr);
        if name == "linktype" {
            // An unknown link type reads fine; every frame is a counted drop.
            assert!(stderr.contains("link-type-unsupported="), "{name}: {stderr}");
        } else if name == "snaplen" {
            // libpcap clamps an absurd file snap length to its own maximum and reads the records.
            assert!(output.status.success() && stderr.contains("packets 438 "), "{name}: {stderr}");
        } else {
            assert!(!output.status.success(), "{name}: accepted");
            assert!(stderr.contains(&format!("{name}.pcap")), "{name}: {stderr}");
        }
    }
}

fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let padded = body.len().div_ceil(4) * 4;
    let total = (12 + padded) as u32;
    let mut b = kind.to_le_bytes().to_vec();
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(body);
    b.resize(8 + padded, 0);
    b.extend_from_slice(&total.to_le_bytes());
    b
}

fn pcapng(frame: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut shb = 0x1A2B_3C4Du32.to_le_bytes().to_vec();
    shb.extend_from_slice(&[1, 0, 0, 0]); // version 1.0
    shb.extend_from_slice(&u64::MAX.to_le_bytes()); // section length unknown
    let mut idb = 1u16.to_le_bytes().to_vec(); // Ethernet
    idb.extend_from_slice(&[0, 0]);
    idb.extend_from_slice(&65535u32.to_le_bytes());
    let mut epb = 0u32.to_le_bytes().to_vec();
    epb.extend_from_slice(&0u32.to_le_bytes());
    epb.extend_from_slice(&1_000_000u32.to_le_bytes());
    epb.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    epb.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    epb.extend_from_slice(frame);
    [block(0x0A0D_0D0A, &shb), block(1, &idb), extra.to_vec(), block(6, &epb)].concat()
}

/// One Ethernet/IPv4/UDP frame to the GTP-U port.
fn gtpu_port_frame() -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(2152, 2152)
        .write(&mut f, b"x")
        .unwrap();
    f
}

#[test]
fn pcapng_unknown_blocks_are_skipped_and_huge_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let frame = gtpu_port_frame();
    let unknown = pcapng(&frame, &block(0x0BAD_BEEF, b"vendor data"));
    let path = dir.path().join("unknown.pcapng");
    std::fs::write(&path, unknown).unwrap();
    assert_eq!(read_all(&path), Ok(1), "an unknown block is skipped");
    let mut huge = block(0x0BAD_BEEF, b"x");
    huge[4..8].copy_from_slice(&0xFFFF_FF00u32.to_le_bytes());
    let path = dir.path().join("huge.pcapng");
    std::fs::write(&path, pcapng(&frame, &huge)).unwrap();
    let error = read_all(&path).unwrap_err();
    assert!(error.contains("huge.pcapng"), "{error}");
    let output = gtpcharge(&["replay", path.to_str().unwrap()]);
    assert_ne!(output.status.code(), Some(101));
}

/// Every frame of a file as (timestamp, wire length, link type, bytes).
fn frames(path: &Path, filter: Option<&str>, reading: FileReading) -> Vec<(u64, u32, i32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut source = FileSource::open_with(path, filter, reading).unwrap();
    source.for_each(|f| out.push((f.ts_us, f.wire_len, f.linktype, f.data.to_vec()))).unwrap();
    out
}

/// The probe reads regular files through its own 64 KiB stdio buffer (`capture/src/buffered_file.rs`); libpcap
/// must deliver exactly what `pcap_open_offline` delivers: across many buffer refills (a generated
/// capture of several MB), with a BPF filter, and for pcapng.
#[test]
fn buffered_reading_delivers_what_plain_libpcap_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated.pcap");
    let output = gtpcharge(&[
        "generate",
        "--out",
        generated.to_str().unwrap(),
        "--seed",
        "7",
        "--subscribers",
        "300",
        "--rounds",
        "2",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(std::fs::metadata(&generated).unwrap().len() > 20 * 64 * 1024, "several buffer refills");
    let frame = gtpu_port_frame();
    let ng = dir.path().join("one.pcapng");
    std::fs::write(&ng, pcapng(&frame, &[])).unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.pcap");
    for (path, filter) in
        [(&generated, None), (&generated, Some("udp port 2123")), (&sample, None), (&ng, None), (&ng, Some("udp"))]
    {
        let plain = frames(path, filter, FileReading::Plain);
        let buffered = frames(path, filter, FileReading::Buffered);
        assert!(!plain.is_empty(), "{} {filter:?}: no frames", path.display());
        assert_eq!(plain.len(), buffered.len(), "{} {filter:?}", path.display());
        assert!(plain == buffered, "{} {filter:?}: the frames differ", path.display());
    }
    assert!(
        frames(&generated, Some("udp port 2123"), FileReading::Buffered).len()
            < frames(&generated, None, FileReading::Plain).len()
    );
}

/// libpcap hands frames over in runs (`pcap_dispatch`, 256 a call): across thousands of frames, every
/// record of the file arrives once, in order, with its timestamp, wire length and bytes, as the file's
/// own bytes say (parsed here without libpcap: the classic format is a 24-byte header, then a 16-byte
/// header before each record).
#[test]
fn every_record_arrives_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("generated.pcap");
    let output = gtpcharge(&["generate", "--out", path.to_str().unwrap(), "--seed", "11", "--subscribers", "200"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[..4], [0xD4, 0xC3, 0xB2, 0xA1], "little-endian microsecond pcap");
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let mut expected = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let (seconds, micros, captured, wire) = (word(at), word(at + 4), word(at + 8) as usize, word(at + 12));
        let data = bytes[at + 16..at + 16 + captured].to_vec();
        expected.push((u64::from(seconds) * 1_000_000 + u64::from(micros), wire, 1, data));
        at += 16 + captured;
    }
    assert!(expected.len() > 10 * 256, "{} records: many runs of 256", expected.len());
    let delivered = frames(&path, None, FileReading::Buffered);
    assert_eq!(delivered.len(), expected.len());
    assert!(delivered == expected, "the frames differ from the file's records");
}

/// A named pipe (a capture streamed from another program) reads whole through the buffer too: the buffer
/// is set before the stream's first read, so nothing depends on seeking back.
#[test]
fn a_named_pipe_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("capture.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let sample_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.pcap");
    let expected = frames(&sample_path, None, FileReading::Plain);
    let writer = {
        let fifo = fifo.clone();
        let bytes = sample();
        std::thread::spawn(move || std::fs::write(fifo, bytes).unwrap())
    };
    let through_pipe = frames(&fifo, None, FileReading::Buffered);
    writer.join().unwrap();
    assert_eq!(through_pipe.len(), expected.len());
    assert!(through_pipe == expected, "the frames read through the pipe differ");
}

/// `replay -` reads a capture piped into standard input and reports exactly what the file gives.
#[test]
fn replay_reads_standard_input() {
    let sample_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.pcap");
    let from_file = gtpcharge(&["replay", "--emit", "jsonl", sample_path.to_str().unwrap()]);
    assert!(from_file.status.success(), "{}", String::from_utf8_lossy(&from_file.stderr));
    for mode in [&["--pipeline"][..], &["--single-thread"][..]] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
            .args(["replay", "--emit", "jsonl", "-"])
            .args(mode)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &sample()).unwrap());
        let piped = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(piped.status.success(), "{mode:?}: {}", String::from_utf8_lossy(&piped.stderr));
        assert!(!from_file.stdout.is_empty());
        assert_eq!(
            String::from_utf8_lossy(&piped.stdout),
            String::from_utf8_lossy(&from_file.stdout),
            "{mode:?}: the events from standard input differ from the file's"
        );
    }
    // Something that is not a capture, piped in: a clear error naming standard input, not a panic.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"not a capture file at all, just some text\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_ne!(output.status.code(), Some(101), "panic: {stderr}");
    assert!(stderr.contains("-: not a readable pcap or pcapng file"), "{stderr}");
}
