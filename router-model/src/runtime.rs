//! Process-level CPU settings for running candle beside a tokio server.
//!
//! candle 0.11 runs large elementwise ops on a pool of worker threads that *spin* between
//! tasks (and its callers spin while waiting for them). On a small machine shared with
//! tokio's workers, or with anything else, a descheduled spinner stalls the whole forward
//! pass: on our 2-core machines under load a 64-token embedding took ~100 ms with that pool
//! and ~60 ms without it (README.md). Matrix multiplications are unaffected: they run on the
//! embedding service's own bounded rayon pool.

/// Activation buffers of a batched forward pass are megabytes each; glibc serves those with
/// fresh mmaps or trims them back to the OS after every op, so each op pays page faults on
/// zeroed pages (~9% of a batched embed in profiles). Keeping up to this much in the heap
/// avoids that at the cost of holding the peak working set (tens of MB) after a burst.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_KEEP_BYTES: libc::c_int = 128 << 20;

/// The variable candle reads, once, when it first needs its elementwise worker pool.
pub const CANDLE_NUM_THREADS_ENV: &str = "CANDLE_NUM_THREADS";

/// Prepares the process for CPU inference beside a server: turns candle's spinning
/// elementwise pool off (elementwise ops then run inline on the model thread) unless
/// `CANDLE_NUM_THREADS` is already set, and, with glibc, keeps large freed buffers in the
/// heap instead of returning them to the OS after every op (see `MALLOC_KEEP_BYTES`).
///
/// Call it first thing in `main`, before any other thread is started and before any model
/// is loaded: it sets an environment variable, which is only sound while the process is
/// single-threaded, and candle reads it only once.
pub fn configure_cpu_threads() {
    if std::env::var_os(CANDLE_NUM_THREADS_ENV).is_none() {
        std::env::set_var(CANDLE_NUM_THREADS_ENV, "1");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; it is documented as callable at any
    // time and we pass valid parameter constants.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_KEEP_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_KEEP_BYTES);
    }
}

/// True when candle's elementwise pool is off (see [`configure_cpu_threads`]).
pub fn cpu_threads_configured() -> bool {
    std::env::var(CANDLE_NUM_THREADS_ENV).is_ok_and(|v| v.trim() == "1")
}
