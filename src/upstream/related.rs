//! Which call an HTTP upstream's log line belongs to.
//!
//! rmcp's streamable HTTP client marks the requests an upstream sends with
//! the stream they arrived on, but not its notifications, so a log line
//! sent on a call's own response stream would look like one sent to the
//! whole connection, and reach every session. The HTTP client (`http.rs`)
//! knows which request each response stream answers: it marks each log
//! line there with that request's id under [`RELATED`] in the line's
//! `_meta`, and [`take`] reads the mark back (removing it) where the line
//! is routed (`ordered.rs`). A mark the upstream itself sent is removed on
//! every stream, so an upstream cannot address another call's client.

use rmcp::model::{Extensions, NotificationMetaObject, RequestId};
use serde_json::Value;

/// The `_meta` key of the mark; the gateway's own.
pub(crate) const RELATED: &str = "io.portcullis/relatedRequestId";

/// Marks one event's data as `request`'s when it is a log line (for
/// `None`, or on any stream, removes a mark the upstream sent itself).
pub(crate) fn mark_event(data: &mut String, request: Option<&RequestId>) {
    // Cheap test first: most events are neither.
    let wanted = match request {
        Some(_) => data.contains("notifications/message"),
        None => data.contains(RELATED),
    };
    if !wanted {
        return;
    }
    let Ok(mut message) = serde_json::from_str::<Value>(data) else {
        return;
    };
    if message.get("method").and_then(Value::as_str) != Some("notifications/message") {
        return;
    }
    let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) else {
        return;
    };
    match request {
        Some(id) => {
            let Ok(id) = serde_json::to_value(id) else {
                return;
            };
            let meta = params
                .entry("_meta")
                .or_insert_with(|| Value::Object(Default::default()));
            match meta.as_object_mut() {
                Some(meta) => meta.insert(RELATED.to_owned(), id),
                None => return,
            };
        }
        None => {
            if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
                meta.remove(RELATED);
            }
        }
    }
    *data = message.to_string();
}

/// The request a log line was marked with, removing the mark (and a
/// `_meta` it leaves empty). rmcp keeps a notification's `_meta` in its
/// extensions.
pub(crate) fn take(extensions: &mut Extensions) -> Option<RequestId> {
    let meta = extensions.get_mut::<NotificationMetaObject>()?;
    let id = meta
        .0
         .0
        .remove(RELATED)
        .and_then(|v| serde_json::from_value(v).ok());
    if meta.0 .0.is_empty() {
        extensions.remove::<NotificationMetaObject>();
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{JsonRpcMessage, ServerJsonRpcMessage, ServerNotification};

    const LINE: &str = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}"#;

    /// The mark as the routing code finds it: parsed by rmcp, as rmcp
    /// hands it on, and the `_meta` that is left.
    fn taken(data: &str) -> (Option<RequestId>, Option<NotificationMetaObject>) {
        let message: ServerJsonRpcMessage = serde_json::from_str(data).unwrap();
        let JsonRpcMessage::Notification(n) = message else {
            panic!("not a notification: {data}");
        };
        let ServerNotification::LoggingMessageNotification(mut log) = n.notification else {
            panic!("not a log line: {data}");
        };
        let id = take(&mut log.extensions);
        (id, log.extensions.get::<NotificationMetaObject>().cloned())
    }

    #[test]
    fn a_log_line_on_a_calls_stream_is_marked_and_the_mark_taken_back() {
        let mut data = LINE.to_owned();
        mark_event(&mut data, Some(&RequestId::Number(7)));
        assert_eq!(taken(&data), (Some(RequestId::Number(7)), None));
        // Other messages pass untouched.
        let mut other = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#.to_owned();
        mark_event(&mut other, Some(&RequestId::Number(7)));
        assert_eq!(other, r#"{"jsonrpc":"2.0","id":7,"result":{}}"#);
    }

    #[test]
    fn an_upstreams_own_mark_is_removed_or_overwritten() {
        let forged = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"level":"info","data":"x","_meta":{{"{RELATED}":99,"keep":1}}}}}}"#
        );
        let mut on_get_stream = forged.clone();
        mark_event(&mut on_get_stream, None);
        let (id, meta) = taken(&on_get_stream);
        assert_eq!(id, None);
        assert_eq!(meta.map(|m| m.0 .0.len()), Some(1), "other keys stay");
        let mut on_call_stream = forged;
        mark_event(&mut on_call_stream, Some(&RequestId::Number(3)));
        assert_eq!(taken(&on_call_stream).0, Some(RequestId::Number(3)));
    }
}
