//! The `container` driver: an OCI bundle in the state dir whose root is the
//! instance's dataset, a network namespace `nrd-<uuid>` plumbed by `net`, run
//! by runc under the agent's own `--root`, unprivileged: in a user namespace
//! mapped onto the node's shared container id range (the image was unpacked
//! shifted into it) or, for an isolated instance, onto a range of its own
//! (its clone is shifted into it once), under a seccomp profile.
//!
//! Every step checks before acting, so a retry after a crash at any step
//! completes the instance instead of making a second one. It must never touch
//! the instance's dataset beyond reading it as the root filesystem.

mod exits;
pub mod oci;
pub mod runc;
pub mod seccomp;
pub mod userns;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use runc::{Runc, Status};

use super::store::Store;
use super::undo::Undo;
use super::{Console, Events, Instance, InstanceError, Result, Runtime, State};
use crate::idmap::IdRange;
use crate::metadata::Metadata;
use crate::net;
use crate::spec::InstanceSpec;

#[derive(Clone)]
pub struct Containers {
    store: Store,
    ids: IdRange,
    /// Serialises handing out isolated id ranges.
    alloc: Arc<tokio::sync::Mutex<()>>,
    bundles: PathBuf,
    runc: Runc,
    events: Events,
    memsw: bool,
    /// nic tag -> interface on this node (from the setup).
    nic_tags: Arc<BTreeMap<String, String>>,
    metadata: Metadata,
    /// The running containers whose exit a task waits for: id -> init pid.
    following: Arc<std::sync::Mutex<HashMap<String, u32>>>,
}

/// How often the watcher compares what it follows with `runc list`, in case
/// a start was not seen (the exits themselves are notified, not polled).
const RESYNC: Duration = Duration::from_secs(60);

impl Containers {
    pub fn new(
        store: Store,
        state_dir: &Path,
        nic_tags: Arc<BTreeMap<String, String>>,
        events: Events,
        ids: IdRange,
        metadata: Metadata,
    ) -> Containers {
        Containers {
            store,
            ids,
            alloc: Default::default(),
            bundles: state_dir.join("bundles"),
            runc: Runc::new(&state_dir.join("runc")),
            events,
            memsw: Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
            nic_tags,
            metadata,
            following: Default::default(),
        }
    }

    /// Waits, in a task, for this container's init to end, then reports the
    /// instance stopped (unless it runs again by then: a reboot). Once per
    /// pid.
    fn follow(&self, id: &str, pid: u32) {
        if pid == 0 {
            return;
        }
        {
            let mut f = self.following.lock().expect("following");
            if f.get(id) == Some(&pid) {
                return;
            }
            f.insert(id.to_string(), pid);
        }
        let (this, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            exits::wait(pid).await;
            {
                let mut f = this.following.lock().expect("following");
                if f.get(&id) != Some(&pid) {
                    return;
                }
                f.remove(&id);
            }
            if let Ok(Some((Status::Running, again))) = this.runc.state(&id).await {
                this.follow(&id, again);
                return;
            }
            if let Ok(Some(spec)) = this.store.recorded(&id).await {
                this.events.emit(&Instance::new(spec, State::Stopped, 0));
            }
        });
    }

    pub fn runc(&self) -> &Runc {
        &self.runc
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.bundles.join(id)
    }

    /// The first host id of the instance's range.
    fn id_base(&self, spec: &InstanceSpec) -> u32 {
        if spec.isolated_ids && spec.id_base != 0 {
            spec.id_base
        } else {
            self.ids.base
        }
    }

    /// Gives an isolated instance a range of its own (the lowest free slot),
    /// recorded in its spec; its files move from the shared range into it.
    /// Idempotent: a retry finds the range recorded and finishes the move.
    async fn isolate(&self, spec: &InstanceSpec) -> Result<InstanceSpec> {
        let mut spec = spec.clone();
        if spec.id_base == 0 {
            let _held = self.alloc.lock().await;
            let used: std::collections::HashSet<u32> = self
                .store
                .list()
                .await?
                .iter()
                .filter(|s| s.isolated_ids)
                .map(|s| s.id_base)
                .collect();
            let base = (1..self.ids.slots())
                .map(|k| self.ids.slot_base(k))
                .find(|b| !used.contains(b))
                .ok_or_else(|| {
                    InstanceError::host(
                        &spec.id,
                        format!(
                            "every isolated id range of {} is taken ({} instances)",
                            self.ids,
                            self.ids.slots() - 1
                        ),
                    )
                })?;
            spec.id_base = base;
            self.store.record(&spec).await?;
        }
        let root = self.store.mountpoint(&spec.id).await?;
        let (from, to) = (self.ids.base, spec.id_base);
        tokio::task::spawn_blocking(move || crate::idmap::shift_tree(&root, from, to))
            .await
            .map_err(|e| InstanceError::host(&spec.id, format!("shift task: {e}")))?
            .map_err(|e| InstanceError::host(&spec.id, format!("shifting its files: {e}")))?;
        Ok(spec)
    }

    /// Makes the instance's user and network namespaces exist with its NICs
    /// plumbed (after a crash or a host reboot too).
    async fn ensure_netns(&self, spec: &InstanceSpec, undo: &mut Undo) -> Result<()> {
        let id = &spec.id;
        let ns = net::netns_name(id);
        let host = |e: net::NetError| InstanceError::host(id, e.to_string());
        let (user, netns) = (userns::userns_path(id), net::netns_path(&ns));
        let created = !(userns::is_namespace(&user) && userns::is_namespace(&netns));
        if created {
            let base = self.id_base(spec);
            let (u, n) = (user.clone(), netns.clone());
            tokio::task::spawn_blocking(move || userns::create(&u, &n, base))
                .await
                .map_err(|e| InstanceError::host(id, format!("namespace task: {e}")))?
                .map_err(|e| InstanceError::host(id, format!("making its namespaces: {e}")))?;
            let (i, count) = (id.clone(), spec.nics.len());
            undo.push(
                "remove the user and network namespaces",
                move || async move {
                    userns::remove(&user, &netns);
                    net::unplumb(&i, count).await;
                },
            );
            crate::fault::point("ensure_instance:after_netns");
        }
        let missing = (0..spec.nics.len()).any(|i| !net::link_exists(&net::host_veth_name(id, i)));
        if created || missing {
            net::plumb(id, &ns, &spec.nics, &self.nic_tags)
                .await
                .map_err(host)?;
        }
        Ok(())
    }

    async fn write_bundle(&self, spec: &InstanceSpec) -> Result<()> {
        let rootfs = self.store.mountpoint(&spec.id).await?;
        let dir = self.bundle(&spec.id);
        let host = |what: String| InstanceError::host(&spec.id, what);
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
        let mut config = oci::config(
            spec,
            &rootfs.display().to_string(),
            &net::netns_path(&net::netns_name(&spec.id))
                .display()
                .to_string(),
            &userns::userns_path(&spec.id).display().to_string(),
            self.id_base(spec),
            self.memsw,
            resolv.as_deref(),
        );
        oci::bind_read_only(
            &mut config,
            &self.metadata.socket_dir(&spec.id).display().to_string(),
            crate::metadata::GUEST_DIR,
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
    async fn run(&self, spec: &InstanceSpec, undo: &mut Undo, fresh: bool) -> Result<()> {
        let status = if fresh {
            None
        } else {
            self.runc.status(&spec.id).await?
        };
        match status {
            // Running already: the spec's limits (newer after a resize)
            // take effect in place.
            Some(Status::Running) => {
                self.runc
                    .update(&spec.id, &oci::update_flags(spec, self.memsw))
                    .await?;
                return Ok(());
            }
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
        self.follow(&spec.id, read_pid(&dir));
        let (runc, id) = (self.runc.clone(), spec.id.clone());
        undo.push("delete the runc container", move || async move {
            let _ = runc.delete(&id).await;
        });
        Ok(())
    }

    /// The state of an instance this call just made, without asking runc.
    fn fresh_status(&self, spec: InstanceSpec, started: bool) -> Instance {
        let pid = read_pid(&self.bundle(&spec.id));
        let state = if started {
            State::Running
        } else {
            State::Stopped
        };
        Instance::new(spec, state, pid)
    }

    fn status_from(spec: InstanceSpec, states: &BTreeMap<String, (Status, u32)>) -> Instance {
        match states.get(&spec.id) {
            Some((Status::Running, pid)) => Instance::new(spec, State::Running, *pid),
            _ => Instance::new(spec, State::Stopped, 0),
        }
    }

    async fn stop_now(&self, id: &str, timeout: Duration) -> Result<()> {
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
        Err(InstanceError::host(id, "it survived SIGKILL"))
    }

    async fn wait_stopped(&self, id: &str, timeout: Duration) -> Result<bool> {
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
}

#[tonic::async_trait]
impl Runtime for Containers {
    async fn ensure(
        &self,
        spec: &InstanceSpec,
        fresh: bool,
        start: bool,
        undo: &mut Undo,
    ) -> Result<Instance> {
        let isolated;
        let spec = if spec.isolated_ids {
            isolated = self.isolate(spec).await?;
            &isolated
        } else {
            spec
        };
        self.ensure_netns(spec, undo).await?;
        self.write_bundle(spec).await?;
        crate::fault::point("ensure_instance:after_bundle");
        if start {
            self.run(spec, undo, fresh).await?;
            crate::fault::point("ensure_instance:after_run");
        }
        if fresh {
            Ok(self.fresh_status(spec.clone(), start))
        } else {
            self.get(spec.clone()).await
        }
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Instance> {
        let mut undo = Undo::default();
        let result = async {
            self.ensure_netns(spec, &mut undo).await?;
            self.write_bundle(spec).await?;
            self.run(spec, &mut undo, false).await
        }
        .await;
        if let Err(e) = result {
            undo.unwind().await;
            return Err(e);
        }
        undo.commit();
        self.get(spec.clone()).await
    }

    /// SIGTERM, then SIGKILL after `timeout`.
    async fn stop(&self, spec: &InstanceSpec, timeout: Duration) -> Result<Instance> {
        self.stop_now(&spec.id, timeout).await?;
        self.get(spec.clone()).await
    }

    async fn reboot(&self, spec: &InstanceSpec, timeout: Duration) -> Result<Instance> {
        self.stop_now(&spec.id, timeout).await?;
        self.start(spec).await
    }

    /// Container, netns, cgroups, bundle. Being deleted: no grace period.
    async fn delete(&self, id: &str, spec: Option<&InstanceSpec>) -> Result<()> {
        self.stop_now(id, Duration::ZERO).await?;
        self.runc.delete(id).await?;
        userns::remove(
            &userns::userns_path(id),
            &net::netns_path(&net::netns_name(id)),
        );
        // Without a spec, the most NICs an instance can have.
        net::unplumb(id, spec.map(|s| s.nics.len()).unwrap_or(net::MAX_NICS)).await;
        remove_cgroups(id);
        let _ = tokio::fs::remove_dir_all(self.bundle(id)).await;
        Ok(())
    }

    async fn get(&self, spec: InstanceSpec) -> Result<Instance> {
        Ok(match self.runc.state(&spec.id).await? {
            Some((Status::Running, pid)) => Instance::new(spec, State::Running, pid),
            _ => Instance::new(spec, State::Stopped, 0),
        })
    }

    async fn list(&self, specs: Vec<InstanceSpec>) -> Result<Vec<Instance>> {
        let states = self.runc.list().await?;
        Ok(specs
            .into_iter()
            .map(|s| Self::status_from(s, &states))
            .collect())
    }

    /// A container stops on its own by its init ending, which `follow`
    /// hears from the kernel. This follows every running container at
    /// start, then every `RESYNC` compares with `runc list` in case a start
    /// went unseen (the driver's own starts are followed as they happen).
    async fn watch(&self, _store: Store) {
        loop {
            if let Ok(list) = self.runc.list().await {
                for (id, (status, pid)) in list {
                    if status == Status::Running {
                        self.follow(&id, pid);
                    }
                }
            }
            tokio::time::sleep(RESYNC).await;
        }
    }

    /// The container's stdout and stderr.
    async fn console(&self, spec: &InstanceSpec, tail_lines: usize) -> Result<Console> {
        let path = self.bundle(&spec.id).join("console.log");
        let text =
            super::console::read_tail(std::slice::from_ref(&path), tail_lines).map_err(|e| {
                InstanceError::host(&spec.id, format!("reading {}: {e}", path.display()))
            })?;
        Ok(text)
    }
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

/// The init pid runc wrote into the bundle (0 when there is none).
fn read_pid(bundle: &Path) -> u32 {
    std::fs::read_to_string(bundle.join("pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0)
}
