//! [`PolicyStore`]: the policy in force, swapped atomically on reload so
//! the call path reads it without a lock.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};

use super::{PolicyError, PolicySet};
use crate::config::DefaultAction;
use crate::telemetry::Metrics;

/// Editors save in bursts (write, rename, chmod); one reload per burst.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// The current [`PolicySet`] of one directory.
pub struct PolicyStore {
    dir: PathBuf,
    default: DefaultAction,
    current: ArcSwap<PolicySet>,
}

/// Keeps a [`PolicyStore::watch`] running; dropping it stops watching.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("dir", &self.dir)
            .field("rules", &self.current.load().rule_count())
            .finish()
    }
}

impl PolicyStore {
    /// Loads `dir`; fails if the policy is invalid (the gateway must not
    /// start without the policy it was configured with).
    pub fn load(dir: PathBuf, default: DefaultAction) -> Result<Arc<PolicyStore>, PolicyError> {
        let set = PolicySet::load_dir(&dir, default)?;
        Ok(Arc::new(PolicyStore {
            dir,
            default,
            current: ArcSwap::from_pointee(set),
        }))
    }

    /// The policy in force. Lock-free; hold the `Arc` for the whole call
    /// so one call is decided by one policy even across a reload.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reloads from disk. An invalid policy leaves the previous one in
    /// force and is returned as the error.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let set = PolicySet::load_dir(&self.dir, self.default)?;
        self.current.store(Arc::new(set));
        Ok(())
    }

    /// Watches the directory and reloads (debounced) when files change,
    /// logging each outcome, counting it in
    /// `portcullis_policy_reloads_total{outcome}` and keeping
    /// `portcullis_policy_rules` current.
    pub fn watch(self: &Arc<Self>, metrics: Arc<Metrics>) -> Result<WatchGuard, PolicyError> {
        let watch_err = |source| PolicyError::Watch {
            path: self.dir.clone(),
            source,
        };
        let (tx, rx) = mpsc::channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // The receiver is gone only when the reload thread has exited.
                let _ = tx.send(event);
            })
            .map_err(watch_err)?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(watch_err)?;
        for outcome in ["success", "failure"] {
            metrics.policy_reloads.with_label_values(&[outcome]);
        }
        metrics
            .policy_rules
            .set(i64::try_from(self.current().rule_count()).unwrap_or(i64::MAX));
        let store = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || reload_loop(&rx, &store, &metrics))
            .map_err(|e| PolicyError::io(&self.dir, e))?;
        Ok(WatchGuard { _watcher: watcher })
    }
}

/// Runs until the watcher (and so the sender) is dropped or the store is.
fn reload_loop(
    rx: &mpsc::Receiver<notify::Result<notify::Event>>,
    store: &Weak<PolicyStore>,
    metrics: &Metrics,
) {
    while let Ok(event) = rx.recv() {
        if !worth_reloading(&event) {
            continue;
        }
        loop {
            match rx.recv_timeout(DEBOUNCE) {
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let Some(store) = store.upgrade() else { return };
        match store.reload() {
            Ok(()) => {
                let set = store.current();
                metrics.policy_reloads.with_label_values(&["success"]).inc();
                metrics
                    .policy_rules
                    .set(i64::try_from(set.rule_count()).unwrap_or(i64::MAX));
                tracing::info!(
                    dir = %store.dir.display(),
                    rules = set.rule_count(),
                    guards = set.guard_count(),
                    "policies reloaded"
                );
            }
            Err(e) => {
                metrics.policy_reloads.with_label_values(&["failure"]).inc();
                tracing::error!(
                    dir = %store.dir.display(),
                    error = %e,
                    "policy reload failed; the previous policy stays in force"
                );
            }
        }
    }
}

fn worth_reloading(event: &notify::Result<notify::Event>) -> bool {
    match event {
        // A watcher error (e.g. queue overflow) may have hidden a change.
        Err(_) => true,
        Ok(e) => match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const ALLOW: &str = "rules:\n  - { id: a, match: { tool: '*' }, action: allow }\n";
    const TWO: &str = "rules:\n  - { id: a, match: { tool: '*' }, action: allow }\n  - { id: b, match: { tool: x }, action: deny }\n";

    #[test]
    fn reload_swaps_valid_and_keeps_old_on_invalid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.yaml"), ALLOW).unwrap();
        let store = PolicyStore::load(dir.path().to_owned(), DefaultAction::Deny).unwrap();
        let before = store.current();
        assert_eq!(before.rule_count(), 1);
        std::fs::write(dir.path().join("p.yaml"), TWO).unwrap();
        store.reload().unwrap();
        assert_eq!(store.current().rule_count(), 2);
        // A reader holding the old set keeps it.
        assert_eq!(before.rule_count(), 1);
        std::fs::write(dir.path().join("p.yaml"), "rules: [ { id: a } ]").unwrap();
        let err = store.reload().unwrap_err();
        assert!(err.to_string().contains("p.yaml"), "{err}");
        assert_eq!(store.current().rule_count(), 2);
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn watch_reloads_on_change_and_counts_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.yaml"), ALLOW).unwrap();
        let store = PolicyStore::load(dir.path().to_owned(), DefaultAction::Deny).unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let _guard = store.watch(metrics.clone()).unwrap();
        assert_eq!(metrics.policy_rules.get(), 1);
        let count = |o: &str| metrics.policy_reloads.with_label_values(&[o]).get();

        std::fs::write(dir.path().join("p.yaml"), TWO).unwrap();
        wait_for("a successful reload", || store.current().rule_count() == 2);
        wait_for("the success metric", || count("success") >= 1);
        assert_eq!(metrics.policy_rules.get(), 2);

        std::fs::write(dir.path().join("p.yaml"), "rules: nonsense").unwrap();
        wait_for("the failure metric", || count("failure") >= 1);
        assert_eq!(store.current().rule_count(), 2);
        let text = metrics.render();
        assert!(text.contains("portcullis_policy_reloads_total{outcome=\"failure\"}"));
        assert!(text.contains("portcullis_policy_rules 2"));
    }
}
