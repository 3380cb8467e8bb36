//! One Redis connection shared by a component, with every call bounded in time.
//!
//! Redis sits on the request path of the limiter and the shared cache tier, so a slow or dead
//! Redis must cost a request at most `timeout`, and after a failure it is not asked again for
//! a second: callers go on without it at once instead of each waiting out the timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

/// After a failed call, Redis is skipped for this long.
const BACKOFF_MS: u64 = 1_000;

pub struct BoundedRedis {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    timeout: Duration,
    /// Unix ms before which Redis is not tried (after a failure).
    skip_until_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl BoundedRedis {
    /// Parses the URL; connects lazily, on the first call.
    pub fn open(url: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connection: OnceCell::new(),
            timeout,
            skip_until_ms: AtomicU64::new(0),
        })
    }

    /// Runs one Redis call within the timeout, connecting first if needed. The error is a
    /// description for the caller's own error type.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
            return Err("Redis failed less than a second ago".into());
        }
        let attempt = async {
            let connection = self
                .connection
                .get_or_try_init(|| async {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1);
                    ConnectionManager::new_with_config(self.client.clone(), config).await
                })
                .await
                .map_err(|e| e.to_string())?;
            f(connection.clone()).await.map_err(|e| e.to_string())
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        if result.is_err() {
            self.skip_until_ms.store(now_ms() + BACKOFF_MS, Ordering::Relaxed);
        }
        result
    }
}
