//! Human durations in config files: `250ms`, `5s`, `2m`, `1h`.
//!
//! A bare number is refused: a unit is always required, so `timeout: 30` can never be read as
//! thirty milliseconds by one reader and thirty seconds by another.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A duration parsed from the config's text form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

pub(crate) fn parse_text(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit (use ms, s, m or h)"))?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("`{text}` does not start with a number"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is out of range"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        other => return Err(format!("unknown unit `{other}` (use ms, s, m or h)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is out of range"))
}

impl ConfigDuration {
    /// Parses the text form (`250ms`, `5s`, `2m`, `1h`).
    pub fn parse(text: &str) -> Result<std::time::Duration, String> {
        parse_text(text)
    }
}

impl ConfigDuration {
    /// `ms` milliseconds (a builder's shorthand; written back as `250ms`, `5s`, `2m`, `1h`).
    pub fn from_millis(ms: u64) -> ConfigDuration {
        ConfigDuration(Duration::from_millis(ms))
    }
}

/// The text form [`ConfigDuration::parse`] reads: the largest of `h`, `m`, `s` that divides
/// the duration exactly, else `ms` (sub-millisecond parts are not representable and dropped).
impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0ms");
        }
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl serde::Serialize for ConfigDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, such as 500ms, 5s, 2m or 1h")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfigDuration, E> {
                parse_text(v).map(ConfigDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_known_unit() {
        assert_eq!(parse_text("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_text("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_text("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_text("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_text("30").is_err());
        assert!(parse_text("s").is_err());
        assert!(parse_text("5 parsecs").is_err());
        assert!(parse_text("99999999999999999999h").is_err());
    }

    #[test]
    fn durations_write_back_as_their_text_form() {
        for (ms, text) in [
            (0, "0ms"),
            (250, "250ms"),
            (1_500, "1500ms"),
            (5_000, "5s"),
            (90_000, "90s"),
            (120_000, "2m"),
            (3_600_000, "1h"),
        ] {
            let d = ConfigDuration::from_millis(ms);
            assert_eq!(d.to_string(), text);
            assert_eq!(parse_text(text), Ok(d.0));
        }
    }
}
