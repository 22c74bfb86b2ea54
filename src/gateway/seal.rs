//! The gateway's sealing key: every opaque token the gateway hands a client
//! (a multi-round call's `requestState`, a task id) is sealed here, bound to
//! the identity it was issued to. A client can neither read nor alter one,
//! and a token issued to one identity opens for no other.

use std::time::Duration;

use rmcp::model::{RequestStateCodec, SealOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Seals and opens tokens with one per-process random key (tokens do not
/// survive a restart; neither does the state they name).
pub(super) struct Sealer {
    /// `None` when the OS gave no randomness: every token is then refused
    /// rather than sealed with a guessable key.
    codec: Option<RequestStateCodec>,
}

/// Why a token was refused. Deliberately vague towards the client: a
/// forged token and one issued to someone else look the same.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Refused(String);

impl Sealer {
    /// A sealer with a fresh random key.
    pub(super) fn new() -> Sealer {
        let mut key = [0u8; 32];
        let codec = match getrandom::fill(&mut key) {
            Ok(()) => Some(RequestStateCodec::new_unchecked(key.to_vec())),
            Err(e) => {
                tracing::error!(error = %e, "no OS randomness; sealed tokens will be refused");
                None
            }
        };
        Sealer { codec }
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
        self.codec()?
            .seal_json_with(value, &options)
            .map_err(|e| Refused(e.to_string()))
    }

    /// Opens a token sealed for `subject`; refuses one that was altered,
    /// expired, or sealed for another subject.
    pub(super) fn open<T: DeserializeOwned>(
        &self,
        token: &str,
        subject: &str,
    ) -> Result<T, Refused> {
        self.codec()?
            .open_json_with(token, subject.as_bytes())
            .map_err(|e| Refused(e.to_string()))
    }
}
