//! `gtpcharge`: dispatches the subcommands (`cli.rs`). The probe's commands (`replay`, `capture`) are in
//! `driver.rs`, the billing API's (serve, admin, purchase) in `api_commands.rs`, the pay agent in `agent.rs`, the developer tools in
//! `tools.rs`.
//! See README.md for the commands and ARCHITECTURE.md for the code map.
#![deny(unsafe_code)]
mod agent;
mod api_commands;
mod cli;
mod cluster;
mod config;
mod delivery;
mod demo;
mod driver;
mod evidence;
mod explain;
mod feed;
mod jsonl;
mod logging;
mod metrics;
mod pipeline;
mod prefetch;
mod probe;
mod secrets;
mod shards;
mod sinks;
mod tools;

use cli::*;
use tools::{floor, fuzz_corpus, generate, inject, token_check, token_new};

use anyhow::Context;
use gtpcharge_capture::LiveConfig;

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
        Command::Replay { files, probe } => driver::replay(&files, &probe),
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
            driver::capture(live, &probe).map(|()| true)
        }
        Command::Explain { file } => explain::explain(&file),
        Command::Demo { sample, workdir } => {
            let _ = std::fs::remove_dir_all(&workdir);
            std::fs::create_dir_all(&workdir)
                .with_context(|| format!("creating {}", workdir.display()))
                .and_then(|()| demo::demo(&demo::sample_path(sample)?, &workdir))
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
        Command::Agent(agent) => match agent.command {
            Some(AgentCommand::Enroll(enroll)) => agent::enroll(enroll).map(|()| true),
            None => agent::serve(agent.serve).map(|()| true),
        },
        Command::Inject { interface, pps, files } => inject(&interface, pps, &files).map(|()| true),
        Command::ClusterViewBytes { sessions } => cluster::view_bytes(sessions).map(|()| true),
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
