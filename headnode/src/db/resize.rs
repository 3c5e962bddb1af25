//! Resizing an instance to another package on the same server: the new
//! size is reserved (server capacity by a conditional update, account
//! quotas under the account lock) and the resize job queued in one
//! transaction, so a 409 leaves nothing; the job's undo gives the old size
//! back the same way.

use nereid_api::{AccountId, InstanceId, InstanceState, Package, PackageId};
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use uuid::Uuid;

use super::Datastore;
use super::jobs::{Fence, NewJob, fence_check};
use super::quotas::Need;
use super::states::INSTANCE_DELETED;
use crate::error::{Error, Result};
use crate::scheduler::Candidate;

/// Sizes an instance holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    ram_mb: i64,
    disk_mb: i64,
    vcpus: i32,
}

impl Size {
    fn of(p: &Package) -> Size {
        Size {
            ram_mb: p.memory_mb as i64,
            disk_mb: p.disk_mb as i64,
            vcpus: if p.brand.holds_vcpus() {
                p.vcpus as i32
            } else {
                0
            },
        }
    }
}

/// Moves the instance's hold on its server from `from` to `to`; false when
/// the server lacks room for the growth.
async fn move_hold(
    tx: &mut Transaction<'_, Postgres>,
    server: Uuid,
    from: Size,
    to: Size,
    room: Option<&Candidate>,
) -> Result<bool> {
    let (dr, dd, dv) = (
        to.ram_mb - from.ram_mb,
        to.disk_mb - from.disk_mb,
        to.vcpus - from.vcpus,
    );
    let (tr, td, tv) = room
        .map(|c| {
            (
                c.ram_total_mb as i64,
                c.disk_total_mb as i64,
                c.vcpus_total as i32,
            )
        })
        .unwrap_or((i64::MAX, i64::MAX, i32::MAX));
    let done = sqlx::query(
        "UPDATE servers SET used_ram_mb = used_ram_mb + $2, used_disk_mb = used_disk_mb + $3,
                used_vcpus = used_vcpus + $4
          WHERE id = $1 AND ($2 <= 0 OR used_ram_mb + $2 <= $5)
            AND ($3 <= 0 OR used_disk_mb + $3 <= $6) AND ($4 <= 0 OR used_vcpus + $4 <= $7)",
    )
    .bind(server)
    .bind(dr)
    .bind(dd)
    .bind(dv)
    .bind(tr)
    .bind(td)
    .bind(tv)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What a room check failed on, for the 409.
fn lacks(c: &Candidate, from: Size, to: Size) -> String {
    let mut why = Vec::new();
    let grow = |a: i64, b: i64| (b - a).max(0) as u64;
    if c.ram_used_mb + grow(from.ram_mb, to.ram_mb) > c.ram_total_mb {
        why.push(format!(
            "memory ({} MiB more, {} free)",
            grow(from.ram_mb, to.ram_mb),
            c.ram_total_mb.saturating_sub(c.ram_used_mb)
        ));
    }
    if c.disk_used_mb + grow(from.disk_mb, to.disk_mb) > c.disk_total_mb {
        why.push(format!(
            "disk ({} MiB more, {} free)",
            grow(from.disk_mb, to.disk_mb),
            c.disk_total_mb.saturating_sub(c.disk_used_mb)
        ));
    }
    if u64::from(c.vcpus_used) + grow(from.vcpus.into(), to.vcpus.into()) > u64::from(c.vcpus_total)
    {
        why.push("vcpus".to_string());
    }
    if why.is_empty() {
        why.push("room (it changed meanwhile)".into());
    }
    why.join(", ")
}

impl Datastore {
    /// Reserves `package`'s size for the instance on its server in place of
    /// its current one, records the package (a new spec generation), and
    /// queues `job` (whose params get the old package for its undo).
    pub async fn instance_resize(
        &self,
        id: InstanceId,
        scope: Option<AccountId>,
        package: &Package,
        room: &Candidate,
        mut job: NewJob,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        type Row = (Uuid, String, Option<Uuid>, Uuid, i64, i64, i32);
        let row: Option<Row> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT owner, state, server_id, package_id, ram_mb, disk_mb, vcpus FROM instances
              WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2) AND state <> {INSTANCE_DELETED}
              FOR UPDATE"
        )))
        .bind(id.as_uuid())
        .bind(scope.map(|o| o.as_uuid()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((owner, state, server, old_package, ram_mb, disk_mb, vcpus)) = row else {
            return Err(Error::not_found("instance", id));
        };
        let allowed: &[InstanceState] = match package.brand {
            // A VM's QEMU takes its size at start.
            nereid_api::Brand::Kvm => &[InstanceState::Stopped],
            nereid_api::Brand::Container => &[InstanceState::Running, InstanceState::Stopped],
        };
        if !allowed.iter().any(|s| s.as_str() == state) {
            return Err(Error::Conflict(format!(
                "instance {id} is {state}; a {} resizes when {}",
                package.brand,
                allowed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        let server =
            server.ok_or_else(|| Error::Conflict(format!("instance {id} is on no server")))?;
        let from = Size {
            ram_mb,
            disk_mb,
            vcpus,
        };
        let to = Size::of(package);
        if !move_hold(&mut tx, server, from, to, Some(room)).await? {
            return Err(Error::InsufficientCapacity(format!(
                "server {server} (where instance {id} runs) lacks {}; resizing does not move instances",
                lacks(room, from, to)
            )));
        }
        let grow = |a: i64, b: i64| (b - a).max(0) as u64;
        let need = Need {
            memory_mb: grow(from.ram_mb, to.ram_mb),
            disk_mb: grow(from.disk_mb, to.disk_mb),
            vcpus: grow(from.vcpus.into(), to.vcpus.into()),
            ..Default::default()
        };
        super::quotas::reserve(&mut tx, owner.into(), &self.default_quotas, &need).await?;
        set_size(&mut tx, id, package.id, to).await?;
        job.params = serde_json::json!({ "from_package": old_package });
        super::jobs::insert(&mut tx, &job).await?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("instance.resize", "instance", id).owned_by(owner.into()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A resize job's undo: the instance back to its old package, its hold
    /// on its server with it (no room check: it held that before).
    pub async fn instance_resize_revert(&self, id: InstanceId, fence: &Fence) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        fence_check(&mut tx, fence).await?;
        type Row = (Option<Uuid>, i64, i64, i32, serde_json::Value);
        let row: Option<Row> = sqlx::query_as(
            "SELECT i.server_id, i.ram_mb, i.disk_mb, i.vcpus, j.params
               FROM instances i JOIN jobs j ON j.id = $2 WHERE i.id = $1 FOR UPDATE OF i",
        )
        .bind(id.as_uuid())
        .bind(fence.job.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((server, ram_mb, disk_mb, vcpus, params)) = row else {
            return Err(Error::not_found("instance", id));
        };
        let old: PackageId = serde_json::from_value(params["from_package"].clone())
            .map_err(|e| Error::Internal(format!("resize job without its old package: {e}")))?;
        let (memory_mb, disk_mb_p, vcpus_p, brand): (i64, i64, i32, String) =
            sqlx::query_as("SELECT memory_mb, disk_mb, vcpus, brand FROM packages WHERE id = $1")
                .bind(old.as_uuid())
                .fetch_one(&mut *tx)
                .await?;
        let to = Size {
            ram_mb: memory_mb,
            disk_mb: disk_mb_p,
            vcpus: match nereid_api::Brand::parse(&brand) {
                Some(b) if b.holds_vcpus() => vcpus_p,
                _ => 0,
            },
        };
        let from = Size {
            ram_mb,
            disk_mb,
            vcpus,
        };
        if from != to {
            if let Some(server) = server {
                move_hold(&mut tx, server, from, to, None).await?;
            }
            set_size(&mut tx, id, old, to).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn set_size(
    tx: &mut Transaction<'_, Postgres>,
    id: InstanceId,
    package: PackageId,
    s: Size,
) -> Result<()> {
    sqlx::query(
        "UPDATE instances SET package_id = $2, ram_mb = $3, disk_mb = $4, vcpus = $5,
                generation = generation + 1, updated_at = now()
          WHERE id = $1",
    )
    .bind(id.as_uuid())
    .bind(package.as_uuid())
    .bind(s.ram_mb)
    .bind(s.disk_mb)
    .bind(s.vcpus)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
