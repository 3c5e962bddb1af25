//! Running host commands: with a timeout, capturing output, and an error that
//! keeps the command line, the exit status and stderr.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("`{cmd}` could not start")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` timed out after {timeout:?}")]
    Timeout { cmd: String, timeout: Duration },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
}

impl CmdError {
    /// True when the program itself is missing from the host.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CmdError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Runs `program args...`, returns stdout; non-zero exit is an error.
pub async fn run(program: &str, args: &[&str], timeout: Duration) -> Result<String, CmdError> {
    run_with_input(program, args, None, timeout).await
}

/// Like [`run`], writing `input` to the program's stdin (e.g. `ip -batch -`).
pub async fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
    timeout: Duration,
) -> Result<String, CmdError> {
    let started = std::time::Instant::now();
    let result = run_inner(program, args, input, timeout).await;
    crate::metrics::command_done(program, args, started.elapsed(), result.is_ok());
    result
}

async fn run_inner(
    program: &str,
    args: &[&str],
    input: Option<&str>,
    timeout: Duration,
) -> Result<String, CmdError> {
    let cmd = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CmdError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        // A program that exits early closes its stdin; its exit status tells why.
        let _ = stdin.write_all(data.as_bytes()).await;
    }
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.map_err(|source| CmdError::Spawn {
            cmd: cmd.clone(),
            source,
        })?,
        Err(_) => return Err(CmdError::Timeout { cmd, timeout }),
    };
    if !out.status.success() {
        return Err(CmdError::Failed {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
