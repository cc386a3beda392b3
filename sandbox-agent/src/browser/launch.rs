//! Starting the session's Chromium.
//!
//! Flags: `--headless=new`; `--no-sandbox`, because gVisor is the sandbox (Chromium's own needs
//! namespaces and seccomp filters gVisor does not offer); `--disable-gpu`;
//! `--disable-dev-shm-usage` (a sandbox's /dev/shm is small); a profile of its own, made afresh
//! at each start and removed at close.
//!
//! Trust: Chromium on Linux trusts the roots of its NSS database (`$HOME/.pki/nssdb`), not
//! /etc/ssl/certs. The gateway's CA is imported there with `certutil` (Debian's
//! `libnss3-tools`) as a trusted root, so Chromium keeps every check it makes (names,
//! validity, the chain) against that root. The alternative, `--ignore-certificate-errors-spki-list`,
//! skips errors for certificates with a listed key instead of trusting a root: an expired or
//! misnamed certificate under it would pass, and it is documented as a testing switch. HTTPS
//! errors are respected (chromiumoxide ignores them by default).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::browser::{
    SetDownloadBehaviorBehavior, SetDownloadBehaviorParams,
};
use chromiumoxide::cdp::browser_protocol::target::{CloseTargetParams, GetTargetsParams, TargetId};
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::BrowserConfig;

/// Names Chromium goes by on `PATH`.
const EXECUTABLES: [&str; 4] = [
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];

/// Chromium's switches besides headless mode, `--no-sandbox`, the profile and the window,
/// which chromiumoxide adds. Quiet (no background networking, component updates, sync,
/// crash reports, first-run or default apps, translation), no GPU, no /dev/shm, and the popup
/// blocker on: a page opens no window without a click.
const FLAGS: [&str; 18] = [
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--disable-breakpad",
    "--disable-client-side-phishing-detection",
    "--disable-component-extensions-with-background-pages",
    "--disable-default-apps",
    "--disable-features=TranslateUI",
    "--disable-hang-monitor",
    "--disable-prompt-on-repost",
    "--disable-sync",
    "--metrics-recording-only",
    "--no-first-run",
    "--password-store=basic",
];

/// Adds a `--name[=value]` switch as chromiumoxide takes one: the name without its dashes
/// (it adds them; given with them, Chromium would read `----name` and ignore it), the value
/// whole.
fn with_flag(
    builder: chromiumoxide::browser::BrowserConfigBuilder,
    flag: &str,
) -> chromiumoxide::browser::BrowserConfigBuilder {
    let flag = flag.trim_start_matches('-');
    match flag.split_once('=') {
        Some((name, value)) => builder.arg((name, value)),
        None => builder.arg(flag),
    }
}

/// The window, and so the viewport a screenshot shows.
pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 800;

/// A started browser and its one page.
#[derive(Debug)]
pub struct Running {
    pub browser: chromiumoxide::Browser,
    pub page: chromiumoxide::Page,
    handler: JoinHandle<()>,
    profile: PathBuf,
    /// How long one action may take.
    pub timeout: Duration,
}

impl Running {
    /// Whether Chromium still runs and its DevTools connection is up.
    pub fn alive(&mut self) -> bool {
        let exited = self
            .browser
            .get_mut_child()
            .is_some_and(|child| !matches!(child.as_mut_inner().try_wait(), Ok(None)));
        !exited && !self.handler.is_finished()
    }

    /// The page targets Chromium has open (its own list: a window a page just opened may not
    /// be known to the DevTools client yet).
    pub async fn page_targets(&self) -> Vec<TargetId> {
        let listed = tokio::time::timeout(
            Duration::from_secs(2),
            self.browser.execute(GetTargetsParams::default()),
        )
        .await;
        match listed {
            Ok(Ok(answer)) => answer
                .result
                .target_infos
                .iter()
                .filter(|t| t.r#type == "page")
                .map(|t| t.target_id.clone())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Closes every page but the browser's own (windows a page opened by itself), so none
    /// keeps running scripts and making requests unseen.
    pub async fn close_other_pages(&self) {
        let ours = self.page.target_id().clone();
        for target in self.page_targets().await {
            if target != ours {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    self.browser.execute(CloseTargetParams::new(target)),
                )
                .await;
            }
        }
    }

    /// Closes the browser (killing it if it does not close), and removes its profile.
    pub async fn close(mut self) {
        let closed = tokio::time::timeout(Duration::from_secs(5), self.browser.close()).await;
        if !matches!(closed, Ok(Ok(_))) {
            let _ = self.browser.kill().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.browser.wait()).await;
        self.handler.abort();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The Chromium to run: the configured one, or the first of [`EXECUTABLES`] on `PATH`.
pub fn find(config: &BrowserConfig) -> Result<PathBuf, String> {
    if let Some(path) = &config.executable {
        return if path.is_file() {
            Ok(path.clone())
        } else {
            Err(format!(
                "CORDON_BROWSER names {}, which is not a file",
                path.display()
            ))
        };
    }
    find_on(&std::env::var_os("PATH").unwrap_or_default())
}

/// The first of [`EXECUTABLES`] in the directories of `path` (a `PATH` value).
fn find_on(path: &std::ffi::OsStr) -> Result<PathBuf, String> {
    for dir in std::env::split_paths(path) {
        for name in EXECUTABLES {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "this sandbox's image has no browser (none of {} on PATH). Run the session on an image \
         with Chromium: examples/images/browser.toml (`cordon-controller image build browser \
         --from-file examples/images/browser.toml`, then [sandbox] image = \"browser\")",
        EXECUTABLES.join(", ")
    ))
}

/// A new, empty directory only the agent's user can read.
fn fresh_dir(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let _ = std::fs::remove_dir_all(path);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Makes `home`'s NSS database trust `ca` as a root.
async fn trust(home: &Path, ca: &Path) -> Result<(), String> {
    let db = home.join(".pki/nssdb");
    fresh_dir(&db)?;
    let db = format!("sql:{}", db.display());
    let ca = ca.display().to_string();
    for args in [
        vec!["-N", "-d", &db, "--empty-password"],
        vec![
            "-A",
            "-d",
            &db,
            "-n",
            "cordon-gateway",
            "-t",
            "C,,",
            "-i",
            &ca,
        ],
    ] {
        let out = tokio::process::Command::new("certutil")
            .args(&args)
            .output()
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    "the image has Chromium but not certutil (Debian's libnss3-tools), so the \
                     browser cannot trust the gateway's CA; add libnss3-tools to the image (as \
                     examples/images/browser.toml does)"
                        .to_string()
                } else {
                    format!("running certutil: {e}")
                }
            })?;
        if !out.status.success() {
            return Err(format!(
                "certutil {} failed: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// Starts Chromium with a fresh profile and opens its page.
pub async fn start(config: &BrowserConfig) -> Result<Running, String> {
    let chrome = find(config)?;
    fresh_dir(&config.profile)?;
    let home = config.profile.join("home");
    fresh_dir(&home)?;
    if let Some(ca) = &config.ca {
        trust(&home, ca).await?;
    }
    let launch = chromiumoxide::BrowserConfig::builder()
        .chrome_executable(&chrome)
        .new_headless_mode()
        .no_sandbox()
        .respect_https_errors()
        .user_data_dir(config.profile.join("data"))
        .env("HOME", home.display().to_string())
        .window_size(WIDTH, HEIGHT)
        .viewport(chromiumoxide::handler::viewport::Viewport {
            width: WIDTH,
            height: HEIGHT,
            ..Default::default()
        })
        .launch_timeout(Duration::from_secs(30))
        .request_timeout(config.action_timeout)
        // Our own list in place of chromiumoxide's defaults, which turn the popup blocker off.
        .disable_default_args();
    let launch = FLAGS
        .iter()
        .copied()
        .chain(config.extra_args.iter().map(String::as_str))
        .fold(launch, with_flag)
        .build()
        .map_err(|e| format!("the browser's settings: {e}"))?;
    let (mut browser, mut handler) = chromiumoxide::Browser::launch(launch)
        .await
        .map_err(|e| format!("{} did not start: {e}", chrome.display()))?;
    // The connection's events must be read for any command to complete. It ends at the first
    // error, which is the connection failing (invalid messages are not surfaced as errors).
    let handler = tokio::spawn(async move { while let Some(Ok(())) = handler.next().await {} });
    let opened = tokio::time::timeout(config.action_timeout, async {
        let page = browser.new_page("about:blank").await?;
        // Downloads land in the workspace, where the session's other tools see them.
        std::fs::create_dir_all(&config.downloads)?;
        browser
            .execute(
                SetDownloadBehaviorParams::builder()
                    .behavior(SetDownloadBehaviorBehavior::Allow)
                    .download_path(config.downloads.display().to_string())
                    .build()?,
            )
            .await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(page)
    })
    .await;
    let page = match opened {
        Ok(Ok(page)) => page,
        failed => {
            let _ = browser.kill().await;
            handler.abort();
            let _ = std::fs::remove_dir_all(&config.profile);
            return Err(match failed {
                Ok(Err(e)) => format!("the browser started but could not open a page: {e}"),
                _ => format!(
                    "the browser started but did not open a page within {} s",
                    config.action_timeout.as_secs()
                ),
            });
        }
    };
    Ok(Running {
        browser,
        page,
        handler,
        profile: config.profile.clone(),
        timeout: config.action_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_without_chromium_names_the_image_to_use() {
        let dir = tempfile::tempdir().unwrap();
        let e = find_on(dir.path().as_os_str()).unwrap_err();
        assert!(e.contains("examples/images/browser.toml"), "{e}");
        let chromium = dir.path().join("chromium");
        std::fs::write(&chromium, "").unwrap();
        assert_eq!(find_on(dir.path().as_os_str()).unwrap(), chromium);
    }
}
