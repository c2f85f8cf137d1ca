//! llama.cpp's OpenMP thread team, lent to the engine's row updates.
//!
//! llama.cpp (built with OpenMP) computes each part of the graph in an OpenMP parallel region;
//! between parts, while the evaluation callback adds the adapters' updates on the engine
//! thread, the team's other threads wait for the next region, spinning. [`run`] hands them
//! that region: the updates run on every thread of the team at the cost of a spin-wait
//! hand-off, with no thread of our own competing with llama.cpp's for the cores.

use std::ffi::{c_int, c_uint, c_void};

// libgomp's entry points (GCC's OpenMP runtime, which llama.cpp's build links): what a compiler
// emits for `#pragma omp parallel`, and the thread's place in the team.
#[link(name = "gomp")]
unsafe extern "C" {
    fn GOMP_parallel(
        body: unsafe extern "C" fn(*mut c_void),
        data: *mut c_void,
        num_threads: c_uint,
        flags: c_uint,
    );
    fn omp_get_thread_num() -> c_int;
    fn omp_get_num_threads() -> c_int;
}

/// Run `work(thread, threads)` once on each of `threads` threads of the team, the calling
/// thread among them, and return when all are done. With one thread, runs it here.
pub fn run<F: Fn(usize, usize) + Sync>(threads: usize, work: &F) {
    if threads <= 1 {
        work(0, 1);
        return;
    }
    /// One team thread's share.
    ///
    /// # Safety
    /// `data` is the `F` that `run` passed, alive until the region ends.
    unsafe extern "C" fn share<F: Fn(usize, usize) + Sync>(data: *mut c_void) {
        // SAFETY: see above; `F: Sync`, so each thread may call it through a shared reference.
        let (work, thread, threads) = unsafe {
            (
                &*data.cast_const().cast::<F>(),
                omp_get_thread_num(),
                omp_get_num_threads(),
            )
        };
        work(thread as usize, threads as usize);
    }
    // SAFETY: `share::<F>` reads `work` only while the region runs, and `GOMP_parallel` returns
    // after every thread has finished it. A panic inside `work` aborts (it cannot unwind out of
    // an `extern "C"` function).
    unsafe {
        GOMP_parallel(
            share::<F>,
            (work as *const F).cast_mut().cast(),
            threads as c_uint,
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_thread_of_the_team_runs_its_share_once() {
        for threads in [1, 2, 3] {
            let seen = AtomicUsize::new(0);
            let count = AtomicUsize::new(0);
            super::run(threads, &|thread, n| {
                assert_eq!(n, threads);
                seen.fetch_or(1 << thread, Ordering::SeqCst);
                count.fetch_add(1, Ordering::SeqCst);
            });
            assert_eq!(count.load(Ordering::SeqCst), threads);
            assert_eq!(seen.load(Ordering::SeqCst), (1 << threads) - 1);
        }
    }
}
