//! [`PolicySet`]: the compiled rules and guards of one policies directory,
//! and the three questions the gateway asks of them.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{Map, Value};

use super::detect;
use super::file::{self, PolicyFile, RawAction, RawDirection, RawGuardAction, RawMode};
use super::guard::{self, Guard};
use super::matcher::{Matcher, Quantifier};
use super::{
    Action, Decision, Direction, GuardAction, GuardOutcome, PolicyError, RuleLimit, Subject,
};
use crate::auth::Identity;
use crate::config::DefaultAction;

/// One compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    id: String,
    action: Action,
    audit: bool,
    message: Option<String>,
    matcher: Matcher,
    limit: Option<RuleLimit>,
}

/// An immutable, compiled policy. Cheap to query from many threads; a new
/// one replaces it wholesale on reload.
#[derive(Debug, Clone)]
pub struct PolicySet {
    rules: Vec<Rule>,
    guards: Vec<Guard>,
    default: DefaultAction,
}

impl PolicySet {
    /// Loads every `*.yaml` and `*.yml` file directly in `dir`, in file-name
    /// order (subdirectories such as `tests/` are not policies).
    pub fn load_dir(dir: &Path, default: DefaultAction) -> Result<PolicySet, PolicyError> {
        let entries = std::fs::read_dir(dir).map_err(|e| PolicyError::io(dir, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| PolicyError::io(dir, e))?.path();
            let is_yaml = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "yaml" || e == "yml");
            if is_yaml && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        let mut set = PolicySet::empty(default);
        let mut ids = HashSet::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| PolicyError::io(&path, e))?;
            let name = path.display().to_string();
            set.add(&name, file::parse(&name, &text)?, &mut ids)?;
        }
        Ok(set)
    }

    /// Compiles one policy document held in memory (tests, benchmarks).
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(yaml: &str, default: DefaultAction) -> Result<PolicySet, PolicyError> {
        let mut set = PolicySet::empty(default);
        set.add(
            "<string>",
            file::parse("<string>", yaml)?,
            &mut HashSet::new(),
        )?;
        Ok(set)
    }

    /// No rules and no guards: every decision is `default`.
    pub fn empty(default: DefaultAction) -> PolicySet {
        PolicySet {
            rules: Vec::new(),
            guards: Vec::new(),
            default,
        }
    }

    /// Number of rules (enforcing and audit).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Number of content guards.
    pub fn guard_count(&self) -> usize {
        self.guards.len()
    }

    /// Whether any content guard scans `dir` (for someone): without one,
    /// callers skip building the JSON the guards would scan.
    pub fn guards_on(&self, dir: Direction) -> bool {
        self.guards.iter().any(|g| g.applies_to(dir))
    }

    /// The decision when no enforcing rule matches.
    pub fn default_action(&self) -> DefaultAction {
        self.default
    }

    /// Whether `s` belongs in `who`'s lists: false only when no call could
    /// ever be allowed, i.e. an enforcing deny rule without argument
    /// conditions matches, or the default is deny and no enforcing allow or
    /// approve rule could match (whatever the arguments).
    pub fn visible(&self, who: &Identity, s: &Subject) -> bool {
        let enforcing = self
            .rules
            .iter()
            .filter(|r| !r.audit && r.matcher.matches_target(who, s));
        let mut could_pass = false;
        for r in enforcing {
            match r.action {
                Action::Deny if !r.matcher.has_args() => return false,
                Action::Allow | Action::Approve => could_pass = true,
                Action::Deny => {}
            }
        }
        could_pass || self.default == DefaultAction::Allow
    }

    /// Decides one call. Every enforcing rule that matches is collected and
    /// the strongest action wins (deny > approve > allow; among equals the
    /// first rule in file order names the decision); with none, the config
    /// default decides. `args` of `None` is a call without arguments.
    pub fn decide(
        &self,
        who: &Identity,
        s: &Subject,
        args: Option<&Map<String, Value>>,
    ) -> Decision {
        let mut winner: Option<&Rule> = None;
        let mut audit_only = Vec::new();
        let mut limits = Vec::new();
        for r in &self.rules {
            if !r.matcher.matches(who, s, args) {
                continue;
            }
            if r.audit {
                audit_only.push((r.id.clone(), r.action));
                continue;
            }
            if let Some(limit) = &r.limit {
                limits.push(limit.clone());
            }
            if winner.is_none_or(|w| r.action.strength() > w.action.strength()) {
                winner = Some(r);
            }
        }
        match winner {
            Some(r) => Decision {
                action: r.action,
                rule: Some(r.id.clone()),
                message: r.message.clone(),
                audit_only,
                limits,
            },
            None => Decision {
                action: match self.default {
                    DefaultAction::Allow => Action::Allow,
                    DefaultAction::Deny => Action::Deny,
                },
                rule: None,
                message: None,
                audit_only,
                limits,
            },
        }
    }

    /// Runs every guard that applies to `who`, `s` and `dir` over `value`,
    /// redacting in place. When `blocked` is set the value must not be
    /// passed on (it may be partly redacted).
    pub fn guard(
        &self,
        who: &Identity,
        s: &Subject,
        dir: Direction,
        value: &mut Value,
    ) -> GuardOutcome {
        let active: Vec<&Guard> = self
            .guards
            .iter()
            .filter(|g| g.applies_to(dir) && g.matcher.matches_target(who, s))
            .collect();
        if active.is_empty() {
            return GuardOutcome::default();
        }
        guard::run(&active, value)
    }

    fn add(
        &mut self,
        name: &str,
        doc: PolicyFile,
        ids: &mut HashSet<String>,
    ) -> Result<(), PolicyError> {
        for (i, raw) in doc.rules.into_iter().enumerate() {
            let item = format!("rule {}", raw.id);
            check_id(name, &format!("rules[{i}]"), &raw.id, ids)?;
            let action = match raw.action {
                RawAction::Allow => Action::Allow,
                RawAction::Deny => Action::Deny,
                RawAction::Approve => Action::Approve,
            };
            // Read `*` in argument pointers restrictively: a deny needs one
            // bad element, an allow needs every element to qualify.
            let quantifier = match action {
                Action::Deny => Quantifier::Any,
                Action::Allow | Action::Approve => Quantifier::All,
            };
            let matcher = Matcher::compile(raw.matcher, quantifier)
                .map_err(|(f, p)| PolicyError::invalid(name, &item, f, p))?;
            let limit = match raw.limit {
                Some(l) => Some(
                    compile_limit(&raw.id, l)
                        .map_err(|(f, p)| PolicyError::invalid(name, &item, f, p))?,
                ),
                None => None,
            };
            self.rules.push(Rule {
                id: raw.id,
                action,
                audit: raw.mode == RawMode::Audit,
                message: raw.message,
                matcher,
                limit,
            });
        }
        for (i, raw) in doc.guards.into_iter().enumerate() {
            let item = format!("guard {}", raw.id);
            check_id(name, &format!("guards[{i}]"), &raw.id, ids)?;
            let mut mask = 0;
            for entry in raw.detect.into_vec() {
                mask |= detect::mask_for(&entry).ok_or_else(|| {
                    PolicyError::invalid(
                        name,
                        &item,
                        "detect",
                        format!(
                            "unknown detector `{entry}`; use all, {}, or one of {}",
                            detect::CATEGORIES.join(", "),
                            detect::DETECTORS
                                .iter()
                                .map(|d| d.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
            }
            if mask == 0 {
                return Err(PolicyError::invalid(
                    name,
                    &item,
                    "detect",
                    "lists no detector",
                ));
            }
            let on = raw
                .on
                .map(|o| o.into_vec())
                .unwrap_or_else(|| vec![RawDirection::Arguments, RawDirection::Results]);
            if on.is_empty() {
                return Err(PolicyError::invalid(
                    name,
                    &item,
                    "on",
                    "lists no direction",
                ));
            }
            let matcher = Matcher::compile(raw.matcher, Quantifier::All)
                .map_err(|(f, p)| PolicyError::invalid(name, &item, f, p))?;
            if matcher.has_args() {
                return Err(PolicyError::invalid(
                    name,
                    &item,
                    "match.args",
                    "guards inspect content, not argument values; use a rule",
                ));
            }
            self.guards.push(Guard {
                id: raw.id,
                mask,
                arguments: on.contains(&RawDirection::Arguments),
                results: on.contains(&RawDirection::Results),
                action: match raw.action {
                    RawGuardAction::Block => GuardAction::Block,
                    RawGuardAction::Redact => GuardAction::Redact,
                    RawGuardAction::Flag => GuardAction::Flag,
                },
                message: raw.message,
                matcher,
            });
        }
        Ok(())
    }
}

/// Ids name decisions in audit lines and metric labels: they must be
/// present, unique across rules and guards of the whole directory, and
/// plain.
fn check_id(
    file: &str,
    position: &str,
    id: &str,
    ids: &mut HashSet<String>,
) -> Result<(), PolicyError> {
    let plain = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if !plain {
        return Err(PolicyError::invalid(
            file,
            position,
            "id",
            format!("`{id}` must be 1-128 characters of A-Z a-z 0-9 - _ . : /"),
        ));
    }
    if !ids.insert(id.to_owned()) {
        return Err(PolicyError::invalid(
            file,
            &format!("{position} ({id})"),
            "id",
            "duplicate id (ids are unique across all rules and guards)",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "set_tests.rs"]
mod tests;

/// Checks a rule's `limit` and names it: the configured limit it replaces,
/// or the rule's own id.
fn compile_limit(rule: &str, raw: super::file::RawLimit) -> Result<RuleLimit, (String, String)> {
    if raw.rate == 0 || raw.per.is_zero() {
        return Err((
            "limit".into(),
            "rate and per must be greater than zero".into(),
        ));
    }
    const KEYS: [&str; 4] = ["identity", "tool", "upstream", "global"];
    if let Some(bad) = raw
        .key
        .iter()
        .flatten()
        .find(|k| !KEYS.contains(&k.as_str()))
    {
        return Err((
            "limit.key".into(),
            format!("unknown key part `{bad}`; use {}", KEYS.join(", ")),
        ));
    }
    Ok(RuleLimit {
        id: raw.replaces.unwrap_or_else(|| rule.to_owned()),
        rate: raw.rate,
        per: raw.per,
        burst: raw.burst.unwrap_or(raw.rate),
        key: raw.key,
    })
}
