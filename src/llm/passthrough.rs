//! Bodies the router passes on in the format they came in, without
//! building them whole: the client's request with the target's model put
//! in, a provider's answer of which only a few fields are read, and a
//! streamed chunk that is forwarded as it came or without one member.
//!
//! Parsing an answer into a [`Value`] and writing it out again was about
//! half of a proxied completion's instructions when client and provider
//! speak the same format and nothing in the answer changes.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The client's request body in the provider's own format, written out
/// with `model` replaced by the target's and, when `include_usage`, a
/// `stream_options` asking for the usage chunk (replacing the client's).
/// The same JSON as editing a copy of the body, without the copy.
pub struct SameFormat<'a> {
    /// The client's body.
    pub body: &'a Map<String, Value>,
    /// The target's model name.
    pub model: &'a str,
    /// Ask an OpenAI provider for usage in its stream's last chunk.
    pub include_usage: bool,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

const WITH_USAGE: StreamOptions = StreamOptions {
    include_usage: true,
};

impl Serialize for SameFormat<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (key, value) in self.body {
            match key.as_str() {
                "model" => map.serialize_entry(key, self.model)?,
                "stream_options" if self.include_usage => map.serialize_entry(key, &WITH_USAGE)?,
                _ => map.serialize_entry(key, value)?,
            }
        }
        if !self.body.contains_key("model") {
            map.serialize_entry("model", self.model)?;
        }
        if self.include_usage && !self.body.contains_key("stream_options") {
            map.serialize_entry("stream_options", &WITH_USAGE)?;
        }
        map.end()
    }
}

/// What the router reads of a whole answer it passes through: whether the
/// fields that make it an answer are there (`choices` or `data` for
/// OpenAI, `content` for Anthropic; present even when `null`, as
/// [`Value::get`] sees them), and `usage` as it is (`null` included).
/// Only a JSON object is one; everything else in it is skipped unbuilt.
#[derive(Debug, Default, PartialEq)]
pub struct AnswerProbe {
    /// `choices` is present.
    pub choices: bool,
    /// `data` is present.
    pub data: bool,
    /// `content` is present.
    pub content: bool,
    /// `usage`, if present.
    pub usage: Option<Value>,
}

impl AnswerProbe {
    /// Reads `body`, which must be a JSON object and nothing else.
    pub fn read(body: &[u8]) -> Result<AnswerProbe, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

enum Field {
    Choices,
    Data,
    Content,
    Usage,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Field, E> {
                Ok(match name {
                    "choices" => Field::Choices,
                    "data" => Field::Data,
                    "content" => Field::Content,
                    "usage" => Field::Usage,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(Name)
    }
}

impl<'de> Deserialize<'de> for AnswerProbe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AnswerProbe, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = AnswerProbe;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnswerProbe, A::Error> {
                let mut probe = AnswerProbe::default();
                while let Some(field) = map.next_key::<Field>()? {
                    let seen = match field {
                        Field::Usage => {
                            probe.usage = Some(map.next_value::<Value>()?);
                            continue;
                        }
                        Field::Choices => &mut probe.choices,
                        Field::Data => &mut probe.data,
                        Field::Content => &mut probe.content,
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    map.next_value::<IgnoredAny>()?;
                    *seen = true;
                }
                Ok(probe)
            }
        }
        // `deserialize_map`, not a struct: serde_json would let a struct
        // be read from an array too.
        d.deserialize_map(Object)
    }
}

/// A streamed chunk's members in their order, each value as it came: what
/// the router checks is looked up, and a chunk that must lose a member is
/// written out again from the others, not from a parsed tree.
pub struct Chunk<'a> {
    members: Vec<(&'a str, &'a RawValue)>,
}

impl<'a> Chunk<'a> {
    /// Reads `data`, which must be one JSON object whose member names have
    /// no escapes (they are borrowed; any other chunk is for the caller's
    /// slower path).
    pub fn read(data: &'a str) -> Result<Chunk<'a>, serde_json::Error> {
        serde_json::from_str(data)
    }

    /// The value of `name` as it came (the last, if repeated, as a parsed
    /// object keeps it).
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.members
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// `name`'s value is an empty array.
    pub fn is_empty_array(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| {
            let v = v.get();
            v.len() >= 2 && v.starts_with('[') && v[1..v.len() - 1].trim().is_empty()
        })
    }

    /// The chunk without any `name` member, the others in their order
    /// with their values' bytes.
    pub fn without(&self, name: &str) -> String {
        let kept = self.members.iter().filter(|(n, _)| *n != name);
        let size: usize = kept.clone().map(|(n, v)| n.len() + v.get().len() + 4).sum();
        let mut out = String::with_capacity(size + 2);
        out.push('{');
        for (n, v) in kept {
            if out.len() > 1 {
                out.push(',');
            }
            // A borrowed name has no escapes, so quoting it is enough.
            out.push('"');
            out.push_str(n);
            out.push_str("\":");
            out.push_str(v.get());
        }
        out.push('}');
        out
    }
}

impl<'de> Deserialize<'de> for Chunk<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Chunk<'de>, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Chunk<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Chunk<'de>, A::Error> {
                let mut members = Vec::with_capacity(8);
                while let Some(member) = map.next_entry::<&'de str, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Chunk { members })
            }
        }
        d.deserialize_map(Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the router built before: a copy of the body, edited.
    fn edited(body: &Value, model: &str, include_usage: bool) -> Value {
        let mut b = body.clone();
        b["model"] = json!(model);
        if include_usage {
            b["stream_options"] = json!({"include_usage": true});
        }
        b
    }

    #[test]
    fn same_format_writes_what_editing_a_copy_wrote() {
        let bodies = [
            json!({"model": "alias", "messages": [{"role": "user", "content": "hi \"there\""}], "stream": true}),
            json!({"model": "alias", "stream_options": {"include_usage": false, "x": 1}, "stream": true}),
            json!({"model": "alias", "input": ["a", "b"]}),
            json!({"messages": []}),
        ];
        for body in &bodies {
            for include_usage in [false, true] {
                let written = serde_json::to_vec(&SameFormat {
                    body: body.as_object().unwrap(),
                    model: "gpt-x",
                    include_usage,
                })
                .unwrap();
                let read: Value = serde_json::from_slice(&written).unwrap();
                assert_eq!(read, edited(body, "gpt-x", include_usage), "{body}");
            }
        }
    }

    #[test]
    fn the_probe_sees_what_value_get_sees() {
        let answers = [
            r#"{"id":"c1","choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":3}}"#,
            r#"{"object":"list","data":[{"embedding":[0.1]}],"usage":null}"#,
            r#"{"content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":2,"output_tokens":1}}"#,
            r#"{"choices":null,"nested":{"usage":1,"content":2}}"#,
            r#"{"error":{"message":"no"}}"#,
            r#"{}"#,
        ];
        for answer in answers {
            let value: Value = serde_json::from_str(answer).unwrap();
            let probe = AnswerProbe::read(answer.as_bytes()).unwrap();
            assert_eq!(probe.choices, value.get("choices").is_some(), "{answer}");
            assert_eq!(probe.data, value.get("data").is_some(), "{answer}");
            assert_eq!(probe.content, value.get("content").is_some(), "{answer}");
            assert_eq!(probe.usage.as_ref(), value.get("usage"), "{answer}");
        }
    }

    #[test]
    fn the_probe_refuses_what_is_not_one_json_object() {
        for answer in [
            r#"[{"choices":[]}]"#,
            r#""choices""#,
            "null",
            r#"{"choices":[]} trailing"#,
            r#"{"choices":[}"#,
            "",
        ] {
            assert!(AnswerProbe::read(answer.as_bytes()).is_err(), "{answer}");
        }
    }

    #[test]
    fn a_chunk_reads_and_loses_members_as_a_parsed_object_would() {
        let chunks = [
            r#"{"id":"c1", "choices":[{"delta":{"content":"\"usage\": 1"}}],"usage":null}"#,
            r#"{"usage":{"prompt_tokens":4},"choices":[ ]}"#,
            r#"{"usage":null}"#,
            r#"{"choices":[[]],"error":null,"usage":1,"usage":2}"#,
            r#"{"choices":"[]","x":{"usage":3}}"#,
            r#"{}"#,
        ];
        for data in chunks {
            let value: Value = serde_json::from_str(data).unwrap();
            let chunk = Chunk::read(data).unwrap();
            for name in ["choices", "usage", "error", "x", "absent"] {
                let got = chunk
                    .get(name)
                    .map(|v| serde_json::from_str::<Value>(v.get()).unwrap());
                assert_eq!(got.as_ref(), value.get(name), "{data} {name}");
            }
            let empty = value
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty);
            assert_eq!(chunk.is_empty_array("choices"), empty, "{data}");
            let mut stripped = value.clone();
            if let Some(o) = stripped.as_object_mut() {
                o.remove("usage");
            }
            let written: Value = serde_json::from_str(&chunk.without("usage")).unwrap();
            assert_eq!(written, stripped, "{data}");
        }
        // Members keep their order, and values their bytes.
        let chunk = Chunk::read(r#"{"z":1, "usage":null, "a":[1, 2]}"#).unwrap();
        assert_eq!(chunk.without("usage"), r#"{"z":1,"a":[1, 2]}"#);
        // A name with an escape cannot be borrowed: parsed whole instead.
        assert!(Chunk::read(r#"{"us\u0061ge":null}"#).is_err());
        assert!(Chunk::read("[1]").is_err());
    }
}
