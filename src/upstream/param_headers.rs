//! `Mcp-Param-*` headers (SEP-2243) on the calls the gateway forwards over
//! streamable HTTP.
//!
//! A server that annotates a tool's parameter with `x-mcp-header` refuses
//! a `tools/call` that does not mirror the argument into that header.
//! rmcp's client mirrors only for tools listed on the same connection,
//! which a call can outrun: a `session: per-client` connection serves calls
//! of tools only the shared connection listed, and a reconnected shared
//! connection is used before the registry lists again. So every upstream
//! keeps one record, fed by every `tools/list` page any of its connections
//! receives (through `TaskSupport`, which sees the raw pages), and the HTTP
//! client adds from it what rmcp did not.

use std::collections::HashMap;
use std::sync::RwLock;

use base64::Engine;
use http::{HeaderName, HeaderValue};
use memchr::memmem;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, JsonRpcMessage};
use rmcp::transport::common::http_header::{
    BASE64_HEADER_PREFIX, BASE64_HEADER_SUFFIX, HEADER_MCP_PARAM_PREFIX,
};
use serde::Deserialize;
use serde_json::{Map, Value};

/// rmcp's `HEADER_MCP_METHOD`, lower-cased as `from_static` requires. (A
/// `HashMap<HeaderName, _>` is looked up by `HeaderName`: a `&str` key
/// hashes differently.)
const METHOD_HEADER: HeaderName = HeaderName::from_static("mcp-method");

/// One annotated parameter: where its value sits in the arguments, and the
/// header that carries it.
#[derive(Debug, Clone, PartialEq)]
struct Param {
    path: Box<[String]>,
    header: HeaderName,
}

/// The annotated parameters of an upstream's tools, by the server's own
/// tool name. Tools without annotations have no entry.
#[derive(Debug, Default)]
pub(crate) struct ParamHeaders {
    tools: RwLock<HashMap<String, Box<[Param]>>>,
}

#[derive(Deserialize)]
struct Page {
    result: Tools,
}

#[derive(Deserialize)]
struct Tools {
    tools: Vec<Tool>,
}

#[derive(Deserialize)]
struct Tool {
    name: String,
    #[serde(rename = "inputSchema", default)]
    input_schema: Option<Value>,
}

impl ParamHeaders {
    /// Reads a raw `tools/list` page whose tools are `listed` (their names,
    /// already parsed by the caller): each listed tool's annotations replace
    /// what was known of it. Only a page that mentions `x-mcp-header` is
    /// parsed again for its schemas.
    pub(crate) fn learn<'a>(&self, page: &[u8], listed: impl IntoIterator<Item = &'a str>) {
        let annotated = if memmem::find(page, b"\"x-mcp-header\"").is_some() {
            match serde_json::from_slice::<Page>(page) {
                Ok(page) => page
                    .result
                    .tools
                    .into_iter()
                    .filter_map(|t| {
                        let params = annotations(t.input_schema.as_ref()?);
                        (!params.is_empty()).then(|| (t.name, params.into_boxed_slice()))
                    })
                    .collect(),
                Err(_) => return,
            }
        } else {
            HashMap::new()
        };
        let Ok(mut tools) = self.tools.write() else {
            return;
        };
        if tools.is_empty() && annotated.is_empty() {
            return;
        }
        for name in listed {
            tools.remove(name);
        }
        tools.extend(annotated);
    }

    /// Adds to `headers` the `Mcp-Param-*` headers of `message`, a
    /// `tools/call`, that rmcp left out. Only a request that went out at a
    /// protocol version with standard headers gets them: rmcp marks those
    /// with `Mcp-Method`.
    pub(crate) fn complete(
        &self,
        message: &ClientJsonRpcMessage,
        headers: &mut HashMap<HeaderName, HeaderValue>,
    ) {
        let JsonRpcMessage::Request(request) = message else {
            return;
        };
        let ClientRequest::CallToolRequest(call) = &request.request else {
            return;
        };
        if !headers.contains_key(&METHOD_HEADER) {
            return;
        }
        let Some(arguments) = call.params.arguments.as_ref() else {
            return;
        };
        let Ok(tools) = self.tools.read() else {
            return;
        };
        let Some(params) = tools.get(call.params.name.as_ref()) else {
            return;
        };
        for param in params.iter() {
            if headers.contains_key(&param.header) {
                continue;
            }
            let Some(value) = value_at(arguments, &param.path).and_then(header_value) else {
                continue;
            };
            headers.insert(param.header.clone(), value);
        }
    }
}

/// The `x-mcp-header` annotations of an input schema, on properties reached
/// from the root through `properties` alone (where SEP-2243 allows them;
/// rmcp drops a tool annotated anywhere else from the list, so it is never
/// called through the gateway).
fn annotations(schema: &Value) -> Vec<Param> {
    let mut out = Vec::new();
    collect(schema.get("properties"), &mut Vec::new(), &mut out);
    out
}

fn collect(properties: Option<&Value>, path: &mut Vec<String>, out: &mut Vec<Param>) {
    let Some(Value::Object(properties)) = properties else {
        return;
    };
    for (name, schema) in properties {
        path.push(name.clone());
        if let Some(header) = schema.get("x-mcp-header").and_then(Value::as_str) {
            if let Ok(header) =
                HeaderName::from_bytes(format!("{HEADER_MCP_PARAM_PREFIX}{header}").as_bytes())
            {
                out.push(Param {
                    path: path.clone().into_boxed_slice(),
                    header,
                });
            }
        }
        collect(schema.get("properties"), path, out);
        path.pop();
    }
}

fn value_at<'a>(arguments: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(arguments.get(first)?, |value, key| value.get(key))
}

/// A primitive argument as its header value: as is when it can travel
/// bare, Base64-wrapped otherwise (SEP-2243). Objects, arrays and null
/// have none.
fn header_value(value: &Value) -> Option<HeaderValue> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let text = if needs_base64(&text) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(&text);
        format!("{BASE64_HEADER_PREFIX}{encoded}{BASE64_HEADER_SUFFIX}")
    } else {
        text
    };
    HeaderValue::from_str(&text).ok()
}

/// Whether a value must be wrapped: surrounding blanks, anything outside
/// printable ASCII, or text that would read as a wrapped value itself.
fn needs_base64(value: &str) -> bool {
    value.starts_with([' ', '\t'])
        || value.ends_with([' ', '\t'])
        || value.chars().any(|c| !(' '..='~').contains(&c))
        || (value.starts_with(BASE64_HEADER_PREFIX) && value.ends_with(BASE64_HEADER_SUFFIX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{CallToolRequestParams, NumberOrString, Request};
    use serde_json::json;

    fn page(tools: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}))
            .unwrap_or_default()
    }

    fn region_tool(name: &str) -> Value {
        json!({"name": name, "inputSchema": {"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "where": {"type": "object", "properties": {
                "zone": {"type": "integer", "x-mcp-header": "Zone"}
            }},
            "plain": {"type": "string"}
        }}})
    }

    fn call(name: &str, arguments: Value) -> ClientJsonRpcMessage {
        let arguments = arguments.as_object().cloned().unwrap_or_default();
        let params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments);
        ClientJsonRpcMessage::request(
            ClientRequest::CallToolRequest(Request::new(params)),
            NumberOrString::Number(1),
        )
    }

    fn standard() -> HashMap<HeaderName, HeaderValue> {
        HashMap::from([(METHOD_HEADER, HeaderValue::from_static("tools/call"))])
    }

    fn header(headers: &HashMap<HeaderName, HeaderValue>, name: &str) -> Option<String> {
        headers
            .get(&HeaderName::from_bytes(name.as_bytes()).ok()?)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    #[test]
    fn annotated_arguments_are_mirrored_nested_ones_included() {
        let record = ParamHeaders::default();
        record.learn(&page(json!([region_tool("t")])), ["t"]);
        let mut headers = standard();
        record.complete(
            &call(
                "t",
                json!({"region": "eu-west", "where": {"zone": 7}, "plain": "x"}),
            ),
            &mut headers,
        );
        assert_eq!(
            header(&headers, "mcp-param-region").as_deref(),
            Some("eu-west")
        );
        assert_eq!(header(&headers, "mcp-param-zone").as_deref(), Some("7"));
        assert_eq!(headers.len(), 3, "{headers:?}");
    }

    #[test]
    fn values_that_cannot_travel_bare_are_wrapped() {
        let record = ParamHeaders::default();
        record.learn(&page(json!([region_tool("t")])), ["t"]);
        for (value, sent) in [
            (" eu", "=?base64?IGV1?="),
            ("été", "=?base64?w6l0w6k=?="),
            ("=?base64?x?=", "=?base64?PT9iYXNlNjQ/eD89?="),
            ("a b", "a b"),
        ] {
            let mut headers = standard();
            record.complete(&call("t", json!({"region": value})), &mut headers);
            assert_eq!(header(&headers, "mcp-param-region").as_deref(), Some(sent));
        }
    }

    #[test]
    fn nothing_is_added_before_standard_headers_or_over_rmcps() {
        let record = ParamHeaders::default();
        record.learn(&page(json!([region_tool("t")])), ["t"]);
        let mut legacy = HashMap::new();
        record.complete(&call("t", json!({"region": "eu"})), &mut legacy);
        assert!(legacy.is_empty(), "{legacy:?}");
        let mut headers = standard();
        headers.insert(
            HeaderName::from_static("mcp-param-region"),
            HeaderValue::from_static("rmcp's"),
        );
        record.complete(&call("t", json!({"region": "eu"})), &mut headers);
        assert_eq!(
            header(&headers, "mcp-param-region").as_deref(),
            Some("rmcp's")
        );
        let mut other = standard();
        record.complete(&call("unknown", json!({"region": "eu"})), &mut other);
        record.complete(
            &call("t", json!({"region": {"not": "primitive"}})),
            &mut other,
        );
        assert_eq!(other.len(), 1, "{other:?}");
    }

    #[test]
    fn a_later_page_replaces_what_it_lists_and_keeps_the_rest() {
        let record = ParamHeaders::default();
        record.learn(
            &page(json!([region_tool("a"), region_tool("b")])),
            ["a", "b"],
        );
        // `a` lost its annotation; `b` was not on this page.
        record.learn(
            &page(json!([{"name": "a", "inputSchema": {"type": "object"}}])),
            ["a"],
        );
        let mut a = standard();
        record.complete(&call("a", json!({"region": "eu"})), &mut a);
        assert_eq!(header(&a, "mcp-param-region"), None);
        let mut b = standard();
        record.complete(&call("b", json!({"region": "eu"})), &mut b);
        assert_eq!(header(&b, "mcp-param-region").as_deref(), Some("eu"));
    }
}
