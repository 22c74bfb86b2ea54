//! Exposed names: prefixing, character-set repair, length capping and
//! collision resolution.
//!
//! MCP tool names (and OpenAI-style function names) allow
//! `[A-Za-z0-9_.-]` and at most 64 characters. Every exposed name is made to
//! fit; a name that has to be changed gets a short hash of its origin so that
//! it is the same on every restart and two different origins never meet.
//! Routing never splits a name on the separator: it looks the exposed name up
//! in the catalogue, so separators inside upstream or tool names are harmless.

use sha2::{Digest, Sha256};

/// Longest exposed name.
pub const MAX_NAME_LEN: usize = 64;
const HASH_LEN: usize = 8;

/// Replaces characters outside the MCP name set with `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A stable 8-hex-digit digest of an origin (upstream, original name).
pub(crate) fn origin_hash(upstream: &str, original: &str) -> String {
    let mut h = Sha256::new();
    h.update(upstream.as_bytes());
    h.update([0]);
    h.update(original.as_bytes());
    let digest = h.finalize();
    digest
        .iter()
        .take(HASH_LEN / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The name a tool or prompt from `upstream` (originally `original`, shown
/// as `local` after renames) has on an endpoint. `prefix` is `None` on
/// single-upstream endpoints.
pub fn exposed_name(
    prefix: Option<(&str, &str)>,
    upstream: &str,
    original: &str,
    local: &str,
) -> String {
    let joined = match prefix {
        Some((prefix, sep)) => format!("{prefix}{sep}{local}"),
        None => local.to_owned(),
    };
    let clean = sanitize(&joined);
    if clean == joined && clean.len() <= MAX_NAME_LEN && !clean.is_empty() {
        return clean;
    }
    with_hash(&clean, upstream, original)
}

/// `base` cut to fit, with `-{hash}` appended.
pub(crate) fn with_hash(base: &str, upstream: &str, original: &str) -> String {
    let hash = origin_hash(upstream, original);
    let keep = MAX_NAME_LEN - HASH_LEN - 1;
    // `base` is ASCII after sanitizing, so byte slicing is on char boundaries.
    let cut = &base[..base.len().min(keep)];
    format!("{cut}-{hash}")
}

/// Makes exposed names unique. Entries are `(exposed, upstream, original)`
/// in a deterministic order (upstream, then original name); a name already
/// taken is replaced by its hashed form, so the first holder keeps the plain
/// name and every later one gets a stable distinct name. Returns the names
/// that had to change, for a warning.
pub fn resolve_collisions(entries: &mut [(String, &str, &str)]) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    let mut changed = Vec::new();
    for (name, upstream, original) in entries.iter_mut() {
        if !seen.insert(name.clone()) {
            let mut candidate = with_hash(name, upstream, original);
            let mut salt = 0u32;
            while !seen.insert(candidate.clone()) {
                salt += 1;
                candidate = with_hash(name, upstream, &format!("{original}\0{salt}"));
            }
            changed.push(format!("{name} -> {candidate}"));
            *name = candidate;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(name: &str) -> bool {
        name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    }

    #[test]
    fn plain_names_are_prefixed() {
        assert_eq!(
            exposed_name(Some(("time", "__")), "time", "now", "now"),
            "time__now"
        );
        assert_eq!(exposed_name(None, "time", "now", "now"), "now");
    }

    #[test]
    fn long_names_are_shortened_stably() {
        let long = "x".repeat(80);
        let a = exposed_name(Some(("up", "__")), "up", &long, &long);
        let b = exposed_name(Some(("up", "__")), "up", &long, &long);
        assert_eq!(a, b);
        assert_eq!(a.len(), MAX_NAME_LEN);
        assert!(valid(&a));
        let other = exposed_name(
            Some(("up", "__")),
            "up",
            &format!("{long}y"),
            &format!("{long}y"),
        );
        assert_ne!(a, other, "two long names that share a prefix must differ");
    }

    #[test]
    fn bad_characters_are_repaired_with_hash() {
        let a = exposed_name(Some(("fs", "__")), "fs", "read file", "read file");
        let b = exposed_name(Some(("fs", "__")), "fs", "read/file", "read/file");
        assert!(valid(&a) && valid(&b));
        assert!(a.starts_with("fs__read_file-"));
        assert_ne!(a, b);
    }

    #[test]
    fn collisions_get_distinct_stable_names() {
        let mut entries = vec![
            ("a__b__c".to_owned(), "a", "b__c"),
            ("a__b__c".to_owned(), "a__b", "c"),
        ];
        let changed = resolve_collisions(&mut entries);
        assert_eq!(changed.len(), 1);
        assert_eq!(entries[0].0, "a__b__c");
        assert_ne!(entries[1].0, "a__b__c");
        assert!(valid(&entries[1].0));
    }
}
