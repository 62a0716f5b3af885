//! Game fields that carry rules: a title is 1–100 characters, a release year lies
//! between 1950 and this year, the decade is derived by the server.

use chrono::Datelike;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a value was refused, naming the field as the API spells it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: &'static str,
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Trims and bounds a text field; empty is refused when `required`.
pub(crate) fn bounded_text(
    field: &'static str,
    value: &str,
    max_chars: usize,
) -> Result<String, ValidationError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_chars} characters (got {chars})"),
        ));
    }
    Ok(value.to_owned())
}

/// A game title: 1–100 characters after trimming (the original column was VARCHAR(100)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GameTitle(String);

impl GameTitle {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        bounded_text("title", value, Self::MAX_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A developer name: 1–100 characters after trimming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Developer(String);

impl Developer {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        bounded_text("developer", value, Self::MAX_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A release year between 1950 (before any video game) and the current year.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReleaseYear(i32);

impl ReleaseYear {
    pub const EARLIEST: i32 = 1950;

    pub fn parse(value: i64) -> Result<Self, ValidationError> {
        let latest = chrono::Utc::now().year();
        if value < i64::from(Self::EARLIEST) || value > i64::from(latest) {
            return Err(ValidationError::new(
                "releaseYear",
                format!("must be between {} and {latest}", Self::EARLIEST),
            ));
        }
        Ok(Self(value as i32))
    }

    pub fn get(self) -> i32 {
        self.0
    }

    /// The decade, as the original stored it in `year_category`: `1980s`, `1990s`, …
    pub fn category(self) -> String {
        year_category(self.0)
    }
}

/// The decade of a year: 1985 → `1980s`.
pub fn year_category(year: i32) -> String {
    format!("{}s", year - year.rem_euclid(10))
}

/// A cover image URL: absolute http(s), at most 255 characters (the original's column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageUrl(String);

impl ImageUrl {
    pub const MAX_CHARS: usize = 255;

    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        let value = bounded_text("imageUrl", value, Self::MAX_CHARS)?;
        let url = reqwest::Url::parse(&value)
            .map_err(|e| ValidationError::new("imageUrl", format!("is not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ValidationError::new(
                "imageUrl",
                "must be an absolute http or https URL",
            ));
        }
        if has_credentials(&url) {
            return Err(ValidationError::new(
                "imageUrl",
                "must not carry credentials (user:password@): covers are fetched anonymously",
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `url` carries a user name or a password (`user:password@`).
pub fn has_credentials(url: &reqwest::Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// `url` as logs, errors and a game's history may show it: without the credentials it
/// carries (`user:password@`), which only a row written before they were refused, or a
/// redirect, could hold. A URL that does not parse and holds an `@` is not shown.
pub fn redacted_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if has_credentials(&parsed) => {
            // An http(s) URL with a host takes both; another keeps what it had.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.into()
        }
        Err(_) if url.contains('@') => "(a URL that does not parse)".into(),
        _ => url.to_owned(),
    }
}

/// A validated game, ready to be written: what `POST` and `PUT /api/games` carry.
#[derive(Clone, Debug, PartialEq)]
pub struct GameDraft {
    pub title: GameTitle,
    pub platform_id: i64,
    pub genre_id: i64,
    pub developer: Developer,
    pub release_year: ReleaseYear,
    pub description: String,
    pub image_url: Option<ImageUrl>,
}

/// Where a game's background processing stands. The names are the original's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProcessingStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl ProcessingStatus {
    pub const ALL: [Self; 4] = [
        Self::Pending,
        Self::Processing,
        Self::Completed,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

impl fmt::Display for ProcessingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn year_category_is_the_decade() {
        assert_eq!(year_category(1985), "1980s");
        assert_eq!(year_category(1990), "1990s");
        assert_eq!(year_category(2009), "2000s");
    }

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(GameTitle::parse("  Tetris ").unwrap().as_str(), "Tetris");
        assert_eq!(GameTitle::parse("   ").unwrap_err().field, "title");
        assert!(GameTitle::parse(&"x".repeat(100)).is_ok());
        assert!(GameTitle::parse(&"x".repeat(101)).is_err());
    }

    #[test]
    fn release_years_outside_the_video_game_era_are_refused() {
        assert!(ReleaseYear::parse(1949).is_err());
        assert!(ReleaseYear::parse(1950).is_ok());
        assert!(ReleaseYear::parse(i64::from(chrono::Utc::now().year()) + 1).is_err());
    }

    #[test]
    fn image_urls_must_be_absolute_http() {
        assert!(ImageUrl::parse("https://example.com/a.png").is_ok());
        assert!(ImageUrl::parse("ftp://example.com/a.png").is_err());
        assert!(ImageUrl::parse("/relative.png").is_err());
        assert!(ImageUrl::parse("javascript:alert(1)").is_err());
    }

    #[test]
    fn credentials_in_a_cover_url_are_refused_and_never_shown() {
        for url in [
            "http://user:pw@example.com/a.png",
            "https://user@example.com/a.png",
        ] {
            let error = ImageUrl::parse(url).unwrap_err();
            assert_eq!(error.field, "imageUrl");
            assert!(!error.to_string().contains("pw"), "{error}");
        }
        assert_eq!(
            redacted_url("http://user:pw@example.com/a.png?x=1"),
            "http://example.com/a.png?x=1"
        );
        assert_eq!(
            redacted_url("https://example.com/a.png"),
            "https://example.com/a.png"
        );
        assert_eq!(
            redacted_url("http://user:pw@"),
            "(a URL that does not parse)"
        );
        assert_eq!(redacted_url("not a url"), "not a url");
    }
}
