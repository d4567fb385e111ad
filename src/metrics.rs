//! A Prometheus endpoint (`GET /metrics`, text exposition format 0.0.4).
//!
//! The probe's counters live in single-threaded structures (the correlator's `Stats`), so instead of
//! touching shared atomics per packet the probe renders a snapshot about once a second and this thread
//! serves the last one. The exposition text is written here directly: it is a few lines of a stable
//! format, and a metrics registry crate would need every counter mirrored into its own types per event.
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
pub struct Exposition(Arc<Mutex<String>>);

impl Exposition {
    pub fn publish(&self, text: String) {
        if let Ok(mut current) = self.0.lock() {
            *current = text;
        }
    }

    fn current(&self) -> String {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// Serves the exposition on `address` from a background thread.
pub fn serve(address: std::net::SocketAddr, exposition: Exposition) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(address).map_err(|e| anyhow::anyhow!("metrics on {address}: {e}"))?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream, &exposition);
        }
    })?;
    Ok(())
}

fn answer(mut stream: std::net::TcpStream, exposition: &Exposition) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = [0u8; 2048];
    let read = stream.read(&mut request)?;
    let line = String::from_utf8_lossy(request.get(..read).unwrap_or_default());
    let (status, body) = if line.starts_with("GET /metrics") {
        ("200 OK", exposition.current())
    } else {
        ("404 Not Found", "GET /metrics\n".to_owned())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Builds the exposition text.
#[derive(Default)]
pub struct Text(String);

impl Text {
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }

    pub fn labelled<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (String, u64)> + 'a,
    ) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} counter");
        for (value_label, value) in values {
            let _ = writeln!(self.0, "{name}{{{label}=\"{}\"}} {value}", value_label.replace(['"', '\\', '\n'], "_"));
        }
    }

    pub fn finish(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let mut text = Text::default();
        text.counter("gtpcharge_packets_total", "Frames read.", 3);
        text.labelled("gtpcharge_drops_total", "Drops.", "reason", [("not-ip".to_owned(), 2)]);
        let text = text.finish();
        assert!(text.contains("# TYPE gtpcharge_packets_total counter\ngtpcharge_packets_total 3\n"));
        assert!(text.contains("gtpcharge_drops_total{reason=\"not-ip\"} 2\n"));
    }

    #[test]
    fn serves_over_http() {
        let exposition = Exposition::default();
        exposition.publish("gtpcharge_up 1\n".into());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        serve(address, exposition).unwrap();
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"));
        assert!(response.ends_with("gtpcharge_up 1\n"));
    }
}
