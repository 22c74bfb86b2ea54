//! The gateway's MCP on its own stdin and stdout (`portcullis stdio`), with
//! what the HTTP face does for 2025-11-25 clients and rmcp cannot: a
//! legacy session's task requests renamed before rmcp reads them
//! (`tasks2025`, see `gateway::tasks::legacy`), and the answers to
//! `initialize` and `tools/list` completed with the `tasks` capability and
//! each tool's `execution` (`task_support`).
//!
//! Likewise for `notifications/tasks`: a listen request is settled as on
//! HTTP (`listen::settle`: refused, -32021, without the tasks extension, or
//! its accepted ids put in its `_meta`), and its acknowledgement completed
//! on its way out.
//!
//! Messages are newline-delimited JSON both ways, so each is one line:
//! rmcp is given in-process pipes, and two pumps carry lines between them
//! and the real stdio, looking at each (a byte scan; a parse only for the
//! few lines that can match). Both pumps write whole lines to stdout under
//! one lock, so a refusal the inbound pump answers itself never splits a
//! line of rmcp's.

use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderValue};
use memchr::memmem;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream,
};

use super::listen::{self, Settled};
use super::task_support::{self, Wanted};
use crate::gateway::Gateway;
use crate::registry::Endpoint;

/// The process's stdout, shared by both pumps; each writes whole lines.
type Output = Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>>;

/// Buffer of each in-process pipe; a longer line simply takes more turns.
const PIPE: usize = 64 * 1024;

/// What the pumps learn about the session.
#[derive(Default)]
struct Seen {
    /// The protocol version the `initialize` answer negotiated.
    version: Option<String>,
    /// Requests whose answers are to be completed.
    wanted: Vec<Wanted>,
    /// Listen requests whose acknowledgement is to list these task ids:
    /// `(request id, ids)`.
    listens: Vec<(Value, Value)>,
}

/// The transport for rmcp, `(reader, writer)`, with the pumps between it
/// and the process's stdin and stdout running.
pub fn stdio(gateway: &Arc<Gateway>) -> (DuplexStream, DuplexStream) {
    let (to_rmcp, rmcp_reads) = tokio::io::duplex(PIPE);
    let (rmcp_writes, from_rmcp) = tokio::io::duplex(PIPE);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let output: Output = Arc::new(tokio::sync::Mutex::new(Box::new(tokio::io::stdout())));
    tokio::spawn(inbound(
        tokio::io::stdin(),
        to_rmcp,
        seen.clone(),
        gateway.clone(),
        output.clone(),
    ));
    tokio::spawn(outbound(from_rmcp, output, seen, gateway.clone()));
    (rmcp_reads, rmcp_writes)
}

/// Client to rmcp: renames a legacy session's task requests, settles a
/// listen request's task ids, and notes the requests whose answers
/// `outbound` completes.
async fn inbound(
    input: impl AsyncRead + Unpin,
    mut to_rmcp: DuplexStream,
    seen: Arc<Mutex<Seen>>,
    gateway: Arc<Gateway>,
    output: Output,
) {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    while next_line(&mut input, &mut line).await {
        let rewritten = match listen_request(&line, &gateway) {
            Some(Settled::Refused(refusal)) => Err(refusal.to_string().into_bytes()),
            Some(Settled::Forward { body, acknowledge }) => {
                if let (Some(noted), Ok(mut seen)) = (acknowledge, seen.lock()) {
                    seen.listens.push(noted);
                }
                Ok(Some(body))
            }
            None => Ok(seen
                .lock()
                .ok()
                .and_then(|mut seen| inspect_request(&line, &mut seen))),
        };
        let out = match &rewritten {
            Ok(rewritten) => rewritten.as_deref().unwrap_or(&line),
            Err(refusal) => {
                if write_line(&output, refusal).await.is_err() {
                    break;
                }
                continue;
            }
        };
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

/// Reads the next line into `line`; false at the end of the input or on
/// an error.
async fn next_line(reader: &mut (impl AsyncBufRead + Unpin), line: &mut Vec<u8>) -> bool {
    line.clear();
    matches!(reader.read_until(b'\n', line).await, Ok(n) if n > 0)
}

/// Writes one line to stdout, whole.
async fn write_line(output: &Output, line: &[u8]) -> std::io::Result<()> {
    let mut out = output.lock().await;
    out.write_all(line).await?;
    if !line.ends_with(b"\n") {
        out.write_all(b"\n").await?;
    }
    out.flush().await
}

/// A `subscriptions/listen` line as [`listen::settle`] settles it for the
/// stdio identity; `None` for any other line (one byte scan).
fn listen_request(line: &[u8], gw: &Gateway) -> Option<Settled> {
    memmem::find(line, b"subscriptions/listen")?;
    listen::settle(line, gw, gw.stdio_identity(), &Endpoint::Aggregate)
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

/// rmcp to client: completes the answers `inbound` noted and the
/// acknowledgements of listen requests it settled, and learns the
/// negotiated version from the `initialize` answer.
async fn outbound(
    from_rmcp: DuplexStream,
    output: Output,
    seen: Arc<Mutex<Seen>>,
    gateway: Arc<Gateway>,
) {
    let mut from_rmcp = BufReader::new(from_rmcp);
    let mut line = Vec::new();
    while next_line(&mut from_rmcp, &mut line).await {
        let completed = match acknowledgement(&line, &seen) {
            Some(acknowledged) => Some(acknowledged),
            None => complete(&line, &seen, &gateway).await,
        };
        let out = completed.as_deref().unwrap_or(&line);
        if write_line(&output, out).await.is_err() {
            break;
        }
    }
}

/// The acknowledgement line of a listen request `inbound` settled, with
/// its task ids.
fn acknowledgement(line: &[u8], seen: &Mutex<Seen>) -> Option<Vec<u8>> {
    memmem::find(line, b"notifications/subscriptions/acknowledged")?;
    let mut seen = seen.lock().ok()?;
    if seen.listens.is_empty() {
        return None;
    }
    let mut message: Value = serde_json::from_slice(line).ok()?;
    let at = seen
        .listens
        .iter()
        .position(|(id, ids)| listen::acknowledge_message(&mut message, ids, Some(id)))?;
    seen.listens.remove(at);
    let mut out = serde_json::to_vec(&message).ok()?;
    out.push(b'\n');
    Some(out)
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

    #[test]
    fn only_the_settled_listens_acknowledgement_gets_its_task_ids() {
        let seen = Mutex::new(Seen {
            listens: vec![(Value::from(2), serde_json::json!(["t-1"]))],
            ..Seen::default()
        });
        let ack = |id: u32| {
            format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{{"_meta":{{"io.modelcontextprotocol/subscriptionId":{id}}},"notifications":{{}}}}}}"#
            )
        };
        assert!(acknowledgement(ack(3).as_bytes(), &seen).is_none());
        let done = acknowledgement(ack(2).as_bytes(), &seen).unwrap();
        let done: Value = serde_json::from_slice(&done).unwrap();
        assert_eq!(
            done["params"]["notifications"]["taskIds"],
            serde_json::json!(["t-1"])
        );
        // Settled once: a second acknowledgement of that id is not touched.
        assert!(acknowledgement(ack(2).as_bytes(), &seen).is_none());
    }
}
