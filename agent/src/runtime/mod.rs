//! Instance runtimes: one driver per brand behind the `Runtime` trait
//! (`container`: runc; `kvm`: QEMU), and `Instances`, which the gRPC service
//! talks to: it serialises the operations on each instance, records the spec
//! on the instance's dataset (`store`) and hands the brand-specific work to the
//! driver the spec's brand names.
//!
//! Drivers never create or destroy the instance dataset and never take the
//! per-instance lock themselves: `Instances` does both, so every brand gets
//! the same idempotency and crash rules.

pub mod console;
pub mod container;
pub mod kvm;
pub mod store;
pub mod undo;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nereid_api::{Accelerator, Brand};
use tokio::sync::broadcast;

use crate::metadata::{self, Metadata};
use crate::spec::InstanceSpec;
use crate::storage::zfs::ZfsError;
use store::Store;
use undo::Undo;

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
    #[error("brand {0} is not available on this node: {1}")]
    Unsupported(Brand, String),
    #[error("this node cannot see its instances: {0}")]
    PoolUnavailable(String),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error(transparent)]
    Runc(#[from] container::runc::RuncError),
    #[error("instance {id}: {what}")]
    Host { id: String, what: String },
    /// The VMM refused to start the instance as specified (a retry will not help).
    #[error("instance {id}: {what}")]
    Launch { id: String, what: String },
}

impl InstanceError {
    pub fn host(id: &str, what: impl Into<String>) -> InstanceError {
        InstanceError::Host {
            id: id.to_string(),
            what: what.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, InstanceError>;

/// What the node sees of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Stopped,
    /// Stopped by itself in a way that is not a clean shutdown.
    Failed,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub spec: InstanceSpec,
    pub state: State,
    pub pid: u32,
    /// Why it is failed (or stopped by itself), when it is.
    pub reason: Option<String>,
    /// VMs: what runs its CPUs.
    pub accelerator: Option<Accelerator>,
}

impl Instance {
    pub fn new(spec: InstanceSpec, state: State, pid: u32) -> Instance {
        Instance {
            spec,
            state,
            pid,
            reason: None,
            accelerator: None,
        }
    }
}

/// A state change of an instance, as WatchEvents reports it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub state: State,
    pub generation: u64,
    pub reason: Option<String>,
}

/// Where drivers report state changes.
#[derive(Clone)]
pub struct Events(broadcast::Sender<Event>);

impl Events {
    pub fn new() -> Events {
        Events(broadcast::channel(1024).0)
    }

    pub fn emit(&self, i: &Instance) {
        let _ = self.0.send(Event {
            id: i.spec.id.clone(),
            state: i.state,
            generation: i.spec.generation,
            reason: i.reason.clone(),
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

/// The end of an instance's console log.
#[derive(Debug, Clone, Default)]
pub struct Console {
    pub text: String,
    /// Older output was dropped (rotation or the tail).
    pub truncated: bool,
}

/// One brand's way of running instances. The dataset exists (with the spec
/// recorded) before `ensure` is called, and is destroyed after `delete`.
#[tonic::async_trait]
pub trait Runtime: Send + Sync {
    /// Makes the instance exist on the node beyond its dataset (and run, with
    /// `start`). `fresh`: the dataset was created by this call, so nothing
    /// else of the instance can exist yet. Undo steps go on `undo`.
    async fn ensure(
        &self,
        spec: &InstanceSpec,
        fresh: bool,
        start: bool,
        undo: &mut Undo,
    ) -> Result<Instance>;
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance>;
    /// A graceful stop, forced after `timeout`.
    async fn stop(&self, spec: &InstanceSpec, timeout: Duration) -> Result<Instance>;
    async fn reboot(&self, spec: &InstanceSpec, timeout: Duration) -> Result<Instance>;
    /// Removes everything of the instance but its dataset. `spec` is None
    /// when the dataset is already gone (a retried delete): then remove
    /// whatever is left under the id.
    async fn delete(&self, id: &str, spec: Option<&InstanceSpec>) -> Result<()>;
    async fn get(&self, spec: InstanceSpec) -> Result<Instance>;
    /// The state of each of these instances (all of this brand on the node).
    async fn list(&self, specs: Vec<InstanceSpec>) -> Result<Vec<Instance>>;
    /// Reports state changes that happen by themselves (an exit, a crash)
    /// until the process ends.
    async fn watch(&self, store: Store);
    async fn console(&self, spec: &InstanceSpec, tail_lines: usize) -> Result<Console>;
}

/// The instances of a node, whatever their brand.
#[derive(Clone)]
pub struct Instances {
    store: Store,
    metadata: Metadata,
    drivers: Arc<BTreeMap<Brand, Arc<dyn Runtime>>>,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    events: Events,
}

impl Instances {
    pub fn new(
        store: Store,
        metadata: Metadata,
        drivers: BTreeMap<Brand, Arc<dyn Runtime>>,
        events: Events,
    ) -> Instances {
        Instances {
            store,
            metadata,
            drivers: Arc::new(drivers),
            locks: Default::default(),
            events,
        }
    }

    /// Starts each driver's watcher.
    pub fn watch(&self) {
        for d in self.drivers.values() {
            let (d, store) = (d.clone(), self.store.clone());
            tokio::spawn(async move { d.watch(store).await });
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Serves the metadata of every instance on the node (after a restart).
    pub fn serve_metadata(&self, instances: &[Instance]) {
        for i in instances {
            if let Err(e) = self.metadata.install(&i.spec.id, None) {
                tracing::warn!("{e}");
            }
        }
    }

    /// Replaces an instance's metadata when `data` is newer; the generation
    /// in force.
    pub async fn set_metadata(&self, id: &str, data: metadata::Data) -> Result<u64> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        self.recorded(id).await?;
        let metadata_err = |e: metadata::MetadataError| InstanceError::host(id, e.what);
        match self.metadata.set(id, data.clone()).map_err(metadata_err)? {
            Some(g) => Ok(g),
            // On the node but not served (its files were lost): serve it again.
            None => self.metadata.install(id, Some(data)).map_err(metadata_err),
        }
    }

    fn driver(&self, brand: Brand) -> Result<&Arc<dyn Runtime>> {
        self.drivers.get(&brand).ok_or_else(|| {
            InstanceError::Unsupported(brand, "this agent has no driver for it".into())
        })
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("instance locks")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    async fn recorded(&self, id: &str) -> Result<InstanceSpec> {
        self.store
            .recorded(id)
            .await?
            .ok_or_else(|| InstanceError::NotFound(id.into()))
    }

    /// Makes the instance exist (and run, with `start`). Idempotent: a retry
    /// after a crash at any step completes the missing steps; a failure
    /// unwinds what this call made.
    pub async fn ensure(
        &self,
        spec: &InstanceSpec,
        image_snapshot: &str,
        start: bool,
        metadata: Option<metadata::Data>,
    ) -> Result<Instance> {
        spec.check().map_err(|e| InstanceError::Invalid(e.0))?;
        let driver = self.driver(spec.brand)?.clone();
        let lock = self.lock(&spec.id);
        let _held = lock.lock().await;
        let mut undo = Undo::default();
        let result = async {
            let (spec, fresh) = self.store.create(spec, image_snapshot, &mut undo).await?;
            self.metadata
                .install(&spec.id, metadata)
                .map_err(|e| InstanceError::host(&spec.id, e.what))?;
            if fresh {
                let (md, id) = (self.metadata.clone(), spec.id.clone());
                undo.push("remove the metadata service", move || async move {
                    let _ = md.remove(&id);
                });
            }
            driver.ensure(&spec, fresh, start, &mut undo).await
        }
        .await;
        match result {
            Ok(inst) => {
                undo.commit();
                self.events.emit(&inst);
                Ok(inst)
            }
            Err(e) => {
                undo.unwind().await;
                Err(e)
            }
        }
    }

    pub async fn start(&self, id: &str) -> Result<Instance> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let spec = self.recorded(id).await?;
        let inst = self.driver(spec.brand)?.start(&spec).await?;
        self.events.emit(&inst);
        Ok(inst)
    }

    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<Instance> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let spec = self.recorded(id).await?;
        let inst = self.driver(spec.brand)?.stop(&spec, timeout).await?;
        self.events.emit(&inst);
        Ok(inst)
    }

    pub async fn reboot(&self, id: &str, timeout: Duration) -> Result<Instance> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let spec = self.recorded(id).await?;
        let inst = self.driver(spec.brand)?.reboot(&spec, timeout).await?;
        self.events.emit(&inst);
        Ok(inst)
    }

    /// Removes everything of the instance; deleting a missing one is fine.
    pub async fn delete(&self, id: &str) -> Result<()> {
        if !crate::spec::is_uuid(id) {
            return Err(InstanceError::Invalid(format!("id {id:?} is not a UUID")));
        }
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let spec = self.store.recorded(id).await?;
        match &spec {
            Some(s) => self.driver(s.brand)?.delete(id, Some(s)).await?,
            // The dataset is gone (a retry): whatever is left, in any brand.
            None => {
                for d in self.drivers.values() {
                    d.delete(id, None).await?;
                }
            }
        }
        self.store.destroy(id).await?;
        self.metadata
            .remove(id)
            .map_err(|e| InstanceError::host(id, e.what))?;
        // The node's NAT of a fabric network goes with its last instance here.
        if spec
            .as_ref()
            .is_some_and(|s| s.nics.iter().any(|n| n.nat.is_some()))
        {
            let remaining = self.store.list().await?;
            if let Err(e) = crate::net::nat::sweep(remaining.iter().flat_map(|s| &s.nics)).await {
                tracing::warn!(instance = %id, "removing unused fabric NATs: {e}");
            }
        }
        if let Some(spec) = spec {
            self.events.emit(&Instance::new(spec, State::Stopped, 0));
        }
        self.locks.lock().expect("instance locks").remove(id);
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Instance> {
        let spec = self.recorded(id).await?;
        self.driver(spec.brand)?.get(spec).await
    }

    /// Every instance on this node, from ZFS and the runtimes alone.
    pub async fn list(&self) -> Result<Vec<Instance>> {
        let mut by_brand: BTreeMap<Brand, Vec<InstanceSpec>> = BTreeMap::new();
        for spec in self.store.list().await? {
            by_brand.entry(spec.brand).or_default().push(spec);
        }
        let mut out = Vec::new();
        for (brand, specs) in by_brand {
            match self.drivers.get(&brand) {
                Some(d) => out.extend(d.list(specs).await?),
                None => {
                    tracing::warn!(%brand, n = specs.len(), "instances of a brand this agent cannot run");
                    out.extend(specs.into_iter().map(|s| Instance {
                        reason: Some(format!("this agent cannot run brand {brand}")),
                        ..Instance::new(s, State::Failed, 0)
                    }));
                }
            }
        }
        Ok(out)
    }

    fn check_snapshot(id: &str, name: &str) -> Result<()> {
        if !crate::spec::is_uuid(id) {
            return Err(InstanceError::Invalid(format!("id {id:?} is not a UUID")));
        }
        if !nereid_api::valid_snapshot_name(name) {
            return Err(InstanceError::Invalid(format!(
                "snapshot name {name:?}: 1-64 of [A-Za-z0-9_.:-], starting with a letter or digit"
            )));
        }
        Ok(())
    }

    pub async fn create_snapshot(&self, id: &str, name: &str) -> Result<store::Snapshot> {
        Self::check_snapshot(id, name)?;
        let lock = self.lock(id);
        let _held = lock.lock().await;
        self.recorded(id).await?;
        self.store.snapshot(id, name).await
    }

    pub async fn delete_snapshot(&self, id: &str, name: &str) -> Result<()> {
        Self::check_snapshot(id, name)?;
        let lock = self.lock(id);
        let _held = lock.lock().await;
        self.store.destroy_snapshot(id, name).await
    }

    pub async fn snapshots(&self, id: &str) -> Result<Vec<store::Snapshot>> {
        self.recorded(id).await?;
        self.store.snapshots(id).await
    }

    /// Rolls a stopped instance back to a snapshot (newer ones are
    /// destroyed; their names are returned).
    pub async fn rollback_snapshot(&self, id: &str, name: &str) -> Result<Vec<String>> {
        Self::check_snapshot(id, name)?;
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let spec = self.recorded(id).await?;
        let inst = self.driver(spec.brand)?.get(spec).await?;
        if inst.state == State::Running {
            return Err(InstanceError::Conflict {
                id: id.into(),
                message: "it is running: stop it before rolling back".into(),
            });
        }
        self.store.rollback(id, name).await
    }

    /// Takes the transient snapshot an image is made from, under the
    /// instance's lock (so no start, stop or rollback is half done in it);
    /// returns the instance's brand and the snapshot. One export per image
    /// at a time: a snapshot that exists means one runs (a conflict).
    pub async fn export_snapshot(&self, id: &str, image: &str) -> Result<(Brand, String)> {
        for (what, v) in [("id", id), ("image id", image)] {
            if !crate::spec::is_uuid(v) {
                return Err(InstanceError::Invalid(format!(
                    "{what} {v:?} is not a UUID"
                )));
            }
        }
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let spec = self.recorded(id).await?;
        let name = format!("{}{image}", crate::export::SNAPSHOT_PREFIX);
        let snap = format!("{}@{name}", self.store.dataset(id));
        match crate::storage::zfs::snapshot(&snap).await {
            Ok(()) => {}
            Err(crate::storage::zfs::ZfsError::Command {
                source: crate::cmd::CmdError::Failed { ref stderr, .. },
                ..
            }) if stderr.contains("already exists") || stderr.contains("dataset exists") => {
                return Err(InstanceError::Conflict {
                    id: id.into(),
                    message: format!("image {image} is being made from it already"),
                });
            }
            Err(e) => return Err(e.into()),
        }
        Ok((spec.brand, snap))
    }

    pub async fn console(&self, id: &str, tail_lines: usize) -> Result<Console> {
        let spec = self.recorded(id).await?;
        self.driver(spec.brand)?.console(&spec, tail_lines).await
    }
}

/// The last `tail_lines` lines of `text` (all of it when shorter).
pub fn tail(text: &str, tail_lines: usize) -> (String, bool) {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= tail_lines {
        return (text.to_string(), false);
    }
    let mut out = lines[lines.len() - tail_lines..].join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    (out, true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_keeps_the_last_lines_and_says_when_it_cut() {
        assert_eq!(super::tail("a\nb\nc\n", 2), ("b\nc\n".to_string(), true));
        assert_eq!(super::tail("a\nb", 5), ("a\nb".to_string(), false));
        assert_eq!(super::tail("", 5), (String::new(), false));
    }
}
