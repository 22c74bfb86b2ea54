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

/// Seals and opens tokens with one per-process random key (tokens do not
/// survive a restart; neither does the state they name).
pub(super) struct Sealer {
    /// `None` when the OS gave no randomness: every token is then refused
    /// rather than sealed with a guessable key.
    codec: Option<RequestStateCodec>,
    /// The payload encryption key (independent of the codec's MAC key).
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
        let mut key = [0u8; 32];
        let mut cipher_key = [0u8; 32];
        let codec = match getrandom::fill(&mut key).and_then(|()| getrandom::fill(&mut cipher_key))
        {
            Ok(()) => Some(RequestStateCodec::new_unchecked(key.to_vec())),
            Err(e) => {
                tracing::error!(error = %e, "no OS randomness; sealed tokens will be refused");
                None
            }
        };
        Sealer { codec, cipher_key }
    }

    /// `nonce || ChaCha20(plaintext)`.
    fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, Refused> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| Refused(format!("no nonce: {e}")))?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        ChaCha20::new(&self.cipher_key.into(), &nonce.into())
            .apply_keystream(&mut out[NONCE_LEN..]);
        Ok(out)
    }

    fn decrypt(&self, mut sealed: Vec<u8>) -> Result<Vec<u8>, Refused> {
        if sealed.len() < NONCE_LEN {
            return Err(Refused("sealed payload too short".into()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        ChaCha20::new(&self.cipher_key.into(), &nonce.into())
            .apply_keystream(&mut sealed[NONCE_LEN..]);
        sealed.drain(..NONCE_LEN);
        Ok(sealed)
    }

    fn codec(&self) -> Result<&RequestStateCodec, Refused> {
        self.codec
            .as_ref()
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
        let encrypted = self.encrypt(&json)?;
        Ok(self.codec()?.seal_with(&encrypted, &options))
    }

    /// Opens a token sealed for `subject`; refuses one that was altered,
    /// expired, or sealed for another subject.
    pub(super) fn open<T: DeserializeOwned>(
        &self,
        token: &str,
        subject: &str,
    ) -> Result<T, Refused> {
        let encrypted = self
            .codec()?
            .open_with(token, subject.as_bytes())
            .map_err(|e| Refused(e.to_string()))?;
        let json = self.decrypt(encrypted)?;
        serde_json::from_slice(&json).map_err(|e| Refused(e.to_string()))
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
        let readable = sealer.codec().unwrap().open_with(&token, b"alice").unwrap();
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
}
