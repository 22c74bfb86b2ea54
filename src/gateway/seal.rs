//! The gateway's sealing key: every opaque token the gateway hands a client
//! (a multi-round call's `requestState`, a task id) is sealed here, bound to
//! the identity it was issued to. A client can neither read nor alter one,
//! and a token issued to one identity opens for no other.
//!
//! rmcp's `RequestStateCodec` gives integrity only (its payload is readable
//! base64), so the payload is encrypted first (ChaCha20 with a random
//! nonce per token, its own key) and the codec's HMAC covers the ciphertext:
//! a task id must not show the upstream's own id, nor a `requestState` the
//! upstream's state.

use std::time::Duration;

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use rmcp::model::{RequestStateCodec, SealOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Seals and opens tokens. Its keys come from the configured secrets
/// (`tokens.secrets`: replicas sharing them open each other's tokens, and
/// tokens survive a restart), or are random per process.
pub(super) struct Sealer {
    /// The first seals; every one opens. Empty when the OS gave no
    /// randomness: every token is then refused rather than sealed with a
    /// guessable key.
    keys: Vec<Key>,
}

/// One sealing key: the codec's MAC key and the payload encryption key,
/// independent of each other.
struct Key {
    codec: RequestStateCodec,
    cipher_key: [u8; 32],
}

/// Bytes of the random nonce in front of each encrypted payload.
const NONCE_LEN: usize = 12;

/// Why a token was refused. Deliberately vague towards the client: a
/// forged token and one issued to someone else look the same.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Refused(String);

impl Sealer {
    /// A sealer with a fresh random key.
    pub(super) fn new() -> Sealer {
        let mut mac_key = [0u8; 32];
        let mut cipher_key = [0u8; 32];
        let keys =
            match getrandom::fill(&mut mac_key).and_then(|()| getrandom::fill(&mut cipher_key)) {
                Ok(()) => vec![Key {
                    codec: RequestStateCodec::new_unchecked(mac_key.to_vec()),
                    cipher_key,
                }],
                Err(e) => {
                    tracing::error!(error = %e, "no OS randomness; sealed tokens will be refused");
                    Vec::new()
                }
            };
        Sealer { keys }
    }

    /// A sealer keyed from `secrets` (the first seals), for tokens of one
    /// `purpose` only: a token sealed for another purpose never opens here,
    /// even under the same secret. Random when `secrets` is empty.
    pub(super) fn configured(secrets: &[String], purpose: &str) -> Sealer {
        if secrets.is_empty() {
            return Sealer::new();
        }
        let keys = secrets
            .iter()
            .map(|secret| {
                // HKDF-SHA256: two independent keys per secret and purpose.
                let hk =
                    hkdf::Hkdf::<sha2::Sha256>::new(Some(b"portcullis-seal-v1"), secret.as_bytes());
                let mut mac_key = [0u8; 32];
                let mut cipher_key = [0u8; 32];
                // 32 bytes is far below HKDF-SHA256's limit (8160): these
                // cannot fail.
                let _ = hk.expand_multi_info(&[purpose.as_bytes(), b"/mac"], &mut mac_key);
                let _ = hk.expand_multi_info(&[purpose.as_bytes(), b"/cipher"], &mut cipher_key);
                Key {
                    codec: RequestStateCodec::new_unchecked(mac_key.to_vec()),
                    cipher_key,
                }
            })
            .collect();
        Sealer { keys }
    }

    /// `nonce || ChaCha20(plaintext)`.
    fn encrypt(key: &Key, plaintext: &[u8]) -> Result<Vec<u8>, Refused> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| Refused(format!("no nonce: {e}")))?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        ChaCha20::new(&key.cipher_key.into(), &nonce.into()).apply_keystream(&mut out[NONCE_LEN..]);
        Ok(out)
    }

    fn decrypt(key: &Key, mut sealed: Vec<u8>) -> Result<Vec<u8>, Refused> {
        if sealed.len() < NONCE_LEN {
            return Err(Refused("sealed payload too short".into()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        ChaCha20::new(&key.cipher_key.into(), &nonce.into())
            .apply_keystream(&mut sealed[NONCE_LEN..]);
        sealed.drain(..NONCE_LEN);
        Ok(sealed)
    }

    fn sealing_key(&self) -> Result<&Key, Refused> {
        self.keys
            .first()
            .ok_or_else(|| Refused("the gateway has no sealing key".into()))
    }

    /// Seals `value` for `subject`, valid for `ttl` (or forever).
    pub(super) fn seal<T: Serialize>(
        &self,
        value: &T,
        subject: &str,
        ttl: Option<Duration>,
    ) -> Result<String, Refused> {
        let mut options = SealOptions::new().associated_data(subject.as_bytes());
        if let Some(ttl) = ttl {
            options = options.ttl(ttl);
        }
        let json = serde_json::to_vec(value).map_err(|e| Refused(e.to_string()))?;
        let key = self.sealing_key()?;
        let encrypted = Sealer::encrypt(key, &json)?;
        Ok(key.codec.seal_with(&encrypted, &options))
    }

    /// Opens a token sealed for `subject`; refuses one that was altered,
    /// expired, or sealed for another subject.
    pub(super) fn open<T: DeserializeOwned>(
        &self,
        token: &str,
        subject: &str,
    ) -> Result<T, Refused> {
        let mut refused = Refused("the gateway has no sealing key".into());
        for key in &self.keys {
            match key.codec.open_with(token, subject.as_bytes()) {
                Ok(encrypted) => {
                    let json = Sealer::decrypt(key, encrypted)?;
                    return serde_json::from_slice(&json).map_err(|e| Refused(e.to_string()));
                }
                Err(e) => refused = Refused(e.to_string()),
            }
        }
        Err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_does_not_show_its_payload_and_opens_only_unaltered_for_its_subject() {
        let sealer = Sealer::new();
        let token = sealer.seal(&"upstream-secret-id", "alice", None).unwrap();
        // What a client can read of it (the codec's payload) is ciphertext.
        let readable = sealer.keys[0].codec.open_with(&token, b"alice").unwrap();
        assert!(!String::from_utf8_lossy(&readable).contains("upstream-secret-id"));
        assert!(!token.contains("upstream-secret-id"));
        let opened: String = sealer.open(&token, "alice").unwrap();
        assert_eq!(opened, "upstream-secret-id");
        assert!(sealer.open::<String>(&token, "bob").is_err());
        // Two seals of one value differ (fresh nonce), and both open.
        let again = sealer.seal(&"upstream-secret-id", "alice", None).unwrap();
        assert_ne!(token, again);
        assert!(sealer.open::<String>(&again, "alice").is_ok());
    }

    #[test]
    fn configured_secrets_open_across_sealers_rotate_and_separate_purposes() {
        let old = "an-old-secret-of-at-least-32-bytes!!".to_owned();
        let new = "a-new-secret-of-at-least-32-bytes!!!".to_owned();
        let replica_a = Sealer::configured(std::slice::from_ref(&old), "task");
        let replica_b = Sealer::configured(std::slice::from_ref(&old), "task");
        let token = replica_a.seal(&"t-1", "alice", None).unwrap();
        // Another process with the same secret opens it (a replica, or
        // this one after a restart).
        assert_eq!(replica_b.open::<String>(&token, "alice").unwrap(), "t-1");
        assert!(replica_b.open::<String>(&token, "bob").is_err());
        // Rotation: the new secret seals, the old one still opens.
        let rotated = Sealer::configured(&[new.clone(), old.clone()], "task");
        assert_eq!(rotated.open::<String>(&token, "alice").unwrap(), "t-1");
        let fresh = rotated.seal(&"t-2", "alice", None).unwrap();
        assert!(replica_a.open::<String>(&fresh, "alice").is_err());
        assert!(Sealer::configured(&[new], "task")
            .open::<String>(&fresh, "alice")
            .is_ok());
        // A token of one purpose never opens as another's, same secret.
        assert!(Sealer::configured(&[old], "state")
            .open::<String>(&token, "alice")
            .is_err());
        // Without secrets each sealer is its own.
        assert!(Sealer::new().open::<String>(&token, "alice").is_err());
    }
}
