//! `bus dlq` on a backend written outside `event-bus` ([`WrappedBus`]: it
//! forwards to an in-memory bus and has no dead-letter code of its own):
//! the command bodies take an `Arc<dyn EventBus>`, so listing, showing,
//! replaying and discarding work on any backend, in process.

use event_bus::{ErrorKind, EventBus};
use event_bus_cli::dlq::{self, DlqFilter};
use event_bus_testkit::wrapped::WrappedBus;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

mod common;

/// A bound for anything to happen on a loaded machine.
const BOUND: Duration = Duration::from_secs(30);

/// [`common::three_dead_letters`] on a [`WrappedBus`].
async fn three_dead_letters() -> Arc<dyn EventBus> {
    let bus: Arc<dyn EventBus> = Arc::new(WrappedBus::new());
    common::three_dead_letters(&bus).await;
    bus
}

fn filter(error_contains: Option<&str>) -> DlqFilter {
    DlqFilter {
        error_contains: error_contains.map(str::to_string),
        ..DlqFilter::on("dlq.billing")
    }
}

fn strings(rows: &[serde_json::Value], key: &str) -> Vec<String> {
    rows.iter()
        .map(|r| r[key].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_show_replay_and_discard_on_a_third_party_backend() {
    let bus = three_dead_letters().await;

    // ls: all three, oldest first, with their origin; the filters apply.
    let rows = dlq::list(bus.clone(), &filter(None)).await.unwrap();
    assert_eq!(
        strings(&rows, "original_subject"),
        ["orders.a", "orders.b", "orders.c"]
    );
    assert_eq!(strings(&rows, "consumer"), ["billing"; 3]);
    assert_eq!(strings(&rows, "reason"), ["bad a", "bad b", "bad c"]);
    assert!(rows.iter().all(|r| r["delivery_count"] == 1), "{rows:?}");
    let only_b = dlq::list(bus.clone(), &filter(Some("bad b")))
        .await
        .unwrap();
    assert_eq!(strings(&only_b, "original_subject"), ["orders.b"]);

    // show: one whole, with its headers; an unknown id is NotFound.
    let id = rows[0]["id"].as_str().unwrap();
    let shown = dlq::show(bus.clone(), "dlq.billing", id).await.unwrap();
    assert_eq!(
        shown["headers"][event_bus::dlq::ORIGINAL_SUBJECT],
        "orders.a",
        "{shown}"
    );
    let e = dlq::show(bus.clone(), "dlq.billing", "no-such-id")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // replay --dry-run changes nothing; replay puts the event back on its
    // original subject and removes the letter; a second replay finds none.
    let mut replayed = bus.subscribe("orders.a").await.unwrap();
    let would = dlq::replay(bus.clone(), &filter(Some("bad a")), true, None, |_| {})
        .await
        .unwrap();
    assert_eq!(strings(&would, "original_subject"), ["orders.a"]);
    assert_eq!(
        dlq::list(bus.clone(), &filter(None)).await.unwrap().len(),
        3
    );
    let mut steps = Vec::new();
    let done = dlq::replay(bus.clone(), &filter(Some("bad a")), false, None, |n| {
        steps.push(n)
    })
    .await
    .unwrap();
    assert_eq!(strings(&done, "original_subject"), ["orders.a"]);
    assert_eq!(steps, [1], "the progress callback, with the total");
    let m = tokio::time::timeout(BOUND, replayed.next())
        .await
        .expect("the replayed event")
        .unwrap();
    assert_eq!(&m.payload[..], b"a");
    let e = dlq::replay(bus.clone(), &filter(Some("bad a")), false, None, |_| {})
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("nothing to replay"), "{e}");

    // discard: the other two go, without a publish; then nothing is left
    // and a second discard is NotFound.
    let mut originals = bus.subscribe("orders.*").await.unwrap();
    let gone = dlq::discard(bus.clone(), &filter(None), false)
        .await
        .unwrap();
    assert_eq!(strings(&gone, "original_subject"), ["orders.b", "orders.c"]);
    assert!(dlq::list(bus.clone(), &filter(None))
        .await
        .unwrap()
        .is_empty());
    let e = dlq::discard(bus.clone(), &filter(None), false)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    bus.publish("orders.marker", b"m".to_vec()).await.unwrap();
    let next = tokio::time::timeout(BOUND, originals.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.subject, "orders.marker", "a discard publishes nothing");
}

/// Bad input is an error naming it, not a panic.
#[tokio::test]
async fn a_bad_subject_is_an_error() {
    let bus: Arc<dyn EventBus> = Arc::new(WrappedBus::new());
    let e = dlq::list(bus.clone(), &DlqFilter::on("dlq..x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidPattern, "{e}");
    assert!(e.to_string().contains("dlq..x"), "{e}");
    // A rate that would overflow a pause is not a panic either (and with
    // nothing to replay, no pause is taken).
    let e = dlq::replay(bus, &DlqFilter::on("dlq.x"), false, Some(1e-300), |_| {})
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}
