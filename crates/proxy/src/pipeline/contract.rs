//! The request contract stage: a route's OpenAPI operation, compiled at load
//! (`portcullis_policy::contract`), checked against the matched path's parameters, the query,
//! the headers and the buffered body — the bytes that are forwarded.

use http::request::Parts;

use super::Rejection;
use portcullis_policy::contract::{
    Contract, ContractMode, Request, ResponseDrift, ResponseMode, Violation,
};
use portcullis_policy::RouteMatch;

/// What the check found, for the audit record and the decision.
#[derive(Clone, Debug)]
pub(crate) struct Checked {
    pub(crate) operation: String,
    pub(crate) mode: ContractMode,
    pub(crate) violation: Option<Violation>,
}

impl Checked {
    /// The refusal, when the contract is enforced and broken.
    pub(crate) fn refusal(&self) -> Option<Rejection> {
        match (&self.violation, self.mode) {
            (Some(v), ContractMode::Enforce) => Some(Rejection::Contract(v.clone())),
            _ => None,
        }
    }

    /// The refusal a shadow contract would have made.
    pub(crate) fn shadow_refusal(&self) -> Option<Rejection> {
        match (&self.violation, self.mode) {
            (Some(v), ContractMode::Shadow) => Some(Rejection::Contract(v.clone())),
            _ => None,
        }
    }
}

pub(crate) fn check(
    c: &Contract,
    route: &RouteMatch,
    parts: &Parts,
    body: Option<&[u8]>,
) -> Checked {
    let violation = c
        .check(&Request {
            params: &route.params,
            query: parts.uri.query(),
            headers: &parts.headers,
            body,
        })
        .err();
    Checked {
        operation: c.operation.clone(),
        mode: c.mode,
        violation,
    }
}

portcullis_base::variants! {
    /// Why an answer was withheld on a route whose contract enforces its responses (502): one
    /// reason code each (`contract.response_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum ResponseRefusal {
        /// The body does not fit the schema declared for its status.
        Invalid,
        /// The operation declares no response for the status.
        Status,
        /// The body could not be checked within the bound (or could not be read).
        Unchecked,
    }
}

/// What became of the upstream's answer on a route whose contract checks responses, for the
/// audit record and the metric.
#[derive(Clone, Debug)]
pub(crate) struct Answered {
    pub(crate) status: u16,
    pub(crate) mode: ResponseMode,
    pub(crate) outcome: AnswerOutcome,
}

#[derive(Clone, Debug)]
pub(crate) enum AnswerOutcome {
    Ok,
    Drift(ResponseDrift),
    /// Not checked, and why (a bounded set).
    Unchecked(&'static str),
}

impl Answered {
    /// The refusal, when the contract enforces responses and the answer breaks it or could not
    /// be checked (fail closed).
    pub(crate) fn refusal(&self) -> Option<Rejection> {
        if self.mode != ResponseMode::Enforce {
            return None;
        }
        match &self.outcome {
            AnswerOutcome::Ok => None,
            AnswerOutcome::Drift(ResponseDrift::Status) => {
                Some(Rejection::ContractResponse(ResponseRefusal::Status))
            }
            AnswerOutcome::Drift(ResponseDrift::Body(_)) => {
                Some(Rejection::ContractResponse(ResponseRefusal::Invalid))
            }
            // An answer to HEAD has no body by definition: nothing was withheld from the check.
            AnswerOutcome::Unchecked(HEAD) => None,
            AnswerOutcome::Unchecked(_) => {
                Some(Rejection::ContractResponse(ResponseRefusal::Unchecked))
            }
        }
    }
}

/// Why an answer to HEAD is not checked (and, under enforce, still not withheld).
const HEAD: &str = "head";

/// The largest answer read to check it. Answers are buffered only on routes whose contract
/// checks responses, and only up to this: a larger one is never held whole.
pub(crate) const MAX_CHECKED_ANSWER: u64 = 4 * 1024 * 1024;

/// Reads and checks the upstream's answer. Shadow reads only an answer that declares its
/// length within the bound; one streamed without a length, or over the bound, is passed on as
/// it comes and recorded `unchecked` — no latency and no memory for a check that would not
/// refuse anything. Enforce reads up to the bound whatever the framing, since an answer it
/// cannot check is withheld anyway (fail closed). `head`: the request was HEAD (no body comes).
pub(crate) async fn check_answer(
    c: &Contract,
    parts: &http::response::Parts,
    body: hyper::body::Incoming,
    head: bool,
) -> (Answered, Result<Body, hyper::body::Incoming>) {
    use http_body_util::BodyExt;
    let status = parts.status.as_u16();
    let answered = |outcome| Answered {
        status,
        mode: c.response,
        outcome,
    };
    let declared = crate::pipeline::http::declared_length(&parts.headers);
    let bodiless = head
        || parts.status.is_informational()
        || parts.status == http::StatusCode::NO_CONTENT
        || parts.status == http::StatusCode::NOT_MODIFIED;
    if head {
        return (answered(AnswerOutcome::Unchecked(HEAD)), Err(body));
    }
    let enforce = c.response == ResponseMode::Enforce;
    match declared {
        Some(n) if n > MAX_CHECKED_ANSWER => {
            return (answered(AnswerOutcome::Unchecked("over_limit")), Err(body));
        }
        None if !enforce && !bodiless => {
            return (answered(AnswerOutcome::Unchecked("streamed")), Err(body));
        }
        _ => {}
    }
    let bytes = match http_body_util::Limited::new(body, MAX_CHECKED_ANSWER as usize)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let why = if e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                "over_limit"
            } else {
                "read_failed"
            };
            return (answered(AnswerOutcome::Unchecked(why)), Ok(Body::Failed));
        }
    };
    let json = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            let base = t
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            base == "application/json" || base.ends_with("+json")
        });
    let outcome = match c.check_response(status, json, &bytes) {
        Ok(()) => AnswerOutcome::Ok,
        Err(d) => AnswerOutcome::Drift(d),
    };
    (answered(outcome), Ok(Body::Read(bytes)))
}

/// An answer [`check_answer`] read.
pub(crate) enum Body {
    Read(bytes::Bytes),
    /// Reading it failed (the upstream broke off, or it outgrew the bound mid-stream): there is
    /// nothing whole to forward.
    Failed,
}
