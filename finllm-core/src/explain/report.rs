//! A self-contained HTML report of an [`Attribution`]: the prompt as a heat map of its units
//! (warm for units that support the target, cool for units that work against it), a bar chart
//! of the highest-scored units (the sources, for source granularity), the answer and target,
//! and the record an auditor needs (method, parameters, model SHA-256, timings). No script,
//! no font, no image and no address outside the page: it opens offline and can be archived with
//! the audit record.

use std::fmt::Write;

use super::Attribution;

/// Escape text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The heat map's colour for a score, relative to the largest magnitude: red for support,
/// blue against, alpha by magnitude.
pub fn heat(score: f64, max: f64) -> String {
    let a = if max > 0.0 {
        (score.abs() / max).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let a = (a * 0.85 * 1000.0).round() / 1000.0;
    if score >= 0.0 {
        format!("rgba(220,38,38,{a})")
    } else {
        format!("rgba(37,99,235,{a})")
    }
}

/// Units shown in the bar chart.
const BARS: usize = 12;

impl Attribution {
    /// The report as one HTML document (see the module docs).
    pub fn to_html(&self) -> String {
        let max = self.units.iter().map(|u| u.score.abs()).fold(0f64, f64::max);
        let method = serde_json::to_value(self.method)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mut h = String::new();
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
        h.push_str(
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        );
        let _ = write!(h, "<title>finllm explanation ({})</title>", esc(&method));
        h.push_str(
            "<style>body{font-family:sans-serif;margin:24px;color:#111;max-width:1100px}\
             .prompt{white-space:pre-wrap;line-height:1.9;border:1px solid #ccc;padding:12px;font-family:monospace}\
             .u{border-radius:3px;padding:1px 0}.bars{margin-top:8px}.row{display:flex;align-items:center;margin:3px 0}\
             .label{width:360px;overflow:hidden;white-space:nowrap;text-overflow:ellipsis;font-family:monospace;font-size:13px}\
             .bar{height:16px;border-radius:2px}.score{margin-left:8px;font-size:12px}\
             table{border-collapse:collapse;font-size:13px}td{padding:2px 10px 2px 0;vertical-align:top}\
             .answer{background:#f4f4f4;padding:8px;font-family:monospace;white-space:pre-wrap}</style></head><body>",
        );
        let _ = write!(h, "<h1>Why the model answered this ({})</h1>", esc(&method));
        let _ = write!(h, "<h2>Answer</h2><div class=\"answer\">{}</div>", esc(&self.answer));
        let _ = write!(
            h,
            "<p>Target: answer tokens {}..{}: <code>{}</code></p>",
            self.target.start,
            self.target.end,
            esc(&self.target.text)
        );

        // The prompt as a heat map: units coloured by score, the text between them plain.
        h.push_str("<h2>Prompt</h2><div class=\"prompt\" id=\"heatmap\">");
        let mut units: Vec<&super::Unit> = self.units.iter().collect();
        units.sort_by_key(|u| u.byte_start);
        let mut at = 0;
        for u in units {
            if u.byte_start < at || u.byte_end > self.prompt.len() {
                continue;
            }
            h.push_str(&esc(&self.prompt[at..u.byte_start]));
            let _ = write!(
                h,
                "<span class=\"u\" style=\"background:{}\" title=\"{}: {:.4}\">{}</span>",
                heat(u.score, max),
                esc(u.label.as_deref().unwrap_or(&u.text)),
                u.score,
                esc(&self.prompt[u.byte_start..u.byte_end])
            );
            at = u.byte_end;
        }
        h.push_str(&esc(&self.prompt[at.min(self.prompt.len())..]));
        h.push_str("</div>");

        // The highest-scored units as bars.
        let _ = write!(
            h,
            "<h2>{}</h2><div class=\"bars\" id=\"bars\">",
            if self.units.iter().any(|u| u.label.is_some()) {
                "Sources, ranked"
            } else {
                "Units, ranked"
            }
        );
        for u in self.units.iter().take(BARS) {
            let width = if max > 0.0 {
                (u.score.abs() / max * 600.0).round()
            } else {
                0.0
            };
            let _ = write!(
                h,
                "<div class=\"row\"><div class=\"label\" title=\"{0}\">{0}</div>\
                 <div class=\"bar\" style=\"width:{1}px;background:{2}\"></div><span class=\"score\">{3:.4}</span></div>",
                esc(u.label.as_deref().unwrap_or(&u.text)),
                width,
                heat(u.score, max),
                u.score
            );
        }
        h.push_str("</div>");

        // What an auditor needs to reproduce it.
        h.push_str("<h2>Record</h2><table>");
        let mut row = |k: &str, v: String| {
            let _ = write!(h, "<tr><td>{}</td><td><code>{}</code></td></tr>", esc(k), esc(&v));
        };
        row("method", method.clone());
        row("granularity", format!("{:?}", self.granularity).to_lowercase());
        row("parameters", self.parameters.to_string());
        row("model SHA-256", self.model_sha256.clone());
        row("units", self.units.len().to_string());
        row("explanation time", format!("{:.1} ms", self.timings.explain_ms));
        if let Some(a) = self.timings.answer_ms {
            row("answer time", format!("{a:.1} ms"));
        }
        row("forward sequences", self.timings.forward_sequences.to_string());
        if let Some(f) = &self.surrogate {
            row("surrogate LDS", f.lds.map_or("-".into(), |l| format!("{l:.3}")));
        }
        row("finllm", self.finllm_version.to_string());
        h.push_str("</table></body></html>\n");
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_colours_follow_the_sign() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(heat(2.0, 2.0), "rgba(220,38,38,0.85)");
        assert_eq!(heat(-1.0, 2.0), "rgba(37,99,235,0.425)");
        assert_eq!(heat(0.0, 0.0), "rgba(220,38,38,0)");
    }
}
