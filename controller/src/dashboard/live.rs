//! Live pages: a server-sent event stream per open page that sends the page's live part again
//! whenever it changed. The server looks when the proxy's decisions arrive (the ingester's
//! news) and once a second otherwise (session states), renders, and sends only what differs
//! from what the browser has, so an idle page costs one render a second and no traffic. The
//! login is checked again before every send: a stream ends with its login.
//!
//! What every viewer of a page sees alike is rendered once for all of them: the overview and
//! the session rows (both ask the proxy's admin API) are shared for [`SHARED_FOR`], so a
//! hundred open overviews still ask the proxy about twice a second. One user holds at most
//! [`STREAMS_PER_USER`] streams at once; more are refused with 429 and a reason.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use std::future::Future;

use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::pages::sessions::Filters;
use super::pages::{overview, session, sessions};
use super::{Dashboard, Principal};

/// How often a page is rendered again without news of decisions.
const TICK: Duration = Duration::from_secs(1);
/// How long a shared render serves every stream.
const SHARED_FOR: Duration = Duration::from_millis(500);
/// Live pages one user may have open at once (tabs, windows).
pub(crate) const STREAMS_PER_USER: usize = 16;

/// A value rendered once and served to every stream while fresh. The lock is held while
/// rendering, so streams that find it stale at once wait for one render instead of each
/// making their own.
#[derive(Debug)]
pub(crate) struct Shared<T> {
    value: tokio::sync::Mutex<Option<(std::time::Instant, T)>>,
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Self {
            value: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T: Clone> Shared<T> {
    pub(crate) async fn get<F: Future<Output = T>>(&self, render: impl FnOnce() -> F) -> T {
        let mut value = self.value.lock().await;
        if let Some((at, v)) = value.as_ref()
            && at.elapsed() < SHARED_FOR
        {
            return v.clone();
        }
        let fresh = render().await;
        *value = Some((std::time::Instant::now(), fresh.clone()));
        fresh
    }
}

/// Live streams open per user.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One open stream, counted until dropped.
struct StreamSlot {
    dashboard: Arc<Dashboard>,
    user: String,
}

impl Streams {
    fn take(dashboard: &Arc<Dashboard>, user: &str) -> Option<StreamSlot> {
        let mut open = dashboard
            .streams
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let count = open.entry(user.to_string()).or_default();
        if *count >= STREAMS_PER_USER {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            dashboard: dashboard.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .dashboard
            .streams
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// What a live page renders.
#[derive(Clone)]
enum Part {
    Overview,
    Sessions(Filters),
    Session(String),
}

async fn render(dashboard: &Dashboard, part: &Part) -> String {
    match part {
        Part::Overview => {
            dashboard
                .shared_overview
                .get(|| async { overview::fragment(dashboard).await.into_string() })
                .await
        }
        Part::Sessions(filters) => {
            let rows = dashboard
                .shared_rows
                .get(|| sessions::rows(dashboard))
                .await;
            sessions::table(&rows, filters).into_string()
        }
        Part::Session(id) => session::timeline(dashboard, id).into_string(),
    }
}

struct Cursor {
    dashboard: Arc<Dashboard>,
    headers: HeaderMap,
    part: Part,
    news: crate::egress::EgressSubscription,
    /// False once the ingester has stopped (then only the tick wakes the stream).
    ingesting: bool,
    last: Option<String>,
    _slot: StreamSlot,
}

fn stream(dashboard: Arc<Dashboard>, who: &Principal, headers: HeaderMap, part: Part) -> Response {
    let Some(slot) = Streams::take(&dashboard, &who.user) else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} already has {STREAMS_PER_USER} live pages open; close some tabs",
                who.user
            ),
        )
            .into_response();
    };
    let cursor = Cursor {
        _slot: slot,
        news: dashboard.egress.subscribe(),
        ingesting: true,
        dashboard,
        headers,
        part,
        last: None,
    };
    let events = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if c.last.is_some() {
                let session = match &c.part {
                    Part::Session(id) => Some(id.clone()),
                    _ => None,
                };
                tokio::select! {
                    news = c.news.changed(session.as_deref()), if c.ingesting => {
                        c.ingesting = news.is_some();
                    }
                    () = tokio::time::sleep(TICK) => {}
                }
            }
            c.dashboard.auth.principal(&c.headers)?;
            let html = render(&c.dashboard, &c.part).await;
            // The first render is sent too: the page may have changed between its load and
            // the stream's start.
            if c.last.as_deref() != Some(html.as_str()) {
                let event = Event::default().event("update").data(&html);
                c.last = Some(html);
                return Some((Ok::<_, std::convert::Infallible>(event), c));
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub(crate) async fn overview(
    State(dashboard): State<Arc<Dashboard>>,
    who: Principal,
    headers: HeaderMap,
) -> Response {
    stream(dashboard, &who, headers, Part::Overview)
}

pub(crate) async fn sessions(
    State(dashboard): State<Arc<Dashboard>>,
    who: Principal,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Response {
    stream(dashboard, &who, headers, Part::Sessions(filters))
}

pub(crate) async fn session(
    State(dashboard): State<Arc<Dashboard>>,
    who: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    stream(dashboard, &who, headers, Part::Session(id))
}
