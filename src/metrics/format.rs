//! The two text formats a scraper may ask for. The client library writes OpenMetrics;
//! Prometheus asks for it in its `Accept` header, while other readers (`promtool check
//! metrics`, curl, older scrapers) read the classic text format 0.0.4, which names a
//! counter's family with its `_total` suffix and has no `# UNIT` or `# EOF` lines.

/// The format of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// `openmetrics` (what the library wrote) in this format.
    pub fn write(self, openmetrics: String) -> String {
        match self {
            Format::OpenMetrics => openmetrics,
            Format::Text => classic(&openmetrics),
        }
    }
}

/// OpenMetrics when the request's `Accept` names it, else the classic text format.
pub fn negotiate(accept: Option<&str>) -> Format {
    let wants = accept.is_some_and(|a| {
        a.split(',').any(|m| {
            let mut parts = m.split(';').map(str::trim);
            let ty = parts.next().unwrap_or("");
            let refused = parts.any(|p| p.replace(' ', "") == "q=0");
            ty.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
    });
    if wants {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// OpenMetrics text as the classic text format: a counter family's HELP and TYPE lines take
/// the `_total` name its samples carry; UNIT and EOF lines go.
fn classic(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<&str> = None;
    for line in om.lines() {
        if line.starts_with("# HELP ") {
            help = Some(line);
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if ty == "counter" { "_total" } else { "" };
            if let Some(h) = help.take() {
                let text = h
                    .strip_prefix("# HELP ")
                    .and_then(|h| h.strip_prefix(name))
                    .unwrap_or("");
                out.push_str(&format!("# HELP {name}{suffix}{text}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {ty}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_name_in_the_classic_format() {
        let om = "# HELP kvmnet_x Things.\n# TYPE kvmnet_x counter\nkvmnet_x_total{a=\"b\"} 3\n\
                  # HELP kvmnet_t_seconds Time.\n# TYPE kvmnet_t_seconds gauge\n\
                  # UNIT kvmnet_t_seconds seconds\nkvmnet_t_seconds 1.5\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP kvmnet_x_total Things.\n# TYPE kvmnet_x_total counter\nkvmnet_x_total{a=\"b\"} 3\n\
             # HELP kvmnet_t_seconds Time.\n# TYPE kvmnet_t_seconds gauge\nkvmnet_t_seconds 1.5\n"
        );
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(
            negotiate(Some("application/openmetrics-text; q=0")),
            Format::Text
        );
    }
}
