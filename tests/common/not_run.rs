//! What a test says when something it needs is missing. Under `CI=true` that fails the test: CI
//! provides everything (`.ci/test` installs and starts it). Elsewhere the test passes as not run and says
//! so on the terminal: the line is written to the process's stderr directly, past the test harness's
//! capture, so a plain `cargo test` shows it even for a passing test.
use std::io::Write;

pub fn not_run(what: &str, why: &str) {
    assert!(std::env::var_os("CI").is_none(), "{what} cannot run under CI: {why}");
    let _ = writeln!(std::io::stderr().lock(), "\n*** {what} NOT RUN: {why} ***\n");
}
