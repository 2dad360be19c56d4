//! Logging set-up both binaries share: `RUST_LOG` filtering (default `info`) and one of two
//! formats.
//!
//! - **text**: one line per event, every field value escaped ([`EscapedFields`]): a control
//!   character (a line break, a terminal escape sequence), a Unicode line separator or a
//!   bidirectional override in a value a client chose (a username, a path) is written as an
//!   escape such as `\n` or `\u{1b}`, so it can neither forge a log line nor drive the
//!   reader's terminal. Colours only when the output is a terminal and `NO_COLOR` is unset
//!   (<https://no-color.org>).
//! - **json**: one JSON object per event. JSON strings escape control characters already, so
//!   values keep exactly what was logged; never coloured.
//!
//! What it must never do: write a client-controlled value to a text log unescaped.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// Installs the process-wide subscriber, writing to standard output. Call once, at start.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_ansi(false)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .fmt_fields(EscapedFields)
            .with_ansi(colours_wanted(
                std::io::stdout().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .with_env_filter(filter)
            .init();
    }
}

/// Colours only on a terminal, and never when `NO_COLOR` is set to anything but empty.
pub fn colours_wanted(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

/// `value` with every character that could break a log line or a terminal replaced by an
/// escape: control characters (C0, DEL, C1) as `\n`, `\r`, `\t` or `\u{..}`, and the Unicode
/// line and paragraph separators and bidirectional controls as `\u{..}`.
pub fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// The text format's field formatter: tracing-subscriber's own layout (`key=value`, the
/// message first), with every value passed through [`escape`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'writer> MakeVisitor<Writer<'writer>> for EscapedFields {
    type Visitor = EscapingVisitor<'writer>;

    fn make_visitor(&self, target: Writer<'writer>) -> Self::Visitor {
        EscapingVisitor {
            inner: DefaultVisitor::new(target, true),
        }
    }
}

/// See [`EscapedFields`].
#[derive(Debug)]
pub struct EscapingVisitor<'writer> {
    inner: DefaultVisitor<'writer>,
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.inner
                .record_debug(field, &format_args!("{}", escape(value)));
        } else {
            // Written as a quoted string, as the default formatter does, escaped inside.
            self.inner
                .record_debug(field, &format_args!("\"{}\"", escape(value)));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.inner
            .record_debug(field, &format_args!("{}", escape(&text)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.inner
            .record_debug(field, &format_args!("{}", escape(&text)));
    }
}

impl VisitOutput<fmt::Result> for EscapingVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.inner.finish()
    }
}

impl VisitFmt for EscapingVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        self.inner.writer()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn control_characters_and_bidi_controls_are_escaped() {
        assert_eq!(escape("alice"), "alice");
        assert_eq!(escape("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(escape("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escape("x\u{85}y\u{7f}"), "x\\u{85}y\\u{7f}");
        assert_eq!(escape("a\u{2028}b\u{202e}c"), "a\\u{2028}b\\u{202e}c");
        assert_eq!(escape("héllo wörld ✓"), "héllo wörld ✓");
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours_wanted(true, None));
        assert!(colours_wanted(true, Some("".into())));
        assert!(!colours_wanted(true, Some("1".into())));
        assert!(!colours_wanted(false, None));
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_text_log_line_cannot_be_forged_through_a_field() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapedFields)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let hostile = "bob\n2025-01-01T00:00:00Z  INFO user logged in user=admin\u{1b}[2J";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", path = %hostile);
            let _entered = span.enter();
            tracing::info!(username = %hostile, plain = hostile, debug = ?hostile, "login refused {}", hostile);
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "one event, one line: {text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(
            text.contains("username=bob\\n2025-01-01T00:00:00Z  INFO user logged in"),
            "{text}"
        );
        assert!(text.contains("\\u{1b}[2J"), "{text}");
    }
}
