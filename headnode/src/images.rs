//! Images beyond their catalog rows: attaching a received file to an image
//! (uploads and images made from instances share it), and the request that
//! makes an image from an instance (the job in `jobs::create_image` does
//! the work).
//!
//! It must never leave a stored file that no image row points at.

use nereid_api::{ImageFromInstance, ImageFromInstanceAccepted, ImageId, InstanceId, JobKind};

use crate::AppState;
use crate::authz::{Action, OpContext};
use crate::error::Result;
use crate::imagestore::Received;
use crate::validate;

/// Points the unactivated image `id` at a received file (moved into the
/// store under the file's lock); a file it had before, or this one if the
/// attach failed, is removed when no image uses it.
pub async fn attach(s: &AppState, id: ImageId, received: &Received) -> Result<()> {
    let attached =
        s.db.image_attach_file(id, &received.sha256, received.size, || {
            s.images.commit(received)
        })
        .await;
    let previous = match attached {
        Ok(prev) => prev,
        Err(e) => {
            s.images.discard(received).await;
            // The file may have been moved into place before the failure.
            s.db.image_file_collect(&received.sha256, || s.images.remove(&received.sha256))
                .await?;
            return Err(e);
        }
    };
    if let Some(old) = previous {
        s.db.image_file_collect(&old, || s.images.remove(&old))
            .await?;
    }
    Ok(())
}

/// Records an unactivated image owned by the instance's owner and queues
/// the job that snapshots the instance on its node and streams it into the
/// image store. Another tenant's instance is a 404; a name and version the
/// account has is a 409; so is an instance that is not running or stopped,
/// or that has a job in progress.
pub async fn from_instance(
    s: &AppState,
    p: OpContext,
    id: InstanceId,
    req: &ImageFromInstance,
) -> Result<ImageFromInstanceAccepted> {
    validate::image_label(&req.name, &req.version, &req.description)?;
    // Making an image writes the instance's owner's catalog.
    let scope = p.authorize(Action::ImageWrite)?;
    let inst = s.db.instance_get(id, scope).await?;
    let job = crate::jobs::new_job(
        JobKind::CreateImage,
        id,
        inst.owner,
        crate::jobs::CREATE_IMAGE_STEPS_DONE_AT_REQUEST,
    );
    let job_id = job.id;
    let image = s.db.image_from_instance(id, scope, req, job).await?;
    s.jobs.wake();
    tracing::info!(%image, instance = %id, job = %job_id, "making an image from an instance");
    Ok(ImageFromInstanceAccepted {
        image: s.db.image_get(image, None).await?,
        job_id,
    })
}
