//! The one place a request's audit record is composed: from what the request said of itself
//! ([`Head`]), what the stages established ([`Trail`]) and how it ended ([`Outcome`]). Stages
//! never write record fields; the guard in `crate::proxy` calls [`compose`] exactly once per
//! request, on every path.

use std::sync::Arc;
use std::time::Duration;

use crate::pipeline::contract::{AnswerOutcome, Answered};
use crate::pipeline::ratelimit::Scope;
use crate::pipeline::rejection::Decision;
use crate::pipeline::{Rejection, Trail};
use portcullis_audit::{
    AlertRecord, ContractRecord, ContractResponseRecord, RequestRecord, SignatureRecord,
};
use portcullis_base::text::bounded;

/// The status recorded for a request whose client left before any answer was made (the
/// convention of nginx's logs, which operators know).
const CLIENT_CLOSED: u16 = 499;

/// What the request said of itself before any stage ran.
#[derive(Debug, Default)]
pub(crate) struct Head {
    pub(crate) interaction_id: String,
    pub(crate) trace_id: String,
    pub(crate) span_id: String,
    pub(crate) conn_id: u64,
    pub(crate) conn_members: Arc<str>,
    pub(crate) http_version: &'static str,
    pub(crate) bytes_in: Option<u64>,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) has_query: bool,
    pub(crate) policy_version: String,
    /// Who the connection is, for the detectors (`crate::detection`); not recorded from here
    /// (the connection's members carry it).
    pub(crate) peer_ip: Option<std::net::IpAddr>,
    pub(crate) client_cert: Option<Arc<portcullis_crypto::pki::ClientCert>>,
}

/// A refusal as the record states it.
#[derive(Debug)]
pub(crate) struct Refusal {
    decision: Decision,
    stage: &'static str,
    reason: &'static str,
    rule: Option<String>,
    /// The scope of a rate limit that refused (for the metric).
    pub(crate) limited: Option<&'static str>,
}

impl Refusal {
    pub(crate) fn of(r: &Rejection) -> Refusal {
        let mut limited = None;
        if let Rejection::RateLimited(l) = r {
            limited = (l.scope != Scope::Unavailable).then_some(l.scope.as_str());
        }
        Refusal {
            decision: r.decision(),
            stage: r.stage().as_str(),
            reason: r.audit_reason(),
            rule: r.rule().map(str::to_string),
            limited,
        }
    }
}

/// How the request ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// An answer was made: forwarded, replayed, or a refusal.
    Answered {
        status: u16,
        bytes_out: Option<u64>,
        took: Duration,
        refusal: Option<Refusal>,
    },
    /// The handler was dropped before it answered: the client reset the stream or closed the
    /// connection.
    Cancelled { took: Duration },
}

/// The record of one request.
pub(crate) fn compose(head: Head, trail: Trail, outcome: Outcome) -> RequestRecord {
    let shadow = trail
        .shadow
        .as_ref()
        .map(|(r, rule)| (r.stage().as_str(), r.audit_reason(), rule.clone()));
    let shadow_rule = shadow.as_ref().map(|s| s.2.clone());
    let (decision, stage, reason, rule_id, status, bytes_out, took, cancelled) = match outcome {
        Outcome::Answered {
            status,
            bytes_out,
            took,
            refusal: Some(r),
        } => (
            r.decision.as_str(),
            Some(r.stage),
            Some(r.reason),
            r.rule.or(shadow_rule),
            status,
            bytes_out,
            took,
            false,
        ),
        Outcome::Answered {
            status,
            bytes_out,
            took,
            refusal: None,
        } => match shadow {
            Some((stage, reason, rule)) => (
                Decision::ShadowDeny.as_str(),
                Some(stage),
                Some(reason),
                Some(rule),
                status,
                bytes_out,
                took,
                false,
            ),
            None => (
                Decision::Allow.as_str(),
                None,
                None,
                None,
                status,
                bytes_out,
                took,
                false,
            ),
        },
        Outcome::Cancelled { took } => (
            Decision::Cancelled.as_str(),
            trail.forwarded.then_some("upstream"),
            Some("client_gone"),
            shadow_rule,
            CLIENT_CLOSED,
            None,
            took,
            true,
        ),
    };
    let token = trail.token.as_deref();
    RequestRecord {
        interaction_id: head.interaction_id,
        trace_id: Some(head.trace_id),
        span_id: Some(head.span_id),
        conn_members: Some(head.conn_members),
        conn_id: head.conn_id,
        http_version: head.http_version,
        client_id: token.and_then(|t| t.client_id.as_deref()).map(bounded),
        subject: token.and_then(|t| t.sub.as_deref()).map(bounded),
        token_jti: token.and_then(|t| t.jti.as_deref()).map(bounded),
        token_hash: token.map(|t| t.hash.clone()),
        scopes: token.map(|t| t.scopes.iter().map(|s| bounded(s)).collect()),
        scopes_required: trail.scopes_required,
        consent_id: trail.consent_id,
        method: head.method,
        path: head.path,
        has_query: head.has_query,
        route_id: trail.route_id,
        rule_id,
        decision,
        stage,
        reason,
        status,
        bytes_in: head.bytes_in,
        bytes_out,
        signature: trail.signature.as_ref().map(|v| SignatureRecord {
            kind: v.kind(),
            kid: bounded(v.kid()),
            alg: bounded(v.alg()),
            hash: v.hash().to_string(),
        }),
        idempotency: trail.idempotency,
        revocation: trail.revocation,
        revocation_crl: trail.revocation_crl,
        rate_limit: trail.rate_limit,
        contract: trail.contract.map(|c| ContractRecord {
            operation: bounded(&c.operation),
            mode: c.mode.as_str(),
            result: if c.violation.is_some() {
                "invalid"
            } else {
                "valid"
            },
            keyword: c.violation.as_ref().map(|v| bounded(&v.keyword)),
            pointer: c.violation.map(|v| bounded(&v.pointer)),
            response: trail.contract_answer.as_ref().map(answer_record),
        }),
        upstream_status: trail.upstream.map(|u| u.0),
        upstream_latency_us: trail.upstream.map(|u| u.1.as_micros() as u64),
        upstream_attempts: trail.tries.as_ref().map(|t| u64::from(t.count)),
        upstream_endpoints: trail.tries.map(|t| t.endpoints).filter(|e| !e.is_empty()),
        total_latency_us: took.as_micros() as u64,
        policy_version: head.policy_version,
        client_gone: trail.client_gone || cancelled,
        ..RequestRecord::default()
    }
}

/// The answer's check as the record states it: where it drifted, never a value of it.
fn answer_record(a: &Answered) -> ContractResponseRecord {
    let mut r = ContractResponseRecord {
        mode: a.mode.as_str(),
        result: "ok",
        status: a.status,
        ..ContractResponseRecord::default()
    };
    match &a.outcome {
        AnswerOutcome::Ok => {}
        AnswerOutcome::Drift(d) => {
            r.result = "invalid";
            r.pointer = Some(bounded(d.pointer()));
            r.keyword = Some(bounded(d.keyword()));
        }
        AnswerOutcome::Unchecked(why) => {
            r.result = "unchecked";
            r.why = Some(why);
        }
    }
    r
}

/// The record of a detector that fired, with the request that fired it.
pub(crate) fn alert(a: &portcullis_detect::Alert, request: &RequestRecord) -> AlertRecord {
    AlertRecord {
        detector: a.detector.as_str(),
        action: a.action.as_str(),
        subject: bounded(&a.subject),
        count: a.count,
        threshold: a.threshold,
        window_s: a.window_s,
        reason: bounded(&a.reason),
        route_id: a.route.as_deref().map(bounded),
        scope: a.scope.as_deref().map(bounded),
        client_id: request.client_id.clone(),
        quarantined_until: a
            .quarantined_until
            .and_then(portcullis_audit::unix_to_rfc3339),
        interaction_id: Some(request.interaction_id.clone()),
    }
}

/// The record of a quarantine an operator lifted from the admin listener.
pub(crate) fn lifted(subject: &str, admin_peer: std::net::SocketAddr) -> portcullis_audit::Record {
    portcullis_audit::Record::QuarantineLifted(portcullis_audit::QuarantineLiftedRecord {
        subject: bounded(subject),
        admin_peer: admin_peer.to_string(),
    })
}
