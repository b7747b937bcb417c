//! Which text format `/metrics` answers in, chosen from the scraper's `Accept` header, as
//! client_golang's `promhttp` does: OpenMetrics 1.0 to a scraper that asks for it
//! (Prometheus, vmagent, Grafana Agent), the Prometheus text format 0.0.4 to every other
//! client (`curl`, `promtool check metrics`, older scrapers).
//!
//! [`prometheus_client`] only writes OpenMetrics; [`to_text_format`] rewrites it. The two
//! differ, for what the registry holds, only in metadata: OpenMetrics names a counter's
//! family without `_total` (`# TYPE x counter`, sample `x_total`), the 0.0.4 format with
//! it; 0.0.4 has no `# UNIT`, no `# EOF`, no `_created` samples, and calls `unknown`
//! `untyped` and an info metric a gauge. Sample lines are the same.

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Text,
}

impl Format {
    /// The format for a request's `Accept` header: OpenMetrics when it accepts
    /// `application/openmetrics-text` at least as much as `text/plain`, else 0.0.4.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut open_metrics, mut text) = (0.0_f64, 0.0_f64);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f64>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open_metrics = open_metrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if open_metrics > 0.0 && open_metrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites an OpenMetrics exposition (as [`prometheus_client`] writes it, without
/// exemplars) into the Prometheus text format 0.0.4.
pub fn to_text_format(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    // The family's HELP line waits for its TYPE line, which says whether the name changes.
    let mut help: Option<(&str, &str)> = None;
    let mut counter: Option<&str> = None;
    for line in open_metrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "unknown" => (family.to_owned(), "untyped"),
                "stateset" => (family.to_owned(), "gauge"),
                "gaugehistogram" => (family.to_owned(), "histogram"),
                other => (family.to_owned(), other),
            };
            counter = (kind == "counter").then_some(family);
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: no 0.0.4 equivalent.
        } else if counter.is_some_and(|c| is_sample_of(line, &format!("{c}_created"))) {
            // Creation timestamps have no 0.0.4 equivalent.
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Whether `line` is a sample of the series `name` (followed by labels or the value).
fn is_sample_of(line: &str, name: &str) -> bool {
    line.strip_prefix(name)
        .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_asks_for_openmetrics_and_curl_gets_the_text_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.5")),
            Format::Text,
            "the client prefers text"
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Format::Text,
            "q=0 refuses"
        );
    }

    #[test]
    fn counters_take_total_in_their_metadata_and_openmetrics_only_lines_go() {
        let om = "# HELP a_events Events.\n# TYPE a_events counter\na_events_total{p=\"0\"} 3\na_events_created{p=\"0\"} 1.7e9\n\
                  # HELP a_lag_seconds Lag.\n# TYPE a_lag_seconds gauge\n# UNIT a_lag_seconds seconds\na_lag_seconds 1.5\n\
                  # HELP a_build Build.\n# TYPE a_build info\na_build_info{v=\"1\"} 1\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP a_events_total Events.\n# TYPE a_events_total counter\na_events_total{p=\"0\"} 3\n\
             # HELP a_lag_seconds Lag.\n# TYPE a_lag_seconds gauge\na_lag_seconds 1.5\n\
             # HELP a_build_info Build.\n# TYPE a_build_info gauge\na_build_info{v=\"1\"} 1\n"
        );
    }
}
