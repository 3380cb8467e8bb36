//! Redis counters, shared by every gateway replica. Admission is one Lua script, so checking
//! every limit and bumping the request counters is atomic across replicas.
//!
//! Every call is bounded (see [`BoundedRedis`]): callers fail open or closed at once instead
//! of each waiting out a dead Redis.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{Counters, LimitKind, Refusal};
use crate::error::Error;
use crate::redis_client::BoundedRedis;

/// rpm/tpm counters outlive their minute a little (clock skew between replicas).
const MINUTE_TTL_SECS: u64 = 120;

/// KEYS: per subject rpm, tpm, budget. ARGV: per subject rpm limit, tpm limit, budget limit
/// (-1 = none), then the minute TTL. Returns 0 when admitted, else `3*subject + kind` (1-based
/// subject, kind 1 = rpm, 2 = tpm, 3 = budget).
const ADMIT: &str = r"
local n = #KEYS / 3
for i = 1, n do
  for k = 1, 3 do
    local limit = tonumber(ARGV[3 * (i - 1) + k])
    if limit >= 0 then
      local used = tonumber(redis.call('GET', KEYS[3 * (i - 1) + k]) or '0')
      if used >= limit then return 3 * (i - 1) + k end
    end
  end
end
local ttl = tonumber(ARGV[3 * n + 1])
for i = 1, n do
  if tonumber(ARGV[3 * (i - 1) + 1]) >= 0 then
    local key = KEYS[3 * (i - 1) + 1]
    if redis.call('INCR', key) == 1 then redis.call('EXPIRE', key, ttl) end
  end
end
return 0
";

/// KEYS: per subject tpm, budget. ARGV: tokens, nano-USD, minute TTL, period TTL, then per
/// subject whether tpm / budget are limited (1/0).
const CHARGE: &str = r"
local n = #KEYS / 2
local tokens = tonumber(ARGV[1])
local nano = tonumber(ARGV[2])
for i = 1, n do
  if ARGV[4 + 2 * (i - 1) + 1] == '1' and tokens > 0 then
    redis.call('INCRBY', KEYS[2 * (i - 1) + 1], tokens)
    redis.call('EXPIRE', KEYS[2 * (i - 1) + 1], ARGV[3])
  end
  if ARGV[4 + 2 * (i - 1) + 2] == '1' and nano > 0 then
    redis.call('INCRBY', KEYS[2 * (i - 1) + 2], nano)
    redis.call('EXPIRE', KEYS[2 * (i - 1) + 2], ARGV[4])
  end
end
return 0
";

pub struct RedisCounters {
    redis: BoundedRedis,
    admit: redis::Script,
    charge: redis::Script,
}

fn redis_error(what: impl std::fmt::Display) -> Error {
    Error::LimiterUnavailable(what.to_string())
}

impl RedisCounters {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, Error> {
        let redis = BoundedRedis::open(url, timeout).map_err(|e| Error::Config(format!("[limits] redis_url: {e}")))?;
        Ok(Self {
            redis,
            admit: redis::Script::new(ADMIT),
            charge: redis::Script::new(CHARGE),
        })
    }

    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.redis.call(f).await.map_err(redis_error)
    }

    pub async fn admit(&self, subjects: &[Counters]) -> Result<Option<Refusal>, Error> {
        let mut invocation = self.admit.prepare_invoke();
        for c in subjects {
            invocation.key(&c.rpm_key).key(&c.tpm_key).key(&c.budget_key);
        }
        for c in subjects {
            invocation.arg(c.rpm_limit).arg(c.tpm_limit).arg(c.budget_limit_nano);
        }
        invocation.arg(MINUTE_TTL_SECS);
        let code: i64 = self.call(|mut conn| async move { invocation.invoke_async(&mut conn).await }).await?;
        if code <= 0 {
            return Ok(None);
        }
        let index = usize::try_from(code - 1).unwrap_or(0);
        let kind = match index % 3 {
            0 => LimitKind::Requests,
            1 => LimitKind::Tokens,
            _ => LimitKind::Budget,
        };
        Ok(Some(Refusal { kind, subject: index / 3 }))
    }

    pub async fn charge(&self, subjects: &[Counters], tokens: i64, nano_usd: i64, period_ttl: u64) -> Result<(), Error> {
        let mut invocation = self.charge.prepare_invoke();
        for c in subjects {
            invocation.key(&c.tpm_key).key(&c.budget_key);
        }
        // A little past the period's end, for clock skew between replicas.
        invocation.arg(tokens).arg(nano_usd).arg(MINUTE_TTL_SECS).arg(period_ttl + 3_600);
        for c in subjects {
            invocation.arg(i32::from(c.tpm_limit >= 0)).arg(i32::from(c.budget_limit_nano >= 0));
        }
        let _: i64 = self.call(|mut conn| async move { invocation.invoke_async(&mut conn).await }).await?;
        Ok(())
    }

    pub async fn usage(&self, c: &Counters) -> Result<(i64, i64, i64), Error> {
        let keys = [c.rpm_key.clone(), c.tpm_key.clone(), c.budget_key.clone()];
        let values: Vec<Option<i64>> = self
            .call(|mut conn| async move { redis::cmd("MGET").arg(&keys).query_async(&mut conn).await })
            .await?;
        let get = |i: usize| values.get(i).copied().flatten().unwrap_or(0);
        Ok((get(0), get(1), get(2)))
    }
}
