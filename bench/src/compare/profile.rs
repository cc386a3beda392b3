//! `perf record` of a system under test while a scenario runs (`compare --perf-dir`): how the
//! report's "what bounds it" findings are reproduced.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

#[derive(Debug)]
pub(crate) struct Profile(Child);

/// Samples `pid` at 499 Hz with DWARF call graphs for most of a run of `seconds` (the warm-up
/// comes first, so it starts the sampling a second late and stops a second early).
pub(crate) fn start(pid: u32, output: &Path, seconds: f64) -> anyhow::Result<Profile> {
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let window = (seconds - 1.0).max(1.0);
    let child = Command::new("perf")
        .args([
            "record",
            "-F",
            "499",
            "--call-graph",
            "dwarf,16384",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(output)
        .args(["--", "sleep", &format!("{window:.1}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf (apt-get install linux-perf)")?;
    Ok(Profile(child))
}

impl Profile {
    pub(crate) fn finish(mut self) -> anyhow::Result<()> {
        let status = self.0.wait().context("waiting for perf")?;
        if !status.success() {
            bail!("perf record failed ({status})");
        }
        Ok(())
    }
}
