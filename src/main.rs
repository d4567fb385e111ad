//! `gtpcharge`: dispatches the subcommands (`cli.rs`) and drives the probe over files (`replay`) and live
//! interfaces (`capture`); the billing API's commands (serve, admin, purchase) are in `api_commands.rs`, the developer tools in `tools.rs`.
//! See README.md for the commands and ARCHITECTURE.md for the code map.
#![deny(unsafe_code)]
mod api_commands;
mod cli;
mod config;
mod delivery;
mod demo;
mod evidence;
mod explain;
mod jsonl;
mod logging;
mod metrics;
mod pipeline;
mod prefetch;
mod probe;
mod run;
mod secrets;
mod tools;

use cli::*;
use tools::{floor, fuzz_corpus, generate, inject, token_check, token_new};

use anyhow::{Context, Result};
use gtpcharge_capture::{FileSource, LiveConfig, LiveSource};
use run::ProbeRun;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn replay(files: &[PathBuf], args: &ProbeArgs) -> Result<bool> {
    // Open every file before writing anything: a bad name fails the run with nothing half-written.
    let mut sources = Vec::with_capacity(files.len());
    let mut total_bytes = 0u64;
    for path in files {
        sources.push(FileSource::open(path, args.filter.as_deref())?);
        total_bytes += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    // Standard input has no length: its progress is bytes and rate, without a bar.
    let piped = files.iter().any(|path| path == Path::new(gtpcharge_capture::source::STDIN_NAME));
    let progress = if std::io::stderr().is_terminal() {
        let (bar, template) = if piped {
            (indicatif::ProgressBar::new_spinner(), "{spinner} {bytes} {bytes_per_sec} {msg}")
        } else {
            (indicatif::ProgressBar::new(total_bytes), "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let mut run = ProbeRun::start(args)?;
    // After the run's clock has started: the check (a few milliseconds) counts in its elapsed time.
    let threads = args.threads();
    let report = |error: &gtpcharge_capture::CaptureError| match &progress {
        // A file cut short mid-record (a capture killed while writing): keep what was read, go on.
        Some(bar) => bar.suspend(|| eprintln!("gtpcharge: {error}")),
        None => eprintln!("gtpcharge: {error}"),
    };
    let mut all_read = true;
    if let pipeline::Threads::Two(handover) = threads {
        let reader = pipeline::read_files(sources, handover).context("starting the reader thread")?;
        while let Some(batch) = reader.next() {
            run.batch(&batch);
            if let Some(bar) = &progress {
                bar.set_position(batch.position);
            }
            run.publish(None, false);
            reader.recycle(batch);
        }
        let errors = reader.join().map_err(|_| anyhow::anyhow!("the reader thread failed"))?;
        for error in &errors {
            report(error);
        }
        all_read = errors.is_empty();
    } else {
        let mut position = 0u64;
        for source in &mut sources {
            if let Some(bar) = &progress {
                bar.set_message(source.path().display().to_string());
            }
            let result = source.for_each(|frame| {
                position += 16 + frame.data.len() as u64;
                run.frame(frame);
                if run.probe.packets % 8192 == 0 {
                    if let Some(bar) = &progress {
                        bar.set_position(position);
                    }
                    run.publish(None, false);
                }
            });
            if let Err(error) = result {
                report(&error);
                all_read = false;
            }
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let delivered = run.finish(None, std::time::Duration::from_secs(args.drain_timeout_s))?;
    Ok(all_read && delivered)
}

fn capture(live: LiveConfig, args: &ProbeArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut source = LiveSource::open(&live)?;
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the SIGINT/SIGTERM handler")?;
    let mut run = ProbeRun::start(args)?;
    run.measure_sighting_delay();
    tracing::info!(
        interface = %live.interface,
        buffer_bytes = live.buffer_size_bytes,
        read_timeout_ms = live.read_timeout_ms,
        immediate = live.immediate,
        "capturing (stop with SIGINT or SIGTERM)"
    );
    let libpcap = if let pipeline::Threads::Two(handover) = args.threads() {
        live_pipeline(source, &mut run, &stop, handover)?
    } else {
        let mut checked = std::time::Instant::now();
        let mut stopping = pipeline::Stopping::default();
        loop {
            let stop_now = stop.load(Ordering::SeqCst);
            let read = source.dispatch(|frame| run.frame(frame))?;
            if stopping.done(stop_now, read) {
                break;
            }
            if checked.elapsed() >= std::time::Duration::from_secs(1) {
                checked = std::time::Instant::now();
                let libpcap = source.stats().ok();
                run.watch_drops(libpcap);
                run.publish(libpcap, false);
            }
        }
        source.stats()?
    };
    // Whatever could not be delivered within the drain time stays in the spool for the next start.
    run.finish(Some(libpcap), std::time::Duration::from_secs(args.drain_timeout_s.min(10)))?;
    Ok(())
}

/// The live capture on two threads until `stop`; libpcap's last counters.
fn live_pipeline(
    source: LiveSource,
    run: &mut ProbeRun,
    stop: &Arc<AtomicBool>,
    handover: pipeline::Handover,
) -> Result<gtpcharge_capture::LiveStats> {
    let shared = Arc::new(std::sync::Mutex::new(None));
    let reader =
        pipeline::read_live(source, stop.clone(), shared.clone(), handover).context("starting the reader thread")?;
    // Wake at least every 200 ms so the metrics and the drop watch stay fresh while the link is quiet.
    let mut checked = std::time::Instant::now();
    loop {
        match reader.next_timeout(std::time::Duration::from_millis(200)) {
            Ok(batch) => {
                run.batch(&batch);
                reader.recycle(batch);
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        if checked.elapsed() >= std::time::Duration::from_secs(1) {
            checked = std::time::Instant::now();
            let libpcap = shared.lock().ok().and_then(|s| *s);
            run.watch_drops(libpcap);
            run.publish(libpcap, false);
        }
    }
    if let Ok(Some(error)) = reader.join() {
        return Err(error.into());
    }
    let last = shared.lock().ok().and_then(|s| *s);
    Ok(last.unwrap_or_default())
}

fn main() -> std::process::ExitCode {
    if let Err(error) = config::load_from_args() {
        eprintln!("gtpcharge: {error:#}");
        return std::process::ExitCode::from(2);
    }
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    secrets::record_command_line_sources(&matches);
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    logging::init(cli.log_format, cli.log_subscriber_ids);
    let result = match cli.command {
        Command::Replay { files, probe } => replay(&files, &probe),
        Command::Capture {
            interface,
            snaplen,
            buffer_size,
            read_timeout_ms,
            no_promiscuous,
            immediate,
            no_immediate,
            probe,
        } => {
            let live = LiveConfig {
                interface,
                snaplen,
                buffer_size_bytes: buffer_size,
                promiscuous: !no_promiscuous,
                immediate: immediate && !no_immediate,
                filter: probe.filter.clone(),
                read_timeout_ms: read_timeout_ms.max(1),
            };
            capture(live, &probe).map(|()| true)
        }
        Command::Explain { file } => explain::explain(&file),
        Command::Demo { sample, workdir } => {
            let _ = std::fs::remove_dir_all(&workdir);
            std::fs::create_dir_all(&workdir)
                .with_context(|| format!("creating {}", workdir.display()))
                .and_then(|()| demo::demo(&sample, &workdir))
        }
        Command::Serve {
            listen,
            database,
            tls_cert,
            tls_key,
            tls_client_ca,
            allow_plaintext,
            charging_workers,
            group_commit_sightings,
            metrics_listen,
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(certificate), Some(key)) => {
                    Some(gtpcharge_billing_api::server::TlsFiles { certificate, key, client_ca: tls_client_ca })
                }
                _ => None,
            };
            secrets::check_listen(listen, tls.is_some(), allow_plaintext)
                .and_then(|()| database.url())
                .and_then(|url| {
                    let charging = gtpcharge_billing_api::server::Charging {
                        // Both bounded by clap (64 and 1,024).
                        workers: charging_workers as usize,
                        group_commit_sightings: group_commit_sightings as usize,
                    };
                    api_commands::serve(listen, &url, tls, charging, metrics_listen)
                })
                .map(|()| true)
        }
        Command::Admin { database, command } => {
            database.url().and_then(|url| api_commands::admin(&url, command)).map(|()| true)
        }
        Command::Purchase { billing_url, api_key, api_key_file, allow_plaintext, command } => {
            let key = secrets::check_client_url(&billing_url, allow_plaintext).and_then(|_| {
                secrets::secret("api-key", api_key, secrets::given_on_command_line("api_key"), api_key_file.as_deref())
            });
            match key {
                Ok(Some(key)) => api_commands::purchase(&billing_url, &key, command).map(|()| true),
                Ok(None) => Err(anyhow::anyhow!("--api-key-file (or GTPCHARGE_API_KEY, or --api-key) is required")),
                Err(error) => Err(error),
            }
        }
        Command::Inject { interface, pps, files } => inject(&interface, pps, &files).map(|()| true),
        Command::Floor { pipeline, plain, handover, files } => {
            floor(&files, pipeline, handover.forced(), plain).map(|()| true)
        }
        Command::FuzzCorpus { out, files } => fuzz_corpus(&out, &files).map(|()| true),
        Command::Token { command: TokenCommand::New { count } } => token_new(count).map(|()| true),
        Command::Token { command: TokenCommand::Check { tokens } } => Ok(token_check(&tokens)),
        Command::Generate {
            out,
            seed,
            subscribers,
            rounds,
            background,
            no_edge_cases,
            truth,
            tokens,
            encap,
            encap_id,
        } => match tokens.iter().map(|t| t.parse::<gtpcharge_proto::Token>()).collect::<Result<Vec<_>, _>>() {
            Ok(tokens) => {
                let scenario = gtpcharge_pcapgen::Scenario {
                    seed,
                    subscribers,
                    traffic_rounds: rounds,
                    background_per_round: background,
                    edge_cases: !no_edge_cases,
                    tokens,
                };
                generate(&scenario, &out, truth.as_deref(), encap.map(|e| (e, encap_id))).map(|()| true)
            }
            Err(error) => Err(anyhow::anyhow!("--token: {error}")),
        },
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(error) => {
            eprintln!("gtpcharge: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
