//! Request contracts from OpenAPI: a route's `contract` names an operation of an OpenAPI 3.0 or
//! 3.1 description, and its requests must fit that operation — path, query and header
//! parameters and the JSON body — before any authorization is decided (a positive security
//! model: what the API declares is all it takes).
//!
//! The description is read once per load; each operation's schemas are translated to JSON
//! Schema 2020-12 (OpenAPI 3.0's `nullable`, boolean `exclusiveMinimum`/`exclusiveMaximum` and
//! `example` have no JSON Schema meaning, or another one) and compiled once with the
//! `jsonschema` crate. A request is never interpreted against raw schema text.
//!
//! `strict` closes every object schema the description left open (it forgot
//! `additionalProperties: false`), so a member the API does not declare is refused: mass
//! assignment. Member names that differ only in case are refused everywhere, strict or not, as
//! the object rules refuse them (`rules::at_pointer`): a case-insensitive binder upstream would
//! pick one of them, and which one is not ours to guess.
//!
//! A refusal names the JSON pointer (into the body, or `/path/Name`, `/query/name`,
//! `/header/name` for parameters) and the keyword that failed; never the value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

/// A route's `contract:` field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileContract {
    /// The OpenAPI description, relative to the policy file.
    pub spec: String,
    /// The `operationId` in the description.
    pub operation: String,
    /// `enforce` (default) or `shadow`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Refuse members the schemas do not declare, even where they leave objects open.
    #[serde(default)]
    pub strict: bool,
    /// What is done with the upstream's answers: `shadow` (default: checked, drift recorded),
    /// `enforce` (a non-conforming answer is withheld) or `off`.
    #[serde(default)]
    pub response: Option<String>,
}

/// Whether a violation refuses the request or is only recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContractMode {
    Enforce,
    Shadow,
}

impl ContractMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ContractMode::Enforce => "enforce",
            ContractMode::Shadow => "shadow",
        }
    }
}

/// What a route does with the upstream's answers. Shadow by default: an answer outside the
/// contract is the bank's own drift, worth knowing about before anyone is refused for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseMode {
    Off,
    Shadow,
    Enforce,
}

impl ResponseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseMode::Off => "off",
            ResponseMode::Shadow => "shadow",
            ResponseMode::Enforce => "enforce",
        }
    }
}

/// How an answer breaks the operation's contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseDrift {
    /// The operation declares neither this status, nor its class (`2XX`), nor `default`.
    Status,
    /// The body does not fit the schema declared for the status.
    Body(Violation),
}

impl ResponseDrift {
    /// The JSON pointer into the answer's body (empty for the status).
    pub fn pointer(&self) -> &str {
        match self {
            ResponseDrift::Status => "",
            ResponseDrift::Body(v) => &v.pointer,
        }
    }

    /// The keyword that failed: `status` for an undeclared status, else the schema keyword.
    pub fn keyword(&self) -> &str {
        match self {
            ResponseDrift::Status => "status",
            ResponseDrift::Body(v) => &v.keyword,
        }
    }
}

/// One declared response of an operation: the JSON schema of its body, when it declares one.
struct DeclaredResponse {
    body: Option<Arc<jsonschema::Validator>>,
}

/// Which statuses a declared response covers, most specific first when looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StatusKey {
    Exact(u16),
    /// `2XX`: the hundreds digit.
    Class(u16),
    Default,
}

portcullis_base::variants! {
    /// What kind of promise of the contract a request broke: one reason code each
    /// (`contract.*`); the failed JSON Schema keyword is recorded beside it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Fault {
        /// The body is not JSON (or not UTF-8).
        BodyNotJson,
        /// The operation requires a body and there is none.
        BodyMissing,
        /// Duplicate members, case-twin members, or a repeated parameter.
        Ambiguous,
        /// Nesting deeper than any contract needs.
        TooDeep,
        /// `required`: a member or parameter the operation requires is absent.
        Required,
        /// `type` (or `const`).
        Type,
        /// `enum`.
        Enum,
        /// `pattern`.
        Pattern,
        /// `minLength`, `maxLength`, `minItems`, `maxItems`, `minProperties`, `maxProperties`.
        Length,
        /// `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf`.
        Range,
        /// `format` (`date-time`, `date`, `uri`, `email`, ...).
        Format,
        /// `additionalProperties` / `unevaluatedProperties`: a member the contract does not
        /// declare (strict mode, or the description's own `additionalProperties: false`).
        Undeclared,
        /// `oneOf`, `anyOf`, `allOf`, `not`: no (or more than one) alternative fits.
        Composition,
        /// Any other keyword (`uniqueItems`, `contains`, ...).
        Other,
    }
}

impl Fault {
    pub fn reason(self) -> &'static str {
        match self {
            Fault::BodyNotJson => "contract.body_not_json",
            Fault::BodyMissing => "contract.body_missing",
            Fault::Ambiguous => "contract.ambiguous",
            Fault::TooDeep => "contract.too_deep",
            Fault::Required => "contract.required",
            Fault::Type => "contract.type",
            Fault::Enum => "contract.enum",
            Fault::Pattern => "contract.pattern",
            Fault::Length => "contract.length",
            Fault::Range => "contract.range",
            Fault::Format => "contract.format",
            Fault::Undeclared => "contract.undeclared",
            Fault::Composition => "contract.composition",
            Fault::Other => "contract.schema",
        }
    }

    fn of_keyword(k: &str) -> Fault {
        match k {
            "required" => Fault::Required,
            "type" | "const" => Fault::Type,
            "enum" => Fault::Enum,
            "pattern" => Fault::Pattern,
            "minLength" | "maxLength" | "minItems" | "maxItems" | "minProperties"
            | "maxProperties" => Fault::Length,
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" | "multipleOf" => {
                Fault::Range
            }
            "format" => Fault::Format,
            "additionalProperties" | "unevaluatedProperties" | "propertyNames" => Fault::Undeclared,
            "oneOf" | "anyOf" | "allOf" | "not" => Fault::Composition,
            _ => Fault::Other,
        }
    }
}

/// Why a request does not fit its contract: the kind, where (a JSON pointer; parameters under
/// `/path`, `/query`, `/header`) and the keyword that failed. Names, never values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub fault: Fault,
    pub pointer: String,
    pub keyword: String,
}

impl portcullis_base::variants::Variants for Violation {
    fn variants() -> Vec<Self> {
        Fault::variants()
            .into_iter()
            .map(|fault| Violation {
                fault,
                pointer: String::new(),
                keyword: String::new(),
            })
            .collect()
    }
}

impl Violation {
    fn new(fault: Fault, pointer: impl Into<String>, keyword: &str) -> Violation {
        Violation {
            fault,
            pointer: bounded_pointer(pointer.into()),
            keyword: keyword.to_string(),
        }
    }
}

/// Pointers carry client-chosen member names: bounded, like every client string recorded.
fn bounded_pointer(p: String) -> String {
    const MAX: usize = 256;
    if p.len() <= MAX {
        return p;
    }
    let mut end = MAX;
    while !p.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &p[..end])
}

/// Deeper than any API body needs (OBIE's deepest is under ten); a bound so that a hostile
/// body cannot make the checks below recurse without end.
pub const MAX_DEPTH: usize = 32;

/// Where a parameter is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum In {
    Path,
    Query,
    Header,
}

impl In {
    fn as_str(self) -> &'static str {
        match self {
            In::Path => "path",
            In::Query => "query",
            In::Header => "header",
        }
    }
}

/// How a parameter's text becomes a JSON value for its schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scalar {
    String,
    Integer,
    Number,
    Boolean,
}

#[derive(Debug)]
struct Param {
    loc: In,
    /// As declared; headers lowercased.
    name: String,
    scalar: Scalar,
}

/// One operation's compiled contract.
pub struct Contract {
    pub spec: PathBuf,
    pub operation: String,
    pub mode: ContractMode,
    pub strict: bool,
    params: Vec<Param>,
    /// Over `{"path": {..}, "query": {..}, "header": {..}}`.
    params_schema: Option<jsonschema::Validator>,
    body: Option<jsonschema::Validator>,
    body_required: bool,
    /// What is done with the upstream's answers.
    pub response: ResponseMode,
    /// The declared responses, compiled at load (empty when `response` is off).
    responses: Vec<(StatusKey, DeclaredResponse)>,
}

impl std::fmt::Debug for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contract")
            .field("spec", &self.spec)
            .field("operation", &self.operation)
            .field("mode", &self.mode)
            .field("strict", &self.strict)
            .field("params", &self.params)
            .field("body", &self.body.is_some())
            .field("response", &self.response)
            .field("responses", &self.responses.len())
            .finish()
    }
}

/// The request facts a contract is checked against.
pub struct Request<'a> {
    /// The matched template's parameters, as the route match returned them.
    pub params: &'a [(String, String)],
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    /// The buffered body; `None` or empty: no body.
    pub body: Option<&'a [u8]>,
}

impl Contract {
    /// Whether the contract reads the body (it must then be buffered).
    pub fn reads_body(&self) -> bool {
        self.body.is_some() || self.body_required
    }

    /// Whether the upstream's answers are checked.
    pub fn checks_responses(&self) -> bool {
        self.response != ResponseMode::Off
    }

    /// Checks an answer: its status must be declared (exactly, by class, or `default`), and a
    /// body must fit the JSON schema declared for that status. A response that declares no
    /// JSON body is not read (an error page in another type is the upstream's to make).
    /// `json` says whether the answer's `Content-Type` is JSON.
    pub fn check_response(
        &self,
        status: u16,
        json: bool,
        body: &[u8],
    ) -> Result<(), ResponseDrift> {
        let found = [
            StatusKey::Exact(status),
            StatusKey::Class(status / 100),
            StatusKey::Default,
        ]
        .into_iter()
        .find_map(|k| self.responses.iter().find(|(s, _)| *s == k));
        let Some((_, declared)) = found else {
            return Err(ResponseDrift::Status);
        };
        let Some(schema) = &declared.body else {
            return Ok(());
        };
        if body.is_empty() {
            return Err(ResponseDrift::Body(Violation::new(
                Fault::BodyMissing,
                "",
                "required",
            )));
        }
        if !json {
            return Err(ResponseDrift::Body(Violation::new(
                Fault::BodyNotJson,
                "",
                "contentType",
            )));
        }
        let doc = document(body).map_err(ResponseDrift::Body)?;
        checked(schema, &doc).map_err(ResponseDrift::Body)
    }

    /// Checks a request; the first violation found (parameters before the body).
    pub fn check(&self, r: &Request<'_>) -> Result<(), Violation> {
        if let Some(v) = &self.params_schema {
            let instance = self.params_instance(r)?;
            checked(v, &instance)?;
        }
        let body = r.body.filter(|b| !b.is_empty());
        match (&self.body, body) {
            (_, None) if self.body_required => {
                Err(Violation::new(Fault::BodyMissing, "", "required"))
            }
            (Some(schema), Some(bytes)) => {
                let doc = document(bytes)?;
                checked(schema, &doc)
            }
            _ => Ok(()),
        }
    }

    fn params_instance(&self, r: &Request<'_>) -> Result<Value, Violation> {
        let mut path = Map::new();
        let mut query = Map::new();
        let mut header = Map::new();
        for (k, v) in r.params {
            // The canonical path as matched: the segment the upstream routes on.
            if let Some(p) = self
                .params
                .iter()
                .find(|p| p.loc == In::Path && &p.name == k)
            {
                path.insert(k.clone(), scalar(p.scalar, v));
            }
        }
        if let Some(q) = r.query.filter(|q| !q.is_empty()) {
            for (k, v) in portcullis_base::path::query_pairs(q) {
                let ptr = || format!("/query/{}", escape(k));
                let (Some(name), Some(value)) = (
                    portcullis_base::path::decode_query_component(k),
                    portcullis_base::path::decode_query_component(v),
                ) else {
                    return Err(Violation::new(Fault::Type, ptr(), "type"));
                };
                // A repeat, or the same name in another case, reads differently in different
                // frameworks: ambiguous, as for object rules.
                if query
                    .keys()
                    .any(|n| portcullis_base::path::same_name_ignoring_case(n, &name))
                {
                    return Err(Violation::new(Fault::Ambiguous, ptr(), "uniqueItems"));
                }
                let declared = self
                    .params
                    .iter()
                    .find(|p| p.loc == In::Query && p.name == name);
                let value = match declared {
                    Some(p) => scalar(p.scalar, &value),
                    None => Value::String(String::new()),
                };
                query.insert(name.into_owned(), value);
            }
        }
        for p in self.params.iter().filter(|p| p.loc == In::Header) {
            let ptr = || format!("/header/{}", p.name);
            let mut values = r.headers.get_all(p.name.as_str()).iter();
            let first = match (values.next(), values.next()) {
                (None, _) => continue,
                (Some(v), None) => v,
                (Some(_), Some(_)) => {
                    return Err(Violation::new(Fault::Ambiguous, ptr(), "uniqueItems"))
                }
            };
            let Ok(text) = first.to_str() else {
                return Err(Violation::new(Fault::Type, ptr(), "type"));
            };
            header.insert(p.name.clone(), scalar(p.scalar, text));
        }
        let mut all = Map::new();
        all.insert("path".into(), Value::Object(path));
        all.insert("query".into(), Value::Object(query));
        all.insert("header".into(), Value::Object(header));
        Ok(Value::Object(all))
    }
}

/// A parameter's text as its schema's type reads it; text that is not that type stays a string,
/// which the schema's `type` then refuses.
fn scalar(kind: Scalar, text: &str) -> Value {
    let parsed = match kind {
        Scalar::String => None,
        Scalar::Integer => text.parse::<i64>().ok().map(Value::from),
        Scalar::Number => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        Scalar::Boolean => match text {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
    };
    parsed.unwrap_or_else(|| Value::String(text.to_string()))
}

/// The body as a document that keeps the shape rules: parsed with duplicate members (two
/// parsers picking different duplicates is the classic confusion), members whose names differ
/// only in case, and nesting beyond [`MAX_DEPTH`] refused as it is read. A conforming body, the
/// common case, is read once; only a refused one is read again ([`parse_body`], then [`shape`])
/// to name the fault and its place.
fn document(bytes: &[u8]) -> Result<Value, Violation> {
    let twinless = |m: &Map<String, Value>| case_twin(m).is_none();
    if let Some(doc) = portcullis_base::json::parse_bounded(bytes, MAX_DEPTH, &twinless) {
        return Ok(doc);
    }
    let doc = parse_body(bytes)?;
    shape(&doc)?;
    // The one-pass read refused what the two-pass one accepts: refuse, without a place.
    Err(Violation::new(Fault::Other, "", "schema"))
}

/// The body, parsed with duplicate members refused.
fn parse_body(bytes: &[u8]) -> Result<Value, Violation> {
    match portcullis_base::json::parse_value(bytes) {
        Some(v) => Ok(v),
        None if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() => {
            Err(Violation::new(Fault::Ambiguous, "", "uniqueItems"))
        }
        None => Err(Violation::new(Fault::BodyNotJson, "", "type")),
    }
}

/// Refuses nesting beyond [`MAX_DEPTH`] and sibling members whose names differ only in case.
/// Runs on every checked body, so a conforming one costs no allocation: the pointer is
/// spelled only for a fault, from the segments collected as the walk unwinds.
fn shape(doc: &Value) -> Result<(), Violation> {
    shape_at(doc, 0).map_err(|mut f| {
        f.path.reverse();
        let pointer: String = f.path.iter().map(|s| format!("/{s}")).collect();
        Violation::new(f.fault, pointer, f.keyword)
    })
}

/// A [`shape`] fault and the reference tokens of its place, innermost first.
struct ShapeFault {
    fault: Fault,
    keyword: &'static str,
    path: Vec<String>,
}

fn shape_at(v: &Value, depth: usize) -> Result<(), ShapeFault> {
    if depth > MAX_DEPTH {
        return Err(ShapeFault {
            fault: Fault::TooDeep,
            keyword: "maxDepth",
            path: Vec::new(),
        });
    }
    match v {
        Value::Object(m) => {
            if let Some(twin) = case_twin(m) {
                return Err(ShapeFault {
                    fault: Fault::Ambiguous,
                    keyword: "propertyNames",
                    path: vec![escape(twin)],
                });
            }
            for (k, x) in m {
                shape_at(x, depth + 1).map_err(|mut f| {
                    f.path.push(escape(k));
                    f
                })?;
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                shape_at(x, depth + 1).map_err(|mut f| {
                    f.path.push(i.to_string());
                    f
                })?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The first member (in the object's order) whose name a later member repeats but for case
/// (as `same_name_ignoring_case` decides: lower-case or upper-case forms agree).
fn case_twin(m: &Map<String, Value>) -> Option<&String> {
    // Pairwise costs nothing to allocate and is quicker for the objects APIs send; a body of
    // many members must not cost quadratic time, so large objects go through sets.
    const PAIRWISE: usize = 16;
    let twin_of = |k: &String| {
        m.keys()
            .find(|a| *a != k && portcullis_base::path::same_name_ignoring_case(a, k))
    };
    if m.len() <= PAIRWISE {
        // Names in ASCII (nearly all) are twins only at the same length: no case folding.
        let ascii = m.keys().all(|k| k.is_ascii());
        let same = |a: &str, b: &str| {
            if ascii {
                a.eq_ignore_ascii_case(b)
            } else {
                portcullis_base::path::same_name_ignoring_case(a, b)
            }
        };
        return m
            .keys()
            .enumerate()
            .find_map(|(j, b)| m.keys().take(j).find(|a| same(a, b)));
    }
    let mut lower = std::collections::HashSet::with_capacity(m.len());
    let mut upper = std::collections::HashSet::with_capacity(m.len());
    for k in m.keys() {
        let (l, u) = if k.is_ascii() {
            (k.to_ascii_lowercase(), k.to_ascii_uppercase())
        } else {
            (k.to_lowercase(), k.to_uppercase())
        };
        if !lower.insert(l) | !upper.insert(u) {
            return Some(twin_of(k).unwrap_or(k));
        }
    }
    None
}

/// RFC 6901 escaping of one reference token.
fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Validates `doc`. The yes-or-no check tracks no location and builds no error, so a
/// conforming document (the common case) costs least; the first error is asked for only when
/// it says no. Should the two ever disagree, the no stands (fail closed).
fn checked(schema: &jsonschema::Validator, doc: &Value) -> Result<(), Violation> {
    if schema.is_valid(doc) {
        return Ok(());
    }
    match schema.validate(doc) {
        Err(e) => Err(violation(&e)),
        Ok(()) => Err(Violation::new(Fault::Other, "", "schema")),
    }
}

fn violation(e: &jsonschema::ValidationError<'_>) -> Violation {
    use jsonschema::error::ValidationErrorKind as K;
    let keyword = e.kind().keyword();
    let mut pointer = e.instance_path().as_str().to_string();
    // The member at fault, not the object around it: the pointer then names what to fix.
    match e.kind() {
        K::Required { property } => {
            if let Some(p) = property.as_str() {
                pointer.push('/');
                pointer.push_str(&escape(p));
            }
        }
        K::AdditionalProperties { unexpected } | K::UnevaluatedProperties { unexpected } => {
            if let Some(p) = unexpected.first() {
                pointer.push('/');
                pointer.push_str(&escape(p));
            }
        }
        _ => {}
    }
    Violation::new(Fault::of_keyword(keyword), pointer, keyword)
}

/// An OpenAPI description, read once per load and shared by the routes that name it.
#[derive(Debug)]
pub struct Spec {
    pub doc: Value,
    /// 3.0 schemas are translated to JSON Schema; 3.1 schemas are JSON Schema already.
    pub v30: bool,
    /// Response schemas compiled for this load, by `$ref` and strictness: OBIE's operations
    /// share a handful of error bodies, compiled once rather than once per operation.
    compiled: std::sync::Mutex<BTreeMap<(String, bool), Arc<jsonschema::Validator>>>,
}

/// One operation of a description: where it is and what it declares.
#[derive(Debug)]
pub struct Operation<'a> {
    pub id: String,
    pub method: http::Method,
    /// The description's path template (`/domestic-payments/{DomesticPaymentId}`).
    pub path: String,
    pub op: &'a Map<String, Value>,
    /// Path-level parameters (operation parameters override them by name and place).
    pub path_params: Option<&'a Value>,
}

const OPENAPI_METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch"];

impl Spec {
    /// Reads a description (YAML or JSON).
    pub fn read(path: &Path) -> Result<Spec, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        Spec::parse(&text).map_err(|e| format!("`{}`: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Spec, String> {
        let doc: Value = serde_saphyr::from_str(text)
            .map_err(|e| format!("not an OpenAPI description: invalid YAML: {e}"))?;
        let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
        let v30 = if version.starts_with("3.0.") {
            true
        } else if version.starts_with("3.1.") {
            false
        } else {
            return Err(format!(
                "not an OpenAPI 3.0 or 3.1 description (openapi: `{version}`)"
            ));
        };
        if !doc.get("paths").is_some_and(Value::is_object) {
            return Err("has no `paths` object".into());
        }
        Ok(Spec {
            doc,
            v30,
            compiled: std::sync::Mutex::default(),
        })
    }

    /// The base path of the first `servers` entry that is a path or URL (`/open-banking/v4.0/pisp`),
    /// without a trailing `/`; empty when there is none.
    pub fn base_path(&self) -> String {
        let url = self
            .doc
            .pointer("/servers/0/url")
            .and_then(Value::as_str)
            .unwrap_or("");
        let path = match url.find("://") {
            Some(i) => url[i + 3..].find('/').map_or("", |j| &url[i + 3 + j..]),
            None => url,
        };
        path.trim_end_matches('/').to_string()
    }

    /// Every operation, in the description's order of paths and the fixed order of methods.
    pub fn operations(&self) -> Vec<Operation<'_>> {
        let mut out = Vec::new();
        let Some(paths) = self.doc.get("paths").and_then(Value::as_object) else {
            return out;
        };
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for m in OPENAPI_METHODS {
                let Some(op) = item.get(*m).and_then(Value::as_object) else {
                    continue;
                };
                let id = op
                    .get("operationId")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{} {path}", m.to_ascii_uppercase()));
                let Ok(method) = m.to_ascii_uppercase().parse::<http::Method>() else {
                    continue;
                };
                out.push(Operation {
                    id,
                    method,
                    path: path.clone(),
                    op,
                    path_params: item.get("parameters"),
                });
            }
        }
        out
    }

    /// Resolves a local `$ref` (`#/components/...`), following chains; other values as they are.
    pub fn deref<'a>(&'a self, v: &'a Value) -> Result<&'a Value, String> {
        let mut v = v;
        for _ in 0..32 {
            match v.get("$ref").and_then(Value::as_str) {
                None => return Ok(v),
                Some(r) => {
                    let ptr = r
                        .strip_prefix('#')
                        .ok_or_else(|| format!("`$ref: {r}` points outside the description"))?;
                    v = self
                        .doc
                        .pointer(ptr)
                        .ok_or_else(|| format!("`$ref: {r}` resolves to nothing"))?;
                }
            }
        }
        Err("a `$ref` chain does not end".into())
    }

    /// The operation's parameters (path-level ones overridden by the operation's own), resolved.
    pub fn parameters<'a>(
        &'a self,
        op: &Operation<'a>,
    ) -> Result<Vec<&'a Map<String, Value>>, String> {
        let mut out: Vec<&Map<String, Value>> = Vec::new();
        let lists = [op.path_params, op.op.get("parameters")];
        for list in lists.into_iter().flatten() {
            let Some(list) = list.as_array() else {
                return Err("`parameters` is not a list".into());
            };
            for p in list {
                let p = self
                    .deref(p)?
                    .as_object()
                    .ok_or("a parameter is not an object")?;
                let key = |q: &Map<String, Value>| {
                    (
                        q.get("name")
                            .and_then(Value::as_str)
                            .map(str::to_ascii_lowercase),
                        q.get("in").and_then(Value::as_str).map(str::to_string),
                    )
                };
                out.retain(|q| key(q) != key(p));
                out.push(p);
            }
        }
        Ok(out)
    }

    /// The JSON schema of the operation's request body and whether the body is required.
    pub fn body_schema<'a>(
        &'a self,
        op: &Operation<'a>,
    ) -> Result<(Option<&'a Value>, bool), String> {
        let Some(rb) = op.op.get("requestBody") else {
            return Ok((None, false));
        };
        let rb = self.deref(rb)?;
        let required = rb.get("required").and_then(Value::as_bool).unwrap_or(false);
        Ok((json_schema_of(rb), required))
    }

    /// Compiles each declared response of an operation (a response's schema reached by a
    /// `$ref` once per description).
    fn responses(
        &self,
        op: &Operation<'_>,
        strict: bool,
    ) -> Result<Vec<(StatusKey, DeclaredResponse)>, String> {
        let mut out = Vec::new();
        let Some(list) = op.op.get("responses") else {
            return Ok(out);
        };
        let Some(list) = list.as_object() else {
            return Err("`responses` is not an object".into());
        };
        for (k, r) in list {
            let key = match k.as_str() {
                "default" => StatusKey::Default,
                k if k.len() == 3 && (k.ends_with("XX") || k.ends_with("xx")) => {
                    match k[..1].parse::<u16>() {
                        Ok(c) if (1..=5).contains(&c) => StatusKey::Class(c),
                        _ => return Err(format!("response status `{k}` is not a status")),
                    }
                }
                k => match k.parse::<u16>() {
                    Ok(n) if (100..=599).contains(&n) => StatusKey::Exact(n),
                    _ => return Err(format!("response status `{k}` is not a status")),
                },
            };
            let r = self.deref(r)?;
            let body = match json_schema_of(r) {
                None => None,
                Some(schema) => Some(self.compile_cached(schema, strict)?),
            };
            out.push((key, DeclaredResponse { body }));
        }
        Ok(out)
    }

    fn compile_cached(
        &self,
        schema: &Value,
        strict: bool,
    ) -> Result<Arc<jsonschema::Validator>, String> {
        let key = schema
            .as_object()
            .filter(|m| m.len() == 1)
            .and_then(|m| m.get("$ref"))
            .and_then(Value::as_str)
            .map(|r| (r.to_string(), strict));
        let cache = || self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = key.as_ref().and_then(|k| cache().get(k).cloned()) {
            return Ok(v);
        }
        let translated = self.translate(schema, strict)?;
        let v = Arc::new(build(&translated)?);
        if let Some(k) = key {
            cache().insert(k, Arc::clone(&v));
        }
        Ok(v)
    }

    /// The scopes of the operation's security requirements (the document's when it has none):
    /// every scope of every requirement, sorted. `None`: no security requirement at all.
    pub fn scopes(&self, op: &Operation<'_>) -> Option<Vec<String>> {
        let reqs = op.op.get("security").or_else(|| self.doc.get("security"))?;
        let reqs = reqs.as_array()?;
        if reqs.is_empty() {
            return None;
        }
        let mut out = BTreeSet::new();
        for r in reqs {
            for scopes in r.as_object().into_iter().flat_map(|m| m.values()) {
                for s in scopes.as_array().into_iter().flatten() {
                    if let Some(s) = s.as_str() {
                        out.insert(s.to_string());
                    }
                }
            }
        }
        Some(out.into_iter().collect())
    }

    /// Translates one schema of the description to JSON Schema 2020-12 and gathers every
    /// local `$ref` target it reaches, translated too, at its pointer under `root`.
    fn translate(&self, schema: &Value, strict: bool) -> Result<Value, String> {
        let mut root = self.translate_node(schema, strict, false)?;
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut todo: Vec<String> = Vec::new();
        collect_refs(&root, &mut todo);
        let mut targets: BTreeMap<String, Value> = BTreeMap::new();
        while let Some(r) = todo.pop() {
            if !done.insert(r.clone()) {
                continue;
            }
            let ptr = r
                .strip_prefix('#')
                .ok_or_else(|| format!("`$ref: {r}` points outside the description"))?;
            let target = self
                .doc
                .pointer(ptr)
                .ok_or_else(|| format!("`$ref: {r}` resolves to nothing"))?;
            let t = self.translate_node(target, strict, false)?;
            collect_refs(&t, &mut todo);
            targets.insert(ptr.to_string(), t);
        }
        if !targets.is_empty() {
            let Value::Object(m) = &mut root else {
                // A boolean schema references nothing.
                return Ok(root);
            };
            // The targets live in the root document at the pointers the `$ref`s name. The
            // root's own keywords are never under `/components` or `/$defs` of a description.
            let mut store = Value::Object(Map::new());
            for (ptr, t) in targets {
                insert_at(&mut store, &ptr, t)?;
            }
            if let Value::Object(s) = store {
                for (k, v) in s {
                    if m.contains_key(&k) {
                        return Err(format!(
                            "the schema has its own `{k}`, where `$ref` targets go"
                        ));
                    }
                    m.insert(k, v);
                }
            }
        }
        Ok(root)
    }

    fn translate_node(&self, v: &Value, strict: bool, in_all_of: bool) -> Result<Value, String> {
        let Value::Object(m) = v else {
            return Ok(v.clone());
        };
        let mut out = Map::new();
        for (k, x) in m {
            // Extensions and annotations that JSON Schema does not read, or reads otherwise
            // (3.0 `example` is one value, 2020-12 `examples` a list).
            if k.starts_with("x-")
                || matches!(
                    k.as_str(),
                    "example" | "discriminator" | "xml" | "externalDocs" | "description"
                )
            {
                continue;
            }
            if self.v30
                && matches!(
                    k.as_str(),
                    "nullable" | "exclusiveMinimum" | "exclusiveMaximum"
                )
                && x.is_boolean()
            {
                continue;
            }
            let t = match k.as_str() {
                "properties" | "patternProperties" | "$defs" | "definitions"
                | "dependentSchemas" => {
                    let Some(props) = x.as_object() else {
                        return Err(format!("`{k}` is not an object"));
                    };
                    let mut p = Map::new();
                    for (name, s) in props {
                        p.insert(name.clone(), self.translate_node(s, strict, false)?);
                    }
                    Value::Object(p)
                }
                "allOf" | "anyOf" | "oneOf" | "prefixItems" => {
                    let Some(list) = x.as_array() else {
                        return Err(format!("`{k}` is not a list"));
                    };
                    let mut l = Vec::new();
                    for s in list {
                        l.push(self.translate_node(s, strict, k == "allOf")?);
                    }
                    Value::Array(l)
                }
                "items"
                | "additionalProperties"
                | "not"
                | "contains"
                | "propertyNames"
                | "unevaluatedProperties"
                | "unevaluatedItems"
                | "additionalItems"
                | "if"
                | "then"
                | "else" => self.translate_node(x, strict, false)?,
                "pattern" => match x.as_str() {
                    Some(p) => Value::String(uncaptured(p).into_owned()),
                    None => x.clone(),
                },
                _ => x.clone(),
            };
            out.insert(k.clone(), t);
        }
        if self.v30 {
            // `exclusiveMinimum: true` qualifies `minimum` in 3.0; in 2020-12 it is the bound.
            for (flag, bound) in [
                ("exclusiveMinimum", "minimum"),
                ("exclusiveMaximum", "maximum"),
            ] {
                if m.get(flag).and_then(Value::as_bool) == Some(true) {
                    if let Some(b) = out.remove(bound) {
                        out.insert(flag.to_string(), b);
                    }
                }
            }
            // `nullable: true` adds null to the type (and to an `enum`, which lists values).
            if m.get("nullable").and_then(Value::as_bool) == Some(true) {
                if let Some(Value::String(t)) = out.get("type").cloned() {
                    out.insert("type".into(), serde_json::json!([t, "null"]));
                }
                if let Some(Value::Array(e)) = out.get_mut("enum") {
                    if !e.contains(&Value::Null) {
                        e.push(Value::Null);
                    }
                }
            }
        }
        if strict && !in_all_of && !out.contains_key("$ref") {
            let is_object = out.get("type").is_some_and(|t| {
                t == "object"
                    || t.as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "object"))
            }) || out.contains_key("properties");
            let open = !out.contains_key("additionalProperties")
                && !out.contains_key("unevaluatedProperties")
                && !out.contains_key("patternProperties");
            if is_object && open {
                // Composition: only `unevaluatedProperties` sees members declared in `allOf`
                // branches; otherwise the cheaper `additionalProperties`.
                let composed = ["allOf", "anyOf", "oneOf"]
                    .iter()
                    .any(|c| out.contains_key(*c));
                let kw = if composed {
                    "unevaluatedProperties"
                } else {
                    "additionalProperties"
                };
                out.insert(kw.into(), Value::Bool(false));
            }
        }
        Ok(Value::Object(out))
    }

    /// Compiles the request contract of one operation (answers are not checked).
    pub fn compile(
        self: &Arc<Self>,
        spec_path: &Path,
        operation: &str,
        mode: ContractMode,
        strict: bool,
    ) -> Result<Contract, (&'static str, String)> {
        self.compile_with(spec_path, operation, mode, strict, ResponseMode::Off)
    }

    /// Compiles the contract of one operation, its responses too unless `response` is off.
    pub fn compile_with(
        self: &Arc<Self>,
        spec_path: &Path,
        operation: &str,
        mode: ContractMode,
        strict: bool,
        response: ResponseMode,
    ) -> Result<Contract, (&'static str, String)> {
        let ops = self.operations();
        let Some(op) = ops.iter().find(|o| o.id == operation) else {
            return Err((
                "operation",
                format!("no operation `{operation}` in `{}`", spec_path.display()),
            ));
        };
        let fail = |e: String| ("spec", format!("operation `{operation}`: {e}"));
        let mut params = Vec::new();
        let mut props: BTreeMap<&'static str, (Map<String, Value>, Vec<Value>)> = BTreeMap::new();
        for p in self.parameters(op).map_err(fail)? {
            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
            let loc = match p.get("in").and_then(Value::as_str) {
                Some("path") => In::Path,
                Some("query") => In::Query,
                Some("header") => In::Header,
                // Cookies are not a place this proxy takes parameters from.
                _ => continue,
            };
            // OpenAPI: header parameters named Accept, Content-Type or Authorization are
            // ignored; the proxy's own stages own those headers.
            if loc == In::Header
                && ["accept", "content-type", "authorization"]
                    .contains(&name.to_ascii_lowercase().as_str())
            {
                continue;
            }
            if name.is_empty() {
                return Err(fail("a parameter has no name".into()));
            }
            let name = if loc == In::Header {
                name.to_ascii_lowercase()
            } else {
                name.to_string()
            };
            if loc == In::Header && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(fail(format!(
                    "header parameter `{name}` is not a header name"
                )));
            }
            let schema = match p.get("schema") {
                Some(s) => self.deref(s).map_err(fail)?.clone(),
                None => Value::Bool(true),
            };
            let scalar = match schema.get("type").and_then(Value::as_str) {
                Some("integer") => Scalar::Integer,
                Some("number") => Scalar::Number,
                Some("boolean") => Scalar::Boolean,
                _ => Scalar::String,
            };
            let required =
                loc == In::Path || p.get("required").and_then(Value::as_bool) == Some(true);
            let entry = props.entry(loc.as_str()).or_default();
            entry.0.insert(name.clone(), schema.clone());
            if required {
                entry.1.push(Value::String(name.clone()));
            }
            params.push(Param { loc, name, scalar });
        }
        let params_schema = if params.is_empty() && !strict {
            None
        } else {
            let mut top = Map::new();
            for loc in [In::Path, In::Query, In::Header] {
                let (p, req) = props.remove(loc.as_str()).unwrap_or_default();
                let mut s = serde_json::json!({"type": "object", "properties": p, "required": req});
                // Strict: an undeclared query parameter is mass assignment too. Headers are
                // never closed: every hop adds its own.
                if strict && loc == In::Query {
                    s["additionalProperties"] = Value::Bool(false);
                }
                top.insert(loc.as_str().into(), s);
            }
            let schema = serde_json::json!({"type": "object", "properties": top});
            let translated = self.translate(&schema, false).map_err(fail)?;
            Some(build(&translated).map_err(fail)?)
        };
        let (body_schema, body_required) = self.body_schema(op).map_err(fail)?;
        let body = match body_schema {
            None => None,
            Some(s) => {
                let translated = self.translate(s, strict).map_err(fail)?;
                Some(build(&translated).map_err(fail)?)
            }
        };
        let responses = match response {
            ResponseMode::Off => Vec::new(),
            _ => self.responses(op, strict).map_err(fail)?,
        };
        Ok(Contract {
            spec: spec_path.to_path_buf(),
            operation: operation.to_string(),
            mode,
            strict,
            params,
            params_schema,
            body,
            body_required,
            response,
            responses,
        })
    }
}

/// The schema of the first JSON media type of a request body or response object's `content`.
fn json_schema_of(v: &Value) -> Option<&Value> {
    let content = v.get("content").and_then(Value::as_object)?;
    let json = content.iter().find(|(media, _)| {
        let base = media
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        base == "application/json" || base.ends_with("+json")
    });
    json.and_then(|(_, m)| m.get("schema"))
}

/// `pattern` with its capturing groups made non-capturing. A pattern is only ever asked yes or
/// no, so what a group captures is never read, and the backtracking engine (the one a
/// look-around pattern needs) runs several times faster without capture slots to fill: about
/// 0.9 against 0.3 µs for OBIE's `x-idempotency-key` pattern `^(?!\s)(.*)(\S)$` on a UUID. Left
/// as written when a back-reference could read a group, when a group is named or sets flags, or
/// when a character class is spelled in a way the regex dialects read differently (`[]`,
/// `[^]`, a `[` inside a class).
fn uncaptured(p: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let mut out = String::with_capacity(p.len() + 16);
    let mut chars = p.chars().peekable();
    let mut class = false;
    let mut changed = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(n) = chars.next() else {
                    return Cow::Borrowed(p);
                };
                if matches!(n, '1'..='9' | 'k' | 'g') {
                    return Cow::Borrowed(p);
                }
                out.push(c);
                out.push(n);
            }
            '[' if class => return Cow::Borrowed(p),
            '[' => {
                class = true;
                out.push(c);
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    return Cow::Borrowed(p);
                }
            }
            ']' if class => {
                class = false;
                out.push(c);
            }
            '(' if !class => {
                if chars.peek() == Some(&'?') {
                    // Only the groups that capture nothing or only look around are known here.
                    let rest: String = chars.clone().take(3).collect();
                    let known = ["?:", "?=", "?!", "?<=", "?<!"];
                    if !known.iter().any(|g| rest.starts_with(g)) {
                        return Cow::Borrowed(p);
                    }
                    out.push(c);
                } else {
                    out.push_str("(?:");
                    changed = true;
                }
            }
            _ => out.push(c),
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(p)
    }
}

/// Compiles a translated schema: 2020-12, formats asserted (a `date-time` that is not one is
/// refused). Regular expressions go to the linear-time `regex` engine, so no value can make a
/// pattern run long, and it is the quicker of the two; only a schema with a pattern that engine
/// cannot express (look-around, back-references) falls back to the backtracking engine, with a
/// bound on its backtracking for the same reason.
fn build(schema: &Value) -> Result<jsonschema::Validator, String> {
    let options = || {
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
    };
    options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(schema)
        .or_else(|_| {
            options()
                .with_pattern_options(
                    jsonschema::PatternOptions::fancy_regex().backtrack_limit(100_000),
                )
                .build(schema)
        })
        .map_err(|e| format!("the schema does not compile: {e}"))
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(r) = x.as_str() {
                        out.push(r.to_string());
                    }
                } else if !matches!(k.as_str(), "enum" | "const" | "default" | "examples") {
                    collect_refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Puts `v` at the JSON pointer `ptr` in `root`, making objects on the way.
fn insert_at(root: &mut Value, ptr: &str, v: Value) -> Result<(), String> {
    let tokens: Vec<String> = ptr
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, path)) = tokens.split_last() else {
        return Err("a `$ref` to the whole description".into());
    };
    let mut at = root;
    for t in path {
        let Value::Object(m) = at else {
            return Err(format!("`$ref: #{ptr}` goes through a non-object"));
        };
        at = m
            .entry(t.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    match at {
        Value::Object(m) => {
            m.insert(last.clone(), v);
            Ok(())
        }
        _ => Err(format!("`$ref: #{ptr}` goes through a non-object")),
    }
}

/// Descriptions read during one load, by path: each is parsed once however many routes name it.
#[derive(Default)]
pub struct Specs {
    read: BTreeMap<PathBuf, Result<Arc<Spec>, String>>,
    /// SHA-256 of each description's bytes, for the policy version.
    digests: BTreeMap<PathBuf, String>,
}

impl Specs {
    pub fn get(&mut self, path: &Path) -> Result<Arc<Spec>, String> {
        if let Some(r) = self.read.get(path) {
            return r.clone();
        }
        let r = match std::fs::read_to_string(path) {
            Err(e) => Err(format!("cannot read `{}`: {e}", path.display())),
            Ok(text) => {
                let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
                let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
                self.digests.insert(path.to_path_buf(), hex);
                Spec::parse(&text)
                    .map(Arc::new)
                    .map_err(|e| format!("`{}`: {e}", path.display()))
            }
        };
        self.read.insert(path.to_path_buf(), r.clone());
        r
    }

    /// The digests of the descriptions read, in path order.
    pub fn texts(&self) -> impl Iterator<Item = &String> {
        self.digests.values()
    }
}

/// Compiles a route's `contract:`; the spec path is relative to the policy file.
pub fn compile(
    c: &FileContract,
    policy_file: &Path,
    specs: &mut Specs,
) -> Result<Contract, (&'static str, String)> {
    let mode = match c.mode.as_deref() {
        None | Some("enforce") => ContractMode::Enforce,
        Some("shadow") => ContractMode::Shadow,
        Some(o) => return Err(("mode", format!("unknown value `{o}` (enforce or shadow)"))),
    };
    let response = match c.response.as_deref() {
        None | Some("shadow") => ResponseMode::Shadow,
        Some("enforce") => ResponseMode::Enforce,
        Some("off") => ResponseMode::Off,
        Some(o) => {
            return Err((
                "response",
                format!("unknown value `{o}` (shadow, enforce or off)"),
            ))
        }
    };
    let base = policy_file.parent().unwrap_or(Path::new("."));
    let path = base.join(&c.spec);
    let spec = specs.get(&path).map_err(|e| ("spec", e))?;
    spec.compile_with(&path, &c.operation, mode, c.strict, response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_names_the_twin_and_the_too_deep_value_by_pointer() {
        let fault = |v: Value| shape(&v).err().map(|e| (e.pointer, e.keyword));
        assert_eq!(fault(serde_json::json!({"a": [1, {"b": {"c": 1}}]})), None);
        let twin = serde_json::json!({"Data": {"Items": [{}, {"x/y": 1, "X/Y": 2}]}});
        assert_eq!(
            fault(twin),
            Some(("/Data/Items/1/X~1Y".into(), "propertyNames".into()))
        );
        // Past the pairwise bound the sets decide, naming the same member.
        let mut big: Map<String, Value> = (0..40).map(|i| (format!("m{i}"), Value::Null)).collect();
        big.insert("M7".into(), Value::Null);
        assert_eq!(
            fault(serde_json::json!({"big": big})),
            Some(("/big/M7".into(), "propertyNames".into()))
        );
        let mut deep = Value::Null;
        for _ in 0..MAX_DEPTH {
            deep = serde_json::json!([deep]);
        }
        assert_eq!(fault(deep.clone()), None);
        let (pointer, keyword) = fault(serde_json::json!({"a": deep})).unwrap();
        assert_eq!(keyword, "maxDepth");
        assert_eq!(pointer, format!("/a{}", "/0".repeat(MAX_DEPTH)));
    }

    #[test]
    fn the_one_pass_read_refuses_exactly_what_parse_and_shape_refuse() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let many: Vec<String> = (0..40).map(|i| format!("\"m{i}\":1")).collect();
        let cases = [
            r#"{"a":[1,{"b":{"c":1}}],"B":"x"}"#.to_string(),
            r#"{"Data":{"Items":[{},{"x/y":1,"X/Y":2}]}}"#.into(),
            r#"{"a":1,"a":1}"#.into(),
            r#"{"Straße":1,"STRASSE":2}"#.into(),
            r#"{"é":1,"É":2}"#.into(),
            r#"{"é":1,"e":2}"#.into(),
            format!("{{{}}}", many.join(",")),
            format!("{{{},\"M7\":1}}", many.join(",")),
            nested(MAX_DEPTH),
            nested(MAX_DEPTH + 1),
            nested(200),
            "{".into(),
            r#"{"a":1} x"#.into(),
            "1e999".into(),
            "\"text\"".into(),
        ];
        for case in cases {
            let two_pass = parse_body(case.as_bytes()).and_then(|d| shape(&d).map(|()| d));
            assert_eq!(document(case.as_bytes()), two_pass, "{case}");
        }
    }

    fn spec(v30: bool, schema: Value) -> Arc<Spec> {
        let version = if v30 { "3.0.3" } else { "3.1.0" };
        let doc = serde_json::json!({
            "openapi": version,
            "paths": {"/x/{Id}": {"post": {
                "operationId": "op",
                "parameters": [
                    {"name": "Id", "in": "path", "required": true, "schema": {"type": "string", "maxLength": 4}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 10}},
                    {"name": "x-fapi-auth-date", "in": "header", "schema": {"type": "string", "pattern": "^[A-Z][a-z]{2}$"}}
                ],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Body"}}}}
            }}},
            "components": {"schemas": {"Body": schema, "Amount": {"type": "string", "pattern": "^\\d+\\.\\d{2}$"}}}
        });
        Arc::new(Spec::parse(&doc.to_string()).unwrap())
    }

    fn check(c: &Contract, body: &str) -> Result<(), Violation> {
        let h = http::HeaderMap::new();
        c.check(&Request {
            params: &[("Id".into(), "ab".into())],
            query: None,
            headers: &h,
            body: Some(body.as_bytes()),
        })
    }

    #[test]
    fn openapi_30_is_translated_and_strict_closes_objects() {
        let s = spec(
            true,
            serde_json::json!({
                "type": "object", "required": ["Data"],
                "properties": {"Data": {"type": "object", "properties": {
                    "Amount": {"$ref": "#/components/schemas/Amount"},
                    "When": {"type": "string", "format": "date-time", "nullable": true},
                    "N": {"type": "number", "minimum": 0, "exclusiveMinimum": true, "example": 3}
                }}}
            }),
        );
        let c = s
            .compile(Path::new("s"), "op", ContractMode::Enforce, true)
            .unwrap();
        assert_eq!(
            check(&c, r#"{"Data":{"Amount":"1.00","When":null,"N":1}}"#),
            Ok(())
        );
        let v = check(&c, r#"{"Data":{"N":0}}"#).unwrap_err();
        assert_eq!((v.fault, v.pointer.as_str()), (Fault::Range, "/Data/N"));
        let v = check(&c, r#"{"Data":{"Amount":"1"}}"#).unwrap_err();
        assert_eq!(
            (v.fault, v.pointer.as_str(), v.keyword.as_str()),
            (Fault::Pattern, "/Data/Amount", "pattern")
        );
        let v = check(&c, r#"{"Data":{"Extra":1}}"#).unwrap_err();
        assert_eq!(
            (v.fault, v.pointer.as_str()),
            (Fault::Undeclared, "/Data/Extra")
        );
        let v = check(&c, r#"{"Data":{"When":"yesterday"}}"#).unwrap_err();
        assert_eq!((v.fault, v.pointer.as_str()), (Fault::Format, "/Data/When"));
        let v = check(&c, "{}").unwrap_err();
        assert_eq!((v.fault, v.pointer.as_str()), (Fault::Required, "/Data"));
        let v = check(&c, r#"{"Data":{},"data":{}}"#).unwrap_err();
        assert_eq!(v.fault, Fault::Ambiguous);
        let v = check(&c, r#"{"Data":{},"Data":{}}"#).unwrap_err();
        assert_eq!(v.fault, Fault::Ambiguous);
        let v = check(&c, "{").unwrap_err();
        assert_eq!(v.fault, Fault::BodyNotJson);
        let deep = format!("{{\"Data\":{}{}}}", "[".repeat(40), "]".repeat(40));
        let v = check(&c, &deep).unwrap_err();
        assert_eq!(v.fault, Fault::TooDeep);
        // Many members: the twin check is linear, and the last twin is still found.
        let many: Vec<String> = (0..20_000).map(|i| format!("\"m{i}\":1")).collect();
        let t = std::time::Instant::now();
        let v = check(
            &c,
            &format!("{{\"Data\":{{{},\"M19999\":1}}}}", many.join(",")),
        )
        .unwrap_err();
        assert_eq!(
            (v.fault, v.pointer.as_str()),
            (Fault::Ambiguous, "/Data/M19999")
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
        // Not strict: the description's open object takes an undeclared member.
        let c = s
            .compile(Path::new("s"), "op", ContractMode::Enforce, false)
            .unwrap();
        assert_eq!(check(&c, r#"{"Data":{"Extra":1}}"#), Ok(()));
    }

    #[test]
    fn openapi_31_and_parameters() {
        let s = spec(
            false,
            serde_json::json!({"type": "object", "properties": {"A": {"type": ["string", "null"]}}}),
        );
        let c = s
            .compile(Path::new("s"), "op", ContractMode::Enforce, true)
            .unwrap();
        let mut h = http::HeaderMap::new();
        let run = |params: &[(String, String)], q: Option<&str>, h: &http::HeaderMap| {
            c.check(&Request {
                params,
                query: q,
                headers: h,
                body: Some(b"{\"A\":null}"),
            })
        };
        let id = |v: &str| vec![("Id".to_string(), v.to_string())];
        assert_eq!(run(&id("ab"), Some("limit=3"), &h), Ok(()));
        assert_eq!(run(&id("abcde"), None, &h).unwrap_err().pointer, "/path/Id");
        let v = run(&id("ab"), Some("limit=x"), &h).unwrap_err();
        assert_eq!((v.fault, v.pointer.as_str()), (Fault::Type, "/query/limit"));
        let v = run(&id("ab"), Some("limit=11"), &h).unwrap_err();
        assert_eq!(v.fault, Fault::Range);
        let v = run(&id("ab"), Some("limit=1&Limit=2"), &h).unwrap_err();
        assert_eq!(v.fault, Fault::Ambiguous);
        let v = run(&id("ab"), Some("other=1"), &h).unwrap_err();
        assert_eq!(
            (v.fault, v.pointer.as_str()),
            (Fault::Undeclared, "/query/other")
        );
        h.insert("x-fapi-auth-date", http::HeaderValue::from_static("nope"));
        let v = run(&id("ab"), None, &h).unwrap_err();
        assert_eq!(
            (v.fault, v.pointer.as_str()),
            (Fault::Pattern, "/header/x-fapi-auth-date")
        );
        let v = c
            .check(&Request {
                params: &id("ab"),
                query: None,
                headers: &http::HeaderMap::new(),
                body: None,
            })
            .unwrap_err();
        assert_eq!(v.fault, Fault::BodyMissing);
    }

    #[test]
    fn unknown_operations_and_schemas_that_do_not_compile_are_refused() {
        let s = spec(
            true,
            serde_json::json!({"type": "string", "pattern": "(unclosed"}),
        );
        let e = s
            .compile(Path::new("s"), "nope", ContractMode::Enforce, false)
            .unwrap_err();
        assert_eq!(e.0, "operation");
        let e = s
            .compile(Path::new("s"), "op", ContractMode::Enforce, false)
            .unwrap_err();
        assert_eq!(e.0, "spec");
        assert!(e.1.contains("does not compile"), "{}", e.1);
        let s = spec(
            true,
            serde_json::json!({"$ref": "#/components/schemas/Missing"}),
        );
        let e = s
            .compile(Path::new("s"), "op", ContractMode::Enforce, false)
            .unwrap_err();
        assert!(e.1.contains("resolves to nothing"), "{}", e.1);
    }

    #[test]
    fn patterns_run_in_linear_time_and_look_around_still_compiles() {
        let run = |schema: Value, body: &str| {
            let c = spec(true, schema)
                .compile(Path::new("s"), "op", ContractMode::Enforce, false)
                .unwrap();
            check(&c, body).map_err(|v| v.fault)
        };
        // A pattern that backtracks exponentially on a near miss is judged at once.
        let nested = serde_json::json!({"type": "string", "pattern": "^(a+)+$"});
        assert_eq!(run(nested.clone(), "\"aaaa\""), Ok(()));
        let started = std::time::Instant::now();
        let near_miss = format!("\"{}b\"", "a".repeat(40));
        assert_eq!(run(nested, &near_miss), Err(Fault::Pattern));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Look-ahead needs the backtracking engine: the schema still compiles and is enforced.
        let ahead = serde_json::json!({"type": "string", "pattern": "^(?!GB)[A-Z]{2}$"});
        assert_eq!(run(ahead.clone(), "\"FR\""), Ok(()));
        assert_eq!(run(ahead, "\"GB\""), Err(Fault::Pattern));
    }

    #[test]
    fn patterns_lose_their_captures_only_where_nothing_reads_them() {
        let same = |p: &str| assert_eq!(uncaptured(p), p, "{p}");
        assert_eq!(uncaptured(r"^(?!\s)(.*)(\S)$"), r"^(?!\s)(?:.*)(?:\S)$");
        assert_eq!(uncaptured(r"^(a|b)\(c\)[(](d)$"), r"^(?:a|b)\(c\)[(](?:d)$");
        assert_eq!(uncaptured(r"^[^(](x)$"), r"^[^(](?:x)$");
        assert_eq!(
            uncaptured(r"(?:a)(?<=b)(?<!c)(d)"),
            r"(?:a)(?<=b)(?<!c)(?:d)"
        );
        same(r"^(a)\1$");
        same(r"^(?<n>a)\k<n>$");
        same(r"^(?i)(a)$");
        same(r"^(?P<n>a)(b)$");
        same(r"^[]()]$");
        same(r"^[^]()]$");
        same(r"^[[:alpha:]](a)$");
        same(r"^(a)\");
        same("^[A-Z]{3}$");
        // Every pattern of the vendored OBIE descriptions decides as it did on a set of values.
        let values = [
            "",
            " ",
            "a",
            " a",
            "a ",
            "GBP",
            "gbp",
            "165.88",
            "-1.5",
            "1e3",
            "08080021325698",
            "2026-12-07T10:00:00+00:00",
            "Mon, 07 Dec 2026 10:00:00 GMT",
            "UK.OBIE.FPS",
            "0b2e4f33-1c2d-4b9a-9b7e-5c4d3e2f1a0b",
            "a\nb",
            "ACME412",
            "https://x.example/y",
            "+44-(0)2079460000",
            "+44-2079460000x",
            "EvryDay",
            "IntrvlDay:05",
            "IntrvlDay:32",
        ];
        let mut patterns = std::collections::BTreeSet::new();
        for name in ["payment-initiation", "account-info"] {
            let path = format!(
                "{}/../../tests/vectors/openapi/obie-{name}-v4.0.0.yaml",
                env!("CARGO_MANIFEST_DIR")
            );
            let spec = Spec::read(Path::new(&path)).unwrap();
            collect_patterns(&spec.doc, &mut patterns);
        }
        assert!(patterns.len() > 10, "{patterns:?}");
        let rewritten = patterns.iter().filter(|p| uncaptured(p) != p.as_str());
        assert!(rewritten.count() > 0);
        for p in &patterns {
            let a = build(&serde_json::json!({"pattern": p})).unwrap();
            let b = build(&serde_json::json!({"pattern": uncaptured(p)})).unwrap();
            for v in values {
                let v = Value::String(v.into());
                assert_eq!(a.is_valid(&v), b.is_valid(&v), "{p} on {v}");
            }
        }
    }

    fn collect_patterns(v: &Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("pattern", Value::String(p)) => {
                            out.insert(p.clone());
                        }
                        _ => collect_patterns(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| collect_patterns(x, out)),
            _ => {}
        }
    }

    #[test]
    fn answers_are_checked_against_the_declared_response_of_their_status() {
        let doc = serde_json::json!({
            "openapi": "3.0.3",
            "paths": {"/x": {"get": {
                "operationId": "op",
                "responses": {
                    "200": {"$ref": "#/components/responses/Ok"},
                    "4XX": {"description": "no body declared"},
                    "default": {"$ref": "#/components/responses/Err"}
                }
            }}},
            "components": {
                "responses": {
                    "Ok": {"content": {"application/json; charset=utf-8": {"schema": {"$ref": "#/components/schemas/Ok"}}}},
                    "Err": {"content": {"application/json": {"schema": {"type": "object", "required": ["Code"]}}}}
                },
                "schemas": {"Ok": {"type": "object", "required": ["Data"], "properties": {
                    "Data": {"type": "object", "properties": {"Status": {"type": "string", "enum": ["A", "B"]}}}
                }}}
            }
        });
        let s = Arc::new(Spec::parse(&doc.to_string()).unwrap());
        let c = s
            .compile_with(
                Path::new("s"),
                "op",
                ContractMode::Enforce,
                true,
                ResponseMode::Shadow,
            )
            .unwrap();
        assert!(c.checks_responses());
        assert_eq!(
            c.check_response(200, true, br#"{"Data":{"Status":"A"}}"#),
            Ok(())
        );
        let d = c
            .check_response(200, true, br#"{"Data":{"Status":"C"}}"#)
            .unwrap_err();
        assert_eq!((d.pointer(), d.keyword()), ("/Data/Status", "enum"));
        // Strict closes the answer's objects as it closes the request's.
        let d = c
            .check_response(200, true, br#"{"Data":{},"Extra":1}"#)
            .unwrap_err();
        assert_eq!(
            (d.pointer(), d.keyword()),
            ("/Extra", "additionalProperties")
        );
        let d = c.check_response(200, false, b"<html>").unwrap_err();
        assert_eq!(d.keyword(), "contentType");
        let d = c.check_response(200, true, b"").unwrap_err();
        assert_eq!(d.keyword(), "required");
        // 404: the class, which declares no body; 500: `default`.
        assert_eq!(c.check_response(404, false, b"nope"), Ok(()));
        let d = c.check_response(500, true, b"{}").unwrap_err();
        assert_eq!((d.pointer(), d.keyword()), ("/Code", "required"));
        let only = serde_json::json!({
            "openapi": "3.1.0",
            "paths": {"/x": {"get": {"operationId": "op", "responses": {"200": {"description": "ok"}}}}}
        });
        let s = Arc::new(Spec::parse(&only.to_string()).unwrap());
        let c = s
            .compile_with(
                Path::new("s"),
                "op",
                ContractMode::Enforce,
                false,
                ResponseMode::Enforce,
            )
            .unwrap();
        assert_eq!(
            c.check_response(201, true, b"{}"),
            Err(ResponseDrift::Status)
        );
        // Off: nothing compiled, nothing checked.
        let c = s
            .compile(Path::new("s"), "op", ContractMode::Enforce, false)
            .unwrap();
        assert!(!c.checks_responses());
    }

    /// Both OBIE v4.0.0 descriptions (half a megabyte each) load, and every operation of them
    /// compiles, strict and not.
    #[test]
    fn every_obie_operation_compiles() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/openapi");
        for f in [
            "obie-payment-initiation-v4.0.0.yaml",
            "obie-account-info-v4.0.0.yaml",
        ] {
            let t = std::time::Instant::now();
            let s = Arc::new(Spec::read(&dir.join(f)).unwrap());
            let read = t.elapsed();
            let ops = s.operations();
            assert!(ops.len() > 25, "{f}: {}", ops.len());
            for o in &ops {
                for strict in [false, true] {
                    s.compile_with(
                        Path::new(f),
                        &o.id,
                        ContractMode::Enforce,
                        strict,
                        ResponseMode::Shadow,
                    )
                    .unwrap_or_else(|e| panic!("{f} {}: {e:?}", o.id));
                }
            }
            eprintln!(
                "{f}: read in {read:?}, {} operations compiled twice in {:?}",
                ops.len(),
                t.elapsed() - read
            );
        }
    }
}
