//! `/readyz`: ready once every configured upstream has been tried.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;

use super::Body;
use crate::gateway::Gateway;

/// 200 when every upstream's first connection attempt has finished (up or
/// not: a dead upstream must not keep the gateway out of rotation), else
/// 503. The body lists each upstream's state.
pub(super) fn ready(gateway: &Gateway) -> Response<Body> {
    let upstreams = gateway.registry().upstreams();
    let ready = upstreams.values().all(|u| u.tried());
    let states: serde_json::Map<String, serde_json::Value> = upstreams
        .iter()
        .map(|(name, u)| {
            (
                name.to_string(),
                serde_json::to_value(u.health()).unwrap_or_default(),
            )
        })
        .collect();
    let body = json!({ "ready": ready, "sessions": gateway.session_count(), "upstreams": states });
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *resp.status_mut() = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
