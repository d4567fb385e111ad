//! Criterion benches of the probe's hot path, the GTP-C parsers, the session table at 1M sessions and the
//! token scanner. Fixtures are built the way the generator (`pcaps/`) builds its captures.
//!
//! cargo bench --bench hot_path            (ns per packet; packets/s per core = 1e9 / ns)
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use etherparse::PacketBuilder;
use gtpcharge_capture::{Decoder, DecoderConfig};
use gtpcharge_correlate::flow::{FlowKey, FlowState, FlowTable};
use gtpcharge_correlate::reason::Note;
use gtpcharge_correlate::scan::TokenFinder;
use gtpcharge_correlate::session::{Endpoint, Session, SessionTable, TunnelKey};
use gtpcharge_correlate::wire::{gtpv1, gtpv2, Tbcd};
use gtpcharge_correlate::{Config, Correlator, Datagram};
use std::hint::black_box;

/// The correlator's datagram from the decoder's, built where the decoder's result lies, as the probe
/// builds it (`Probe::frame`).
fn datagram(ts_us: u64) -> impl FnOnce(gtpcharge_capture::Udp<'_>) -> Datagram<'_> {
    move |udp| Datagram { ts_us, frame: 0, source: udp.source, destination: udp.destination, payload: udp.payload }
}
use std::net::IpAddr;

const SGSN: [u8; 4] = [192, 0, 2, 10];
const GGSN: [u8; 4] = [198, 51, 100, 1];

use gtpcharge_correlate::wire::gtpv1::message as v1_message;

fn create_request() -> Vec<u8> {
    let ies = [
        &[2u8, 0x00, 0x01, 0x10, 0x32, 0x54, 0x76, 0x98, 0xF0][..],
        &[14, 3, 15, 0xFC, 16, 0, 0, 0, 0x11, 17, 0, 0, 0, 0x12, 20, 5],
        &[128, 0, 2, 0xF1, 0x21],
        &[131, 0, 9, 8, b'i', b'n', b't', b'e', b'r', b'n', b'e', b't'],
        &[133, 0, 4, 192, 0, 2, 10, 133, 0, 4, 192, 0, 2, 11],
        &[134, 0, 7, 0x91, 0x64, 0x07, 0x12, 0x32, 0x54, 0xF6],
        &[151, 0, 1, 1, 154, 0, 8, 0x53, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xF0],
    ]
    .concat();
    v1_message(16, 0, 1, &ies)
}

fn create_response() -> Vec<u8> {
    let ies = [
        &[1u8, 128, 8, 0xFE, 14, 3, 16, 0, 0, 0, 0x21, 17, 0, 0, 0, 0x22, 127, 1, 2, 3, 4][..],
        &[128, 0, 6, 0xF1, 0x21, 10, 1, 2, 3],
        &[133, 0, 4, 198, 51, 100, 1, 133, 0, 4, 198, 51, 100, 1],
    ]
    .concat();
    v1_message(17, 0x12, 1, &ies)
}

fn create_session_request() -> Vec<u8> {
    fn ie(out: &mut Vec<u8>, t: u8, i: u8, v: &[u8]) {
        out.push(t);
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        out.push(i);
        out.extend_from_slice(v);
    }
    let mut ies = Vec::new();
    ie(&mut ies, 1, 0, &[0x00, 0x01, 0x10, 0x32, 0x54, 0x76, 0x98, 0xF0]);
    ie(&mut ies, 76, 0, &[0x64, 0x07, 0x12, 0x32, 0x54, 0xF6]);
    ie(&mut ies, 75, 0, &[0x53, 0, 0, 0, 0, 0, 0, 0xF0]);
    ie(&mut ies, 87, 0, &[0x86, 0, 0, 0, 1, 10, 0, 0, 1]);
    ie(&mut ies, 71, 0, b"\x08internet");
    ie(&mut ies, 79, 0, &[1, 0, 0, 0, 0]);
    let mut bearer = Vec::new();
    ie(&mut bearer, 73, 0, &[5]);
    ie(&mut bearer, 87, 2, &[0x84, 0, 0, 0, 2, 10, 0, 0, 1]);
    ie(&mut ies, 93, 0, &bearer);
    let mut m = vec![0x48, 32];
    m.extend_from_slice(&((ies.len() + 8) as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 0]);
    m.extend_from_slice(&ies);
    m
}

/// An Ethernet frame carrying a G-PDU with TEID `teid` from `source` to `destination` around an inner
/// IPv4/TCP segment with `payload`.
fn g_pdu_frame(
    source: [u8; 4],
    destination: [u8; 4],
    teid: u32,
    inner_source: [u8; 4],
    payload: &[u8],
) -> (Vec<u8>, usize) {
    let mut inner = Vec::new();
    PacketBuilder::ipv4(inner_source, [203, 0, 113, 80], 64)
        .tcp(40000, 80, 1000, 65535)
        .ack(1)
        .write(&mut inner, payload)
        .unwrap();
    let mut gtp = vec![0x30, 0xFF];
    gtp.extend_from_slice(&(inner.len() as u16).to_be_bytes());
    gtp.extend_from_slice(&teid.to_be_bytes());
    gtp.extend_from_slice(&inner);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(source, destination, 64)
        .udp(2152, 2152)
        .write(&mut frame, &gtp)
        .unwrap();
    // Offset of the inner TCP sequence number: Ethernet 14 + IP 20 + UDP 8 + GTP 8 + inner IP 20 + 4.
    (frame, 14 + 20 + 8 + 8 + 20 + 4)
}

fn live_correlator() -> Correlator {
    let mut correlator = Correlator::new(Config::default());
    let mut events = Vec::new();
    for (ts, src, dst, payload) in [(1, SGSN, GGSN, create_request()), (2, GGSN, SGSN, create_response())] {
        let d = Datagram {
            ts_us: ts,
            frame: 0,
            source: (src, 2123).into(),
            destination: (dst, 2123).into(),
            payload: &payload,
        };
        correlator.on_datagram(&d, &mut events);
    }
    assert_eq!(correlator.sessions().len(), 1);
    correlator
}

fn bench_hot_path(c: &mut Criterion) {
    let request = b"GET /index.html?page=2&lang=en HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0 (Linux; Android 14)\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: en-GB,en;q=0.9\r\nCookie: session=5b1d0c7e9f3a; theme=dark\r\n\r\n".to_vec();
    let token = gtpcharge_proto::Token::from_random([9; 16]);
    let with_token = format!("GET /confirm?t={token}&sp=42 HTTP/1.1\r\nHost: pay.sp.example\r\nUser-Agent: Mozilla/5.0 (Linux; Android 14)\r\nAccept: */*\r\n\r\n").into_bytes();
    let mut group = c.benchmark_group("g-pdu");
    group.throughput(Throughput::Elements(1));
    for (name, payload, uplink) in [
        ("uplink-http-no-token", request.clone(), true),
        ("uplink-http-token", with_token, true),
        ("downlink-1400", vec![b'x'; 1400], false),
    ] {
        let (mut frame, seq_at) = if uplink {
            g_pdu_frame(SGSN, GGSN, 0x21, [10, 1, 2, 3], &payload)
        } else {
            // To the SGSN's user-plane address (GSN Address IE 2 of the request) and its TEID-U.
            g_pdu_frame(GGSN, [192, 0, 2, 11], 0x11, [203, 0, 113, 80], &payload)
        };
        let mut decoder = Decoder::new(&DecoderConfig::default());
        let mut correlator = live_correlator();
        let mut events = Vec::with_capacity(16);
        let mut sequence = 1000u32;
        let mut ts = 10u64;
        group.bench_function(format!("decode+correlate/{name}"), |b| {
            b.iter(|| {
                // Each packet continues the TCP stream, as on a real link (no retransmission shortcut).
                sequence = sequence.wrapping_add(payload.len() as u32);
                frame[seq_at..seq_at + 4].copy_from_slice(&sequence.to_be_bytes());
                ts += 10;
                let decoded = decoder.decode_as(1, ts, black_box(&frame), datagram(ts));
                if let Ok(Some(d)) = &decoded {
                    correlator.on_datagram(d, &mut events);
                }
                events.clear();
            })
        });
        // The bench measured the path it names: every packet on the session's tunnel, none unknown
        // (checked when it ran: a filter may have skipped it).
        let notes = &correlator.stats().notes;
        if correlator.stats().g_pdus == 0 {
            continue;
        }
        assert_eq!(notes.get(Note::GPduUnknownTunnel), 0, "{name}: {notes:?}");
        assert_eq!(notes.get(Note::GPduDownlink) > 0, !uplink, "{name}: {notes:?}");
    }
    let (frame, _) = g_pdu_frame(SGSN, GGSN, 0x21, [10, 1, 2, 3], &request);
    let mut decoder = Decoder::new(&DecoderConfig::default());
    group.bench_function("decode-only/ethernet-ipv4-udp", |b| {
        b.iter(|| black_box(decoder.decode(1, 1, black_box(&frame)).is_ok()))
    });
    group.finish();
}

/// The generator's traffic mix (what `benches/replay-vs-floor.sh` replays, at a smaller size): every
/// frame decoded and correlated on a fresh correlator per pass, so signalling, uplink requests, DNS, TLS,
/// bulk downlink and background traffic count in their generated proportions.
///
/// The frames lie end to end in one buffer, as in a capture file, and each is copied into one reused
/// buffer before it is decoded, as libpcap copies each record into its own buffer before it hands it
/// to the probe: the probe's code meets a frame that was just written, never a cold one. `copy-only`
/// is that copy alone (the floor's work, not the probe's), so the probe's own cost per frame is the
/// difference of the two. Decoding each frame from its own heap allocation instead (24 MB of them) would
/// make the loop wait for memory on each frame's first byte, a wait the probe never has.
fn bench_mix(c: &mut Criterion) {
    let scenario = gtpcharge_pcapgen::Scenario {
        seed: 42,
        subscribers: 500,
        traffic_rounds: 4,
        background_per_round: 12,
        edge_cases: false,
        tokens: Vec::new(),
    };
    let mut generated: Vec<(u64, Vec<u8>)> = Vec::new();
    gtpcharge_pcapgen::generate(&scenario, &mut generated);
    let mut file = Vec::with_capacity(generated.iter().map(|(_, f)| f.len()).sum());
    let mut frames = Vec::with_capacity(generated.len());
    for (ts, frame) in &generated {
        frames.push((*ts, file.len()..file.len() + frame.len()));
        file.extend_from_slice(frame);
    }
    drop(generated);
    let mut buffer = vec![0u8; 65_536];
    let mut group = c.benchmark_group("mix");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.sample_size(20);
    group.bench_function(format!("copy-only/{}-frames-of-generated-capture", frames.len()), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for (_, range) in &frames {
                let frame = &mut buffer[..range.len()];
                frame.copy_from_slice(&file[range.clone()]);
                sum += u64::from(black_box(&*frame)[0]);
            }
            sum
        })
    });
    let mut g_pdus = 0;
    group.bench_function(format!("copy+decode+correlate/{}-frames-of-generated-capture", frames.len()), |b| {
        b.iter_batched_ref(
            || (Decoder::new(&DecoderConfig::default()), Correlator::new(Config::default()), Vec::with_capacity(64)),
            |(decoder, correlator, events)| {
                for (ts, range) in &frames {
                    let frame = &mut buffer[..range.len()];
                    frame.copy_from_slice(&file[range.clone()]);
                    let decoded = decoder.decode_as(1, *ts, black_box(&*frame), datagram(*ts));
                    if let Ok(Some(d)) = &decoded {
                        correlator.on_datagram(d, events);
                    }
                    events.clear();
                }
                g_pdus = correlator.stats().g_pdus;
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
    assert!(g_pdus == 0 || g_pdus > frames.len() as u64 * 9 / 10, "the mix is mostly user plane: {g_pdus} G-PDUs");
}

fn bench_gtpc(c: &mut Criterion) {
    let mut group = c.benchmark_group("gtp-c-parse");
    group.throughput(Throughput::Elements(1));
    let request = create_request();
    let response = create_response();
    let session = create_session_request();
    group.bench_function("v1-create-pdp-request", |b| {
        b.iter(|| gtpv1::Header::parse(black_box(&request)).and_then(|h| gtpv1::ControlFields::parse(h.body)).is_ok())
    });
    group.bench_function("v1-create-pdp-response", |b| {
        b.iter(|| gtpv1::Header::parse(black_box(&response)).and_then(|h| gtpv1::ControlFields::parse(h.body)).is_ok())
    });
    group.bench_function("v2-create-session-request", |b| {
        b.iter(|| gtpv2::Header::parse(black_box(&session)).and_then(|h| gtpv2::ControlFields::parse(h.body)).is_ok())
    });
    group.finish();
}

fn session(i: u32) -> Session {
    let ggsn = IpAddr::from([198, 51, 100, (i % 4) as u8]);
    let sgsn = IpAddr::from([192, 0, 2, (i % 8) as u8]);
    Session {
        id: 0,
        gtp_version: 1,
        imsi: Tbcd::from_digits(&format!("00101{:010}", i)).unwrap(),
        msisdn: Tbcd::from_digits(&format!("4670{:08}", i)).unwrap(),
        imei: Tbcd::EMPTY,
        apn: None,
        ue_ipv4: Some(std::net::Ipv4Addr::from(0x0A00_0000 + i)),
        ue_ipv6: None,
        nsapi: 5,
        tid: None,
        access: Endpoint {
            control: Some(TunnelKey { address: sgsn, teid: i }),
            user: Some(TunnelKey { address: sgsn, teid: i }),
        },
        core: Endpoint {
            control: Some(TunnelKey { address: ggsn, teid: i }),
            user: Some(TunnelKey { address: ggsn, teid: i }),
        },
        last_seen_us: 0,
        interface: gtpcharge_correlate::Interface::Gn,
        evidence_tag: 0,
    }
}

fn bench_sessions(c: &mut Criterion) {
    const N: u32 = 1_000_000;
    let mut table = SessionTable::new(N as usize + 1);
    for i in 0..N {
        table.insert(session(i)).unwrap();
    }
    let mut group = c.benchmark_group("session-table-1M");
    group.throughput(Throughput::Elements(1));
    let mut i = 0u32;
    group.bench_function("lookup-by-teid", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            black_box(table.by_user(TunnelKey { address: IpAddr::from([198, 51, 100, (i % 4) as u8]), teid: i }))
        })
    });
    group.bench_function("lookup-by-ue-ip", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            black_box(table.by_ue_ip(IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i))))
        })
    });
    group.bench_function("insert-then-remove", |b| {
        b.iter_batched(
            || session(N + 1),
            |s| {
                let (id, _) = table.insert(s).unwrap();
                table.remove(id)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    // A sweep for idle sessions with none idle: what one pass over the whole table costs (the probe
    // stops reading packets for that long).
    let mut group = c.benchmark_group("sweep");
    group.sample_size(10);
    group.bench_function("idle-sessions/1M-live", |b| b.iter(|| black_box(table.idle(black_box(0)).len())));
    let mut flows = FlowTable::new(N as usize);
    for i in 0..N {
        let key = FlowKey::new(
            u64::from(i),
            IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i)),
            IpAddr::from([203, 0, 113, 7]),
            40_000 + (i % 20_000) as u16,
            80,
        );
        flows.insert(key, FlowState::new(i, 1));
    }
    group.bench_function("idle-flows/1M-live", |b| b.iter(|| black_box(flows.expire(black_box(1)))));
    group.finish();
}

fn bench_scan(c: &mut Criterion) {
    let finder = TokenFinder::default();
    let mut http = String::new();
    while http.len() < 4096 {
        http.push_str("GET /assets/app.js?v=3.2.1 HTTP/1.1\r\nHost: cdn.example.com\r\nAccept: */*\r\nCookie: gc=1; id=gc1notatoken\r\n\r\n");
    }
    let http = &http.as_bytes()[..4096];
    let mut group = c.benchmark_group("token-scan");
    group.throughput(Throughput::Bytes(http.len() as u64));
    group.bench_function("http-4k-no-token", |b| {
        b.iter(|| {
            finder.scan(black_box(http), |_, t| {
                black_box(t);
            })
        })
    });
    let hello = gtpcharge_correlate::scan::tls::build_client_hello(b"courier2.push.apple.com");
    group.throughput(Throughput::Bytes(hello.len() as u64));
    group.bench_function("tls-client-hello-sni", |b| {
        b.iter(|| {
            let mut name = [0u8; 255];
            let len = gtpcharge_correlate::scan::tls::client_hello_sni(black_box(&hello), &mut name).unwrap_or(0);
            finder.scan(&name[..len], |_, t| {
                black_box(t);
            })
        })
    });
    // DNS: the question name of a query on UDP 53, read into a buffer, then scanned; a name without a token
    // (what nearly every query is) and one carrying a token (the sighting's path up to its event).
    for (name, qname, expected) in [
        ("dns-query-no-token", "clients4.google.com", 0),
        ("dns-query-token", "gc1pwrvh4qphgmowotxvezx6bbxa76nfsko.pay.example", 1),
    ] {
        let query = gtpcharge_correlate::scan::dns::build_query(0x1234, qname);
        let mut tokens = 0;
        let mut out = [0u8; gtpcharge_correlate::scan::dns::NAME_MAX];
        let len = gtpcharge_correlate::scan::dns::query_name(&query, &mut out).unwrap_or(0);
        finder.scan(&out[..len], |_, _| tokens += 1);
        assert_eq!((len, tokens), (qname.len(), expected), "{name}: the fixture");
        group.throughput(Throughput::Bytes(query.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut out = [0u8; gtpcharge_correlate::scan::dns::NAME_MAX];
                let len = gtpcharge_correlate::scan::dns::query_name(black_box(&query), &mut out).unwrap_or(0);
                finder.scan(&out[..len], |_, t| {
                    black_box(t);
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_hot_path, bench_mix, bench_gtpc, bench_sessions, bench_scan);
criterion_main!(benches);
