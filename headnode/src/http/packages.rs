//! /v1/packages: operators define them; tenants see the active ones they may use.

use crate::authz::Action;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nereid_api::{Brand, ErrorBody, Package, PackageCreate, PackageId, PackageUpdate, Page};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiPath, ApiQuery, OpContext};
use crate::AppState;
use crate::db::{PackageFilter, page_limit, parse_page_token};
use crate::error::{Error, Result};
use crate::validate;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PackageListParams {
    pub name: Option<String>,
    pub active: Option<bool>,
    pub brand: Option<Brand>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub page_token: Option<String>,
}

fn check_sizes(p: &PackageCreate) -> Result<()> {
    validate::name("name", &p.name)?;
    validate::name("version", &p.version)?;
    validate::text("description", &p.description, 1024)?;
    if !(16..=4 * 1024 * 1024).contains(&p.memory_mb) {
        return Err(Error::invalid("memory_mb", "must be within 16..=4194304"));
    }
    if p.swap_mb > 4 * 1024 * 1024 {
        return Err(Error::invalid("swap_mb", "must be at most 4194304"));
    }
    if !(1..=512).contains(&p.vcpus) {
        return Err(Error::invalid("vcpus", "must be within 1..=512"));
    }
    if p.cpu_cap > 51_200 {
        return Err(Error::invalid(
            "cpu_cap",
            "must be within 0..=51200 (percent of one CPU)",
        ));
    }
    if !(1..=1024 * 1024 * 1024).contains(&p.disk_mb) {
        return Err(Error::invalid("disk_mb", "must be within 1..=1073741824"));
    }
    validate::traits("traits", &p.traits)?;
    Ok(())
}

#[utoipa::path(get, path = "/v1/packages", tag = "packages", params(PackageListParams),
    responses((status = 200, body = Page<Package>)))]
pub async fn package_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiQuery(q): ApiQuery<PackageListParams>,
) -> Result<Json<Page<Package>>> {
    let limit = page_limit(q.limit)?;
    let after = parse_page_token(q.page_token.as_deref())?;
    let f = PackageFilter {
        name: q.name,
        active: q.active,
        brand: q.brand,
        usable_by: p.authorize(Action::PackageRead)?,
    };
    Ok(Json(s.db.package_list(&f, after, limit).await?))
}

#[utoipa::path(post, path = "/v1/packages", tag = "packages", request_body = PackageCreate,
    responses((status = 201, body = Package), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn package_create(
    State(s): State<AppState>,
    p: OpContext,
    ApiJson(req): ApiJson<PackageCreate>,
) -> Result<(StatusCode, Json<Package>)> {
    p.authorize(Action::PackageWrite)?;
    check_sizes(&req)?;
    s.db.accounts_exist(&req.owners).await?;
    let pkg = s.db.package_create(&req).await?;
    tracing::info!(package = %pkg.id, name = %pkg.name, version = %pkg.version, "package created");
    Ok((StatusCode::CREATED, Json(pkg)))
}

#[utoipa::path(get, path = "/v1/packages/{id}", tag = "packages", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Package), (status = 404, body = ErrorBody)))]
pub async fn package_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<PackageId>,
) -> Result<Json<Package>> {
    Ok(Json(
        s.db.package_get(id, p.authorize(Action::PackageRead)?)
            .await?,
    ))
}

/// Changes description, active, owners or traits; sizes are immutable (409).
#[utoipa::path(patch, path = "/v1/packages/{id}", tag = "packages", params(("id" = String, Path, format = Uuid)),
    request_body = PackageUpdate,
    responses((status = 200, body = Package), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn package_update(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<PackageId>,
    ApiJson(req): ApiJson<PackageUpdate>,
) -> Result<Json<Package>> {
    p.authorize(Action::PackageWrite)?;
    if let Some(d) = &req.description {
        validate::text("description", d, 1024)?;
    }
    if let Some(owners) = &req.owners {
        s.db.accounts_exist(owners).await?;
    }
    if let Some(t) = &req.traits {
        validate::traits("traits", t)?;
    }
    Ok(Json(s.db.package_update(id, &req).await?))
}

/// Deletes a package that was never used (409 otherwise: deactivate it).
#[utoipa::path(delete, path = "/v1/packages/{id}", tag = "packages", params(("id" = String, Path, format = Uuid)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn package_delete(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<PackageId>,
) -> Result<StatusCode> {
    p.authorize(Action::PackageWrite)?;
    s.db.package_delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
