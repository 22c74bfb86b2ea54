//! What a 2025-11-25 server says about tasks that rmcp does not keep: the
//! `tasks` capability of its `initialize` result and each tool's
//! `execution` object (`taskSupport`). rmcp's model types have no fields
//! for either and drop them while parsing, so the transports hand every
//! message's raw JSON to a [`TaskSupport`] first: the stdio child's stdout
//! through [`Tap`], a streamable HTTP answer's SSE events as they stream by
//! (`http.rs`) and its JSON body (to `initialize` or `tools/list`, which
//! `http.rs` posts itself for this) directly, the legacy SSE transport's
//! events directly.
//!
//! A message costs two substring searches; only one that mentions
//! `"inputSchema"` (a `tools/list` page) or `"serverInfo"` (a handshake
//! result) is parsed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, RwLock};
use std::task::{Context, Poll};

use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, ReadBuf};

use super::param_headers::ParamHeaders;

/// The longest stdio line the tap buffers; rmcp's own stdio limit, so any
/// message rmcp accepts is seen.
const MAX_LINE: usize = rmcp::transport::async_rw::DEFAULT_MAX_LINE_LENGTH;

static TOOLS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"inputSchema\""));
static HANDSHAKE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"serverInfo\""));

/// What one connection's server declared about 2025-11-25 tasks. Lives
/// with the connection, so a reconnect starts afresh; a later `tools/list`
/// page replaces the entries of the tools it lists.
#[derive(Debug, Default)]
pub(crate) struct TaskSupport {
    /// `capabilities.tasks` of the handshake result, when declared.
    capability: RwLock<Option<Value>>,
    /// Each tool's `execution` object, by the server's own tool name.
    execution: RwLock<HashMap<String, Value>>,
    /// The upstream's record of `x-mcp-header` parameters, which outlives
    /// this connection and is shared with the upstream's others.
    params: Arc<ParamHeaders>,
}

#[derive(Deserialize)]
struct Message<T> {
    result: T,
}

#[derive(Deserialize)]
struct ToolsPage {
    tools: Vec<ToolEntry>,
}

#[derive(Deserialize)]
struct ToolEntry {
    name: String,
    #[serde(default)]
    execution: Option<Value>,
}

#[derive(Deserialize)]
struct Handshake {
    #[serde(rename = "protocolVersion")]
    _version: Value,
    capabilities: Capabilities,
}

#[derive(Deserialize)]
struct Capabilities {
    #[serde(default)]
    tasks: Option<Value>,
}

impl TaskSupport {
    /// A connection's record that also feeds its upstream's `params`.
    pub(crate) fn new(params: Arc<ParamHeaders>) -> Self {
        TaskSupport {
            params,
            ..Default::default()
        }
    }

    /// The upstream's `x-mcp-header` parameters, as far as listed.
    pub(crate) fn params(&self) -> &ParamHeaders {
        &self.params
    }

    /// Reads one raw JSON-RPC message from the server.
    pub(crate) fn observe(&self, message: &[u8]) {
        if TOOLS.find(message).is_some() {
            self.tools(message);
        } else if HANDSHAKE.find(message).is_some() {
            self.handshake(message);
        }
    }

    fn tools(&self, message: &[u8]) {
        // Anything else that mentions "inputSchema" (a tool's own result)
        // is not shaped like a tools/list result and is skipped.
        let Ok(page) = serde_json::from_slice::<Message<ToolsPage>>(message) else {
            return;
        };
        let listed = page.result.tools.iter().map(|t| t.name.as_str());
        self.params.learn(message, listed);
        let Ok(mut execution) = self.execution.write() else {
            return;
        };
        for tool in page.result.tools {
            match tool.execution.filter(Value::is_object) {
                Some(e) => execution.insert(tool.name, e),
                None => execution.remove(&tool.name),
            };
        }
    }

    fn handshake(&self, message: &[u8]) {
        let Ok(handshake) = serde_json::from_slice::<Message<Handshake>>(message) else {
            return;
        };
        if let Ok(mut capability) = self.capability.write() {
            *capability = handshake.result.capabilities.tasks.filter(Value::is_object);
        }
    }

    /// The `execution` object the server listed for its tool `name`.
    pub(crate) fn execution(&self, name: &str) -> Option<Value> {
        self.execution.read().ok()?.get(name).cloned()
    }

    /// The `tasks` capability the server declared in its handshake.
    pub(crate) fn capability(&self) -> Option<Value> {
        self.capability.read().ok()?.clone()
    }
}

/// A reader over a stdio server's stdout that shows each complete line
/// (one JSON-RPC message) to a [`TaskSupport`] as rmcp reads it.
pub(crate) struct Tap<R> {
    inner: R,
    seen: Arc<TaskSupport>,
    /// The start of a line whose end has not been read yet.
    partial: Vec<u8>,
    /// The current line outgrew [`MAX_LINE`]: skip it to its end.
    skipping: bool,
}

impl<R> Tap<R> {
    /// Taps `inner`.
    pub(crate) fn new(inner: R, seen: Arc<TaskSupport>) -> Self {
        Tap {
            inner,
            seen,
            partial: Vec::new(),
            skipping: false,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(end) = memchr::memchr(b'\n', bytes) {
            let (line, rest) = bytes.split_at(end);
            if self.skipping {
                self.skipping = false;
            } else if self.partial.is_empty() {
                // The common case: a whole line in one read, never copied.
                self.seen.observe(line);
            } else {
                self.partial.extend_from_slice(line);
                self.seen.observe(&self.partial);
            }
            self.partial.clear();
            bytes = &rest[1..];
        }
        if self.skipping || bytes.is_empty() {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE {
            self.partial = Vec::new();
            self.skipping = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Tap<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.feed(&buf.filled()[before..]);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::AsyncReadExt;

    const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"research","inputSchema":{"type":"object"},"execution":{"taskSupport":"required"}},{"name":"echo","inputSchema":{"type":"object"}}]}}"#;
    const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{},"tasks":{"list":{},"requests":{"tools":{"call":{}}}}},"serverInfo":{"name":"s","version":"1"}}}"#;

    #[test]
    fn a_tools_page_and_a_handshake_are_remembered() {
        let seen = TaskSupport::default();
        seen.observe(INIT.as_bytes());
        seen.observe(LIST.as_bytes());
        assert_eq!(
            seen.execution("research"),
            Some(json!({"taskSupport": "required"}))
        );
        assert_eq!(seen.execution("echo"), None);
        assert_eq!(
            seen.capability(),
            Some(json!({"list": {}, "requests": {"tools": {"call": {}}}}))
        );
    }

    #[test]
    fn a_later_page_replaces_the_tools_it_lists() {
        let seen = TaskSupport::default();
        seen.observe(LIST.as_bytes());
        seen.observe(
            br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"research","inputSchema":{}}]}}"#,
        );
        assert_eq!(seen.execution("research"), None);
    }

    #[test]
    fn other_messages_change_nothing() {
        let seen = TaskSupport::default();
        seen.observe(LIST.as_bytes());
        // A tool's result that talks about schemas, and a handshake-like
        // answer without capabilities.
        seen.observe(br#"{"jsonrpc":"2.0","id":4,"result":{"content":[{"type":"text","text":"\"inputSchema\""}]}}"#);
        seen.observe(br#"{"jsonrpc":"2.0","id":5,"result":{"serverInfo":{}}}"#);
        seen.observe(b"not json \"inputSchema\"");
        assert!(seen.execution("research").is_some());
        assert_eq!(seen.capability(), None);
    }

    #[tokio::test]
    async fn the_tap_sees_lines_split_across_reads_and_passes_bytes_through() {
        let seen = Arc::new(TaskSupport::default());
        let stream = format!("{INIT}\n{LIST}\n");
        // Reads of 7 bytes split every line several times.
        let reader = chunked(stream.as_bytes().to_vec(), 7);
        let mut tap = Tap::new(reader, seen.clone());
        let mut out = Vec::new();
        tap.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, stream.as_bytes());
        assert!(seen.capability().is_some());
        assert!(seen.execution("research").is_some());
    }

    #[test]
    fn an_oversized_line_is_skipped_to_its_end() {
        let seen = Arc::new(TaskSupport::default());
        let mut tap = Tap::new(tokio::io::empty(), seen.clone());
        tap.feed(&vec![b'x'; MAX_LINE + 1]);
        assert!(tap.skipping && tap.partial.is_empty());
        tap.feed(b"xx\n");
        assert!(tap.partial.is_empty() && !tap.skipping);
        tap.feed(LIST.as_bytes());
        tap.feed(b"\n");
        assert!(seen.execution("research").is_some());
    }

    /// A reader that returns `data` at most `chunk` bytes at a time.
    fn chunked(data: Vec<u8>, chunk: usize) -> impl AsyncRead + Unpin {
        struct Chunks(std::collections::VecDeque<Vec<u8>>);
        impl AsyncRead for Chunks {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                if let Some(next) = self.0.pop_front() {
                    buf.put_slice(&next);
                }
                Poll::Ready(Ok(()))
            }
        }
        Chunks(data.chunks(chunk).map(<[u8]>::to_vec).collect())
    }
}
