//! Transparent huge pages for the large arrays the routing table reads at random: with 4 KiB
//! pages nearly every lookup also missed the TLB (docs/benchmarks.md, in-process lookups).

/// Pushes onto a large array read at random (the table's nodes, the routing table's entries).
/// Once it holds 2 MiB, it grows by moving into memory advised for huge pages before it is
/// touched (with 4 KiB pages nearly every lookup also missed the TLB; the kernel merges pages
/// already touched only slowly, in the background; below 2 MiB a huge page per array would
/// cost more memory than the misses cost time).
pub(super) fn push_advised<T>(array: &mut Vec<T>, value: T) {
    if array.len() == array.capacity() && (array.len() + 1) * std::mem::size_of::<T>() >= 2 << 20 {
        let mut grown = Vec::with_capacity(array.capacity() * 2);
        advise_huge_pages(grown.spare_capacity_mut());
        grown.append(array);
        *array = grown;
    }
    array.push(value);
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
