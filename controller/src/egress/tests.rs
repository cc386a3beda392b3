use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::FutureExt;

use super::*;
use crate::store::egress::EgressRow;

/// An audit line as the proxy writes it (docs/AUDIT.md), `age_ms` before now.
fn line(session: &str, id: &str, age_ms: i64) -> String {
    let nanos = i128::from(now_ms() - age_ms) * 1_000_000 + 123_456;
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    format!(
        r#"{{"time":"{time}","kind":"request","decision_id":"{id}","connection_id":"c-1","session":"{session}","source":"10.231.0.2:48102","mode":"transparent","sni":"pypi.org","method":"GET","host":"pypi.org","port":443,"path":"/simple/","protocol":"http1","decision":"allow","reason_class":"policy","reason":"listed","policy_generation":"sha256:71e3","status":200,"credentials":["pypi->authorization"],"bytes_up":0,"bytes_down":40477,"policy_us":293,"duration_ms":7}}"#
    ) + "\n"
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<Store>,
    metrics: EgressMetrics,
    updates: broadcast::Sender<Arc<InsertedEgress>>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state.db")).unwrap());
        let (updates, _) = broadcast::channel(subscription::CAPACITY);
        Self {
            dir,
            store,
            metrics: EgressMetrics::new().unwrap(),
            updates,
        }
    }

    fn audit(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// An ingester as `serve` starts it (a new one is a controller restart).
    fn ingester(&self) -> Ingester {
        Ingester::new(
            EgressIngestConfig::new(self.audit()),
            self.store.clone(),
            self.updates.clone(),
            self.metrics.clone(),
        )
    }

    fn append(&self, path: &Path, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    fn rows(&self) -> Vec<EgressRow> {
        self.store.egress_since(None, 0, 10_000).unwrap()
    }

    /// The decision ids stored, in order.
    fn ids(&self) -> Vec<String> {
        self.rows()
            .into_iter()
            .map(|r| r.record.decision_id)
            .collect()
    }
}

/// Polls until there is nothing more to do at once, and a few quiet polls past it (a rotated
/// file is left after some).
fn settle(ingester: &mut Ingester) {
    for _ in 0..20 {
        while ingester.poll().unwrap() {}
    }
}

fn ids(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("d-{i}")).collect()
}

#[test]
fn a_line_written_in_pieces_is_stored_once_whole() {
    let f = Fixture::new();
    let mut ingester = f.ingester();
    let whole = line("sesn_a", "d-0", 0);
    let (first, rest) = whole.split_at(100);
    f.append(&f.audit(), first);
    settle(&mut ingester);
    assert!(f.rows().is_empty(), "half a line waits");
    f.append(&f.audit(), rest);
    settle(&mut ingester);
    let rows = f.rows();
    assert_eq!(rows.len(), 1);
    let row = &rows[0].record;
    assert_eq!(
        (row.session.as_str(), row.host.as_deref(), row.status),
        ("sesn_a", Some("pypi.org"), Some(200))
    );
    assert_eq!(row.credentials, ["pypi->authorization"]);
    assert_eq!(f.metrics.records_ingested.get(), 1);
    assert!(f.metrics.ingest_lag.get() >= 0.0 && f.metrics.ingest_lag.get() < 60.0);
}

#[test]
fn a_missing_file_is_waited_for() {
    let f = Fixture::new();
    let mut ingester = f.ingester();
    settle(&mut ingester);
    f.append(&f.audit(), &line("a", "d-0", 0));
    settle(&mut ingester);
    assert_eq!(f.ids(), ids(0..1));
}

#[test]
fn rotation_by_rename_loses_and_repeats_nothing() {
    let f = Fixture::new();
    let mut ingester = f.ingester();
    let old = f.dir.path().join("audit.log.1");
    for i in 0..3 {
        f.append(&f.audit(), &line("a", &format!("d-{i}"), 0));
    }
    settle(&mut ingester);
    // Written before the rename but not read yet, then the name moves to a new file while
    // the writer appends one more batch to the old one.
    f.append(&f.audit(), &line("a", "d-3", 0));
    std::fs::rename(f.audit(), &old).unwrap();
    f.append(&f.audit(), &line("a", "d-5", 0));
    ingester.poll().unwrap();
    f.append(&old, &line("a", "d-4", 0));
    settle(&mut ingester);
    f.append(&f.audit(), &line("a", "d-6", 0));
    settle(&mut ingester);
    assert_eq!(f.ids(), ids(0..7));
    assert_eq!(f.metrics.malformed_lines.get(), 0);
}

#[test]
fn copytruncate_rotation_reads_the_rest_from_the_copy() {
    let f = Fixture::new();
    let mut ingester = f.ingester();
    for i in 0..3 {
        f.append(&f.audit(), &line("a", &format!("d-{i}"), 0));
    }
    settle(&mut ingester);
    // logrotate's copytruncate: two lines the ingester has not read go to the copy, the
    // file is emptied, and the proxy (appending) writes on from its start.
    f.append(&f.audit(), &line("a", "d-3", 0));
    f.append(&f.audit(), &line("a", "d-4", 0));
    std::fs::copy(f.audit(), f.dir.path().join("audit.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(f.audit())
        .unwrap()
        .set_len(0)
        .unwrap();
    for i in 5..10 {
        f.append(&f.audit(), &line("a", &format!("d-{i}"), 0));
    }
    settle(&mut ingester);
    assert_eq!(f.ids(), ids(0..10));
}

#[test]
fn truncation_is_seen_even_when_the_file_grew_past_the_old_offset() {
    let f = Fixture::new();
    let mut ingester = f.ingester();
    for i in 0..2 {
        f.append(&f.audit(), &line("a", &format!("d-{i}"), 0));
    }
    settle(&mut ingester);
    // Emptied by an operator (no copy), then more written than was there before.
    std::fs::write(f.audit(), "").unwrap();
    for i in 2..7 {
        f.append(&f.audit(), &line("a", &format!("d-{i}"), 0));
    }
    settle(&mut ingester);
    assert_eq!(f.ids(), ids(0..7));
    // And emptied to nothing at all.
    std::fs::write(f.audit(), "").unwrap();
    settle(&mut ingester);
    f.append(&f.audit(), &line("a", "d-7", 0));
    settle(&mut ingester);
    assert_eq!(f.ids(), ids(0..8));
}

#[test]
fn a_batch_the_proxy_cut_off_is_not_read_twice() {
    let f = Fixture::new();
    let mut ingester = f.ingester();
    let kept = line("a", "d-0", 0);
    f.append(&f.audit(), &kept);
    f.append(&f.audit(), &line("a", "d-1", 0));
    settle(&mut ingester);
    // A full disk: the proxy cuts its failed batch (d-1) off again, then writes on.
    std::fs::OpenOptions::new()
        .write(true)
        .open(f.audit())
        .unwrap()
        .set_len(kept.len() as u64)
        .unwrap();
    settle(&mut ingester);
    f.append(&f.audit(), &line("a", "d-2", 0));
    settle(&mut ingester);
    assert_eq!(f.ids(), ids(0..3));
}

#[test]
fn a_restart_resumes_from_the_stored_position() {
    let f = Fixture::new();
    for i in 0..3 {
        f.append(&f.audit(), &line("a", &format!("d-{i}"), 0));
    }
    settle(&mut f.ingester());
    f.append(&f.audit(), &line("a", "d-3", 0));
    settle(&mut f.ingester());
    assert_eq!(f.ids(), ids(0..4));
    // Rotated while the controller was stopped: the old file's rest, then the new file.
    f.append(&f.audit(), &line("a", "d-4", 0));
    std::fs::rename(f.audit(), f.dir.path().join("audit.log.1")).unwrap();
    f.append(&f.audit(), &line("a", "d-5", 0));
    settle(&mut f.ingester());
    assert_eq!(f.ids(), ids(0..6));
    // Copy-truncated while stopped.
    f.append(&f.audit(), &line("a", "d-6", 0));
    std::fs::copy(f.audit(), f.dir.path().join("audit.log.2")).unwrap();
    std::fs::write(f.audit(), line("a", "d-7", 0)).unwrap();
    settle(&mut f.ingester());
    assert_eq!(f.ids(), ids(0..8));
}

#[test]
fn malformed_lines_are_skipped_and_counted() {
    let f = Fixture::new();
    let mut ingester = f.ingester();
    let dns = format!(
        r#"{{"time":"{}","kind":"dns","session":"a","source":"10.0.0.2:5353","name":"pypi.org","qtype":"A","rcode":"NOERROR"}}"#,
        "2026-11-27T01:44:16.295554594Z"
    );
    let text = [
        line("a", "d-0", 0),
        "secret=hunter2 not json\n".into(),
        line("a", "x", 0).replace(r#""time":"2"#, r#""time":"yesterday 2"#),
        line("a", "x", 0).replace(r#""port":443"#, r#""port":"https""#),
        line("a", "x", 0).replace(r#""decision":"allow","#, ""),
        dns + "\n",
        "\n".into(),
        line("a", "d-1", 0),
    ]
    .concat();
    f.append(&f.audit(), &text);
    settle(&mut ingester);
    assert_eq!(f.ids(), ids(0..2));
    assert_eq!(f.metrics.malformed_lines.get(), 4);
}

#[test]
fn a_line_too_long_to_read_is_skipped_and_counted_once() {
    let f = Fixture::new();
    let mut ingester = f.ingester();
    ingester.max_read = Some(1024);
    let long = line("a", &"x".repeat(5000), 0);
    let text = [line("a", "d-0", 0), long, line("a", "d-1", 0)].concat();
    f.append(&f.audit(), &text);
    settle(&mut ingester);
    assert_eq!(f.ids(), ids(0..2));
    assert_eq!(f.metrics.malformed_lines.get(), 1);
}

#[test]
fn records_older_than_the_retention_are_not_stored() {
    let f = Fixture::new();
    let mut ingester = f.ingester();
    ingester.config.max_age = Duration::from_secs(3600);
    f.append(&f.audit(), &line("a", "old", 2 * 3600 * 1000));
    f.append(&f.audit(), &line("a", "d-0", 0));
    settle(&mut ingester);
    assert_eq!(f.ids(), ids(0..1));
    assert_eq!(f.metrics.malformed_lines.get(), 0);
}

#[test]
fn retention_runs_in_chunks_from_the_tick() {
    let f = Fixture::new();
    let mut ingester = f.ingester();
    ingester.config.max_rows = 2;
    let text: String = (0..5).map(|i| line("a", &format!("d-{i}"), 0)).collect();
    f.append(&f.audit(), &text);
    while ingester.tick() {}
    assert_eq!(f.ids(), ["d-3", "d-4"]);
    // The next run is an interval away.
    f.append(&f.audit(), &line("a", "d-5", 0));
    while ingester.tick() {}
    assert_eq!(f.ids(), ["d-3", "d-4", "d-5"]);
    ingester.next_prune = Instant::now();
    while ingester.tick() {}
    assert_eq!(f.ids(), ["d-4", "d-5"]);
    assert_eq!(f.metrics.rows_pruned.get(), 4);
}

#[test]
fn the_live_subscription_fires_within_one_poll() {
    let f = Fixture::new();
    let mut ingester = f.ingester();
    let mut any = EgressSubscription::new(f.updates.subscribe());
    let mut a = EgressSubscription::new(f.updates.subscribe());
    f.append(&f.audit(), &line("b", "d-0", 0));
    assert!(ingester.poll().is_ok());
    assert_eq!(any.changed(None).now_or_never(), Some(Some(1)));
    assert_eq!(
        a.changed(Some("a")).now_or_never(),
        None,
        "another session's rows do not wake a session's page"
    );
    f.append(&f.audit(), &line("a", "d-1", 0));
    f.append(&f.audit(), &line("b", "d-2", 0));
    assert!(ingester.poll().is_ok());
    assert_eq!(a.changed(Some("a")).now_or_never(), Some(Some(3)));
    // What the page then reads: only the new rows of its session.
    let new = f.store.egress_since(Some("a"), 1, 100).unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].record.decision_id, "d-1");
}

#[tokio::test]
async fn the_spawned_ingester_stores_and_announces_new_lines() {
    let f = Fixture::new();
    let mut config = EgressIngestConfig::new(f.audit());
    config.poll_interval = Duration::from_millis(20);
    let ingester = EgressIngester::spawn(config, f.store.clone(), f.metrics.clone());
    let mut updates = ingester.subscribe();
    f.append(&f.audit(), &line("sesn_a", "d-0", 0));
    let latest = tokio::time::timeout(Duration::from_secs(10), updates.changed(Some("sesn_a")))
        .await
        .unwrap();
    assert_eq!(latest, Some(1));
    let page = f.store.egress_for_session("sesn_a", None, 10).unwrap();
    assert_eq!(page.rows.len(), 1);
    assert_eq!(ingester.metrics().records_ingested.get(), 1);
}

#[test]
fn metrics_register_under_their_documented_names() {
    let registry = prometheus::Registry::new();
    let metrics = EgressMetrics::new().unwrap();
    metrics.register(&registry).unwrap();
    let names: Vec<_> = registry
        .gather()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    for name in [
        "cordon_controller_egress_records_ingested_total",
        "cordon_controller_egress_malformed_lines_total",
        "cordon_controller_egress_ingest_lag_seconds",
        "cordon_controller_egress_rows_pruned_total",
    ] {
        assert!(names.iter().any(|n| n == name), "{name}: {names:?}");
    }
}

/// How fast a backlog is caught up (parse and store, one transaction per read of up to
/// `MAX_READ`), not a pass/fail test: `cargo test -p cordon-controller --release --lib
/// ingests_a_backlog -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: prints timings"]
fn ingests_a_backlog() {
    let f = Fixture::new();
    let lines: String = (0..100_000)
        .map(|i| line(&format!("sesn_{}", i % 20), &format!("d-{i}"), 0))
        .collect();
    f.append(&f.audit(), &lines);
    let mut ingester = f.ingester();
    let start = Instant::now();
    settle(&mut ingester);
    let took = start.elapsed();
    assert_eq!(f.metrics.records_ingested.get(), 100_000);
    println!(
        "ingested 100k lines ({} MiB) in {took:?}: {:.0} lines/s",
        lines.len() >> 20,
        100_000.0 / took.as_secs_f64()
    );
}
