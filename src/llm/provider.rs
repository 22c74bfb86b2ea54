//! One configured provider: its HTTP client, credentials and deadlines, and
//! one attempt at a request with the outcome classified for the router.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::time::Instant;

use super::sse::{SseEvent, SseParser};
use super::translate::error_message;
use crate::config::{ProviderConfig, ProviderKind};

/// Anthropic API version sent unless the provider's `headers` set one.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The API paths the router calls, whose URLs each provider parses once:
/// parsing a URL was a tenth of a proxied completion's instructions.
const PATHS: [&str; 4] = [
    "chat/completions",
    "embeddings",
    "messages",
    "messages/count_tokens",
];

/// Most of an error body read, for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A provider endpoint.
pub struct Provider {
    /// Config name.
    pub name: String,
    /// Wire format.
    pub kind: ProviderKind,
    base: String,
    /// [`PATHS`]' URLs under `base`, in that order; `None` where one does
    /// not parse (reqwest then reports it, as for any other path).
    endpoints: [Option<reqwest::Url>; PATHS.len()],
    headers: HeaderMap,
    client: reqwest::Client,
    first_byte: Duration,
    total: Duration,
}

/// One failed attempt, classified.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// No connection (refused, DNS, TLS, connect timeout).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A deadline passed.
    #[error("timed out waiting for the {0}")]
    Timeout(&'static str),
    /// The provider answered with an error status.
    #[error("HTTP {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
        /// The error message from the body.
        message: String,
    },
    /// The answer is not what the format allows.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The connection failed while reading the answer.
    #[error("connection failed: {0}")]
    Transport(String),
    /// This target cannot serve the request (e.g. embeddings from Anthropic,
    /// or a request that does not translate).
    #[error("{0}")]
    Unsupported(String),
}

impl AttemptError {
    /// Worth trying the same target again after a pause.
    pub fn retryable(&self) -> bool {
        match self {
            AttemptError::Status { status, .. } => {
                matches!(status, 408 | 409 | 429) || *status >= 500
            }
            AttemptError::Unsupported(_) => false,
            _ => true,
        }
    }

    /// Another target may succeed where this one failed. Request errors
    /// (400, 413, 422) would fail anywhere and go back to the client.
    pub fn falls_back(&self) -> bool {
        match self {
            AttemptError::Status { status, .. } => self.retryable() || matches!(status, 401..=404),
            _ => true,
        }
    }

    /// Counts against the target's circuit breaker.
    pub fn is_target_failure(&self) -> bool {
        self.falls_back() && !matches!(self, AttemptError::Unsupported(_))
    }

    /// Bounded label for the attempts metric.
    pub fn label(&self) -> &'static str {
        match self {
            AttemptError::Connect(_) => "connect_error",
            AttemptError::Timeout(_) => "timeout",
            AttemptError::Status { status: 429, .. } => "rate_limited",
            AttemptError::Status { status, .. } if *status >= 500 => "server_error",
            AttemptError::Status { .. } => "client_error",
            AttemptError::Malformed(_) => "malformed",
            AttemptError::Transport(_) => "transport_error",
            AttemptError::Unsupported(_) => "unsupported",
        }
    }
}

/// A successful answer: a whole JSON body, or a stream whose status was 2xx.
pub enum Reply {
    /// The complete body, checked to be JSON only by whoever reads it (an
    /// answer passed through in the client's format is never parsed whole).
    Json(Bytes),
    /// Events still to read.
    Stream(EventStream),
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A provider's SSE stream, read one event at a time under the total
/// deadline.
pub struct EventStream {
    body: ByteStream,
    parser: SseParser,
    deadline: Instant,
    ended: bool,
}

impl EventStream {
    /// The next event; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<SseEvent, AttemptError>> {
        loop {
            match self.parser.next_event() {
                Ok(Some(ev)) => return Some(Ok(ev)),
                Ok(None) => {}
                Err(e) => return Some(Err(AttemptError::Malformed(e.to_string()))),
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(self.deadline, self.body.next()).await {
                Err(_) => return Some(Err(AttemptError::Timeout("end of the stream"))),
                Ok(None) => {
                    self.ended = true;
                    // A trailing event without its blank line is complete.
                    if self.parser.has_partial() {
                        if let Err(e) = self.parser.feed(b"\n\n") {
                            return Some(Err(AttemptError::Malformed(e.to_string())));
                        }
                    }
                }
                Ok(Some(Err(e))) => return Some(Err(AttemptError::Transport(e.to_string()))),
                Ok(Some(Ok(bytes))) => {
                    if let Err(e) = self.parser.feed(&bytes) {
                        return Some(Err(AttemptError::Malformed(e.to_string())));
                    }
                }
            }
        }
    }
}

fn classify(e: &reqwest::Error, waiting_for: &'static str) -> AttemptError {
    if e.is_connect() {
        AttemptError::Connect(e.to_string())
    } else if e.is_timeout() {
        AttemptError::Timeout(waiting_for)
    } else {
        AttemptError::Transport(e.to_string())
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        return Some(Duration::from_secs_f64(secs.max(0.0)));
    }
    let when = httpdate_parse(v)?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn httpdate_parse(v: &str) -> Option<std::time::SystemTime> {
    httpdate::parse_http_date(v).ok()
}

impl Provider {
    /// Builds the provider's HTTP client from its config.
    pub fn new(name: &str, c: &ProviderConfig) -> Provider {
        let mut headers = HeaderMap::new();
        if let Some(key) = c.api_key.as_deref().filter(|k| !k.is_empty()) {
            // Validation checked the key is a valid header value.
            let (header, value) = match c.kind {
                ProviderKind::Openai => ("authorization", format!("Bearer {key}")),
                ProviderKind::Anthropic => ("x-api-key", key.to_owned()),
            };
            if let Ok(mut v) = HeaderValue::from_str(&value) {
                v.set_sensitive(true);
                headers.insert(HeaderName::from_static(header), v);
            }
        }
        if c.kind == ProviderKind::Anthropic {
            headers.insert(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(ANTHROPIC_VERSION),
            );
        }
        for (k, v) in &c.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::try_from(k.as_str()),
                HeaderValue::try_from(v.as_str()),
            ) {
                headers.insert(k, v);
            }
        }
        let client = reqwest::Client::builder()
            .connect_timeout(c.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        let mut provider = Provider {
            name: name.to_owned(),
            kind: c.kind,
            base: c.base_url.trim_end_matches('/').to_owned(),
            endpoints: Default::default(),
            headers,
            client,
            first_byte: c.first_byte_timeout.min(c.timeout),
            total: c.timeout,
        };
        provider.endpoints = PATHS.map(|path| reqwest::Url::parse(&provider.url(path)).ok());
        provider
    }

    /// The URL of an API path: `chat/completions`, `embeddings` or
    /// `messages`. OpenAI base URLs include the version (`.../v1`);
    /// Anthropic's conventionally do not.
    pub fn url(&self, path: &str) -> String {
        match self.kind {
            ProviderKind::Openai => format!("{}/{path}", self.base),
            ProviderKind::Anthropic if self.base.ends_with("/v1") => {
                format!("{}/{path}", self.base)
            }
            ProviderKind::Anthropic => format!("{}/v1/{path}", self.base),
        }
    }

    /// The first-byte deadline of an attempt started at `start`.
    pub fn first_byte_deadline(&self, start: Instant) -> Instant {
        start + self.first_byte
    }

    /// One attempt. A stream is returned once its status is known; the
    /// caller reads its first event under [`Provider::first_byte_deadline`].
    pub async fn send(
        &self,
        path: &str,
        body: &(impl serde::Serialize + ?Sized),
        stream: bool,
        trace: Option<(String, Option<String>)>,
        anthropic_beta: Option<String>,
    ) -> Result<Reply, AttemptError> {
        let start = Instant::now();
        let deadline = start + self.total;
        let parsed = PATHS.iter().position(|p| *p == path);
        let mut req = match parsed.and_then(|i| self.endpoints[i].clone()) {
            Some(url) => self.client.post(url),
            None => self.client.post(self.url(path)),
        }
        .headers(self.headers.clone())
        .json(body);
        if let Some(beta) = anthropic_beta {
            req = req.header("anthropic-beta", beta);
        }
        if let Some((parent, state)) = trace {
            req = req.header("traceparent", parent);
            if let Some(state) = state {
                req = req.header("tracestate", state);
            }
        }
        let resp = tokio::time::timeout_at(self.first_byte_deadline(start), req.send())
            .await
            .map_err(|_| AttemptError::Timeout("first byte"))?
            .map_err(|e| classify(&e, "first byte"))?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = retry_after(resp.headers());
            let body = tokio::time::timeout_at(deadline, read_limited(resp, MAX_ERROR_BODY))
                .await
                .unwrap_or_default();
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .as_ref()
                .and_then(error_message)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(500).collect());
            return Err(AttemptError::Status {
                status: status.as_u16(),
                retry_after,
                message,
            });
        }
        if stream {
            return Ok(Reply::Stream(EventStream {
                body: Box::pin(resp.bytes_stream()),
                parser: SseParser::default(),
                deadline,
                ended: false,
            }));
        }
        tokio::time::timeout_at(deadline, resp.bytes())
            .await
            .map_err(|_| AttemptError::Timeout("whole answer"))?
            .map(Reply::Json)
            .map_err(|e| classify(&e, "whole answer"))
    }
}

async fn read_limited(resp: reqwest::Response, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        out.extend_from_slice(&chunk);
        if out.len() >= max {
            out.truncate(max);
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
    }

    #[test]
    fn errors_are_classified_for_retry_and_fallback() {
        let status = |s| AttemptError::Status {
            status: s,
            retry_after: None,
            message: String::new(),
        };
        assert!(status(429).retryable() && status(503).retryable());
        assert!(!status(400).retryable() && !status(400).falls_back());
        assert!(!status(401).retryable() && status(401).falls_back());
        assert!(AttemptError::Connect(String::new()).retryable());
    }

    #[test]
    fn urls_follow_each_format() {
        let c = |kind, base: &str| ProviderConfig {
            kind,
            base_url: base.into(),
            api_key: None,
            headers: Default::default(),
            connect_timeout: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            prices: Default::default(),
        };
        let p = Provider::new("o", &c(ProviderKind::Openai, "http://h/v1/"));
        assert_eq!(p.url("chat/completions"), "http://h/v1/chat/completions");
        let p = Provider::new(
            "a",
            &c(ProviderKind::Anthropic, "https://api.anthropic.com"),
        );
        assert_eq!(p.url("messages"), "https://api.anthropic.com/v1/messages");
        // The parsed URL each request is sent to is the same.
        for (i, path) in PATHS.iter().enumerate() {
            let url = p.endpoints[i].as_ref().map(reqwest::Url::as_str);
            assert_eq!(url, Some(p.url(path).as_str()));
        }
    }
}
