//! A real headless Chromium for the dashboard's end-to-end tests: Debian's `chromedriver`
//! started on a free port (killed by its pid when dropped), driven over WebDriver with
//! fantoccini.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

/// `chromedriver`, and where sessions' profiles live.
pub struct Driver {
    child: Child,
    port: u16,
    profiles: tempfile::TempDir,
}

impl Driver {
    /// Starts chromedriver (Chromium and the driver are installed by scripts/install-deps.sh).
    pub fn start() -> Driver {
        for program in ["chromedriver", "chromium"] {
            assert!(
                Command::new("which")
                    .arg(program)
                    .output()
                    .is_ok_and(|o| o.status.success()),
                "{program} is missing: scripts/install-deps.sh installs chromium and chromium-driver"
            );
        }
        let port = cordon_testkit::free_port();
        // In a process group of its own, with every Chromium it starts: a test that fails
        // before it closes its browsers still leaves none behind (see Drop).
        use std::os::unix::process::CommandExt;
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            cordon_testkit::wait_for_port(port, Duration::from_secs(20)),
            "chromedriver did not start"
        );
        Driver {
            child,
            port,
            profiles: tempfile::tempdir().unwrap(),
        }
    }

    /// Where browser `name` saves what it downloads.
    pub fn downloads(&self, name: &str) -> PathBuf {
        self.profiles.path().join(format!("{name}-downloads"))
    }

    /// A new browser (its own profile: no cookies shared with another).
    pub async fn browser(&self, name: &str) -> Client {
        let profile = self.profiles.path().join(name);
        std::fs::create_dir_all(&profile).unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "prefs": {
                    "download.default_directory": self.downloads(name),
                    "download.prompt_for_download": false,
                },
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1360,900", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        // Plain HTTP to chromedriver on loopback: no TLS client (fantoccini's would bring a
        // second rustls provider into the test build, and the programs under test then
        // could not pick one).
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group this driver leads: chromedriver and the browsers it started.
        if let Some(group) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the page's element at `css` has text containing `needle`, at most `within`.
pub async fn wait_for_text(client: &Client, css: &str, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
            && text.contains(needle)
        {
            return text;
        }
        if Instant::now() > deadline {
            let source = client.source().await.unwrap_or_default();
            panic!("{needle:?} did not appear in {css} within {within:?}; the page:\n{source}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Saves a screenshot of the page as `<dir>/<name>.png` when `CORDON_DASHBOARD_SCREENSHOTS`
/// names a directory (`make dashboard-screenshots` sets it to docs/dashboard).
pub async fn screenshot(client: &Client, name: &str) {
    let Some(dir) = std::env::var_os("CORDON_DASHBOARD_SCREENSHOTS").map(PathBuf::from) else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.unwrap();
    std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).unwrap();
}

/// The element at `css` (a test failure names it when missing).
async fn element(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
}

/// Types `text` into the field at `css`, replacing what it held.
pub async fn fill(client: &Client, css: &str, text: &str) {
    let field = element(client, css).await;
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// Types `keys` where the element at `css` takes them (WebDriver key codes allowed).
pub async fn type_into(client: &Client, css: &str, keys: &str) {
    element(client, css).await.send_keys(keys).await.unwrap();
}

/// Chooses `value` in the `<select>` at `css`.
pub async fn choose(client: &Client, css: &str, value: &str) {
    element(client, css)
        .await
        .select_by_value(value)
        .await
        .unwrap();
}

/// Clicks the element at `css`.
pub async fn click(client: &Client, css: &str) {
    element(client, css).await.click().await.unwrap();
}
