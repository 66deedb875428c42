//! The connection: server down, limits, permissions, old servers, TLS, credentials in errors, the version check.

use super::*;

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
    let bus = server.bus(&[]).await.unwrap();
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
        let mut tls = event_bus::nats::TlsConfig::default();
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
    let mut tls = event_bus::nats::TlsConfig::default();
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

/// Health follows the server: healthy; the server killed: degraded while
/// the client reconnects, unhealthy within 5 s; the server back: healthy
/// within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_server() {
    use async_nats::connection::State;
    use event_bus::HealthStatus;
    let mut server = NatsServer::start().await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus = NatsBus::new(client.clone());
    let report = bus.health().await;
    assert!(report.is_healthy(), "{report:?}");
    assert!(report.detail.contains("JetStream available"), "{report:?}");

    server.kill();
    let killed = Instant::now();
    // Once the client knows it lost the connection (it reconnects by
    // itself), the bus is degraded, not yet unhealthy.
    wait::until(Duration::from_secs(5), "the client to notice", || {
        client.connection_state() != State::Connected
    })
    .await;
    let report = bus.health().await;
    assert_eq!(report.status, HealthStatus::Degraded, "{report:?}");
    wait::until_async(Duration::from_secs(5), "unhealthy after the kill", || {
        let bus = bus.clone();
        async move { bus.health().await.status == HealthStatus::Unhealthy }
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "unhealthy only after {:?}",
        killed.elapsed()
    );

    server.restart().await.unwrap();
    let back = Instant::now();
    wait::until_async(Duration::from_secs(5), "healthy after the restart", || {
        let bus = bus.clone();
        async move { bus.health().await.is_healthy() }
    })
    .await;
    assert!(back.elapsed() < Duration::from_secs(5));
}
