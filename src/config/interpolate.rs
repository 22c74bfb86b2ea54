//! `${VAR}` substitution over the parsed YAML tree.
//!
//! Substitution runs on the tree, not the text, so a value from the
//! environment can never change the document's structure (a variable holding
//! `"\n  evil: true"` stays one string) and errors can name the field.

use serde_yaml_ng::Value;

/// A reference to an environment variable that is not set, or a malformed
/// reference.
#[derive(Debug, PartialEq, Eq)]
pub struct InterpolateError {
    /// Dotted path of the field holding the reference.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Replaces every `${NAME}` in the string values of `tree` with
/// `env(NAME)`. `$${` writes a literal `${`. A missing variable is an
/// error: an empty credential is a worse failure than a refused start.
pub fn interpolate(
    tree: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), InterpolateError> {
    walk(tree, &mut Vec::new(), env)
}

fn walk(
    value: &mut Value,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), InterpolateError> {
    match value {
        Value::String(s) if s.contains('$') => {
            *s = substitute(s, env).map_err(|message| InterpolateError {
                field: path.join("."),
                message,
            })?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                walk(item, path, env)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                path.push(
                    key.as_str()
                        .map_or_else(|| format!("{key:?}"), str::to_owned),
                );
                walk(item, path, env)?;
                path.pop();
            }
        }
        Value::Tagged(tagged) => walk(&mut tagged.value, path, env)?,
        _ => {}
    }
    Ok(())
}

fn substitute(input: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {input:?}"))?;
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable name"
                ));
            }
            let value =
                env(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "NL" => Some("a\n  injected: true".into()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_and_escapes() {
        assert_eq!(
            substitute("Bearer ${TOKEN}", &env).unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(
            substitute("$${TOKEN} costs $5", &env).unwrap(),
            "${TOKEN} costs $5"
        );
    }

    #[test]
    fn missing_variable_names_field() {
        let mut tree: Value =
            serde_yaml_ng::from_str("upstreams:\n  r:\n    http: { url: \"${NOPE}\" }").unwrap();
        let err = interpolate(&mut tree, &env).unwrap_err();
        assert_eq!(err.field, "upstreams.r.http.url");
        assert!(err.message.contains("`NOPE` is not set"), "{}", err.message);
    }

    #[test]
    fn values_cannot_change_structure() {
        let mut tree: Value = serde_yaml_ng::from_str("a: \"${NL}\"").unwrap();
        interpolate(&mut tree, &env).unwrap();
        assert_eq!(tree["a"].as_str(), Some("a\n  injected: true"));
        assert!(tree.get("injected").is_none());
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(substitute("${", &env).is_err());
        assert!(substitute("${A-B}", &env).is_err());
    }
}
