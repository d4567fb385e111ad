//! Developer and test-network tools: fuzzing seeds, the libpcap floor (the replay benchmark's
//! reference), playing captures onto an interface, tokens, and the capture generator.
use crate::pipeline;
use anyhow::{bail, Context, Result};
use gtpcharge_capture::{DecoderConfig, FileReading, FileSource};
use std::io::Write;
use std::path::PathBuf;

pub fn fuzz_corpus(out: &std::path::Path, files: &[PathBuf]) -> Result<()> {
    use gtpcharge_capture::decode::linktype;
    let targets = [
        "link_decode",
        "reassembly",
        "gtpv1c",
        "gtpv2c",
        "gtpu_inner",
        "carriers",
        "correlate",
        "signalling",
        "flow",
        "capture_file",
    ];
    for target in targets {
        std::fs::create_dir_all(out.join(target))?;
    }
    let mut written = 0u64;
    // `signalling`: generator seeds (8 bytes), sizes and shapes, no damage yet; `flow`: one HTTP request
    // with a token in two segments (flags, sequence step, length, bytes each).
    for seed in 0..16u64 {
        let head = [&seed.to_le_bytes()[..], &[seed as u8, (seed as u8).wrapping_mul(5) | 0x08]].concat();
        std::fs::write(out.join("signalling").join(format!("seed-{seed}")), head)?;
        written += 1;
    }
    let token = gtpcharge_proto::token::Token::generate().map_err(|e| anyhow::anyhow!("{e}"))?.to_string();
    let request = format!("GET /confirm?t={token} HTTP/1.1\r\nHost: pay.sp.example\r\n\r\n");
    let (first, second) = request.as_bytes().split_at(30);
    let mut flow = vec![0x02, 0, 0, 0];
    flow.extend_from_slice(&[0x00, 0, 1, first.len() as u8]);
    flow.extend_from_slice(first);
    flow.extend_from_slice(&[0x00, 0, first.len() as u8, second.len() as u8]);
    flow.extend_from_slice(second);
    std::fs::write(out.join("flow").join("split-request"), flow)?;
    written += 1;
    for (file_index, path) in files.iter().enumerate() {
        // `capture_file`: the files themselves, where small enough to mutate.
        if std::fs::metadata(path).is_ok_and(|m| m.len() <= 64 * 1024) {
            std::fs::copy(path, out.join("capture_file").join(format!("{file_index}")))?;
            written += 1;
        }
        let mut decoder = gtpcharge_capture::Decoder::new(&DecoderConfig::default());
        let mut sequence = Vec::new();
        let mut index = 0u64;
        let mut write = |target: &str, index: u64, bytes: &[u8]| {
            let name = out.join(target).join(format!("{file_index}-{index}"));
            if std::fs::write(name, bytes).is_ok() {
                written += 1;
            }
        };
        FileSource::open(path, None)?.for_each(|frame| {
            index += 1;
            if index > 2000 {
                return;
            }
            let selector = match frame.linktype {
                linktype::ETHERNET => 0u8,
                linktype::LINUX_SLL => 1,
                linktype::LINUX_SLL2 => 2,
                _ => 3,
            };
            write("link_decode", index, &[&[selector][..], frame.data].concat());
            if let Ok(Some(udp)) = decoder.decode(frame.linktype, frame.ts_us, frame.data) {
                let ports = [udp.source.port(), udp.destination.port()];
                let payload = udp.payload;
                let (target, kind) = if ports.contains(&2152) {
                    ("gtpu_inner", 1u8)
                } else if ports.contains(&2123) {
                    (if payload.first().map(|f| f >> 5) == Some(2) { "gtpv2c" } else { "gtpv1c" }, 0)
                } else {
                    ("gtpv1c", 2)
                };
                write(target, index, payload);
                if sequence.len() < 60_000 {
                    sequence.push(kind | if udp.source.ip() < udp.destination.ip() { 0 } else { 4 });
                    sequence.extend_from_slice(&(payload.len().min(65535) as u16).to_be_bytes());
                    sequence.extend_from_slice(&payload[..payload.len().min(65535)]);
                }
                if let Ok(header) = gtpcharge_correlate::wire::gtpv1::Header::parse(payload) {
                    if let Ok(inner) = gtpcharge_correlate::wire::gtpu::inner_packet(header.body) {
                        if let gtpcharge_correlate::wire::gtpu::Transport::Tcp { payload, .. }
                        | gtpcharge_correlate::wire::gtpu::Transport::Udp { payload, .. } = inner.transport
                        {
                            if !payload.is_empty() {
                                write("carriers", index, payload);
                            }
                        }
                    }
                }
            }
        })?;
        write("correlate", 0, &sequence);
    }
    eprintln!("gtpcharge: wrote {written} seeds under {}", out.display());
    Ok(())
}

/// `forced`: the pipeline's hand-over, when not chosen as the replay chooses it.
pub fn floor(files: &[PathBuf], through_pipeline: bool, forced: Option<pipeline::Handover>, plain: bool) -> Result<()> {
    // Before the clock starts: what each hand-over between the two threads costs on this machine, and
    // so which hand-over the replay would use.
    let handover = through_pipeline.then(|| {
        let trip = pipeline::cross_core_round_trip();
        let handover = forced.unwrap_or(pipeline::Handover::for_round_trip(trip));
        eprintln!("{}", pipeline::describe(trip, Some(handover)));
        handover
    });
    let started = std::time::Instant::now();
    let (mut packets, mut bytes) = (0u64, 0u64);
    if let Some(handover) = handover {
        let sources = files.iter().map(|path| FileSource::open(path, None)).collect::<Result<Vec<_>, _>>()?;
        let no_counters = std::sync::Arc::new(std::sync::Mutex::new(None));
        let reader = pipeline::read(crate::feed::Feed::files(sources), handover, no_counters)
            .context("starting the reader thread")?;
        while let Some(batch) = reader.next() {
            for frame in batch.frames() {
                packets += 1;
                bytes += u64::from(frame.wire_len);
            }
            reader.recycle(batch);
        }
        let feed = reader.join().map_err(|_| anyhow::anyhow!("the reader thread failed"))?;
        if let Some(error) = feed.into_errors().into_iter().next() {
            return Err(error.into());
        }
    } else {
        let reading = if plain { FileReading::Plain } else { FileReading::Buffered };
        for path in files {
            FileSource::open_with(path, None, reading)?.for_each(|frame| {
                packets += 1;
                bytes += u64::from(frame.wire_len);
            })?;
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "{} packets {packets}  bytes {bytes}  elapsed {elapsed:.3}s  {:.0} packets/s  {:.3} Gbit/s",
        match (handover.is_some(), plain) {
            (true, _) => "floor-pipeline",
            (false, true) => "floor-plain",
            (false, false) => "floor",
        },
        packets as f64 / elapsed,
        bytes as f64 * 8.0 / elapsed / 1e9
    );
    Ok(())
}

pub fn inject(interface: &str, pps: u64, files: &[PathBuf]) -> Result<()> {
    let mut injector = gtpcharge_capture::Injector::open(interface)?;
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    let mut failure = None;
    for path in files {
        let mut source = FileSource::open(path, None)?;
        source.for_each(|frame| {
            if failure.is_some() {
                return;
            }
            if pps > 0 {
                let due = started + std::time::Duration::from_secs_f64(sent as f64 / pps as f64);
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            }
            match injector.send(frame.data) {
                Ok(()) => sent += 1,
                Err(error) => failure = Some(error),
            }
        })?;
        if let Some(error) = failure.take() {
            return Err(error.into());
        }
    }
    eprintln!("gtpcharge: injected {sent} frames on {interface} in {:.3}s", started.elapsed().as_secs_f64());
    Ok(())
}

pub fn token_new(count: u32) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    for _ in 0..count {
        let token = gtpcharge_proto::Token::generate().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        writeln!(stdout, "{token}")?;
    }
    Ok(())
}

pub fn token_check(tokens: &[String]) -> bool {
    let mut all_valid = true;
    for text in tokens {
        match text.parse::<gtpcharge_proto::Token>() {
            Ok(token) => println!("{text}\tvalid\t{token}"),
            Err(error) => {
                println!("{text}\tinvalid\t{error}");
                all_valid = false;
            }
        }
    }
    all_valid
}

pub fn generate(
    scenario: &gtpcharge_pcapgen::Scenario,
    out: &std::path::Path,
    truth_path: Option<&std::path::Path>,
    encap: Option<(gtpcharge_pcapgen::encap::Encapsulation, u32)>,
) -> Result<()> {
    let file = gtpcharge_pcapgen::PcapFile::create(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let (truth, file) = match encap {
        None => {
            let mut file = file;
            (gtpcharge_pcapgen::generate(scenario, &mut file), file)
        }
        Some((kind, id)) => {
            let mut wrapping = gtpcharge_pcapgen::encap::Encapsulating::new(file, kind, id);
            (gtpcharge_pcapgen::generate(scenario, &mut wrapping), wrapping.inner)
        }
    };
    file.finish().with_context(|| format!("{}: write failed", out.display()))?;
    if let Some(path) = truth_path {
        let value = serde_json::json!({
            "frames": truth.frames,
            "sightings": truth.sightings.iter().map(|(t, m)| serde_json::json!({"token": t.to_string(), "msisdn": m})).collect::<Vec<_>>(),
            "unattributed": truth.unattributed.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            "sessions_up": truth.sessions_up,
            "sessions_down": truth.sessions_down,
        });
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    eprintln!("gtpcharge: wrote {} frames to {}", truth.frames, out.display());
    if truth.sightings.is_empty() {
        bail!("the scenario produced no sightings");
    }
    Ok(())
}
