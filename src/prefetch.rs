//! Cache hints for the pipeline's hand-over of frames between its two threads (`pipeline.rs`).
//!
//! The reader thread writes each frame into a recycled batch whose lines the correlating thread read
//! last, on the other core; the correlating thread then reads them back from the reader's core. Both
//! stalled on those cross-core transfers (perf: the correlating thread's loop over a batch and the
//! reader's copy into it were the pipeline's hottest lines). A hint issued a few frames ahead overlaps
//! the transfer with the work on the frames before it.
//!
//! Where that transfer is slow (a cross-core round trip of hundreds of nanoseconds rather than tens, as
//! on a VM whose host places the vCPUs far apart), hints do not hide it, and the reader copies with
//! non-temporal stores instead ([`stream_append`], `pipeline::Handover::Streaming`): they write to memory
//! without first taking each line back from the core that read it, and [`publish`] orders them before the
//! hand-over.
//!
//! This is the binary's only unsafe code (with the CPUID read that tells whether the CPU has
//! `prefetchw`). The hints cannot be unsound whatever the address: a prefetch is a hint that reads and
//! writes nothing architecturally and never faults, so a pointer past the end of a buffer, or into
//! unmapped memory, is harmless (Intel SDM, PREFETCHh and PREFETCHW). The streaming stores write only
//! into a vector's reserved spare capacity, at addresses aligned as `movntdq` requires, and the length
//! is set only over bytes they wrote. Elsewhere than x86-64 the hints do nothing and the copy is plain.
#![allow(unsafe_code)]

use std::sync::LazyLock;

/// Hints that the lines of `[start, start + len)` will be read soon (into every cache level:
/// `prefetcht0`).
#[inline(always)]
pub fn read_lines(start: *const u8, len: usize) {
    for at in (0..len).step_by(LINE) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `prefetcht0` accesses no memory and cannot fault (module docs).
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(start.wrapping_add(at).cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (start, at);
    }
}

/// Hints that the lines of `[start, start + len)` will be written soon: `prefetchw` fetches each
/// exclusive, so a line the other core holds is taken from it before the store needs it. Nothing where
/// the CPU lacks the instruction.
#[inline(always)]
pub fn write_lines(start: *const u8, len: usize) {
    if !*WRITE_HINT {
        return;
    }
    for at in (0..len).step_by(LINE) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `prefetchw` accesses no memory and cannot fault (module docs), and `WRITE_HINT` said
        // the CPU has it.
        unsafe {
            std::arch::asm!(
                "prefetchw [{}]",
                in(reg) start.wrapping_add(at),
                options(nostack, preserves_flags, readonly)
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (start, at);
    }
}

const LINE: usize = 64;

/// Whether this CPU has `prefetchw` (CPUID's PRFCHW bit; every x86-64 CPU from about 2014 on). Where it
/// lacks it, `write_lines` issues nothing: older Intel CPUs may not treat the opcode as a no-op.
static WRITE_HINT: LazyLock<bool> = LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 0x8000_0001, ECX bit 8 (PRFCHW, "3DNowPrefetch"): std's feature detection does not
        // know this one on stable Rust.
        use std::arch::x86_64::__cpuid;
        #[allow(unused_unsafe)] // `__cpuid` is safe on newer toolchains
        // SAFETY: CPUID exists on every x86-64 CPU and only reads identification registers.
        let (highest, features) = unsafe { (__cpuid(0x8000_0000).eax, __cpuid(0x8000_0001).ecx) };
        highest >= 0x8000_0001 && features & (1 << 8) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
});

/// Appends `head` and then `src` to `dst` with non-temporal stores (x86-64 SSE2 `movntdq`), at the first
/// offset at or after `dst`'s length that is a multiple of 16; returns that offset. `head` fills whole
/// 16-byte chunks and `src`'s last chunk is zero-padded, so `dst` grows by a multiple of 16 and every byte
/// of it is written. Where the stores cannot be used (not x86-64, or a vector whose memory does not start
/// 16-byte aligned, which the system allocator never gives) a plain copy, same layout. Callers call
/// [`publish`] before another thread reads what was stored.
pub fn stream_append(dst: &mut Vec<u8>, head: &[u8; STREAM_HEAD], src: &[u8]) -> usize {
    let padded = STREAM_HEAD + src.len().div_ceil(CHUNK) * CHUNK;
    let start = dst.len().next_multiple_of(CHUNK);
    dst.resize(start, 0);
    dst.reserve(padded);
    #[cfg(target_arch = "x86_64")]
    if (dst.as_ptr() as usize) % CHUNK == 0 {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        // The vector's spare capacity now begins 16-byte aligned (its memory is, and `start` is a multiple
        // of 16) and holds at least `padded` bytes (reserved).
        let base = dst.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        let mut at = 0;
        let mut store = |chunk: &[u8; CHUNK]| {
            // SAFETY: `chunk` is 16 readable bytes (the load is unaligned); `base + at` is 16-byte aligned and
            // `at + 16 <= padded <= spare capacity` (at most `padded / 16` chunks are stored), so the store
            // is aligned and in bounds.
            unsafe { _mm_stream_si128(base.add(at).cast::<__m128i>(), _mm_loadu_si128(chunk.as_ptr().cast())) };
            at += CHUNK;
        };
        head.chunks_exact(CHUNK).filter_map(whole_chunk).for_each(&mut store);
        let chunks = src.chunks_exact(CHUNK);
        let rest = chunks.remainder();
        chunks.filter_map(whole_chunk).for_each(&mut store);
        if !rest.is_empty() {
            let mut last = [0u8; CHUNK];
            last[..rest.len()].copy_from_slice(rest);
            store(&last);
        }
        // SAFETY: every byte of `[start, start + padded)` was written by the stores above.
        unsafe { dst.set_len(start + padded) };
        return start;
    }
    dst.extend_from_slice(head);
    dst.extend_from_slice(src);
    dst.resize(start + padded, 0);
    start
}

#[cfg(target_arch = "x86_64")]
fn whole_chunk(chunk: &[u8]) -> Option<&[u8; CHUNK]> {
    chunk.try_into().ok()
}

/// The length of the head `stream_append` writes before each copy.
pub const STREAM_HEAD: usize = 32;
const CHUNK: usize = 16;

/// Orders the non-temporal stores of [`stream_append`] before whatever this thread stores next (the
/// channel send that hands the batch over): without it another core may see the hand-over first.
#[inline(always)]
pub fn publish() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` only orders stores.
    unsafe {
        std::arch::x86_64::_mm_sfence();
    }
}
