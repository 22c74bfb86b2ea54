//! Tool-definition pinning: a stable hash of what a tool claims to be, and
//! the lock file that records the approved hashes (`portcullis pin`).
//!
//! A rug pull is a server changing a tool's description or schema after
//! users approved it; comparing the live hash with the pinned one catches
//! it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::PolicyError;

/// The lock file format version this build reads and writes.
pub const LOCKFILE_VERSION: u32 = 1;

/// SHA-256 (lower-case hex) of the canonical JSON of the tool's name,
/// title, description, inputSchema, outputSchema and annotations. Object
/// keys are sorted and no whitespace is written, so the hash does not
/// depend on how the server ordered its JSON; absent fields are left out.
/// Icons and `_meta` are not part of it: they do not steer the model.
pub fn definition_hash(tool: &rmcp::model::Tool) -> String {
    let mut doc = serde_json::Map::new();
    doc.insert("name".into(), Value::String(tool.name.to_string()));
    if let Some(t) = &tool.title {
        doc.insert("title".into(), Value::String(t.clone()));
    }
    if let Some(d) = &tool.description {
        doc.insert("description".into(), Value::String(d.to_string()));
    }
    doc.insert(
        "inputSchema".into(),
        Value::Object((*tool.input_schema).clone()),
    );
    if let Some(s) = &tool.output_schema {
        doc.insert("outputSchema".into(), Value::Object((**s).clone()));
    }
    if let Some(a) = &tool.annotations {
        // Serialising a plain struct of options and strings cannot fail.
        if let Ok(v) = serde_json::to_value(a) {
            doc.insert("annotations".into(), v);
        }
    }
    let mut canonical = String::new();
    write_canonical(&Value::Object(doc), &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The approved definition hashes, by `upstream/tool` (the upstream's own
/// tool name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    /// Format version; must be [`LOCKFILE_VERSION`].
    #[serde(default = "version")]
    pub version: u32,
    /// `upstream/tool` → definition hash.
    #[serde(default)]
    pub tools: BTreeMap<String, String>,
}

fn version() -> u32 {
    LOCKFILE_VERSION
}

impl Default for Lockfile {
    fn default() -> Self {
        Lockfile {
            version: LOCKFILE_VERSION,
            tools: BTreeMap::new(),
        }
    }
}

impl Lockfile {
    /// The key of a tool in [`Lockfile::tools`].
    pub fn key(upstream: &str, tool: &str) -> String {
        format!("{upstream}/{tool}")
    }

    /// The pinned hash of a tool, if any.
    pub fn get(&self, upstream: &str, tool: &str) -> Option<&str> {
        self.tools
            .get(&Lockfile::key(upstream, tool))
            .map(String::as_str)
    }

    /// Reads a lock file (YAML, or JSON, which YAML also reads). A missing
    /// file is an error: pinning was configured, so the pins must exist.
    pub fn load(path: &Path) -> Result<Lockfile, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
        let de = serde_yaml_ng::Deserializer::from_str(&text);
        let lock: Lockfile =
            serde_path_to_error::deserialize(de).map_err(|e| PolicyError::Parse {
                file: path.display().to_string(),
                message: format!("{}: {}", e.path(), e.inner()),
            })?;
        if lock.version != LOCKFILE_VERSION {
            return Err(PolicyError::Parse {
                file: path.display().to_string(),
                message: format!(
                    "version: {} is not supported (this build reads version {LOCKFILE_VERSION})",
                    lock.version
                ),
            });
        }
        for (k, h) in &lock.tools {
            let hex = h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
            if !k.contains('/') || !hex {
                return Err(PolicyError::Parse {
                    file: path.display().to_string(),
                    message: format!("tools.{k}: entries are `upstream/tool: <64 hex characters>`"),
                });
            }
        }
        Ok(lock)
    }

    /// Writes the lock file, JSON when the name ends in `.json`, else YAML;
    /// keys sorted. Written to a temporary file and renamed, so a reader
    /// never sees half a file.
    pub fn save(&self, path: &Path) -> Result<(), PolicyError> {
        let as_json = path.extension().is_some_and(|e| e == "json");
        let mut text = if as_json {
            serde_json::to_string_pretty(self).map_err(|e| PolicyError::Parse {
                file: path.display().to_string(),
                message: e.to_string(),
            })?
        } else {
            let body = serde_yaml_ng::to_string(self).map_err(|e| PolicyError::Parse {
                file: path.display().to_string(),
                message: e.to_string(),
            })?;
            format!("# Written by `portcullis pin`: approved tool definition hashes.\n{body}")
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| PolicyError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| PolicyError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(v: Value) -> rmcp::model::Tool {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn hash_ignores_key_order_but_not_content() {
        let a = tool(
            json!({"name": "t", "description": "d", "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "number"}}}}),
        );
        let b = tool(
            json!({"inputSchema": {"properties": {"y": {"type": "number"}, "x": {"type": "string"}}, "type": "object"}, "description": "d", "name": "t"}),
        );
        assert_eq!(definition_hash(&a), definition_hash(&b));
        assert_eq!(definition_hash(&a).len(), 64);
        let changed = tool(
            json!({"name": "t", "description": "d!", "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "number"}}}}),
        );
        assert_ne!(definition_hash(&a), definition_hash(&changed));
        let annotated = tool(
            json!({"name": "t", "description": "d", "annotations": {"readOnlyHint": true}, "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "number"}}}}),
        );
        assert_ne!(definition_hash(&a), definition_hash(&annotated));
        let with_meta = tool(
            json!({"name": "t", "description": "d", "_meta": {"k": 1}, "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "number"}}}}),
        );
        assert_eq!(definition_hash(&a), definition_hash(&with_meta));
    }

    #[test]
    fn hash_is_stable_across_builds() {
        // A pinned hash must survive upgrades; changing the canonical form
        // invalidates every user's lock file.
        let t = tool(json!({"name": "echo", "inputSchema": {"type": "object"}}));
        let expected = {
            let canonical = r#"{"inputSchema":{"type":"object"},"name":"echo"}"#;
            Sha256::digest(canonical.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(definition_hash(&t), expected);
    }

    #[test]
    fn lockfile_round_trips_in_yaml_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let mut lock = Lockfile::default();
        lock.tools.insert("fs/read_file".into(), "a".repeat(64));
        lock.tools.insert("everything/echo".into(), "b".repeat(64));
        for name in ["pins.yaml", "pins.json"] {
            let path = dir.path().join(name);
            lock.save(&path).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains("version"));
            assert!(
                text.find("everything/echo") < text.find("fs/read_file"),
                "sorted"
            );
            assert_eq!(Lockfile::load(&path).unwrap(), lock);
        }
        assert_eq!(lock.get("fs", "read_file"), Some("a".repeat(64).as_str()));
    }

    #[test]
    fn lockfile_load_rejects_missing_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Lockfile::load(&dir.path().join("none.yaml")),
            Err(PolicyError::Io { .. })
        ));
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "version: 2\ntools: {}\n").unwrap();
        assert!(Lockfile::load(&bad)
            .unwrap_err()
            .to_string()
            .contains("version"));
        std::fs::write(&bad, "version: 1\ntools: { fs/x: nothex }\n").unwrap();
        assert!(Lockfile::load(&bad)
            .unwrap_err()
            .to_string()
            .contains("tools.fs/x"));
    }
}
