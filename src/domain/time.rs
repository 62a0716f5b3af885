//! Times as people and clients give them: RFC 3339, in any offset, kept in UTC.

use chrono::{DateTime, Utc};

/// `text` as an RFC 3339 time, or why not, with an example.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.to_utc())
        .map_err(|_| "an RFC 3339 time, e.g. 2026-12-07T12:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rfc_3339_time_in_any_offset_is_kept_in_utc() {
        let at = parse_time("2026-12-07T13:00:00+01:00").unwrap();
        assert_eq!(at.to_rfc3339(), "2026-12-07T12:00:00+00:00");
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
