//! No heap allocation per packet in steady state: after warm-up, G-PDUs on a live session (a flow that is
//! already tracked, with and without payload, uplink and downlink) go through the correlator without a
//! single allocation. Counted with a wrapping global allocator, on the test's own thread only: the test
//! harness's other threads allocate when they like (a CI run once saw 4 allocations in the window, with no
//! change to the correlator).
use gtpcharge_correlate::{Config, Correlator, Datagram};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the thread whose allocations count (a const initializer: reading it never allocates).
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

use gtpcharge_correlate::wire::gtpv1::message as v1_message;

#[test]
fn steady_state_g_pdus_do_not_allocate() {
    COUNTED.with(|counted| counted.set(true));
    let sgsn = [192, 0, 2, 10];
    let ggsn = [198, 51, 100, 1];
    let mut correlator = Correlator::new(Config::default());
    let mut events = Vec::with_capacity(64);
    let request = [
        &[2u8, 0x00, 0x01, 0x10, 0x32, 0x54, 0x76, 0x98, 0xF0][..], // IMSI
        &[16, 0, 0, 0, 0x11, 17, 0, 0, 0, 0x12, 20, 5],             // TEID data, TEID C, NSAPI
        &[134, 0, 7, 0x91, 0x64, 0x07, 0x12, 0x32, 0x54, 0xF6],     // MSISDN
    ]
    .concat();
    let response =
        [&[1u8, 128, 16, 0, 0, 0, 0x21, 17, 0, 0, 0, 0x22][..], &[128, 0, 6, 0xF1, 0x21, 10, 1, 2, 3]].concat();
    let create = v1_message(16, 0, 1, &request);
    let accept = v1_message(17, 0x12, 1, &response);
    let send = |c: &mut Correlator, events: &mut Vec<_>, ts, src: [u8; 4], dst: [u8; 4], port, payload: &[u8]| {
        c.on_datagram(
            &Datagram { ts_us: ts, frame: 0, source: (src, port).into(), destination: (dst, port).into(), payload },
            events,
        );
        events.clear();
    };
    send(&mut correlator, &mut events, 1, sgsn, ggsn, 2123, &create);
    send(&mut correlator, &mut events, 2, ggsn, sgsn, 2123, &accept);
    assert_eq!(correlator.sessions().len(), 1);

    // An uplink TCP segment of an HTTP flow and a downlink one, as G-PDUs.
    let mut up_inner = Vec::new();
    let body = b"GET /page?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let mut g_pdus = Vec::new();
    for i in 0..2000u32 {
        up_inner.clear();
        etherparse::PacketBuilder::ipv4([10, 1, 2, 3], [203, 0, 113, 80], 64)
            .tcp(40000, 80, 1000 + i * body.len() as u32, 65535)
            .write(&mut up_inner, body)
            .unwrap();
        let mut g = vec![0x30, 0xFF];
        g.extend_from_slice(&(up_inner.len() as u16).to_be_bytes());
        g.extend_from_slice(&0x21u32.to_be_bytes());
        g.extend_from_slice(&up_inner);
        g_pdus.push(g);
    }
    let mut down_inner = Vec::new();
    etherparse::PacketBuilder::ipv4([203, 0, 113, 80], [10, 1, 2, 3], 64)
        .tcp(80, 40000, 1, 65535)
        .write(&mut down_inner, &[b'x'; 1200])
        .unwrap();
    let mut down = vec![0x30, 0xFF];
    down.extend_from_slice(&(down_inner.len() as u16).to_be_bytes());
    down.extend_from_slice(&0x11u32.to_be_bytes());
    down.extend_from_slice(&down_inner);
    // Warm-up: the flow is created, counters' map entries exist.
    for (i, g) in g_pdus.iter().take(100).enumerate() {
        send(&mut correlator, &mut events, 10 + i as u64, sgsn, ggsn, 2152, g);
        send(&mut correlator, &mut events, 10 + i as u64, ggsn, sgsn, 2152, &down);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    assert!(before > 0, "the counting allocator must see the warm-up's allocations");
    for (i, g) in g_pdus.iter().enumerate().skip(100) {
        send(&mut correlator, &mut events, 200 + i as u64, sgsn, ggsn, 2152, g);
        send(&mut correlator, &mut events, 200 + i as u64, ggsn, sgsn, 2152, &down);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(allocations, 0, "{allocations} allocations for 3800 steady-state G-PDUs");
    assert_eq!(correlator.stats().g_pdus, 4000);
}
