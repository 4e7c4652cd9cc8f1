//! Cache-line prefetch hints, for loops that know which memory they will read next: the LPM's
//! batched walk (root slots, then nodes) and a batch answer's copy of its cached routes.

/// Asks the CPU to start loading `value`'s cache line.
#[inline]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults and reads nothing into the program.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Prefetches every cache line `bytes` touches (64-byte lines; the last byte's too, as the
/// bytes need not start on a line).
pub fn prefetch_bytes(bytes: &[u8]) {
    let offsets = (0..bytes.len()).step_by(64).chain(bytes.len().checked_sub(1));
    for offset in offsets {
        prefetch(&bytes[offset]);
    }
}
