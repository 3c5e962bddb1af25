//! Instance datasets and the specs recorded on them: `<pool>/instances/<uuid>`
//! is a clone of the image's `@final` snapshot made with `nereid:spec` and
//! `nereid:generation` set in the same `zfs clone`, so the dataset never
//! exists without its spec, and a restarted agent rebuilds its view from ZFS.
//!
//! Brand-neutral: it must never look inside a dataset's files (drivers do).

use std::path::PathBuf;
use std::sync::Arc;

use super::undo::Undo;
use super::{InstanceError, Result};
use crate::cmd;
use crate::spec::InstanceSpec;
use crate::storage::zfs::{self, ZfsError};

const SPEC_PROP: &str = "nereid:spec";
const GEN_PROP: &str = "nereid:generation";

/// A snapshot of an instance's dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub name: String,
    /// Bytes only it holds.
    pub used_bytes: u64,
    /// Unix seconds.
    pub created: i64,
}

#[derive(Clone)]
pub struct Store {
    pool: String,
    parent_mountpoint: Arc<tokio::sync::OnceCell<PathBuf>>,
}

impl Store {
    pub fn new(pool: &str) -> Store {
        Store {
            pool: pool.to_string(),
            parent_mountpoint: Default::default(),
        }
    }

    pub fn pool(&self) -> &str {
        &self.pool
    }

    pub fn dataset(&self, id: &str) -> String {
        format!("{}/instances/{id}", self.pool)
    }

    /// Makes `<pool>/instances` once per agent process and remembers its mountpoint.
    async fn parent(&self) -> Result<PathBuf> {
        let parent = format!("{}/instances", self.pool);
        let mnt = self
            .parent_mountpoint
            .get_or_try_init(|| async {
                zfs::ensure(&parent, &[("atime", "off")]).await?;
                zfs::mountpoint(&parent).await
            })
            .await?;
        Ok(mnt.clone())
    }

    /// Where the instance's dataset is mounted (instance datasets inherit
    /// their mountpoint from `<pool>/instances`).
    pub async fn mountpoint(&self, id: &str) -> Result<PathBuf> {
        Ok(self.parent().await?.join(id))
    }

    /// The spec recorded on the instance's dataset, if the dataset exists.
    pub async fn recorded(&self, id: &str) -> Result<Option<InstanceSpec>> {
        match zfs::get(&self.dataset(id), &[SPEC_PROP]).await {
            Ok(props) => match props.get(SPEC_PROP) {
                Some(json) => serde_json::from_str(json).map(Some).map_err(|e| {
                    InstanceError::host(id, format!("its recorded spec is corrupt: {e}"))
                }),
                None => Err(InstanceError::host(id, "its dataset has no recorded spec")),
            },
            Err(ZfsError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes the instance's dataset exist with `spec` recorded: a clone of
    /// `image_snapshot` with the package's quota (fresh, with its undo on
    /// `undo`), or the existing one, its spec updated when `spec` is a newer
    /// generation. Returns the spec in force and whether it is fresh.
    pub async fn create(
        &self,
        spec: &InstanceSpec,
        image_snapshot: &str,
        undo: &mut Undo,
    ) -> Result<(InstanceSpec, bool)> {
        // The fresh path first, with as few commands as possible: the clone
        // itself says whether the instance exists or the image is missing.
        self.parent().await?;
        let ds = self.dataset(&spec.id);
        let json = serde_json::to_string(spec).expect("spec serializes");
        let quota = format!("{}M", spec.disk_mb);
        let generation = spec.generation.to_string();
        let cloned = zfs::clone(
            image_snapshot,
            &ds,
            &[
                ("quota", &quota),
                ("readonly", "off"),
                ("atime", "off"),
                (SPEC_PROP, &json),
                (GEN_PROP, &generation),
            ],
        )
        .await;
        match cloned {
            Ok(()) => {
                let d = ds.clone();
                undo.push("destroy the instance dataset", move || async move {
                    let _ = zfs::destroy(&d, true).await;
                });
                crate::fault::point("ensure_instance:after_clone");
                Ok((spec.clone(), true))
            }
            Err(ZfsError::NotFound(_)) if !zfs::exists(&ds).await? => {
                Err(InstanceError::ImageMissing(spec.image_id.clone()))
            }
            Err(ZfsError::NotFound(_)) => Ok((self.update(spec).await?, false)),
            Err(ZfsError::Command {
                source: cmd::CmdError::Failed { ref stderr, .. },
                ..
            }) if stderr.contains("already exists") => Ok((self.update(spec).await?, false)),
            Err(e) => Err(e.into()),
        }
    }

    /// The existing instance's spec, updated if `spec` is a newer generation.
    async fn update(&self, spec: &InstanceSpec) -> Result<InstanceSpec> {
        let id = &spec.id;
        let ds = self.dataset(id);
        match self.recorded(id).await? {
            None => Err(InstanceError::host(
                id,
                "its dataset vanished while being ensured",
            )),
            Some(old) if old.image_id != spec.image_id || old.brand != spec.brand => {
                Err(InstanceError::Conflict {
                    id: id.clone(),
                    message: format!("it exists as a {} of image {}", old.brand, old.image_id),
                })
            }
            Some(old) if old.generation >= spec.generation => Ok(old),
            Some(old) => {
                // What the node recorded itself stays.
                let spec = InstanceSpec {
                    id_base: old.id_base,
                    ..spec.clone()
                };
                self.record(&spec).await?;
                zfs::set(&ds, GEN_PROP, &spec.generation.to_string()).await?;
                zfs::set(&ds, "quota", &format!("{}M", spec.disk_mb)).await?;
                Ok(spec)
            }
        }
    }

    /// Records `spec` on its instance's dataset.
    pub async fn record(&self, spec: &InstanceSpec) -> Result<()> {
        let json = serde_json::to_string(spec).expect("spec serializes");
        Ok(zfs::set(&self.dataset(&spec.id), SPEC_PROP, &json).await?)
    }

    /// Every recorded instance on the pool. A pool it cannot see is an
    /// error, never "no instances": the headnode must not conclude that
    /// every instance of the node is gone. `<pool>/instances` is made with
    /// the first instance and never removed, so its absence on a pool that
    /// had instances is the same kind of blindness (a pool half-imported,
    /// a dataset removed by hand); on a fresh pool the list is empty.
    pub async fn list(&self) -> Result<Vec<InstanceSpec>> {
        let parent = format!("{}/instances", self.pool);
        let props = match zfs::get_recursive(&parent, &[SPEC_PROP]).await {
            Ok(p) => p,
            Err(ZfsError::NotFound(_)) if !zfs::exists(&self.pool).await? => {
                return Err(InstanceError::PoolUnavailable(format!(
                    "zpool {} is not imported or does not exist",
                    self.pool
                )));
            }
            Err(ZfsError::NotFound(_)) if self.parent_mountpoint.get().is_some() => {
                return Err(InstanceError::PoolUnavailable(format!(
                    "{parent} is missing on zpool {}",
                    self.pool
                )));
            }
            Err(ZfsError::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for (ds, p) in props {
            let Some(json) = p.get(SPEC_PROP) else {
                continue;
            };
            match serde_json::from_str::<InstanceSpec>(json) {
                Ok(spec) => out.push(spec),
                Err(_) => {
                    tracing::warn!(dataset = %ds, "skipping an instance dataset with a corrupt spec")
                }
            }
        }
        Ok(out)
    }

    /// Snapshots the instance's dataset; an existing snapshot is kept.
    pub async fn snapshot(&self, id: &str, name: &str) -> Result<Snapshot> {
        let snap = format!("{}@{name}", self.dataset(id));
        match zfs::snapshot(&snap).await {
            // A snapshot just made holds nothing of its own yet.
            Ok(()) => {
                return Ok(Snapshot {
                    name: name.to_string(),
                    used_bytes: 0,
                    created: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or_default(),
                });
            }
            Err(ZfsError::Command {
                source: cmd::CmdError::Failed { ref stderr, .. },
                ..
            }) if stderr.contains("already exists") || stderr.contains("dataset exists") => {}
            Err(ZfsError::NotFound(_)) => return Err(InstanceError::NotFound(id.into())),
            Err(e) => return Err(e.into()),
        }
        // It existed (a retry): as the listing has it.
        self.snapshots(id)
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                InstanceError::host(id, format!("snapshot {name} vanished after it was made"))
            })
    }

    /// The instance's snapshots, oldest first.
    pub async fn snapshots(&self, id: &str) -> Result<Vec<Snapshot>> {
        match zfs::snapshots(&self.dataset(id)).await {
            Ok(list) => Ok(list
                .into_iter()
                // The transient snapshots images are made from are not the user's.
                .filter(|(name, ..)| !name.starts_with(crate::export::SNAPSHOT_PREFIX))
                .map(|(name, used_bytes, created)| Snapshot {
                    name,
                    used_bytes,
                    created,
                })
                .collect()),
            Err(ZfsError::NotFound(_)) => Err(InstanceError::NotFound(id.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Destroys one snapshot; a missing one is fine.
    pub async fn destroy_snapshot(&self, id: &str, name: &str) -> Result<()> {
        Ok(zfs::destroy(&format!("{}@{name}", self.dataset(id)), false).await?)
    }

    /// Rolls the dataset back to `name`, destroying newer snapshots; returns
    /// their names. The instance must not run.
    pub async fn rollback(&self, id: &str, name: &str) -> Result<Vec<String>> {
        let all = self.snapshots(id).await?;
        let Some(pos) = all.iter().position(|s| s.name == name) else {
            return Err(InstanceError::Invalid(format!(
                "instance {id} has no snapshot {name}"
            )));
        };
        zfs::rollback(&format!("{}@{name}", self.dataset(id))).await?;
        Ok(all[pos + 1..].iter().map(|s| s.name.clone()).collect())
    }

    pub async fn destroy(&self, id: &str) -> Result<()> {
        Ok(zfs::destroy(&self.dataset(id), true).await?)
    }
}
