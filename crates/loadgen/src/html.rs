//! `loadgen --html FILE`: the run as one self-contained page — the parameters, the threshold
//! and refusal checks, and inline SVG plots of latency over time, the latency distribution and
//! throughput and errors over time — that a CI artifact can be opened as. Every string from the
//! scenario or the target (names, reasons) is escaped.

use std::fmt::Write as _;

use portcullis_base::html::{escape, line_chart, page, utc, Series, XAxis};

use super::report::{Figures, Summary};

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn counts<K: std::fmt::Display>(m: &std::collections::BTreeMap<K, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{}: {v}", escape(&k.to_string())))
        .collect::<Vec<_>>()
        .join("<br>")
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "<span class=\"pass\">pass</span>"
    } else {
        "<span class=\"fail\">FAIL</span>"
    }
}

/// A route whose expected statuses include one outside 2xx: it checks that the target refuses.
fn is_refusal_check(f: &Figures) -> bool {
    f.expect
        .as_ref()
        .is_some_and(|e| e.iter().any(|s| !(200..300).contains(s)))
}

/// The whole page.
pub fn render(s: &Summary) -> String {
    let mut b = String::new();
    let t = &s.total;
    let _ = write!(
        b,
        "<h1>Load test: {} — {}</h1>\
<p class=\"muted\">portcullis loadgen, started {} (end of the warm-up), {:.2} s measured.</p>\
<p><b>{}</b> answers, <b>{:.1}</b> req/s ({:.1} with the expected status), errors <b>{}</b> \
({:.3} %), latency p50 <b>{}</b> ms, p99 <b>{}</b> ms, max {} ms.</p>",
        escape(&s.scenario),
        if s.passed {
            "<span class=\"pass\">PASSED</span>"
        } else {
            "<span class=\"fail\">FAILED</span>"
        },
        utc(s.started_unix_s),
        s.seconds,
        t.requests,
        t.rps,
        t.ok_rps,
        t.errors,
        t.error_rate * 100.0,
        ms(t.latency.p50_us),
        ms(t.latency.p99_us),
        ms(t.latency.max_us),
    );

    // Parameters.
    let load = match s.rate {
        Some(r) => format!("open loop at {r} req/s (latency from the intended send time)"),
        None => "closed loop (each connection sends when answered)".into(),
    };
    let _ = write!(
        b,
        "<h2>Parameters</h2><table>\
<tr><th>scenario</th><td>{}</td></tr>\
<tr><th>load</th><td>{}</td></tr>\
<tr><th>protocol</th><td>{}</td></tr>\
<tr><th>connections</th><td>{}</td></tr>\
<tr><th>warm-up</th><td>{:.1} s (not measured)</td></tr>\
<tr><th>measured</th><td>{:.2} s</td></tr>\
<tr><th>routes</th><td>{}</td></tr>\
<tr><th>tokens minted</th><td>{}</td></tr>\
<tr><th>DPoP nonce retries</th><td>{}</td></tr>\
<tr><th>latency precision</th><td>{}</td></tr></table>",
        escape(&s.scenario),
        escape(&load),
        escape(s.protocol),
        s.connections,
        s.warmup_seconds,
        s.seconds,
        s.routes
            .keys()
            .map(|k| escape(k))
            .collect::<Vec<_>>()
            .join(", "),
        s.tokens_minted,
        s.dpop_nonce_retries,
        escape(s.latency_precision),
    );

    // Thresholds.
    b.push_str("<h2>Thresholds</h2><table><tr><th>check</th><th>limit</th><th>actual</th><th>result</th></tr>");
    for c in &s.thresholds {
        let _ = write!(
            b,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.4}</td><td>{}</td></tr>",
            escape(&c.name),
            c.limit,
            c.actual,
            verdict(c.passed)
        );
    }
    if t.requests == 0 {
        b.push_str("<tr><td colspan=\"4\" class=\"fail\">no request was answered</td></tr>");
    }
    b.push_str("</table>");

    // Refusal checks.
    b.push_str("<h2>Refusal checks</h2>");
    let checks: Vec<(&String, &Figures)> = s
        .routes
        .iter()
        .filter(|(_, f)| is_refusal_check(f))
        .collect();
    if checks.is_empty() {
        b.push_str(
            "<p class=\"muted\">No route of this scenario expects a refusal \
(a route whose <code>expect</code> lists a status outside 2xx).</p>",
        );
    } else {
        b.push_str(
            "<table><tr><th>route</th><th>expected status</th><th>answers</th>\
<th>as expected</th><th>errors</th><th>refusals seen (status reason)</th><th>result</th></tr>",
        );
        for (name, f) in checks {
            let expect = f
                .expect
                .as_ref()
                .map(|e| e.iter().map(u16::to_string).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                escape(name),
                escape(&expect),
                f.requests,
                f.ok,
                f.errors,
                counts(&f.refusals),
                verdict(f.errors == 0 && f.requests > 0)
            );
        }
        b.push_str("</table>");
    }

    // Plots.
    let secs = |i: usize| i as f64 + 0.5;
    let tl = &s.timeline;
    let answered = |i: usize| tl[i].max_us > 0;
    let lat = |f: fn(&super::report::Tick) -> u32| -> Vec<(f64, f64)> {
        (0..tl.len())
            .filter(|&i| answered(i))
            .map(|i| (secs(i), f64::from(f(&tl[i])) / 1000.0))
            .collect()
    };
    b.push_str("<h2>Plots</h2><div class=\"charts\">");
    b.push_str(&line_chart(
        "Latency over time (per second)",
        XAxis::Linear("seconds since the end of the warm-up"),
        "ms",
        &[
            Series {
                name: "p50",
                color: "#0969da",
                points: lat(|t| t.p50_us),
            },
            Series {
                name: "p99",
                color: "#bf3989",
                points: lat(|t| t.p99_us),
            },
            Series {
                name: "max",
                color: "#8c959f",
                points: lat(|t| t.max_us),
            },
        ],
        560,
        300,
    ));
    let dist: Vec<(f64, f64)> = s
        .latency_distribution
        .iter()
        .filter(|q| q.quantile < 1.0)
        .map(|q| (-(1.0 - q.quantile).log10(), q.us as f64 / 1000.0))
        .collect();
    b.push_str(&line_chart(
        "Latency distribution (all answers)",
        XAxis::Percentile,
        "ms",
        &[Series {
            name: "latency",
            color: "#0969da",
            points: dist,
        }],
        560,
        300,
    ));
    let per_second = |f: fn(&super::report::Tick) -> u64| -> Vec<(f64, f64)> {
        (0..tl.len()).map(|i| (secs(i), f(&tl[i]) as f64)).collect()
    };
    b.push_str(&line_chart(
        "Throughput and errors over time",
        XAxis::Linear("seconds since the end of the warm-up"),
        "requests per second",
        &[
            Series {
                name: "requests",
                color: "#1a7f37",
                points: per_second(|t| t.requests),
            },
            Series {
                name: "errors",
                color: "#cf222e",
                points: per_second(|t| t.errors),
            },
        ],
        560,
        300,
    ));
    if s.rate.is_some() {
        b.push_str(&line_chart(
            "Backlog (requests queued or under way, most per second)",
            XAxis::Linear("seconds since the end of the warm-up"),
            "requests",
            &[Series {
                name: "backlog",
                color: "#9a6700",
                points: per_second(|t| u64::from(t.backlog)),
            }],
            560,
            300,
        ));
    }
    b.push_str("</div>");
    let _ = write!(
        b,
        "<p class=\"muted\">Percentiles are nearest rank to {}; the maximum is exact. A point \
is a second of the run by {} time.</p>",
        escape(s.latency_precision),
        if s.rate.is_some() {
            "intended send"
        } else {
            "send"
        }
    );

    // Routes.
    b.push_str(
        "<h2>Routes</h2><table><tr><th>route</th><th>answers</th><th>ok</th><th>req/s</th>\
<th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th>\
<th>statuses</th><th>errors</th><th>errors by reason</th></tr>",
    );
    let mut rows: Vec<(String, &Figures)> = s.routes.iter().map(|(k, v)| (escape(k), v)).collect();
    rows.push(("<b>all</b>".into(), &s.total));
    for (name, f) in rows {
        let l = &f.latency;
        let _ = write!(
            b,
            "<tr><td>{name}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1}</td>\
<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            f.requests,
            f.ok,
            f.rps,
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            counts(&f.statuses),
            f.errors,
            counts(&f.errors_by_reason)
        );
    }
    b.push_str("</table>");
    page(&format!("loadgen: {}", s.scenario), &b)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::report::{Outcome, Recorder, RunFacts};
    use super::*;

    #[test]
    fn names_and_reasons_from_the_scenario_and_the_target_are_escaped() {
        let mut rec = Recorder::new(2);
        let ms = Duration::from_millis;
        rec.record(
            ms(100),
            0,
            None,
            ms(2),
            Outcome::Answer {
                status: 200,
                reason: None,
            },
        );
        rec.record(
            ms(1200),
            1,
            Some(&[401]),
            ms(1),
            Outcome::Answer {
                status: 401,
                reason: Some("<img src=x onerror=alert(1)>".into()),
            },
        );
        let s = Summary::build(
            rec,
            RunFacts {
                scenario: "<b>s</b>",
                route_names: vec!["<script>alert(1)</script>", "refused"],
                mode: "closed",
                protocol: "http1",
                connections: 1,
                rate: None,
                seconds: 2.0,
                warmup: Duration::ZERO,
                tokens_minted: 0,
                dpop_nonce_retries: 0,
                token_refreshes: 0,
                thresholds: Default::default(),
                started_unix_s: 0.0,
                route_expect: vec![None, Some(vec![401])],
                second_percentiles: vec![(2000, 2000), (1000, 1000)],
            },
        );
        let page = render(&s);
        assert!(!page.contains("<script") && !page.contains("<img") && !page.contains("<b>s"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("401 &lt;img src=x onerror=alert(1)&gt;"));
        assert!(page.contains("&lt;b&gt;s&lt;/b&gt;"));
        assert_eq!(
            page.matches("<svg").count(),
            3,
            "closed loop: no backlog plot"
        );
        assert!(
            page.contains("<td>refused</td><td>401</td>"),
            "a refusal check row"
        );
    }
}
