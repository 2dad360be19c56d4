//! A writer of Prometheus' text exposition format (version 0.0.4), for series whose set
//! changes from one scrape to the next (domains come and go): each scrape writes what
//! exists now, so a vanished domain's series vanish with it.
//!
//! A family is written as one unit through [`Exposition::family`]: its `# HELP` and
//! `# TYPE` lines come once, right before its first sample, and a family without samples
//! writes nothing. Label values and help texts are escaped as the format requires.

use std::collections::HashSet;
use std::fmt::Write as _;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// A sample value. Integers are written exactly (byte counters pass 2^53).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(value: u64) -> Self {
        Self::Int(value)
    }
}

impl From<u32> for Value {
    fn from(value: u32) -> Self {
        Self::Int(u64::from(value))
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Self::Float(value)
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Self {
        Self::Int(u64::from(value))
    }
}

/// The text of one scrape, built family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
    written: HashSet<&'static str>,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the family `name`. Every sample of a family must be written through the one
    /// [`Family`] returned here: the format wants a family's samples together.
    pub fn family(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: MetricType,
    ) -> Family<'_> {
        debug_assert!(is_metric_name(name), "invalid metric name {name:?}");
        let first_time = self.written.insert(name);
        debug_assert!(first_time, "metric family {name} written twice");
        Family {
            exposition: self,
            name,
            help,
            kind,
            started: false,
        }
    }

    /// Writes one sample of a family with a single sample and no labels.
    pub fn single(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        value: impl Into<Value>,
    ) {
        self.family(name, help, kind).sample(&[], value);
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

/// The family being written; see [`Exposition::family`].
pub struct Family<'a> {
    exposition: &'a mut Exposition,
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    started: bool,
}

impl Family<'_> {
    /// Writes one sample. Label names must be valid Prometheus label names; values may be
    /// anything and are escaped.
    pub fn sample(&mut self, labels: &[(&'static str, &str)], value: impl Into<Value>) {
        let text = &mut self.exposition.text;
        if !self.started {
            self.started = true;
            text.push_str("# HELP ");
            text.push_str(self.name);
            text.push(' ');
            escape_help(text, self.help);
            text.push_str("\n# TYPE ");
            text.push_str(self.name);
            text.push(' ');
            text.push_str(self.kind.as_str());
            text.push('\n');
        }
        text.push_str(self.name);
        if !labels.is_empty() {
            text.push('{');
            for (index, (name, value)) in labels.iter().enumerate() {
                debug_assert!(is_label_name(name), "invalid label name {name:?}");
                if index > 0 {
                    text.push(',');
                }
                text.push_str(name);
                text.push_str("=\"");
                escape_label_value(text, value);
                text.push('"');
            }
            text.push('}');
        }
        text.push(' ');
        write_value(text, value.into());
        text.push('\n');
    }
}

fn write_value(text: &mut String, value: Value) {
    // Writing to a String cannot fail.
    match value {
        Value::Int(value) => {
            let _ = write!(text, "{value}");
        }
        Value::Float(value) if value.is_nan() => text.push_str("NaN"),
        Value::Float(value) if value.is_infinite() => {
            text.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
        }
        Value::Float(value) => {
            let _ = write!(text, "{value}");
        }
    }
}

/// `\` → `\\`, `"` → `\"`, newline → `\n`.
fn escape_label_value(text: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => text.push_str("\\\\"),
            '"' => text.push_str("\\\""),
            '\n' => text.push_str("\\n"),
            c => text.push(c),
        }
    }
}

/// `\` → `\\`, newline → `\n`.
fn escape_help(text: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => text.push_str("\\\\"),
            '\n' => text.push_str("\\n"),
            c => text.push(c),
        }
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_and_type_come_once_per_family_before_its_samples() {
        let mut out = Exposition::new();
        let mut family = out.family("vm_bytes_total", "Bytes.", MetricType::Counter);
        family.sample(&[("domain", "a")], 1_u64);
        family.sample(&[("domain", "b")], 2_u64);
        out.single(
            "libvirt_up",
            "Whether libvirt answered.",
            MetricType::Gauge,
            true,
        );
        assert_eq!(
            out.into_text(),
            "# HELP vm_bytes_total Bytes.\n\
             # TYPE vm_bytes_total counter\n\
             vm_bytes_total{domain=\"a\"} 1\n\
             vm_bytes_total{domain=\"b\"} 2\n\
             # HELP libvirt_up Whether libvirt answered.\n\
             # TYPE libvirt_up gauge\n\
             libvirt_up 1\n"
        );
    }

    #[test]
    fn a_family_without_samples_writes_nothing() {
        let mut out = Exposition::new();
        let _ = out.family("nothing_here", "Never sampled.", MetricType::Gauge);
        assert_eq!(out.into_text(), "");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Exposition::new();
        out.family("x", "A \\ back\nslash.", MetricType::Gauge)
            .sample(
                &[("domain", "a\"b\\c\nd"), ("vm_id", ""), ("path", "é/{},=")],
                0.5,
            );
        assert_eq!(
            out.into_text(),
            "# HELP x A \\\\ back\\nslash.\n\
             # TYPE x gauge\n\
             x{domain=\"a\\\"b\\\\c\\nd\",vm_id=\"\",path=\"é/{},=\"} 0.5\n"
        );
    }

    #[test]
    fn values_are_written_as_prometheus_reads_them() {
        let mut text = String::new();
        for value in [
            Value::Int(u64::MAX),
            Value::Float(0.33),
            Value::Float(6.7108864e7),
            Value::Float(f64::NAN),
            Value::Float(f64::INFINITY),
            Value::Float(f64::NEG_INFINITY),
        ] {
            write_value(&mut text, value);
            text.push(' ');
        }
        assert_eq!(text, "18446744073709551615 0.33 67108864 NaN +Inf -Inf ");
    }

    #[test]
    fn names_are_checked() {
        assert!(is_metric_name("libvirt_domain_info_cpu_time_seconds_total"));
        assert!(is_metric_name("a:b_c"));
        assert!(!is_metric_name("1abc"));
        assert!(!is_metric_name("a-b"));
        assert!(is_label_name("target_device"));
        assert!(!is_label_name("__name__"));
        assert!(!is_label_name("a:b"));
    }
}
