//! Transparent huge pages for large allocations: the arrays the routing table reads at random
//! (with 4 KiB pages nearly every lookup also missed the TLB; docs/benchmarks.md, in-process
//! lookups), and a snapshot's buffer, written once from end to end (a page fault per 4 KiB was
//! about a quarter of its encoding).

/// From this size on, an allocation has a mapping of its own, so advice on it covers nothing
/// else and ends when it is freed: the server's allocator hands such blocks to glibc's malloc
/// (`allocator.rs`), which maps each one apart (so do tests and benchmarks, on glibc's alone).
const OWN_MAPPING: usize = crate::allocator::SYSTEM_FROM;

/// Pushes onto a large array read at random (the table's nodes, the routing table's entries).
/// Once it would grow past 4 MiB, it moves into a new allocation of at least 32 MiB, advised
/// for huge pages before it is touched (the kernel merges pages already touched only slowly,
/// in the background), at least [`OWN_MAPPING`] so that the advice covers nothing else; below
/// 4 MiB a huge page would cost more memory than the misses cost time. The room past the
/// array's end is not resident until it is used.
pub(crate) fn push_advised<T>(array: &mut Vec<T>, value: T) {
    const ADVISED_FROM: usize = 4 << 20;
    let size = std::mem::size_of::<T>().max(1);
    if array.len() == array.capacity() && (array.len() + 1) * size > ADVISED_FROM {
        let mut grown = Vec::with_capacity((array.capacity() * 2).max(OWN_MAPPING.div_ceil(size)));
        advise_huge_pages(grown.spare_capacity_mut());
        grown.append(array);
        *array = grown;
    }
    array.push(value);
}

/// Advises `spare` (a buffer's room not written yet) for huge pages if it is large enough to
/// be an allocation of its own.
pub(crate) fn advise_if_own_mapping<T>(spare: &[T]) {
    if std::mem::size_of_val(spare) >= OWN_MAPPING {
        advise_huge_pages(spare);
    }
}

/// Asks the kernel to back `memory` with transparent huge pages (docs/benchmarks.md,
/// in-process lookups). A refusal (THP off) is harmless.
fn advise_huge_pages<T>(memory: &[T]) {
    #[cfg(target_os = "linux")]
    {
        // madvise wants a page-aligned start; malloc's large blocks start just past a header.
        const PAGE: usize = 4096;
        let start = memory.as_ptr() as usize;
        let end = start + std::mem::size_of_val(memory);
        let aligned = start.next_multiple_of(PAGE);
        if end >= aligned + 2 * 1024 * 1024 {
            // SAFETY: the range lies inside `memory`'s allocation; MADV_HUGEPAGE changes how
            // the kernel backs it, never its contents.
            unsafe {
                libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE);
            }
        }
    }
}
