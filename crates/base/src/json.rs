//! JSON for JOSE: objects parsed with duplicate member names refused at every depth
//! (RFC 7515 §5.2 allows rejecting them; two parsers picking different duplicates is a
//! classic confusion), and typed claim accessors that refuse the wrong JSON type.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
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
        while let Some(Strict(x)) = seq.next_element()? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if m.insert(k, v).is_some() {
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        Ok(Value::Object(m))
    }
}

/// Parses bytes as one JSON object, refusing duplicate member names at any depth.
pub fn parse_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(m))) => Some(m),
        _ => None,
    }
}

/// Parses bytes as one JSON value of any type, refusing duplicate member names at any depth.
pub fn parse_value(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Strict>(bytes)
        .ok()
        .map(|Strict(v)| v)
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
