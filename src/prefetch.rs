//! Cache-line prefetch hints, for code that knows which memory it will read next: the LPM's
//! batched walk (root slots, then nodes), a single IPv4 lookup's mid node and entries (asked
//! for while the LPM reads its leaf), a batch's entries (asked for ahead of their reads) and
//! a batch answer's copy of its cached routes.

/// Asks the CPU to start loading `value`'s cache line.
#[inline]
pub fn prefetch<T>(value: &T) {
    prefetch_at(value);
}

/// Asks the CPU to start loading the cache line at `at`, which need not point into any
/// allocation: a prefetch never faults.
#[inline]
pub fn prefetch_at<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults and reads nothing into the program.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Prefetches every cache line `bytes` touches (64-byte lines; the last byte's too, as the
/// bytes need not start on a line).
pub fn prefetch_bytes(bytes: &[u8]) {
    let offsets = (0..bytes.len()).step_by(64).chain(bytes.len().checked_sub(1));
    for offset in offsets {
        prefetch(&bytes[offset]);
    }
}
