//! Concurrency caps: at most `max` calls in flight per key, each waiting at
//! most `wait` for a slot. Counted per replica (a slot is held for the
//! whole call, which a shared store could only approximate with leases).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::scope::Scope;
use super::Refused;
use crate::config::ConcurrencyRule;

/// Smallest `retry_after` hint for a concurrency refusal, so a client that
/// honours it does not spin.
const MIN_RETRY: Duration = Duration::from_millis(100);

/// One configured cap.
pub(super) struct Cap {
    pub(super) id: Arc<str>,
    pub(super) scope: Scope,
    max: u32,
    wait: Duration,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: IntGauge,
}

/// A held slot; the slot frees when this drops.
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    in_flight: IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

impl Cap {
    pub(super) fn new(rule: &ConcurrencyRule, in_flight: IntGauge) -> Cap {
        Cap {
            id: rule.id.as_str().into(),
            scope: Scope::new(&rule.key, rule.upstream.as_deref(), rule.tool.as_deref()),
            max: rule.max.max(1),
            wait: rule.wait,
            slots: Mutex::new(HashMap::new()),
            in_flight,
        }
    }

    /// Takes a slot for `key`, waiting at most the cap's `wait`.
    pub(super) async fn acquire(&self, key: String) -> Result<Slot, Refused> {
        let semaphore = {
            let mut slots = match self.slots.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            slots
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(self.max as usize)))
                .clone()
        };
        let permit = match semaphore.clone().try_acquire_owned() {
            Ok(p) => Ok(p),
            Err(_) if self.wait.is_zero() => Err(()),
            Err(_) => tokio::time::timeout(self.wait, semaphore.acquire_owned())
                .await
                .map_err(drop)
                .and_then(|r| r.map_err(drop)),
        };
        match permit {
            Ok(permit) => {
                self.in_flight.inc();
                Ok(Slot {
                    _permit: permit,
                    in_flight: self.in_flight.clone(),
                })
            }
            Err(()) => Err(Refused::Concurrency {
                limit: self.id.clone(),
                waited: self.wait,
                retry_after: self.wait.max(MIN_RETRY),
            }),
        }
    }

    /// Drops idle keys: those no call holds or waits for. A caller clones
    /// the semaphore under the same lock, and a permit holds a clone, so an
    /// entry with no other reference is idle.
    pub(super) fn retain_busy(&self) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(max: u32, wait_ms: u64) -> Cap {
        let rule = ConcurrencyRule {
            id: "c".to_owned(),
            key: Vec::new(),
            upstream: None,
            tool: None,
            max,
            wait: Duration::from_millis(wait_ms),
        };
        Cap::new(&rule, IntGauge::new("g", "g").unwrap())
    }

    #[tokio::test]
    async fn refuses_beyond_max_after_the_wait() {
        let cap = cap(2, 50);
        let a = cap.acquire("k".into()).await.unwrap();
        let _b = cap.acquire("k".into()).await.unwrap();
        assert_eq!(cap.in_flight.get(), 2);
        let start = std::time::Instant::now();
        let refused = cap.acquire("k".into()).await.err().unwrap();
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(50),
            "waited the bound: {waited:?}"
        );
        assert!(waited < Duration::from_secs(5), "and no longer: {waited:?}");
        assert_eq!(refused.limit(), "c");
        assert!(
            cap.acquire("other".into()).await.is_ok(),
            "keys are separate"
        );
        drop(a);
        assert_eq!(cap.in_flight.get(), 1);
        assert!(
            cap.acquire("k".into()).await.is_ok(),
            "a freed slot is reused"
        );
    }

    #[tokio::test]
    async fn a_waiter_gets_a_slot_freed_within_the_wait() {
        let cap = Arc::new(cap(1, 10_000));
        let held = cap.acquire("k".into()).await.unwrap();
        let waiter = tokio::spawn({
            let cap = cap.clone();
            async move { cap.acquire("k".into()).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "waits while the slot is held");
        drop(held);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn zero_wait_refuses_at_once_and_idle_keys_are_dropped() {
        let cap = cap(1, 0);
        let held = cap.acquire("k".into()).await.unwrap();
        assert!(cap.acquire("k".into()).await.is_err());
        drop(cap.acquire("j".into()).await.unwrap());
        cap.retain_busy();
        assert_eq!(cap.keys(), 1, "only the held key stays");
        drop(held);
        cap.retain_busy();
        assert_eq!(cap.keys(), 0);
    }
}
