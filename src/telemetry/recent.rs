//! The most recent calls, for the admin view.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// One finished call. Holds no arguments or results: the admin view must
/// not become a way to read what passed through.
#[derive(Debug, Clone, Serialize)]
pub struct RecentCall {
    /// When it finished (RFC 3339).
    pub time: String,
    /// MCP method.
    pub method: &'static str,
    /// Upstream, if resolved.
    pub upstream: Option<String>,
    /// The upstream's tool, prompt or resource name, if resolved.
    pub target: Option<String>,
    /// Outcome label, as in the metrics.
    pub outcome: &'static str,
    /// Duration in milliseconds.
    pub duration_ms: f64,
    /// Downstream session id.
    pub session: u64,
}

/// A fixed-size ring of recent calls.
pub struct RecentCalls {
    capacity: usize,
    calls: Mutex<VecDeque<RecentCall>>,
}

impl RecentCalls {
    /// A ring holding at most `capacity` calls.
    pub fn new(capacity: usize) -> RecentCalls {
        RecentCalls {
            capacity,
            calls: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
        }
    }

    /// Records a call, dropping the oldest when full.
    pub fn push(&self, call: RecentCall) {
        if self.capacity == 0 {
            return;
        }
        if let Ok(mut calls) = self.calls.lock() {
            if calls.len() == self.capacity {
                calls.pop_front();
            }
            calls.push_back(call);
        }
    }

    /// Newest first.
    pub fn snapshot(&self) -> Vec<RecentCall> {
        self.calls
            .lock()
            .map(|c| c.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(n: u64) -> RecentCall {
        RecentCall {
            time: String::new(),
            method: "tools/call",
            upstream: None,
            target: None,
            outcome: "ok",
            duration_ms: 0.0,
            session: n,
        }
    }

    #[test]
    fn keeps_the_newest_first_and_bounded() {
        let ring = RecentCalls::new(2);
        for n in 0..3 {
            ring.push(call(n));
        }
        let sessions: Vec<u64> = ring.snapshot().iter().map(|c| c.session).collect();
        assert_eq!(sessions, vec![2, 1]);
    }
}
