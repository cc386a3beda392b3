//! What the sandbox and tool benchmarks share: the built binaries, free ports, a proxy child
//! process, the image store, percentiles.

use std::path::PathBuf;
use std::process::Child;

use hdrhistogram::Histogram;

pub(crate) fn binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe
        .parent()
        .map(|d| d.join(name))
        .ok_or("cannot locate the binaries")?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built: run `cargo build --release --workspace --bins`",
            path.display()
        ))
    }
}

pub(crate) fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// The proxy, killed on drop.
pub(crate) struct ProxyProcess(pub(crate) Child);

impl ProxyProcess {
    /// Starts `cordon-proxy --config config` and waits until every port in `ports` (on
    /// 127.0.0.1) accepts connections.
    pub(crate) async fn start(config: &std::path::Path, ports: &[u16]) -> Result<Self, String> {
        let proxy = ProxyProcess(
            std::process::Command::new(binary("cordon-proxy")?)
                .arg("--config")
                .arg(config)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?,
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while ports
            .iter()
            .any(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_err())
        {
            if std::time::Instant::now() > deadline {
                return Err("the proxy did not start".into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(proxy)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn percentile(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The image store sandboxes run from: `$CORDON_IMAGES`, default `~/.cache/cordon/images`
/// (where `make up` and `make test` build the default image).
pub(crate) fn images_dir() -> std::path::PathBuf {
    std::env::var_os("CORDON_IMAGES").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/cordon/images")
        },
        std::path::PathBuf::from,
    )
}
