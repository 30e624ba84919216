//! Sanitising untrusted strings for a terminal: names, labels, messages and
//! errors come from other users and from containers, and must not drive the
//! terminal they are printed to.

use std::borrow::Cow;

/// `s` with every control character but those in `keep` written as an
/// escape (`\x1b`, `\u{9b}`): what is printed to a terminal must not drive
/// it (titles, screen clears, clipboard writes, erased lines).
fn escape_but<'a>(s: &'a str, keep: &[char]) -> Cow<'a, str> {
    if !s.chars().any(|c| c.is_control() && !keep.contains(&c)) {
        return s.into();
    }
    s.chars()
        .map(|c| match c {
            c if !c.is_control() || keep.contains(&c) => c.to_string(),
            c if (c as u32) < 0x80 => format!("\\x{:02x}", c as u32),
            c => format!("\\u{{{:x}}}", c as u32),
        })
        .collect::<String>()
        .into()
}

/// `s` as one line for a terminal: every control character escaped (a
/// newline too, so a value cannot forge a row).
pub(crate) fn escape_line(s: &str) -> Cow<'_, str> {
    escape_but(s, &[])
}

/// Text for a terminal: control characters escaped but newline and tab.
pub(crate) fn escape_text(s: &str) -> Cow<'_, str> {
    escape_but(s, &['\n', '\t'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::render::{render, table};

    #[test]
    fn control_characters_are_escaped_for_a_terminal() {
        let hostile = "a\u{1b}]52;c;ZXZpbA==\u{7}\r\n\u{9b}2J\tz";
        assert_eq!(
            escape_line(hostile),
            "a\\x1b]52;c;ZXZpbA==\\x07\\x0d\\x0a\\u{9b}2J\\x09z"
        );
        assert_eq!(
            escape_text(hostile),
            "a\\x1b]52;c;ZXZpbA==\\x07\\x0d\n\\u{9b}2J\tz"
        );
        assert!(matches!(
            escape_line("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
        let mut t = table(&["NAME", "LABELS"]);
        t.add_row(vec!["box".to_string(), "x\u{1b}[2J\nfake row".to_string()]);
        let out = render(t);
        assert!(out.contains("x\\x1b[2J\\x0afake row"), "{out}");
        assert_eq!(out.lines().count(), 2, "{out}");
    }
}
