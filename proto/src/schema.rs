//! JSON Schema validation of payloads, the same for the broker (on ingest)
//! and the client (before sending, or after decrypting).
//!
//! A schema file (drafts 7 and 2020-12, chosen by its `$schema`) is
//! compiled once. A payload is checked by content type:
//! - `application/json`: parsed as JSON;
//! - `application/msgpack`: decoded with rmp-serde into the JSON data model.
//!   Binary strings, extension types and non-string map keys have no JSON
//!   equivalent and are refused; integers and floats map to JSON numbers
//!   (a NaN or infinite float has no JSON equivalent either: refused);
//! - anything else: refused.
//!
//! Limits apply before parsing: at most [`DEPTH_MAX`] levels of nesting
//! (found by a scan that allocates nothing), and the broker's payload size
//! limit has already been applied.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// Deepest nesting of arrays and objects accepted, checked before parsing.
pub const DEPTH_MAX: usize = 64;

/// Why a payload does not fit its topic's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON Pointer to the failing part of the payload (`""` for the root).
    pub instance_path: String,
    /// The schema keyword that failed (`type`, `required`, …), or
    /// `contentType`, `depth` or `parse` when the payload was not checked.
    pub keyword: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.instance_path.is_empty() {
            "/"
        } else {
            &self.instance_path
        };
        write!(f, "at {path}: {}", self.keyword)
    }
}

fn violation(instance_path: &str, keyword: &str) -> Violation {
    Violation {
        instance_path: instance_path.to_owned(),
        keyword: keyword.to_owned(),
    }
}

/// A compiled schema.
pub struct Schema {
    validator: jsonschema::Validator,
    path: PathBuf,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Schema({})", self.path.display())
    }
}

impl Schema {
    /// Reads and compiles a schema file. The error names the file and the reason.
    pub fn load(path: &Path) -> Result<Schema, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("schema {}: {e}", path.display()))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| format!("schema {}: not JSON: {e}", path.display()))?;
        let validator = jsonschema::validator_for(&json)
            .map_err(|e| format!("schema {}: does not compile: {e}", path.display()))?;
        Ok(Schema {
            validator,
            path: path.to_owned(),
        })
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks a payload; `Err` names the first violation.
    pub fn check(&self, content_type: &str, payload: &[u8]) -> Result<(), Violation> {
        let value = parse(content_type, payload)?;
        if self.validator.is_valid(&value) {
            return Ok(());
        }
        match self.validator.iter_errors(&value).next() {
            None => Ok(()),
            Some(error) => Err(violation(
                error.instance_path().as_str(),
                error.kind().keyword(),
            )),
        }
    }
}

/// Parses a payload into the JSON data model, with the limits above.
pub fn parse(content_type: &str, payload: &[u8]) -> Result<Value, Violation> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match essence {
        "application/json" => {
            if json_depth(payload) > DEPTH_MAX {
                return Err(violation("", "depth"));
            }
            serde_json::from_slice(payload).map_err(|_| violation("", "parse"))
        }
        "application/msgpack" => {
            let shape = msgpack_shape(payload);
            if shape.depth > DEPTH_MAX {
                return Err(violation("", "depth"));
            }
            let value: Value =
                rmp_serde::from_slice(payload).map_err(|_| violation("", "parse"))?;
            // serde_json has no NaN or infinity: such a float decodes as
            // null. More nulls than nil markers means one did.
            if count_nulls(&value) > shape.nils {
                return Err(violation("", "parse"));
            }
            Ok(value)
        }
        _ => Err(violation("", "contentType")),
    }
}

/// Deepest nesting of `[`/`{` outside strings. Scans once, allocates nothing;
/// inside a string it jumps to the next quote or backslash (`memchr`), so
/// long strings cost little.
fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'"' => loop {
                // Inside a string: to its closing quote, skipping escapes.
                match memchr::memchr2(b'"', b'\\', bytes.get(i..).unwrap_or(&[])) {
                    Some(at) if bytes.get(i + at) == Some(&b'\\') => i += at + 2,
                    Some(at) => {
                        i += at + 1;
                        break;
                    }
                    None => return deepest,
                }
            },
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// What a walk over MessagePack markers found.
struct Shape {
    /// Deepest nesting of arrays and maps (above the limit when malformed).
    depth: usize,
    /// Nil values.
    nils: usize,
}

fn msgpack_shape(bytes: &[u8]) -> Shape {
    let mut nils = 0;
    let depth = msgpack_walk(bytes, &mut nils);
    Shape { depth, nils }
}

/// Deepest nesting of MessagePack arrays and maps, walking the markers
/// without decoding values; counts nils on the way. Malformed input returns
/// a depth above the limit.
fn msgpack_walk(bytes: &[u8], nils: &mut usize) -> usize {
    // A stack of "items left" per open container.
    let mut stack: Vec<u64> = Vec::new();
    let mut deepest = 0;
    let mut i = 0usize;
    let too_deep = DEPTH_MAX + 1;
    let read_len = |i: usize, n: usize| -> Option<u64> {
        let s = bytes.get(i..i + n)?;
        Some(s.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    while i < bytes.len() {
        let m = bytes[i];
        i += 1;
        if m == 0xc0 {
            *nils += 1;
        }
        // (container items to open, bytes to skip)
        let (items, skip): (Option<u64>, u64) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (None, 0),
            0x80..=0x8f => (Some(u64::from(m & 0x0f) * 2), 0),
            0x90..=0x9f => (Some(u64::from(m & 0x0f)), 0),
            0xa0..=0xbf => (None, u64::from(m & 0x1f)),
            0xc4 | 0xd9 => (None, read_len(i, 1).map_or(u64::MAX, |l| l + 1)),
            0xc5 | 0xda => (None, read_len(i, 2).map_or(u64::MAX, |l| l + 2)),
            0xc6 | 0xdb => (None, read_len(i, 4).map_or(u64::MAX, |l| l + 4)),
            0xc7 => (None, read_len(i, 1).map_or(u64::MAX, |l| l + 2)),
            0xc8 => (None, read_len(i, 2).map_or(u64::MAX, |l| l + 3)),
            0xc9 => (None, read_len(i, 4).map_or(u64::MAX, |l| l + 5)),
            0xca => (None, 4),
            0xcb => (None, 8),
            0xcc | 0xd0 => (None, 1),
            0xcd | 0xd1 => (None, 2),
            0xce | 0xd2 => (None, 4),
            0xcf | 0xd3 => (None, 8),
            0xd4 => (None, 2),
            0xd5 => (None, 3),
            0xd6 => (None, 5),
            0xd7 => (None, 9),
            0xd8 => (None, 17),
            0xdc => (read_len(i, 2), 2),
            0xdd => (read_len(i, 4), 4),
            0xde => (read_len(i, 2).map(|n| n * 2), 2),
            0xdf => (read_len(i, 4).map(|n| n * 2), 4),
            0xc1 => return too_deep,
        };
        let Some(next) = usize::try_from(skip).ok().and_then(|s| i.checked_add(s)) else {
            return too_deep;
        };
        if next > bytes.len() {
            return too_deep;
        }
        i = next;
        // This value fills one slot of the innermost open container.
        if let Some(left) = stack.last_mut() {
            *left = left.saturating_sub(1);
        }
        if matches!(m, 0x80..=0x9f | 0xdc..=0xdf) {
            let Some(n) = items else {
                return too_deep;
            };
            if n > 0 {
                stack.push(n);
                deepest = deepest.max(stack.len());
                if deepest > DEPTH_MAX {
                    return deepest;
                }
            } else {
                deepest = deepest.max(stack.len() + 1);
            }
        }
        while stack.last() == Some(&0) {
            stack.pop();
        }
    }
    deepest
}

fn count_nulls(v: &Value) -> usize {
    match v {
        Value::Null => 1,
        Value::Array(a) => a.iter().map(count_nulls).sum(),
        Value::Object(o) => o.values().map(count_nulls).sum(),
        _ => 0,
    }
}

/// Entry points for fuzz targets (`fuzz/`) and the corpus replay test
/// (`tests/fuzz_corpus.rs`): the depth scans must never let through a value
/// nested deeper than [`DEPTH_MAX`], and the JSON scan measures valid JSON
/// exactly. Each panics only on a bug.
pub mod fuzzing {
    use super::{DEPTH_MAX, Value, json_depth, parse};

    /// Nesting of arrays and objects in a parsed value (scalars are 0).
    fn depth(value: &Value) -> usize {
        match value {
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// A JSON payload: the scan agrees with a full parse.
    pub fn json(data: &[u8]) {
        let scanned = json_depth(data);
        let parsed = parse("application/json", data);
        match serde_json::from_slice::<Value>(data) {
            Ok(value) => {
                assert_eq!(scanned, depth(&value), "scan measures valid JSON exactly");
                assert_eq!(parsed.is_ok(), scanned <= DEPTH_MAX);
            }
            Err(_) => assert!(parsed.is_err(), "invalid JSON is refused"),
        }
        if let Ok(value) = parsed {
            assert!(depth(&value) <= DEPTH_MAX);
        }
    }

    /// A MessagePack payload: what is accepted is no deeper than the limit
    /// and re-encodes to a payload accepted as the same value.
    pub fn msgpack(data: &[u8]) {
        if let Ok(value) = parse("application/msgpack", data) {
            assert!(depth(&value) <= DEPTH_MAX);
            let again = rmp_serde::to_vec(&value).expect("a JSON value encodes");
            assert_eq!(
                parse("application/msgpack", &again).ok(),
                Some(value),
                "accepted values round-trip"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth(br#"{"a":[1,{"b":"[[[["}]}"#), 3);
        assert_eq!(json_depth(br#""\"[""#), 0);
        assert_eq!(json_depth(&b"[".repeat(100)), 100);
    }

    #[test]
    fn msgpack_depth_counts_containers() {
        let nested: Value = serde_json::json!({"a": [1, {"b": [[]]}], "c": "x"});
        let bytes = rmp_serde::to_vec(&nested).unwrap();
        assert_eq!(msgpack_shape(&bytes).depth, 5);
        assert_eq!(json_depth(nested.to_string().as_bytes()), 5);
        let mut deep = vec![0x91; 100];
        deep.push(0x01);
        assert!(msgpack_shape(&deep).depth > DEPTH_MAX);
        assert!(
            msgpack_shape(&[0xdd, 0xff]).depth > DEPTH_MAX,
            "truncated length"
        );
    }

    #[test]
    fn msgpack_without_json_equivalent_is_refused() {
        // bin 8 of 2 bytes
        assert_eq!(
            parse("application/msgpack", &[0xc4, 0x02, 1, 2])
                .unwrap_err()
                .keyword,
            "parse"
        );
        // map {1: 2}: integer key
        assert_eq!(
            parse("application/msgpack", &[0x81, 0x01, 0x02])
                .unwrap_err()
                .keyword,
            "parse"
        );
        // float64 NaN
        let mut nan = vec![0xcb];
        nan.extend_from_slice(&f64::NAN.to_be_bytes());
        assert_eq!(
            parse("application/msgpack", &nan).unwrap_err().keyword,
            "parse"
        );
        // a real nil is fine, also beside other values
        assert_eq!(parse("application/msgpack", &[0xc0]).unwrap(), Value::Null);
        assert_eq!(
            parse("application/msgpack", &[0x92, 0xc0, 0xcc, 0x05]).unwrap(),
            serde_json::json!([null, 5])
        );
    }

    #[test]
    fn other_content_types_are_refused() {
        assert_eq!(
            parse("text/plain", b"{}").unwrap_err().keyword,
            "contentType"
        );
        assert!(parse("application/json; charset=utf-8", b"{}").is_ok());
    }
}

#[cfg(test)]
mod draft_tests {
    use super::*;

    #[test]
    fn draft7_and_2020_12_schemas_both_compile_and_validate() {
        let dir = std::env::temp_dir().join(format!("signet-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, draft) in [
            ("d7.json", "http://json-schema.org/draft-07/schema#"),
            ("d2020.json", "https://json-schema.org/draft/2020-12/schema"),
        ] {
            let path = dir.join(name);
            let text = format!(
                r#"{{"$schema":"{draft}","type":"object","required":["id"],"properties":{{"id":{{"type":"integer"}}}}}}"#
            );
            std::fs::write(&path, text).unwrap();
            let schema = Schema::load(&path).unwrap();
            assert!(schema.check("application/json", br#"{"id":1}"#).is_ok());
            assert_eq!(
                schema
                    .check("application/json", br#"{"id":"x"}"#)
                    .unwrap_err(),
                violation("/id", "type")
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
