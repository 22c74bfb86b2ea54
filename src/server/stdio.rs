//! The gateway's MCP on its own stdin and stdout (`portcullis stdio`), with
//! what the HTTP face does for 2025-11-25 clients and rmcp cannot: a
//! legacy session's task requests renamed before rmcp reads them
//! (`tasks2025`, see `gateway::tasks::legacy`), and the answers to
//! `initialize` and `tools/list` completed with the `tasks` capability and
//! each tool's `execution` (`task_support`).
//!
//! Messages are newline-delimited JSON both ways, so each is one line:
//! rmcp is given in-process pipes, and two pumps carry lines between them
//! and the real stdio, looking at each (a byte scan; a parse only for the
//! few lines that can match).

use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream};

use super::task_support::{self, Wanted};
use crate::gateway::Gateway;
use crate::registry::Endpoint;

/// Buffer of each in-process pipe; a longer line simply takes more turns.
const PIPE: usize = 64 * 1024;

/// What the pumps learn about the session.
#[derive(Default)]
struct Seen {
    /// The protocol version the `initialize` answer negotiated.
    version: Option<String>,
    /// Requests whose answers are to be completed.
    wanted: Vec<Wanted>,
}

/// The transport for rmcp, `(reader, writer)`, with the pumps between it
/// and the process's stdin and stdout running.
pub fn stdio(gateway: &Arc<Gateway>) -> (DuplexStream, DuplexStream) {
    let (to_rmcp, rmcp_reads) = tokio::io::duplex(PIPE);
    let (rmcp_writes, from_rmcp) = tokio::io::duplex(PIPE);
    let seen = Arc::new(Mutex::new(Seen::default()));
    tokio::spawn(inbound(tokio::io::stdin(), to_rmcp, seen.clone()));
    tokio::spawn(outbound(
        from_rmcp,
        tokio::io::stdout(),
        seen,
        gateway.clone(),
    ));
    (rmcp_reads, rmcp_writes)
}

/// Client to rmcp: renames a legacy session's task requests, and notes
/// the requests whose answers `outbound` completes.
async fn inbound(input: impl AsyncRead + Unpin, mut to_rmcp: DuplexStream, seen: Arc<Mutex<Seen>>) {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let renamed = match seen.lock() {
            Ok(mut seen) => inspect_request(&line, &mut seen),
            Err(_) => None,
        };
        let out = renamed.as_deref().unwrap_or(&line);
        if to_rmcp.write_all(out).await.is_err() {
            break;
        }
        if !out.ends_with(b"\n") && to_rmcp.write_all(b"\n").await.is_err() {
            break;
        }
    }
    // rmcp sees the end of its input, as it would the end of stdin.
    let _ = to_rmcp.shutdown().await;
}

/// Notes a request whose answer is to be completed; the line renamed when
/// it is a legacy session's 2025 task request.
fn inspect_request(line: &[u8], seen: &mut Seen) -> Option<Vec<u8>> {
    let mut headers = HeaderMap::new();
    if let Some(v) = seen
        .version
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert("mcp-protocol-version", v);
    }
    if let Some(wanted) = task_support::wanted(line, &headers) {
        seen.wanted.push(wanted);
    }
    // Only a session that negotiated a version before 2026-07-28 has 2025
    // tasks; a 2026-07-28 client never sends `initialize`.
    let legacy = seen.version.as_deref().is_some_and(|v| v != "2026-07-28");
    legacy
        .then(|| crate::gateway::rewrite_legacy_task_request(line))
        .flatten()
}

/// rmcp to client: completes the answers `inbound` noted, and learns the
/// negotiated version from the `initialize` answer.
async fn outbound(
    from_rmcp: DuplexStream,
    mut output: impl AsyncWrite + Unpin,
    seen: Arc<Mutex<Seen>>,
    gateway: Arc<Gateway>,
) {
    let mut from_rmcp = BufReader::new(from_rmcp);
    let mut line = Vec::new();
    loop {
        line.clear();
        match from_rmcp.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let completed = complete(&line, &seen, &gateway).await;
        let out = completed.as_deref().unwrap_or(&line);
        if output.write_all(out).await.is_err() || output.flush().await.is_err() {
            break;
        }
    }
}

/// What `complete` reads of an answer line.
#[derive(Deserialize)]
struct Answer {
    id: Value,
    #[serde(default)]
    result: Option<AnswerResult>,
}

#[derive(Deserialize)]
struct AnswerResult {
    #[serde(rename = "protocolVersion", default)]
    protocol_version: Option<String>,
}

/// The answer line completed, when it answers a noted request.
async fn complete(line: &[u8], seen: &Mutex<Seen>, gateway: &Gateway) -> Option<Vec<u8>> {
    let wanted = {
        let mut seen = seen.lock().ok()?;
        if seen.wanted.is_empty() {
            return None;
        }
        // Only the id and the negotiated version are read here (the rest
        // of a long `tools/list` answer is skipped, not built).
        let answer: Answer = serde_json::from_slice(line).ok()?;
        let at = seen.wanted.iter().position(|w| *w.id() == answer.id)?;
        let wanted = seen.wanted.remove(at);
        if let Some(version) = answer.result.and_then(|r| r.protocol_version) {
            seen.version = Some(version);
        }
        wanted
    };
    let text = std::str::from_utf8(line).ok()?.trim_end();
    let completed =
        task_support::complete_message(text, &wanted, gateway.registry(), &Endpoint::Aggregate)
            .await?;
    Some(format!("{completed}\n").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_requests_are_renamed_only_in_a_legacy_session() {
        let get = br#"{"jsonrpc":"2.0","id":3,"method":"tasks/get","params":{"taskId":"t"}}"#;
        let mut seen = Seen::default();
        // Before `initialize` was answered (or for a 2026-07-28 client).
        assert!(inspect_request(get, &mut seen).is_none());
        seen.version = Some("2026-07-28".into());
        assert!(inspect_request(get, &mut seen).is_none());
        seen.version = Some("2025-11-25".into());
        let renamed = inspect_request(get, &mut seen).unwrap();
        let renamed: Value = serde_json::from_slice(&renamed).unwrap();
        assert_ne!(renamed["method"], "tasks/get");
        assert_eq!(renamed["params"]["taskId"], "t");
    }

    #[test]
    fn initialize_and_a_2025_tools_list_are_noted() {
        let mut seen = Seen::default();
        let init = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
        inspect_request(init, &mut seen);
        assert_eq!(seen.wanted.len(), 1);
        let list = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        // `tools/list` answers are completed for 2025-11-25 sessions only.
        seen.version = Some("2025-06-18".into());
        inspect_request(list, &mut seen);
        assert_eq!(seen.wanted.len(), 1);
        seen.version = Some("2025-11-25".into());
        inspect_request(list, &mut seen);
        assert_eq!(seen.wanted.len(), 2);
    }
}
