//! `/api/platforms` and `/api/genres`: the catalog's reference data.

use super::ApiContext;
use super::admission::Admitted;
use super::auth::gate::Admin;
use super::error::ApiError;
use super::extract::{Id, Json};
use crate::domain::number::optional_whole_number;
use crate::domain::text;
use crate::domain::{
    Genre, GenreDraft, GenreName, Platform, PlatformDraft, PlatformName, ReleaseYear,
    manufacturer_name,
};
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(platforms, create_platform))
        .routes(routes!(update_platform, delete_platform))
        .routes(routes!(genres, create_genre))
        .routes(routes!(update_genre, delete_genre))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PlatformBody {
    /// 1 to 50 characters once trimmed, on one line.
    #[serde(deserialize_with = "text::one_line")]
    #[schema(
        min_length = 1,
        max_length = 50,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: String,
    /// At most 50 characters once trimmed, on one line.
    #[serde(default, deserialize_with = "text::one_line")]
    #[schema(max_length = 50, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    manufacturer: Option<String>,
    /// From 1950 to the current year.
    #[serde(default, deserialize_with = "optional_whole_number")]
    #[schema(minimum = 1950)]
    release_year: Option<i64>,
}

impl PlatformBody {
    fn parse(self) -> Result<PlatformDraft, ApiError> {
        Ok(PlatformDraft {
            name: PlatformName::parse(&self.name)?,
            manufacturer: optional_text(self.manufacturer)
                .map(|manufacturer| manufacturer_name(&manufacturer))
                .transpose()?,
            release_year: self
                .release_year
                .map(ReleaseYear::parse)
                .transpose()?
                .map(ReleaseYear::get),
        })
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GenreBody {
    /// 1 to 50 characters once trimmed, on one line.
    #[serde(deserialize_with = "text::one_line")]
    #[schema(
        min_length = 1,
        max_length = 50,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: String,
    /// Line breaks and tabs allowed.
    #[serde(default, deserialize_with = "text::lines")]
    #[schema(pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    description: Option<String>,
}

impl GenreBody {
    fn parse(self) -> Result<GenreDraft, ApiError> {
        Ok(GenreDraft {
            name: GenreName::parse(&self.name)?,
            description: optional_text(self.description),
        })
    }
}

fn optional_text(value: Option<String>) -> Option<String> {
    value
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
}

/// Every platform
#[utoipa::path(get, path = "/api/platforms", tag = "reference",
    responses((status = 200, description = "The platforms", body = Vec<Platform>)))]
async fn platforms(State(ctx): State<ApiContext>) -> Result<axum::Json<Vec<Platform>>, ApiError> {
    Ok(axum::Json(ctx.store.platforms().await?))
}

/// Create a platform
#[utoipa::path(post, path = "/api/platforms", tag = "reference",
    security(("bearer" = [])),
    request_body = PlatformBody,
    responses(
        (status = 201, description = "Created", body = Platform),
        (status = 409, description = "A platform of this name exists"),
        (status = 422, description = "A field is refused"),
    ))]
async fn create_platform(
    _: Admin,
    _: Admitted,
    State(ctx): State<ApiContext>,
    Json(body): Json<PlatformBody>,
) -> Result<(StatusCode, axum::Json<Platform>), ApiError> {
    let platform = ctx.store.create_platform(&body.parse()?).await?;
    Ok((StatusCode::CREATED, axum::Json(platform)))
}

/// Update a platform
#[utoipa::path(put, path = "/api/platforms/{id}", tag = "reference",
    security(("bearer" = [])),
    params(Id), request_body = PlatformBody,
    responses(
        (status = 200, description = "Updated", body = Platform),
        (status = 404, description = "No platform with this id"),
        (status = 409, description = "Another platform has this name"),
        (status = 422, description = "A field is refused"),
    ))]
async fn update_platform(
    _: Admin,
    _: Admitted,
    State(ctx): State<ApiContext>,
    Id(id): Id,
    Json(body): Json<PlatformBody>,
) -> Result<axum::Json<Platform>, ApiError> {
    Ok(axum::Json(
        ctx.store.update_platform(id, &body.parse()?).await?,
    ))
}

/// Delete a platform
#[utoipa::path(delete, path = "/api/platforms/{id}", tag = "reference",
    security(("bearer" = [])),
    params(Id),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No platform with this id"),
        (status = 409, description = "Games still name this platform"),
    ))]
async fn delete_platform(
    _: Admin,
    _: Admitted,
    State(ctx): State<ApiContext>,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ctx.store.delete_platform(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every genre
#[utoipa::path(get, path = "/api/genres", tag = "reference",
    responses((status = 200, description = "The genres", body = Vec<Genre>)))]
async fn genres(State(ctx): State<ApiContext>) -> Result<axum::Json<Vec<Genre>>, ApiError> {
    Ok(axum::Json(ctx.store.genres().await?))
}

/// Create a genre
#[utoipa::path(post, path = "/api/genres", tag = "reference",
    security(("bearer" = [])),
    request_body = GenreBody,
    responses(
        (status = 201, description = "Created", body = Genre),
        (status = 409, description = "A genre of this name exists"),
        (status = 422, description = "A field is refused"),
    ))]
async fn create_genre(
    _: Admin,
    _: Admitted,
    State(ctx): State<ApiContext>,
    Json(body): Json<GenreBody>,
) -> Result<(StatusCode, axum::Json<Genre>), ApiError> {
    let genre = ctx.store.create_genre(&body.parse()?).await?;
    Ok((StatusCode::CREATED, axum::Json(genre)))
}

/// Update a genre
#[utoipa::path(put, path = "/api/genres/{id}", tag = "reference",
    security(("bearer" = [])),
    params(Id), request_body = GenreBody,
    responses(
        (status = 200, description = "Updated", body = Genre),
        (status = 404, description = "No genre with this id"),
        (status = 409, description = "Another genre has this name"),
        (status = 422, description = "A field is refused"),
    ))]
async fn update_genre(
    _: Admin,
    _: Admitted,
    State(ctx): State<ApiContext>,
    Id(id): Id,
    Json(body): Json<GenreBody>,
) -> Result<axum::Json<Genre>, ApiError> {
    Ok(axum::Json(
        ctx.store.update_genre(id, &body.parse()?).await?,
    ))
}

/// Delete a genre
#[utoipa::path(delete, path = "/api/genres/{id}", tag = "reference",
    security(("bearer" = [])),
    params(Id),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No genre with this id"),
        (status = 409, description = "Games still name this genre"),
    ))]
async fn delete_genre(
    _: Admin,
    _: Admitted,
    State(ctx): State<ApiContext>,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ctx.store.delete_genre(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::extract::decode_json;
    use crate::hostile::{
        self, check_refused_body, json_value, nasty_number, nasty_string, object_of,
    };
    use proptest::prelude::*;
    use serde_json::Value;

    const PLATFORM_FIELDS: &[&str] = &["name", "manufacturer", "releaseYear"];
    const GENRE_FIELDS: &[&str] = &["name", "description"];

    fn field_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => nasty_string().prop_map(Value::String),
            2 => nasty_number().prop_map(Value::Number),
            1 => (1940i64..2040).prop_map(Value::from),
            1 => json_value(),
        ]
    }

    /// One line, trimmed, 1 to 50 characters: a name or a manufacturer.
    fn check_name(name: &str) -> Result<(), TestCaseError> {
        prop_assert_eq!(name.trim(), name);
        prop_assert!((1..=50).contains(&name.chars().count()));
        prop_assert!(text::check_one_line(name).is_ok());
        Ok(())
    }

    proptest! {
        #![proptest_config(hostile::config(512))]

        #[test]
        fn a_platform_body_gives_a_valid_draft_or_names_the_field(
            body in prop_oneof![json_value(), object_of(PLATFORM_FIELDS, field_value())],
        ) {
            match decode_json::<PlatformBody>(&serde_json::to_vec(&body).unwrap())
                .and_then(PlatformBody::parse)
            {
                Ok(draft) => {
                    check_name(draft.name.as_str())?;
                    if let Some(manufacturer) = &draft.manufacturer {
                        check_name(manufacturer)?;
                    }
                    if let Some(year) = draft.release_year {
                        prop_assert!(ReleaseYear::parse(year.into()).is_ok());
                    }
                }
                Err(error) => check_refused_body(&error, &body, PLATFORM_FIELDS)?,
            }
        }

        #[test]
        fn a_genre_body_gives_a_valid_draft_or_names_the_field(
            body in prop_oneof![json_value(), object_of(GENRE_FIELDS, field_value())],
        ) {
            match decode_json::<GenreBody>(&serde_json::to_vec(&body).unwrap())
                .and_then(GenreBody::parse)
            {
                Ok(draft) => {
                    check_name(draft.name.as_str())?;
                    if let Some(description) = &draft.description {
                        prop_assert!(!description.is_empty());
                        prop_assert_eq!(description.trim(), description.as_str());
                        prop_assert!(text::check_lines(description).is_ok());
                    }
                }
                Err(error) => check_refused_body(&error, &body, GENRE_FIELDS)?,
            }
        }
    }
}
