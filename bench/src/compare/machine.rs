//! What machine and which versions a run was measured on.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::results::Machine;

pub(crate) fn describe(repo: &Path, programs: &[(&str, &Path, &[&str])]) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let mut versions = BTreeMap::new();
    for (name, program, args) in programs {
        versions.insert(
            (*name).to_owned(),
            first_line(Command::new(program).args(*args)),
        );
    }
    versions.insert(
        "rustc".into(),
        first_line(Command::new("rustc").arg("--version")),
    );
    versions.insert(
        "cordon commit".into(),
        first_line(
            Command::new("git")
                .arg("-C")
                .arg(repo)
                .args(["describe", "--always", "--dirty"]),
        ),
    );
    Machine {
        cpu,
        cores: cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count(),
        memory_gib: memory_kib / (1024.0 * 1024.0),
        kernel: first_line(Command::new("uname").arg("-r")),
        os,
        versions,
        load_average_at_start: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split(' ')
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The first non-empty line a command prints on stdout or stderr (nginx -v uses stderr).
fn first_line(command: &mut Command) -> String {
    match command.output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&o.stderr).lines())
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_owned(),
        Err(e) => format!("not available ({e})"),
    }
}
