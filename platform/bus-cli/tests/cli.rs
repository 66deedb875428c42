//! The `bus` binary against a real nats-server: publish and subscribe,
//! streams and consumers, health and its exit code, usage errors, and a
//! dead-letter round trip (a poison event lands in the DLQ, `bus dlq ls`
//! shows it, `bus dlq replay` brings it back and a fixed handler consumes it).

use event_bus::nats::StreamSpec;
use event_bus::runner::{Event, Handler, Outcome, Runner};
use event_bus::{EventBus, NatsBus, StartPosition};
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::wait;
use serde_json::Value;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::succeeded;

/// Runs `bus` with `args` against `url` (no other configuration).
fn bus(url: &str, args: &[&str]) -> Output {
    common::bus_on_nats(url, args)
}

/// Publishes `{"i": i}` to `audit.login` for each `i`.
fn publish_audit_logins(url: &str, numbers: std::ops::Range<u32>) {
    for i in numbers {
        succeeded(&bus(
            url,
            &["pub", "audit.login", &format!("{{\"i\":{i}}}")],
        ));
    }
}

fn json(out: &Output) -> Value {
    succeeded(out);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// [`json`] of a `bus` run, on a blocking thread (the test's runtime keeps
/// serving the runner meanwhile).
async fn json_off_thread(url: &str, args: &[&str]) -> Value {
    let url = url.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        json(&bus(&url, &args))
    })
    .await
    .expect("the bus run's thread")
}

/// Runs `bus` off the test's runtime, checks that it failed with exit code
/// 1, and returns its stderr.
async fn failed_off_thread(url: &str, args: &[&str]) -> String {
    let url = url.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bus(&url, &args)
    })
    .await
    .expect("the bus run's thread");
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The subject of the next event the test's handler handled, within 10 s.
async fn next_handled(handled: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), handled.recv())
        .await
        .expect("an event handled within 10 s")
        .expect("the handler is alive")
}

async fn server_with_streams() -> (NatsServer, NatsBus) {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let nats = server
        .bus(&[
            StreamSpec::new("ORDERS", ["orders.>"]),
            StreamSpec::new("DLQ", ["dlq.>"]),
        ])
        .await
        .unwrap();
    (server, nats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_streams_consumers_and_health() {
    let (server, _nats) = server_with_streams().await;
    let url = server.url();
    let u = url.clone();
    // A subscriber first (it sees new messages), then three publishes.
    let sub = tokio::task::spawn_blocking(move || {
        bus(
            &u,
            &[
                "sub",
                "orders.>",
                "--count",
                "3",
                "--timeout",
                "10s",
                "--headers",
                "--json",
            ],
        )
    });
    // Wait until the subscription exists: a consumer appears on ORDERS.
    wait::until(
        Duration::from_secs(10),
        "the subscriber to start (a consumer on ORDERS)",
        || {
            json(&bus(&url, &["streams", "info", "ORDERS", "--json"]))["consumers"].as_u64()
                > Some(0)
        },
    )
    .await;
    let out = bus(
        &url,
        &[
            "pub",
            "orders.created",
            r#"{"n": {{counter}}}"#,
            "-H",
            "trace:abc",
            "--count",
            "3",
            "--id",
            "o",
            "--json",
        ],
    );
    succeeded(&out);
    let acks: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(acks.len(), 3);
    assert_eq!(acks[0]["stream"], "ORDERS");
    // The same ids again: duplicates.
    let again = bus(
        &url,
        &["pub", "orders.created", "x", "--id", "o-1", "--json"],
    );
    assert_eq!(json(&again)["duplicate"], true);

    let sub = sub.await.unwrap();
    succeeded(&sub);
    let got: Vec<Value> = String::from_utf8_lossy(&sub.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0]["payload"]["n"], 1);
    assert_eq!(got[2]["payload"]["n"], 3);
    assert_eq!(got[1]["headers"]["trace"], "abc");
    assert_eq!(got[1]["id"], "o-2");

    let streams = json(&bus(&url, &["streams", "ls", "--json"]));
    let orders = streams
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ORDERS")
        .unwrap();
    assert_eq!(orders["messages"], 3);
    let table = bus(&url, &["streams", "ls"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.starts_with("STREAM") && text.contains("ORDERS"),
        "{text}"
    );

    let health = bus(&url, &["health", "--json"]);
    assert_eq!(json(&health)["status"], "healthy");

    // Usage errors: exit code 2, naming the argument.
    let bad = bus(&url, &["pub"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("<SUBJECT>"));
    let bad = bus(&url, &["pub", "orders.x", "-H", "no-colon"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--header"));
    let bad = bus(&url, &["pub", "orders..x"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("orders..x"));

    // Unhealthy: exit code 1 once the server is gone, and with `--json`
    // the health shape of docs/cli.md (not the error shape).
    drop(server);
    let down = bus(&url, &["health"]);
    assert_eq!(
        down.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&down.stdout)
    );
    let down = bus(&url, &["health", "--json"]);
    assert_eq!(down.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&down.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&down.stdout)));
    assert_eq!(v["backend"], "nats", "{v}");
    assert_eq!(v["status"], "unhealthy", "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    assert!(v.get("error").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_goes_to_the_dlq_and_is_replayed_after_the_fix() {
    let (server, nats) = server_with_streams().await;
    let url = server.url();
    let bus_: Arc<dyn EventBus> = Arc::new(nats);
    let fixed = Arc::new(AtomicBool::new(false));
    let (tx, mut handled) = tokio::sync::mpsc::unbounded_channel::<String>();
    let f = fixed.clone();
    let runner = Runner::builder(bus_.clone(), "billing")
        .handler(Handler::new(
            "charge",
            "orders.>",
            move |e: Event<'_, Value>, _tx: &mut ()| {
                if e.data["poison"] == true && !f.load(Ordering::SeqCst) {
                    return Outcome::DeadLetter("cannot charge a poison order".into());
                }
                let _ = tx.send(e.message.subject.to_string());
                Outcome::Ack
            },
        ))
        .start(StartPosition::All)
        .build()
        .spawn()
        .await
        .unwrap();
    bus_.publish("orders.bad", br#"{"poison": true}"#.to_vec())
        .await
        .unwrap();
    bus_.publish("orders.good", br#"{"poison": false}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(next_handled(&mut handled).await, "orders.good");

    // The DLQ shows the poison event, with why.
    let ls = ["dlq", "ls", "dlq.billing", "--json"];
    wait::until_async(
        Duration::from_secs(10),
        "the poison event in `bus dlq ls`",
        || async {
            !json_off_thread(&url, &ls)
                .await
                .as_array()
                .unwrap()
                .is_empty()
        },
    )
    .await;
    let listed = json_off_thread(&url, &ls).await;
    let dead = listed.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{listed}");
    assert_eq!(dead[0]["original_subject"], "orders.bad");
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("poison"),
        "{listed}"
    );
    assert!(
        dead[0]["dead_lettered_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{listed}"
    );
    // The table has the time column (as the README shows).
    let u = url.clone();
    let table = tokio::task::spawn_blocking(move || bus(&u, &["dlq", "ls", "dlq.billing"]))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.lines().next().is_some_and(|h| h.contains("TIME")),
        "{text}"
    );
    assert!(
        text.contains(dead[0]["dead_lettered_at"].as_str().unwrap()),
        "{text}"
    );
    let id = dead[0]["id"].as_str().unwrap().to_string();
    let (u, i) = (url.clone(), id.clone());
    let (shown, recent) = tokio::task::spawn_blocking(move || {
        (
            json(&bus(&u, &["dlq", "show", "dlq.billing", &i, "--json"])),
            json(&bus(
                &u,
                &["dlq", "ls", "dlq.billing", "--since", "1h", "--json"],
            )),
        )
    })
    .await
    .unwrap();
    assert_eq!(shown["id"], id.as_str());
    assert!(
        shown["headers"]["Bus-Dlq-Last-Error"]
            .as_str()
            .unwrap()
            .contains("poison"),
        "{shown}"
    );
    assert_eq!(shown["payload"], r#"{"poison": true}"#);
    assert_eq!(recent.as_array().unwrap().len(), 1, "{recent}");

    // A dry run changes nothing; filters that match nothing replay nothing.
    let dry = json_off_thread(
        &url,
        &["dlq", "replay", "dlq.billing", "--dry-run", "--json"],
    )
    .await;
    assert_eq!(dry["count"], 1);
    // ... it published nothing (ORDERS holds the two events) and left the
    // dead letter in place.
    let orders_count =
        |u: &str| json(&bus(u, &["streams", "info", "ORDERS", "--json"]))["messages"].clone();
    assert_eq!(orders_count(&url), 2);
    let still = json_off_thread(&url, &["dlq", "ls", "dlq.billing", "--json"]).await;
    assert_eq!(still.as_array().unwrap().len(), 1, "{still}");
    // Nothing matches the filter: nothing to act on is a failure that says why.
    let none = failed_off_thread(
        &url,
        &[
            "dlq",
            "replay",
            "dlq.billing",
            "--error-contains",
            "timeout",
            "--json",
        ],
    )
    .await;
    assert!(none.contains("nothing to replay"), "{none}");
    assert!(none.contains("error containing \"timeout\""), "{none}");

    // The handler is fixed; replay brings the event back and it is handled.
    fixed.store(true, Ordering::SeqCst);
    let replayed = json_off_thread(&url, &["dlq", "replay", "dlq.billing", "--json"]).await;
    assert_eq!(replayed["count"], 1, "{replayed}");
    assert_eq!(next_handled(&mut handled).await, "orders.bad");
    // Nothing left in the DLQ, for any reader: a fresh listing under
    // another pattern, and the stream itself.
    let after = json_off_thread(&url, &["dlq", "ls", "dlq.billing", "--json"]).await;
    assert_eq!(after.as_array().unwrap().len(), 0, "{after}");
    let after = json_off_thread(&url, &["dlq", "ls", "dlq.>", "--json"]).await;
    assert_eq!(after.as_array().unwrap().len(), 0, "{after}");
    let dlq_stream = json(&bus(&url, &["streams", "info", "DLQ", "--json"]));
    assert_eq!(dlq_stream["messages"], 0, "{dlq_stream}");
    // A second replay finds nothing to replay: the event was handled once.
    let again = failed_off_thread(&url, &["dlq", "replay", "dlq.>", "--json"]).await;
    assert!(again.contains("nothing to replay"), "{again}");
    assert_eq!(orders_count(&url), 3, "one replay published");

    let consumers = json(&bus(&url, &["consumers", "ls", "ORDERS", "--json"]));
    let billing = consumers
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "billing-charge")
        .unwrap_or_else(|| panic!("{consumers}"));
    assert_eq!(billing["pending"], 0);
    assert_eq!(billing["lag_status"], "OK", "{consumers}");
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_ensure_consume_schema_and_outbox_commands() {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();

    // streams ensure: created, then unchanged, then the drift of a change.
    let config = dir.path().join("bus.toml");
    std::fs::write(
        &config,
        "type = \"nats\"\n[[nats.streams]]\nname = \"AUDIT\"\nsubjects = [\"audit.>\"]\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let v = json(&bus(&url, &["streams", "ensure", c, "--json"]));
    assert_eq!(v[0]["action"], "created", "{v}");
    let v = json(&bus(&url, &["streams", "ensure", c, "--json"]));
    assert_eq!(v[0]["action"], "unchanged", "{v}");
    std::fs::write(
        &config,
        "type = \"nats\"\n[[nats.streams]]\nname = \"AUDIT\"\nsubjects = [\"audit.>\", \"audit2.>\"]\n",
    )
    .unwrap();
    let v = json(&bus(&url, &["streams", "ensure", c, "--json"]));
    assert_eq!(v[0]["action"], "updated", "{v}");
    assert!(
        v[0]["drift"][0].as_str().unwrap().contains("subjects"),
        "{v}"
    );

    // consume: a durable consumer reads what was stored, acknowledging it.
    publish_audit_logins(&url, 0..2);
    let out = bus(
        &url,
        &[
            "consume",
            "auditor",
            "audit.>",
            "--count",
            "2",
            "--timeout",
            "10s",
            "--json",
        ],
    );
    succeeded(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let consumers = json(&bus(
        &url,
        &[
            "consumers",
            "info",
            "AUDIT",
            "auditor",
            "--window",
            "0s",
            "--json",
        ],
    ));
    assert_eq!(consumers["pending"], 0, "{consumers}");
    assert_eq!(consumers["ack_floor_stream_sequence"], 2, "{consumers}");
    assert!(
        consumers.get("lag_status").is_none(),
        "no window, no status: {consumers}"
    );
    // Two more events read without acknowledging: lag that does not shrink.
    publish_audit_logins(&url, 2..4);
    let out = bus(
        &url,
        &[
            "consume",
            "auditor",
            "audit.>",
            "--count",
            "2",
            "--timeout",
            "10s",
            "--no-ack",
        ],
    );
    succeeded(&out);
    let held = json(&bus(
        &url,
        &[
            "consumers",
            "info",
            "AUDIT",
            "auditor",
            "--window",
            "1s",
            "--json",
        ],
    ));
    assert_eq!(held["ack_pending"], 2, "{held}");
    assert!(
        matches!(held["lag_status"].as_str(), Some("STALL" | "STOP")),
        "unacknowledged deliveries with no progress: {held}"
    );

    // schema: register, a compatible check, a breaking check, ls, show, diff.
    let v1 = dir.path().join("v1.json");
    std::fs::write(
        &v1,
        r#"{"type":"object","properties":{"id":{"type":"string"}},"required":["id"]}"#,
    )
    .unwrap();
    let v2 = dir.path().join("v2.json");
    std::fs::write(&v2, r#"{"type":"object","properties":{"id":{"type":"string"},"at":{"type":"string"}},"required":["id"]}"#).unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"type":"object","properties":{"id":{"type":"integer"}},"required":["id"]}"#,
    )
    .unwrap();
    let p = |f: &std::path::Path| f.to_str().unwrap().to_string();
    assert_eq!(
        json(&bus(
            &url,
            &["schema", "register", "audit.login", &p(&v1), "--json"]
        ))["version"],
        1
    );
    assert_eq!(
        json(&bus(
            &url,
            &["schema", "check", "audit.login", &p(&v2), "--json"]
        ))["next_version"],
        2
    );
    let refused = bus(
        &url,
        &["schema", "check", "audit.login", &p(&bad), "--json"],
    );
    assert_eq!(refused.status.code(), Some(1));
    let changes: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(
        changes["changes"][0]["pointer"], "/properties/id/type",
        "{changes}"
    );
    assert_eq!(
        json(&bus(
            &url,
            &["schema", "register", "audit.login", &p(&v2), "--json"]
        ))["version"],
        2
    );
    let ls = json(&bus(&url, &["schema", "ls", "--json"]));
    assert_eq!(ls[0]["versions"], serde_json::json!([1, 2]), "{ls}");
    let show = json(&bus(
        &url,
        &["schema", "show", "audit.login", "--version", "1", "--json"],
    ));
    assert_eq!(show["schema"]["required"], serde_json::json!(["id"]));
    let diff = json(&bus(
        &url,
        &["schema", "diff", "audit.login", "1", "2", "--json"],
    ));
    assert_eq!(diff["compatible"], true, "{diff}");

    // outbox: status, failed and retry against a real PostgreSQL.
    let pg = event_bus_testkit::postgres::TestPostgres::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pool = event_bus_postgres::sqlx::PgPool::connect(&pg.url())
        .await
        .unwrap();
    event_bus_postgres::Outbox::new(pool.clone())
        .migrate()
        .await
        .unwrap();
    let with_db = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_bus"))
            .args(args)
            .env("DATABASE_URL", pg.url())
            .env("EVENT_BUS_TYPE", "nats")
            .env("EVENT_BUS_NATS_URL", &url)
            .output()
            .unwrap()
    };
    let status = json(&with_db(&["outbox", "status", "--json"]));
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(status["failed"], 0, "{status}");
    assert_eq!(
        json(&with_db(&["outbox", "failed", "--json"])),
        serde_json::json!([])
    );
    // Nothing to retry: a failure that says so, not "retried 0".
    let nothing = with_db(&["outbox", "retry"]);
    assert_eq!(nothing.status.code(), Some(1), "{nothing:?}");
    let why = String::from_utf8_lossy(&nothing.stderr);
    assert!(why.contains("nothing to retry"), "{why}");

    // With real rows: two pending events and one the bus refused.
    let outbox = event_bus_postgres::Outbox::new(pool.clone());
    let mut tx = pool.begin().await.unwrap();
    for n in 0..2 {
        outbox
            .enqueue(
                &mut tx,
                event_bus::Envelope::new("audit.login", format!("{{\"n\":{n}}}").into_bytes()),
            )
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    event_bus_postgres::sqlx::query(
        "INSERT INTO event_bus_outbox_failed (seq, message_id, subject, order_key, header_names, header_values, payload, enqueued_at, attempts, error)
         VALUES (1000, 'refused-1', 'audit.login', 'audit.login', '{}', '{}', '\\x7b7d', now(), 3, 'schema violation')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let status = json(&with_db(&["outbox", "status", "--json"]));
    assert_eq!(status["pending"], 2, "{status}");
    assert_eq!(status["failed"], 1, "{status}");
    let failed = json(&with_db(&["outbox", "failed", "--json"]));
    assert_eq!(failed[0]["message_id"], "refused-1", "{failed}");
    assert_eq!(failed[0]["error"], "schema violation", "{failed}");
    assert_eq!(json(&with_db(&["outbox", "retry", "--json"]))["retried"], 1);
    let status = json(&with_db(&["outbox", "status", "--json"]));
    assert_eq!(
        status["pending"], 3,
        "the refused row is pending again: {status}"
    );
    assert_eq!(status["failed"], 0, "{status}");
    let (pending_again,): (i64,) = event_bus_postgres::sqlx::query_as(
        "SELECT count(*) FROM event_bus_outbox WHERE message_id = 'refused-1' AND published_at IS NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(pending_again, 1);

    // A connection error is said once, without sqlx's "at line N" (the
    // line in PostgreSQL's C source).
    let bad_url = format!("{}_missing", pg.url());
    let out = Command::new(env!("CARGO_BIN_EXE_bus"))
        .args(["outbox", "--database-url", &bad_url, "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("does not exist").count(), 1, "{err}");
    assert!(!err.contains("at line"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_the_bus_and_raw_async_nats_side_by_side() {
    let (server, _nats) = server_with_streams().await;
    let url = server.url();
    let u = url.clone();
    let results = tokio::task::spawn_blocking(move || {
        ["pub", "sub", "consume", "runner"].map(|what| {
            json(&bus(
                &u,
                &[
                    "bench",
                    what,
                    "orders.bench",
                    "--msgs",
                    "2000",
                    "--clients",
                    "8",
                    "--compare",
                    "raw",
                    "--json",
                ],
            ))
        })
    })
    .await
    .unwrap();
    for (what, v) in ["pub", "sub", "consume", "runner"].iter().zip(&results) {
        let sides = v["sides"].as_array().unwrap();
        assert_eq!(sides.len(), 2, "{what}: {v}");
        for side in sides {
            assert!(side["messages"].as_u64().unwrap() >= 2000, "{what}: {v}");
            assert!(side["msgs_per_sec"].as_f64().unwrap() > 0.0, "{what}: {v}");
        }
        assert!(v["ratio"].as_f64().unwrap() > 0.0, "{what}: {v}");
    }
    let publish = &results[0]["sides"];
    assert_eq!(publish[1]["side"], "raw async-nats");
    let lat = &publish[0]["latency_us"];
    assert!(lat["p50"].as_u64().unwrap() <= lat["p99"].as_u64().unwrap());
    // CSV for spreadsheets; a bad argument names itself.
    let csv = bus(
        &url,
        &["bench", "pub", "orders.bench", "--msgs", "100", "--csv"],
    );
    let text = String::from_utf8_lossy(&csv.stdout);
    assert!(
        text.starts_with("side,messages,seconds,msgs_per_sec"),
        "{text}"
    );
    let bad = bus(&url, &["bench", "pub", "orders.bench", "--compare", "fast"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--compare"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_contexts_choose_the_server() {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str], extra: &[(&str, &str)]| unconfigured(home.path(), args, extra);
    // Without a context (or any configuration) every command fails, saying
    // how to configure a backend: never a silent in-memory bus.
    no_backend(&run(&["health", "--json"], &[]));
    assert!(run(
        &["context", "save", "local", "--server", &server.url()],
        &[]
    )
    .status
    .success());
    assert_eq!(
        json(&run(&["--context", "local", "health", "--json"], &[]))["backend"],
        "nats"
    );
    assert_eq!(
        json(&run(&["health", "--json"], &[("BUS_CONTEXT", "local")]))["backend"],
        "nats"
    );
    assert!(run(&["context", "select", "local"], &[]).status.success());
    assert_eq!(json(&run(&["health", "--json"], &[]))["backend"], "nats");
    let ls = json(&run(&["context", "ls", "--json"], &[]));
    assert_eq!(ls["selected"], "local", "{ls}");
    // A missing context is an error naming it; a bad name is refused.
    let missing = run(&["--context", "nope", "health"], &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("\"nope\""));
    let bad = run(&["context", "save", "../x"], &[]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(run(&["context", "rm", "local"], &[]).status.success());
    no_backend(&run(&["health", "--json"], &[]));
}

/// Runs `bus` with no configuration but `extra` (contexts kept in `home`).
fn unconfigured(home: &std::path::Path, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bus"));
    c.args(args)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("EVENT_BUS_CONFIG")
        .env_remove("EVENT_BUS_TYPE")
        .env_remove("EVENT_BUS_NATS_URL")
        .env_remove("BUS_CONTEXT");
    for (k, v) in extra {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Checks that a run failed for want of a configured backend, saying how
/// to configure one.
fn no_backend(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for hint in ["--url nats://", "EVENT_BUS_NATS_URL", "EVENT_BUS_CONFIG"] {
        assert!(stderr.contains(hint), "{hint:?} in: {stderr}");
    }
}

/// With no URL, configuration or context, `bus` never falls back to an
/// in-memory bus of its own (which no service can see): every command that
/// needs a bus fails with exit code 1 and says how to configure NATS; so
/// does an explicit `EVENT_BUS_TYPE=memory`, except for `bench`.
#[test]
fn without_a_configured_backend_every_command_fails_saying_how_to_configure_one() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str], extra: &[(&str, &str)]| unconfigured(home.path(), args, extra);
    for args in [
        &["health"][..],
        &["health", "--json"],
        &["pub", "orders.created", "{}"],
        &["sub", "orders.>", "--timeout", "1s"],
        &["dlq", "ls", "dlq.>"],
        &["dlq", "replay", "dlq.>"],
        &["streams", "ls"],
        &["schema", "ls"],
        &["bench", "pub", "b.x", "--msgs", "10"],
    ] {
        let out = run(args, &[]);
        assert!(
            out.stdout.is_empty() || args.contains(&"--json"),
            "{args:?}"
        );
        no_backend(&out);
    }
    let chosen = run(
        &["pub", "orders.created", "{}"],
        &[("EVENT_BUS_TYPE", "memory")],
    );
    no_backend(&chosen);
    assert!(String::from_utf8_lossy(&chosen.stderr).contains("in-memory"));
    let bench = run(
        &["bench", "pub", "b.x", "--msgs", "10", "--clients", "1"],
        &[("EVENT_BUS_TYPE", "memory")],
    );
    succeeded(&bench);
}

/// The library's dead-letter reader reads in place: two readers list the
/// same dead letter; the first replays it, which removes it from its
/// stream; the second's replay of its (stale) copy is refused, naming the
/// letter, and publishes nothing more. Discard removes as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_replayed_once_by_two_readers() {
    use event_bus::dlq;
    use event_bus::dlq::DeadLetterQueue;
    let (_server, nats) = server_with_streams().await;
    let bus_: Arc<dyn EventBus> = Arc::new(nats.clone());
    for (n, id) in [(1, "order-1"), (2, "order-2")] {
        bus_.publish_envelope(
            event_bus::Envelope::new("dlq.billing", format!("{{\"n\":{n}}}").into_bytes())
                .header(dlq::ORIGINAL_SUBJECT, "orders.created")
                .header(dlq::ORIGINAL_ID, id)
                .header(dlq::LAST_ERROR, "declined"),
        )
        .await
        .unwrap();
    }
    let mut a = DeadLetterQueue::open(bus_.clone(), "dlq.billing", "a")
        .await
        .unwrap();
    let mut b = DeadLetterQueue::open(bus_.clone(), "dlq.>", "b")
        .await
        .unwrap();
    let from_a = a.list(10, Duration::ZERO).await.unwrap();
    let from_b = b.list(10, Duration::ZERO).await.unwrap();
    assert_eq!(
        (from_a.len(), from_b.len()),
        (2, 2),
        "both readers see both"
    );
    let mut from_a = from_a.into_iter();
    let mut from_b = from_b.into_iter();
    let (a1, b1) = (from_a.next().unwrap(), from_b.next().unwrap());
    assert_eq!(a1.original_id(), Some("order-1"));
    let ack = a1.replay().await.unwrap();
    assert_eq!(ack.stream.as_deref(), Some("ORDERS"));
    let refused = b1.replay().await.unwrap_err();
    assert_eq!(refused.kind(), event_bus::ErrorKind::NotFound, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("already replayed or discarded"),
        "{refused}"
    );
    let orders = nats
        .jetstream()
        .get_stream("ORDERS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(orders.state.messages, 1, "the event published once");
    // Discard by one reader: gone for the other, and from the stream.
    from_b.next().unwrap().discard().await.unwrap();
    let a2 = from_a.next().unwrap();
    assert!(a2.discard().await.is_err(), "discarded twice");
    let mut fresh = DeadLetterQueue::open(bus_.clone(), "dlq.>", "c")
        .await
        .unwrap();
    assert!(fresh.list(10, Duration::ZERO).await.unwrap().is_empty());
    let dlq_info = nats
        .jetstream()
        .get_stream("DLQ")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(dlq_info.state.messages, 0);
}

/// Listing dead letters creates nothing: on a fresh server `bus dlq ls`
/// lists nothing and leaves no stream and no consumer, so a service can
/// then declare its own `dlq.>` stream; readers of `dlq.*` and `dlq.>`
/// never collide. A stream whose subjects overlap an existing one is
/// refused naming that stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_dead_letters_creates_nothing() {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    for pattern in ["dlq.>", "dlq.billing"] {
        let listed = json_off_thread(&url, &["dlq", "ls", pattern, "--json"]).await;
        assert_eq!(listed, serde_json::json!([]), "{pattern}");
    }
    let text = bus(&url, &["dlq", "ls", "dlq.>"]);
    succeeded(&text);
    let said = String::from_utf8_lossy(&text.stderr);
    assert!(
        said.contains("no stream stores subjects matching \"dlq.>\""),
        "{said}"
    );
    let streams = json(&bus(&url, &["streams", "ls", "--json"]));
    assert_eq!(streams, serde_json::json!([]), "no stream created");
    // The service's own stream for its dead letters: no overlap.
    let nats = server
        .bus(&[StreamSpec::new("DEAD", ["dlq.>"])])
        .await
        .unwrap();
    nats.publish_envelope(
        event_bus::Envelope::new("dlq.billing", b"{}".to_vec())
            .header(event_bus::dlq::ORIGINAL_SUBJECT, "orders.created"),
    )
    .await
    .unwrap();
    for pattern in ["dlq.*", "dlq.>", "dlq.*", "dlq.billing"] {
        let listed = json_off_thread(&url, &["dlq", "ls", pattern, "--json"]).await;
        assert_eq!(listed.as_array().unwrap().len(), 1, "{pattern}: {listed}");
        assert_eq!(listed[0]["stream"], "DEAD", "{listed}");
    }
    let info = json(&bus(&url, &["streams", "info", "DEAD", "--json"]));
    assert_eq!(info["consumers"], 0, "no consumer left behind: {info}");
    // Another stream over part of those subjects: refused, naming DEAD.
    let err = nats
        .ensure_streams(&[StreamSpec::new("OTHER", ["dlq.billing.>", "dlq.billing"])])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("DEAD"), "{err}");
}
