//! Container instances (brand `container`): a clone of the image's `@final`
//! snapshot at `<pool>/instances/<uuid>` with the package's quota, an OCI
//! bundle in the state dir, a network namespace `nrd-<uuid>`, run by runc.
//!
//! The spec and its generation live on the dataset (`nereid:spec`,
//! `nereid:generation`), so a restarted agent rebuilds its whole view from
//! ZFS and runc alone. Every operation is idempotent and serialised per
//! instance; a failing multi-step operation unwinds what it made.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use super::oci::{self, InstanceSpec};
use super::runc::{Runc, RuncError, Status};
use super::undo::Undo;
use crate::storage::zfs::{self, ZfsError};
use crate::{cmd, net};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("instance {0} does not exist on this node")]
    NotFound(String),
    #[error("invalid spec: {0}")]
    Invalid(String),
    #[error("image {0} is not on this node; EnsureImage it first")]
    ImageMissing(String),
    #[error("instance {id}: {message}")]
    Conflict { id: String, message: String },
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error("instance {id}: {what}")]
    Host { id: String, what: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Stopped,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub spec: InstanceSpec,
    pub state: State,
    pub pid: u32,
}

/// A state change of an instance, as WatchEvents reports it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub state: State,
    pub generation: u64,
}

#[derive(Clone)]
pub struct Containers {
    pool: String,
    bundles: PathBuf,
    runc: Runc,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    events: broadcast::Sender<Event>,
    memsw: bool,
    /// nic tag -> interface on this node (from the setup).
    nic_tags: Arc<std::collections::BTreeMap<String, String>>,
    parent_mountpoint: Arc<tokio::sync::OnceCell<PathBuf>>,
}

const SPEC_PROP: &str = "nereid:spec";
const GEN_PROP: &str = "nereid:generation";

pub fn netns_name(id: &str) -> String {
    format!("nrd-{id}")
}

fn netns_path(id: &str) -> PathBuf {
    Path::new("/run/netns").join(netns_name(id))
}

fn check_spec(spec: &InstanceSpec) -> Result<(), InstanceError> {
    let uuid = |s: &str| s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if !uuid(&spec.id) {
        return Err(InstanceError::Invalid(format!(
            "id {:?} is not a UUID",
            spec.id
        )));
    }
    if !uuid(&spec.image_id) {
        return Err(InstanceError::Invalid(format!(
            "image_id {:?} is not a UUID",
            spec.image_id
        )));
    }
    let h = &spec.hostname;
    if h.is_empty()
        || h.len() > 63
        || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        || h.starts_with('-')
    {
        return Err(InstanceError::Invalid(format!(
            "hostname {h:?} is not a valid host name"
        )));
    }
    if spec.memory_mb < 16 || spec.disk_mb < 1 || spec.pids_limit < 16 {
        return Err(InstanceError::Invalid(
            "memory_mb >= 16, disk_mb >= 1 and pids_limit >= 16 are required".into(),
        ));
    }
    Ok(())
}

impl Containers {
    pub fn new(
        pool: &str,
        state_dir: &Path,
        nic_tags: std::collections::BTreeMap<String, String>,
    ) -> Containers {
        let (events, _) = broadcast::channel(1024);
        Containers {
            pool: pool.to_string(),
            bundles: state_dir.join("bundles"),
            runc: Runc::new(&state_dir.join("runc")),
            locks: Default::default(),
            events,
            memsw: Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
            nic_tags: Arc::new(nic_tags),
            parent_mountpoint: Default::default(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn runc(&self) -> &Runc {
        &self.runc
    }

    pub fn dataset(&self, id: &str) -> String {
        format!("{}/instances/{id}", self.pool)
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.bundles.join(id)
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("instance locks")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn emit(&self, spec: &InstanceSpec, state: State) {
        let _ = self.events.send(Event {
            id: spec.id.clone(),
            state,
            generation: spec.generation,
        });
    }

    /// The spec recorded on the instance's dataset, if the dataset exists.
    async fn recorded(&self, id: &str) -> Result<Option<InstanceSpec>, InstanceError> {
        match zfs::get(&self.dataset(id), &[SPEC_PROP]).await {
            Ok(props) => match props.get(SPEC_PROP) {
                Some(json) => {
                    serde_json::from_str(json)
                        .map(Some)
                        .map_err(|e| InstanceError::Host {
                            id: id.into(),
                            what: format!("its recorded spec is corrupt: {e}"),
                        })
                }
                None => Err(InstanceError::Host {
                    id: id.into(),
                    what: "its dataset has no recorded spec".into(),
                }),
            },
            Err(ZfsError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes the instance exist (and run, with `start`). Idempotent: a retry
    /// after a crash at any step completes the missing steps.
    pub async fn ensure(
        &self,
        spec: &InstanceSpec,
        image_snapshot: &str,
        start: bool,
    ) -> Result<Instance, InstanceError> {
        check_spec(spec)?;
        let lock = self.lock(&spec.id);
        let _held = lock.lock().await;
        let id = spec.id.clone();
        let ds = self.dataset(&id);
        let mut undo = Undo::default();
        let result = async {
            // The fresh path first, with as few host commands as possible: the
            // clone itself says whether the instance exists or the image is missing.
            self.ensure_parent().await?;
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
            let (spec, fresh) = match cloned {
                Ok(()) => {
                    let d = ds.clone();
                    undo.push("destroy the instance dataset", move || async move {
                        let _ = zfs::destroy(&d, true).await;
                    });
                    crate::fault::point("ensure_instance:after_clone");
                    (spec.clone(), true)
                }
                Err(ZfsError::NotFound(_)) if !zfs::exists(&ds).await? => {
                    return Err(InstanceError::ImageMissing(spec.image_id.clone()));
                }
                Err(ZfsError::NotFound(_)) => (self.update_recorded(&id, spec).await?, false),
                Err(ZfsError::Command {
                    source: cmd::CmdError::Failed { ref stderr, .. },
                    ..
                }) if stderr.contains("already exists") => {
                    (self.update_recorded(&id, spec).await?, false)
                }
                Err(e) => return Err(e.into()),
            };
            self.ensure_netns(&spec, &mut undo).await?;
            self.write_bundle(&spec).await?;
            crate::fault::point("ensure_instance:after_bundle");
            if start {
                self.run(&spec, &mut undo, fresh).await?;
                crate::fault::point("ensure_instance:after_run");
            }
            Ok((spec, fresh))
        }
        .await;
        match result {
            Ok((spec, fresh)) => {
                undo.commit();
                let inst = if fresh {
                    self.fresh_status(spec, start)
                } else {
                    self.status_of(spec).await?
                };
                self.emit(&inst.spec, inst.state);
                Ok(inst)
            }
            Err(e) => {
                undo.unwind().await;
                Err(e)
            }
        }
    }

    /// Makes the instance's network namespace exist with its NICs plumbed
    /// (after a crash or a host reboot too).
    async fn ensure_netns(
        &self,
        spec: &InstanceSpec,
        undo: &mut Undo,
    ) -> Result<(), InstanceError> {
        let id = &spec.id;
        let created = !netns_path(id).exists();
        if created {
            ip(id, &["netns", "add", &netns_name(id)]).await?;
            let (n, count) = (id.clone(), spec.nics.len());
            undo.push("delete the network namespace", move || async move {
                let _ = ip(&n, &["netns", "del", &netns_name(&n)]).await;
                net::unplumb(&n, count).await;
            });
            crate::fault::point("ensure_instance:after_netns");
        }
        let missing = (0..spec.nics.len()).any(|i| {
            !Path::new("/sys/class/net")
                .join(net::host_veth_name(id, i))
                .exists()
        });
        if created || missing {
            net::plumb(id, &netns_name(id), &spec.nics, &self.nic_tags)
                .await
                .map_err(|e| InstanceError::Host {
                    id: id.clone(),
                    what: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Makes `<pool>/instances` once per agent process and remembers its mountpoint.
    async fn ensure_parent(&self) -> Result<PathBuf, InstanceError> {
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

    /// The existing instance's spec, updated if `spec` is a newer generation.
    async fn update_recorded(
        &self,
        id: &str,
        spec: &InstanceSpec,
    ) -> Result<InstanceSpec, InstanceError> {
        let ds = self.dataset(id);
        match self.recorded(id).await? {
            None => Err(InstanceError::Host {
                id: id.into(),
                what: "its dataset vanished while being ensured".into(),
            }),
            Some(old) if old.image_id != spec.image_id => Err(InstanceError::Conflict {
                id: id.into(),
                message: format!("it exists with image {}", old.image_id),
            }),
            Some(old) if old.generation >= spec.generation => Ok(old),
            Some(_) => {
                let json = serde_json::to_string(spec).expect("spec serializes");
                zfs::set(&ds, SPEC_PROP, &json).await?;
                zfs::set(&ds, GEN_PROP, &spec.generation.to_string()).await?;
                zfs::set(&ds, "quota", &format!("{}M", spec.disk_mb)).await?;
                Ok(spec.clone())
            }
        }
    }

    /// The state of an instance this call just made, without asking runc.
    fn fresh_status(&self, spec: InstanceSpec, started: bool) -> Instance {
        let pid = std::fs::read_to_string(self.bundle(&spec.id).join("pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
        let state = if started {
            State::Running
        } else {
            State::Stopped
        };
        Instance { spec, state, pid }
    }

    async fn write_bundle(&self, spec: &InstanceSpec) -> Result<(), InstanceError> {
        // Instance datasets inherit their mountpoint from <pool>/instances.
        let rootfs = self.ensure_parent().await?.join(&spec.id);
        let dir = self.bundle(&spec.id);
        let host = |what: String| InstanceError::Host {
            id: spec.id.clone(),
            what,
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| host(format!("creating {}: {e}", dir.display())))?;
        let resolv = match net::resolv_conf(&spec.nics) {
            Some(body) => {
                let path = dir.join("resolv.conf");
                tokio::fs::write(&path, body)
                    .await
                    .map_err(|e| host(format!("writing {}: {e}", path.display())))?;
                Some(path.display().to_string())
            }
            None => None,
        };
        let config = oci::config(
            spec,
            &rootfs.display().to_string(),
            &netns_path(&spec.id).display().to_string(),
            self.memsw,
            resolv.as_deref(),
        );
        let tmp = dir.join("config.json.tmp");
        tokio::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&config).expect("config serializes"),
        )
        .await
        .map_err(|e| host(format!("writing {}: {e}", tmp.display())))?;
        tokio::fs::rename(&tmp, dir.join("config.json"))
            .await
            .map_err(|e| host(format!("writing config.json: {e}")))?;
        Ok(())
    }

    /// Starts the container unless it runs (a stopped one is deleted from runc
    /// first). A `fresh` instance has no runc state to look at.
    async fn run(
        &self,
        spec: &InstanceSpec,
        undo: &mut Undo,
        fresh: bool,
    ) -> Result<(), InstanceError> {
        let status = if fresh {
            None
        } else {
            self.runc.status(&spec.id).await?
        };
        match status {
            Some(Status::Running) => return Ok(()),
            Some(Status::Paused) => {
                return Err(InstanceError::Conflict {
                    id: spec.id.clone(),
                    message: "it is paused".into(),
                });
            }
            Some(_) => self.runc.delete(&spec.id).await?,
            None => {}
        }
        let dir = self.bundle(&spec.id);
        self.runc
            .run(&spec.id, &dir, &dir.join("console.log"))
            .await?;
        let (runc, id) = (self.runc.clone(), spec.id.clone());
        undo.push("delete the runc container", move || async move {
            let _ = runc.delete(&id).await;
        });
        Ok(())
    }

    async fn status_of(&self, spec: InstanceSpec) -> Result<Instance, InstanceError> {
        let (state, pid) = match self.runc.list().await?.get(&spec.id) {
            Some((Status::Running, pid)) => (State::Running, *pid),
            _ => (State::Stopped, 0),
        };
        Ok(Instance { spec, state, pid })
    }

    pub async fn get(&self, id: &str) -> Result<Instance, InstanceError> {
        let spec = self
            .recorded(id)
            .await?
            .ok_or_else(|| InstanceError::NotFound(id.into()))?;
        self.status_of(spec).await
    }

    /// Every instance on this node, from ZFS properties and runc alone.
    pub async fn list(&self) -> Result<Vec<Instance>, InstanceError> {
        let parent = format!("{}/instances", self.pool);
        let props = match zfs::get_recursive(&parent, &[SPEC_PROP]).await {
            Ok(p) => p,
            Err(ZfsError::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let states = self.runc.list().await?;
        let mut out = Vec::new();
        for (ds, p) in props {
            let Some(json) = p.get(SPEC_PROP) else {
                continue;
            };
            let Ok(spec) = serde_json::from_str::<InstanceSpec>(json) else {
                tracing::warn!(dataset = %ds, "skipping an instance dataset with a corrupt spec");
                continue;
            };
            let (state, pid) = match states.get(&spec.id) {
                Some((Status::Running, pid)) => (State::Running, *pid),
                _ => (State::Stopped, 0),
            };
            out.push(Instance { spec, state, pid });
        }
        Ok(out)
    }

    pub async fn start(&self, id: &str) -> Result<Instance, InstanceError> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let spec = self
            .recorded(id)
            .await?
            .ok_or_else(|| InstanceError::NotFound(id.into()))?;
        let mut undo = Undo::default();
        if let Err(e) = self.ensure_netns(&spec, &mut undo).await {
            undo.unwind().await;
            return Err(e);
        }
        self.write_bundle(&spec).await?;
        if let Err(e) = self.run(&spec, &mut undo, false).await {
            undo.unwind().await;
            return Err(e);
        }
        undo.commit();
        let inst = self.status_of(spec).await?;
        self.emit(&inst.spec, inst.state);
        Ok(inst)
    }

    /// SIGTERM, then SIGKILL after `timeout`.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<Instance, InstanceError> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let spec = self
            .recorded(id)
            .await?
            .ok_or_else(|| InstanceError::NotFound(id.into()))?;
        self.stop_locked(id, timeout).await?;
        let inst = self.status_of(spec).await?;
        self.emit(&inst.spec, inst.state);
        Ok(inst)
    }

    async fn stop_locked(&self, id: &str, timeout: Duration) -> Result<(), InstanceError> {
        if self.runc.status(id).await? != Some(Status::Running) {
            return Ok(());
        }
        self.runc.kill(id, "TERM").await?;
        if self.wait_stopped(id, timeout).await? {
            return Ok(());
        }
        tracing::info!(instance = id, "did not stop within {timeout:?}; killing");
        self.runc.kill(id, "KILL").await?;
        if self.wait_stopped(id, Duration::from_secs(10)).await? {
            return Ok(());
        }
        Err(InstanceError::Host {
            id: id.into(),
            what: "it survived SIGKILL".into(),
        })
    }

    async fn wait_stopped(&self, id: &str, timeout: Duration) -> Result<bool, InstanceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.runc.status(id).await? != Some(Status::Running) {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn reboot(&self, id: &str, timeout: Duration) -> Result<Instance, InstanceError> {
        self.stop(id, timeout).await?;
        self.start(id).await
    }

    /// Removes everything of the instance: container, netns, cgroups, bundle,
    /// dataset. Deleting a missing instance is fine.
    pub async fn delete(&self, id: &str) -> Result<(), InstanceError> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let spec = self.recorded(id).await?;
        // Being deleted: no grace period (SIGTERM and SIGKILL at once).
        self.stop_locked(id, Duration::ZERO).await?;
        self.runc.delete(id).await?;
        if netns_path(id).exists() {
            ip(id, &["netns", "del", &netns_name(id)]).await?;
        }
        net::unplumb(id, spec.as_ref().map(|s| s.nics.len()).unwrap_or(0)).await;
        remove_cgroups(id);
        let _ = tokio::fs::remove_dir_all(self.bundle(id)).await;
        zfs::destroy(&self.dataset(id), true).await?;
        if let Some(spec) = spec {
            self.emit(&spec, State::Stopped);
        }
        self.locks.lock().expect("instance locks").remove(id);
        Ok(())
    }

    /// Reports instances whose container changed state by itself (exited, was
    /// killed). Only runc's view can change on its own, so only `runc list`
    /// runs every `every`; the spec (for the event's generation) is read from
    /// ZFS just for an instance whose state changed.
    pub async fn watch_runc(self, every: Duration) {
        let mut last: HashMap<String, State> = HashMap::new();
        loop {
            if let Ok(list) = self.runc.list().await {
                let now: HashMap<String, State> = list
                    .into_iter()
                    .map(|(id, (status, _))| {
                        (
                            id,
                            if status == Status::Running {
                                State::Running
                            } else {
                                State::Stopped
                            },
                        )
                    })
                    .collect();
                for (id, prev) in &last {
                    // A container gone from runc is stopped (or deleted: then it has no spec).
                    let state = now.get(id).copied().unwrap_or(State::Stopped);
                    if state != *prev
                        && let Ok(Some(spec)) = self.recorded(id).await
                    {
                        self.emit(&spec, state);
                    }
                }
                last = now;
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Runs `ip` for an instance; a failure names the instance and the command.
async fn ip(id: &str, args: &[&str]) -> Result<(), InstanceError> {
    cmd::run("ip", args, Duration::from_secs(10))
        .await
        .map(|_| ())
        .map_err(|e| InstanceError::Host {
            id: id.into(),
            what: e.to_string(),
        })
}

/// runc removes the container's own cgroup; remove what is left of ours.
fn remove_cgroups(id: &str) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for c in controllers.flatten() {
        let _ = std::fs::remove_dir(c.path().join("nereid").join(id));
    }
}
