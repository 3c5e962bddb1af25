//! History retention: finished jobs and deleted instances older than
//! `history_retention` are deleted, so the tables every list and the
//! scheduler read do not grow without bound. One headnode at a time does it
//! (a lease), in batches of `BATCH` rows with a pause between them, so a
//! large backlog never holds the database for long.
//!
//! It never deletes a job that has not finished nor an instance that is not
//! deleted; what it removed is gone from the API (a deleted instance's GET
//! answers 404 once its retention ran out, as in Triton's VMAPI after
//! its destroyed-VM retention).

use std::time::Duration;

use crate::AppState;

const LEASE: &str = "retention";
/// Rows one statement deletes.
const BATCH: i64 = 2_000;
/// The pause between two batches of a backlog.
const BETWEEN: Duration = Duration::from_millis(50);

/// Runs until the process ends; works while this headnode holds the lease.
pub async fn run(state: AppState) {
    let me = uuid::Uuid::new_v4();
    let every = state.config.retention_interval;
    loop {
        match state.db.lease_take(LEASE, me, every * 3).await {
            Ok(true) => match sweep(&state).await {
                Ok((0, 0)) => {}
                Ok((jobs, instances)) => {
                    tracing::info!(jobs, instances, "history past its retention deleted")
                }
                Err(e) => tracing::warn!("history retention: {e}"),
            },
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot take the retention lease: {e}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Deletes everything past the retention; (jobs, instances) deleted.
async fn sweep(state: &AppState) -> crate::error::Result<(u64, u64)> {
    let older = state.config.history_retention;
    // Instances first: their jobs go with them.
    let instances = drain(|| state.db.prune_instances(older, BATCH)).await?;
    let jobs = drain(|| state.db.prune_jobs(older, BATCH)).await?;
    Ok((jobs, instances))
}

/// Runs one batch after another (with a pause) until one is not full;
/// returns how many rows went.
async fn drain<F, Fut>(mut batch: F) -> crate::error::Result<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<u64>>,
{
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
        tokio::time::sleep(BETWEEN).await;
    }
}
