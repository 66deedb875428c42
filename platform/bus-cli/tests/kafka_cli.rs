//! The `bus` binary on Kafka (`--url kafka://HOST:PORT`) against a real
//! tansu broker: `sub` sees what `pub` sends (headers, ids), `health`
//! names the backend, NATS-only commands and mixed URLs are clear errors.
//! `cargo test -p event-bus-cli --features kafka --test kafka_cli`.

use event_bus_testkit::kafka_server::KafkaServer;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

mod common;
use common::succeeded;

fn command(url: &str, args: &[&str]) -> Command {
    let mut c = common::command(&["--url", url]);
    c.args(args)
        .env_remove("EVENT_BUS_TYPE")
        .env_remove("BUS_CONTEXT")
        .env(
            "XDG_CONFIG_HOME",
            std::env::temp_dir().join("bus-kafka-cli-no-contexts"),
        );
    c
}

fn bus(url: &str, args: &[&str]) -> Output {
    command(url, args).output().expect("run bus")
}

fn json_lines(out: &Output) -> Vec<Value> {
    succeeded(out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The whole of a successful command's stdout, as one JSON value.
fn whole_json(out: &Output) -> Value {
    succeeded(out);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_and_health_on_kafka() {
    let server = KafkaServer::start()
        .await
        .unwrap_or_else(|e| panic!("start the Kafka broker: {e}"));
    let url = format!("kafka://{}", server.bootstrap());

    // A live subscriber: ready once it says so on stderr.
    let mut sub = command(
        &url,
        &[
            "sub",
            "orders.>",
            "--count",
            "3",
            "--timeout",
            "20s",
            "--headers",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn bus sub");
    let stderr = sub.stderr.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), first)
        .await
        .expect("bus sub says it listens within 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(line.trim(), "listening on orders.>");

    let u = url.clone();
    let acks = tokio::task::spawn_blocking(move || {
        json_lines(&bus(
            &u,
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
        ))
    })
    .await
    .unwrap();
    assert_eq!(acks.len(), 3);
    assert!(
        acks[0]["stream"].as_str().unwrap().starts_with("orders/"),
        "{}",
        acks[0]
    );
    // Kafka does not de-duplicate: the same id again is stored again.
    let u = url.clone();
    let again = tokio::task::spawn_blocking(move || {
        json_lines(&bus(
            &u,
            &["pub", "orders.created", "x", "--id", "o-1", "--json"],
        ))
    })
    .await
    .unwrap();
    assert_eq!(again[0]["duplicate"], false, "{}", again[0]);

    let out = tokio::task::spawn_blocking(move || sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    succeeded(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    for (i, n) in [(1, 1), (2, 2), (3, 3)] {
        assert!(
            text.contains(&format!("[#{i}] orders.created id=o-{n} ")),
            "{text}"
        );
        assert!(text.contains(&format!("{{\"n\": {n}}}")), "{text}");
    }
    assert!(text.contains("trace: abc"), "{text}");

    let u = url.clone();
    let health = tokio::task::spawn_blocking(move || json_lines(&bus(&u, &["health", "--json"])))
        .await
        .unwrap();
    assert_eq!(health[0]["backend"], "kafka", "{}", health[0]);
    assert_eq!(health[0]["status"], "healthy", "{}", health[0]);

    // NATS-only commands say so, naming the chosen backend.
    let u = url.clone();
    let streams = tokio::task::spawn_blocking(move || bus(&u, &["streams", "ls"]))
        .await
        .unwrap();
    assert_eq!(streams.status.code(), Some(1));
    let err = String::from_utf8_lossy(&streams.stderr);
    assert!(err.contains("kafka") && err.contains("NATS only"), "{err}");

    // One backend's URLs at a time.
    let mixed = format!("{url},nats://127.0.0.1:4222");
    let out = tokio::task::spawn_blocking(move || bus(&mixed, &["pub", "orders.x", "y"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--url") && err.contains("mixes"), "{err}");

    // A broker that is gone: unhealthy (exit code 1), naming kafka.
    drop(server);
    let down = tokio::task::spawn_blocking(move || bus(&url, &["health", "--json"]))
        .await
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&down.stdout).unwrap();
    assert_eq!(v["backend"], "kafka", "{v}");
    assert_eq!(v["status"], "unhealthy", "{v}");
}

/// `bus dlq` on Kafka: dead letters written by a durable consumer (a
/// consumer group) are listed, replayed onto their original subject and
/// discarded by the binary; a removal is a marker record, so a listing
/// afterwards (a new reader) no longer shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_ls_replay_and_discard_on_kafka() {
    use event_bus::EventBus;
    use futures::StreamExt;
    use std::time::Duration;
    let server = KafkaServer::start()
        .await
        .unwrap_or_else(|e| panic!("start the Kafka broker: {e}"));
    let url = format!("kafka://{}", server.bootstrap());
    let kafka: std::sync::Arc<dyn EventBus> = std::sync::Arc::new(server.bus().await);
    common::three_dead_letters(&kafka).await;
    // A live view of the original subjects, to see the replay arrive.
    let mut replays = kafka.subscribe("orders.*").await.unwrap();

    let run = |args: &'static [&'static str]| {
        let u = url.clone();
        tokio::task::spawn_blocking(move || bus(&u, args))
    };
    let listed = whole_json(&run(&["dlq", "ls", "dlq.billing", "--json"]).await.unwrap());
    let rows = listed.as_array().expect("a JSON array of dead letters");
    let mut originals: Vec<&str> = rows
        .iter()
        .map(|r| r["original_subject"].as_str().unwrap())
        .collect();
    originals.sort();
    assert_eq!(
        originals,
        ["orders.a", "orders.b", "orders.c"],
        "{}",
        listed
    );

    let replayed = whole_json(
        &run(&[
            "dlq",
            "replay",
            "dlq.billing",
            "--error-contains",
            "bad b",
            "--json",
        ])
        .await
        .unwrap(),
    );
    assert_eq!(replayed["count"], 1, "{}", replayed);
    let m = tokio::time::timeout(Duration::from_secs(30), replays.next())
        .await
        .expect("the replayed event within 30 s")
        .unwrap();
    assert_eq!(m.subject.as_str(), "orders.b");
    assert_eq!(&m.payload[..], b"b");

    let left = whole_json(&run(&["dlq", "ls", "dlq.billing", "--json"]).await.unwrap());
    assert_eq!(left.as_array().unwrap().len(), 2, "{}", left);
    let discarded = whole_json(
        &run(&["dlq", "discard", "dlq.billing", "--json"])
            .await
            .unwrap(),
    );
    assert_eq!(discarded["count"], 2, "{}", discarded);
    let none = whole_json(&run(&["dlq", "ls", "dlq.>", "--json"]).await.unwrap());
    assert_eq!(none.as_array().unwrap().len(), 0, "{}", none);
    // Nothing left to act on: a failure that says so.
    let again = run(&["dlq", "replay", "dlq.billing", "--json"])
        .await
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("nothing to replay"), "{err}");
}
