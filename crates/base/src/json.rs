//! Strict JSON, for JOSE and for request contracts: documents parsed with duplicate member
//! names refused at every depth (RFC 7515 §5.2 allows rejecting them; two parsers picking
//! different duplicates is a classic confusion), and typed claim accessors that refuse the
//! wrong JSON type.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// What a strict read accepts beyond unique member names: values nested at most `max_depth`
/// deep (the document is at 0), and objects `object` accepts.
#[derive(Clone, Copy)]
struct Rules<'r> {
    max_depth: usize,
    object: &'r dyn Fn(&Map<String, Value>) -> bool,
}

/// Reads one value at `depth` under `rules`.
#[derive(Clone, Copy)]
struct Strict<'r> {
    depth: usize,
    rules: Rules<'r>,
}

impl Strict<'_> {
    fn below(self) -> Self {
        Strict {
            depth: self.depth + 1,
            ..self
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.depth > self.rules.max_depth {
            return Err(de::Error::custom("nested too deep"));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = seq.next_element_seed(self.below())? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(self.below())?;
            if m.insert(k, v).is_some() {
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        if !(self.rules.object)(&m) {
            return Err(de::Error::custom("object refused"));
        }
        Ok(Value::Object(m))
    }
}

/// Parses bytes as one JSON value of any type, refusing duplicate member names at any depth,
/// values nested deeper than `max_depth` (the document is at 0) and objects `object` refuses.
pub fn parse_bounded(
    bytes: &[u8],
    max_depth: usize,
    object: &dyn Fn(&Map<String, Value>) -> bool,
) -> Option<Value> {
    let read = Strict {
        depth: 0,
        rules: Rules { max_depth, object },
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = read.deserialize(&mut de).ok()?;
    // Nothing but whitespace may follow the value.
    de.end().ok()?;
    Some(value)
}

/// Parses bytes as one JSON object, refusing duplicate member names at any depth.
pub fn parse_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match parse_value(bytes) {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Parses bytes as one JSON value of any type, refusing duplicate member names at any depth.
pub fn parse_value(bytes: &[u8]) -> Option<Value> {
    parse_bounded(bytes, usize::MAX, &|_| true)
}

/// A claim read with its JSON type enforced. `Absent` and `WrongType` are different answers:
/// a string `exp` is not a missing `exp` (CVE-2026-25537).
#[derive(Debug, PartialEq)]
pub enum Typed<T> {
    Absent,
    WrongType,
    Present(T),
}

/// A NumericDate (RFC 7519 §2): a finite JSON number, read as whole seconds (fractions are
/// truncated toward negative infinity so a bound is never extended).
pub fn numeric_date(m: &Map<String, Value>, name: &str) -> Typed<i64> {
    match m.get(name) {
        None => Typed::Absent,
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Typed::Present(i)
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15) {
                Typed::Present(f.floor() as i64)
            } else {
                Typed::WrongType
            }
        }
        Some(_) => Typed::WrongType,
    }
}

pub fn string<'a>(m: &'a Map<String, Value>, name: &str) -> Typed<&'a str> {
    match m.get(name) {
        None => Typed::Absent,
        Some(Value::String(s)) => Typed::Present(s.as_str()),
        Some(_) => Typed::WrongType,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_members_are_refused_at_any_depth() {
        assert!(parse_object(br#"{"a":1,"b":{"c":2}}"#).is_some());
        assert!(parse_object(br#"{"a":1,"a":2}"#).is_none());
        assert!(parse_object(br#"{"a":{"c":1,"c":1}}"#).is_none());
        assert!(parse_object(br#"[{"a":1}]"#).is_none());
        assert!(parse_object(b"{\"a\":1} x").is_none());
        assert!(parse_object(b"\xff\xfe{").is_none());
    }

    #[test]
    fn a_bounded_read_refuses_depth_refused_objects_and_trailing_text() {
        let any = |_: &Map<String, Value>| true;
        assert!(parse_bounded(br#"{"a":[1]}"#, 2, &any).is_some());
        // `1` is at depth 2: the object is 0, the array 1.
        assert!(parse_bounded(br#"{"a":[1]}"#, 1, &any).is_none());
        assert!(parse_bounded(br#"{"a":[]}"#, 1, &any).is_some());
        let no_b = |m: &Map<String, Value>| !m.contains_key("b");
        assert!(parse_bounded(br#"{"a":{"c":1}}"#, 8, &no_b).is_some());
        assert!(parse_bounded(br#"{"a":{"b":1}}"#, 8, &no_b).is_none());
        assert!(parse_bounded(br#"{"a":1} "#, 8, &any).is_some());
        assert!(parse_bounded(br#"{"a":1} x"#, 8, &any).is_none());
        assert!(parse_value(br#"{"a":1}{}"#).is_none());
    }

    #[test]
    fn numeric_dates_refuse_strings_and_accept_numbers() {
        let m = parse_object(br#"{"a":10,"b":"10","c":10.9,"d":1e300,"e":-1.5}"#).unwrap();
        assert_eq!(numeric_date(&m, "a"), Typed::Present(10));
        assert_eq!(numeric_date(&m, "b"), Typed::WrongType);
        assert_eq!(numeric_date(&m, "c"), Typed::Present(10));
        assert_eq!(numeric_date(&m, "d"), Typed::WrongType);
        assert_eq!(numeric_date(&m, "e"), Typed::Present(-2));
        assert_eq!(numeric_date(&m, "z"), Typed::Absent);
    }
}
