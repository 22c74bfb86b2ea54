//! The audit log: one JSON line per policy decision or guardrail finding,
//! appended to a file or written to stdout/stderr.
//!
//! Lines are handed to a dedicated writer thread so the call path never
//! waits on disk. A record holds names, ids, actions and JSON paths, never
//! argument or result values: secrets and PII stay out of every log.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

use serde::Serialize;

/// Where audit lines go.
pub enum AuditSink<'a> {
    /// Append to this file (created if missing).
    File(&'a Path),
    /// The process's standard output.
    Stdout,
    /// The process's standard error (stdio mode, whose stdout carries MCP).
    Stderr,
}

/// One detector finding, as audited: where, never what.
#[derive(Debug, Clone, Serialize)]
pub struct AuditHit {
    /// The guard rule (or `pinning`, `definition-scan`) that fired.
    pub guard: String,
    /// Detector name, e.g. `secret.github_token`.
    pub detector: String,
    /// JSON pointer of the string it was found in.
    pub path: String,
    /// `arguments`, `results` or `definition`.
    pub direction: &'static str,
    /// `block`, `redact` or `flag`.
    pub action: &'static str,
}

/// The logical call a record belongs to. A multi round-trip call (a
/// 2026-07-28 client retrying with `inputResponses`, or a legacy client
/// answering an upstream's input requests) spans several requests, each
/// with its own trace id; every round's record carries the same `call_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CallLink {
    /// Minted when the call's first round is decided.
    pub call_id: String,
    /// 1 for the first round, then one more per round of input.
    pub round: u32,
}

impl CallLink {
    /// The same call's next round.
    pub fn next(&self) -> CallLink {
        CallLink {
            call_id: self.call_id.clone(),
            round: self.round.saturating_add(1),
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// RFC 3339 time.
    pub time: String,
    /// Kind of event: `decision`, `guard`, `pin`, `definition`, `round`.
    pub event: &'static str,
    /// Who called.
    pub identity: String,
    /// Their groups.
    pub groups: Vec<String>,
    /// Downstream session number (absent for events outside a session).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    /// Trace id of the call, to join with traces and access logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// MCP method.
    pub method: &'static str,
    /// Upstream.
    pub upstream: String,
    /// Tool or prompt name as the upstream knows it, or resource URI.
    pub target: String,
    /// Deciding rule id; `default` when none matched.
    pub rule: String,
    /// `allow`, `deny`, `approve`, `approved`, `declined`, `block`, `redact`, `flag`.
    pub action: String,
    /// `enforce`, or `audit` for an audit-only (dry-run) rule.
    pub mode: &'static str,
    /// Detector hits.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hits: Vec<AuditHit>,
    /// The logical call and round, for `tools/call`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub link: Option<CallLink>,
}

/// Handle to the audit writer thread.
pub struct AuditLog {
    tx: mpsc::Sender<String>,
}

impl AuditLog {
    /// Opens the sink and starts the writer thread.
    pub fn open(sink: AuditSink<'_>) -> std::io::Result<AuditLog> {
        let mut out: Box<dyn Write + Send> = match sink {
            AuditSink::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            AuditSink::Stdout => Box::new(std::io::stdout()),
            AuditSink::Stderr => Box::new(std::io::stderr()),
        };
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || {
                for line in rx {
                    // One write per line, flushed: a reader tailing the file
                    // sees whole records, and a crash loses at most one.
                    if out
                        .write_all(line.as_bytes())
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        eprintln!("portcullis: audit log write failed");
                    }
                }
            })?;
        Ok(AuditLog { tx })
    }

    /// Queues a record.
    pub fn write(&self, record: &AuditRecord) {
        match serde_json::to_string(record) {
            Ok(mut line) => {
                line.push('\n');
                let _ = self.tx.send(line);
            }
            Err(e) => tracing::error!(error = %e, "audit record not serialisable"),
        }
    }
}

/// The current time in RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
