//! Compact per-session records. What the listener keeps for every session
//! for as long as it lives, asleep or awake, is held inline in one table
//! per concern (the shelf's entries, the sessions' owners), never as small
//! allocations of its own: allocated when a session opens, among its
//! worker's much larger memory, each would pin a page of that memory once
//! the worker is freed (hibernation, `hibernate.rs`). glibc returns only
//! whole free pages, so 10,000 sleeping sessions held ~17 KB each of
//! freed memory this way, around a few hundred live bytes.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

/// A session id held inline: rmcp's ids are UUIDs, 128 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key(pub(super) u128);

impl Key {
    /// The key of a UUID session id (every id rmcp issues).
    pub(super) fn of(id: &str) -> Option<Key> {
        uuid::Uuid::parse_str(id).ok().map(|u| Key(u.as_u128()))
    }

    /// The key of any session id: a UUID's own bits, or the first 128 bits
    /// of another id's SHA-256, so that an id of another shape cannot be
    /// made to collide with a given session's.
    pub(super) fn of_any(id: &str) -> Key {
        Key::of(id).unwrap_or_else(|| {
            let digest = Sha256::digest(id.as_bytes());
            let mut bits = [0u8; 16];
            bits.copy_from_slice(&digest[..16]);
            Key(u128::from_be_bytes(bits))
        })
    }

    /// The session id a UUID key was made from.
    pub(super) fn id(self) -> String {
        uuid::Uuid::from_u128(self.0).to_string()
    }
}

/// One shared copy of each distinct value that many sessions hold alike
/// (clients of one kind send the same `initialize`; one identity opens many
/// sessions).
pub(super) struct Pool<T: ?Sized>(Mutex<HashSet<Arc<T>>>);

impl<T: ?Sized + Hash + Eq> Pool<T> {
    /// An empty pool.
    pub(super) fn new() -> Pool<T> {
        Pool(Mutex::new(HashSet::new()))
    }

    fn values(&self) -> MutexGuard<'_, HashSet<Arc<T>>> {
        // A panic elsewhere while holding the lock leaves the set usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool's copy of `value`, made from it the first time.
    pub(super) fn intern<Q>(&self, value: Q) -> Arc<T>
    where
        Q: Borrow<T> + Into<Arc<T>>,
    {
        let mut values = self.values();
        if let Some(known) = values.get(value.borrow()) {
            return known.clone();
        }
        let shared: Arc<T> = value.into();
        values.insert(shared.clone());
        shared
    }

    /// Drops a holder's share; the pool's copy goes with the last one.
    pub(super) fn release(&self, shared: Arc<T>) {
        let mut values = self.values();
        // Two owners left: the pool's and this one.
        if Arc::strong_count(&shared) <= 2 {
            values.remove(&shared);
        }
    }

    /// How many distinct values are held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.values().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_id_survives_its_inline_key() {
        let id = rmcp::transport::common::server_side_http::session_id();
        let key = Key::of(&id).expect("rmcp's ids are UUIDs");
        assert_eq!(key.id(), *id);
        assert_eq!(Key::of_any(&id), key);
        assert!(Key::of("not-a-uuid").is_none());
    }

    #[test]
    fn ids_of_other_shapes_get_distinct_keys() {
        let (a, b) = (Key::of_any("session-a"), Key::of_any("session-b"));
        assert_ne!(a, b);
        assert_eq!(a, Key::of_any("session-a"));
    }

    #[test]
    fn a_value_is_shared_until_its_last_holder_lets_go() {
        let pool: Pool<str> = Pool::new();
        let a = pool.intern("alice");
        let b = pool.intern("alice");
        assert!(Arc::ptr_eq(&a, &b));
        let c = pool.intern("carol");
        assert_eq!(pool.len(), 2);
        pool.release(a);
        assert_eq!(pool.len(), 2, "b still holds alice");
        pool.release(b);
        pool.release(c);
        assert_eq!(pool.len(), 0);
    }
}
