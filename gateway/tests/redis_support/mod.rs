//! The real Redis at 127.0.0.1:6379 (`SWITCHYARD_TEST_REDIS` overrides the URL) and a key
//! prefix per test whose keys are deleted when it is dropped.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

#![allow(dead_code)]

pub fn redis_url() -> String {
    std::env::var("SWITCHYARD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh key prefix; its keys are deleted when dropped.
pub struct Prefix(pub String);

impl Prefix {
    pub fn new() -> Self {
        Self(format!("switchyard-test:{}", uuid::Uuid::now_v7().simple()))
    }

    pub async fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(redis_url()).expect("redis url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("Redis at 127.0.0.1:6379");
        redis::cmd("KEYS").arg(format!("{}:*", self.0)).query_async(&mut conn).await.expect("KEYS")
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let pattern = format!("{}:*", self.0);
        // A fresh thread: Drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(redis_url()) else { return };
            let Ok(mut conn) = client.get_connection() else { return };
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn).unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query(&mut conn);
            }
        })
        .join();
    }
}
