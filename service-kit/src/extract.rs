//! Request extractors whose rejections are [`ApiError`]s, so bad input always gets the
//! same error shape: the JSON body, and the metadata a command needs.

use crate::auth::{Caller, JwtVerifier};
use crate::error::{ApiError, ErrorCode};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use eventstore::{CommandContext, EventMetadata, IdempotencyRequest};
use http::request::Parts;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The header that carries the request id (set by the layer stack when absent).
pub const REQUEST_ID: &str = "x-request-id";
/// An optional client header that groups the events of one business flow.
pub const CORRELATION_ID: &str = "x-correlation-id";
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A JSON body. Rejections: 415 `unsupported_media_type`, 413 `payload_too_large`,
/// 400 `malformed_json` (not JSON at all), 400 `invalid_body` (JSON of the wrong shape).
#[derive(Debug, Clone)]
pub struct ApiJson<T> {
    pub value: T,
    /// The body re-serialized with sorted keys: equal requests hash equal.
    pub canonical: Vec<u8>,
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = req.headers().get(http::header::CONTENT_TYPE) {
            let ct = content_type.to_str().unwrap_or("").to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or("").trim();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(ApiError::new(ErrorCode::UnsupportedMediaType, "the body must be application/json"));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "the body is too large")
            } else {
                ApiError::new(ErrorCode::MalformedJson, "the body could not be read")
            }
        })?;
        parse_json_body(&bytes)
    }
}

/// Parses a body the way [`ApiJson`] does.
pub fn parse_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<ApiJson<T>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(ErrorCode::MalformedJson, "a JSON body is required"));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorCode::MalformedJson, format!("the body is not valid JSON: {e}")))?;
    // serde would read a struct from an array too (`[5, "EUR"]`); the contract is an object
    if !value.is_object() {
        return Err(ApiError::new(ErrorCode::InvalidBody, "the body must be a JSON object"));
    }
    if holds_nul(&value) {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "the body contains a NUL character (\\u0000), which cannot be stored",
        ));
    }
    let canonical = serde_json::to_vec(&value).map_err(ApiError::internal)?;
    let value = serde_json::from_value(value).map_err(|e| ApiError::new(ErrorCode::InvalidBody, e.to_string()))?;
    Ok(ApiJson { value, canonical })
}

/// Deserializes an optional whole number that JSON may write as a float (`86.0`):
/// JSON Schema counts that as an integer, and so do we.
pub fn optional_whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::Deserialize;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    n.as_i64()
        .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64))
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("expected a whole number, not {n}")))
}

/// The caller and the request metadata a command records with its events.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    pub caller: Caller,
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
    pub idempotency_key: Option<String>,
    method: String,
    path: String,
}

impl CommandMeta {
    /// The command context: metadata for the events and, with an Idempotency-Key,
    /// the hash of this request (method, path, canonical body).
    pub fn context(&self, canonical_body: &[u8], expected_version: Option<i32>) -> CommandContext {
        let idempotency = self.idempotency_key.as_ref().map(|key| {
            let mut hasher = Sha256::new();
            hasher.update(self.method.as_bytes());
            hasher.update(b"\n");
            hasher.update(self.path.as_bytes());
            hasher.update(b"\n");
            hasher.update(canonical_body);
            IdempotencyRequest {
                actor: self.caller.subject.clone(),
                key: key.clone(),
                request_hash: hex::encode(hasher.finalize()),
                optimistic: false,
            }
        });
        CommandContext {
            metadata: EventMetadata {
                correlation_id: self.correlation_id.clone().or_else(|| self.request_id.clone()),
                causation_id: self.request_id.clone(),
                request_id: self.request_id.clone(),
                actor: self.caller.subject.clone(),
                role: Some(self.caller.role.as_str().to_owned()),
                // the request's span (its parent the caller's traceparent)
                traceparent: eventstore::trace::current(),
                ..EventMetadata::default()
            },
            idempotency,
            expected_version,
        }
    }
}

fn header_text(parts: &Parts, name: &str) -> Option<String> {
    parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

impl<S> FromRequestParts<S> for CommandMeta
where
    S: Send + Sync,
    Arc<JwtVerifier>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let idempotency_key = match parts.headers.get(IDEMPOTENCY_KEY) {
            None => None,
            Some(v) => {
                let key = v
                    .to_str()
                    .ok()
                    .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()));
                Some(
                    key.ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::InvalidIdempotencyKey,
                            "Idempotency-Key must be 1 to 255 visible ASCII characters",
                        )
                    })?
                    .to_owned(),
                )
            }
        };
        let correlation_id = header_text(parts, CORRELATION_ID).filter(|c| !c.is_empty() && c.len() <= 128);
        Ok(CommandMeta {
            caller,
            // recorded with every event: a client's id is kept only when it is sane
            request_id: header_text(parts, REQUEST_ID).filter(|r| !r.is_empty() && r.len() <= 128),
            correlation_id,
            idempotency_key,
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
        })
    }
}

/// The `{id}` of a route, as a UUID. Rejections are 400 `invalid_id` in the JSON
/// error shape (axum's own `Path` rejection is plain text, e.g. for `%FF`).
#[derive(Debug, Clone, Copy)]
pub struct PathId(pub uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::new(ErrorCode::InvalidId, "the id in the path is not valid"))?;
        parse_id(&raw).map(PathId)
    }
}

/// Parses an id: 400 `invalid_id` rather than a bare 404.
pub fn parse_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map_err(|_| ApiError::new(ErrorCode::InvalidId, format!("`{}` is not a valid id", truncate(raw, 64))))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Whether any string (or key) of a JSON value holds a NUL character.
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Query parameters, deserialized into `T`: a malformed or mistyped one is 400
/// `invalid_query` in the JSON error shape (axum's own rejection is plain text).
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Postgres text cannot hold NUL: refuse it here rather than fail in a query
        if parts.uri.query().is_some_and(|q| q.contains('\0') || q.to_ascii_lowercase().contains("%00")) {
            return Err(ApiError::new(ErrorCode::InvalidQuery, "a query parameter contains a NUL character"));
        }
        let axum::extract::Query(value) = axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
        Ok(ApiQuery(value))
    }
}

/// Checks that a query parameter lies in `0..=max`: 400 `invalid_query` otherwise.
pub fn in_range(name: &str, value: Option<i64>, max: i64) -> Result<Option<i64>, ApiError> {
    match value {
        Some(n) if !(0..=max).contains(&n) => {
            Err(ApiError::new(ErrorCode::InvalidQuery, format!("{name} must be an integer from 0 to {max}"))
                .with_detail("parameter", name))
        }
        other => Ok(other),
    }
}

/// The largest version a stream reaches (versions are `int4` in the store).
pub const MAX_VERSION: i64 = i32::MAX as i64;

/// `min_version` and `wait_ms` of a read: answer once the stream is at `min_version`,
/// waiting up to `wait` (`wait_ms` capped by the service's wait budget, which always
/// ends before the request timeout).
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    pub min_version: Option<i64>,
    pub wait: std::time::Duration,
}

impl Wait {
    pub fn new(
        min_version: Option<i64>,
        wait_ms: Option<i64>,
        max_wait: std::time::Duration,
    ) -> Result<Wait, ApiError> {
        let min_version = in_range("min_version", min_version, MAX_VERSION)?;
        let wait_ms = in_range("wait_ms", wait_ms, i64::MAX)?.unwrap_or(0).unsigned_abs();
        Ok(Wait { min_version, wait: std::time::Duration::from_millis(wait_ms).min(max_wait) })
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "super::optional_whole")]
        n: Option<i64>,
    }

    fn n(json: &str) -> Result<Option<i64>, String> {
        serde_json::from_str::<Body>(json).map(|b| b.n).map_err(|e| e.to_string())
    }

    #[test]
    fn a_nul_anywhere_in_a_body_is_refused() {
        assert!(super::parse_json_body::<serde_json::Value>(br#"{"a": "x\u0000"}"#).is_err());
        assert!(super::parse_json_body::<serde_json::Value>(br#"{"a": [{"b\u0000": 1}]}"#).is_err());
        assert!(super::parse_json_body::<serde_json::Value>(br#"{"a": "x"}"#).is_ok());
    }

    #[test]
    fn a_whole_number_may_be_written_as_a_float() {
        assert_eq!(n("{}"), Ok(None));
        assert_eq!(n(r#"{"n": null}"#), Ok(None));
        assert_eq!(n(r#"{"n": -3}"#), Ok(Some(-3)));
        assert_eq!(n(r#"{"n": 86.0}"#), Ok(Some(86)));
        for bad in ["1.5", "1e300", "\"7\"", "true"] {
            assert!(n(&format!(r#"{{"n": {bad}}}"#)).is_err(), "{bad} accepted");
        }
    }
}
