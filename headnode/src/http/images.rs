//! /v1/images: the image catalog and its files.

use crate::authz::Action;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nereid_api::{
    AccountId, ErrorBody, Image, ImageCreate, ImageFromInstance, ImageFromInstanceAccepted,
    ImageId, ImageState, ImageType, InstanceId, Page,
};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use utoipa::IntoParams;

use super::{ApiJson, ApiPath, ApiQuery, OpContext};
use crate::AppState;
use crate::db::{ImageFilter, page_limit, parse_page_token};
use crate::error::{Error, Result};
use crate::imagestore::{RangeRequest, parse_range};
use crate::validate;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImageListParams {
    pub name: Option<String>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub image_type: Option<ImageType>,
    pub state: Option<ImageState>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    /// The sha256 the client expects; a mismatch is a 400 and nothing is kept.
    #[param(pattern = "^[0-9a-fA-F]{64}$")]
    pub sha256: Option<String>,
}

/// The image if the caller may change it: its owner or an operator. Another
/// tenant's public image is a 403, a private one a 404.
async fn owned(s: &AppState, p: &OpContext, id: ImageId) -> Result<Image> {
    let image = s.db.image_get(id, p.authorize(Action::ImageRead)?).await?;
    p.may_change(Action::ImageWrite, image.owner, &format!("image {id}"))?;
    Ok(image)
}

#[utoipa::path(get, path = "/v1/images", tag = "images", params(ImageListParams),
    responses((status = 200, body = Page<Image>), (status = 401, body = ErrorBody)))]
pub async fn image_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiQuery(q): ApiQuery<ImageListParams>,
) -> Result<Json<Page<Image>>> {
    let limit = page_limit(q.limit)?;
    let after = parse_page_token(q.page_token.as_deref())?;
    let filter = ImageFilter {
        name: q.name,
        image_type: q.image_type,
        state: q.state,
        visible_to: p.authorize(Action::ImageRead)?,
    };
    Ok(Json(s.db.image_list(&filter, after, limit).await?))
}

#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = ImageCreate,
    responses((status = 201, body = Image), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn image_create(
    State(s): State<AppState>,
    p: OpContext,
    ApiJson(req): ApiJson<ImageCreate>,
) -> Result<(StatusCode, Json<Image>)> {
    validate::image_label(&req.name, &req.version, &req.description)?;
    validate::name("os", &req.os)?;
    if let Some(u) = req.unpacked_size
        && !(1..=1 << 44).contains(&u)
    {
        return Err(Error::invalid(
            "unpacked_size",
            "must be within 1..=17592186044416 bytes (16 TiB)",
        ));
    }
    let r = &req.requirements;
    for (field, v) in [
        ("requirements.min_ram_mb", r.min_ram_mb),
        ("requirements.max_ram_mb", r.max_ram_mb),
    ] {
        if v.is_some_and(|v| v > 4 * 1024 * 1024) {
            return Err(Error::invalid(field, "must be at most 4194304 (4 TiB)"));
        }
    }
    if let (Some(min), Some(max)) = (r.min_ram_mb, r.max_ram_mb)
        && min > max
    {
        return Err(Error::invalid(
            "requirements.min_ram_mb",
            "is larger than requirements.max_ram_mb",
        ));
    }
    if let Some(b) = r.brand
        && b != req.image_type.brand()
    {
        return Err(Error::invalid(
            "requirements.brand",
            format!("{b} does not run a {} image", req.image_type),
        ));
    }
    if req.public {
        p.authorize(Action::ImagePublish)?;
    }
    let owner: AccountId = p.on_behalf_of(Action::ImageWrite, req.owner)?;
    let image = s.db.image_create(owner, &req).await?;
    tracing::info!(image = %image.id, name = %image.name, version = %image.version, "image created");
    Ok((StatusCode::CREATED, Json(image)))
}

#[utoipa::path(get, path = "/v1/images/{id}", tag = "images", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Image), (status = 404, body = ErrorBody)))]
pub async fn image_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ImageId>,
) -> Result<Json<Image>> {
    Ok(Json(
        s.db.image_get(id, p.authorize(Action::ImageRead)?).await?,
    ))
}

/// Deletes an image (409 while instances use it); its file goes when no other image shares it.
#[utoipa::path(delete, path = "/v1/images/{id}", tag = "images", params(("id" = String, Path, format = Uuid)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn image_delete(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ImageId>,
) -> Result<StatusCode> {
    owned(&s, &p, id).await?;
    if let Some(sha) = s.db.image_delete(id).await? {
        s.db.image_file_collect(&sha, || s.images.remove(&sha))
            .await?;
    }
    tracing::info!(image = %id, "image deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Uploads the file of an unactivated image, streamed to disk.
#[utoipa::path(put, path = "/v1/images/{id}/file", tag = "images", params(("id" = String, Path, format = Uuid), UploadParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = Image), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody)))]
pub async fn image_file_put(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ImageId>,
    ApiQuery(q): ApiQuery<UploadParams>,
    body: Body,
) -> Result<Json<Image>> {
    if let Some(sha) = &q.sha256
        && !(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Error::invalid("sha256", "must be 64 hex digits"));
    }
    let image = owned(&s, &p, id).await?;
    if image.state != ImageState::Unactivated {
        return Err(Error::Conflict(format!(
            "image {id} is {}; only an unactivated image takes a file",
            image.state.as_str()
        )));
    }
    let received = s
        .images
        .receive(body.into_data_stream(), s.config.max_image_bytes)
        .await?;
    if let Some(expected) = q.sha256.map(|x| x.to_ascii_lowercase())
        && expected != received.sha256
    {
        s.images.discard(&received).await;
        return Err(Error::invalid(
            "sha256",
            format!(
                "the upload's sha256 is {}, not {expected}; nothing was kept",
                received.sha256
            ),
        ));
    }
    crate::images::attach(&s, id, &received).await?;
    tracing::info!(image = %id, sha256 = %received.sha256, size = received.size, "image file stored");
    Ok(Json(s.db.image_get(id, None).await?))
}

/// Streams the file back, with `Range` support, to its owner, operators,
/// anyone for a public image. (Nodes fetch files over mutual TLS, from the
/// registry.)
#[utoipa::path(get, path = "/v1/images/{id}/file", tag = "images", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, content_type = "application/octet-stream"), (status = 206), (status = 404, body = ErrorBody),
              (status = 416, body = ErrorBody)))]
pub async fn image_file_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ImageId>,
    headers: HeaderMap,
) -> Result<Response> {
    let image = s.db.image_get(id, p.authorize(Action::ImageRead)?).await?;
    let file = image.file.ok_or_else(|| Error::NotFound {
        kind: "file of image",
        id: id.to_string(),
    })?;
    let path = s.images.path_of(&file.sha256);
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Error::Internal(format!("opening {}: {e}", path.display())))?;
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        file.size,
    );
    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, file.size),
        RangeRequest::Partial(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeRequest::Unsatisfiable => {
            let mut resp = Error::RangeNotSatisfiable(format!(
                "the file of image {id} has {} bytes",
                file.size
            ))
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", file.size)) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    f.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| Error::Internal(format!("seeking {}: {e}", path.display())))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), 1024 * 1024);
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", file.sha256)) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{}",
            start,
            start + len - 1,
            file.size
        ))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

async fn transition(
    s: &AppState,
    p: &OpContext,
    id: ImageId,
    from: &[ImageState],
    to: ImageState,
) -> Result<Json<Image>> {
    owned(s, p, id).await?;
    let image = s.db.image_set_state(id, from, to).await?;
    tracing::info!(image = %id, state = to.as_str(), "image state changed");
    Ok(Json(image))
}

/// Makes an image with a file usable for new instances.
#[utoipa::path(post, path = "/v1/images/{id}/activate", tag = "images", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Image), (status = 409, body = ErrorBody)))]
pub async fn image_activate(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ImageId>,
) -> Result<Json<Image>> {
    transition(&s, &p, id, &[ImageState::Unactivated], ImageState::Active).await
}

#[utoipa::path(post, path = "/v1/images/{id}/disable", tag = "images", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Image), (status = 409, body = ErrorBody)))]
pub async fn image_disable(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ImageId>,
) -> Result<Json<Image>> {
    transition(&s, &p, id, &[ImageState::Active], ImageState::Disabled).await
}

#[utoipa::path(post, path = "/v1/images/{id}/enable", tag = "images", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Image), (status = 409, body = ErrorBody)))]
pub async fn image_enable(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ImageId>,
) -> Result<Json<Image>> {
    transition(&s, &p, id, &[ImageState::Disabled], ImageState::Active).await
}

/// Makes an image from an instance (running or stopped, which it stays): a
/// job snapshots it on its node and streams it into the image store with
/// its sha256. The image is answered at once, unactivated and without its
/// file; it has its file when the job succeeds, then it can be activated
/// and provisioned on any node. A failed job removes it.
#[utoipa::path(post, path = "/v1/instances/{id}/images", tag = "images",
    params(("id" = InstanceId, Path)), request_body = ImageFromInstance,
    responses((status = 202, body = ImageFromInstanceAccepted), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn image_from_instance(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<InstanceId>,
    ApiJson(req): ApiJson<ImageFromInstance>,
) -> Result<(StatusCode, Json<ImageFromInstanceAccepted>)> {
    let accepted = crate::images::from_instance(&s, p, id, &req).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}
