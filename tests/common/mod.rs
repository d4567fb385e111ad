//! Helpers shared by the integration tests: run the real `gtpcharge` binary and read its JSON lines.
#![allow(dead_code)]
pub mod world;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

pub fn gtpcharge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gtpcharge")).args(args).output().expect("run gtpcharge")
}

/// Replays files with `--emit jsonl`; returns the events, the stderr summary and the exit code.
pub fn replay(files: &[&Path]) -> (Vec<Value>, String, i32) {
    let mut args = vec!["replay", "--emit", "jsonl"];
    let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    let output = gtpcharge(&args);
    let stdout = String::from_utf8(output.stdout).expect("utf-8 events");
    let events = stdout.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    (events, String::from_utf8_lossy(&output.stderr).into_owned(), output.status.code().unwrap_or(-1))
}

pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}
