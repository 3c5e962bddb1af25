//! A typed wrapper over the `runc` command, with its state under the agent's
//! own `--root`. Parsing of `runc list`/`state` output is separate and tested.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::cmd::{self, CmdError};

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("runc {op} of container {id} failed")]
    Command {
        op: &'static str,
        id: String,
        #[source]
        source: CmdError,
    },
    #[error("runc {op} of container {id} failed: {message}")]
    Other {
        op: &'static str,
        id: String,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "created" => Some(Status::Created),
            "running" => Some(Status::Running),
            "paused" => Some(Status::Paused),
            "stopped" => Some(Status::Stopped),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Runc {
    root: PathBuf,
}

const T: Duration = Duration::from_secs(30);

impl Runc {
    pub fn new(root: &Path) -> Runc {
        Runc {
            root: root.to_path_buf(),
        }
    }

    fn root_arg(&self) -> String {
        self.root.display().to_string()
    }

    /// Creates and starts a container detached; its stdio goes to `log`.
    pub async fn run(&self, id: &str, bundle: &Path, log: &Path) -> Result<(), RuncError> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| RuncError::Other {
                op: "run",
                id: id.into(),
                message: format!("opening {}: {e}", log.display()),
            })?;
        let err = out.try_clone().map_err(|e| RuncError::Other {
            op: "run",
            id: id.into(),
            message: e.to_string(),
        })?;
        let pid_file = bundle.join("pid");
        let child = tokio::process::Command::new("runc")
            .arg("--root")
            .arg(&self.root)
            .args(["run", "-d", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .status();
        let started = std::time::Instant::now();
        let st = tokio::time::timeout(T, child).await;
        crate::metrics::command_done(
            "runc",
            &["run"],
            started.elapsed(),
            matches!(st, Ok(Ok(s)) if s.success()),
        );
        let st = st
            .map_err(|_| RuncError::Other {
                op: "run",
                id: id.into(),
                message: "timed out".into(),
            })?
            .map_err(|e| RuncError::Other {
                op: "run",
                id: id.into(),
                message: format!("cannot start runc: {e}"),
            })?;
        if !st.success() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(3).collect();
            return Err(RuncError::Other {
                op: "run",
                id: id.into(),
                message: format!(
                    "{st}: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
            });
        }
        Ok(())
    }

    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), RuncError> {
        match cmd::run("runc", &["--root", &self.root_arg(), "kill", id, signal], T).await {
            Ok(_) => Ok(()),
            // Already gone or not running: nothing to signal.
            Err(CmdError::Failed { stderr, .. })
                if stderr.contains("not running") || stderr.contains("does not exist") =>
            {
                Ok(())
            }
            Err(source) => Err(RuncError::Command {
                op: "kill",
                id: id.into(),
                source,
            }),
        }
    }

    /// Changes a running container's resource limits in place
    /// (`runc update` with these flags).
    pub async fn update(&self, id: &str, flags: &[String]) -> Result<(), RuncError> {
        let root = self.root_arg();
        let mut args: Vec<&str> = vec!["--root", &root, "update"];
        args.extend(flags.iter().map(String::as_str));
        args.push(id);
        cmd::run("runc", &args, T)
            .await
            .map(|_| ())
            .map_err(|source| RuncError::Command {
                op: "update",
                id: id.into(),
                source,
            })
    }

    /// Removes a container's runc state; a missing one is fine.
    pub async fn delete(&self, id: &str) -> Result<(), RuncError> {
        match cmd::run("runc", &["--root", &self.root_arg(), "delete", "-f", id], T).await {
            Ok(_) => Ok(()),
            Err(CmdError::Failed { stderr, .. }) if stderr.contains("does not exist") => Ok(()),
            Err(source) => Err(RuncError::Command {
                op: "delete",
                id: id.into(),
                source,
            }),
        }
    }

    /// Every container runc knows, by id.
    pub async fn list(&self) -> Result<BTreeMap<String, (Status, u32)>, RuncError> {
        let out = cmd::run(
            "runc",
            &["--root", &self.root_arg(), "list", "-f", "json"],
            T,
        )
        .await
        .map_err(|source| RuncError::Command {
            op: "list",
            id: "*".into(),
            source,
        })?;
        Ok(parse_list(&out))
    }

    /// One container's status and init pid (`runc state`: it reads that
    /// container alone, not every one); None when runc does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<(Status, u32)>, RuncError> {
        match cmd::run("runc", &["--root", &self.root_arg(), "state", id], T).await {
            Ok(out) => Ok(parse_state(&out)),
            Err(CmdError::Failed { ref stderr, .. }) if stderr.contains("does not exist") => {
                Ok(None)
            }
            Err(source) => Err(RuncError::Command {
                op: "state",
                id: id.into(),
                source,
            }),
        }
    }

    pub async fn status(&self, id: &str) -> Result<Option<Status>, RuncError> {
        Ok(self.state(id).await?.map(|(s, _)| s))
    }
}

/// Parses `runc state <id>` (one container's object).
pub fn parse_state(out: &str) -> Option<(Status, u32)> {
    let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    let status = v["status"].as_str().and_then(Status::parse)?;
    Some((status, v["pid"].as_u64().unwrap_or(0) as u32))
}

/// Parses `runc list -f json` (which prints `null` when there are none).
pub fn parse_list(out: &str) -> BTreeMap<String, (Status, u32)> {
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null);
    let mut m = BTreeMap::new();
    for c in v.as_array().into_iter().flatten() {
        let (Some(id), Some(status)) = (
            c["id"].as_str(),
            c["status"].as_str().and_then(Status::parse),
        ) else {
            continue;
        };
        m.insert(
            id.to_string(),
            (status, c["pid"].as_u64().unwrap_or(0) as u32),
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_list_output_is_parsed_and_null_is_empty() {
        assert!(parse_list("null\n").is_empty());
        let out = r#"[{"ociVersion":"1.0.2","id":"a","pid":42,"status":"running","bundle":"/b"},
                      {"id":"b","pid":0,"status":"stopped"},{"id":"c","status":"weird"}]"#;
        let m = parse_list(out);
        assert_eq!(m["a"], (Status::Running, 42));
        assert_eq!(m["b"].0, Status::Stopped);
        assert!(!m.contains_key("c"));
    }

    #[test]
    fn runc_state_output_is_parsed() {
        let out = r#"{"ociVersion":"1.0.2","id":"a","pid":42,"status":"running","bundle":"/b"}"#;
        assert_eq!(parse_state(out), Some((Status::Running, 42)));
        assert_eq!(parse_state(r#"{"id":"a","status":"weird"}"#), None);
        assert_eq!(parse_state("not json"), None);
    }
}
