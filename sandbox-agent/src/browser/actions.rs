//! The browser tools, one function each. Every input problem, a selector that matches nothing,
//! a page that does not load in time, is an error reply that says what to do; the browser
//! stays as it was.

use std::time::Duration;

use chromiumoxide::Page;
use chromiumoxide::cdp::browser_protocol::page::{
    CaptureScreenshotFormat, GetNavigationHistoryParams, NavigateParams,
    NavigateToHistoryEntryParams,
};
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use chromiumoxide::page::ScreenshotParams;
use serde_json::Value;

use super::launch::Running;
use super::{BrowserReply, markdown};

/// The largest image a result may carry (the controller's custom-tool limit).
pub const MAX_IMAGE_BYTES: usize = 5 * 1024 * 1024;

/// Characters of a script's JSON result given back.
pub const MAX_EVALUATE_CHARS: usize = 100_000;

/// How long to give a click or a key press to start a navigation before answering.
const SETTLE: Duration = Duration::from_millis(200);

/// Runs tool `name` on the browser's page, within its action timeout.
pub async fn run(browser: &mut Running, name: &str, input: &Value) -> BrowserReply {
    let page = &browser.page;
    let limit = browser.timeout;
    let action = async {
        match name {
            "browser_navigate" => navigate(page, input).await,
            "browser_screenshot" => screenshot(page, input).await,
            "browser_markdown" => markdown(page, input).await,
            "browser_click" => click(page, input, limit).await,
            "browser_type" => type_text(page, input, limit).await,
            "browser_scroll" => scroll(page, input).await,
            "browser_evaluate" => evaluate(page, input).await,
            "browser_back" => back(page, limit).await,
            other => Err(format!("unknown browser tool {other:?}")),
        }
    };
    let outcome = tokio::time::timeout(limit, action).await;
    match outcome {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => BrowserReply::error(e),
        Err(_) => {
            // The page is stuck in a load the DevTools client still waits for, which would
            // hold up every later navigation: a fresh page replaces it (cookies are the
            // browser's, and stay).
            let fresh = tokio::time::timeout(limit, browser.browser.new_page("about:blank")).await;
            let reset = match fresh {
                Ok(Ok(page)) => {
                    let stuck = std::mem::replace(&mut browser.page, page);
                    let _ = tokio::time::timeout(Duration::from_secs(2), stuck.close()).await;
                    "the page was replaced by a blank one (cookies are kept, the history is not)"
                }
                _ => "the browser is still open",
            };
            BrowserReply::error(format!(
                "{name} did not finish within {} s (a page that never loads, or a script that \
                 never returns); {reset}",
                limit.as_secs()
            ))
        }
    }
}

fn string<'a>(input: &'a Value, field: &str) -> Result<Option<&'a str>, String> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("input.{field} must be a string")),
    }
}

fn required<'a>(input: &'a Value, field: &str) -> Result<&'a str, String> {
    string(input, field)?.ok_or_else(|| format!("input.{field} is required (a string)"))
}

fn flag(input: &Value, field: &str) -> Result<bool, String> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("input.{field} must be true or false")),
    }
}

/// Only http and https: no `file:` (the sandbox's files are the file tools' business), no
/// `javascript:`, `chrome:` or `data:`.
fn web_url(url: &str) -> Result<&str, String> {
    let url = url.trim();
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("http" | "https") if url.contains("://") => Ok(url),
        _ => Err(format!(
            "{url:?} is not an http(s) URL; the browser opens http:// and https:// addresses only"
        )),
    }
}

fn cdp(what: &str) -> impl Fn(chromiumoxide::error::CdpError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Characters of a page's title and URL given back: the page sets them.
const MAX_TITLE_CHARS: usize = 300;
const MAX_URL_CHARS: usize = 2000;

/// Bytes of a page's HTML turned into markdown, and how deep its elements may nest: the
/// conversion recurses, and a page can nest elements as deep as its script likes.
const MAX_HTML_BYTES: usize = 8 * 1024 * 1024;
const MAX_DEPTH: i64 = 1000;

/// `text` cut to `max` characters, marked when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

/// Where the page is now: its URL and title.
async fn whereabouts(page: &Page) -> String {
    let url = page.url().await.ok().flatten().unwrap_or_default();
    let title = page.get_title().await.ok().flatten().unwrap_or_default();
    format!(
        "{} (title {:?})",
        cut(&url, MAX_URL_CHARS),
        cut(&title, MAX_TITLE_CHARS)
    )
}

/// Opens `url`; the final URL and the main document's status.
async fn go(page: &Page, url: &str) -> Result<String, String> {
    let url = web_url(url)?;
    let navigated = page
        .execute(NavigateParams::new(url))
        .await
        .map_err(|e| format!("{url} did not load: {e}"))?;
    if let Some(failure) = navigated.result.error_text.clone() {
        return Err(format!(
            "{url} did not load: {failure} (a connection or TLS failure; a refusal by the \
             gateway's policy is a 403 page instead)"
        ));
    }
    // The main document's status, as the page's own navigation timing has it.
    let status: Option<i64> = page
        .evaluate(
            "performance.getEntriesByType('navigation').map(e => e.responseStatus)[0] || null",
        )
        .await
        .ok()
        .and_then(|v| v.into_value().ok());
    let status = status.map_or("no HTTP status".to_string(), |s| format!("status {s}"));
    Ok(format!("{status}; now at {}", whereabouts(page).await))
}

async fn navigate(page: &Page, input: &Value) -> Result<BrowserReply, String> {
    let url = required(input, "url")?;
    Ok(BrowserReply::text(format!(
        "Opened {url}: {}",
        go(page, url).await?
    )))
}

/// A PNG's width and height, from its header.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    let width = u32::from_be_bytes(png.get(16..20)?.try_into().ok()?);
    let height = u32::from_be_bytes(png.get(20..24)?.try_into().ok()?);
    Some((width, height))
}

async fn screenshot(page: &Page, input: &Value) -> Result<BrowserReply, String> {
    let full_page = flag(input, "full_page")?;
    let png = page
        .screenshot(
            ScreenshotParams::builder()
                .format(CaptureScreenshotFormat::Png)
                .full_page(full_page)
                .build(),
        )
        .await
        .map_err(cdp("taking the screenshot"))?;
    if png.len() > MAX_IMAGE_BYTES {
        return Err(format!(
            "the screenshot is {} KiB, over the {} KiB an image in a result may be; take it \
             without full_page, or scroll to the part you need",
            png.len() / 1024,
            MAX_IMAGE_BYTES / 1024
        ));
    }
    let (width, height) = png_size(&png).unwrap_or_default();
    let what = if full_page {
        "the whole page"
    } else {
        "the viewport"
    };
    Ok(BrowserReply::with_png(
        format!(
            "Screenshot of {what} at {}: {width}x{height} PNG",
            whereabouts(page).await
        ),
        &png,
    ))
}

async fn markdown(page: &Page, input: &Value) -> Result<BrowserReply, String> {
    let mut text = String::new();
    if let Some(url) = string(input, "url")? {
        text = format!("Opened {url}: {}\n\n", go(page, url).await?);
    }
    // Measured in the page first, so a huge or deep page is refused before it is copied here.
    let (bytes, depth): (usize, i64) = page
        .evaluate(
            "(() => { const root = document.documentElement; let max = 0; \
             const stack = root ? [[root, 1]] : []; \
             while (stack.length) { const [n, d] = stack.pop(); if (d > max) max = d; \
             if (max > 100000) break; for (const c of n.children) stack.push([c, d + 1]); } \
             return [root ? root.outerHTML.length : 0, max]; })()",
        )
        .await
        .map_err(cdp("measuring the page"))?
        .into_value::<(usize, i64)>()
        .map_err(|e| format!("measuring the page: {e}"))?;
    if bytes > MAX_HTML_BYTES {
        return Err(format!(
            "the page's HTML is {} KiB, more than the {} KiB made into markdown; use \
             browser_evaluate to read a part of it",
            bytes / 1024,
            MAX_HTML_BYTES / 1024
        ));
    }
    if depth > MAX_DEPTH {
        return Err(format!(
            "the page nests elements {depth} deep, more than the {MAX_DEPTH} made into \
             markdown; use browser_evaluate to read a part of it"
        ));
    }
    let html = page.content().await.map_err(cdp("reading the page"))?;
    let url = page.url().await.ok().flatten().unwrap_or_default();
    text.push_str(&format!("<!-- {} -->\n", cut(&url, MAX_URL_CHARS)));
    text.push_str(&render_apart(html).await?);
    Ok(BrowserReply::text(text))
}

/// [`markdown::render`] on a thread of its own with room for the conversion's recursion, off
/// the runtime's workers (it is CPU work, up to a few hundred milliseconds for a large page).
async fn render_apart(html: String) -> Result<String, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("browser-markdown".into())
        .stack_size(64 * 1024 * 1024)
        .spawn(move || {
            let _ = tx.send(markdown::render(&html));
        })
        .map_err(|e| format!("starting the conversion: {e}"))?;
    rx.await
        .map_err(|_| "the conversion to markdown failed".to_string())?
}

/// An XPath string literal for `text`, whatever quotes it holds.
fn xpath_literal(text: &str) -> String {
    if !text.contains('\'') {
        return format!("'{text}'");
    }
    if !text.contains('"') {
        return format!("\"{text}\"");
    }
    let parts: Vec<String> = text.split('\'').map(|p| format!("'{p}'")).collect();
    format!("concat({})", parts.join(", \"'\", "))
}

/// Waits for a navigation the last input may have started (none is fine): until the document
/// in the page has loaded, for at most half of `limit`, so a page that never finishes loading
/// still gets its answer. Polled rather than awaited on lifecycle events: a history navigation
/// served from the back-forward cache fires none.
async fn settle(page: &Page, limit: Duration) {
    tokio::time::sleep(SETTLE).await;
    let deadline = tokio::time::Instant::now() + limit / 2;
    while tokio::time::Instant::now() < deadline {
        let state = page.evaluate("document.readyState").await;
        // An error is a document being replaced: ask again.
        if state
            .ok()
            .and_then(|s| s.into_value::<String>().ok())
            .as_deref()
            == Some("complete")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn click(page: &Page, input: &Value, limit: Duration) -> Result<BrowserReply, String> {
    let (element, what) = match (string(input, "selector")?, string(input, "text")?) {
        (Some(selector), None) => (
            page.find_element(selector)
                .await
                .map_err(|_| format!("no element matches the selector {selector:?}"))?,
            format!("the element {selector:?}"),
        ),
        (None, Some(text)) => {
            // The innermost link, button or labelled control whose text (or value) is `text`.
            let literal = xpath_literal(text.trim());
            let xpath = format!(
                "(//a|//button|//input[@type='submit' or @type='button' or @type='reset']|//*[@role='button' or @role='link']|//summary|//label)[normalize-space(.)={literal} or @value={literal} or @aria-label={literal}]"
            );
            (
                page.find_xpath(xpath)
                    .await
                    .map_err(|_| format!("no link, button or label reads {text:?}"))?,
                format!("{text:?}"),
            )
        }
        _ => return Err("give exactly one of input.selector (CSS) or input.text".to_string()),
    };
    element
        .click()
        .await
        .map_err(|e| format!("{what} could not be clicked: {e}"))?;
    settle(page, limit).await;
    Ok(BrowserReply::text(format!(
        "Clicked {what}; now at {}",
        whereabouts(page).await
    )))
}

async fn type_text(page: &Page, input: &Value, limit: Duration) -> Result<BrowserReply, String> {
    let selector = required(input, "selector")?;
    let text = required(input, "text")?;
    let submit = flag(input, "submit")?;
    let element = page
        .find_element(selector)
        .await
        .map_err(|_| format!("no element matches the selector {selector:?}"))?;
    element
        .click()
        .await
        .map_err(|e| format!("the element {selector:?} could not be focused: {e}"))?;
    element
        .type_str(text)
        .await
        .map_err(|e| format!("typing into {selector:?}: {e}"))?;
    if submit {
        element
            .press_key("Enter")
            .await
            .map_err(|e| format!("pressing Enter in {selector:?}: {e}"))?;
        settle(page, limit).await;
    }
    Ok(BrowserReply::text(format!(
        "Typed {} characters into {selector:?}{}; now at {}",
        text.chars().count(),
        if submit { " and pressed Enter" } else { "" },
        whereabouts(page).await
    )))
}

async fn scroll(page: &Page, input: &Value) -> Result<BrowserReply, String> {
    if let Some(selector) = string(input, "selector")? {
        page.find_element(selector)
            .await
            .map_err(|_| format!("no element matches the selector {selector:?}"))?
            .scroll_into_view()
            .await
            .map_err(|e| format!("scrolling to {selector:?}: {e}"))?;
    } else {
        let pixels = match input.get("pixels") {
            None | Some(Value::Null) => i64::from(super::launch::HEIGHT) * 3 / 4,
            Some(v) => v
                .as_i64()
                .filter(|p| (1..=100_000).contains(p))
                .ok_or("input.pixels must be a whole number from 1 to 100000")?,
        };
        let (dx, dy) = match string(input, "direction")?.unwrap_or("down") {
            "down" => (0, pixels),
            "up" => (0, -pixels),
            "right" => (pixels, 0),
            "left" => (-pixels, 0),
            other => {
                return Err(format!(
                    "input.direction {other:?} is not one of down, up, left, right"
                ));
            }
        };
        page.evaluate(format!("window.scrollBy({dx}, {dy})"))
            .await
            .map_err(cdp("scrolling"))?;
    }
    let position: Vec<i64> = page
        .evaluate("[Math.round(window.scrollX), Math.round(window.scrollY), document.documentElement.scrollHeight, window.innerHeight]")
        .await
        .map_err(cdp("reading the scroll position"))?
        .into_value()
        .map_err(|e| format!("reading the scroll position: {e}"))?;
    let [x, y, height, viewport] = position[..] else {
        return Err("reading the scroll position: an unexpected answer".to_string());
    };
    Ok(BrowserReply::text(format!(
        "Scrolled to x={x}, y={y} (the page is {height} px tall, the viewport {viewport} px)"
    )))
}

async fn evaluate(page: &Page, input: &Value) -> Result<BrowserReply, String> {
    let expression = required(input, "expression")?;
    let params = EvaluateParams::builder()
        .expression(expression)
        .await_promise(true)
        .return_by_value(true)
        .build()
        .map_err(|e| format!("the script: {e}"))?;
    let result = page
        .evaluate_expression(params)
        .await
        .map_err(|e| format!("the script failed: {e}"))?;
    let value = result.value().cloned().unwrap_or(Value::Null);
    let mut json = serde_json::to_string_pretty(&value).unwrap_or_else(|_| "null".to_string());
    if json.chars().count() > MAX_EVALUATE_CHARS {
        json = json.chars().take(MAX_EVALUATE_CHARS).collect();
        json.push_str(&format!(
            "\n[cut at {MAX_EVALUATE_CHARS} characters: return less, e.g. a slice or a count]"
        ));
    }
    Ok(BrowserReply::text(json))
}

async fn back(page: &Page, limit: Duration) -> Result<BrowserReply, String> {
    let history = page
        .execute(GetNavigationHistoryParams::default())
        .await
        .map_err(cdp("reading the history"))?;
    let index = usize::try_from(history.result.current_index).unwrap_or(0);
    let Some(previous) = index
        .checked_sub(1)
        .and_then(|i| history.result.entries.get(i))
    else {
        return Err("there is no previous page in this browser's history".to_string());
    };
    page.execute(NavigateToHistoryEntryParams::new(previous.id))
        .await
        .map_err(cdp("going back"))?;
    settle(page, limit).await;
    Ok(BrowserReply::text(format!(
        "Went back; now at {}",
        whereabouts(page).await
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_web_urls_open() {
        for url in ["http://a.test/", "https://a.test/x?y", " HTTPS://A.test "] {
            assert!(web_url(url).is_ok(), "{url}");
        }
        for url in [
            "file:///etc/passwd",
            "javascript:alert(1)",
            "chrome://settings",
            "data:text/html,hi",
            "a.test",
            "http:a.test",
            "",
        ] {
            let e = web_url(url).unwrap_err();
            assert!(e.contains("http:// and https://"), "{url}: {e}");
        }
    }

    #[test]
    fn xpath_literals_hold_any_quotes() {
        assert_eq!(xpath_literal("Sign in"), "'Sign in'");
        assert_eq!(xpath_literal("it's"), "\"it's\"");
        assert_eq!(
            xpath_literal("say \"it's\""),
            "concat('say \"it', \"'\", 's\"')"
        );
    }

    #[test]
    fn png_sizes_come_from_the_header() {
        let mut png = vec![0u8; 24];
        png[16..20].copy_from_slice(&1280u32.to_be_bytes());
        png[20..24].copy_from_slice(&800u32.to_be_bytes());
        assert_eq!(png_size(&png), Some((1280, 800)));
        assert_eq!(png_size(&png[..10]), None);
    }
}
