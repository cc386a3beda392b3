//! The session's browser (docs/BROWSER.md): a headless Chromium inside the sandbox, driven over
//! the DevTools protocol, behind the same gateway and policy as every other connection the
//! sandbox makes. It is started on the first `browser_*` call, keeps its cookies and its page
//! between calls, and lives until `browser_close` or the sandbox stops.
//!
//! - [`launch`]: finding Chromium, trusting the gateway's CA, starting it.
//! - [`actions`]: one function per tool.
//! - [`markdown`]: a rendered page as capped markdown.
//!
//! Calls are served one at a time (the page is shared state). A call that finds the browser
//! gone (it crashed, or was killed for memory) answers with an error saying so and drops it;
//! the next call starts a new one.
//!
//! The DevTools client is chromiumoxide: maintained, typed for the whole protocol, and on
//! tokio. Its cost is build time (its generated protocol crate adds about a minute to a cold
//! build on 2 cores, measured here), paid once per cache.

pub mod actions;
pub mod launch;
pub mod markdown;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The tools, in the order `tools schema` lists them.
pub const TOOLS: [&str; 9] = [
    "browser_navigate",
    "browser_screenshot",
    "browser_markdown",
    "browser_click",
    "browser_type",
    "browser_scroll",
    "browser_evaluate",
    "browser_back",
    "browser_close",
];

/// How long one action may take (a navigation, a click's navigation, a script) before its
/// call answers with an error; the browser stays up.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A browser tool's answer: content blocks as CMA's `user.custom_tool_result` takes them
/// (text, and base64 PNG images).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrowserReply {
    pub is_error: bool,
    pub content: Vec<Value>,
}

impl BrowserReply {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            is_error: false,
            content: vec![json!({"type": "text", "text": text.into()})],
        }
    }

    pub fn error(text: impl Into<String>) -> Self {
        Self {
            is_error: true,
            content: vec![json!({"type": "text", "text": text.into()})],
        }
    }

    /// The text and then a PNG image.
    pub fn with_png(text: impl Into<String>, png: &[u8]) -> Self {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(png);
        Self {
            is_error: false,
            content: vec![
                json!({"type": "text", "text": text.into()}),
                json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}),
            ],
        }
    }
}

/// Where the browser keeps its profile and which CA it trusts.
#[derive(Debug, Clone)]
pub struct BrowserConfig {
    /// The profile (cookies, cache) and the browser's HOME (its NSS database), made private
    /// to the browser; removed when the browser closes.
    pub profile: PathBuf,
    /// The gateway's CA certificate, when the sandbox has one: trusted in the browser's NSS
    /// database (see [`launch`]).
    pub ca: Option<PathBuf>,
    /// Downloads land here: `/workspace/downloads`, apart from the session's own files (a page
    /// can start a download by itself).
    pub downloads: PathBuf,
    /// The Chromium to run; found on `PATH` when not set.
    pub executable: Option<PathBuf>,
    /// How long one action may take ([`ACTION_TIMEOUT`]).
    pub action_timeout: Duration,
    /// More Chromium flags (tests keep a host Chromium off the network with them).
    pub extra_args: Vec<String>,
}

impl BrowserConfig {
    /// The sandbox's defaults: the profile under /tmp, the CA Cordon installs in every image.
    pub fn in_sandbox(workdir: PathBuf) -> Self {
        let ca = PathBuf::from("/usr/local/share/ca-certificates/cordon.crt");
        Self {
            profile: PathBuf::from("/tmp/cordon-browser"),
            ca: ca.exists().then_some(ca),
            downloads: workdir.join("downloads"),
            executable: std::env::var_os("CORDON_BROWSER").map(PathBuf::from),
            action_timeout: ACTION_TIMEOUT,
            extra_args: Vec::new(),
        }
    }
}

/// One tool call, as the controller forwards it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrowserCall {
    pub name: String,
    #[serde(default)]
    pub input: Value,
}

/// The session's browser, started on first use.
#[derive(Debug)]
pub struct Browser {
    config: BrowserConfig,
    running: tokio::sync::Mutex<Option<launch::Running>>,
}

impl Browser {
    pub fn new(config: BrowserConfig) -> Self {
        Self {
            config,
            running: tokio::sync::Mutex::new(None),
        }
    }

    /// Runs one call; never fails, every problem is an error reply.
    pub async fn call(&self, call: &BrowserCall) -> BrowserReply {
        if !TOOLS.contains(&call.name.as_str()) {
            return BrowserReply::error(format!(
                "unknown browser tool {:?}; the browser tools are {}",
                call.name,
                TOOLS.join(", ")
            ));
        }
        let input = match &call.input {
            Value::Null => json!({}),
            Value::Object(_) => call.input.clone(),
            _ => return BrowserReply::error("the input must be a JSON object"),
        };
        let mut running = self.running.lock().await;
        if call.name == "browser_close" {
            return match running.take() {
                Some(browser) => {
                    browser.close().await;
                    BrowserReply::text(
                        "the browser is closed; the next browser call starts a new one (cookies and pages are gone)",
                    )
                }
                None => BrowserReply::text("the browser was not running"),
            };
        }
        let mut restarted = false;
        if running.as_mut().is_some_and(|r| !r.alive()) {
            // Gone between calls (killed for memory, crashed): a new one for this call.
            if let Some(dead) = running.take() {
                dead.close().await;
            }
            restarted = true;
        }
        if running.is_none() {
            match launch::start(&self.config).await {
                Ok(started) => *running = Some(started),
                Err(e) => return BrowserReply::error(e),
            }
        }
        let Some(browser) = running.as_mut() else {
            return BrowserReply::error("the browser did not start");
        };
        let mut reply = actions::run(browser, &call.name, &input).await;
        browser.close_other_pages().await;
        if restarted {
            reply.content.push(json!({"type": "text", "text": "[cordon] the browser had stopped since the last call (it crashed or ran out of memory); this call started a new one, so earlier pages and cookies are gone"}));
        }
        if !browser.alive() {
            // It died during the call: the reply says so, the next call starts another.
            if let Some(dead) = running.take() {
                dead.close().await;
            }
            reply.is_error = true;
            reply.content.push(json!({"type": "text", "text": "[cordon] the browser stopped during this call (it crashed or ran out of memory); the next browser call starts a new one"}));
            return reply;
        }
        reply
    }

    /// Whether this image has a Chromium to run.
    pub fn has_chromium(&self) -> bool {
        launch::find(&self.config).is_ok()
    }

    /// Starts the browser ahead of its first call, when the image has one: Chromium's cold
    /// start in gVisor takes seconds, which a session's first turn hides. Whether it started
    /// (`false`: no Chromium here, or it failed, which the first call then reports).
    pub async fn warm(&self) -> bool {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return true;
        }
        if launch::find(&self.config).is_err() {
            return false;
        }
        match launch::start(&self.config).await {
            Ok(started) => {
                *running = Some(started);
                true
            }
            Err(_) => false,
        }
    }

    /// Pages (tabs and windows) the browser has open; 0 when it does not run.
    pub async fn pages(&self) -> usize {
        let running = self.running.lock().await;
        match running.as_ref() {
            Some(browser) => browser.page_targets().await.len(),
            None => 0,
        }
    }

    /// The browser process's id while it runs (tests crash it with this).
    pub async fn process_id(&self) -> Option<u32> {
        let mut running = self.running.lock().await;
        let browser = running.as_mut()?;
        browser.browser.get_mut_child()?.as_mut_inner().id()
    }

    /// Stops the browser, if it runs (the agent is shutting down).
    pub async fn shutdown(&self) {
        if let Some(browser) = self.running.lock().await.take() {
            browser.close().await;
        }
    }
}
