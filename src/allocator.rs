//! The binaries' memory allocator: mimalloc (v2) for everything under 32 MiB, glibc's malloc
//! (the system allocator) for larger blocks, and mimalloc's arenas committed as they are used.
//! The server and ipamctl install it with [`install_allocator!`](crate::install_allocator);
//! tests and benchmarks keep the system allocator, but for `benches/stalls.rs`, which measures
//! where the state's growth stalls a write in the server, and `benches/batch.rs`, which
//! measures a batch answer's server work.
//!
//! Why mimalloc: glibc's malloc and free were ~17% of the server's CPU under durable creates,
//! a quarter of the writer thread's time in malloc's slow path (the writer allocates each
//! group's stored records and other threads free them). docs/benchmarks.md ("glibc's malloc
//! against mimalloc") has the runs.
//!
//! Why large blocks stay with glibc: glibc gives each of them a mapping of its own and unmaps
//! it when it is freed, so the huge-page advice on the routing table's arrays
//! (`huge_pages.rs`) covers those arrays alone and ends with them. mimalloc would hand a freed
//! block's range, advice and all, to small allocations later.
//!
//! Why arenas committed on demand: by default mimalloc on Linux commits its first arena (1 GiB)
//! at once and advises all of it for transparent huge pages, and under the kernel's usual
//! `defrag=madvise` a page fault there may stop to compact memory: creates' p99.9 rose from
//! 8-17 to 18-31 ms. The option must be set before the first arena is reserved, that is before
//! the first allocation: the macro runs [`commit_arenas_on_demand`] as an ELF constructor,
//! ahead of `main` and of Rust's runtime. `MIMALLOC_ARENA_EAGER_COMMIT` in the environment
//! still wins.
//!
//! Why large blocks are freed by a thread of their own: freeing one unmaps it, which returns
//! each of its pages (~2.5 ms for the 58 MB table the state's binding map leaves behind when it
//! has grown past 2^19 slots), and that free happens inside an apply, under the projections'
//! write lock: every read waited for it (docs/benchmarks.md, the stalls bench). Once
//! [`free_large_blocks_in_background`] ran, a large block is handed over through a bounded
//! channel (sending neither allocates nor waits) and freed there; with the channel full, or
//! before, it is freed at once.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use mimalloc::MiMalloc;

/// Large blocks waiting for the freeing thread (their address and layout).
static LARGE_FREES: OnceLock<SyncSender<(usize, Layout)>> = OnceLock::new();
/// The address of the last block the freeing thread freed (0: none yet).
static LAST_FREED_IN_BACKGROUND: AtomicUsize = AtomicUsize::new(0);

/// Starts the thread that frees large blocks (see the module doc); later calls do nothing.
pub fn free_large_blocks_in_background() {
    LARGE_FREES.get_or_init(|| {
        let (sender, receiver) = sync_channel(64);
        std::thread::Builder::new()
            .name("large-frees".into())
            .spawn(move || free_large_blocks(receiver))
            .expect("a thread to free large blocks");
        sender
    });
}

fn free_large_blocks(blocks: Receiver<(usize, Layout)>) {
    for (address, layout) in blocks {
        // SAFETY: `address` is a large block that `ProcessAllocator::dealloc` was given with
        // `layout`: the system allocator made it and nothing uses it any more.
        unsafe { System.dealloc(address as *mut u8, layout) };
        LAST_FREED_IN_BACKGROUND.store(address, Ordering::Relaxed);
    }
}

/// The address of the last block the freeing thread freed (0: none yet).
pub fn last_freed_in_background() -> usize {
    LAST_FREED_IN_BACKGROUND.load(Ordering::Relaxed)
}

/// From this size on a block goes to the system allocator (see the module doc).
pub const SYSTEM_FROM: usize = 32 << 20;

/// mimalloc for blocks under [`SYSTEM_FROM`], the system allocator from it on. A block is
/// freed by the allocator its layout's size names, which is the one that allocated it (Rust
/// frees with the layout it allocated with).
pub struct ProcessAllocator;

fn is_large(size: usize) -> bool {
    size >= SYSTEM_FROM
}

// SAFETY: every call goes to one of two sound allocators, chosen by the block's size, which is
// the same when a block is allocated and when it is freed; a realloc across the threshold
// moves the block from one to the other.
unsafe impl GlobalAlloc for ProcessAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if is_large(layout.size()) {
                System.alloc(layout)
            } else {
                MiMalloc.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if is_large(layout.size()) {
                System.alloc_zeroed(layout)
            } else {
                MiMalloc.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the allocator this size names.
        unsafe {
            if !is_large(layout.size()) {
                MiMalloc.dealloc(ptr, layout)
            } else if LARGE_FREES
                .get()
                .is_none_or(|frees| frees.try_send((ptr as usize, layout)).is_err())
            {
                System.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (was_large, will_be_large) = (is_large(layout.size()), is_large(new_size));
        // SAFETY: forwarded with the caller's guarantees; across the threshold the block is
        // copied into one from the other allocator (the smaller size's bytes) and then freed.
        unsafe {
            match (was_large, will_be_large) {
                (false, false) => MiMalloc.realloc(ptr, layout, new_size),
                (true, true) => System.realloc(ptr, layout, new_size),
                _ => {
                    let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    moved
                }
            }
        }
    }
}

/// `mi_option_arena_eager_commit` in mimalloc.h (v2); the Rust binding omits its constant.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets mimalloc to commit its arenas on demand, unless `MIMALLOC_ARENA_EAGER_COMMIT` says
/// otherwise. Allocates nothing: it is meant to run before anything has.
pub extern "C" fn commit_arenas_on_demand() {
    // SAFETY: getenv reads the environment without allocating; mi_option_set writes one of
    // mimalloc's option cells, which nothing reads concurrently before `main`.
    unsafe {
        if libc::getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
            libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        }
    }
}

/// Installs [`ProcessAllocator`] as the binary's global allocator, and
/// [`commit_arenas_on_demand`] as an ELF constructor: it runs ahead of `main` and of Rust's
/// runtime (after mimalloc's own constructor, which has priority 101), before the first
/// allocation. Used once, at a binary's crate root.
#[macro_export]
macro_rules! install_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::allocator::ProcessAllocator = $crate::allocator::ProcessAllocator;

        #[cfg(target_os = "linux")]
        #[used]
        #[unsafe(link_section = ".init_array")]
        static COMMIT_ARENAS_ON_DEMAND: extern "C" fn() = $crate::allocator::commit_arenas_on_demand;
    };
}

/// Whether mimalloc commits its arenas on demand.
pub fn commits_on_demand() -> bool {
    // SAFETY: reads one option cell.
    unsafe { libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small and large blocks, and reallocs within and across the threshold both ways, keep
    /// their bytes and free without complaint (a block freed by the wrong allocator aborts).
    #[test]
    fn blocks_move_between_allocators_with_their_bytes() {
        let sizes = [64, SYSTEM_FROM - 8, SYSTEM_FROM, SYSTEM_FROM + 4096, 4096, 64];
        // SAFETY: each block is used within its layout and freed with it.
        unsafe {
            let mut layout = Layout::from_size_align(sizes[0], 16).unwrap();
            let mut block = ProcessAllocator.alloc(layout);
            assert!(!block.is_null());
            for at in 0..layout.size() {
                *block.add(at) = at as u8;
            }
            for &size in &sizes[1..] {
                let kept = layout.size().min(size);
                block = ProcessAllocator.realloc(block, layout, size);
                assert!(!block.is_null());
                layout = Layout::from_size_align(size, 16).unwrap();
                assert_eq!(block as usize % 16, 0);
                for at in (0..kept).step_by(4093) {
                    assert_eq!(*block.add(at), at as u8, "byte {at} after a realloc to {size}");
                }
                for at in 0..size {
                    *block.add(at) = at as u8;
                }
            }
            ProcessAllocator.dealloc(block, layout);
            let zeroed = Layout::from_size_align(SYSTEM_FROM, 64).unwrap();
            let block = ProcessAllocator.alloc_zeroed(zeroed);
            assert!((0..SYSTEM_FROM).step_by(4096).all(|at| *block.add(at) == 0));
            ProcessAllocator.dealloc(block, zeroed);
        }
    }

    /// Once the freeing thread runs, a large block given back is freed there (by its address:
    /// the other test frees large blocks too, at the same time).
    #[test]
    fn large_blocks_are_freed_by_their_own_thread() {
        free_large_blocks_in_background();
        let large = Layout::from_size_align(SYSTEM_FROM, 64).unwrap();
        // SAFETY: the block is used within its layout and freed with it.
        let address = unsafe {
            let block = ProcessAllocator.alloc(large);
            assert!(!block.is_null());
            block.write_bytes(1, SYSTEM_FROM);
            ProcessAllocator.dealloc(block, large);
            block as usize
        };
        let started = std::time::Instant::now();
        while last_freed_in_background() != address {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the large block was not freed"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
