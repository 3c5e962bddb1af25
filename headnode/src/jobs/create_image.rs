//! The saga of an image made from an instance: the image row was recorded
//! by the request (step 1, whose undo removes it if it never got a file);
//! the node then writes the instance as an image file from a transient
//! snapshot, streamed into the headnode's image store, hashed on the way
//! and checked against the node's own hash before the image points at it.
//! The instance keeps running; the image is left unactivated.

use futures::FutureExt;
use nereid_api::ImageId;

use super::provision::target;
use super::{Ctx, Saga, Step, StepError, StepResult};

/// The steps the request does itself (recording the image).
pub const CREATE_IMAGE_STEPS_DONE_AT_REQUEST: usize = 1;

pub(super) fn saga() -> Saga {
    Saga {
        steps: vec![
            Step {
                name: "record_image",
                forward: |_| async { Ok(()) }.boxed(),
                undo: Some(|c| discard(c).boxed()),
                saved: true,
            },
            Step {
                name: "export_from_node",
                forward: |c| export(c).boxed(),
                undo: None,
                saved: true,
            },
        ],
        // The instance was not touched.
        on_failure: |_, _| async { Ok(()) }.boxed(),
    }
}

async fn image_of(c: &Ctx) -> Result<ImageId, StepError> {
    let params = c.state.db.job_params(c.job.id).await?;
    serde_json::from_value(params["image_id"].clone())
        .map_err(|e| StepError::Fail(format!("the job does not name its image: {e}")))
}

async fn export(c: &Ctx) -> StepResult {
    let s = &c.state;
    let image = image_of(c).await?;
    // Done before (the run that attached it stopped before saying so).
    if s.db.image_get(image, None).await?.file.is_some() {
        return Ok(());
    }
    let t = target(c).await?;
    let mut export = s.agents.export_image(&t, c.job.instance_id, image).await?;
    let received = s
        .images
        .receive(export.chunks(), s.config.max_image_bytes)
        .await;
    if let Some(e) = export.failed.take() {
        if let Ok(r) = &received {
            s.images.discard(r).await;
        }
        return Err(e.into());
    }
    let received = received?;
    let Some(trailer) = export.trailer.take() else {
        s.images.discard(&received).await;
        return Err(StepError::Retry(
            "the export ended without its trailer".into(),
        ));
    };
    if trailer.sha256 != received.sha256 || trailer.size != received.size {
        s.images.discard(&received).await;
        return Err(StepError::Retry(format!(
            "the node wrote {} bytes with sha256 {}, the headnode received {} bytes with sha256 {}",
            trailer.size, trailer.sha256, received.size, received.sha256
        )));
    }
    s.db.image_set_unpacked_size(image, trailer.unpacked_bytes.max(1))
        .await?;
    crate::images::attach(s, image, &received).await?;
    tracing::info!(%image, sha256 = %received.sha256, size = received.size,
        unpacked = trailer.unpacked_bytes, skipped = trailer.skipped, "image made from instance");
    Ok(())
}

async fn discard(c: &Ctx) -> StepResult {
    let image = image_of(c).await?;
    c.state.db.image_discard_unfinished(image).await?;
    Ok(())
}
