//! Running the RabbitMQ scripts: every call has a deadline (a node that hangs must not hang
//! the caller), enforced by coreutils' `timeout`, and as root through `sudo -n` when needed
//! (the main node's `rabbitmqctl` reads a cookie only root and `rabbitmq` can read). The
//! chaos tool runs its `rabbitmqctl` through [`bounded`] too.

use std::{
    ffi::OsStr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Error, Result};

/// `timeout SECS PROGRAM`, through `sudo -n` when this process is not root.
pub fn bounded(program: impl AsRef<OsStr>, deadline: Duration, as_root: bool) -> Command {
    let mut cmd = if as_root && !is_root() {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", "timeout"]);
        sudo
    } else {
        Command::new("timeout")
    };
    cmd.arg(deadline.as_secs().max(1).to_string())
        .arg(program)
        .stdin(Stdio::null());
    cmd
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt as _;
        m.uid() == 0
    })
}

/// Runs `cmd`: its standard output when it succeeded, else an error with what it printed.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| Error::Failed(format!("cannot run {cmd:?}: {e}")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Err(Error::Failed(format!(
        "{} exited with {}: {}",
        describe(cmd),
        out.status,
        said.trim()
    )))
}

/// The command without its environment, for a message.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Polls `done` every half second until it holds or `within` has passed: whether it held.
pub fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `kill -SIGNAL PID`: whether the signal was sent.
pub fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the process `pid` still runs (a zombie, exited but not yet reaped, does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `PID (COMM) STATE ...`: COMM may hold spaces, so the state follows the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}
