//! Process-level CPU settings for running candle beside a tokio server.
//!
//! candle 0.11 runs large elementwise ops on a pool of worker threads that *spin* between
//! tasks (and its callers spin while waiting for them). On a small machine shared with
//! tokio's workers, or with anything else, a descheduled spinner stalls the whole forward
//! pass: on our 2-core machines under load a 64-token embedding took ~100 ms with that pool
//! and ~60 ms without it (README.md). Matrix multiplications are unaffected: they run on the
//! embedding service's own bounded rayon pool.

/// The variable candle reads, once, when it first needs its elementwise worker pool.
pub const CANDLE_NUM_THREADS_ENV: &str = "CANDLE_NUM_THREADS";

/// Turns candle's spinning elementwise pool off (elementwise ops then run inline on the
/// model thread) unless `CANDLE_NUM_THREADS` is already set.
///
/// Call it first thing in `main`, before any other thread is started and before any model
/// is loaded: it sets an environment variable, which is only sound while the process is
/// single-threaded, and candle reads it only once.
pub fn configure_cpu_threads() {
    if std::env::var_os(CANDLE_NUM_THREADS_ENV).is_none() {
        std::env::set_var(CANDLE_NUM_THREADS_ENV, "1");
    }
}

/// True when candle's elementwise pool is off (see [`configure_cpu_threads`]).
pub fn cpu_threads_configured() -> bool {
    std::env::var(CANDLE_NUM_THREADS_ENV).is_ok_and(|v| v.trim() == "1")
}
