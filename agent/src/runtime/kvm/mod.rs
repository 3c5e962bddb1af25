//! The `kvm` driver: virtual machines run by `qemu-system-x86_64` under KVM
//! when the node's probe says KVM really runs guests, under TCG otherwise.
//!
//! The instance's dataset (a clone of the image) holds the boot files (a
//! kernel and initramfs, or a raw/qcow2 disk grown to the package's size),
//! the NoCloud seed of a disk VM and the serial console log. Each VM runs
//! under its own monitor (`nereid-vmmon`), which outlives the agent, logs the
//! console with rotation and records how QEMU ended; the run dir
//! `<state>/vms/<uuid>` holds QEMU's pid file and QMP socket, so a restarted
//! agent re-adopts every VM from them. NICs are tap devices on the network's
//! bridge (`net`).
//!
//! It must never leave a QEMU it started without a way to find it (pid file
//! and QMP socket in the run dir), and never signal a pid whose command line
//! does not name the instance.

pub mod image;
pub mod qemu;
pub mod qmp;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nereid_api::Accelerator;
use qemu::{Boot, DiskFormat};

use super::store::Store;
use super::undo::Undo;
use super::{Console, Events, Instance, InstanceError, Result, Runtime, State};
use crate::net;
use crate::spec::InstanceSpec;

/// The console log is rotated at this size (so at most twice this on disk).
const CONSOLE_MAX_BYTES: u64 = 1 << 20;
/// Room kept on the instance's dataset beside its disk (console logs, seed).
const DATASET_RESERVE_MB: u64 = 4;
/// How long QEMU has to come up (open its QMP socket, run).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Vms {
    store: Store,
    runs: PathBuf,
    events: Events,
    nic_tags: Arc<BTreeMap<String, String>>,
    vmmon: PathBuf,
    metadata: crate::metadata::Metadata,
}

/// How QEMU ended, as its monitor recorded it.
#[derive(Debug, Clone, PartialEq)]
enum Exit {
    Code(i32),
    Signal(i32),
    Error(String),
}

fn parse_exit(s: &str) -> Option<Exit> {
    let s = s.trim();
    if let Some(c) = s.strip_prefix("code ") {
        return c.parse().ok().map(Exit::Code);
    }
    if let Some(c) = s.strip_prefix("signal ") {
        return c.parse().ok().map(Exit::Signal);
    }
    s.strip_prefix("error ").map(|e| Exit::Error(e.to_string()))
}

/// Where the monitor binary is: beside the agent's own, unless named.
fn vmmon_path() -> PathBuf {
    if let Ok(p) = std::env::var("NEREID_VMMON") {
        return p.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("nereid-vmmon")))
        .unwrap_or_else(|| "nereid-vmmon".into())
}

/// The accelerator VMs on this node run under: KVM when the probe saw a
/// guest run under it, TCG otherwise.
pub async fn accelerator() -> Accelerator {
    let caps = crate::sysinfo::capabilities().await;
    if caps.kvm.is_some_and(|k| k.available) {
        Accelerator::Kvm
    } else {
        Accelerator::Tcg
    }
}

impl Vms {
    pub fn new(
        store: Store,
        state_dir: &Path,
        nic_tags: Arc<BTreeMap<String, String>>,
        events: Events,
        metadata: crate::metadata::Metadata,
    ) -> Vms {
        Vms {
            metadata,
            store,
            runs: state_dir.join("vms"),
            events,
            nic_tags,
            vmmon: vmmon_path(),
        }
    }

    fn run_dir(&self, id: &str) -> PathBuf {
        self.runs.join(id)
    }

    /// QEMU's pid, if it runs (its command line names the instance: a
    /// recycled pid never counts).
    fn live_pid(&self, id: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(qemu::pid_file(&self.run_dir(id)))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let names_it = cmdline.split(|b| *b == 0).any(|arg| arg == id.as_bytes());
        names_it.then_some(pid)
    }

    fn exit_of(&self, id: &str) -> Option<Exit> {
        let s = std::fs::read_to_string(self.run_dir(id).join("exit")).ok()?;
        parse_exit(&s)
    }

    /// The last line QEMU wrote to its stderr (why it would not start).
    fn qemu_said(&self, id: &str) -> String {
        let log = std::fs::read_to_string(self.run_dir(id).join("qemu.log")).unwrap_or_default();
        log.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string()
    }

    fn accel_of(&self, id: &str) -> Option<Accelerator> {
        let s = std::fs::read_to_string(self.run_dir(id).join("accel")).ok()?;
        Accelerator::parse(s.trim())
    }

    /// The instance's state from its run dir alone (no QMP).
    fn status_of(&self, spec: InstanceSpec) -> Instance {
        let id = spec.id.clone();
        let accelerator = self.accel_of(&id);
        if let Some(pid) = self.live_pid(&id) {
            return Instance {
                accelerator,
                ..Instance::new(spec, State::Running, pid)
            };
        }
        let run = self.run_dir(&id);
        let requested = run.join("stop-requested").exists();
        let (state, reason) = match self.exit_of(&id) {
            None if qemu::pid_file(&run).exists() => (
                State::Failed,
                Some("QEMU ended and its monitor recorded no exit status".to_string()),
            ),
            None => (State::Stopped, None),
            Some(_) if requested => (State::Stopped, None),
            Some(Exit::Code(0)) => (
                State::Stopped,
                Some("the guest powered itself off".to_string()),
            ),
            Some(Exit::Code(c)) => (
                State::Failed,
                Some(format!(
                    "QEMU exited with status {c}: {}",
                    self.qemu_said(&id)
                )),
            ),
            Some(Exit::Signal(s)) => (
                State::Failed,
                Some(format!("QEMU was killed by signal {s}")),
            ),
            Some(Exit::Error(e)) => (State::Failed, Some(e)),
        };
        Instance {
            reason,
            accelerator,
            ..Instance::new(spec, state, 0)
        }
    }

    /// Makes the VM's taps exist on their bridges.
    async fn ensure_taps(&self, spec: &InstanceSpec, undo: &mut Undo) -> Result<Vec<String>> {
        let taps: Vec<String> = (0..spec.nics.len())
            .map(|i| net::tap_name(&spec.id, i))
            .collect();
        let existed = taps.iter().all(|t| net::link_exists(t));
        net::plumb_taps(&spec.id, &spec.nics, &self.nic_tags)
            .await
            .map_err(|e| InstanceError::host(&spec.id, e.to_string()))?;
        if !existed {
            let (id, n) = (spec.id.clone(), spec.nics.len());
            undo.push("remove the VM's taps", move || async move {
                net::unplumb_taps(&id, n).await;
            });
        }
        Ok(taps)
    }

    /// The boot files on the instance's dataset.
    async fn boot(&self, spec: &InstanceSpec) -> Result<(PathBuf, Boot)> {
        let root = self.store.mountpoint(&spec.id).await?;
        let boot = qemu::boot_of(&root).ok_or_else(|| {
            InstanceError::Invalid(format!(
                "image {} has neither a disk ({} or {}) nor a kernel (vmlinuz) at its root",
                spec.image_id,
                DiskFormat::Raw.file_name(),
                DiskFormat::Qcow2.file_name()
            ))
        })?;
        Ok((root, boot))
    }

    /// Grows the instance's disk to the package's size; a disk larger than
    /// that is refused (a disk never shrinks).
    async fn size_disk(&self, spec: &InstanceSpec, boot: &Boot) -> Result<()> {
        let Boot::Disk { path, format } = boot else {
            return Ok(());
        };
        let target = spec.disk_mb.saturating_sub(DATASET_RESERVE_MB) << 20;
        let current = image::virtual_size(path, *format)
            .await
            .map_err(|e| InstanceError::host(&spec.id, e))?;
        if current > target {
            return Err(InstanceError::Invalid(format!(
                "the image's disk is {} MiB, more than the {} MiB this package's disk leaves for it",
                current >> 20,
                target >> 20
            )));
        }
        if current < target {
            image::grow(path, *format, target)
                .await
                .map_err(|e| InstanceError::host(&spec.id, e))?;
        }
        Ok(())
    }

    /// Writes the NoCloud seed of a disk VM (`<dataset>/seed`).
    async fn write_seed(&self, spec: &InstanceSpec, root: &Path) -> Result<PathBuf> {
        let dir = root.join("seed");
        let host =
            |e: std::io::Error| InstanceError::host(&spec.id, format!("writing its seed: {e}"));
        tokio::fs::create_dir_all(&dir).await.map_err(host)?;
        let customer = self
            .metadata
            .data(&spec.id)
            .map(|d| d.customer)
            .unwrap_or_default();
        for (name, body) in qemu::nocloud_seed(spec, &customer) {
            tokio::fs::write(dir.join(name), body).await.map_err(host)?;
        }
        Ok(dir)
    }

    /// Starts QEMU under its monitor unless it runs, and waits until QMP
    /// says the VM runs.
    async fn launch(&self, spec: &InstanceSpec, taps: &[String], undo: &mut Undo) -> Result<()> {
        let id = &spec.id;
        if self.live_pid(id).is_some() {
            return Ok(());
        }
        let host = |what: String| InstanceError::host(id, what);
        let (root, boot) = self.boot(spec).await?;
        let seed = match boot {
            Boot::Disk { .. } => Some(self.write_seed(spec, &root).await?),
            Boot::Kernel { .. } => None,
        };
        let run = self.run_dir(id);
        tokio::fs::create_dir_all(&run)
            .await
            .map_err(|e| host(format!("creating {}: {e}", run.display())))?;
        for f in ["exit", "stop-requested", "qmp.sock", "qemu.pid", "qemu.log"] {
            let _ = std::fs::remove_file(run.join(f));
        }
        let accelerator = accelerator().await;
        std::fs::write(run.join("accel"), accelerator.as_str())
            .map_err(|e| host(format!("writing {}: {e}", run.display())))?;
        let args = qemu::args(&qemu::Launch {
            spec,
            accelerator,
            boot: &boot,
            run_dir: &run,
            seed: seed.as_deref(),
            taps,
            metadata_socket: &self.metadata.socket_path(id),
        });
        let console = root.join("console.log");
        let mut cmd = tokio::process::Command::new(&self.vmmon);
        cmd.arg(&console)
            .arg(CONSOLE_MAX_BYTES.to_string())
            .arg(&run)
            .arg("--")
            .arg(qemu::QEMU)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|e| {
            host(format!(
                "cannot start the VM monitor {}: {e}",
                self.vmmon.display()
            ))
        })?;
        // Reaped while this agent lives; re-parented (and reaped) by the
        // system when it does not.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let (me, i) = (self.clone(), id.clone());
        undo.push("stop QEMU", move || async move {
            let _ = me.stop_now(&i, Duration::ZERO).await;
        });
        crate::fault::point("ensure_instance:after_launch");
        self.wait_launched(id).await
    }

    async fn wait_launched(&self, id: &str) -> Result<()> {
        let run = self.run_dir(id);
        let deadline = tokio::time::Instant::now() + LAUNCH_TIMEOUT;
        loop {
            if let Some(exit) = self.exit_of(id) {
                let said = self.qemu_said(id);
                return Err(InstanceError::Launch {
                    id: id.to_string(),
                    what: format!(
                        "QEMU did not start ({}): {said}",
                        match exit {
                            Exit::Code(c) => format!("exit status {c}"),
                            Exit::Signal(s) => format!("signal {s}"),
                            Exit::Error(e) => e,
                        }
                    ),
                });
            }
            if self.live_pid(id).is_some() {
                match qmp::Qmp::connect(&qemu::qmp_socket(&run), Duration::from_secs(2)).await {
                    Ok(q) => match q.status().await {
                        Ok(st) if st.running => return Ok(()),
                        Ok(st) => tracing::debug!(instance = id, "QEMU is {}", st.state),
                        Err(e) => tracing::debug!(instance = id, "QMP: {e}"),
                    },
                    Err(e) => tracing::trace!(instance = id, "QMP not up yet: {e}"),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = self.stop_now(id, Duration::ZERO).await;
                return Err(InstanceError::host(
                    id,
                    format!(
                        "QEMU did not come up within {LAUNCH_TIMEOUT:?}: {}",
                        self.qemu_said(id)
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_gone(&self, id: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.live_pid(id).is_none() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The ACPI power button, then `quit` after `timeout`, then SIGKILL.
    /// Waits until the monitor recorded the exit (it then lets go of the
    /// console log, so the dataset can be destroyed).
    async fn stop_now(&self, id: &str, timeout: Duration) -> Result<()> {
        let Some(pid) = self.live_pid(id) else {
            return Ok(());
        };
        let run = self.run_dir(id);
        let _ = std::fs::write(run.join("stop-requested"), b"");
        let sock = qemu::qmp_socket(&run);
        if !timeout.is_zero() {
            match qmp::Qmp::connect(&sock, Duration::from_secs(5)).await {
                Ok(q) => {
                    if let Err(e) = q.powerdown().await {
                        tracing::info!(instance = id, "system_powerdown: {e}");
                    }
                }
                Err(e) => tracing::info!(instance = id, "cannot ask for a shutdown: {e}"),
            }
            if self.wait_gone(id, timeout).await {
                return self.wait_recorded(id).await;
            }
            tracing::info!(
                instance = id,
                "did not power off within {timeout:?}; quitting"
            );
        }
        if let Ok(q) = qmp::Qmp::connect(&sock, Duration::from_secs(5)).await
            && let Err(e) = q.quit().await
        {
            tracing::info!(instance = id, "quit: {e}");
        }
        if !self.wait_gone(id, Duration::from_secs(5)).await {
            tracing::warn!(instance = id, pid, "QEMU ignored quit; killing it");
            if self.live_pid(id) == Some(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if !self.wait_gone(id, Duration::from_secs(10)).await {
                return Err(InstanceError::host(id, "QEMU survived SIGKILL"));
            }
        }
        self.wait_recorded(id).await
    }

    /// Until the monitor wrote how QEMU ended (a few ms after it did).
    async fn wait_recorded(&self, id: &str) -> Result<()> {
        for _ in 0..100 {
            if self.exit_of(id).is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(instance = id, "the VM monitor recorded no exit; going on");
        Ok(())
    }

    /// Asks QEMU itself about each running VM (at agent start): the VMs are
    /// re-adopted, and one QEMU reports as paused or panicked is logged.
    async fn adopt(&self) {
        let Ok(entries) = std::fs::read_dir(&self.runs) else {
            return;
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = self.live_pid(&id) else {
                continue;
            };
            match qmp::Qmp::connect(&qemu::qmp_socket(&e.path()), Duration::from_secs(2)).await {
                Ok(q) => match q.status().await {
                    Ok(st) => {
                        tracing::info!(instance = %id, pid, qemu = %st.state, "re-adopted a running VM")
                    }
                    Err(err) => {
                        tracing::warn!(instance = %id, pid, "re-adopted a VM whose QMP fails: {err}")
                    }
                },
                Err(err) => {
                    tracing::warn!(instance = %id, pid, "re-adopted a VM without QMP: {err}")
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Runtime for Vms {
    async fn ensure(
        &self,
        spec: &InstanceSpec,
        fresh: bool,
        start: bool,
        undo: &mut Undo,
    ) -> Result<Instance> {
        // A fresh disk, and a stopped VM's after a resize (QEMU takes the
        // size at its next start).
        if fresh || self.live_pid(&spec.id).is_none() {
            let (_, boot) = self.boot(spec).await?;
            self.size_disk(spec, &boot).await?;
        }
        let taps = self.ensure_taps(spec, undo).await?;
        if start {
            self.launch(spec, &taps, undo).await?;
        }
        Ok(self.status_of(spec.clone()))
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Instance> {
        let mut undo = Undo::default();
        let result = async {
            let taps = self.ensure_taps(spec, &mut undo).await?;
            self.launch(spec, &taps, &mut undo).await
        }
        .await;
        if let Err(e) = result {
            undo.unwind().await;
            return Err(e);
        }
        undo.commit();
        Ok(self.status_of(spec.clone()))
    }

    async fn stop(&self, spec: &InstanceSpec, timeout: Duration) -> Result<Instance> {
        self.stop_now(&spec.id, timeout).await?;
        Ok(self.status_of(spec.clone()))
    }

    /// `system_reset` of a running VM; a stopped one is started.
    async fn reboot(&self, spec: &InstanceSpec, _timeout: Duration) -> Result<Instance> {
        if self.live_pid(&spec.id).is_none() {
            return self.start(spec).await;
        }
        let q = qmp::Qmp::connect(
            &qemu::qmp_socket(&self.run_dir(&spec.id)),
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| InstanceError::host(&spec.id, e.to_string()))?;
        q.reset()
            .await
            .map_err(|e| InstanceError::host(&spec.id, e.to_string()))?;
        Ok(self.status_of(spec.clone()))
    }

    /// QEMU (no grace period), taps, run dir.
    async fn delete(&self, id: &str, spec: Option<&InstanceSpec>) -> Result<()> {
        self.stop_now(id, Duration::ZERO).await?;
        net::unplumb_taps(id, spec.map(|s| s.nics.len()).unwrap_or(net::MAX_NICS)).await;
        match tokio::fs::remove_dir_all(self.run_dir(id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(InstanceError::host(
                id,
                format!("removing its run dir: {e}"),
            )),
            _ => Ok(()),
        }
    }

    async fn get(&self, spec: InstanceSpec) -> Result<Instance> {
        Ok(self.status_of(spec))
    }

    async fn list(&self, specs: Vec<InstanceSpec>) -> Result<Vec<Instance>> {
        Ok(specs.into_iter().map(|s| self.status_of(s)).collect())
    }

    /// Re-adopts the running VMs, then reports every VM whose QEMU ended
    /// (or started) since the last look, once a second.
    async fn watch(&self, store: Store) {
        self.adopt().await;
        let mut last: HashMap<String, State> = HashMap::new();
        loop {
            let mut now = HashMap::new();
            if let Ok(entries) = std::fs::read_dir(&self.runs) {
                for e in entries.flatten() {
                    let id = e.file_name().to_string_lossy().into_owned();
                    let running = self.live_pid(&id).is_some();
                    let prev = last.get(&id).copied();
                    let st = if running {
                        State::Running
                    } else {
                        State::Stopped
                    };
                    now.insert(id.clone(), st);
                    if prev.is_some_and(|p| (p == State::Running) != running)
                        && let Ok(Some(spec)) = store.recorded(&id).await
                    {
                        self.events.emit(&self.status_of(spec));
                    }
                }
            }
            last = now;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The serial console.
    async fn console(&self, spec: &InstanceSpec, tail_lines: usize) -> Result<Console> {
        let log = self.store.mountpoint(&spec.id).await?.join("console.log");
        super::console::read_tail(&[super::console::rotated(&log), log.clone()], tail_lines)
            .map_err(|e| InstanceError::host(&spec.id, format!("reading {}: {e}", log.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitors_exit_record_is_parsed() {
        assert_eq!(parse_exit("code 0\n"), Some(Exit::Code(0)));
        assert_eq!(parse_exit("signal 9"), Some(Exit::Signal(9)));
        assert_eq!(
            parse_exit("error cannot start qemu: No such file"),
            Some(Exit::Error("cannot start qemu: No such file".into()))
        );
        assert_eq!(parse_exit("garbage"), None);
    }
}
