//! How `signet sub` prints a message: one JSON line with its offset, topic,
//! key id, seq, timestamps, content type and payload. The payload is JSON
//! when its content type is JSON and it parses, a string when it is UTF-8,
//! base64 otherwise; `payload_encoding` says which (`json`, `utf8`, `base64`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use signet_client::Message;

fn is_json_type(content_type: &str) -> bool {
    let essence = signet_proto::envelope::content_type_essence(content_type);
    essence == "application/json" || essence.ends_with("+json")
}

/// The payload as (encoding, value).
pub fn payload_value(content_type: &str, payload: &[u8]) -> (&'static str, Value) {
    if is_json_type(content_type)
        && let Ok(v) = serde_json::from_slice::<Value>(payload)
    {
        return ("json", v);
    }
    match std::str::from_utf8(payload) {
        Ok(s) => ("utf8", Value::String(s.to_owned())),
        Err(_) => ("base64", Value::String(B64.encode(payload))),
    }
}

/// The JSON line for a verified message.
pub fn message_json(m: &Message) -> Value {
    let (encoding, payload) = payload_value(&m.content_type, &m.payload);
    let mut v = json!({
        "offset": m.offset,
        "topic": m.topic,
        "key_id": m.key_id.to_hex(),
        "seq": m.seq,
        "timestamp_ms": m.timestamp_ms,
        "received_ms": m.received_ms,
        "content_type": m.content_type,
        "payload_encoding": encoding,
        "payload": payload,
        "verified": true,
    });
    if !m.headers.is_empty() {
        let headers: Vec<Value> = m
            .headers
            .iter()
            .map(|(name, value)| json!({ "name": name, "value_base64": B64.encode(value) }))
            .collect();
        v["headers"] = Value::Array(headers);
    }
    v
}

/// Picks a content type for a payload given without one: JSON if it
/// parses as JSON, text if it is UTF-8, bytes otherwise.
pub fn infer_content_type(payload: &[u8]) -> &'static str {
    use signet_proto::envelope::{CONTENT_TYPE_JSON, CONTENT_TYPE_OCTET, CONTENT_TYPE_TEXT};
    if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
        CONTENT_TYPE_JSON
    } else if std::str::from_utf8(payload).is_ok() {
        CONTENT_TYPE_TEXT
    } else {
        CONTENT_TYPE_OCTET
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_encodings() {
        assert_eq!(
            payload_value("application/json", br#"{"id":1}"#),
            ("json", json!({"id":1}))
        );
        assert_eq!(payload_value("application/json", b"not json").0, "utf8");
        assert_eq!(payload_value("text/plain", b"hi"), ("utf8", json!("hi")));
        assert_eq!(
            payload_value("application/octet-stream", &[0xff, 0x00]).0,
            "base64"
        );
    }

    #[test]
    fn infers_content_types() {
        assert_eq!(infer_content_type(br#"{"id":1}"#), "application/json");
        assert_eq!(infer_content_type(b"hello"), "text/plain");
        assert_eq!(infer_content_type(&[0xff]), "application/octet-stream");
    }
}
