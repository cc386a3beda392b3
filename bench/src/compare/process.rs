//! A system under test as a child process: started pinned to its CPUs, waited for, measured
//! through /proc (CPU time and resident memory of it and its descendants, so Squid's helpers
//! count), and stopped by its own pid when dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[derive(Debug)]
pub(crate) struct Process {
    name: String,
    child: Child,
}

impl Process {
    /// Starts `program args`, under `taskset -c cpus` when `cpus` is set; stdout and stderr go
    /// to `<log_dir>/<name>.log`.
    pub(crate) fn spawn(
        name: &str,
        cpus: Option<&str>,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))
            .with_context(|| format!("creating {name}'s log"))?;
        let mut command = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(program);
                c
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log file")?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `address` accepts TCP, failing early if the process exits.
    pub(crate) async fn wait_listening(
        &mut self,
        address: SocketAddr,
        log_dir: &Path,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().context("waiting")? {
                let log = std::fs::read_to_string(log_dir.join(format!("{}.log", self.name)))
                    .unwrap_or_default();
                bail!(
                    "{} exited ({status}) before listening on {address}:\n{log}",
                    self.name
                );
            }
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{} did not listen on {address} within 30 s", self.name)
    }

    /// CPU seconds (user + system) used so far by the process and its live descendants.
    pub(crate) fn cpu_seconds(&self, ticks_per_second: f64) -> f64 {
        tree(self.pid())
            .iter()
            .filter_map(|pid| stat_fields(*pid))
            .map(|f| (f.utime + f.stime) as f64 / ticks_per_second)
            .sum()
    }

    /// Resident memory in bytes of the process and its live descendants.
    pub(crate) fn rss_bytes(&self) -> u64 {
        tree(self.pid())
            .iter()
            .filter_map(|pid| rss_kib(*pid))
            .sum::<u64>()
            * 1024
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGTERM first so Squid and mitmdump stop their helpers; SIGKILL if that is ignored.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct StatFields {
    ppid: u32,
    utime: u64,
    stime: u64,
}

fn stat_fields(pid: u32) -> Option<StatFields> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15), numbered as in proc(5).
    Some(StatFields {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
    })
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `root` and every live process descending from it.
fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for pid in entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        {
            if let Some(f) = stat_fields(pid) {
                children.entry(f.ppid).or_default().push(pid);
            }
        }
    }
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        if let Some(kids) = children.get(&all[i]) {
            all.extend(kids);
        }
        i += 1;
    }
    all
}

/// Clock ticks per second for /proc CPU times (`getconf CLK_TCK`; 100 on Linux).
pub(crate) fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A free TCP port on loopback (bound, then released).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn reads_its_own_cpu_and_memory() {
        let me = std::process::id();
        assert!(stat_fields(me).is_some());
        assert!(rss_kib(me).unwrap() > 0);
        assert!(tree(me).contains(&me));
    }
}
