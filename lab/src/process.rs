//! Child processes the lab starts, and only those: each is stopped by its own PID (SIGTERM, a
//! bounded wait, then SIGKILL), and killed when its handle is dropped, so nothing outlives a
//! failed test or an interrupted quickstart.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// A running child whose stdout and stderr go to a log file.
#[derive(Debug)]
pub struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Managed {
    /// Starts `command`, appending its output to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("cannot create log file {}", log.display()))?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self { name: name.to_owned(), child, log: log.to_owned() })
    }

    /// The name given at spawn, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where its output goes.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM (what Kubernetes sends a pod that is being stopped).
    pub fn signal_term(&self) -> anyhow::Result<()> {
        let pid = self.pid().with_context(|| format!("{} has already exited", self.name))?;
        let pid = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
        kill(pid, Signal::SIGTERM).with_context(|| format!("cannot signal {}", self.name))
    }

    /// Waits for it to exit by itself, at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!("{} did not exit within {within:?}", self.name),
        }
    }

    /// Whether it has exited, without waiting.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if self.has_exited() {
            return;
        }
        if self.signal_term().is_ok() && self.wait_exit(grace).await.is_ok() {
            return;
        }
        self.kill().await;
    }

    /// SIGKILL, and waits for it to be gone.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The last `lines` lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The path of a workspace binary (`gatehouse-proxy`, ...) built into the same target folder
/// as the running executable: `target/<profile>/` for binaries, `target/<profile>/deps/` for
/// tests. `GATEHOUSE_BIN_DIR` overrides the search.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("GATEHOUSE_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        dirs.push(d.to_path_buf());
        if d.file_name().is_some_and(|n| n == "deps") {
            dir = d.parent();
        } else {
            break;
        }
    }
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()).with_context(|| {
        format!(
            "{name} is not built next to {} (run `cargo build --workspace --bins` first, or set GATEHOUSE_BIN_DIR)",
            exe.display()
        )
    })
}
