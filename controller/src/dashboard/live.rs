//! Live pages: a server-sent event stream per open page that sends the page's live part again
//! whenever it changed. The server looks when the proxy's decisions arrive (the ingester's
//! news) and once a second otherwise (session states), renders, and sends only what differs
//! from what the browser has, so an idle page costs one render a second and no traffic. The
//! login is checked again before every send: a stream ends with its login.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use maud::Markup;

use super::pages::sessions::Filters;
use super::pages::{overview, session, sessions};
use super::{Dashboard, Principal};

/// How often a page is rendered again without news of decisions.
const TICK: Duration = Duration::from_secs(1);

/// What a live page renders.
#[derive(Clone)]
enum Part {
    Overview,
    Sessions(Filters),
    Session(String),
}

async fn render(dashboard: &Dashboard, part: &Part) -> Markup {
    match part {
        Part::Overview => overview::fragment(dashboard).await,
        Part::Sessions(filters) => sessions::table(&sessions::rows(dashboard).await, filters),
        Part::Session(id) => session::timeline(dashboard, id),
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
}

fn stream(
    dashboard: Arc<Dashboard>,
    headers: HeaderMap,
    part: Part,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let cursor = Cursor {
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
            let html = render(&c.dashboard, &c.part).await.into_string();
            // The first render is sent too: the page may have changed between its load and
            // the stream's start.
            if c.last.as_deref() != Some(html.as_str()) {
                let event = Event::default().event("update").data(&html);
                c.last = Some(html);
                return Some((Ok(event), c));
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

pub(crate) async fn overview(
    State(dashboard): State<Arc<Dashboard>>,
    _who: Principal,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    stream(dashboard, headers, Part::Overview)
}

pub(crate) async fn sessions(
    State(dashboard): State<Arc<Dashboard>>,
    _who: Principal,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    stream(dashboard, headers, Part::Sessions(filters))
}

pub(crate) async fn session(
    State(dashboard): State<Arc<Dashboard>>,
    _who: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    stream(dashboard, headers, Part::Session(id))
}
