//! In-process counters: one mutex over a map, enough for a single gateway process.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Counters, LimitKind, Refusal};

/// Counters above this many entries trigger a sweep of the ones from past windows.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Default)]
pub struct LocalCounters {
    counts: Mutex<HashMap<String, i64>>,
}

impl LocalCounters {
    /// Refuses when any limit is reached; otherwise bumps every rpm counter. All or nothing,
    /// so a request refused by its tenant's limit does not use up its key's.
    pub fn admit(&self, subjects: &[Counters]) -> Option<Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.len() > SWEEP_ABOVE {
            sweep(&mut counts, subjects);
        }
        let get = |counts: &HashMap<String, i64>, key: &str| counts.get(key).copied().unwrap_or(0);
        for (i, c) in subjects.iter().enumerate() {
            for (kind, key, limit) in [
                (LimitKind::Requests, &c.rpm_key, c.rpm_limit),
                (LimitKind::Tokens, &c.tpm_key, c.tpm_limit),
                (LimitKind::Budget, &c.budget_key, c.budget_limit_nano),
            ] {
                if limit >= 0 && get(&counts, key) >= limit {
                    return Some(Refusal { kind, subject: i });
                }
            }
        }
        for c in subjects.iter().filter(|c| c.rpm_limit >= 0) {
            *counts.entry(c.rpm_key.clone()).or_insert(0) += 1;
        }
        None
    }

    pub fn charge(&self, subjects: &[Counters], tokens: i64, nano_usd: i64) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for c in subjects {
            if c.tpm_limit >= 0 && tokens > 0 {
                let v = counts.entry(c.tpm_key.clone()).or_insert(0);
                *v = v.saturating_add(tokens);
            }
            if c.budget_limit_nano >= 0 && nano_usd > 0 {
                let v = counts.entry(c.budget_key.clone()).or_insert(0);
                *v = v.saturating_add(nano_usd);
            }
        }
    }

    pub fn usage(&self, c: &Counters) -> (i64, i64, i64) {
        let counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let get = |key: &str| counts.get(key).copied().unwrap_or(0);
        (get(&c.rpm_key), get(&c.tpm_key), get(&c.budget_key))
    }
}

/// Drops counters of past windows: a key ends with its window id, and the current request's
/// counters name the current ones.
fn sweep(counts: &mut HashMap<String, i64>, current: &[Counters]) {
    let Some(c) = current.first() else { return };
    let window = |key: &str| key.rsplit(':').next().map(str::to_owned).unwrap_or_default();
    let minute = window(&c.rpm_key);
    let period = window(&c.budget_key);
    counts.retain(|key, _| {
        let w = window(key);
        if key.contains(":usd:") { w == period } else { w == minute }
    });
}
