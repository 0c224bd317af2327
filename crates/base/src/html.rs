//! Self-contained HTML reports (`loadgen --html`, `audit report --html`): escaping, the page
//! frame and small inline SVG line charts.
//!
//! A report is one file opened from a CI artifact or an e-mail, so it loads nothing: no script,
//! no external style sheet, font or image. The page's Content-Security-Policy allows inline
//! styles only, so even a string that escaped [`escape`] could neither run script nor fetch
//! anything. Every string that comes from a scenario, a response or a log goes through
//! [`escape`].

use std::fmt::Write as _;

/// `s` as HTML text or a quoted attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters have no business in a report and some break the parser.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: `title` (escaped here) and `body` (already HTML).
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<title>{}</title>\n<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n",
        escape(title)
    )
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#1b1f24;padding:0 16px}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}\
h3{font-size:15px;margin:18px 0 6px}\
table{border-collapse:collapse;margin:6px 0 12px}td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}.warn{color:#9a6700;font-weight:600}\
.muted{color:#57606a}code{font-size:13px}svg{display:block;margin:4px 0 14px}\
.charts{display:flex;flex-wrap:wrap;gap:8px 24px}";

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    /// A CSS colour.
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// How the x axis is labelled.
pub enum XAxis<'a> {
    /// Plain numbers with a unit, e.g. seconds.
    Linear(&'a str),
    /// Percentiles: x is `-log10(1 - q)`, so 0 is the median's left end (0 %), 1 is 90 %, 2 is
    /// 99 %, 3 is 99.9 %: the tail gets as much room as the body (the usual HdrHistogram plot).
    Percentile,
}

/// A round step of about `span / 5`.
fn step(span: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// An inline SVG line chart, `width` × `height` pixels; `y_unit` labels the y axis. Strings
/// are escaped here. Points that are not finite are skipped. (SVG inside HTML needs no
/// namespace URL, so a report holds no URL at all.)
pub fn line_chart(
    title: &str,
    x: XAxis<'_>,
    y_unit: &str,
    series: &[Series<'_>],
    width: u32,
    height: u32,
) -> String {
    let (w, h) = (f64::from(width), f64::from(height));
    // The legend has a row of its own under the title, so a long title never runs into it.
    let (left, right, top, bottom) = (64.0, 28.0, 46.0, 44.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().filter(finite).copied())
        .collect();
    let x_min = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let y_top = all.iter().map(|p| p.1).fold(0.0, f64::max);
    let (x_min, x_max) = match x {
        // -log10(1 - 0.9999) is 4 plus a rounding error: not a reason for a fifth decade.
        XAxis::Percentile => (0.0, (x_max - 1e-6).max(2.0).ceil()),
        XAxis::Linear(_) if all.is_empty() => (0.0, 1.0),
        XAxis::Linear(_) => (x_min.min(0.0), x_max.max(x_min + 1.0)),
    };
    let y_step = step(if y_top > 0.0 { y_top } else { 1.0 });
    let y_max = (y_top / y_step).ceil().max(1.0) * y_step;
    let sx = |v: f64| left + (v - x_min) / (x_max - x_min) * pw;
    let sy = |v: f64| top + ph - v / y_max * ph;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg width=\"{width}\" height=\"{height}\" \
viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{t}\" font-family=\"system-ui,sans-serif\" font-size=\"11\">\
<text x=\"{left}\" y=\"16\" font-size=\"13\" font-weight=\"600\">{t}</text>",
        t = escape(title)
    );
    // Grid and y labels.
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let y = sy(v);
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e5e8eb\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#57606a\">{}</text>",
            left + pw,
            left - 6.0,
            y + 4.0,
            num(v)
        );
        v += y_step;
    }
    let _ = write!(
        svg,
        "<text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\" fill=\"#57606a\">{}</text>",
        top + ph / 2.0,
        escape(y_unit)
    );
    // X labels.
    let x_label = match x {
        XAxis::Percentile => {
            let mut d = 0.0;
            while d <= x_max + 1e-9 {
                let label = match d as u32 {
                    0 => "0%".to_string(),
                    1 => "90%".to_string(),
                    2 => "99%".to_string(),
                    n => format!("99.{}%", "9".repeat(n as usize - 2)),
                };
                let xx = sx(d);
                let _ = write!(
                    svg,
                    "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"#e5e8eb\"/>\
<text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\">{label}</text>",
                    top + ph,
                    top + ph + 15.0
                );
                d += 1.0;
            }
            "percentile".to_string()
        }
        XAxis::Linear(unit) => {
            let xs = step(x_max - x_min);
            let mut d = (x_min / xs).ceil() * xs;
            while d <= x_max + xs * 1e-9 {
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\">{}</text>",
                    sx(d),
                    top + ph + 15.0,
                    num(d)
                );
                d += xs;
            }
            escape(unit)
        }
    };
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\">{x_label}</text>\
<rect x=\"{left}\" y=\"{top}\" width=\"{pw:.1}\" height=\"{ph:.1}\" fill=\"none\" stroke=\"#8c959f\"/>",
        left + pw / 2.0,
        h - 8.0
    );
    if all.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\">no data</text>",
            left + pw / 2.0,
            top + ph / 2.0
        );
    }
    // Lines and legend.
    let mut lx = left;
    for s in series {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(finite)
            .map(|&(a, b)| format!("{:.1},{:.1}", sx(a), sy(b)))
            .collect();
        let color = escape(s.color);
        if pts.len() == 1 {
            let _ = write!(
                svg,
                "<circle cx=\"{}\" r=\"3\" fill=\"{color}\"/>",
                pts[0].replace(',', "\" cy=\"")
            );
        } else if !pts.is_empty() {
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.6\" points=\"{}\"/>",
                pts.join(" ")
            );
        }
        let name = escape(s.name);
        let _ = write!(
            svg,
            "<rect x=\"{lx:.1}\" y=\"25\" width=\"10\" height=\"10\" fill=\"{color}\"/>\
<text x=\"{:.1}\" y=\"34\">{name}</text>",
            lx + 13.0
        );
        lx += 24.0 + 7.0 * s.name.chars().count() as f64;
    }
    svg.push_str("</svg>");
    svg
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC` (for the page's header).
pub fn utc(unix_s: f64) -> String {
    if !unix_s.is_finite() || unix_s < 0.0 {
        return "-".into();
    }
    let secs = unix_s as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 of an RFC 3339 time's date (`YYYY-MM-DD…`); `None` if it has none.
pub fn unix_days(rfc3339: &str) -> Option<i64> {
    let d = rfc3339.get(..10)?;
    let b = d.as_bytes();
    if b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = d[..4].parse().ok()?;
    let m: i64 = d[5..7].parse().ok()?;
    let day: i64 = d[8..10].parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), the inverse of [`utc`]'s date.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_times_are_utc_dates() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_798_761_599.5), "2026-12-31 23:59:59 UTC");
        assert_eq!(utc(f64::NAN), "-");
        assert_eq!(unix_days("1970-01-02T00:00:00Z"), Some(1));
        assert_eq!(
            unix_days("2026-12-31T23:59:59Z"),
            Some(1_798_761_599 / 86_400)
        );
        assert_eq!(unix_days("2026-13-01"), None);
        assert_eq!(unix_days("20261231"), None);
        assert_eq!(unix_days("é"), None);
    }

    use super::*;

    #[test]
    fn markup_in_a_string_is_text() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(escape("a\u{0}b"), "a\u{FFFD}b");
        let svg = line_chart(
            "<b>",
            XAxis::Linear("s"),
            "ms",
            &[Series {
                name: "<i>",
                color: "red\"/><script>",
                points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0)],
            }],
            400,
            200,
        );
        assert!(!svg.contains("<b>") && !svg.contains("<i>") && !svg.contains("<script"));
        assert!(svg.contains("&lt;b&gt;") && svg.contains("<polyline"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn an_empty_chart_says_so() {
        let svg = line_chart("t", XAxis::Percentile, "ms", &[], 300, 150);
        assert!(svg.contains("no data") && svg.ends_with("</svg>"));
    }
}
