//! A QMP client for one VM over its unix socket, through the `qapi` crate:
//! connect and negotiate, then `query-status`, `system_powerdown`,
//! `system_reset` and `quit`, each bounded by a timeout.
//!
//! QEMU serves one QMP client at a time, so a connection is opened per
//! operation and dropped after it; nothing here keeps one open.

use std::path::Path;
use std::time::Duration;

use qapi::futures::{QapiService, QmpStreamTokio};
use tokio::io::WriteHalf;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {message}")]
    Connect { path: String, message: String },
    #[error("QMP {command} timed out after {timeout:?}")]
    Timeout {
        command: &'static str,
        timeout: Duration,
    },
    #[error("QMP {command} failed: {message}")]
    Command {
        command: &'static str,
        message: String,
    },
}

type Service = QapiService<QmpStreamTokio<WriteHalf<UnixStream>>>;

pub struct Qmp {
    service: Service,
    events: tokio::task::JoinHandle<()>,
}

/// What QEMU says the VM is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub running: bool,
    /// QEMU's run state (`running`, `paused`, `shutdown`, `guest-panicked`, ...).
    pub state: String,
}

const T: Duration = Duration::from_secs(5);

impl Qmp {
    /// Connects and negotiates capabilities, within `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let err = |message: String| QmpError::Connect {
            path: path.display().to_string(),
            message,
        };
        let negotiated = tokio::time::timeout(timeout, async {
            let stream = QmpStreamTokio::open_uds(path).await?;
            stream.negotiate().await
        })
        .await
        .map_err(|_| err(format!("no answer within {timeout:?}")))?
        .map_err(|e| err(e.to_string()))?;
        let (service, events) = negotiated.spawn_tokio();
        Ok(Qmp { service, events })
    }

    async fn run<C>(&self, name: &'static str, command: C) -> Result<C::Ok, QmpError>
    where
        C: qapi::qmp::QmpCommand + Send + 'static,
    {
        match tokio::time::timeout(T, self.service.execute(command)).await {
            Err(_) => Err(QmpError::Timeout {
                command: name,
                timeout: T,
            }),
            Ok(Err(e)) => Err(QmpError::Command {
                command: name,
                message: e.to_string(),
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    pub async fn status(&self) -> Result<Status, QmpError> {
        let st = self.run("query-status", qapi::qmp::query_status {}).await?;
        let state = serde_json::to_value(st.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "unknown".into());
        Ok(Status {
            running: st.running,
            state,
        })
    }

    /// Presses the ACPI power button: the guest shuts down if it listens.
    pub async fn powerdown(&self) -> Result<(), QmpError> {
        self.run("system_powerdown", qapi::qmp::system_powerdown {})
            .await
            .map(|_| ())
    }

    /// A hard reset, as the reset button does.
    pub async fn reset(&self) -> Result<(), QmpError> {
        self.run("system_reset", qapi::qmp::system_reset {})
            .await
            .map(|_| ())
    }

    /// Ends QEMU at once. QEMU may close the socket before it answers: that
    /// counts as done.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.run("quit", qapi::qmp::quit {}).await {
            Ok(_) => Ok(()),
            Err(QmpError::Command { message, .. }) if message.contains("EOF") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.events.abort();
    }
}
