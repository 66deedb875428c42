//! Metrics end to end: the Prometheus recorder installed, the bus's
//! operations on both backends (a real nats-server) show up on `/metrics`
//! with bounded labels (10,000 distinct subjects make no new series),
//! durations as histograms with buckets (not summaries), consumer answers
//! and runner results counted, and `promtool check metrics` accepts the
//! exposition. One test: the recorder is process-global.

use event_bus::nats::StreamSpec;
use event_bus::runner::{boxed, Event, Handler, Outcome, Runner};
use event_bus::{ConsumerConfig, EventBus, EventBusExt, InMemoryBus};
use event_bus_http::{install_prometheus, Monitoring};
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::wait;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
mod common;
use common::get;

/// The exposition's sample lines (no comments) of metric `name`.
fn series<'a>(exposition: &'a str, name: &str) -> Vec<&'a str> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .collect()
}

fn value(line: &str) -> f64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_show_up_on_metrics_with_bounded_labels() {
    let handle = install_prometheus().expect("the first recorder of this process");
    assert!(
        install_prometheus().is_err(),
        "a second recorder is refused"
    );

    let memory: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let nats = server.bus(&[StreamSpec::new("M", ["m.>"])]).await.unwrap();
    let nats: Arc<dyn EventBus> = Arc::new(nats);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Monitoring::new().metrics(handle).router();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // 10,000 distinct subjects: one series.
    for i in 0..10_000 {
        memory
            .publish_envelope(event_bus::Envelope::new(format!("t.s{i}"), vec![1]))
            .await
            .unwrap();
    }
    let _ = memory.publish("t..bad", vec![]).await.unwrap_err();
    for i in 0..20 {
        nats.publish(&format!("m.s{i}"), vec![1]).await.unwrap();
    }
    // A durable consumer: deliveries and answers.
    let mut consumer = nats
        .consume(ConsumerConfig::new("metered", "m.>").start(event_bus::StartPosition::All))
        .await
        .unwrap();
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery within 10 s")
            .unwrap()
            .unwrap()
            .ack()
            .await
            .unwrap();
    }
    // A runner: its results, copied once a second.
    let runner = Runner::builder(memory.clone(), "metered-runner")
        .handler(Handler::new(
            "h",
            "r.x",
            |_e: Event<'_, u32>, _tx: &mut ()| Outcome::Ack,
        ))
        .build()
        .spawn()
        .await
        .unwrap();
    // An async handler that takes at least 2 ms: its timed attempts
    // measure the handler's future until its outcome, not only the call.
    let slow = Runner::builder(memory.clone(), "slow-runner")
        .handler(Handler::new(
            "h",
            "r.slow",
            boxed(|_e: Event<'_, u32>, _tx| {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    Outcome::Ack
                })
            }),
        ))
        .build()
        .spawn()
        .await
        .unwrap();
    for i in 0..64u32 {
        for subject in ["r.x", "r.slow"] {
            memory
                .publish(subject, i.to_string().into_bytes())
                .await
                .unwrap();
        }
    }

    let exposition = || async { get(addr, "/metrics").await.1 };
    wait::until_async(
        Duration::from_secs(10),
        "both runners' results exported",
        || async {
            series(&exposition().await, "event_bus_runner_events_total")
                .iter()
                .filter(|l| l.contains("event_bus_result=\"processed\"") && value(l) == 64.0)
                .count()
                == 2
        },
    )
    .await;
    let (code, text) = get(addr, "/metrics").await;
    assert_eq!(code, 200);

    let sent = series(&text, "messaging_client_sent_messages_total");
    let memory_ok: Vec<_> = sent
        .iter()
        .filter(|l| l.contains("messaging_system=\"memory\"") && !l.contains("error_type"))
        .collect();
    assert_eq!(
        memory_ok.len(),
        1,
        "one series for 10,000 subjects: {sent:?}"
    );
    assert_eq!(value(memory_ok[0]), 10_000.0, "{sent:?}");
    assert!(
        sent.iter()
            .any(|l| l.contains("error_type=\"invalid_subject\"") && value(l) == 1.0),
        "the failed publish by error kind: {sent:?}"
    );
    assert!(
        !text.contains("t.s1") && !text.contains("t_s1"),
        "a subject leaked into a label"
    );
    let nats_ok: Vec<_> = sent
        .iter()
        .filter(|l| l.contains("messaging_system=\"nats\""))
        .collect();
    assert_eq!(nats_ok.len(), 1, "{sent:?}");
    assert_eq!(value(nats_ok[0]), 20.0);

    // Durations as histograms with the bus's buckets, never summaries.
    let buckets = series(&text, "messaging_client_operation_duration_seconds_bucket");
    assert!(
        buckets.iter().any(|l| l.contains("le=\"0.0001\"")),
        "{text}"
    );
    assert!(!text.contains("quantile="), "a summary: {text}");
    // Handler durations: one attempt in 16 timed (64 events: at least one
    // thread ran 16 of them).
    let process = series(&text, "messaging_process_duration_seconds_count");
    assert!(
        process.iter().any(
            |l| l.contains("messaging_consumer_group_name=\"metered-runner-h\"")
                && (1.0..=64.0 / 16.0 + 2.0).contains(&value(l))
        ),
        "{process:?}"
    );
    let slow_count = process
        .iter()
        .find(|l| l.contains("messaging_consumer_group_name=\"slow-runner-h\""))
        .map(|l| value(l))
        .unwrap_or_else(|| panic!("the async handler timed: {process:?}"));
    assert!(
        (1.0..=64.0 / 16.0 + 2.0).contains(&slow_count),
        "{process:?}"
    );
    let slow_sum = series(&text, "messaging_process_duration_seconds_sum")
        .into_iter()
        .find(|l| l.contains("messaging_consumer_group_name=\"slow-runner-h\""))
        .map(value)
        .expect("the async handler's duration sum");
    assert!(
        slow_sum / slow_count >= 0.002,
        "each timed attempt lasted the handler's 2 ms: sum {slow_sum} over {slow_count}"
    );

    let consumed = series(&text, "messaging_client_consumed_messages_total");
    assert!(
        consumed
            .iter()
            .any(|l| l.contains("messaging_consumer_group_name=\"metered\"") && value(l) >= 3.0),
        "{consumed:?}"
    );
    let answers = series(&text, "event_bus_consumer_answers_total");
    assert!(
        answers
            .iter()
            .any(|l| l.contains("event_bus_answer=\"ack\"") && value(l) == 3.0),
        "{answers:?}"
    );
    // Prometheus's own linter accepts the exposition.
    promtool_accepts(&text);
    runner.shutdown().await;
    slow.shutdown().await;
}

/// `promtool check metrics` on `exposition`: exits 0 (lint problems such
/// as a counter without `_total` are errors too).
fn promtool_accepts(exposition: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool not found ({e}): run ./scripts/install-test-deps.sh (Debian's prometheus package)")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
