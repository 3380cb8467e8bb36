//! The gateway's background tasks (selector reload watch, cache refresh and purge, cache
//! writes to the database and Redis), spawned through one tracker so that shutdown can stop
//! them and wait for the ones that must finish.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns and drains background tasks. Clones share the same tasks.
#[derive(Debug, Clone, Default)]
pub struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    pub fn new() -> Self {
        Self::default()
    }

    /// A loop that runs until the gateway shuts down (or it ends by itself).
    pub fn spawn_loop(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = task => {}
                () = stop.cancelled() => tracing::debug!(task = name, "background task stopped"),
            }
        });
    }

    /// A short piece of work that should finish even when shutdown begins (a write that
    /// keeps a cache entry for the next start).
    pub fn spawn_work(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Tells the loops to stop and waits up to `within` for every task; `false` when some
    /// were still running then (they are left to the runtime's shutdown).
    pub async fn shutdown(&self, within: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(within, self.tracker.wait()).await.is_ok();
        if !drained {
            tracing::warn!(still_running = self.tracker.len(), "background tasks did not finish in time");
        }
        drained
    }

    /// Tasks still running (for tests and logs).
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn shutdown_stops_loops_and_waits_for_work() {
        let background = Background::new();
        background.spawn_loop("forever", std::future::pending());
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        background.spawn_work(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
        });
        assert_eq!(background.running(), 2);
        assert!(background.shutdown(Duration::from_secs(5)).await);
        assert!(finished.load(Ordering::SeqCst), "work spawned before shutdown ran to the end");
        assert_eq!(background.running(), 0);
    }

    #[tokio::test]
    async fn shutdown_gives_up_on_work_that_never_ends() {
        let background = Background::new();
        background.spawn_work(std::future::pending());
        assert!(!background.shutdown(Duration::from_millis(50)).await);
    }
}
