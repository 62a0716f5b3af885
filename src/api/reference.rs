//! `/api/platforms` and `/api/genres`: the catalog's reference data.

use super::ApiContext;
use super::error::ApiError;
use super::extract::{Id, Json};
use crate::domain::{
    Genre, GenreDraft, GenreName, Platform, PlatformDraft, PlatformName, ReleaseYear,
};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use serde::Deserialize;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/api/platforms", get(platforms).post(create_platform))
        .route(
            "/api/platforms/{id}",
            put(update_platform).delete(delete_platform),
        )
        .route("/api/genres", get(genres).post(create_genre))
        .route("/api/genres/{id}", put(update_genre).delete(delete_genre))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PlatformBody {
    name: String,
    #[serde(default)]
    manufacturer: Option<String>,
    #[serde(default)]
    release_year: Option<i64>,
}

impl PlatformBody {
    fn parse(self) -> Result<PlatformDraft, ApiError> {
        Ok(PlatformDraft {
            name: PlatformName::parse(&self.name)?,
            manufacturer: optional_text(self.manufacturer),
            release_year: self
                .release_year
                .map(ReleaseYear::parse)
                .transpose()?
                .map(ReleaseYear::get),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GenreBody {
    name: String,
    #[serde(default)]
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

async fn platforms(State(ctx): State<ApiContext>) -> Result<axum::Json<Vec<Platform>>, ApiError> {
    Ok(axum::Json(ctx.store.platforms().await?))
}

async fn create_platform(
    State(ctx): State<ApiContext>,
    Json(body): Json<PlatformBody>,
) -> Result<(StatusCode, axum::Json<Platform>), ApiError> {
    let platform = ctx.store.create_platform(&body.parse()?).await?;
    Ok((StatusCode::CREATED, axum::Json(platform)))
}

async fn update_platform(
    State(ctx): State<ApiContext>,
    Id(id): Id,
    Json(body): Json<PlatformBody>,
) -> Result<axum::Json<Platform>, ApiError> {
    Ok(axum::Json(
        ctx.store.update_platform(id, &body.parse()?).await?,
    ))
}

async fn delete_platform(
    State(ctx): State<ApiContext>,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ctx.store.delete_platform(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn genres(State(ctx): State<ApiContext>) -> Result<axum::Json<Vec<Genre>>, ApiError> {
    Ok(axum::Json(ctx.store.genres().await?))
}

async fn create_genre(
    State(ctx): State<ApiContext>,
    Json(body): Json<GenreBody>,
) -> Result<(StatusCode, axum::Json<Genre>), ApiError> {
    let genre = ctx.store.create_genre(&body.parse()?).await?;
    Ok((StatusCode::CREATED, axum::Json(genre)))
}

async fn update_genre(
    State(ctx): State<ApiContext>,
    Id(id): Id,
    Json(body): Json<GenreBody>,
) -> Result<axum::Json<Genre>, ApiError> {
    Ok(axum::Json(
        ctx.store.update_genre(id, &body.parse()?).await?,
    ))
}

async fn delete_genre(State(ctx): State<ApiContext>, Id(id): Id) -> Result<StatusCode, ApiError> {
    ctx.store.delete_genre(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
