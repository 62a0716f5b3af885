//! The body of `POST` and `PUT /api/games`, validated into a [`GameDraft`].

use crate::api::error::{ApiError, FieldError};
use crate::domain::number::whole;
use crate::domain::text;
use crate::domain::{Developer, GameDraft, GameTitle, ImageUrl, ReleaseYear, ValidationError};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

/// The body of `POST` and `PUT /api/games`. Ids and the year may arrive as numbers or
/// as numeric strings: the original page sent its `<select>` values as strings.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct GameBody {
    /// 1 to 100 characters once trimmed, on one line.
    #[serde(deserialize_with = "text::one_line")]
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    title: String,
    #[serde(deserialize_with = "lenient_int")]
    #[schema(schema_with = positive_id)]
    platform_id: i64,
    #[serde(deserialize_with = "lenient_int")]
    #[schema(schema_with = positive_id)]
    genre_id: i64,
    /// 1 to 100 characters once trimmed, on one line.
    #[serde(deserialize_with = "text::one_line")]
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    developer: String,
    /// From 1950 to the current year.
    #[serde(deserialize_with = "lenient_int")]
    #[schema(schema_with = release_year)]
    release_year: i64,
    /// Accepted for compatibility and ignored: the server derives the decade.
    #[serde(default)]
    #[allow(dead_code)]
    #[schema(value_type = Option<serde_json::Value>)]
    year_category: Option<serde::de::IgnoredAny>,
    /// At most 5000 characters once trimmed; line breaks and tabs allowed.
    #[serde(default, deserialize_with = "text::lines")]
    #[schema(
        max_length = 5000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    description: Option<String>,
    /// An absolute http or https URL of at most 255 characters; empty for none.
    #[serde(default, deserialize_with = "text::one_line")]
    #[schema(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    image_url: Option<String>,
}

impl GameBody {
    /// Validates every field, reporting all refusals at once.
    pub(super) fn parse(self) -> Result<GameDraft, ApiError> {
        let platform_id = positive("platformId", self.platform_id);
        let genre_id = positive("genreId", self.genre_id);
        let title = GameTitle::parse(&self.title);
        let developer = Developer::parse(&self.developer);
        let release_year = ReleaseYear::parse(self.release_year);
        let image_url = match self.image_url.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(url) => ImageUrl::parse(url).map(Some),
        };
        let description = self.description.unwrap_or_default().trim().to_owned();
        let description = if description.chars().count() > 5000 {
            Err(ValidationError::new(
                "description",
                "must be at most 5000 characters",
            ))
        } else {
            Ok(description)
        };
        let errors: Vec<FieldError> = [
            platform_id.as_ref().err(),
            genre_id.as_ref().err(),
            title.as_ref().err(),
            developer.as_ref().err(),
            release_year.as_ref().err(),
            image_url.as_ref().err(),
            description.as_ref().err(),
        ]
        .into_iter()
        .flatten()
        .map(|e| FieldError {
            field: e.field.into(),
            reason: e.reason.clone(),
        })
        .collect();
        if !errors.is_empty() {
            let detail = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.reason))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ApiError::Unprocessable { detail, errors });
        }
        Ok(GameDraft {
            title: title?,
            platform_id: platform_id?,
            genre_id: genre_id?,
            developer: developer?,
            release_year: release_year?,
            description: description?,
            image_url: image_url?,
        })
    }
}

fn positive(field: &'static str, value: i64) -> Result<i64, ValidationError> {
    if value > 0 {
        Ok(value)
    } else {
        Err(ValidationError::new(field, "must be a positive id"))
    }
}

/// What [`lenient_int`] takes, in the document: an integer from `minimum`, or a string
/// of its digits.
fn lenient_int_schema(minimum: i64, description: &str) -> Schema {
    let number = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(minimum))
        .maximum(Some(i64::MAX));
    let digits = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"^\s*\+?0*[1-9][0-9]{0,17}\s*$"));
    OneOfBuilder::new()
        .item(number)
        .item(digits)
        .description(Some(description))
        .into()
}

fn positive_id() -> Schema {
    lenient_int_schema(1, "A positive id, as a number or a string of digits")
}

fn release_year() -> Schema {
    lenient_int_schema(
        crate::domain::ReleaseYear::EARLIEST.into(),
        "From 1950 to the current year, as a number or a string of digits",
    )
}

/// An integer, or a string holding one (`3` or `"3"`); anything else is refused.
fn lenient_int<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Number(serde_json::Number),
        String(String),
    }
    match IntOrString::deserialize(deserializer) {
        Ok(IntOrString::Number(number)) => {
            whole(&number).ok_or_else(|| serde::de::Error::custom("expected an integer"))
        }
        Ok(IntOrString::String(text)) => text
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("expected an integer, got {text:?}"))),
        Err(_) => Err(serde::de::Error::custom("expected an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::extract::decode_json;
    use crate::hostile::{
        self, check_refused_body, json_value, nasty_number, nasty_string, numeric_text, object_of,
    };
    use chrono::Datelike;
    use proptest::option;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    const FIELDS: &[&str] = &[
        "title",
        "platformId",
        "genreId",
        "developer",
        "releaseYear",
        "yearCategory",
        "description",
        "imageUrl",
    ];

    /// A value a client might put in any field.
    fn field_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            3 => nasty_string().prop_map(Value::String),
            2 => nasty_number().prop_map(Value::Number),
            1 => json_value(),
        ]
    }

    /// A whole number, as JSON or as text, around `range`.
    fn lenient(range: std::ops::Range<i64>) -> impl Strategy<Value = Value> {
        prop_oneof![
            range.clone().prop_map(Value::from),
            range.prop_map(|n| Value::String(format!(" {n}"))),
            numeric_text().prop_map(Value::String),
            field_value(),
        ]
    }

    /// A body with every required field, valued plausibly or not: most cases reach
    /// the rules of each field rather than stopping at the body's shape.
    fn plausible_body() -> impl Strategy<Value = Value> {
        let text = || prop_oneof![2 => "[A-Za-z0-9 ]{1,30}", 1 => nasty_string()];
        let url = prop_oneof![
            prop::sample::select(
                &[
                    "https://example.com/a.png",
                    " http://h/x ",
                    "",
                    "ftp://h/x",
                    "https://u:p@h/x",
                    "http://",
                    "/relative.png",
                    "https://[::1]:99999/",
                ][..]
            )
            .prop_map(str::to_owned),
            nasty_string(),
        ];
        (
            (
                text(),
                lenient(-2..50),
                lenient(-2..50),
                text(),
                lenient(1940..2040),
            ),
            option::of(json_value()),
            option::of(nasty_string()),
            option::of(url),
        )
            .prop_map(
                |((title, platform_id, genre_id, developer, year), category, description, url)| {
                    let mut body = Map::new();
                    body.insert("title".into(), title.into());
                    body.insert("platformId".into(), platform_id);
                    body.insert("genreId".into(), genre_id);
                    body.insert("developer".into(), developer.into());
                    body.insert("releaseYear".into(), year);
                    if let Some(category) = category {
                        body.insert("yearCategory".into(), category);
                    }
                    if let Some(description) = description {
                        body.insert("description".into(), description.into());
                    }
                    if let Some(url) = url {
                        body.insert("imageUrl".into(), url.into());
                    }
                    Value::Object(body)
                },
            )
    }

    /// What `POST /api/games` makes of `body`: a draft, or the error it answers.
    fn parse(body: &[u8]) -> Result<GameDraft, ApiError> {
        decode_json::<GameBody>(body)?.parse()
    }

    /// A draft keeps every rule the catalog states; a refusal of an object names the
    /// fields at fault.
    fn check(body: &Value) -> Result<(), TestCaseError> {
        let sent = |key: &str| body.get(key).and_then(Value::as_str);
        match parse(&serde_json::to_vec(body).unwrap()) {
            Ok(draft) => {
                for (field, value) in [
                    ("title", draft.title.as_str()),
                    ("developer", draft.developer.as_str()),
                ] {
                    prop_assert_eq!(Some(value), sent(field).map(str::trim));
                    prop_assert!((1..=100).contains(&value.chars().count()));
                    prop_assert!(text::check_one_line(value).is_ok());
                }
                prop_assert!(draft.platform_id >= 1 && draft.genre_id >= 1);
                let year = draft.release_year.get();
                prop_assert!((1950..=chrono::Utc::now().year()).contains(&year));
                prop_assert!(draft.description.chars().count() <= 5000);
                prop_assert!(text::check_lines(&draft.description).is_ok());
                prop_assert_eq!(draft.description.trim(), draft.description.as_str());
                if let Some(url) = &draft.image_url {
                    prop_assert!(url.as_str().chars().count() <= 255);
                    let parsed = reqwest::Url::parse(url.as_str()).unwrap();
                    prop_assert!(["http", "https"].contains(&parsed.scheme()));
                    prop_assert!(parsed.username().is_empty() && parsed.password().is_none());
                }
            }
            Err(error) => check_refused_body(&error, body, FIELDS)?,
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(hostile::config(1024))]

        #[test]
        fn any_json_gives_a_valid_draft_or_names_the_field(
            body in prop_oneof![
                1 => json_value(),
                2 => object_of(FIELDS, field_value()),
                4 => plausible_body(),
            ],
        ) {
            check(&body)?;
        }

        #[test]
        fn arbitrary_bytes_are_refused_not_panicked_on(
            body in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = parse(&body);
        }
    }

    /// Nesting past serde_json's depth limit, in the one field that takes any JSON:
    /// refused as malformed, without a stack overflow.
    #[test]
    fn deep_nesting_is_refused() {
        for open in ["[", "{\"a\":"] {
            let body = format!(r#"{{"yearCategory":{}}}"#, open.repeat(100_000));
            assert!(matches!(
                parse(body.as_bytes()),
                Err(ApiError::BadRequest { .. })
            ));
        }
    }
}
