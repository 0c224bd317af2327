//! Authorization rules of a route: required scopes, consent, object rules and response rules.
//!
//! A rule ties a value from the request — a path parameter, a query parameter, a header, or a
//! JSON body member by JSON pointer — to a set the caller was granted: a token claim, the
//! entries of RFC 9396 `authorization_details` of one `type`, or a member of the consent
//! record. Values are compared as exact strings (no case folding, no Unicode normalization).
//! An `authorization_details` rule binds several request values to one RFC 9396 entry at once
//! (a payment's debtor, creditor and amount from the same grant), amounts compared as exact
//! decimals in the same currency.
//! Ambiguity is refused, never resolved: a repeated query parameter, a header sent twice, a JSON
//! body with duplicate members or that is not JSON, a path id that disagrees with a body id.
//!
//! Everything here is pure: [`evaluate`] takes the request facts, the token claims, the consent
//! record and `now`, and returns a decision. The proxy, `policy test` and `policy explain` all
//! call the same function.

use std::collections::BTreeSet;

use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value};

use portcullis_base::problems::Problems;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileScopes {
    #[serde(default)]
    all_of: Vec<String>,
    #[serde(default)]
    any_of: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConsent {
    /// The token claim that names the consent (e.g. `openbanking_intent_id`).
    claim: String,
    /// Acceptable statuses; default `[Authorised]`.
    #[serde(default)]
    status: Option<Vec<String>>,
    /// Permissions the consent must hold (all of them).
    #[serde(default)]
    permissions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileValue {
    path: Option<String>,
    query: Option<String>,
    header: Option<String>,
    json: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileAuthDetails {
    r#type: String,
    field: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSet {
    claim: Option<String>,
    authorization_details: Option<FileAuthDetails>,
    consent: Option<String>,
}

/// One line of an `authorization_details` rule: a request value and the member of the entry
/// that must hold it (`creditorAccount/iban`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileGrantLine {
    value: FileValue,
    field: String,
}

/// A rule that binds several request values to one RFC 9396 `authorization_details` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileGrant {
    r#type: String,
    #[serde(default, rename = "match")]
    lines: Vec<FileGrantLine>,
    #[serde(default)]
    amount: Option<FileGrantLine>,
    #[serde(default)]
    actions: Vec<String>,
    #[serde(default)]
    locations: Option<String>,
    #[serde(default)]
    datatypes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileRule {
    id: String,
    /// A value rule reads one request value…
    #[serde(default)]
    value: Option<FileValue>,
    /// …an `authorization_details` rule reads several, all held by one entry.
    #[serde(default)]
    authorization_details: Option<FileGrant>,
    /// The value must be in this set…
    #[serde(default, rename = "in")]
    in_set: Option<FileSet>,
    /// …and/or equal this other request value (a path id and a body id, say).
    #[serde(default)]
    equals: Option<FileValue>,
    /// 403 (default) or 404 (hide that the object exists).
    #[serde(default)]
    deny_status: Option<u16>,
    /// Whether an absent value denies (default true).
    #[serde(default)]
    required: Option<bool>,
    #[serde(default)]
    shadow: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileResponseRule {
    id: String,
    /// A JSON pointer; `*` matches every element of an array (e.g. `/Data/Account/*/AccountId`).
    pointer: String,
    #[serde(rename = "in")]
    in_set: FileSet,
    /// `withhold` (default: 502) or `remove` (drop the offending array elements).
    #[serde(default)]
    action: Option<String>,
}

/// Where a request value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueSource {
    Path(String),
    Query(String),
    Header(http::HeaderName),
    Json(Vec<String>),
}

/// Where the granted set comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetSource {
    Claim(Vec<String>),
    AuthorizationDetails {
        kind: String,
        field: String,
    },
    /// A member of the consent record, by path (`accounts`, `Initiation.CreditorAccount.Identification`).
    Consent(Vec<String>),
}

/// A request value and where, in an `authorization_details` entry, it must be granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantLine {
    pub value: ValueSource,
    /// Member path in the entry (`creditorAccount/iban` → `["creditorAccount", "iban"]`).
    pub field: Vec<String>,
}

/// Everything one `authorization_details` entry of type `kind` must grant at once: the values
/// of `lines`, an amount no larger than its own in the same currency, the `actions`, the
/// resource server's `locations` and the `datatypes` (the last three only where the entry
/// lists them: RFC 9396 §2.2 makes them optional, and an entry without them is not narrowed
/// by them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantMatch {
    pub kind: String,
    pub lines: Vec<GrantLine>,
    /// `value` is a JSON object with `amount` (a decimal string) and `currency`; so is the
    /// entry's member at `field`.
    pub amount: Option<GrantLine>,
    pub actions: Vec<String>,
    pub location: Option<String>,
    pub datatypes: Vec<String>,
}

/// What an object rule checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// One request value in a granted set and/or equal to another request value.
    Value {
        value: ValueSource,
        in_set: Option<SetSource>,
        equals: Option<ValueSource>,
    },
    /// Several request values granted by the same `authorization_details` entry.
    Grant(GrantMatch),
}

impl Check {
    fn reads_body(&self) -> bool {
        match self {
            Check::Value { value, equals, .. } => {
                matches!(value, ValueSource::Json(_))
                    || matches!(equals, Some(ValueSource::Json(_)))
            }
            Check::Grant(g) => g
                .lines
                .iter()
                .chain(&g.amount)
                .any(|l| matches!(l.value, ValueSource::Json(_))),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRule {
    pub id: String,
    pub check: Check,
    /// `deny_status: 404`: a refusal answers as if the object did not exist.
    pub hide: bool,
    pub required: bool,
    pub shadow: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentReq {
    pub claim: String,
    pub status: Vec<String>,
    pub permissions: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseAction {
    /// The answer is replaced with 502 `authz.response_leak`: the upstream answered outside the
    /// grant.
    Withhold,
    /// Offending array elements are dropped.
    Remove,
    /// The answer shows the requested object is outside the caller's grant (its owner is known
    /// only from the answer, e.g. the consent of a payment): refused as a request for a foreign
    /// object is, 403 `authz.object`.
    Forbid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseRule {
    pub id: String,
    pub pointer: Vec<String>,
    pub in_set: SetSource,
    pub action: ResponseAction,
}

/// A route's compiled authorization.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authz {
    pub all_of: Vec<String>,
    pub any_of: Vec<String>,
    pub consent: Option<ConsentReq>,
    pub rules: Vec<ObjectRule>,
    pub response_rules: Vec<ResponseRule>,
    /// The whole route decides and records but does not enforce.
    pub shadow: bool,
}

impl Authz {
    /// Whether a rule reads the request body (so the proxy must buffer it first).
    pub fn reads_body(&self) -> bool {
        self.rules.iter().any(|r| r.check.reads_body())
    }

    pub fn is_empty(&self) -> bool {
        self.all_of.is_empty()
            && self.any_of.is_empty()
            && self.consent.is_none()
            && self.rules.is_empty()
            && self.response_rules.is_empty()
    }
}

/// RFC 6901 pointer into segments; `~1` and `~0` unescaped. `*` stays a wildcard.
fn pointer(p: &str) -> Option<Vec<String>> {
    if p.is_empty() {
        return Some(Vec::new());
    }
    let rest = p.strip_prefix('/')?;
    rest.split('/')
        .map(|s| {
            if s.contains('~')
                && !s
                    .replace("~0", "")
                    .replace("~1", "")
                    .chars()
                    .all(|c| c != '~')
            {
                None
            } else {
                Some(s.replace("~1", "/").replace("~0", "~"))
            }
        })
        .collect()
}

fn compile_value(
    p: &mut Problems<'_>,
    field: &str,
    v: &FileValue,
    params: &[String],
) -> Option<ValueSource> {
    let set = [&v.path, &v.query, &v.header, &v.json]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if set != 1 {
        p.push(field, "name exactly one of path, query, header or json");
        return None;
    }
    if let Some(name) = &v.path {
        if !params.contains(name) {
            p.push(
                format!("{field}.path"),
                format!("the route template has no parameter {{{name}}}"),
            );
            return None;
        }
        return Some(ValueSource::Path(name.clone()));
    }
    if let Some(q) = &v.query {
        return Some(ValueSource::Query(q.clone()));
    }
    if let Some(h) = &v.header {
        return match http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
            Ok(n) => Some(ValueSource::Header(n)),
            Err(_) => {
                p.push(
                    format!("{field}.header"),
                    format!("`{h}` is not a header name"),
                );
                None
            }
        };
    }
    let j = v.json.as_deref().unwrap_or("");
    match pointer(j) {
        Some(segs) if !segs.is_empty() => Some(ValueSource::Json(segs)),
        _ => {
            p.push(
                format!("{field}.json"),
                format!("`{j}` is not a JSON pointer such as /Data/Initiation/DebtorAccount/Identification"),
            );
            None
        }
    }
}

fn compile_set(p: &mut Problems<'_>, field: &str, s: &FileSet) -> Option<SetSource> {
    match (&s.claim, &s.authorization_details, &s.consent) {
        (Some(c), None, None) if !c.is_empty() && c.split('.').all(|x| !x.is_empty()) => {
            Some(SetSource::Claim(c.split('.').map(str::to_string).collect()))
        }
        (Some(c), None, None) => {
            p.push(
                format!("{field}.claim"),
                format!("`{c}` is not a claim path (name or a.b.c)"),
            );
            None
        }
        (None, Some(a), None) => Some(SetSource::AuthorizationDetails {
            kind: a.r#type.clone(),
            field: a.field.clone(),
        }),
        (None, None, Some(c)) if !c.is_empty() && c.split('.').all(|x| !x.is_empty()) => Some(
            SetSource::Consent(c.split('.').map(str::to_string).collect()),
        ),
        (None, None, Some(c)) => {
            p.push(
                format!("{field}.consent"),
                format!("`{c}` is not a member path (name or Initiation.CreditorAccount.Identification)"),
            );
            None
        }
        _ => {
            p.push(
                field,
                "name exactly one of claim, authorization_details or consent",
            );
            None
        }
    }
}

fn compile_value_rule(
    p: &mut Problems<'_>,
    rf: &dyn Fn(&str) -> String,
    at: &str,
    r: &FileRule,
    v: &FileValue,
    params: &[String],
    has_consent: bool,
) -> Option<Check> {
    let mut ok = true;
    let value = compile_value(p, &rf("value"), v, params);
    let in_set = r.in_set.as_ref().map(|s| compile_set(p, &rf("in"), s));
    let equals = r
        .equals
        .as_ref()
        .map(|v| compile_value(p, &rf("equals"), v, params));
    if r.in_set.is_none() && r.equals.is_none() {
        p.push(at, "a rule needs `in` (a granted set) or `equals`");
        ok = false;
    }
    let needs_consent = r.in_set.as_ref().and_then(|s| s.consent.as_ref()).is_some();
    if needs_consent && !has_consent {
        p.push(
            rf("in.consent"),
            "the route has no `consent` section to read",
        );
        ok = false;
    }
    match (value, in_set, equals) {
        (Some(value), in_set, equals)
            if ok
                && in_set.as_ref().is_none_or(|s| s.is_some())
                && equals.as_ref().is_none_or(|e| e.is_some()) =>
        {
            Some(Check::Value {
                value,
                in_set: in_set.flatten(),
                equals: equals.flatten(),
            })
        }
        _ => None,
    }
}

/// A member path of an `authorization_details` entry: `creditorAccount/iban`.
fn member_path(s: &str) -> Option<Vec<String>> {
    let segs: Vec<String> = s.split('/').map(str::to_string).collect();
    segs.iter().all(|x| !x.is_empty()).then_some(segs)
}

fn compile_grant(
    p: &mut Problems<'_>,
    rf: &dyn Fn(&str) -> String,
    g: &FileGrant,
    params: &[String],
) -> Option<GrantMatch> {
    let mut ok = true;
    if g.r#type.is_empty() {
        p.push(rf("authorization_details.type"), "name the entry type");
        ok = false;
    }
    let line = |p: &mut Problems<'_>, at: String, l: &FileGrantLine| {
        let value = compile_value(p, &format!("{at}.value"), &l.value, params);
        let field = member_path(&l.field);
        if field.is_none() {
            p.push(
                format!("{at}.field"),
                format!(
                    "`{}` is not a member path of an entry (name or creditorAccount/iban)",
                    l.field
                ),
            );
        }
        Some(GrantLine {
            value: value?,
            field: field?,
        })
    };
    let mut lines = Vec::new();
    for (j, l) in g.lines.iter().enumerate() {
        match line(p, rf(&format!("authorization_details.match[{j}]")), l) {
            Some(l) => lines.push(l),
            None => ok = false,
        }
    }
    let amount = match &g.amount {
        None => None,
        Some(l) => {
            let at = rf("authorization_details.amount");
            match line(p, at.clone(), l) {
                // An amount is an object (amount and currency) in a JSON body, and exactly one.
                Some(l) if matches!(&l.value, ValueSource::Json(ptr) if !ptr.iter().any(|s| s == "*")) => {
                    Some(l)
                }
                Some(_) => {
                    p.push(
                        format!("{at}.value"),
                        "an amount is read from the JSON body by a pointer without `*` (an object with amount and currency)",
                    );
                    ok = false;
                    None
                }
                None => {
                    ok = false;
                    None
                }
            }
        }
    };
    for (name, list) in [("actions", &g.actions), ("datatypes", &g.datatypes)] {
        if list.iter().any(|a| a.is_empty()) {
            p.push(
                rf(&format!("authorization_details.{name}")),
                "an empty string names nothing",
            );
            ok = false;
        }
    }
    if let Some(l) = &g.locations {
        // The resource server's own URI, from the policy: the request's Host header is the
        // client's to choose, so it cannot say which server the client is talking to.
        let good = l
            .parse::<http::Uri>()
            .ok()
            .is_some_and(|u| u.scheme().is_some() && u.authority().is_some());
        if !good {
            p.push(
                rf("authorization_details.locations"),
                format!("`{l}` is not an absolute URI such as https://api.bank.example"),
            );
            ok = false;
        }
    }
    if g.lines.is_empty()
        && g.amount.is_none()
        && g.actions.is_empty()
        && g.locations.is_none()
        && g.datatypes.is_empty()
    {
        p.push(
            rf("authorization_details"),
            "list what the entry must grant: match, amount, actions, locations or datatypes",
        );
        ok = false;
    }
    ok.then(|| GrantMatch {
        kind: g.r#type.clone(),
        lines,
        amount,
        actions: g.actions.clone(),
        location: g.locations.clone(),
        datatypes: g.datatypes.clone(),
    })
}

pub(crate) struct FileAuthz<'a> {
    pub scopes: &'a Option<FileScopes>,
    pub consent: &'a Option<FileConsent>,
    pub rules: &'a [FileRule],
    pub response_rules: &'a [FileResponseRule],
    pub shadow: bool,
}

/// Compiles a route's authorization; `params` are the template's parameter names.
pub(crate) fn compile(
    p: &mut Problems<'_>,
    field: &dyn Fn(&str) -> String,
    f: FileAuthz<'_>,
    params: &[String],
    has_auth: bool,
) -> Option<Authz> {
    let mut ok = true;
    let mut out = Authz {
        shadow: f.shadow,
        ..Authz::default()
    };
    if let Some(s) = f.scopes {
        out.all_of = s.all_of.clone();
        out.any_of = s.any_of.clone();
        if s.all_of.is_empty() && s.any_of.is_empty() {
            p.push(field("scopes"), "list all_of or any_of scopes");
            ok = false;
        }
    }
    if let Some(c) = f.consent {
        out.consent = Some(ConsentReq {
            claim: c.claim.clone(),
            status: c
                .status
                .clone()
                .unwrap_or_else(|| vec!["Authorised".into()]),
            permissions: c.permissions.clone(),
        });
    }
    let mut ids = BTreeSet::new();
    for (i, r) in f.rules.iter().enumerate() {
        let rf = |s: &str| field(&format!("rules[{i}].{s}"));
        if !ids.insert(r.id.clone()) || r.id.is_empty() {
            p.push(rf("id"), format!("`{}` is empty or used twice", r.id));
            ok = false;
        }
        let deny_status = r.deny_status.unwrap_or(403);
        if deny_status != 403 && deny_status != 404 {
            p.push(rf("deny_status"), "must be 403 or 404");
            ok = false;
        }
        let check = match (&r.value, &r.authorization_details) {
            (Some(v), None) => compile_value_rule(
                p,
                &rf,
                &field(&format!("rules[{i}]")),
                r,
                v,
                params,
                f.consent.is_some(),
            ),
            (None, Some(g)) => {
                if r.in_set.is_some() || r.equals.is_some() {
                    p.push(
                        field(&format!("rules[{i}]")),
                        "`in` and `equals` belong to a `value` rule, not to an `authorization_details` rule",
                    );
                    ok = false;
                }
                compile_grant(p, &rf, g, params).map(Check::Grant)
            }
            _ => {
                p.push(
                    field(&format!("rules[{i}]")),
                    "a rule names exactly one of `value` or `authorization_details`",
                );
                None
            }
        };
        match check {
            Some(check) => out.rules.push(ObjectRule {
                id: r.id.clone(),
                check,
                hide: deny_status == 404,
                required: r.required.unwrap_or(true),
                shadow: r.shadow,
            }),
            None => ok = false,
        }
    }
    for (i, r) in f.response_rules.iter().enumerate() {
        let rf = |s: &str| field(&format!("response_rules[{i}].{s}"));
        let ptr = pointer(&r.pointer).filter(|s| !s.is_empty());
        if ptr.is_none() {
            p.push(
                rf("pointer"),
                format!("`{}` is not a JSON pointer", r.pointer),
            );
            ok = false;
        }
        let set = compile_set(p, &rf("in"), &r.in_set);
        let action = match r.action.as_deref() {
            None | Some("withhold") => Some(ResponseAction::Withhold),
            Some("remove") => Some(ResponseAction::Remove),
            Some("forbid") => Some(ResponseAction::Forbid),
            Some(o) => {
                p.push(
                    rf("action"),
                    format!("unknown action `{o}` (withhold, remove or forbid)"),
                );
                None
            }
        };
        if action == Some(ResponseAction::Remove)
            && !ptr.as_ref().is_some_and(|s| s.iter().any(|x| x == "*"))
        {
            p.push(
                rf("action"),
                "remove needs a `*` in the pointer (the array element to drop)",
            );
            ok = false;
        }
        if r.in_set.consent.is_some() && f.consent.is_none() {
            p.push(
                rf("in.consent"),
                "the route has no `consent` section to read",
            );
            ok = false;
        }
        match (ptr, set, action) {
            (Some(pointer), Some(in_set), Some(action)) => out.response_rules.push(ResponseRule {
                id: r.id.clone(),
                pointer,
                in_set,
                action,
            }),
            _ => ok = false,
        }
    }
    if !out.is_empty() && !has_auth {
        p.push(
            field("auth"),
            "scopes, consent and object rules need a token: add `auth`",
        );
        ok = false;
    }
    ok.then_some(out)
}

/// A consent record: an OBIE consent resource's `Data` or a flat record.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsentRecord {
    pub status: String,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
    pub permissions: Vec<String>,
    /// Every member, for `in: {consent: <member>}`.
    pub raw: Map<String, Value>,
}

impl ConsentRecord {
    /// Reads one record from JSON: the `Data` of an OBIE (UK Open Banking Read/Write API v3.1 /
    /// v4) consent resource, or a flat record.
    ///
    /// The OBIE shapes carry their status in `Data.Status` (account access: `Authorised`,
    /// `AwaitingAuthorisation`, `Rejected`, `Revoked`; payments add `Consumed`) and end at
    /// `Data.ExpirationDateTime` (account access) or `Data.ControlParameters.ValidToDateTime`
    /// (VRP); account access consents list `Data.Permissions`. Every other member (a payment's
    /// `Initiation`, a VRP's `ControlParameters`) stays in [`ConsentRecord::raw`] for rules to
    /// read by path, e.g. `Initiation.CreditorAccount.Identification`.
    pub fn from_json(v: &Value) -> Option<ConsentRecord> {
        let m: &serde_json::Map<String, Value> =
            v.get("Data").and_then(Value::as_object).or(v.as_object())?;
        let get = |a: &str, b: &str| m.get(a).or_else(|| m.get(b));
        let status = get("status", "Status")?.as_str()?.to_string();
        let vrp_end = || {
            m.get("ControlParameters")
                .and_then(Value::as_object)
                .and_then(|c| c.get("ValidToDateTime"))
        };
        let expires_at = match get("expires", "ExpirationDateTime").or_else(vrp_end) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(n.as_i64()?),
            Some(Value::String(s)) => Some(
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .ok()?
                    .unix_timestamp(),
            ),
            Some(_) => return None,
        };
        let permissions = match get("permissions", "Permissions") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            Some(_) => return None,
        };
        Some(ConsentRecord {
            status,
            expires_at,
            permissions,
            raw: m.clone(),
        })
    }
}

/// The request facts rules read.
pub struct Facts<'a> {
    pub params: &'a [(String, String)],
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Option<&'a [u8]>,
}

portcullis_base::variants! {
    /// Why a request is not authorized.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum AuthzError {
        /// The token lacks a required scope (the scopes it needs, for the challenge).
        Scope(String),
        ConsentMissing,
        ConsentNotFound,
        ConsentStatus,
        ConsentExpired,
        ConsentPermission,
        ConsentUnavailable,
        /// A value is not in the granted set.
        Object,
        /// An `authorization_details` entry grants the request's values but not its amount
        /// (larger, or in another currency).
        GrantAmount,
        /// An amount or currency a rule compares is not a plain decimal string and an ISO 4217
        /// code.
        AmountMalformed,
        /// A required value is absent.
        ObjectMissing,
        /// A repeated query parameter or header, or duplicate JSON members.
        Ambiguous,
        /// Two request values that must agree do not.
        Mismatch,
        /// A rule reads JSON and the body is not a JSON object.
        BodyNotJson,
        /// A response carried an object outside the granted set.
        ResponseLeak,
    }
}

/// A refusal with the rule that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub error: AuthzError,
    pub rule: String,
    /// The rule hides the object's existence (`deny_status: 404`): the refusal must be told
    /// from an unknown resource by nobody but the audit log.
    pub hidden: bool,
    pub shadow: bool,
}

impl Denial {
    fn new(error: AuthzError, rule: &str, hidden: bool, shadow: bool) -> Denial {
        Denial {
            error,
            rule: rule.to_string(),
            hidden,
            shadow,
        }
    }
}

impl portcullis_base::variants::Variants for Denial {
    fn variants() -> Vec<Self> {
        let mut all = Vec::new();
        for error in AuthzError::variants() {
            for hidden in [false, true] {
                all.push(Denial::new(error.clone(), "", hidden, false));
            }
        }
        all
    }
}

fn claim_at<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(claims.get(first)?, |v, k| v.as_object()?.get(k))
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// The granted set named by `s`.
pub fn granted(
    s: &SetSource,
    claims: &Map<String, Value>,
    consent: Option<&ConsentRecord>,
) -> BTreeSet<String> {
    match s {
        SetSource::Claim(path) => claim_at(claims, path)
            .map(strings)
            .unwrap_or_default()
            .into_iter()
            .collect(),
        SetSource::AuthorizationDetails { kind, field } => claims
            .get("authorization_details")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|d| d.get("type").and_then(Value::as_str) == Some(kind.as_str()))
            .filter_map(|d| d.get(field))
            .flat_map(strings)
            .collect(),
        SetSource::Consent(path) => consent
            .and_then(|c| claim_at(&c.raw, path))
            .map(strings)
            .unwrap_or_default()
            .into_iter()
            .collect(),
    }
}

/// JSON values at `ptr` (with `*` over arrays) in `doc`. A member is found the way a
/// case-insensitive binder finds it (ASP.NET Core, Jackson's case-insensitive properties): two
/// siblings whose names differ only in case are ambiguous, and a lone member whose name differs
/// in case from the rule's is the value such an upstream reads.
fn at_pointer<'a>(
    doc: &'a Value,
    ptr: &[String],
    out: &mut Vec<&'a Value>,
) -> Result<(), AuthzError> {
    let Some((first, rest)) = ptr.split_first() else {
        out.push(doc);
        return Ok(());
    };
    match (first.as_str(), doc) {
        ("*", Value::Array(a)) => {
            for v in a {
                at_pointer(v, rest, out)?;
            }
        }
        (k, Value::Object(m)) => {
            let mut twins = m
                .iter()
                .filter(|(name, _)| portcullis_base::path::same_name_ignoring_case(name, k));
            match (twins.next(), twins.next()) {
                (Some(_), Some(_)) => return Err(AuthzError::Ambiguous),
                (Some((_, v)), None) => at_pointer(v, rest, out)?,
                (None, _) => {}
            }
        }
        (k, Value::Array(a)) => {
            if let Some(v) = k.parse::<usize>().ok().and_then(|i| a.get(i)) {
                at_pointer(v, rest, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The request values a source yields: `Ok(vec![])` when absent, `Err` when ambiguous.
fn values(
    src: &ValueSource,
    f: &Facts<'_>,
    body: &Option<Value>,
) -> Result<Vec<String>, AuthzError> {
    match src {
        ValueSource::Path(name) => Ok(f
            .params
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()),
        ValueSource::Query(name) => {
            // Names as upstream frameworks read them: form-decoded, compared ignoring case
            // (ASP.NET Core binds `accountid` to `AccountId`), and `name[]` / `name[x]` is the
            // same parameter to qs, PHP and Rails. More than one such parameter is ambiguous;
            // so is a bracketed one, whose value a framework reads as an array or a map.
            let mut found = Vec::new();
            for (k, v) in portcullis_base::path::query_pairs(f.query.unwrap_or("")) {
                let key = portcullis_base::path::decode_query_component(k)
                    .ok_or(AuthzError::Ambiguous)?;
                let (stem, bracketed) = match key.split_once('[') {
                    Some((stem, _)) => (stem, true),
                    None => (key.as_ref(), false),
                };
                if !portcullis_base::path::same_name_ignoring_case(stem, name) {
                    continue;
                }
                if bracketed {
                    return Err(AuthzError::Ambiguous);
                }
                let value = portcullis_base::path::decode_query_component(v)
                    .ok_or(AuthzError::Ambiguous)?;
                found.push(value.into_owned());
            }
            if found.len() > 1 {
                return Err(AuthzError::Ambiguous);
            }
            Ok(found)
        }
        ValueSource::Header(name) => {
            let all: Vec<_> = f.headers.get_all(name).iter().collect();
            match all.as_slice() {
                [] => Ok(vec![]),
                [one] => Ok(vec![one
                    .to_str()
                    .map_err(|_| AuthzError::Ambiguous)?
                    .to_string()]),
                _ => Err(AuthzError::Ambiguous),
            }
        }
        ValueSource::Json(ptr) => {
            let doc = body.as_ref().ok_or(AuthzError::BodyNotJson)?;
            let mut found = Vec::new();
            at_pointer(doc, ptr, &mut found)?;
            found
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(AuthzError::Ambiguous),
                })
                .collect()
        }
    }
}

/// The consent id the token names, if the route checks consent.
pub fn consent_id<'a>(authz: &Authz, claims: &'a Map<String, Value>) -> Option<&'a str> {
    let c = authz.consent.as_ref()?;
    claims.get(&c.claim).and_then(Value::as_str)
}

/// Decides a request. `consent` is the record the token's consent claim names (looked up by the
/// caller), `Err(ConsentUnavailable)` when the source could not answer.
pub fn evaluate(
    authz: &Authz,
    scopes: &[String],
    claims: &Map<String, Value>,
    consent: Result<Option<&ConsentRecord>, AuthzError>,
    facts: &Facts<'_>,
    now: i64,
) -> Result<(), Denial> {
    let shadow = authz.shadow;
    let missing: Vec<&String> = authz
        .all_of
        .iter()
        .filter(|s| !scopes.contains(s))
        .collect();
    let any_ok = authz.any_of.is_empty() || authz.any_of.iter().any(|s| scopes.contains(s));
    if !missing.is_empty() || !any_ok {
        let need = if !missing.is_empty() {
            authz.all_of.join(" ")
        } else {
            authz.any_of.join(" ")
        };
        return Err(Denial::new(
            AuthzError::Scope(need),
            "scopes",
            false,
            shadow,
        ));
    }
    let mut record = None;
    if let Some(req) = &authz.consent {
        let deny = |e| Err(Denial::new(e, "consent", false, shadow));
        if consent_id(authz, claims).is_none() {
            return deny(AuthzError::ConsentMissing);
        }
        let c = match consent {
            Err(e) => return Err(Denial::new(e, "consent", false, shadow)),
            Ok(None) => return deny(AuthzError::ConsentNotFound),
            Ok(Some(c)) => c,
        };
        if !req.status.contains(&c.status) {
            return deny(AuthzError::ConsentStatus);
        }
        if c.expires_at.is_some_and(|t| t <= now) {
            return deny(AuthzError::ConsentExpired);
        }
        if req.permissions.iter().any(|p| !c.permissions.contains(p)) {
            return deny(AuthzError::ConsentPermission);
        }
        record = Some(c);
    }
    // The body is parsed once, strictly (duplicate members refused), and only if a rule reads it.
    let body = if authz.reads_body() {
        match facts.body.map(portcullis_base::json::parse_object) {
            Some(Some(m)) => Some(Value::Object(m)),
            Some(None) => {
                let dup = facts
                    .body
                    .is_some_and(|b| serde_json::from_slice::<Value>(b).is_ok());
                let e = if dup {
                    AuthzError::Ambiguous
                } else {
                    AuthzError::BodyNotJson
                };
                return Err(Denial::new(e, "body", false, shadow));
            }
            None => None,
        }
    } else {
        None
    };
    for r in &authz.rules {
        let shadow = shadow || r.shadow;
        let bad = |e, hidden| Err(Denial::new(e, &r.id, hidden, shadow));
        let outcome = match &r.check {
            Check::Value {
                value,
                in_set,
                equals,
            } => check_value(
                value, in_set, equals, r.required, claims, record, facts, &body,
            ),
            Check::Grant(g) => check_grant(g, r.required, claims, facts, &body),
        };
        match outcome {
            Ok(()) => {}
            // Only refusals about the object itself may hide it; a malformed or ambiguous
            // request is the caller's own business.
            Err(e @ (AuthzError::Object | AuthzError::ObjectMissing | AuthzError::GrantAmount)) => {
                return bad(e, r.hide)
            }
            Err(e) => return bad(e, false),
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_value(
    value: &ValueSource,
    in_set: &Option<SetSource>,
    equals: &Option<ValueSource>,
    required: bool,
    claims: &Map<String, Value>,
    record: Option<&ConsentRecord>,
    facts: &Facts<'_>,
    body: &Option<Value>,
) -> Result<(), AuthzError> {
    let got = values(value, facts, body)?;
    if got.is_empty() {
        return if required {
            Err(AuthzError::ObjectMissing)
        } else {
            Ok(())
        };
    }
    if let Some(other) = equals {
        let o = values(other, facts, body)?;
        if !(o.iter().all(|x| got.contains(x)) && got.iter().all(|x| o.contains(x))) {
            return Err(AuthzError::Mismatch);
        }
    }
    if let Some(set) = in_set {
        let granted = granted(set, claims, record);
        if !got.iter().all(|v| granted.contains(v)) {
            return Err(AuthzError::Object);
        }
    }
    Ok(())
}

/// A non-negative decimal amount, kept as digits so that comparison is exact: the integer part
/// without leading zeros and the fraction without trailing zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Amount {
    int: String,
    frac: String,
}

/// The longest amount read; OBIE allows 13 integer and 5 fraction digits, so this is generous,
/// and it bounds the work on hostile input.
const MAX_AMOUNT_LEN: usize = 64;

impl Amount {
    /// Parses `digits[.digits]`: no sign (a negative amount grants nothing), no exponent, no
    /// spaces, no `.5` or `5.`. Numbers are read from strings only, never through a float.
    pub fn parse(s: &str) -> Option<Amount> {
        if s.is_empty() || s.len() > MAX_AMOUNT_LEN {
            return None;
        }
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (s, None),
        };
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || !frac.is_none_or(digits) {
            return None;
        }
        let int = int.trim_start_matches('0');
        let frac = frac.unwrap_or("").trim_end_matches('0');
        Some(Amount {
            int: int.to_string(),
            frac: frac.to_string(),
        })
    }
}

impl Ord for Amount {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Without leading zeros the longer integer part is the larger; equal lengths compare
        // digit by digit, and so do fractions (a missing digit is a zero, which sorts first).
        self.int
            .len()
            .cmp(&other.int.len())
            .then_with(|| self.int.cmp(&other.int))
            .then_with(|| self.frac.cmp(&other.frac))
    }
}

impl PartialOrd for Amount {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// An ISO 4217 alphabetic code: three upper-case ASCII letters.
pub fn is_currency(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// The lone member of `m` named `name` ignoring case; twins are ambiguous.
fn member_ignoring_case<'a>(
    m: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a Value>, ()> {
    let mut twins = m
        .iter()
        .filter(|(k, _)| portcullis_base::path::same_name_ignoring_case(k, name));
    match (twins.next(), twins.next()) {
        (Some(_), Some(_)) => Err(()),
        (one, None) => Ok(one.map(|(_, v)| v)),
        (None, Some(_)) => Err(()),
    }
}

/// An `{amount, currency}` object (`InstructedAmount {Amount, Currency}` in OBIE). `None` when
/// it is not one: members missing, repeated in another case, not strings, or malformed.
fn money(v: &Value) -> Option<(Amount, String)> {
    let m = v.as_object()?;
    let amount = member_ignoring_case(m, "amount").ok()??.as_str()?;
    let currency = member_ignoring_case(m, "currency").ok()??.as_str()?;
    is_currency(currency).then_some(())?;
    Some((Amount::parse(amount)?, currency.to_string()))
}

/// The member at `path` of an entry, by exact name: the authorization server wrote it.
fn entry_at<'a>(entry: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(entry, |v, k| v.as_object()?.get(k))
}

/// Whether the entry's optional list `name` (absent: no narrowing) holds every one of `want`.
fn entry_lists(entry: &Value, name: &str, want: &[String]) -> bool {
    if want.is_empty() {
        return true;
    }
    match entry.get(name) {
        None => true,
        Some(Value::Array(a)) => want
            .iter()
            .all(|w| a.iter().any(|x| x.as_str() == Some(w.as_str()))),
        // A malformed list narrows to nothing.
        Some(_) => false,
    }
}

fn check_grant(
    g: &GrantMatch,
    required: bool,
    claims: &Map<String, Value>,
    facts: &Facts<'_>,
    body: &Option<Value>,
) -> Result<(), AuthzError> {
    let mut want = Vec::new();
    for l in &g.lines {
        let got = values(&l.value, facts, body)?;
        if got.is_empty() {
            if required {
                return Err(AuthzError::ObjectMissing);
            }
            continue;
        }
        want.push((&l.field, got));
    }
    let amount = match &g.amount {
        None => None,
        Some(l) => {
            let ValueSource::Json(ptr) = &l.value else {
                return Err(AuthzError::AmountMalformed);
            };
            let doc = body.as_ref().ok_or(AuthzError::BodyNotJson)?;
            let mut found = Vec::new();
            at_pointer(doc, ptr, &mut found)?;
            match found.as_slice() {
                [] if required => return Err(AuthzError::ObjectMissing),
                [] => None,
                [v] => {
                    // Case twins inside the amount object are as ambiguous as anywhere.
                    if let Some(m) = v.as_object() {
                        for k in ["amount", "currency"] {
                            if member_ignoring_case(m, k).is_err() {
                                return Err(AuthzError::Ambiguous);
                            }
                        }
                    }
                    Some((money(v).ok_or(AuthzError::AmountMalformed)?, &l.field))
                }
                _ => return Err(AuthzError::Ambiguous),
            }
        }
    };
    let entries = claims
        .get("authorization_details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|d| d.get("type").and_then(Value::as_str) == Some(g.kind.as_str()));
    // Whether some entry grants everything but the amount: the refusal then says so.
    let mut short = false;
    for e in entries {
        let holds = want.iter().all(|(field, got)| {
            let granted = entry_at(e, field).map(strings).unwrap_or_default();
            got.iter().all(|v| granted.contains(v))
        });
        let location = g.location.as_slice();
        if !holds
            || !entry_lists(e, "actions", &g.actions)
            || !entry_lists(e, "locations", location)
            || !entry_lists(e, "datatypes", &g.datatypes)
        {
            continue;
        }
        let Some(((asked, currency), field)) = &amount else {
            return Ok(());
        };
        match entry_at(e, field).and_then(money) {
            Some((limit, c)) if c == *currency && *asked <= limit => return Ok(()),
            _ => short = true,
        }
    }
    Err(if short {
        AuthzError::GrantAmount
    } else {
        AuthzError::Object
    })
}

/// Checks (and, for `remove` rules, edits) an upstream JSON response. Returns whether it was
/// edited, or the `withhold` or `forbid` rule that refuses it.
pub fn check_response<'r>(
    rules: &'r [ResponseRule],
    claims: &Map<String, Value>,
    consent: Option<&ConsentRecord>,
    doc: &mut Value,
) -> Result<bool, &'r ResponseRule> {
    let mut changed = false;
    for r in rules {
        let granted = granted(&r.in_set, claims, consent);
        match r.action {
            ResponseAction::Withhold | ResponseAction::Forbid => {
                let mut found = Vec::new();
                // Case twins in the response are as ambiguous to the client as to us.
                if at_pointer(doc, &r.pointer, &mut found).is_err() {
                    return Err(r);
                }
                // An answer that does not name its owner proves no ownership.
                if r.action == ResponseAction::Forbid && found.is_empty() {
                    return Err(r);
                }
                if found.iter().any(|v| {
                    !strings(v).iter().all(|s| granted.contains(s))
                        || !(v.is_string() || v.is_array())
                }) {
                    return Err(r);
                }
            }
            ResponseAction::Remove => {
                changed |= remove_outside(doc, &r.pointer, &granted);
            }
        }
    }
    Ok(changed)
}

/// Drops, from the array at the last `*` of `ptr`, each element whose value under the rest of
/// the pointer is not in `granted`.
fn remove_outside(doc: &mut Value, ptr: &[String], granted: &BTreeSet<String>) -> bool {
    let Some(star) = ptr.iter().rposition(|s| s == "*") else {
        return false;
    };
    let (to_array, tail) = (&ptr[..star], &ptr[star + 1..]);
    let mut arrays = vec![doc];
    for seg in to_array {
        arrays = arrays
            .into_iter()
            .flat_map(|v| -> Vec<&mut Value> {
                match (seg.as_str(), v) {
                    ("*", Value::Array(a)) => a.iter_mut().collect(),
                    (k, Value::Object(m)) => m.get_mut(k).into_iter().collect(),
                    _ => Vec::new(),
                }
            })
            .collect();
    }
    let mut changed = false;
    for a in arrays {
        if let Value::Array(items) = a {
            let before = items.len();
            items.retain(|item| {
                let mut found = Vec::new();
                at_pointer(item, tail, &mut found).is_ok()
                    && found.iter().all(|v| {
                        strings(v).iter().all(|s| granted.contains(s))
                            && (v.is_string() || v.is_array())
                    })
            });
            changed |= items.len() != before;
        }
    }
    changed
}

#[cfg(test)]
mod tests;
