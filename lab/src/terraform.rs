//! Applies the repository's Terraform examples for real from a test, through `terraform/tf`.
//!
//! Each [`Example`] works on its own copy of the example and of `terraform/modules/` in a
//! temporary directory (the example's `../../modules/...` sources keep resolving), so its
//! `.terraform/` and state never collide with another run or with the working tree. Once `apply`
//! has started, dropping the value runs `terraform destroy`, also when the test fails.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

/// Where the machine image keeps a local mirror of the hashicorp/aws provider.
const DEFAULT_PLUGIN_DIR: &str = "/opt/tf-plugins";

/// The repository root (the parent of the `lab` crate).
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// A private copy of one example under `terraform/examples/`, with variables passed to every
/// terraform command as `TF_VAR_*`.
#[derive(Debug)]
pub struct Example {
    // Held for its Drop: removes the copy after destroy has run.
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    vars: Vec<(String, String)>,
    needs_destroy: bool,
}

impl Example {
    /// Copies `terraform/examples/<name>` and `terraform/modules/` into a temporary directory.
    pub fn copy(name: &str) -> anyhow::Result<Self> {
        let root = repo_root();
        let tmp = tempfile::Builder::new().prefix("gatehouse-tf-").tempdir()?;
        copy_tree(&root.join("terraform/modules"), &tmp.path().join("modules"))?;
        let dir = tmp.path().join("examples").join(name);
        copy_tree(&root.join("terraform/examples").join(name), &dir)?;
        Ok(Self { _tmp: tmp, dir, vars: Vec::new(), needs_destroy: false })
    }

    /// Sets an input variable of the example for every later command.
    pub fn var(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.push((name.to_owned(), value.into()));
        self
    }

    /// `terraform init` (from the local provider mirror when there is one).
    pub fn init(&self) -> anyhow::Result<()> {
        self.run(["init", "-input=false"]).map(drop)
    }

    /// `terraform apply`. From here on, dropping `self` destroys what was created, including
    /// the part of a failed apply that did get created.
    pub fn apply(&mut self) -> anyhow::Result<()> {
        self.needs_destroy = true;
        self.run(["apply", "-auto-approve", "-input=false"]).map(drop)
    }

    /// `terraform apply`, handing each line terraform prints to `progress` as it comes (an
    /// apply against the emulator takes about a minute; a newcomer should see it move).
    pub fn apply_with_progress(&mut self, progress: impl Fn(&str)) -> anyhow::Result<()> {
        self.needs_destroy = true;
        let mut child = self
            .command(["apply", "-auto-approve", "-input=false"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running terraform/tf apply")?;
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = e.read_to_string(&mut text);
                text
            })
        });
        let mut last_lines = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            for line in BufReader::new(stdout).lines() {
                let line = line?;
                // Resource progress ("Creating...", "Still creating... [10s elapsed]", "Creation
                // complete") and the summary; the plan body itself is too long to be useful here.
                if line.contains(": Creat") || line.contains(": Still") || line.starts_with("Apply complete") {
                    progress(line.trim());
                }
                last_lines.push(line);
            }
        }
        let status = child.wait()?;
        let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        if !status.success() {
            let tail = last_lines[last_lines.len().saturating_sub(30)..].join("\n");
            bail!("terraform apply failed ({status}):\n--- stdout (tail)\n{tail}\n--- stderr\n{stderr}");
        }
        Ok(())
    }

    /// `terraform output -json <name>`, parsed.
    pub fn output_json(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let stdout = self.run(["output", "-json", name])?;
        serde_json::from_str(&stdout).with_context(|| format!("terraform output {name} is not JSON: {stdout}"))
    }

    /// `terraform destroy`; also run on drop after an apply, unless this succeeded.
    pub fn destroy(&mut self) -> anyhow::Result<()> {
        self.run(["destroy", "-auto-approve", "-input=false"])?;
        self.needs_destroy = false;
        Ok(())
    }

    /// Runs `terraform/tf -chdir=<copy> <args>` and returns its stdout, or an error carrying
    /// both streams.
    fn run<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let shown = args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
        let started = Instant::now();
        let out = self.command(&args).output().with_context(|| format!("running terraform/tf {shown}"))?;
        eprintln!(
            "terraform {shown}: {} in {:.1?}",
            if out.status.success() { "done" } else { "failed" },
            started.elapsed()
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "terraform {shown} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }
}

impl Example {
    /// `terraform/tf -chdir=<copy> <args> -no-color`, with the example's variables.
    fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(repo_root().join("terraform/tf"));
        cmd.arg(format!("-chdir={}", self.dir.display())).args(args).arg("-no-color");
        cmd.env("TF_IN_AUTOMATION", "1");
        if std::env::var_os("GATEHOUSE_TF_PLUGIN_DIR").is_none() && Path::new(DEFAULT_PLUGIN_DIR).is_dir() {
            cmd.env("GATEHOUSE_TF_PLUGIN_DIR", DEFAULT_PLUGIN_DIR);
        }
        for (name, value) in &self.vars {
            cmd.env(format!("TF_VAR_{name}"), value);
        }
        cmd
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if self.needs_destroy
            && let Err(e) = self.destroy()
        {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// Copies a directory of Terraform configuration, leaving out what `init`, `apply` and
/// `terraform test` leave behind.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if name_str.starts_with(".terraform") || name_str.starts_with("terraform.tfstate") {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}
