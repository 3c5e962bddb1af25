//! `nereid-vmmon`: the monitor of one VM, in the role conmon plays for
//! podman. The agent starts it; it starts QEMU and outlives the agent with it:
//!
//! - it leaves the agent's session, so whatever ends the agent leaves the VM;
//! - QEMU's stdout (the serial console) goes to a bounded, rotated log;
//! - QEMU's stderr goes to `qemu.log` (what QEMU says when it cannot start);
//! - when QEMU ends, it writes how (`exit`: `code N` or `signal N`) for the
//!   agent to report, then exits itself.
//!
//! Usage: nereid-vmmon CONSOLE_LOG MAX_BYTES RUN_DIR -- qemu-system-x86_64 ARGS...
//!
//! Small on purpose (std only, no async runtime): one per running VM.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nereid_agent::runtime::console::Rotating;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(sep) = args.iter().position(|a| a == "--") else {
        usage();
    };
    if sep != 4 || args.len() < 6 {
        usage();
    }
    let console = PathBuf::from(&args[1]);
    let Ok(max_bytes) = args[2].parse::<u64>() else {
        usage();
    };
    let run_dir = PathBuf::from(&args[3]);
    // A session of its own: the agent's end (or its terminal's) is not ours.
    let _ = nix::unistd::setsid();
    let exit_file = run_dir.join("exit");
    let record = |how: String| {
        let tmp = run_dir.join("exit.tmp");
        if std::fs::write(&tmp, format!("{how}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, &exit_file);
        }
    };
    let stderr = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("qemu.log"))
    {
        Ok(f) => f,
        Err(e) => {
            record(format!("error cannot open qemu.log: {e}"));
            std::process::exit(1);
        }
    };
    let mut child = match Command::new(&args[5])
        .args(&args[6..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            record(format!("error cannot start {}: {e}", args[5]));
            std::process::exit(1);
        }
    };
    let mut log = Rotating::open(&console, max_bytes).ok();
    if let Some(mut out) = child.stdout.take() {
        let mut buf = [0u8; 8192];
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    // A full disk loses console output, never the VM.
                    if let Some(l) = log.as_mut()
                        && l.write(&buf[..n]).is_err()
                    {
                        log = None;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let how = match child.wait() {
        Ok(st) => match (st.code(), st.signal()) {
            (Some(c), _) => format!("code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => "error unknown exit status".to_string(),
        },
        Err(e) => format!("error waiting for QEMU: {e}"),
    };
    record(how);
}

fn usage() -> ! {
    eprintln!("usage: nereid-vmmon CONSOLE_LOG MAX_BYTES RUN_DIR -- QEMU ARGS...");
    std::process::exit(2);
}
