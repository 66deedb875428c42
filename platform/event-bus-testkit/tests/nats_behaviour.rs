//! NatsBus behaviour beyond the conformance suite, each against its own real
//! nats-server: multi-tenancy (accounts and tenant prefixes), declared
//! streams and drift, errors (server down, payload limit, permissions, old
//! servers), config-driven construction, and the spec's integration example.

use async_nats::jetstream;
use event_bus::config::{BusConfig, NatsConfig, StreamSpec, StreamStorage};
use event_bus::nats::streams::StreamAction;
use event_bus::{Envelope, ErrorKind, EventBus, NatsBus, Subscription};
use event_bus_testkit::nats_server::{NatsServer, NatsServerOptions};
use event_bus_testkit::wait;
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn next_text(sub: &mut Subscription) -> String {
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a message within 10 s")
        .expect("subscription open");
    String::from_utf8(m.payload.to_vec()).unwrap()
}

fn nats_config(url: &str, user: Option<(&str, &str)>) -> NatsConfig {
    let mut c = BusConfig::nats(url).nats;
    if let Some((u, p)) = user {
        c.user = Some(u.into());
        c.password = Some(p.into());
    }
    c
}

const ACCOUNTS: &str = r#"
accounts {
  ACME: { jetstream: enabled, users: [ { user: acme, password: acme-pw } ] }
  GLOBEX: { jetstream: enabled, users: [ { user: globex, password: globex-pw } ] }
}
"#;

/// Two accounts, one tenant each: what tenant A publishes, tenant B's
/// subscribers and streams never see, and B cannot reach into A's subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_in_separate_accounts_are_isolated() {
    let server = NatsServer::start_with(NatsServerOptions::default().extra_config(ACCOUNTS))
        .await
        .expect("start nats-server with two accounts");
    let mut ca = nats_config(&server.url(), Some(("acme", "acme-pw")));
    ca.tenant = Some("acme".into());
    let mut cb = nats_config(&server.url(), Some(("globex", "globex-pw")));
    cb.tenant = Some("globex".into());
    let a = NatsBus::connect(&ca).await.expect("tenant A connects");
    let b = NatsBus::connect(&cb).await.expect("tenant B connects");
    // B, without its tenant prefix, tries to read A's subjects directly.
    let b_raw = NatsBus::connect(&nats_config(&server.url(), Some(("globex", "globex-pw"))))
        .await
        .unwrap();

    let mut a_sub = a.subscribe("orders.>").await.unwrap();
    let mut b_sub = b.subscribe("orders.>").await.unwrap();
    let mut b_into_a = b_raw.subscribe("acme.orders.>").await.unwrap();

    a.publish("orders.created", b"a-secret".to_vec())
        .await
        .unwrap();
    assert_eq!(next_text(&mut a_sub).await, "a-secret");
    // Sentinels published after A's message: each B subscription's first
    // message must be its own sentinel, so A's message never reached it.
    b.publish("orders.created", b"b-own".to_vec())
        .await
        .unwrap();
    b_raw
        .publish("acme.orders.created", b"b-sentinel".to_vec())
        .await
        .unwrap();
    assert_eq!(next_text(&mut b_sub).await, "b-own");
    assert_eq!(next_text(&mut b_into_a).await, "b-sentinel");

    let names = |bus: &NatsBus| {
        let js = bus.jetstream().clone();
        async move {
            js.stream_names()
                .try_collect::<Vec<String>>()
                .await
                .unwrap()
        }
    };
    let (a_streams, b_streams) = (names(&a).await, names(&b).await);
    assert!(
        a_streams.contains(&"BUS-ACME_ORDERS".to_string()),
        "{a_streams:?}"
    );
    assert!(
        !b_streams.iter().any(|s| s.contains("ACME_ORDERS")),
        "B sees A's stream: {b_streams:?}"
    );
    // In B's account, the stream B created for "acme.orders" holds only B's sentinel.
    let mut b_acme = b_raw.jetstream().get_stream("BUS_ACME").await.unwrap();
    assert_eq!(b_acme.info().await.unwrap().state.messages, 1);
    // A's account holds none of B's streams.
    assert!(
        a_streams.iter().all(|s| !s.contains("GLOBEX")),
        "{a_streams:?}"
    );
}

/// Tenant buses on one connection: subjects and default streams are confined per tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_prefixes_confine_subjects_and_streams() {
    let server = NatsServer::start().await.unwrap();
    let root = NatsBus::new(async_nats::connect(server.url()).await.unwrap());
    let t1 = root.for_tenant("t1").unwrap();
    let t2 = root.for_tenant("t2").unwrap();
    let mut s1 = t1.subscribe("orders.*").await.unwrap();
    let mut s2 = t2.subscribe("orders.*").await.unwrap();
    t1.publish("orders.created", b"one".to_vec()).await.unwrap();
    t2.publish("orders.created", b"two".to_vec()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), s1.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.subject.as_str(), &m.payload[..]),
        ("orders.created", &b"one"[..])
    );
    assert_eq!(next_text(&mut s2).await, "two");
    t1.publish("orders.updated", b"one-b".to_vec())
        .await
        .unwrap();
    assert_eq!(
        next_text(&mut s1).await,
        "one-b",
        "t1 never sees t2's event"
    );
    assert_eq!(t1.default_stream_name("orders.created"), "BUS-T1_ORDERS");
    let js = root.jetstream();
    let mut st = js.get_stream("BUS-T1_ORDERS").await.unwrap();
    assert_eq!(
        st.info().await.unwrap().config.subjects,
        vec!["t1.orders", "t1.orders.>"]
    );
    for bad in ["bad tenant", "acme.eu", "*", ">", "$SYS", "_INBOX", ""] {
        let err = root
            .for_tenant(bad)
            .err()
            .unwrap_or_else(|| panic!("{}", bad));
        assert_eq!(err.kind(), ErrorKind::Config, "{bad:?}: {err}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let err = t1
        .for_tenant("eu")
        .err()
        .unwrap_or_else(|| panic!("{}", "tenants do not nest"));
    assert!(err.to_string().contains("do not nest"), "{err}");
}

/// Tenants whose names and first tokens join to the same text with `_`
/// (`acme` + `eu_orders`, `acme_eu` + `orders`) get different streams and
/// never see each other's events; a bus never adopts a stream of its name
/// that stores other subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_stream_names_never_collide() {
    let server = NatsServer::start().await.unwrap();
    let root = NatsBus::new(async_nats::connect(server.url()).await.unwrap());
    let acme = root.for_tenant("acme").unwrap();
    let acme_eu = root.for_tenant("acme_eu").unwrap();
    assert_ne!(
        acme.default_stream_name("eu_orders.x"),
        acme_eu.default_stream_name("orders.x")
    );
    assert_ne!(
        root.default_stream_name("acme_eu_orders.x"),
        acme_eu.default_stream_name("orders.x")
    );
    let mut a = acme.subscribe("eu_orders.>").await.unwrap();
    let mut b = acme_eu.subscribe("orders.>").await.unwrap();
    acme.publish("eu_orders.x", b"acme".to_vec()).await.unwrap();
    acme_eu
        .publish("orders.x", b"acme_eu".to_vec())
        .await
        .expect("the second tenant's publish finds its own stream");
    acme.publish("eu_orders.x", b"acme-2".to_vec())
        .await
        .unwrap();
    assert_eq!(next_text(&mut a).await, "acme");
    assert_eq!(
        next_text(&mut a).await,
        "acme-2",
        "acme never sees acme_eu's event"
    );
    assert_eq!(next_text(&mut b).await, "acme_eu");

    // An operator's stream in the way of a default stream's name is not adopted.
    let name = root.default_stream_name("squat.x");
    root.jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec!["elsewhere.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let err = root.subscribe("squat.>").await.err().unwrap_or_else(|| {
        panic!(
            "{}",
            "a stream of the default name that stores other subjects is refused"
        )
    });
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains(&name), "{err}");
}

/// Declared streams are created, left alone, updated with drift reported, and
/// refused changes are a Conflict naming the stream and the fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_streams_are_reconciled() {
    let server = NatsServer::start().await.unwrap();
    let bus = NatsBus::new(async_nats::connect(server.url()).await.unwrap());
    let spec = StreamSpec::new("ORDERS", ["orders.>"]).max_age(Duration::from_secs(3600));
    let r = bus
        .ensure_streams(std::slice::from_ref(&spec))
        .await
        .unwrap();
    assert_eq!(r[0].action, StreamAction::Created);
    let r = bus
        .ensure_streams(std::slice::from_ref(&spec))
        .await
        .unwrap();
    assert_eq!(
        r[0].action,
        StreamAction::Unchanged,
        "applying the same declaration is a no-op"
    );

    let changed = spec
        .clone()
        .max_age(Duration::from_secs(600))
        .max_messages(1000);
    let r = bus.ensure_streams(&[changed]).await.unwrap();
    match &r[0].action {
        StreamAction::Updated(drift) => {
            assert!(drift.iter().any(|d| d.starts_with("max_age")), "{drift:?}");
            assert!(
                drift.iter().any(|d| d.starts_with("max_messages")),
                "{drift:?}"
            );
        }
        other => panic!("expected Updated, got {other:?}"),
    }
    let info = bus
        .jetstream()
        .get_stream("ORDERS")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.config.max_age, Duration::from_secs(600));

    let storage_change = spec.clone().storage(StreamStorage::Memory);
    let err = bus.ensure_streams(&[storage_change]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(
        err.to_string().contains("ORDERS") && err.to_string().contains("storage"),
        "{err}"
    );

    let overlapping = StreamSpec::new("ORDERS_EU", ["orders.eu.>"]);
    let err = bus.ensure_streams(&[overlapping]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("overlap"), "{err}");

    let bad = StreamSpec::new("bad.name", ["x.>"]);
    let err = bus.ensure_streams(&[bad]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("bad.name"), "{err}");

    // A publish into the declared stream's subjects uses it (no default stream).
    let mut sub = bus.subscribe("orders.>").await.unwrap();
    let ack = bus
        .publish_envelope(Envelope::new("orders.created", &b"x"[..]))
        .await
        .unwrap();
    assert_eq!(ack.stream.as_deref(), Some("ORDERS"));
    assert_eq!(next_text(&mut sub).await, "x");
}

/// Declared streams and every NATS setting come from a config file; the same
/// code path as the in-memory bus (`event_bus::connect`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_builds_a_nats_bus_with_declared_streams() {
    let server = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.toml");
    std::fs::write(
        &path,
        format!(
            r#"
type = "nats"
[nats]
urls = ["{}"]
publish_timeout = "3s"
connect_timeout = "2s"
[[nats.streams]]
name = "PAYMENTS"
subjects = ["payments.>"]
storage = "memory"
max_age = "1h"
duplicate_window = "30s"
"#,
            server.url()
        ),
    )
    .unwrap();
    let config = BusConfig::from_file(&path).unwrap();
    let bus: Arc<dyn EventBus> = event_bus::connect(&config).await.unwrap();
    assert_eq!(bus.backend_name(), "nats");
    let health = bus.health().await;
    assert!(health.is_healthy(), "{health:?}");
    assert!(health.detail.contains("2."), "{health:?}");
    let mut sub = bus.subscribe("payments.*").await.unwrap();
    let ack = bus
        .publish_envelope(Envelope::new("payments.settled", &b"ok"[..]).id("pay-1"))
        .await
        .unwrap();
    assert_eq!(ack.stream.as_deref(), Some("PAYMENTS"));
    assert_eq!(next_text(&mut sub).await, "ok");

    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let info = js
        .get_stream("PAYMENTS")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(30));
    assert_eq!(info.config.storage, jetstream::stream::StorageType::Memory);
}

/// With the server gone, publish fails within the configured bound (never Ok, never a hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_publish_fails_within_the_timeout() {
    let mut server = NatsServer::start().await.unwrap();
    let mut config = nats_config(&server.url(), None);
    config.publish_timeout = Duration::from_millis(800);
    let bus = NatsBus::connect(&config).await.unwrap();
    bus.publish("down.x", b"before".to_vec()).await.unwrap();
    server.kill();
    for i in 0..3 {
        let started = Instant::now();
        let err = bus
            .publish("down.x", format!("while down {i}").into_bytes())
            .await
            .expect_err("publish with the server down must fail");
        let took = started.elapsed();
        assert!(
            matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
            "{err}"
        );
        assert!(err.to_string().contains("down.x"), "{err}");
        assert!(
            took < Duration::from_secs(3),
            "publish took {took:?} with an 800 ms bound"
        );
    }
    let health = bus.health().await;
    assert!(!health.is_healthy(), "{health:?}");

    let err = NatsBus::connect(&{
        let mut c = nats_config(&server.url(), None);
        c.connect_timeout = Duration::from_millis(500);
        c
    })
    .await
    .expect_err("connecting to a dead server fails");
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{err}"
    );
}

/// A payload over the server's max_payload is refused before sending, naming the sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_over_server_max_is_refused() {
    let server = NatsServer::start_with(NatsServerOptions::default().max_payload(64 * 1024))
        .await
        .unwrap();
    let bus = NatsBus::new(async_nats::connect(server.url()).await.unwrap());
    bus.publish("big.ok", vec![1; 60 * 1024]).await.unwrap();
    let err = bus
        .publish("big.no", vec![1; 100 * 1024])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    let text = err.to_string();
    assert!(
        text.contains("big.no") && text.contains("65536") && text.contains("102400"),
        "{text}"
    );
}

const PERMISSIONS: &str = r#"
authorization {
  users: [
    { user: limited, password: pw, permissions: {
        publish: { allow: ["allowed.>", "$JS.API.>"] },
        subscribe: { allow: ["_INBOX.>", "allowed.>"] } } }
  ]
}
"#;

/// A publish the server's permissions forbid is a PermissionDenied error naming the subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_violation_is_a_clear_error() {
    let server = NatsServer::start_with(NatsServerOptions::default().extra_config(PERMISSIONS))
        .await
        .unwrap();
    let mut config = nats_config(&server.url(), Some(("limited", "pw")));
    config.publish_timeout = Duration::from_secs(1);
    let bus = NatsBus::connect(&config).await.unwrap();
    bus.ensure_streams(&[StreamSpec::new("DENIED", ["denied.>"])])
        .await
        .unwrap();
    bus.publish("allowed.x", b"fine".to_vec()).await.unwrap();
    let err = bus.publish("denied.x", b"no".to_vec()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("denied.x"), "{err}");
}

/// nats-server older than 2.10 is refused with a message naming the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_older_than_2_10_are_refused() {
    let legacy =
        std::env::var("NATS_SERVER_LEGACY_BIN").unwrap_or_else(|_| "/usr/sbin/nats-server".into());
    let version = std::process::Command::new(&legacy).arg("--version").output().unwrap_or_else(|e| {
        panic!(
            "this test needs Debian's nats-server 2.9 at {legacy} (or NATS_SERVER_LEGACY_BIN): {e}; \
             run ./scripts/install-test-deps.sh (apt-get install nats-server)"
        )
    });
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    assert!(
        version.contains("v2.9"),
        "{legacy} is {version}, expected a 2.9 server"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(&legacy)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(child);
    let url = format!("nats://127.0.0.1:{port}");
    event_bus_testkit::wait::until_async(
        Duration::from_secs(20),
        "the 2.9 server to accept connections",
        || {
            let url = url.clone();
            async move { async_nats::connect(url.as_str()).await.is_ok() }
        },
    )
    .await;
    let err = NatsBus::connect(&nats_config(&url, None))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    // The error names the server's version (any 2.9.x patch release of
    // Debian's package) and the minimum.
    let reported = version
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v2.9."))
        .map(|patch| format!("2.9.{patch}"))
        .unwrap_or_else(|| "2.9.".into());
    assert!(
        err.to_string().contains(&reported) && err.to_string().contains("2.10"),
        "{err} (server {reported})"
    );
    let bus = NatsBus::new(async_nats::connect(url.as_str()).await.unwrap());
    let err = bus.subscribe("old.>").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(!bus.health().await.is_healthy());
}

/// The spec's "Integration Tests with NATS" example, against a real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_with_real_nats() {
    let server = NatsServer::start().await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus = Arc::new(NatsBus::new(client));

    let mut stream = bus.subscribe("auth.events.>").await.unwrap();
    let payload = serde_json::to_vec(&serde_json::json!({
        "event_type": "user.created",
        "user_id": "usr_123",
        "timestamp": "2026-02-11T23:00:00Z"
    }))
    .unwrap();
    bus.publish("auth.events.user.created", payload)
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(event["user_id"], "usr_123");
    assert_eq!(msg.subject, "auth.events.user.created");
    assert!(msg.sequence >= 1);
}

/// Subjects invalid for the bus are refused before reaching the server (async-nats alone would store `p.*`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_publish_is_refused_before_the_server() {
    let server = NatsServer::start().await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus = NatsBus::new(client.clone());
    bus.publish("p.ok", b"x".to_vec()).await.unwrap();
    let err = bus.publish("p.*", b"x".to_vec()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSubject);
    let mut st = jetstream::new(client).get_stream("BUS_P").await.unwrap();
    assert_eq!(
        st.info().await.unwrap().state.messages,
        1,
        "only the valid publish is stored"
    );
}

/// A subscription whose first token is a wildcard also sees streams created
/// after it was made (each read from its start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_first_token_follows_new_streams() {
    let server = NatsServer::start().await.unwrap();
    let bus = NatsBus::new(async_nats::connect(server.url()).await.unwrap());
    bus.publish("old.events.x", b"before".to_vec())
        .await
        .unwrap();
    let mut all = bus.subscribe(">").await.unwrap();
    let mut events = bus.subscribe("*.events.created").await.unwrap();
    bus.publish("old.events.created", b"on an old stream".to_vec())
        .await
        .unwrap();
    bus.publish("fresh.events.created", b"on a new stream".to_vec())
        .await
        .unwrap();
    let mut got = vec![next_text(&mut events).await, next_text(&mut events).await];
    got.sort();
    assert_eq!(got, ["on a new stream", "on an old stream"]);
    let mut got = vec![next_text(&mut all).await, next_text(&mut all).await];
    got.sort();
    assert_eq!(
        got,
        ["on a new stream", "on an old stream"],
        "`>` never sees what was stored before it"
    );
}

/// A `>` subscription never reads key-value buckets (streams over `$KV.>`),
/// neither those that exist when it subscribes nor those created later:
/// subjects in the server's namespaces reach no subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscriptions_never_read_key_value_buckets() {
    use async_nats::jetstream::kv;
    let server = NatsServer::start().await.unwrap();
    let bus = NatsBus::new(async_nats::connect(server.url()).await.unwrap());
    let js = bus.jetstream().clone();
    let before = js
        .create_key_value(kv::Config {
            bucket: "sessions".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    bus.publish("plain.x", b"old".to_vec()).await.unwrap();
    let mut all = bus.subscribe(">").await.unwrap();
    before.put("admin", "secret-1".into()).await.unwrap();
    let after = js
        .create_key_value(kv::Config {
            bucket: "tokens".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    after.put("admin", "secret-2".into()).await.unwrap();
    // A new plain stream, created after the bucket: once `>` sees it, a
    // rescan has passed over the bucket too.
    bus.publish("later.x", b"first sentinel".to_vec())
        .await
        .unwrap();
    assert_eq!(next_text(&mut all).await, "first sentinel");
    before.put("admin", "secret-3".into()).await.unwrap();
    after.put("admin", "secret-4".into()).await.unwrap();
    bus.publish("later.x", b"second sentinel".to_vec())
        .await
        .unwrap();
    assert_eq!(next_text(&mut all).await, "second sentinel");
}

/// Test certificates: a CA, a server certificate for 127.0.0.1/localhost and
/// a client certificate, all signed by the CA, as PEM files in `dir`.
struct TestPki {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

fn test_pki(dir: &std::path::Path) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "event-bus test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key_pem) = leaf(
        vec!["127.0.0.1".to_string(), "localhost".to_string()],
        "nats-server",
    );
    let (client_pem, client_key_pem) = leaf(vec!["event-bus-client".to_string()], "client");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    TestPki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_pem),
        server_key: write("server-key.pem", &server_key_pem),
        client_cert: write("client.pem", &client_pem),
        client_key: write("client-key.pem", &client_key_pem),
    }
}

/// The config's TLS settings work against a server that requires TLS and
/// verifies client certificates (mutual TLS): with the CA and a client
/// certificate the bus connects and round-trips an event; without the client
/// certificate, or without the CA, `connect` fails with an error (within the
/// connect timeout), never a hang or a plain-text connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(dir.path());
    let server = NatsServer::start_with(NatsServerOptions::default().extra_config(format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 2\n}}",
        pki.server_cert, pki.server_key, pki.ca
    )))
    .await
    .unwrap();
    let with = |ca: bool, client_cert: bool| {
        let mut c = nats_config(&server.url(), None);
        c.connect_timeout = Duration::from_secs(3);
        let mut tls = event_bus::config::TlsConfig::default();
        tls.required = true;
        tls.ca_file = ca.then(|| pki.ca.clone());
        tls.cert_file = client_cert.then(|| pki.client_cert.clone());
        tls.key_file = client_cert.then(|| pki.client_key.clone());
        c.tls = Some(tls);
        c
    };

    let bus = NatsBus::connect(&with(true, true)).await.unwrap();
    let mut sub = bus.subscribe("secure.>").await.unwrap();
    bus.publish("secure.hello", b"over tls".to_vec())
        .await
        .unwrap();
    assert_eq!(next_text(&mut sub).await, "over tls");

    for (what, config) in [
        ("no client certificate", with(true, false)),
        ("no CA for the server's certificate", with(false, true)),
    ] {
        let started = Instant::now();
        let err = NatsBus::connect(&config)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: connected"));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{what}: {err}");
        assert!(
            err.to_string().contains(&server.url()),
            "{what}: the error names the server: {err}"
        );
        println!("{what}: {err}");
    }
}

/// A CA file given without `tls.required` still makes TLS required: against
/// a server without TLS the bus refuses to connect (before, it connected in
/// plaintext and sent the password). Connection errors name the server
/// without the credentials of its URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_imply_tls_and_errors_hide_credentials() {
    const SECRET: &str = "pw-that-must-not-show";
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(dir.path());
    let server = NatsServer::start_with(
        NatsServerOptions::default()
            .extra_config(format!("authorization {{ user: app, password: {SECRET} }}")),
    )
    .await
    .unwrap();
    let mut c = nats_config(&server.url(), Some(("app", SECRET)));
    c.connect_timeout = Duration::from_secs(3);
    NatsBus::connect(&c)
        .await
        .expect("plaintext without TLS settings");
    let mut tls = event_bus::config::TlsConfig::default();
    tls.ca_file = Some(pki.ca.clone());
    c.tls = Some(tls);
    let err = NatsBus::connect(&c).await.err().unwrap_or_else(|| {
        panic!(
            "{}",
            "a CA file makes TLS required: no plaintext connection"
        )
    });
    assert!(!format!("{err} {err:?}").contains(SECRET), "{err} {err:?}");

    // Credentials in the URL of a server that is not there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again: nothing listens there
    let url = format!("nats://app:{SECRET}@127.0.0.1:{port}");
    let mut c = nats_config(&url, None);
    c.connect_timeout = Duration::from_secs(1);
    let err = NatsBus::connect(&c)
        .await
        .err()
        .unwrap_or_else(|| panic!("{}", "nothing listens there"));
    let shown = format!("{err} {err:?} {c:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(
        err.to_string()
            .contains(&format!("nats://app:[redacted]@127.0.0.1:{port}")),
        "the error names the server: {err}"
    );
}

/// Bus-assigned ids are unique across incarnations of a stream: after
/// `BUS_REBORN` is deleted and created again, its sequences start at 1
/// again, but the new messages get new ids, so an idempotency inbox that
/// committed the old ones does not take the new events for duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_ids_are_unique_across_stream_incarnations() {
    use event_bus::runner::{Inbox, MemoryInbox};
    let server = NatsServer::start().await.unwrap();
    let inbox = MemoryInbox::default();
    let mut incarnations = Vec::new();
    for round in 0..2 {
        // A fresh bus each round: its cache of known streams is empty.
        let bus = NatsBus::new(async_nats::connect(server.url()).await.unwrap());
        let mut sub = bus.subscribe("reborn.>").await.unwrap();
        for i in 0..5 {
            bus.publish("reborn.x", format!("{round}-{i}").into_bytes())
                .await
                .unwrap();
        }
        let mut ids = Vec::new();
        for i in 0..5 {
            let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(m.sequence, i + 1, "each incarnation starts at sequence 1");
            let tx = inbox
                .begin("handler", &m.id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: {} taken for a duplicate", m.id));
            inbox.commit(tx).await.unwrap();
            ids.push(m.id.to_string());
        }
        incarnations.push(ids);
        bus.jetstream().delete_stream("BUS_REBORN").await.unwrap();
    }
    assert!(
        incarnations[0]
            .iter()
            .all(|id| !incarnations[1].contains(id)),
        "{incarnations:?}"
    );
}

/// An instance that stops consuming hands back what it fetched and did not
/// take: another instance gets those messages at once, not after their ack
/// wait (60 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_consumer_hands_back_what_it_fetched() {
    use event_bus::{ConsumerConfig, StartPosition};
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(NatsBus::new(client.clone()));
    let n = 50;
    for i in 0..n {
        bus.publish("handback.job", i.to_string().into_bytes())
            .await
            .unwrap();
    }
    let config = ConsumerConfig::new("hb", "handback.>")
        .start(StartPosition::All)
        .ack_wait(Duration::from_secs(60))
        .max_ack_pending(100);
    let mut a = bus.consume(config.clone()).await.unwrap();
    let first = a.next().await.unwrap().unwrap();
    first.ack().await.unwrap();
    // Every message has been sent to this instance (fetched ahead of it).
    let js = jetstream::new(client.clone());
    wait::until_async(Duration::from_secs(10), "all messages fetched", || {
        let js = js.clone();
        async move {
            let stream = js.get_stream("BUS_HANDBACK").await.unwrap();
            let mut consumer: jetstream::consumer::PullConsumer =
                stream.get_consumer("hb").await.unwrap();
            let info = consumer.info().await.unwrap();
            info.num_pending == 0 && info.num_ack_pending == n - 1
        }
    })
    .await;
    drop(a);
    let mut b = bus.consume(config).await.unwrap();
    let started = Instant::now();
    let mut got = std::collections::HashSet::new();
    while got.len() < n - 1 {
        let d = tokio::time::timeout(Duration::from_secs(10), b.next())
            .await
            .expect("handed back at once, not after the 60 s ack wait")
            .unwrap()
            .unwrap();
        got.insert(d.message().payload.to_vec());
        d.ack().await.unwrap();
    }
    assert!(
        !got.contains(b"0".as_slice()),
        "the acked message stays acked"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// How a consumer in [`ack_and_exit`] answers.
#[derive(Clone, Copy, Debug)]
enum AckMode {
    /// `Delivery::ack().await` each, then exit.
    Confirmed,
    /// `Delivery::ack_nowait().await` each, then `NatsBus::flush`, then exit.
    NowaitThenFlush,
}

/// Consumes and acks `n` deliveries in a runtime of its own on its own
/// thread, then drops that runtime at once (like a process that exits after
/// its last ack returned): nothing left in the client is sent afterwards.
async fn ack_and_exit(
    url: String,
    name: &'static str,
    filter: &'static str,
    n: usize,
    mode: AckMode,
) {
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use event_bus::{ConsumerConfig, StartPosition};
            let client = async_nats::connect(url).await.unwrap();
            let bus = NatsBus::new(client);
            let mut consumer = bus
                .consume(
                    ConsumerConfig::new(name, filter)
                        .start(StartPosition::All)
                        .ack_wait(Duration::from_secs(60)),
                )
                .await
                .unwrap();
            for _ in 0..n {
                let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                    .await
                    .expect("a delivery within 10 s")
                    .unwrap()
                    .unwrap();
                match mode {
                    AckMode::Confirmed => d.ack().await.expect("ack"),
                    AckMode::NowaitThenFlush => d.ack_nowait().await.expect("ack_nowait"),
                }
            }
            if let AckMode::NowaitThenFlush = mode {
                drop(consumer);
                bus.flush().await.expect("flush");
            }
        });
        drop(rt); // the "process" exits
    })
    .await
    .unwrap();
}

/// The server-side state of durable consumer `name` on `stream`.
async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
) -> jetstream::consumer::Info {
    let stream = js.get_stream(stream).await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer(name).await.unwrap();
    consumer.info().await.unwrap().clone()
}

/// `Delivery::ack` returns `Ok` only once the server has the ack: a consumer
/// that acks and exits at once leaves nothing unacknowledged on the server
/// (with fire-and-forget acks, those still queued in the client were lost
/// and the events came back after a restart). The same holds for
/// `ack_nowait` followed by `NatsBus::flush`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_on_the_server_when_they_return() {
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus = NatsBus::new(client.clone());
    let js = jetstream::new(client);
    let n = 300;
    for i in 0..n {
        bus.publish("ackexit.job", i.to_string().into_bytes())
            .await
            .unwrap();
    }
    for (name, mode) in [
        ("confirmed", AckMode::Confirmed),
        ("nowait-flush", AckMode::NowaitThenFlush),
    ] {
        ack_and_exit(server.url(), name, "ackexit.>", n, mode).await;
        if let AckMode::NowaitThenFlush = mode {
            // A flush means the server received the acks; it processes
            // them right after.
            wait::until_async(Duration::from_secs(5), "the flushed acks processed", || {
                let js = js.clone();
                async move {
                    consumer_info(&js, "BUS_ACKEXIT", name)
                        .await
                        .num_ack_pending
                        == 0
                }
            })
            .await;
        }
        // A confirmed ack has been processed by the server: checked at once.
        let info = consumer_info(&js, "BUS_ACKEXIT", name).await;
        assert_eq!(
            (info.num_ack_pending, info.ack_floor.stream_sequence),
            (0, n as u64),
            "{mode:?}: every ack returned Ok, so the server must have all {n} ({info:?})"
        );
    }
}

/// Every answer is bounded in time: with the server gone, `ack`, `nack`,
/// `in_progress` and `term` fail within the publish timeout (never `Ok` for
/// an answer the server did not get, never a hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_during_an_outage_fail_within_the_publish_timeout() {
    use event_bus::{ConsumerConfig, StartPosition};
    let mut server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus = NatsBus::new(client).with_publish_timeout(Duration::from_millis(800));
    for i in 0..4 {
        bus.publish("ackdown.job", i.to_string().into_bytes())
            .await
            .unwrap();
    }
    let mut consumer = bus
        .consume(ConsumerConfig::new("down", "ackdown.>").start(StartPosition::All))
        .await
        .unwrap();
    let mut ds = Vec::new();
    for _ in 0..4 {
        ds.push(consumer.next().await.unwrap().unwrap());
    }
    server.kill();
    let bounded = |took: Duration, what: &str| {
        assert!(
            took < Duration::from_secs(3),
            "{what} took {took:?} with an 800 ms bound"
        )
    };
    let d = ds.pop().unwrap();
    let started = Instant::now();
    let err = d
        .in_progress()
        .await
        .expect_err("in_progress with the server down");
    bounded(started.elapsed(), "in_progress");
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{err}"
    );
    let started = Instant::now();
    let err = d
        .ack()
        .await
        .expect_err("ack with the server down must not be Ok");
    bounded(started.elapsed(), "ack");
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{err}"
    );
    assert!(err.to_string().contains("ack"), "{err}");
    let started = Instant::now();
    let err = ds.pop().unwrap().nack(None).await.expect_err("nack");
    bounded(started.elapsed(), "nack");
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{err}"
    );
    let started = Instant::now();
    let err = ds.pop().unwrap().term(None).await.expect_err("term");
    bounded(started.elapsed(), "term");
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{err}"
    );
    let started = Instant::now();
    let err = bus.flush().await.expect_err("flush with the server down");
    bounded(started.elapsed(), "flush");
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{err}"
    );
}

/// A dead letter that cannot be published (no stream stores the dead-letter
/// subject and the bus may not create one) never loses the message: the
/// failure is an error item each time, the message stays pending (the server
/// keeps delivering it: with `max_deliver + 3` it stopped after the 4th
/// delivery and stranded it), and once a stream stores the subject the
/// message is dead-lettered and terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_dead_letter_publish_keeps_the_message_until_it_succeeds() {
    use event_bus::consumer::dlq;
    use event_bus::ConsumerConfig;
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let bus = NatsBus::new(client).with_auto_create_streams(false);
    NatsBus::new(js.client())
        .ensure_streams(&[StreamSpec::new("JOBS", ["jobs.>"])])
        .await
        .unwrap();
    let mut consumer = bus
        .consume(
            ConsumerConfig::new("stuck", "jobs.>")
                .max_deliver(1)
                .ack_wait(Duration::from_secs(30))
                .dead_letter_subject(Some("nodlq.stuck".into())),
        )
        .await
        .unwrap();
    bus.publish("jobs.a", b"poison".to_vec()).await.unwrap();
    let d = consumer.next().await.unwrap().unwrap();
    let err = d
        .nack_with_reason(None, "cannot decode")
        .await
        .expect_err("no stream stores the dead-letter subject");
    assert!(err.to_string().contains("nodlq.stuck"), "{err}");
    // Four more failed attempts: beyond the old server-side limit of
    // max_deliver + 3 deliveries.
    for attempt in 2..=5 {
        let item = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap_or_else(|_| {
                panic!("dead-lettering attempt {attempt}: the message is still delivered")
            })
            .expect("the consumer stream stays open");
        let err = item
            .expect_err("the failed dead-lettering is an error item, the handler never sees it");
        assert!(err.to_string().contains("nodlq.stuck"), "{err}");
    }
    // Now a stream stores dead letters: the next attempt succeeds.
    NatsBus::new(js.client())
        .ensure_streams(&[StreamSpec::new("NODLQ", ["nodlq.>"])])
        .await
        .unwrap();
    let poll = async {
        loop {
            match consumer.next().await {
                Some(Ok(d)) => panic!("the handler must not see the message again: {d:?}"),
                Some(Err(_)) => continue,
                None => panic!("the consumer stream ended"),
            }
        }
    };
    let stored = wait::until_async(Duration::from_secs(30), "the dead letter stored", || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("NODLQ").await.unwrap();
            stream.info().await.unwrap().state.messages == 1
        }
    });
    tokio::select! {
        _ = poll => unreachable!(),
        _ = stored => {}
    }
    let dead = js
        .get_stream("NODLQ")
        .await
        .unwrap()
        .get_last_raw_message_by_subject("nodlq.stuck")
        .await
        .unwrap();
    let headers = dead.headers;
    assert_eq!(
        headers.get(dlq::LAST_ERROR).map(|v| v.as_str()),
        Some("cannot decode")
    );
    assert_eq!(&dead.payload[..], b"poison");
    // Terminated after the dead letter: nothing left for the consumer.
    let info = consumer_info(&js, "JOBS", "stuck").await;
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0), "{info:?}");
}

/// A stream deleted under a live subscription and created again by the
/// bus's next publish: the publish succeeds (the bus forgets the stream it
/// knew and creates it again) and the subscription follows the new stream
/// from its start (not from the old sequence, which skipped everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_follows_a_deleted_and_recreated_stream() {
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus = NatsBus::new(client);
    let mut sub = bus.subscribe("reinc.>").await.unwrap();
    for i in 0..100 {
        bus.publish("reinc.a", format!("old-{i}").into_bytes())
            .await
            .unwrap();
    }
    for i in 0..100 {
        assert_eq!(next_text(&mut sub).await, format!("old-{i}"));
    }
    bus.jetstream()
        .delete_stream(bus.default_stream_name("reinc"))
        .await
        .unwrap();
    for i in 0..50 {
        bus.publish("reinc.a", format!("new-{i}").into_bytes())
            .await
            .unwrap_or_else(|e| panic!("publish {i} after the stream was deleted: {e}"));
    }
    for i in 0..50 {
        assert_eq!(next_text(&mut sub).await, format!("new-{i}"));
    }
    // The same through publish_envelope and publish_batch.
    bus.jetstream()
        .delete_stream(bus.default_stream_name("reinc"))
        .await
        .unwrap();
    bus.publish_envelope(Envelope::new("reinc.b", b"envelope".to_vec()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut sub).await, "envelope");
    bus.jetstream()
        .delete_stream(bus.default_stream_name("reinc"))
        .await
        .unwrap();
    let acks = bus
        .publish_batch(vec![
            Envelope::new("reinc.c", b"batch-0".to_vec()),
            Envelope::new("reinc.c", b"batch-1".to_vec()),
        ])
        .await;
    assert!(acks.iter().all(|a| a.is_ok()), "{acks:?}");
    assert_eq!(next_text(&mut sub).await, "batch-0");
    assert_eq!(next_text(&mut sub).await, "batch-1");
}

/// A durable consumer whose stream is deleted and created again: the bus
/// makes the consumer again (it owns it), reports the reset as an error
/// item, and delivers the new stream's events. Likewise when only the
/// consumer is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_consumer_is_made_again_after_a_delete() {
    use event_bus::{ConsumerConfig, ConsumerStream, StartPosition};
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus = NatsBus::new(client);
    bus.publish("redur.a", b"first".to_vec()).await.unwrap();
    let mut consumer = bus
        .consume(ConsumerConfig::new("survivor", "redur.>").start(StartPosition::All))
        .await
        .unwrap();
    // Reads until every one of `want` arrived; returns the error items seen.
    async fn read(consumer: &mut ConsumerStream, want: &[String]) -> Vec<event_bus::BusError> {
        let mut errors = Vec::new();
        let mut missing: std::collections::HashSet<&String> = want.iter().collect();
        while !missing.is_empty() {
            let item = tokio::time::timeout(Duration::from_secs(30), consumer.next())
                .await
                .unwrap_or_else(|_| panic!("still missing {missing:?}; errors {errors:?}"))
                .expect("the consumer stream stays open");
            match item {
                Ok(d) => {
                    missing.remove(&String::from_utf8(d.payload.to_vec()).unwrap());
                    d.ack().await.unwrap();
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }
    let errors = read(&mut consumer, &["first".to_string()]).await;
    assert!(errors.is_empty(), "{errors:?}");
    let stream = bus.default_stream_name("redur");
    bus.jetstream().delete_stream(&stream).await.unwrap();
    // While the stream is gone, the consumer says so (once).
    let gone = tokio::time::timeout(Duration::from_secs(15), consumer.next())
        .await
        .expect("the deleted stream is reported")
        .expect("the consumer stream stays open")
        .expect_err("an error item, no delivery");
    assert_eq!(gone.kind(), ErrorKind::NotFound, "{gone}");
    assert!(gone.to_string().contains("does not exist"), "{gone}");
    let new: Vec<String> = (0..20).map(|i| format!("new-{i}")).collect();
    for text in &new {
        bus.publish("redur.a", text.clone().into_bytes())
            .await
            .unwrap();
    }
    let errors = read(&mut consumer, &new).await;
    assert!(
        errors.iter().any(|e| e.kind() == ErrorKind::NotFound
            && e.to_string().contains("survivor")
            && e.to_string().contains("created again")),
        "the reset is reported: {errors:?}"
    );
    // Only the consumer deleted (the stream stays).
    bus.jetstream()
        .get_stream(&stream)
        .await
        .unwrap()
        .delete_consumer("survivor")
        .await
        .unwrap();
    bus.publish("redur.a", b"after".to_vec()).await.unwrap();
    let errors = read(&mut consumer, &["after".to_string()]).await;
    assert!(
        errors
            .iter()
            .any(|e| e.kind() == ErrorKind::NotFound && e.to_string().contains("was deleted")),
        "the reset is reported: {errors:?}"
    );
}

/// The server lists stream names 1024 a page: a pattern that matches more
/// streams finds those on later pages too (it used to read the first page
/// only). Shown by a durable consumer whose filter spans every stream: the
/// error names them all, the one sorted last included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_lookup_reads_every_page_of_names() {
    use event_bus::ConsumerConfig;
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let create = |name: String, subject: String| {
        let js = js.clone();
        async move {
            js.create_stream(jetstream::stream::Config {
                name,
                subjects: vec![subject],
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
    };
    let n = 1100;
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        futures::future::try_join_all(
            chunk
                .iter()
                .map(|i| create(format!("AAA_{i:05}"), format!("pg{i}.x"))),
        )
        .await
        .unwrap();
    }
    create("ZZZ_LAST".into(), "pgz.x".into()).await.unwrap();
    let bus = NatsBus::new(client);
    let err = bus
        .consume(ConsumerConfig::new("paged", "*.x"))
        .await
        .err()
        .expect("a filter over many streams is refused");
    let text = err.to_string();
    assert!(text.contains("spans several streams"), "{}", &text[..300]);
    assert!(
        text.contains("ZZZ_LAST") && text.contains("AAA_01099"),
        "the names past the first page are found"
    );
    assert_eq!(text.matches("AAA_").count(), n, "every stream, once");
}

/// A bus made over a client that is not connected yet decides on the
/// server's version once connected (it used to cache "fine" at its first
/// use, before the connection, and then never refused a 2.9 server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_check_waits_for_the_connection() {
    let legacy =
        std::env::var("NATS_SERVER_LEGACY_BIN").unwrap_or_else(|_| "/usr/sbin/nats-server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url.as_str())
        .await
        .unwrap();
    let bus = NatsBus::new(client.clone());
    // Used before the connection: cannot succeed, and must decide nothing.
    let early = tokio::time::timeout(Duration::from_millis(500), bus.subscribe("old.>")).await;
    assert!(!matches!(early, Ok(Ok(_))), "no server yet");
    let store = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(&legacy)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("this test needs Debian's nats-server 2.9 at {legacy}: {e}"));
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(child);
    wait::until(Duration::from_secs(20), "the client to connect", || {
        client.connection_state() == async_nats::connection::State::Connected
    })
    .await;
    assert!(client.server_info().version.contains("2.9"), "a 2.9 server");
    let err = bus
        .subscribe("old.>")
        .await
        .expect_err("a 2.9 server is refused once connected");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

const NO_CONSUMER_INFO: &str = r#"
authorization {
  users: [
    { user: admin, password: pw }
    { user: noinfo, password: pw, permissions: { publish: { allow: [">"], deny: ["$JS.API.CONSUMER.INFO.>"] } } }
  ]
}
"#;

/// When looking up an existing durable consumer fails for another reason
/// than "it does not exist" (here: the lookup is not permitted, so it times
/// out), `consume` is an error; it used to create the consumer anyway,
/// which silently re-pointed the existing one to the new filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lookup_failure_never_repoints_an_existing_consumer() {
    use event_bus::ConsumerConfig;
    let server =
        NatsServer::start_with(NatsServerOptions::default().extra_config(NO_CONSUMER_INFO))
            .await
            .unwrap();
    let mut config = nats_config(&server.url(), Some(("admin", "pw")));
    config.publish_timeout = Duration::from_secs(1);
    let admin = NatsBus::connect(&config).await.unwrap();
    admin.publish("lookup.a", b"x".to_vec()).await.unwrap();
    drop(
        admin
            .consume(ConsumerConfig::new("shared", "lookup.a"))
            .await
            .unwrap(),
    );
    config.user = Some("noinfo".into());
    let limited = NatsBus::connect(&config).await.unwrap();
    let err = limited
        .consume(ConsumerConfig::new("shared", "lookup.b"))
        .await
        .err()
        .expect("the lookup failed: no consumer is created or changed");
    assert!(err.to_string().contains("shared"), "{err}");
    let stream = admin
        .jetstream()
        .get_stream(admin.default_stream_name("lookup"))
        .await
        .unwrap();
    let info = stream.consumer_info("shared").await.unwrap();
    assert_eq!(
        info.config.filter_subject, "lookup.a",
        "re-pointed: {info:?}"
    );
}
