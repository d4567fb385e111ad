//! The pipeline's tests: the choice of threads and hand-over, and both hand-overs keeping every byte.
use super::*;

#[test]
fn flags_decide_the_threads() {
    let unmeasured = || -> Option<Duration> { panic!("measured although a flag decides") };
    assert_eq!(choose(true, false, None, 8, unmeasured).0, Threads::One);
    assert_eq!(choose(false, false, None, 1, unmeasured).0, Threads::One);
    let ns = |n| move || Some(Duration::from_nanos(n));
    assert_eq!(choose(false, true, None, 8, ns(52)).0, Threads::Two(Handover::Cached));
    assert_eq!(choose(false, true, None, 8, ns(460)).0, Threads::Two(Handover::Streaming));
    assert_eq!(
        choose(false, true, None, 1, || None).0,
        Threads::Two(Handover::Cached),
        "--pipeline is obeyed on one core too"
    );
}

#[test]
fn the_round_trip_decides_otherwise() {
    let ns = |n| move || Some(Duration::from_nanos(n));
    let (threads, why) = choose(false, false, None, 2, ns(52));
    assert_eq!(threads, Threads::Two(Handover::Cached));
    assert!(why.contains("52 ns") && why.contains("cached"), "{why}");
    assert_eq!(choose(false, false, None, 2, ns(200)).0, Threads::Two(Handover::Cached));
    let (threads, why) = choose(false, false, None, 2, ns(371));
    assert_eq!(threads, Threads::Two(Handover::Streaming));
    assert!(why.contains("371 ns") && why.contains("streaming"), "{why}");
    assert_eq!(choose(false, false, None, 2, || None).0, Threads::One);
    let (threads, why) = choose(false, false, Some(Handover::Cached), 2, ns(371));
    assert_eq!(threads, Threads::Two(Handover::Cached), "a forced hand-over wins over the measurement");
    assert!(why.contains("371 ns"), "{why}");
}

/// Frames of every length from 0 to 200 bytes, through both hand-overs: each comes out as it went
/// in, and a streaming batch's frames start 16-byte aligned.
#[test]
fn both_hand_overs_keep_every_byte() {
    let frames: Vec<Vec<u8>> = (0..=200u32).map(|len| (0..len).map(|i| (i * 7 + len) as u8).collect()).collect();
    for handover in [Handover::Cached, Handover::Streaming] {
        let mut batch = Batch::default();
        for (i, data) in frames.iter().enumerate() {
            let frame = Frame { ts_us: i as u64, wire_len: data.len() as u32 + 4, linktype: 1, data };
            batch.push(&frame, handover);
        }
        let out: Vec<Frame<'_>> = batch.frames().collect();
        assert_eq!(out.len(), frames.len(), "{handover:?}");
        for (i, (frame, data)) in out.iter().zip(&frames).enumerate() {
            assert_eq!(frame.data, data.as_slice(), "{handover:?} frame {i}");
            assert_eq!((frame.ts_us, frame.wire_len, frame.linktype), (i as u64, data.len() as u32 + 4, 1));
            if handover == Handover::Streaming {
                assert_eq!(frame.data.as_ptr() as usize % 16, 0, "frame {i} unaligned");
            }
        }
    }
}
