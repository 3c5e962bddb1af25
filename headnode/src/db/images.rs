//! Images and the image_files rows that say which stored files are in use.
//! Attaching a file and collecting an unused one take the same advisory lock
//! (keyed by the file's hash), so a file is never removed while an upload of
//! the same content is attaching it.

use chrono::{DateTime, Utc};
use nereid_api::{
    AccountId, Image, ImageCreate, ImageFile, ImageFromInstance, ImageId, ImageRequirements,
    ImageState, ImageType, InstanceId, Page,
};
use sqlx::types::Json;
use uuid::Uuid;

use super::states::INSTANCE_DELETED;
use super::{Datastore, NewJob, into_page, is_unique_violation};
use crate::error::{Error, Result};

#[derive(sqlx::FromRow)]
struct ImageRow {
    id: Uuid,
    owner: Uuid,
    name: String,
    version: String,
    #[sqlx(rename = "type")]
    image_type: String,
    os: String,
    description: String,
    requirements: Json<ImageRequirements>,
    public: bool,
    state: String,
    file_sha256: Option<String>,
    file_size: Option<i64>,
    unpacked_size: Option<i64>,
    origin: Option<Uuid>,
    created_at: DateTime<Utc>,
}

impl ImageRow {
    fn into_api(self) -> Result<Image> {
        let bad = |what: &str| Error::Internal(format!("image {} has a bad {what}", self.id));
        Ok(Image {
            id: self.id.into(),
            owner: self.owner.into(),
            image_type: ImageType::parse(&self.image_type).ok_or_else(|| bad("type"))?,
            state: ImageState::parse(&self.state).ok_or_else(|| bad("state"))?,
            file: match (self.file_sha256, self.file_size) {
                (Some(sha256), Some(size)) => Some(ImageFile {
                    sha256,
                    size: size as u64,
                }),
                _ => None,
            },
            name: self.name,
            version: self.version,
            os: self.os,
            description: self.description,
            requirements: self.requirements.0,
            public: self.public,
            unpacked_size: self.unpacked_size.map(|s| s as u64),
            origin: self.origin.map(Into::into),
            created_at: self.created_at,
        })
    }
}

const SELECT: &str =
    "SELECT i.id, i.owner, i.name, i.version, i.type, i.os, i.description, i.requirements,
        i.public, i.state, i.file_sha256, f.size AS file_size, i.unpacked_size, i.origin,
        i.created_at
    FROM images i LEFT JOIN image_files f ON f.sha256 = i.file_sha256";

#[derive(Debug, Default)]
pub struct ImageFilter {
    pub name: Option<String>,
    pub image_type: Option<ImageType>,
    pub state: Option<ImageState>,
    /// Only images this account may see (its own and public ones); None = all.
    pub visible_to: Option<AccountId>,
}

/// Inserts an image, counted against the owner's image quota.
async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    defaults: &nereid_api::QuotaValues,
    id: ImageId,
    owner: AccountId,
    req: &ImageCreate,
    origin: Option<ImageId>,
) -> Result<()> {
    let need = super::quotas::Need {
        images: 1,
        ..Default::default()
    };
    super::quotas::reserve(tx, owner, defaults, &need).await?;
    sqlx::query(
        "INSERT INTO images (id, owner, name, version, type, os, description, requirements, public,
                unpacked_size, origin)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(id.as_uuid())
    .bind(owner.as_uuid())
    .bind(&req.name)
    .bind(&req.version)
    .bind(req.image_type.as_str())
    .bind(&req.os)
    .bind(&req.description)
    .bind(Json(&req.requirements))
    .bind(req.public)
    .bind(req.unpacked_size.map(|s| s as i64))
    .bind(origin.map(|o| o.as_uuid()))
    .execute(&mut **tx)
    .await
    .map_err(|e| match &e {
        e if is_unique_violation(e, "images_owner_name_version_key") => Error::Conflict(format!(
            "this account already has an image {} version {}",
            req.name, req.version
        )),
        sqlx::Error::Database(d) if d.code().as_deref() == Some("23503") => {
            Error::not_found("account", owner)
        }
        _ => e.into(),
    })?;
    crate::audit::record(
        tx,
        crate::audit::Event::new("image.create", "image", id).owned_by(owner),
    )
    .await
}

/// What detaching a file left behind: a hash whose file may now be unused.
pub type MaybeUnused = Option<String>;

fn advisory_key(sha256: &str) -> i64 {
    i64::from_str_radix(&sha256[..15], 16).unwrap_or(0)
}

impl Datastore {
    pub async fn image_create(&self, owner: AccountId, req: &ImageCreate) -> Result<Image> {
        let id = ImageId::new();
        let mut tx = self.pool.begin().await?;
        insert(&mut tx, &self.default_quotas, id, owner, req, None).await?;
        tx.commit().await?;
        self.image_get(id, None).await
    }

    /// Records an image to be made from an instance (running or stopped),
    /// taking its type, OS and requirements from the instance's image, and
    /// queues `job` to make it, in one transaction.
    pub async fn image_from_instance(
        &self,
        instance: InstanceId,
        scope: Option<AccountId>,
        req: &ImageFromInstance,
        mut job: NewJob,
    ) -> Result<ImageId> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(Uuid, String, Uuid)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT owner, state, image_id FROM instances
              WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2) AND state <> {INSTANCE_DELETED}
              FOR UPDATE"
        )))
        .bind(instance.as_uuid())
        .bind(scope.map(|o| o.as_uuid()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((owner, state, origin)) = row else {
            return Err(Error::not_found("instance", instance));
        };
        if !matches!(state.as_str(), "running" | "stopped") {
            return Err(Error::Conflict(format!(
                "instance {instance} is {state}; an image is made from a running or stopped instance"
            )));
        }
        let origin: ImageRow =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE i.id = $1")))
                .bind(origin)
                .fetch_one(&mut *tx)
                .await?;
        let image_type = ImageType::parse(&origin.image_type)
            .ok_or_else(|| Error::Internal(format!("image {} has a bad type", origin.id)))?;
        let manifest = ImageCreate {
            name: req.name.clone(),
            version: req.version.clone(),
            image_type,
            os: origin.os,
            description: req.description.clone(),
            requirements: origin.requirements.0,
            public: false,
            owner: None,
            unpacked_size: None,
        };
        let id = ImageId::new();
        insert(
            &mut tx,
            &self.default_quotas,
            id,
            owner.into(),
            &manifest,
            Some(origin.id.into()),
        )
        .await?;
        job.params = serde_json::json!({ "image_id": id });
        super::jobs::insert(&mut tx, &job).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Declares how much an image's file unpacks to (an image made from an
    /// instance learns it with its file).
    pub async fn image_set_unpacked_size(&self, id: ImageId, bytes: u64) -> Result<()> {
        sqlx::query("UPDATE images SET unpacked_size = $2 WHERE id = $1 AND state = 'unactivated'")
            .bind(id.as_uuid())
            .bind(bytes as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes an image that never got its file (a failed image-from-instance
    /// job); one with a file, or that is gone, is left as it is.
    pub async fn image_discard_unfinished(&self, id: ImageId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let gone: Option<(Uuid,)> = sqlx::query_as(
            "DELETE FROM images WHERE id = $1 AND file_sha256 IS NULL AND state = 'unactivated'
             RETURNING owner",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((owner,)) = gone {
            crate::audit::record(
                &mut tx,
                crate::audit::Event::new("image.delete", "image", id).owned_by(owner.into()),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One image; with `visible_to`, another account's private image is NotFound.
    pub async fn image_get(&self, id: ImageId, visible_to: Option<AccountId>) -> Result<Image> {
        sqlx::query_as::<_, ImageRow>(sqlx::AssertSqlSafe(format!(
            "{SELECT} WHERE i.id = $1 AND ($2::uuid IS NULL OR i.owner = $2 OR i.public)"
        )))
        .bind(id.as_uuid())
        .bind(visible_to.map(|a| a.as_uuid()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::not_found("image", id))?
        .into_api()
    }

    pub async fn image_list(
        &self,
        f: &ImageFilter,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Image>> {
        let rows = sqlx::query_as::<_, ImageRow>(sqlx::AssertSqlSafe(format!(
            "{SELECT} WHERE ($1::uuid IS NULL OR i.owner = $1 OR i.public)
               AND ($2::text IS NULL OR i.name = $2) AND ($3::text IS NULL OR i.type = $3)
               AND ($4::text IS NULL OR i.state = $4) AND ($5::uuid IS NULL OR i.id > $5)
             ORDER BY i.id LIMIT $6"
        )))
        .bind(f.visible_to.map(|a| a.as_uuid()))
        .bind(&f.name)
        .bind(f.image_type.map(|t| t.as_str()))
        .bind(f.state.map(|s| s.as_str()))
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let images = rows
            .into_iter()
            .map(ImageRow::into_api)
            .collect::<Result<Vec<_>>>()?;
        Ok(into_page(images, limit, |i| i.id.as_uuid()))
    }

    /// Points an unactivated image at a stored file; `store_file` runs under
    /// the file's lock, after its row exists and before the commit. Returns the
    /// hash of the file the image had before, if any (it may now be unused).
    pub async fn image_attach_file<F, Fut>(
        &self,
        id: ImageId,
        sha256: &str,
        size: u64,
        store_file: F,
    ) -> Result<MaybeUnused>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut tx = self.pool.begin().await?;
        // The owner's image-bytes quota, under the account's lock (taken
        // before the image's, as every create takes them).
        let found: Option<(Uuid, Option<i64>)> = sqlx::query_as(
            "SELECT i.owner, f.size FROM images i LEFT JOIN image_files f ON f.sha256 = i.file_sha256
             WHERE i.id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((owner, previous_size)) = found else {
            return Err(Error::not_found("image", id));
        };
        let need = super::quotas::Need {
            image_bytes: size.saturating_sub(previous_size.unwrap_or(0).max(0) as u64),
            ..Default::default()
        };
        super::quotas::reserve(&mut tx, owner.into(), &self.default_quotas, &need).await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(advisory_key(sha256))
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO image_files (sha256, size) VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING")
            .bind(sha256)
            .bind(size as i64)
            .execute(&mut *tx)
            .await?;
        let previous: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT file_sha256 FROM images WHERE id = $1 AND state = 'unactivated' FOR UPDATE",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((previous,)) = previous else {
            return Err(Error::Conflict(format!(
                "image {id} is no longer unactivated; its file cannot change"
            )));
        };
        store_file().await?;
        sqlx::query("UPDATE images SET file_sha256 = $2 WHERE id = $1")
            .bind(id.as_uuid())
            .bind(sha256)
            .execute(&mut *tx)
            .await?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("image.upload", "image", id).owned_by(owner.into()),
        )
        .await?;
        tx.commit().await?;
        Ok(previous.filter(|p| p != sha256))
    }

    /// Removes the image_files row of a hash no image uses any more; returns
    /// true if the caller should remove the file. `remove_file` runs under the lock.
    pub async fn image_file_collect<F, Fut>(&self, sha256: &str, remove_file: F) -> Result<bool>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(advisory_key(sha256))
            .execute(&mut *tx)
            .await?;
        let in_use: (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM images WHERE file_sha256 = $1)")
                .bind(sha256)
                .fetch_one(&mut *tx)
                .await?;
        if in_use.0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM image_files WHERE sha256 = $1")
            .bind(sha256)
            .execute(&mut *tx)
            .await?;
        remove_file().await;
        tx.commit().await?;
        Ok(true)
    }

    /// Every hash the store should hold.
    pub async fn image_file_hashes(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT sha256 FROM image_files")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Moves an image between states; `from` lists the states it may leave.
    pub async fn image_set_state(
        &self,
        id: ImageId,
        from: &[ImageState],
        to: ImageState,
    ) -> Result<Image> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        let done: Option<(Uuid,)> = sqlx::query_as("UPDATE images SET state = $3 WHERE id = $1 AND state = ANY($2) AND (file_sha256 IS NOT NULL OR $3 = 'unactivated') RETURNING owner")
            .bind(id.as_uuid())
            .bind(&from)
            .bind(to.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some((owner,)) = done {
            let action = match to {
                ImageState::Active => "image.activate",
                ImageState::Disabled => "image.disable",
                ImageState::Unactivated => "image.unactivate",
            };
            crate::audit::record(
                &mut tx,
                crate::audit::Event::new(action, "image", id).owned_by(owner.into()),
            )
            .await?;
        }
        tx.commit().await?;
        let image = self.image_get(id, None).await?;
        if done.is_none() && image.state != to {
            let why = if image.file.is_none() {
                "it has no file yet (upload it first)".to_string()
            } else {
                format!("it is {}", image.state.as_str())
            };
            return Err(Error::Conflict(format!(
                "image {id} cannot become {}: {why}",
                to.as_str()
            )));
        }
        Ok(image)
    }

    /// Deletes an image; returns its file's hash (which may now be unused).
    pub async fn image_delete(&self, id: ImageId) -> Result<MaybeUnused> {
        let mut tx = self.pool.begin().await?;
        // Locked first: a create referencing the image waits for this
        // transaction, and then finds the image gone.
        let found: Option<(Uuid,)> =
            sqlx::query_as("SELECT owner FROM images WHERE id = $1 FOR UPDATE")
                .bind(id.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
        let Some((owner,)) = found else {
            return Err(Error::not_found("image", id));
        };
        let (live,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM instances WHERE image_id = $1 AND state <> {}",
            super::states::INSTANCE_DELETED
        )))
        .bind(id.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
        if live > 0 {
            return Err(Error::Conflict(format!(
                "image {id} is in use by {live} instances; delete them first or disable the image"
            )));
        }
        let (sha,): (Option<String>,) =
            sqlx::query_as("DELETE FROM images WHERE id = $1 RETURNING file_sha256")
                .bind(id.as_uuid())
                .fetch_one(&mut *tx)
                .await?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("image.delete", "image", id).owned_by(owner.into()),
        )
        .await?;
        tx.commit().await?;
        Ok(sha)
    }
}
