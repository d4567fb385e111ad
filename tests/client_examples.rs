//! The client examples in `examples/` work against a real `gtpcharge serve` (SQLite, or PostgreSQL where
//! `GTPCHARGE_TEST_DATABASE_URL` is set): each creates a purchase, cancels it (`--then-cancel`), watches
//! the stream until the server reports that purchase cancelled, and receives the cancellation's webhook
//! on its own HTTP listener, whose signature it verifies with the secret `admin sp webhook set` printed. The Rust one is the `sp_client`
//! example binary `cargo test` builds; the Python one runs with the interpreter in `GTPCHARGE_PYTHON`
//! (the virtualenv `.ci/setup` makes from `examples/python/requirements.txt`).
mod common;

use common::not_run::not_run;
use common::world::{admin, database_url, drop_database, free_port, serve};
use std::path::PathBuf;
use std::process::Command;

/// Runs one client with a webhook endpoint of its own; the purchase id, after checking it created a
/// purchase, saw that purchase cancelled and verified the cancellation's webhook.
fn run_client(name: &str, mut command: Command, url: &str, key: &str, database: &str, sp: &str) -> String {
    let port = free_port();
    let hook = format!("http://127.0.0.1:{port}/webhooks");
    let secret = admin(database, &["sp", "webhook", "set", sp, "--url", &hook, "--overlap-hours", "0"])
        ["webhook_secret"]
        .clone();
    let output = command
        .env("GTPCHARGE_URL", url)
        .env("GTPCHARGE_API_KEY", key)
        .env("GTPCHARGE_WEBHOOK_PORT", port.to_string())
        .env("GTPCHARGE_WEBHOOK_SECRET", secret)
        .arg("--then-cancel")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{name} client failed:\n{stdout}\n{stderr}");
    let id = stdout
        .lines()
        .find_map(|line| line.strip_prefix("created purchase "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{name} client did not create a purchase:\n{stdout}"))
        .to_owned();
    assert!(
        stdout.lines().any(|line| line.ends_with(&format!("purchase {id} PURCHASE_STATE_CANCELLED"))),
        "{name} client did not see its purchase cancelled on the watch:\n{stdout}"
    );
    assert!(
        stdout.lines().any(|line| line.starts_with("webhook evt_") && line.ends_with("purchase.cancelled verified")),
        "{name} client did not verify the cancellation's webhook:\n{stdout}"
    );
    id
}

#[test]
fn the_rust_and_python_sp_clients_run_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let (database, cleanup) = database_url(dir.path(), 77);
    let sp = admin(&database, &["sp", "create", "examples", "--allow-network-consent"]);
    let (key, sp) = (sp["api_key"].clone(), sp["service_provider_id"].clone());
    let port = free_port();
    let mut server = serve(&database, port, &dir.path().join("server.log"));
    let url = format!("http://127.0.0.1:{port}");

    let examples = PathBuf::from(env!("CARGO_BIN_EXE_gtpcharge")).parent().unwrap().join("examples");
    let rust = run_client("Rust", Command::new(examples.join("sp_client")), &url, &key, &database, &sp);

    match std::env::var_os("GTPCHARGE_PYTHON") {
        Some(python) => {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/python/sp_client.py");
            let mut command = Command::new(python);
            command.arg(script);
            let python = run_client("Python", command, &url, &key, &database, &sp);
            assert_ne!(rust, python, "each client made its own purchase");
        }
        None => not_run("PYTHON CLIENT EXAMPLE", "GTPCHARGE_PYTHON is not set (`.ci/setup` makes the virtualenv)"),
    }
    let _ = server.kill();
    let _ = server.wait();
    drop_database(&tokio::runtime::Runtime::new().unwrap(), cleanup);
}
