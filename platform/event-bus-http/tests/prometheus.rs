//! The observability files against a real Prometheus: `promtool` checks and
//! unit-tests `observability/alerts.yml`; a Prometheus process (Debian's
//! `prometheus` package, started here, never as a service) scrapes a live
//! `/metrics` every second and evaluates the alerts, whose rules must load
//! healthy and fire on the service's real series; every query of
//! `observability/grafana-dashboard.json` runs against it, and those whose
//! metrics this test produces return data. One test: the recorder is
//! process-global.

use event_bus::nats::StreamSpec;
use event_bus::runner::{Event, Handler, Outcome, Runner};
use event_bus::status::LagMonitor;
use event_bus::{
    ConsumerConfig, EventBus, EventBusExt, InMemoryBus, Overflow, StartPosition, SubscribeOptions,
};
use event_bus_http::{install_prometheus, Monitoring};
use event_bus_testkit::nats_server::NatsServer;
use futures::StreamExt;
use serde_json::Value;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
mod common;
use common::get;

/// Prometheus's scrape job name for the service under test.
const JOB: &str = "event-bus-test";

/// Metrics the dashboard shows that this test cannot produce (the outbox
/// needs PostgreSQL): their panels must run, and may be empty.
const NOT_PRODUCED: &[&str] = &["event_bus_outbox_"];

fn observability(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../observability")
        .join(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_alerts_fire_and_dashboard_queries_answer() {
    let began = Instant::now();
    let alerts = observability("alerts.yml");
    let alerts = alerts
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", alerts.display()));

    // The rules parse, and their unit tests (alerts_test.yml) pass.
    promtool(&["check", "rules"], &alerts);
    promtool(&["test", "rules"], &observability("alerts_test.yml"));

    // The service: the recorder, /metrics on loopback.
    let handle = install_prometheus().expect("the first recorder of this process");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    let app = Monitoring::new().metrics(handle).router();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Prometheus, scraping it every second and evaluating the alerts.
    let prometheus = Prometheus::start(app_addr, &alerts).await;
    let prom = prometheus.addr;

    // The rules loaded, each evaluated without error.
    let names = alert_names(&alerts);
    assert!(names.len() >= 4, "alerts in alerts.yml: {names:?}");
    let rules = eventually(
        Duration::from_secs(10),
        "every rule evaluated, healthy",
        || async {
            let v = api(prom, "/api/v1/rules").await;
            let rules: Vec<Value> = v["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let healthy = names.iter().all(|n| {
                rules.iter().any(|r| {
                    r["name"] == n.as_str() && r["type"] == "alerting" && r["health"] == "ok"
                })
            });
            if healthy {
                Ok(rules)
            } else {
                Err(format!("{rules:#?}"))
            }
        },
    )
    .await;
    assert_eq!(rules.len(), names.len(), "{rules:#?}");
    for r in &rules {
        assert!(
            r["labels"]["severity"].is_string()
                && r["annotations"]["summary"].is_string()
                && r["annotations"]["description"].is_string(),
            "a severity label, summary and description: {r:#}"
        );
    }

    // Both backends, a durable consumer with acks and a dead letter, a
    // stalled one, lag monitors, a runner.
    let memory: std::sync::Arc<dyn EventBus> = std::sync::Arc::new(InMemoryBus::new());
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let nats = server
        .bus(&[
            StreamSpec::new("P", ["p.>"]),
            StreamSpec::new("PDLQ", ["dlq.>"]),
        ])
        .await
        .unwrap();
    let nats: std::sync::Arc<dyn EventBus> = std::sync::Arc::new(nats);

    for i in 0..20 {
        nats.publish(&format!("p.s{i}"), vec![1]).await.unwrap();
    }
    for i in 0..50 {
        memory
            .publish_envelope(event_bus::Envelope::new(format!("t.s{i}"), vec![1]))
            .await
            .unwrap();
    }
    let _ = memory.publish("t..bad", vec![]).await.unwrap_err();
    // Drops: a subscription of one message that nobody reads.
    let lossy = InMemoryBus::new();
    let _full = lossy
        .subscribe_with(
            "d.>",
            SubscribeOptions {
                capacity: 1,
                overflow: Overflow::DropNewest,
            },
        )
        .unwrap();
    for i in 0..3 {
        lossy.publish("d.x", vec![i]).await.unwrap();
    }

    let mut metered = nats
        .consume(ConsumerConfig::new("metered", "p.>").start(StartPosition::All))
        .await
        .unwrap();
    // Stalled: a consumer holding its first delivery, never answering.
    let mut stuck = memory
        .consume(ConsumerConfig::new("stuck", "mail.>").ack_wait(Duration::from_secs(60)))
        .await
        .unwrap();
    for i in 0..3 {
        memory.publish("mail.send", vec![i]).await.unwrap();
    }
    let _held = next(&mut stuck).await;
    let _memory_lag = LagMonitor::spawn(
        memory.clone(),
        [("stuck".to_string(), "mail.>".to_string())],
        Duration::from_millis(100),
        5,
    );
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
    for i in 0..5u32 {
        memory
            .publish("r.x", i.to_string().into_bytes())
            .await
            .unwrap();
    }

    // Scraped: the series appear in Prometheus, under their exported names.
    let nats_sent = format!(
        "sum(messaging_client_sent_messages_total{{job=\"{JOB}\", messaging_system=\"nats\", error_type=\"\"}})"
    );
    wait_value(prom, &nats_sent, |v| v == 20.0).await;
    // The dead-letters counter is scraped at 0 before the dead letter (a
    // rate needs the counter to move between two scrapes).
    let dead = format!(
        "event_bus_consumer_dead_letters_total{{job=\"{JOB}\", messaging_system=\"nats\", messaging_consumer_group_name=\"metered\"}}"
    );
    wait_value(prom, &dead, |v| v == 0.0).await;
    let errors = format!(
        "messaging_client_sent_messages_total{{job=\"{JOB}\", messaging_system=\"memory\", error_type=\"invalid_subject\"}}"
    );
    wait_value(prom, &errors, |v| v == 1.0).await;

    // The counters move: 5 more publishes, then a higher value in Prometheus.
    for i in 0..5 {
        nats.publish(&format!("p.more{i}"), vec![2]).await.unwrap();
    }
    // Deliveries: 24 acks, one dead letter; a second failed publish.
    for i in 0..25 {
        let d = next(&mut metered).await;
        if i == 7 {
            d.dead_letter("poison").await.unwrap();
        } else {
            d.ack().await.unwrap();
        }
    }
    let _ = memory.publish("t..bad", vec![]).await.unwrap_err();
    // Sampled once it has answered everything (held unanswered while the
    // test waited for scrapes, it would have been STALL).
    let _nats_lag = LagMonitor::spawn(
        nats.clone(),
        [("metered".to_string(), "p.>".to_string())],
        Duration::from_millis(200),
        5,
    );
    // 20, 5 more, the dead letter (published to dlq.metered).
    wait_value(prom, &nats_sent, |v| v == 26.0).await;
    wait_value(prom, &dead, |v| v == 1.0).await;
    wait_value(prom, &errors, |v| v == 2.0).await;
    for (query, want) in [
        (
            format!("event_bus_consumer_answers_total{{job=\"{JOB}\", messaging_consumer_group_name=\"metered\", event_bus_answer=\"ack\"}}"),
            24.0,
        ),
        (
            format!("event_bus_consumer_answers_total{{job=\"{JOB}\", messaging_consumer_group_name=\"metered\", event_bus_answer=\"dead_letter\"}}"),
            1.0,
        ),
        (
            format!("event_bus_runner_events_total{{job=\"{JOB}\", event_bus_runner=\"metered-runner\", event_bus_result=\"processed\"}}"),
            5.0,
        ),
        (
            format!("event_bus_consumer_lag_status{{job=\"{JOB}\", messaging_system=\"memory\", messaging_consumer_group_name=\"stuck\", event_bus_lag_status=\"STALL\"}}"),
            1.0,
        ),
        (
            format!("event_bus_consumer_pending{{job=\"{JOB}\", messaging_system=\"nats\", messaging_consumer_group_name=\"metered\"}} + event_bus_consumer_ack_pending{{job=\"{JOB}\", messaging_system=\"nats\", messaging_consumer_group_name=\"metered\"}}"),
            0.0,
        ),
        (
            format!("event_bus_consumer_lag_status{{job=\"{JOB}\", messaging_system=\"nats\", messaging_consumer_group_name=\"metered\", event_bus_lag_status=\"OK\"}}"),
            1.0,
        ),
        (
            format!("event_bus_memory_dropped_total{{job=\"{JOB}\"}}"),
            2.0,
        ),
        (
            format!("count(messaging_client_operation_duration_seconds_bucket{{job=\"{JOB}\", messaging_system=\"nats\", le=\"0.0001\"}})"),
            1.0,
        ),
    ] {
        wait_value(prom, &query, |v| v == want).await;
    }

    // The alerts fire on the real series: dead letters (no `for`: firing),
    // publish errors and the stalled consumer (active, pending their `for`);
    // not for the consumer that answered everything.
    let active = eventually(
        Duration::from_secs(20),
        "EventBusDeadLetters firing for metered, EventBusPublishErrors active for \
         invalid_subject, EventBusConsumerStalled active for stuck only",
        || async {
            let v = api(prom, "/api/v1/alerts").await;
            let alerts = v["data"]["alerts"].as_array().cloned().unwrap_or_default();
            let named = |name: &str| -> Vec<&Value> {
                alerts
                    .iter()
                    .filter(|a| a["labels"]["alertname"] == name && a["labels"]["job"] == JOB)
                    .collect()
            };
            let dead = named("EventBusDeadLetters");
            let errors = named("EventBusPublishErrors");
            let stalled = named("EventBusConsumerStalled");
            if dead.len() == 1
                && dead[0]["state"] == "firing"
                && dead[0]["labels"]["messaging_consumer_group_name"] == "metered"
                && errors.len() == 1
                && errors[0]["labels"]["error_type"] == "invalid_subject"
                && errors[0]["labels"]["messaging_system"] == "memory"
                && stalled.len() == 1
                && stalled[0]["labels"]["messaging_consumer_group_name"] == "stuck"
            {
                Ok(alerts.clone())
            } else {
                Err(format!("{alerts:#?}"))
            }
        },
    )
    .await;
    let stalled = active
        .iter()
        .find(|a| a["labels"]["alertname"] == "EventBusConsumerStalled")
        .unwrap();
    assert_eq!(stalled["labels"]["event_bus_lag_status"], "STALL");
    assert_eq!(stalled["labels"]["messaging_system"], "memory");
    assert_eq!(stalled["labels"]["severity"], "critical");
    assert_eq!(
        stalled["annotations"]["summary"], "Consumer stuck is STALL",
        "{stalled:#}"
    );
    let dead = active
        .iter()
        .find(|a| a["labels"]["alertname"] == "EventBusDeadLetters")
        .unwrap();
    assert!(
        dead["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("consumer metered (nats, job event-bus-test)"),
        "{dead:#}"
    );

    // The dashboard: a Prometheus data source variable, and every query
    // answers (with data when this test produced its metrics).
    let dashboard: Value = {
        let path = observability("grafana-dashboard.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a ${{datasource}} variable of type prometheus: {variables:#?}"
    );
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    // The job variable's values come from the bus's series.
    let job_var = variables.iter().find(|v| v["name"] == "job").unwrap();
    let definition = job_var["definition"].as_str().unwrap();
    let selector = definition
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(", job)"))
        .unwrap_or_else(|| panic!("label_values(<selector>, job): {definition}"));
    let jobs = api(
        prom,
        &format!("/api/v1/label/job/values?match[]={}", encode(selector)),
    )
    .await;
    assert!(
        jobs["data"].as_array().unwrap().contains(&Value::from(JOB)),
        "{jobs}"
    );

    let mut panels = Vec::new();
    collect_panels(&dashboard["panels"], &mut panels);
    let mut targets = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title}: the ${{datasource}} variable"
        );
        let panel_targets = panel["targets"].as_array().unwrap();
        assert!(!panel_targets.is_empty(), "panel {title} has no query");
        for t in panel_targets {
            targets += 1;
            let expr = t["expr"].as_str().unwrap();
            let query = expr.replace("$__rate_interval", "1m").replace("$job", ".+");
            assert!(
                !query.contains('$'),
                "panel {title}: a variable this test does not substitute: {expr}"
            );
            let produced = !NOT_PRODUCED.iter().any(|m| query.contains(m));
            let what = format!("panel {title:?}: {query}");
            let result = eventually(Duration::from_secs(15), &what, || async {
                let v = api(prom, &format!("/api/v1/query?query={}", encode(&query))).await;
                let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
                if produced && result.is_empty() {
                    Err(format!("no data yet: {v}"))
                } else {
                    Ok(result)
                }
            })
            .await;
            if produced {
                assert!(
                    result.iter().all(|s| s["metric"]["job"] == JOB),
                    "{what}: {result:#?}"
                );
            }
        }
    }
    assert!(targets >= 12, "dashboard queries: {targets}");

    runner.shutdown().await;
    drop(prometheus);
    let took = began.elapsed();
    // Printed, not asserted: a loaded machine may take longer; the
    // assertions above are the test.
    println!("prometheus test took {took:?}");
}

/// The next delivery, within 10 s.
async fn next(consumer: &mut event_bus::ConsumerStream) -> event_bus::Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the consumer stream ended")
        .unwrap()
}

/// The alert names of a rules file (its `- alert: <name>` lines).
fn alert_names(rules: &Path) -> Vec<String> {
    std::fs::read_to_string(rules)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

/// Every panel, including those inside rows.
fn collect_panels(panels: &Value, out: &mut Vec<Value>) {
    for p in panels.as_array().into_iter().flatten() {
        out.push(p.clone());
        collect_panels(&p["panels"], out);
    }
}

/// `promtool <args> <file>` succeeds (its output in the failure message).
fn promtool(args: &[&str], file: &Path) {
    let out = Command::new(binary("promtool"))
        .args(args)
        .arg(file)
        .current_dir(file.parent().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {} {} failed:\n{}{}",
        args.join(" "),
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/usr/bin/<name>`, else `<name>` on PATH; a panic saying how to install
/// it otherwise (never a silent skip).
fn binary(name: &str) -> PathBuf {
    let debian = Path::new("/usr/bin").join(name);
    if debian.is_file() {
        return debian;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found (/usr/bin or PATH): run ./scripts/install-test-deps.sh \
                 (Debian's prometheus package; nothing is started as a service)"
            )
        })
}

/// Polls `f` until it returns `Ok`, every 200 ms; panics after `timeout`
/// naming `what` and the last `Err` it returned.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen:\n{last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits (20 s at most) until instant query `query` returns exactly one
/// sample whose value satisfies `ok`.
async fn wait_value(prom: SocketAddr, query: &str, ok: impl Fn(f64) -> bool) {
    eventually(Duration::from_secs(20), query, || async {
        let v = api(prom, &format!("/api/v1/query?query={}", encode(query))).await;
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        match result.as_slice() {
            [one] => {
                let value: f64 = one["value"][1].as_str().unwrap().parse().unwrap();
                if ok(value) {
                    Ok(())
                } else {
                    Err(format!("value {value}"))
                }
            }
            _ => Err(format!("{result:?}")),
        }
    })
    .await
}

/// GET `path` from Prometheus's HTTP API: the JSON body, whose status must
/// be `success` (the error and the path in the panic otherwise).
async fn api(prom: SocketAddr, path: &str) -> Value {
    let (code, body) = get(prom, path).await;
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: {code}, not JSON ({e}): {body}"));
    assert_eq!(v["status"], "success", "GET {path}: {code} {v}");
    v
}

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus process of this test: killed, and its directory deleted,
/// when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

/// Temporary directories of these Prometheus processes start with this.
const DIR_PREFIX: &str = "event-bus-test-prometheus-";

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second and
    /// evaluating `rules` every second, on a free loopback port, its data in
    /// a temporary directory; waits (15 s at most) until `/-/ready`.
    async fn start(target: SocketAddr, rules: &Path) -> Self {
        let binary = binary("prometheus");
        reap_orphans();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("owner"), std::process::id().to_string()).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n",
                rules = rules.display().to_string(),
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        std::fs::write(dir.join("pid"), child.id().to_string()).unwrap();
        let mut prometheus = Prometheus { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!(
                    "prometheus exited ({status}) before it was ready:\n{}",
                    prometheus.log()
                );
            }
            if ready(addr).await {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "prometheus not ready on {addr} within 15 s:\n{}",
                    prometheus.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

/// Whether `/-/ready` answers 200 (connection refused: not yet).
async fn ready(addr: SocketAddr) -> bool {
    matches!(
        event_bus_testkit::http::try_get(addr, "/-/ready", Duration::from_secs(2)).await,
        Ok((200, _))
    )
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills the Prometheus processes of test processes that died without
/// running their destructors (SIGKILL), and deletes their directories.
/// Linux only (reads `/proc`); a Prometheus is killed only if its command
/// line names its directory (a recycled pid is left alone).
fn reap_orphans() {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let owner = read("owner");
        if owner.is_empty() || Path::new(&format!("/proc/{}", owner.trim())).exists() {
            continue;
        }
        let pid = read("pid");
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
        if !pid.is_empty()
            && String::from_utf8_lossy(&cmdline).contains(dir.to_string_lossy().as_ref())
        {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
