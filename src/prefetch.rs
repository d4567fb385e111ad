//! Cache hints for the pipeline's hand-over of frames between its two threads (`pipeline.rs`).
//!
//! The reader thread writes each frame into a recycled batch whose lines the correlating thread read
//! last, on the other core; the correlating thread then reads them back from the reader's core. Both
//! stalled on those cross-core transfers (perf, session 16: the correlating thread's loop over a batch
//! held 18% of the pipeline's samples, the reader's copy into the batch 12%). A hint issued a few frames
//! ahead overlaps the transfer with the work on the frames before it.
//!
//! This is the binary's only unsafe code (with the CPUID read that tells whether the CPU has
//! `prefetchw`), and it cannot be unsound whatever the address: a prefetch is
//! a hint that reads and writes nothing architecturally and never faults, so a pointer past the end of
//! a buffer, or into unmapped memory, is harmless (Intel SDM, PREFETCHh and PREFETCHW). Elsewhere than
//! x86-64 the hints do nothing.
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
