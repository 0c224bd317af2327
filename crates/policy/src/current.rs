//! Where a replayed idempotent request reads the resource's current state. OBIE: a payment
//! request repeated with the same key creates nothing and answers 201 with the payment's
//! *current* status, which the stored first answer no longer tells once the payment moved on.
//! The route names a GET path on its own upstream, with JSON pointers into the stored first
//! answer: `/pisp/domestic-payments/{/Data/DomesticPaymentId}`.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Pointer(String),
}

/// A parsed `idempotency_current` path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentFrom {
    raw: String,
    pieces: Vec<Piece>,
}

/// The longest value a pointer may put in the path.
const MAX_VALUE: usize = 128;

impl CurrentFrom {
    pub fn parse(s: &str) -> Result<CurrentFrom, String> {
        if !s.starts_with('/') {
            return Err(format!("`{s}` must be an absolute path (start with `/`)"));
        }
        let mut pieces = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("unclosed `{{` in `{s}`"))?;
                    let pointer = &rest[1..end];
                    if !pointer.starts_with('/') {
                        return Err(format!(
                            "`{{{pointer}}}` in `{s}` must be a JSON pointer into the first answer (start with `/`)"
                        ));
                    }
                    pieces.push(Piece::Pointer(pointer.to_string()));
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let lit = &rest[..end];
                    // The literal part is sent as it is: nothing that could end the path, escape
                    // it, or walk out of it.
                    if let Some(c) = lit
                        .chars()
                        .find(|c| !(c.is_ascii_alphanumeric() || "-._~/".contains(*c)))
                    {
                        return Err(format!("`{s}` has `{c}`, which a path here may not hold"));
                    }
                    if lit.split('/').any(|seg| seg == "." || seg == "..") {
                        return Err(format!("`{s}` has a dot-segment"));
                    }
                    pieces.push(Piece::Lit(lit.to_string()));
                    rest = &rest[end..];
                }
            }
        }
        if !pieces.iter().any(|p| matches!(p, Piece::Pointer(_))) {
            return Err(format!(
                "`{s}` names no value of the first answer (e.g. `{{/Data/PaymentId}}`)"
            ));
        }
        Ok(CurrentFrom {
            raw: s.to_string(),
            pieces,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The path for this stored answer, or `None` when a pointer names nothing, or a value that
    /// is not a short string or integer of unreserved characters (RFC 3986 §2.3): a value from
    /// the upstream's answer can never add a segment, a query or a dot-segment to the path.
    pub fn render(&self, answer: &Value) -> Option<String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(l) => out.push_str(l),
                Piece::Pointer(ptr) => {
                    let v = match answer.pointer(ptr)? {
                        Value::String(s) => s.clone(),
                        Value::Number(n) if n.is_u64() => n.to_string(),
                        _ => return None,
                    };
                    let unreserved = v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                    if v.is_empty() || v.len() > MAX_VALUE || !unreserved || v == "." || v == ".." {
                        return None;
                    }
                    out.push_str(&v);
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_are_checked_at_load() {
        let ok = CurrentFrom::parse("/pisp/domestic-payments/{/Data/DomesticPaymentId}").unwrap();
        assert_eq!(
            ok.as_str(),
            "/pisp/domestic-payments/{/Data/DomesticPaymentId}"
        );
        for bad in [
            "pisp/{/Data/Id}",
            "/pisp/payments",
            "/pisp/{/Data/Id",
            "/pisp/{Data}",
            "/pisp/{/Data/Id}?status=1",
            "/pisp/../admin/{/Data/Id}",
            "/pisp/%2e%2e/{/Data/Id}",
            "/pisp/{/Data/Id};x",
        ] {
            assert!(CurrentFrom::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_from_the_answer_stay_one_segment() {
        let t = CurrentFrom::parse("/payments/{/Data/Id}/status").unwrap();
        let path = |v: Value| t.render(&json!({"Data": {"Id": v}}));
        assert_eq!(path(json!("p-1")).as_deref(), Some("/payments/p-1/status"));
        assert_eq!(path(json!(42)).as_deref(), Some("/payments/42/status"));
        for v in [
            json!("a/b"),
            json!(".."),
            json!("."),
            json!("p?x=1"),
            json!("p%2f"),
            json!(""),
            json!("é"),
            json!(-1),
            json!(1.5),
            json!(null),
            json!(["p-1"]),
            json!("x".repeat(129)),
        ] {
            assert_eq!(path(v.clone()), None, "{v}");
        }
        assert_eq!(t.render(&json!({"Data": {}})), None);
    }
}
