//! The YAML shape of a policy file, as written by people. Nothing here is
//! checked beyond its shape; `compile` turns it into the matchers the
//! decision path uses and reports what is wrong with it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::PolicyError;

/// One policy file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    #[serde(default)]
    pub(crate) rules: Vec<RawRule>,
    #[serde(default)]
    pub(crate) guards: Vec<RawGuard>,
}

/// `limit: { rate: 10, per: 1m, burst: 20, key: [identity, tool], replaces: per-user-tool }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimit {
    pub(crate) rate: u32,
    #[serde(with = "humantime_serde")]
    pub(crate) per: std::time::Duration,
    #[serde(default)]
    pub(crate) burst: Option<u32>,
    #[serde(default)]
    pub(crate) key: Option<Vec<String>>,
    /// The id of a configured limit whose quota this rule overrides.
    #[serde(default)]
    pub(crate) replaces: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub(crate) id: String,
    #[serde(default, rename = "match")]
    pub(crate) matcher: RawMatch,
    pub(crate) action: RawAction,
    #[serde(default)]
    pub(crate) mode: RawMode,
    #[serde(default)]
    pub(crate) message: Option<String>,
    /// A rate limit on the calls this rule matches.
    #[serde(default)]
    pub(crate) limit: Option<RawLimit>,
    /// Free text for people reading the file; never used.
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) description: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawAction {
    Allow,
    Deny,
    Approve,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawMode {
    #[default]
    Enforce,
    Audit,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGuard {
    pub(crate) id: String,
    pub(crate) detect: OneOrMany<String>,
    #[serde(default)]
    pub(crate) on: Option<OneOrMany<RawDirection>>,
    pub(crate) action: RawGuardAction,
    #[serde(default, rename = "match")]
    pub(crate) matcher: RawMatch,
    #[serde(default)]
    pub(crate) message: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawDirection {
    Arguments,
    Results,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawGuardAction {
    Block,
    Redact,
    Flag,
}

/// The `match:` block shared by rules and guards.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    #[serde(default)]
    pub(crate) subject: Option<OneOrMany<String>>,
    #[serde(default)]
    pub(crate) groups: Option<OneOrMany<String>>,
    #[serde(default)]
    pub(crate) claims: BTreeMap<String, OneOrMany<Value>>,
    #[serde(default)]
    pub(crate) upstream: Option<OneOrMany<String>>,
    #[serde(default)]
    pub(crate) tool: Option<OneOrMany<String>>,
    #[serde(default)]
    pub(crate) resource: Option<OneOrMany<String>>,
    #[serde(default)]
    pub(crate) prompt: Option<OneOrMany<String>>,
    /// Model aliases on `/v1/*` (and MCP sampling served by the router).
    #[serde(default)]
    pub(crate) model: Option<OneOrMany<String>>,
    #[serde(default)]
    pub(crate) annotations: Option<RawAnnotations>,
    #[serde(default)]
    pub(crate) args: BTreeMap<String, RawArgCond>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawAnnotations {
    #[serde(default)]
    pub(crate) destructive_hint: Option<bool>,
    #[serde(default)]
    pub(crate) read_only_hint: Option<bool>,
    #[serde(default)]
    pub(crate) open_world_hint: Option<bool>,
    #[serde(default)]
    pub(crate) idempotent_hint: Option<bool>,
}

/// One argument condition; exactly one field must be set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawArgCond {
    // `equals: null` must count as set, so presence is recorded explicitly.
    #[serde(default, deserialize_with = "present")]
    pub(crate) equals: Option<Value>,
    #[serde(default)]
    pub(crate) one_of: Option<Vec<Value>>,
    #[serde(default)]
    pub(crate) glob: Option<String>,
    #[serde(default)]
    pub(crate) regex: Option<String>,
    #[serde(default)]
    pub(crate) range: Option<RawRange>,
    /// The argument is present and the inner condition does not hold.
    #[serde(default)]
    pub(crate) not: Option<Box<RawArgCond>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRange {
    #[serde(default)]
    pub(crate) min: Option<f64>,
    #[serde(default)]
    pub(crate) max: Option<f64>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A scalar or a list of them (`groups: readers` or `groups: [a, b]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany<T> {
    // Tried first: for `OneOrMany<Value>` a list must be alternatives, not
    // one list-valued alternative.
    Many(Vec<T>),
    One(T),
}

impl<T> OneOrMany<T> {
    pub(crate) fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Parses one file's text; `file` names it in errors.
pub(crate) fn parse(file: &str, text: &str) -> Result<PolicyFile, PolicyError> {
    // An empty file (or one holding only comments) is an empty policy.
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(PolicyFile::default());
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| PolicyError::Parse {
        file: file.to_owned(),
        message: format!("{}: {}", e.path(), e.inner()),
    })
}
