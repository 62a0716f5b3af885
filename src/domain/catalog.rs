//! Platforms and genres: the catalog's reference data.

use super::game::{ValidationError, bounded_text};

/// A platform or genre name: 1–50 characters (the original's VARCHAR(50)).
fn reference_name(field: &'static str, value: &str) -> Result<String, ValidationError> {
    bounded_text(field, value, 50)
}

/// A platform's manufacturer: 1–50 characters (the original's VARCHAR(50)).
pub fn manufacturer_name(value: &str) -> Result<String, ValidationError> {
    reference_name("manufacturer", value)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformName(String);

impl PlatformName {
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        reference_name("name", value).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenreName(String);

impl GenreName {
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        reference_name("name", value).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated platform, ready to be written.
#[derive(Clone, Debug, PartialEq)]
pub struct PlatformDraft {
    pub name: PlatformName,
    pub manufacturer: Option<String>,
    pub release_year: Option<i32>,
}

/// A validated genre, ready to be written.
#[derive(Clone, Debug, PartialEq)]
pub struct GenreDraft {
    pub name: GenreName,
    pub description: Option<String>,
}
