//! A JSON or MessagePack payload parsed once into a flat tape that borrows
//! it, read in place by the JSON Schema validator (a
//! [`jsonschema::json::Json`] representation).
//!
//! Building a `serde_json::Value` allocated a map node per member and a
//! `String` per string, about five times the cost of the parse itself for
//! a 1 KiB order. The tape is three vectors: values, object members and
//! array elements; a string without escapes is a slice of the payload.
//! The format's serde parser does the parsing (serde_json: grammar, UTF-8,
//! escapes, numbers; rmp-serde: markers and lengths), so JSON is accepted
//! exactly as serde_json accepts it, with one exception on purpose:
//!
//! **An object with a repeated member name is refused** (`duplicateKey`).
//! `serde_json::Value` kept the last value; parsers in other languages keep
//! the first. A payload `{"status": "void", …, "status": "paid"}` passed a
//! schema allowing only `paid` while a first-wins consumer read `void`. The
//! same holds for a MessagePack map.
//!
//! MessagePack is read into the JSON data model: maps with string keys,
//! arrays, strings, booleans, nil, integers and floats. What has no JSON
//! equivalent is refused as not parsed: binary strings, extension types,
//! non-string keys, NaN and infinite floats; so are bytes after the value.
//!
//! Nesting is limited as the parser goes: it refuses the first array or
//! object one level too deep, having built nothing deep.
//!
//! Members are kept sorted by name (as `Value`'s `BTreeMap` iterated them),
//! so a lookup is a binary search and errors name members in the same order.

use jsonschema::json::{Array, Json, Node, NodeIdentity, Object, cmp};
use jsonschema::types::JsonType;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;

/// One value of the tape.
enum Item<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    /// Its elements: `elements[start..end]`.
    Array(u32, u32),
    /// Its members: `members[start..end]`, sorted by name.
    Object(u32, u32),
}

/// The encodings a tape reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    MessagePack,
}

/// A parsed document.
pub struct Tape<'a> {
    items: Vec<Item<'a>>,
    members: Vec<(Cow<'a, str>, u32)>,
    elements: Vec<u32>,
    root: u32,
}

/// Why a payload gave no tape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapeError {
    /// Not a document of its format, or a value JSON has not.
    Parse,
    /// Arrays and objects nested deeper than the limit given.
    Depth,
    /// An object names a member twice; the JSON Pointer of the second one.
    Duplicate(String),
}

/// The tape under construction, with stacks for the containers still open.
struct Builder<'a> {
    tape: Tape<'a>,
    open_members: Vec<(Cow<'a, str>, u32)>,
    open_elements: Vec<u32>,
    /// Set when a duplicate is found: its path, innermost segment first.
    duplicate: Option<Vec<String>>,
    /// Arrays and objects open, and the most allowed.
    depth: usize,
    depth_max: usize,
    too_deep: bool,
}

impl<'a> Builder<'a> {
    /// Enters an array or object; `Err` when that is one level too deep.
    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        self.depth += 1;
        if self.depth > self.depth_max {
            self.too_deep = true;
            return Err(E::custom("nested too deep"));
        }
        Ok(())
    }

    /// Leaves the array or object `container` makes of the range it is
    /// given; yields its index.
    fn leave<E: de::Error>(
        &mut self,
        range: (u32, u32),
        container: fn(u32, u32) -> Item<'a>,
    ) -> Result<u32, E> {
        self.depth -= 1;
        self.tape
            .push(container(range.0, range.1))
            .map_err(too_large)
    }
}

/// Moves a closed container's entries, `open[from..]`, to the end of
/// `closed`; yields their range there.
fn close<T, E: de::Error>(
    open: &mut Vec<T>,
    from: usize,
    closed: &mut Vec<T>,
) -> Result<(u32, u32), E> {
    let start = index(closed.len())?;
    closed.extend(open.drain(from..));
    Ok((start, index(closed.len())?))
}

impl<'a> Tape<'a> {
    /// Parses `payload`, one whole document of `format` (JSON: blanks may
    /// follow it; MessagePack: nothing may), refusing arrays and objects
    /// nested more than `depth_max` deep as soon as the parser reaches one.
    pub fn parse(
        payload: &'a [u8],
        format: Format,
        depth_max: usize,
    ) -> Result<Tape<'a>, TapeError> {
        let mut builder = Builder {
            tape: Tape {
                // A value takes at least two bytes of text, most more.
                items: Vec::with_capacity(payload.len() / 8),
                members: Vec::new(),
                elements: Vec::new(),
                root: 0,
            },
            open_members: Vec::new(),
            open_elements: Vec::new(),
            duplicate: None,
            depth: 0,
            depth_max,
            too_deep: false,
        };
        let read = match format {
            Format::Json => {
                let mut deserializer = serde_json::Deserializer::from_slice(payload);
                match Seed(&mut builder).deserialize(&mut deserializer) {
                    Ok(root) => deserializer.end().map(|()| root).map_err(|_| ()),
                    Err(_) => Err(()),
                }
            }
            Format::MessagePack => {
                let mut deserializer = rmp_serde::Deserializer::from_read_ref(payload);
                // rmp-serde's own limit, above ours so ours speaks first;
                // it also bounds the look past the value below.
                deserializer.set_max_depth(depth_max + 2);
                match Seed(&mut builder).deserialize(&mut deserializer) {
                    // Only the end of the payload may follow the value: the
                    // next marker must be unreadable for want of bytes.
                    Ok(root) => match IgnoredAny::deserialize(&mut deserializer) {
                        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
                            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                        {
                            Ok(root)
                        }
                        _ => Err(()),
                    },
                    Err(_) => Err(()),
                }
            }
        };
        match read {
            Ok(root) => {
                builder.tape.root = root;
                Ok(builder.tape)
            }
            Err(()) if builder.too_deep => Err(TapeError::Depth),
            Err(()) => Err(match builder.duplicate.take() {
                Some(mut path) => {
                    path.reverse();
                    TapeError::Duplicate(path.concat())
                }
                None => TapeError::Parse,
            }),
        }
    }

    /// The document's root value.
    pub fn root(&self) -> TapeNode<'_> {
        self.node(self.root)
    }

    fn node(&self, at: u32) -> TapeNode<'_> {
        TapeNode {
            tape: self,
            item: &self.items[at as usize],
        }
    }

    fn push(&mut self, item: Item<'a>) -> Result<u32, TooLarge> {
        let at = u32::try_from(self.items.len()).map_err(|_| TooLarge)?;
        self.items.push(item);
        Ok(at)
    }
}

/// More values than a `u32` counts (never within a payload size limit).
struct TooLarge;

fn too_large<E: de::Error>(_: TooLarge) -> E {
    E::custom("document too large")
}

fn index<E: de::Error>(n: usize) -> Result<u32, E> {
    u32::try_from(n).map_err(|_| too_large(TooLarge))
}

/// A JSON Pointer segment for member `name` (RFC 6901 escapes).
fn pointer_segment(name: &str) -> String {
    format!("/{}", name.replace('~', "~0").replace('/', "~1"))
}

/// Parses one value into the builder; yields its index.
struct Seed<'b, 'a>(&'b mut Builder<'a>);

impl<'a> DeserializeSeed<'a> for Seed<'_, 'a> {
    type Value = u32;

    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<u32, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for Seed<'_, 'a> {
    type Value = u32;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<u32, E> {
        self.0.tape.push(Item::Null).map_err(too_large)
    }

    fn visit_none<E: de::Error>(self) -> Result<u32, E> {
        self.visit_unit()
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<u32, E> {
        self.0.tape.push(Item::Bool(v)).map_err(too_large)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
        self.0.tape.push(Item::Number(v.into())).map_err(too_large)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
        self.0.tape.push(Item::Number(v.into())).map_err(too_large)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u32, E> {
        // NaN and infinities (MessagePack has them) are no JSON number.
        let number = Number::from_f64(v).ok_or_else(|| E::custom("not a JSON number"))?;
        self.0.tape.push(Item::Number(number)).map_err(too_large)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'a str) -> Result<u32, E> {
        let item = Item::String(Cow::Borrowed(v));
        self.0.tape.push(item).map_err(too_large)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
        let item = Item::String(Cow::Owned(v.to_owned()));
        self.0.tape.push(item).map_err(too_large)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<u32, E> {
        self.0
            .tape
            .push(Item::String(Cow::Owned(v)))
            .map_err(too_large)
    }

    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<u32, A::Error> {
        let builder = self.0;
        builder.enter()?;
        let open = builder.open_elements.len();
        loop {
            match seq.next_element_seed(Seed(&mut *builder)) {
                Ok(Some(at)) => builder.open_elements.push(at),
                Ok(None) => break,
                Err(e) => {
                    let position = builder.open_elements.len() - open;
                    if let Some(path) = builder.duplicate.as_mut() {
                        path.push(format!("/{position}"));
                    }
                    return Err(e);
                }
            }
        }
        let range = close(&mut builder.open_elements, open, &mut builder.tape.elements)?;
        builder.leave(range, Item::Array)
    }

    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<u32, A::Error> {
        let builder = self.0;
        builder.enter()?;
        let open = builder.open_members.len();
        while let Some(name) = map.next_key_seed(Name)? {
            match map.next_value_seed(Seed(&mut *builder)) {
                Ok(at) => builder.open_members.push((name, at)),
                Err(e) => {
                    if let Some(path) = builder.duplicate.as_mut() {
                        path.push(pointer_segment(&name));
                    }
                    return Err(e);
                }
            }
        }
        let members = &mut builder.open_members[open..];
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = members.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            builder.duplicate = Some(vec![pointer_segment(&pair[0].0)]);
            return Err(de::Error::custom("duplicate member name"));
        }
        let range = close(&mut builder.open_members, open, &mut builder.tape.members)?;
        builder.leave(range, Item::Object)
    }
}

/// Reads a member name, borrowed from the payload when it has no escapes.
struct Name;

impl<'a> DeserializeSeed<'a> for Name {
    type Value = Cow<'a, str>;

    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<Cow<'a, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'a> Visitor<'a> for Name {
    type Value = Cow<'a, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'a str) -> Result<Cow<'a, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'a, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'a, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// The tape as a JSON representation for the validator.
pub struct TapeJson;

/// One value of a tape.
#[derive(Clone, Copy)]
pub struct TapeNode<'a> {
    tape: &'a Tape<'a>,
    item: &'a Item<'a>,
}

/// An object of a tape: its members, sorted by name.
pub struct TapeObject<'a> {
    tape: &'a Tape<'a>,
    members: &'a [(Cow<'a, str>, u32)],
}

/// An array of a tape.
pub struct TapeArray<'a> {
    tape: &'a Tape<'a>,
    elements: &'a [u32],
}

impl Json for TapeJson {
    type Node<'a> = TapeNode<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = ();

    // A lookup is a binary search over sorted names, as `Value`'s was.
    const KEYS_PER_LOOKUP: usize = 2;
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<T>((): &mut (), string: &str, f: impl FnOnce(TapeNode<'_>) -> T) -> T {
        let tape = Tape {
            items: Vec::new(),
            members: Vec::new(),
            elements: Vec::new(),
            root: 0,
        };
        let item = Item::String(Cow::Borrowed(string));
        f(TapeNode {
            tape: &tape,
            item: &item,
        })
    }
}

impl<'a> Node<'a, TapeJson> for TapeNode<'a> {
    type Object = TapeObject<'a>;
    type Array = TapeArray<'a>;
    type Number = &'a Number;

    fn as_object(&self) -> Option<TapeObject<'a>> {
        match self.item {
            Item::Object(start, end) => Some(TapeObject {
                tape: self.tape,
                members: &self.tape.members[*start as usize..*end as usize],
            }),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<TapeArray<'a>> {
        match self.item {
            Item::Array(start, end) => Some(TapeArray {
                tape: self.tape,
                elements: &self.tape.elements[*start as usize..*end as usize],
            }),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self.item {
            Item::String(s) => Some(Cow::Borrowed(s.as_ref())),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<&'a Number> {
        match self.item {
            Item::Number(n) => Some(n),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.item {
            Item::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.item, Item::Null)
    }

    fn json_type(&self) -> JsonType {
        match self.item {
            Item::Null => JsonType::Null,
            Item::Bool(_) => JsonType::Boolean,
            Item::Number(_) => JsonType::Number,
            Item::String(_) => JsonType::String,
            Item::Array(..) => JsonType::Array,
            Item::Object(..) => JsonType::Object,
        }
    }

    fn string_length_within(&self, min: u64, max: u64) -> Option<bool> {
        let Item::String(s) = self.item else {
            return None;
        };
        // A code point takes one to four bytes: often the byte length
        // decides without counting.
        let bytes = s.len() as u64;
        let fewest = bytes.div_ceil(4);
        if bytes < min || fewest > max {
            return Some(false);
        }
        if min <= fewest && bytes <= max {
            return Some(true);
        }
        Some((min..=max).contains(&(s.chars().count() as u64)))
    }

    fn equals_value(&self, expected: &Value) -> bool {
        // `enum` and `const` of strings, booleans and null without building
        // a value; numbers and containers compare as JSON Schema says.
        match (self.item, expected) {
            (Item::String(s), Value::String(e)) => s == e,
            (Item::String(_), _) => false,
            (Item::Bool(b), Value::Bool(e)) => b == e,
            (Item::Bool(_), _) => false,
            (Item::Null, e) => e.is_null(),
            _ => cmp::equal(&self.to_value(), expected),
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(self.value())
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(std::ptr::from_ref(self.item) as usize))
    }
}

impl TapeNode<'_> {
    /// The value as a `serde_json::Value` (for error reports and the few
    /// keywords that compare whole values).
    pub fn value(&self) -> Value {
        match self.item {
            Item::Null => Value::Null,
            Item::Bool(b) => Value::Bool(*b),
            Item::Number(n) => Value::Number(n.clone()),
            Item::String(s) => Value::String(s.as_ref().to_owned()),
            Item::Array(start, end) => Value::Array(
                self.tape.elements[*start as usize..*end as usize]
                    .iter()
                    .map(|at| self.tape.node(*at).value())
                    .collect(),
            ),
            Item::Object(start, end) => Value::Object(
                self.tape.members[*start as usize..*end as usize]
                    .iter()
                    .map(|(name, at)| (name.as_ref().to_owned(), self.tape.node(*at).value()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }
}

/// Members of a tape object, in name order.
pub struct Members<'a> {
    tape: &'a Tape<'a>,
    members: std::slice::Iter<'a, (Cow<'a, str>, u32)>,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, TapeNode<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (name, at) = self.members.next()?;
        Some((name.as_ref(), self.tape.node(*at)))
    }
}

impl<'a> Object<'a, TapeJson> for TapeObject<'a> {
    type Node = TapeNode<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        self.members.len()
    }

    fn get(&self, key: &Box<str>) -> Option<TapeNode<'a>> {
        let key: &str = key;
        let at = self
            .members
            .binary_search_by(|(name, _)| name.as_ref().cmp(key))
            .ok()?;
        Some(self.tape.node(self.members[at].1))
    }

    fn members(&self) -> Members<'a> {
        Members {
            tape: self.tape,
            members: self.members.iter(),
        }
    }
}

/// Elements of a tape array, in order.
pub struct Elements<'a> {
    tape: &'a Tape<'a>,
    elements: std::slice::Iter<'a, u32>,
}

impl<'a> Iterator for Elements<'a> {
    type Item = TapeNode<'a>;

    fn next(&mut self) -> Option<TapeNode<'a>> {
        let at = self.elements.next()?;
        Some(self.tape.node(*at))
    }
}

impl<'a> Array<'a, TapeJson> for TapeArray<'a> {
    type Node = TapeNode<'a>;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        self.elements.len()
    }

    fn elements(&self) -> Elements<'a> {
        Elements {
            tape: self.tape,
            elements: self.elements.iter(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tape_meets_the_validators_contract() {
        let text = jsonschema::json::conformance::document().to_string();
        let tape = Tape::parse(text.as_bytes(), Format::Json, 64).unwrap();
        jsonschema::json::conformance::assert_conformance::<TapeJson>(&tape.root());
    }

    #[test]
    fn a_tape_reads_back_as_the_value_serde_json_parses() {
        let texts = [
            r#"{"b": [1, -2, 3.5, 1e300, "x\"y", null, true], "a": {"z": {}, "y": []}, "\u00e9": "é"}"#,
            r#"[18446744073709551615, -9223372036854775808, 0.1, "", "\ud83d\ude00"]"#,
            r#"  "just a string"  "#,
            "12",
            "{}",
        ];
        for text in texts {
            let value: Value = serde_json::from_str(text).unwrap();
            let tape = Tape::parse(text.as_bytes(), Format::Json, 64).unwrap();
            assert_eq!(tape.root().value(), value, "{text}");
        }
    }

    #[test]
    fn what_serde_json_refuses_the_tape_refuses() {
        for text in [
            "",
            "{",
            "[1,]",
            r#"{"a" 1}"#,
            "1 2",
            r#""\ud800""#,
            "nul",
            "[01]",
            "1e400",
        ] {
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
            assert_eq!(
                Tape::parse(text.as_bytes(), Format::Json, 64).err(),
                Some(TapeError::Parse),
                "{text}"
            );
        }
        assert_eq!(
            Tape::parse(b"\xff", Format::Json, 64).err(),
            Some(TapeError::Parse),
            "not UTF-8"
        );
    }

    #[test]
    fn a_repeated_member_name_is_refused_with_its_path() {
        let cases = [
            (r#"{"a": 1, "a": 2}"#, "/a"),
            (r#"{"x": [0, {"k": 1, "j": 2, "k": 3}]}"#, "/x/1/k"),
            (r#"{"a/b~": {"s": 1, "s": 1}}"#, "/a~1b~0/s"),
            (r#"{"\u0061": 1, "a": 1}"#, "/a"),
        ];
        for (text, path) in cases {
            assert_eq!(
                Tape::parse(text.as_bytes(), Format::Json, 64).err(),
                Some(TapeError::Duplicate(path.into())),
                "{text}"
            );
        }
    }

    #[test]
    fn nesting_past_the_limit_is_refused_whatever_follows() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(Tape::parse(deep(3).as_bytes(), Format::Json, 3).is_ok());
        assert_eq!(
            Tape::parse(deep(4).as_bytes(), Format::Json, 3).err(),
            Some(TapeError::Depth)
        );
        let objects = r#"{"a": {"b": {"c": {"d": 1}}}}"#;
        assert!(Tape::parse(objects.as_bytes(), Format::Json, 4).is_ok());
        assert_eq!(
            Tape::parse(objects.as_bytes(), Format::Json, 3).err(),
            Some(TapeError::Depth)
        );
        // Deeper than serde_json's own limit (128), and unterminated.
        assert_eq!(
            Tape::parse("[".repeat(100_000).as_bytes(), Format::Json, 64).err(),
            Some(TapeError::Depth)
        );
        // Depth counts open containers, not containers seen.
        let wide = format!("[{}]", vec!["[[1]]"; 50].join(","));
        assert!(Tape::parse(wide.as_bytes(), Format::Json, 3).is_ok());
    }

    #[test]
    fn lookups_find_every_member_of_a_large_object() {
        let members: Vec<String> = (0..500).map(|i| format!("\"k{i}\": {i}")).collect();
        let text = format!("{{{}}}", members.join(","));
        let tape = Tape::parse(text.as_bytes(), Format::Json, 64).unwrap();
        let object = tape.root().as_object().unwrap();
        assert_eq!(object.len(), 500);
        for i in 0..500u64 {
            let found = object.get(&TapeJson::prepare_key(&format!("k{i}")));
            assert_eq!(
                found.and_then(|n| n.as_number().and_then(|n| n.as_u64())),
                Some(i)
            );
        }
        assert!(object.get(&TapeJson::prepare_key("k500")).is_none());
    }
}
