//! Metrics where they meet other features: a runner restarted in the same
//! process under the same name, two instances of one runner name, and two
//! tenants running the same runner name (a real nats-server). One test: the
//! recorder is process-global.

use event_bus::runner::{Event, Handler, Outcome, Runner, RunnerHandle};
use event_bus::status::LagMonitor;
use event_bus::{EventBus, InMemoryBus};
use event_bus_http::install_prometheus;
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::wait;
use std::sync::Arc;
use std::time::Duration;

/// A generous bound for a loaded machine.
const BOUND: Duration = Duration::from_secs(30);

/// The value of the sample of `name` whose labels include all of `labels`
/// (`key="value"` pairs), if exactly one does.
fn sample(exposition: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let found: Vec<f64> = exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|kv| l.contains(kv)))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    match found.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

async fn spawn_runner(bus: Arc<dyn EventBus>, name: &str, subject: &str) -> RunnerHandle {
    Runner::builder(bus, name)
        .handler(Handler::new(
            "h",
            subject,
            |_e: Event<'_, u32>, _tx: &mut ()| Outcome::Ack,
        ))
        .build()
        .spawn()
        .await
        .unwrap()
}

/// Publishes `n` events to `subject` and waits until `runner` processed
/// `total`.
async fn feed(bus: &Arc<dyn EventBus>, runner: &RunnerHandle, subject: &str, n: u32, total: u64) {
    for i in 0..n {
        bus.publish(subject, i.to_string().into_bytes())
            .await
            .unwrap();
    }
    wait::until(BOUND, "the runner processed its events", || {
        runner.report().processed == total
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_counters_add_up_and_consumer_series_are_per_tenant() {
    let handle = install_prometheus().expect("the first recorder of this process");
    let processed = |runner: &str, tenant: Option<&str>| {
        let r = format!("event_bus_runner=\"{runner}\"");
        let t = tenant.map(|t| format!("event_bus_tenant=\"{t}\""));
        let mut labels = vec![r.as_str(), "event_bus_result=\"processed\""];
        labels.extend(t.as_deref());
        sample(&handle.render(), "event_bus_runner_events_total", &labels)
    };

    // A runner restarted in the same process under the same name: 10, then
    // 62 processed; the counter says 72 (not 62, the larger run).
    let memory: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let first = spawn_runner(memory.clone(), "restarted", "re.x").await;
    feed(&memory, &first, "re.x", 10, 10).await;
    assert_eq!(first.shutdown().await.processed, 10);
    assert_eq!(processed("restarted", None), Some(10.0));
    let second = spawn_runner(memory.clone(), "restarted", "re.x").await;
    feed(&memory, &second, "re.x", 62, 62).await;
    assert_eq!(second.shutdown().await.processed, 62);
    assert_eq!(processed("restarted", None), Some(72.0));

    // Two instances of one runner name at once (two buses): 30 + 50.
    let (a_bus, b_bus): (Arc<dyn EventBus>, Arc<dyn EventBus>) =
        (Arc::new(InMemoryBus::new()), Arc::new(InMemoryBus::new()));
    let a = spawn_runner(a_bus.clone(), "twice", "tw.x").await;
    let b = spawn_runner(b_bus.clone(), "twice", "tw.x").await;
    feed(&a_bus, &a, "tw.x", 30, 30).await;
    feed(&b_bus, &b, "tw.x", 50, 50).await;
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(processed("twice", None), Some(80.0));

    // Two tenants run the same runner name; acme's stops with a backlog.
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let base = server.bus(&[]).await.unwrap();
    let acme: Arc<dyn EventBus> = Arc::new(base.for_tenant("acme").unwrap());
    let globex: Arc<dyn EventBus> = Arc::new(base.for_tenant("globex").unwrap());
    let acme_runner = spawn_runner(acme.clone(), "billing", "inv.x").await;
    let globex_runner = spawn_runner(globex.clone(), "billing", "inv.x").await;
    feed(&acme, &acme_runner, "inv.x", 1, 1).await;
    feed(&globex, &globex_runner, "inv.x", 2, 2).await;
    acme_runner.shutdown().await;
    for i in 0..5u32 {
        acme.publish("inv.x", i.to_string().into_bytes())
            .await
            .unwrap();
    }
    let lags: Vec<LagMonitor> = [&acme, &globex]
        .into_iter()
        .map(|bus| {
            LagMonitor::spawn(
                bus.clone(),
                [("billing-h".to_string(), "inv.x".to_string())],
                Duration::from_millis(50),
                4,
            )
        })
        .collect();
    // Its backlog: not delivered yet, or delivered to the stopped instance's
    // last pull and never answered (JetStream serves an outstanding pull).
    let pending = |tenant: &str| {
        let text = handle.render();
        let labels = [
            "messaging_consumer_group_name=\"billing-h\"",
            &format!("event_bus_tenant=\"{tenant}\""),
        ];
        Some(
            sample(&text, "event_bus_consumer_pending", &labels)?
                + sample(&text, "event_bus_consumer_ack_pending", &labels)?,
        )
    };
    let began = std::time::Instant::now();
    while !(pending("acme") == Some(5.0) && pending("globex") == Some(0.0)) {
        let text = handle.render();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("billing-h")).collect();
        assert!(
            began.elapsed() < BOUND,
            "acme's backlog not on its own series within {BOUND:?}: {lines:#?}\n{:?}",
            lags.iter().map(|l| l.statuses()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = handle.render();
    for line in text
        .lines()
        .filter(|l| l.contains("messaging_consumer_group_name=\"billing-h\""))
    {
        assert!(
            line.contains("event_bus_tenant=\""),
            "a per-consumer series without its tenant: {line}"
        );
    }
    assert!(
        sample(
            &text,
            "event_bus_consumer_lag_status",
            &[
                "event_bus_tenant=\"acme\"",
                "messaging_consumer_group_name=\"billing-h\"",
                "event_bus_lag_status=\"OK\"",
            ],
        )
        .is_some(),
        "acme's lag status series: {text}"
    );
    globex_runner.shutdown().await;
    assert_eq!(processed("billing", Some("acme")), Some(1.0));
    assert_eq!(processed("billing", Some("globex")), Some(2.0));
    drop(lags);
}
