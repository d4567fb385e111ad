//! The SP's side of gtpcharge's webhooks: an HTTP listener that answers 200 to a delivery whose
//! signature verifies (and 400 to anything else) and hands over its event.
use std::io::{BufRead, Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// Gtpcharge-Signature: t=T,v1=HEX(HMAC-SHA256(secret, "T.<raw body>")); any v1 may match (rotation).
pub fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let t = header.split(',').find_map(|part| part.strip_prefix("t=")).unwrap_or_default();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let message = [t.as_bytes(), b".", body].concat();
    t.parse::<u64>().is_ok_and(|t| now.abs_diff(t) <= 300)
        && header.split(',').filter_map(|part| part.strip_prefix("v1=")).any(|hex| {
            let tag: Option<Vec<u8>> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
            tag.is_some_and(|tag| ring::hmac::verify(&key, &message, &tag).is_ok())
        })
}

/// Webhooks whose signature verified, from an HTTP listener on 127.0.0.1:port (a thread).
pub fn receive(port: u16, secret: String) -> std::io::Result<std::sync::mpsc::Receiver<serde_json::Value>> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let (events, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut reader in listener.incoming().flatten().map(std::io::BufReader::new) {
            let (mut length, mut signature, mut line) = (0, String::new(), String::new());
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                let (name, value) = line.split_once(':').unwrap_or_default();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "gtpcharge-signature" => signature = value.trim().to_owned(),
                    _ => {}
                }
                line.clear();
            }
            let mut body = vec![0; length];
            let ok = reader.read_exact(&mut body).is_ok() && verify(&secret, &signature, &body);
            let status = if ok { "200 OK" } else { "400 Bad Request" }; // 400: not from the billing API
            let _ = write!(reader.get_mut(), "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if let Some(event) = ok.then(|| serde_json::from_slice(&body).ok()).flatten() {
                let _ = events.send(event);
            }
        }
    });
    Ok(received)
}
