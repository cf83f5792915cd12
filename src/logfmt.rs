//! The text log's fields in logfmt form, so no file name can forge a field: a value with a
//! space, `=`, a quote, or a control or bidi character is written quoted, with `"` and `\`
//! escaped inside the quotes; other values stay bare, backslashes and all, as logfmt reads
//! them literally (`action=copy path=caf\xff size=4`). The message comes first, bare when
//! plain, quoted otherwise. Knows nothing of what is logged.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

use crate::relpath::is_bidi_control;

/// `tracing_subscriber` field formatter writing logfmt.
#[derive(Clone, Copy, Debug, Default)]
pub struct Logfmt;

impl<'w> FormatFields<'w> for Logfmt {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Visitor { writer, result: Ok(()), first: true };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'w> {
    writer: Writer<'w>,
    result: fmt::Result,
    first: bool,
}

impl Visitor<'_> {
    fn write(&mut self, name: &str, value: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if name == "message" {
            // A message may hold spaces bare ("pass complete"): it is the line's first
            // words, read as bare keys; anything that could pose as a field is quoted.
            let value = Value(value);
            match value.0.contains(' ') && !value.needs_quotes_besides_spaces() {
                true => write!(self.writer, "{separator}{}", value.0),
                false => write!(self.writer, "{separator}{value}"),
            }
        } else {
            write!(self.writer, "{separator}{name}={}", Value(value))
        };
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field.name(), value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field.name(), &format!("{value:?}"));
    }
}

/// One value, quoted and escaped only when it needs to be.
pub struct Value<'a>(pub &'a str);

impl Value<'_> {
    fn needs_quotes(&self) -> bool {
        self.0.is_empty() || self.0.contains(' ') || self.needs_quotes_besides_spaces()
    }

    fn needs_quotes_besides_spaces(&self) -> bool {
        self.0.chars().any(|c| c == '=' || c == '"' || c.is_control() || is_bidi_control(c))
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.needs_quotes() {
            return f.write_str(self.0);
        }
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                c if c.is_control() || is_bidi_control(c) => write!(f, "{}", c.escape_unicode())?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_stay_bare_others_are_quoted() {
        assert_eq!(Value("a/b.txt").to_string(), "a/b.txt");
        assert_eq!(Value("").to_string(), "\"\"");
        assert_eq!(
            Value("innocent kind=dir action=remove path=etc").to_string(),
            "\"innocent kind=dir action=remove path=etc\""
        );
        assert_eq!(Value(r#"say "hi"\"#).to_string(), r#""say \"hi\"\\""#);
        assert_eq!(Value(r"caf\xff").to_string(), r"caf\xff", "a backslash alone stays bare");
        assert_eq!(Value("a\u{202e}b").to_string(), "\"a\\u{202e}b\"");
    }
}
