//! JSON Schema validation of payloads, the same for the broker (on ingest)
//! and the client (before sending, or after decrypting).
//!
//! A schema file (drafts 7 and 2020-12, chosen by its `$schema`) is
//! compiled once. A payload is checked by content type:
//! - `application/json`: parsed as JSON;
//! - `application/msgpack`: decoded into the JSON data model. Binary
//!   strings, extension types and non-string map keys have no JSON
//!   equivalent and are refused; integers and floats map to JSON numbers
//!   (a NaN or infinite float has no JSON equivalent either: refused), and
//!   nothing may follow the value;
//! - anything else: refused.
//!
//! Either is read in place into a [`tape::Tape`] that borrows the payload
//! (no `serde_json::Value` is built), and an object or map naming a member
//! twice is refused (`duplicateKey`). At most [`DEPTH_MAX`] levels of
//! nesting: the parser refuses the first level below as it reaches it. The
//! broker's payload size limit has already been applied.

use serde_json::Value;
use std::path::{Path, PathBuf};
use tape::{Format, Tape, TapeError, TapeJson};

pub mod tape;

/// Deepest nesting of arrays and objects accepted, checked as the parser
/// reaches each level.
pub const DEPTH_MAX: usize = 64;

/// Why a payload does not fit its topic's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON Pointer to the failing part of the payload (`""` for the root).
    pub instance_path: String,
    /// The schema keyword that failed (`type`, `required`, …), or
    /// `contentType`, `depth`, `parse` or `duplicateKey` (an object or map
    /// naming a member twice) when the payload was not checked.
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
    validator: jsonschema::Validator<TapeJson>,
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
        let validator = jsonschema::options_for::<TapeJson>()
            .build(&json)
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
        let tape = parse_tape(content_type, payload)?;
        if self.validator.is_valid(tape.root()) {
            return Ok(());
        }
        first_violation(self.validator.iter_errors(tape.root()))
    }
}

/// The first of a validator's errors as a [`Violation`] (`Ok` if none).
fn first_violation(mut errors: jsonschema::ErrorIterator<'_>) -> Result<(), Violation> {
    match errors.next() {
        None => Ok(()),
        Some(error) => Err(violation(
            error.instance_path().as_str(),
            error.kind().keyword(),
        )),
    }
}

/// Parses a payload of a JSON or MessagePack content type into a tape,
/// with the limits above.
pub fn parse_tape<'a>(content_type: &str, payload: &'a [u8]) -> Result<Tape<'a>, Violation> {
    let format = match crate::envelope::content_type_essence(content_type) {
        "application/json" => Format::Json,
        "application/msgpack" => Format::MessagePack,
        _ => return Err(violation("", "contentType")),
    };
    Tape::parse(payload, format, DEPTH_MAX).map_err(|e| match e {
        TapeError::Parse => violation("", "parse"),
        TapeError::Depth => violation("", "depth"),
        TapeError::Duplicate(path) => violation(&path, "duplicateKey"),
    })
}

/// Parses a payload into the JSON data model, with the limits above.
pub fn parse(content_type: &str, payload: &[u8]) -> Result<Value, Violation> {
    Ok(parse_tape(content_type, payload)?.root().value())
}

/// Entry points for fuzz targets (`fuzz/`) and the corpus replay test
/// (`tests/fuzz_corpus.rs`): no value nested deeper than [`DEPTH_MAX`] gets
/// through, JSON read in place is what serde_json parses (refused only when
/// too deep or naming a member twice), and accepted MessagePack round-trips.
/// Each panics only on a bug.
pub mod fuzzing {
    use super::{DEPTH_MAX, Value, parse};

    /// Nesting of arrays and objects in a parsed value (scalars are 0).
    fn depth(value: &Value) -> usize {
        match value {
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// A JSON payload: read as serde_json parses it, or refused for a reason.
    pub fn json(data: &[u8]) {
        let parsed = parse("application/json", data);
        match serde_json::from_slice::<Value>(data) {
            Ok(value) => match &parsed {
                Ok(read) => {
                    assert!(depth(&value) <= DEPTH_MAX);
                    assert_eq!(read, &value, "read in place as serde_json parses");
                }
                Err(refused) => assert!(
                    (depth(&value) > DEPTH_MAX && refused.keyword == "depth")
                        || refused.keyword == "duplicateKey",
                    "valid JSON refused: {refused}"
                ),
            },
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
    fn json_depth_counts_containers_not_brackets_in_strings() {
        let at = |depth: usize| {
            let inner = format!(r#"{{"a":"[[[[","b":[{}]}}"#, "1");
            let text = format!("{}{inner}{}", "[".repeat(depth - 2), "]".repeat(depth - 2));
            parse("application/json", text.as_bytes())
        };
        assert!(at(DEPTH_MAX).is_ok());
        assert_eq!(at(DEPTH_MAX + 1), Err(violation("", "depth")));
        assert_eq!(
            parse("application/json", br#""\"[""#),
            Ok(Value::String("\"[".into()))
        );
    }

    #[test]
    fn msgpack_depth_counts_containers_and_malformed_input_is_not_parsed() {
        let nested: Value = serde_json::json!({"a": [1, {"b": [[]]}], "c": "x"});
        let bytes = rmp_serde::to_vec(&nested).unwrap();
        assert_eq!(parse("application/msgpack", &bytes), Ok(nested));
        // fixarray of one, DEPTH_MAX and DEPTH_MAX + 1 deep around an int.
        for (levels, verdict) in [(DEPTH_MAX, None), (DEPTH_MAX + 1, Some("depth"))] {
            let mut deep = vec![0x91; levels];
            deep.push(0x01);
            let parsed = parse("application/msgpack", &deep);
            assert_eq!(parsed.err().map(|v| v.keyword), verdict.map(String::from));
        }
        let mut unterminated = vec![0x91; 100_000];
        unterminated.push(0x91);
        assert_eq!(
            parse("application/msgpack", &unterminated)
                .unwrap_err()
                .keyword,
            "depth"
        );
        for malformed in [
            &[0xdd, 0xff][..],
            &[0xdd, 0xff, 0xff, 0xff, 0xff],
            &[0xc1],
            &[],
        ] {
            assert_eq!(
                parse("application/msgpack", malformed).unwrap_err().keyword,
                "parse",
                "{malformed:?}"
            );
        }
        assert_eq!(
            parse("application/msgpack", &[0x01, 0x02])
                .unwrap_err()
                .keyword,
            "parse",
            "bytes after the value"
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
        // fixext 1
        assert_eq!(
            parse("application/msgpack", &[0xd4, 0x01, 0x02])
                .unwrap_err()
                .keyword,
            "parse"
        );
        // a str that is not UTF-8
        assert_eq!(
            parse("application/msgpack", &[0xa1, 0xff])
                .unwrap_err()
                .keyword,
            "parse"
        );
        // map {"a": 1, "a": 2}
        assert_eq!(
            parse("application/msgpack", &[0x82, 0xa1, b'a', 1, 0xa1, b'a', 2]),
            Err(violation("/a", "duplicateKey"))
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

    /// The example order schema, compiled from the repository's file.
    fn orders() -> Schema {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/orders.created.json");
        Schema::load(&path).unwrap()
    }

    /// The verdict of a validator of `serde_json::Value`s (what `check`
    /// used before payloads were read in place).
    fn value_verdict(validator: &jsonschema::Validator, value: &Value) -> Result<(), Violation> {
        first_violation(validator.iter_errors(value))
    }

    #[test]
    fn json_read_in_place_gets_the_verdict_a_parsed_value_gets() {
        let schema = orders();
        let text = std::fs::read_to_string(schema.path()).unwrap();
        let values = jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap();
        let order = serde_json::json!({
            "id": 7, "status": "paid", "customer_id": "C00012345", "currency": "EUR",
            "total_cents": 125_990, "created_at": "2026-11-24T10:00:00Z", "channel": "web",
            "priority": 3, "gift": false, "coupon": null, "tags": ["web", "new"],
            "shipping": { "street": "1 Main St", "city": "Paris", "zip": "75002", "country": "FR" },
            "items": [{ "sku": "SKU-1", "qty": 2, "price_cents": 100 }],
            "metadata": { "campaign": "winter" }, "note": "n"
        });
        let odd = [
            serde_json::json!(null),
            serde_json::json!(true),
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!(1.5),
            serde_json::json!(1e20),
            serde_json::json!(100_000_001),
            serde_json::json!(""),
            serde_json::json!("x".repeat(600)),
            serde_json::json!("é".repeat(40)),
            serde_json::json!("C12"),
            serde_json::json!("fr"),
            serde_json::json!("paid"),
            serde_json::json!(["a", 1]),
            serde_json::json!([]),
            serde_json::json!({}),
            serde_json::json!({"city": "x"}),
            serde_json::json!({"sku": "SKU-1", "qty": 0}),
            serde_json::json!([{"sku": "bad sku", "qty": 1}]),
        ];
        let mut documents = vec![order.clone(), serde_json::json!([]), serde_json::json!("x")];
        let serde_json::Value::Object(fields) = &order else {
            unreachable!()
        };
        for name in fields.keys().map(String::as_str).chain(["extra"]) {
            let mut without = order.clone();
            without.as_object_mut().unwrap().remove(name);
            documents.push(without);
            for value in &odd {
                let mut changed = order.clone();
                changed[name] = value.clone();
                documents.push(changed);
            }
        }
        let mut refused = 0;
        for document in &documents {
            let text = document.to_string();
            let expected = value_verdict(&values, document);
            refused += usize::from(expected.is_err());
            assert_eq!(
                schema.check("application/json", text.as_bytes()),
                expected,
                "{text}"
            );
            let packed = rmp_serde::to_vec_named(document).unwrap();
            assert_eq!(
                schema.check("application/msgpack", &packed),
                expected,
                "{text} as MessagePack"
            );
        }
        assert!(refused > documents.len() / 2, "the cases exercise refusals");
        assert!(documents.len() > 300);
    }

    #[test]
    fn a_member_named_twice_is_refused_even_when_both_values_fit() {
        let schema = orders();
        let text = br#"{"id": 1, "status": "cancelled", "status": "paid"}"#;
        assert_eq!(
            schema.check("application/json", text),
            Err(violation("/status", "duplicateKey"))
        );
        let nested = br#"{"id": 1, "items": [{"sku": "A-1", "qty": 1, "qty": 2}]}"#;
        assert_eq!(
            schema.check("application/json; charset=utf-8", nested),
            Err(violation("/items/0/qty", "duplicateKey"))
        );
    }

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
