//! Text as the catalog takes it in: no control characters. A NUL that PostgreSQL would
//! refuse, an escape sequence that rewrites an operator's terminal, a line break in a
//! one-line field: each is refused where it enters, with the field named, before any
//! rule about its length or meaning runs.
//!
//! Bodies decode their text fields with [`one_line`] or [`lines`], so a refusal is a
//! 400 naming the field; their OpenAPI schemas state the same rule as a `pattern`
//! ([`ONE_LINE_PATTERN`], [`LINES_PATTERN`] spell it out).

use serde::{Deserialize, Deserializer, de::Error as _};

/// What a one-line field may hold, as a JSON Schema `pattern`: no control character
/// (Unicode's `Cc`: U+0000–U+001F, U+007F–U+009F).
pub const ONE_LINE_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";
/// What a text of several lines may hold: the same, but line breaks and tabs.
pub const LINES_PATTERN: &str = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$";

/// Refuses a control character in a one-line field.
pub fn check_one_line(value: &str) -> Result<(), String> {
    refuse_controls(value, &[])
}

/// The longest search term a list takes: no title or developer is longer.
pub const MAX_SEARCH_CHARS: usize = 100;

/// Refuses a search term with a control character, or longer than [`MAX_SEARCH_CHARS`].
pub fn check_search(value: &str) -> Result<(), String> {
    check_one_line(value)?;
    if value.chars().count() > MAX_SEARCH_CHARS {
        return Err(format!("must be at most {MAX_SEARCH_CHARS} characters"));
    }
    Ok(())
}

/// Refuses a control character other than a line break or a tab.
pub fn check_lines(value: &str) -> Result<(), String> {
    refuse_controls(value, &['\n', '\r', '\t'])
}

fn refuse_controls(value: &str, allowed: &[char]) -> Result<(), String> {
    match value
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !allowed.contains(c))
    {
        None => Ok(()),
        Some((at, c)) => Err(format!(
            "must not contain control characters (U+{:04X} at character {})",
            u32::from(c),
            at + 1
        )),
    }
}

/// serde: a one-line text field (a `String`, or an `Option<String>`).
pub fn one_line<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Text,
{
    checked(deserializer, check_one_line)
}

/// serde: a text field of several lines (a `String`, or an `Option<String>`).
pub fn lines<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Text,
{
    checked(deserializer, check_lines)
}

fn checked<'de, D, T>(deserializer: D, check: fn(&str) -> Result<(), String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Text,
{
    let value = T::deserialize(deserializer)?;
    value
        .text()
        .map_or(Ok(()), check)
        .map_err(D::Error::custom)?;
    Ok(value)
}

/// A field that holds text, or may.
pub trait Text {
    fn text(&self) -> Option<&str>;
}

impl Text for String {
    fn text(&self) -> Option<&str> {
        Some(self)
    }
}

impl Text for Option<String> {
    fn text(&self) -> Option<&str> {
        self.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_with_where_they_are() {
        assert_eq!(check_one_line("Super Mario"), Ok(()));
        assert_eq!(
            check_one_line("Mario\0"),
            Err("must not contain control characters (U+0000 at character 6)".into())
        );
        assert!(check_one_line("a\nb").is_err(), "a line break in one line");
        assert!(check_one_line("\u{1b}[2J").is_err(), "a terminal escape");
        assert!(check_one_line("a\u{85}b").is_err(), "a C1 control");
        assert_eq!(check_lines("one\r\ntwo\tthree"), Ok(()));
        assert!(check_lines("one\u{7f}").is_err(), "DEL");
        assert_eq!(check_lines("é, 日本, 🎮"), Ok(()));
    }

    #[test]
    fn the_patterns_say_what_the_checks_do() {
        // Every character up to U+00A0, and a few beyond: the regex in the document and
        // the check in the code must agree on each.
        let one_line = regex::Regex::new(ONE_LINE_PATTERN).unwrap();
        let lines = regex::Regex::new(LINES_PATTERN).unwrap();
        for c in (0..=0xA0u32)
            .filter_map(char::from_u32)
            .chain(['é', '日', '🎮'])
        {
            let text = format!("a{c}b");
            assert_eq!(
                one_line.is_match(&text),
                check_one_line(&text).is_ok(),
                "{c:?}"
            );
            assert_eq!(lines.is_match(&text), check_lines(&text).is_ok(), "{c:?}");
        }
    }

    mod properties {
        use super::*;
        use crate::hostile::{self, nasty_char};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(hostile::config(1024))]

            /// The document's patterns and the code's checks agree on any text.
            #[test]
            fn the_patterns_and_the_checks_agree(
                text in prop::collection::vec(nasty_char(), 0..32).prop_map(String::from_iter),
            ) {
                let one_line = regex::Regex::new(ONE_LINE_PATTERN).unwrap();
                let lines = regex::Regex::new(LINES_PATTERN).unwrap();
                prop_assert_eq!(one_line.is_match(&text), check_one_line(&text).is_ok());
                prop_assert_eq!(lines.is_match(&text), check_lines(&text).is_ok());
            }
        }
    }
}
