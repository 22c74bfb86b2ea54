//! Org-wide tool policy: who may call which tool with which arguments, and
//! what content may pass in either direction.
//!
//! The module is a library of pure decisions; `gateway` asks and enforces.
//! A [`PolicySet`] is compiled from the YAML files in the policies
//! directory ([`file`] is their shape, [`matcher`] and [`args`] the compiled
//! conditions); [`PolicySet::decide`] answers allow, deny or approve for one
//! call, [`PolicySet::visible`] whether a tool belongs in a caller's lists,
//! and [`PolicySet::guard`] runs the content [`detect`]ors over arguments or
//! results, redacting in place. [`PolicyStore`] holds the current set behind
//! an `ArcSwap` and reloads it when the files change. [`scan_definition`]
//! looks for poisoned tool definitions, [`pin`] hashes them for the lock
//! file, and [`testrun`] runs table-driven policy tests.
//!
//! See `docs/policy.md` for the file format and how rules combine.

mod args;
mod detect;
mod error;
mod file;
mod guard;
mod matcher;
pub mod pin;
mod poison;
mod set;
mod store;
pub mod testrun;

use serde::Serialize;

pub use error::PolicyError;
pub use poison::{scan_definition, Finding};
pub use set::PolicySet;
pub use store::{PolicyStore, WatchGuard};

/// What kind of thing a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A tool (`tools/list`, `tools/call`).
    Tool,
    /// A resource (`resources/list`, `resources/read`).
    Resource,
    /// A prompt (`prompts/list`, `prompts/get`).
    Prompt,
    /// A model alias (`/v1/*`, and sampling served by the model router).
    Model,
}

impl Kind {
    /// The lower-case name used in logs and audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Resource => "resource",
            Kind::Prompt => "prompt",
            Kind::Model => "model",
        }
    }
}

/// The thing a rule is asked about: one tool, resource or prompt of one
/// upstream, as the caller sees it and as the upstream names it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Tool, resource or prompt.
    pub kind: Kind,
    /// The upstream that owns it.
    pub upstream: &'a str,
    /// The upstream's own tool or prompt name, or the resource URI.
    pub name: &'a str,
    /// The name as listed on the endpoint the caller uses, e.g.
    /// `fs__read_file` (the URI for resources).
    pub exposed: &'a str,
    /// The tool's annotations, if it has any (tools only).
    pub annotations: Option<&'a rmcp::model::ToolAnnotations>,
}

/// An enforced decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the call through.
    Allow,
    /// Refuse it.
    Deny,
    /// Ask the human through the calling client first; no answer is a deny.
    Approve,
}

impl Action {
    /// The lower-case name used in files, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Approve => "approve",
        }
    }

    /// Precedence when several rules match: deny > approve > allow.
    fn strength(self) -> u8 {
        match self {
            Action::Allow => 0,
            Action::Approve => 1,
            Action::Deny => 2,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the gateway must do.
    pub action: Action,
    /// The id of the deciding rule; `None` when the config default decided.
    pub rule: Option<String>,
    /// The deciding rule's message, for the client (deny) or the human
    /// (approve).
    pub message: Option<String>,
    /// Audit-mode rules that matched, with the action each would have
    /// taken; they never change `action`.
    pub audit_only: Vec<(String, Action)>,
    /// Rate limits of every enforcing rule that matched (policy overrides
    /// of the configured limits, applied by the rate limiter).
    pub limits: Vec<RuleLimit>,
}

/// A rate limit set by a policy rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleLimit {
    /// The configured limit this replaces (`replaces:`), else the rule id.
    pub id: String,
    /// Calls per `per`.
    pub rate: u32,
    /// The period.
    pub per: std::time::Duration,
    /// Burst (defaults to `rate`).
    pub burst: u32,
    /// Key parts (`identity`, `tool`, `upstream`, `global`); `None` keeps
    /// the replaced limit's key, or `identity` for a limit of its own.
    pub key: Option<Vec<String>>,
}

/// Which way content is flowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Call arguments, before the upstream sees them.
    Arguments,
    /// Results, before the client sees them.
    Results,
}

impl Direction {
    /// The lower-case name used in files, logs and audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Arguments => "arguments",
            Direction::Results => "results",
        }
    }
}

/// What a guard does with content its detectors find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardAction {
    /// Stop the call (arguments) or withhold the result.
    Block,
    /// Replace the matched text with `[REDACTED:detector]`.
    Redact,
    /// Let it pass and record the hit.
    Flag,
}

impl GuardAction {
    /// The lower-case name used in files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardAction::Block => "block",
            GuardAction::Redact => "redact",
            GuardAction::Flag => "flag",
        }
    }
}

/// One detection by one guard. Holds where and what kind, never the
/// matched text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hit {
    /// The guard's id.
    pub guard: String,
    /// The detector, e.g. `secret.aws_access_key`, `pii.email`,
    /// `injection.zero_width`.
    pub detector: &'static str,
    /// `secrets`, `pii` or `injection`.
    pub category: &'static str,
    /// JSON pointer of the string where it was found.
    pub path: String,
    /// What the guard did about it.
    pub action: GuardAction,
}

/// The result of running the guards over one value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardOutcome {
    /// `(guard id, message)` of the first blocking guard that fired; the
    /// value must not be passed on.
    pub blocked: Option<(String, String)>,
    /// Every hit, in document order.
    pub hits: Vec<Hit>,
}

/// Every detector as `(name, category)`, for documentation and `detect:`
/// validation messages.
pub fn detectors() -> impl Iterator<Item = (&'static str, &'static str)> {
    detect::DETECTORS.iter().map(|d| (d.name, d.category))
}
