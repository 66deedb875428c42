//! The code blocks of the spec (`docs/EVENTBUS.md`) sections *Usage*, *Module
//! Integration* and *Testing*, as close to verbatim as possible, compiled and
//! run.
//!
//! Each block lives in its own module with the spec's own `use` lines. What
//! had to change is marked `// (test)`: app-specific types are defined
//! minimally, `main` functions became tests, the `while let` loops end because
//! the test closes the bus after publishing, and every wait is bounded by
//! `tokio::time::timeout`. Tests that need a NATS server start a real one
//! (event-bus-testkit's `NatsServer`, on a random loopback port) instead of
//! the spec's docker-compose.

use std::time::Duration;

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(5);

/// The spec's `log::info!` / `log::error!`, routed to `tracing` (which
/// event-bus already depends on) so that the block compiles verbatim.
mod log {
    pub use tracing::{error, info};
}

/// A real JetStream server for the NATS examples (fails with instructions if
/// no nats-server >= 2.10 is installed).
async fn nats_server() -> event_bus_testkit::nats_server::NatsServer {
    event_bus_testkit::nats_server::NatsServer::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits (bounded) until `bus` has `n` live subscriptions: a consumer task
/// must have subscribed before anything is published, since a subscription
/// only gets messages published after it is made.
async fn subscribed(bus: &event_bus::InMemoryBus, n: usize) {
    tokio::time::timeout(WAIT, async {
        while bus.subscription_count() < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the consumer subscribed in time");
}

/// Waits (bounded) until every subscriber has taken what was queued for it.
///
/// `InMemoryBus::close` ends subscriptions *and discards messages still
/// queued* for them, so "publish, then close to end the `while let` loop"
/// must let the subscribers take their messages first; what a subscriber has
/// taken is still delivered after the close, then its stream ends.
async fn drained(bus: &event_bus::InMemoryBus) {
    tokio::time::timeout(WAIT, async {
        while bus.stats().subscriptions.iter().any(|s| s.queued > 0) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the subscribers took their messages in time");
}

// ---------------------------------------------------------------------------
// Usage › Basic Publishing
// ---------------------------------------------------------------------------
#[cfg(feature = "nats")]
mod basic_publishing {
    use super::WAIT;
    use futures::StreamExt; // (test)

    #[allow(unused_imports)]
    // (test) `NatsBus` is only used by the commented-out production lines
    use event_bus::{EventBus, InMemoryBus, NatsBus};
    use std::sync::Arc;

    #[tokio::test]
    async fn main() -> Result<(), Box<dyn std::error::Error>> {
        // Development: In-Memory
        let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());

        // Production: NATS
        // let nats_client = async_nats::connect("nats://localhost:4222").await?;
        // let bus: Arc<dyn EventBus> = Arc::new(NatsBus::new(nats_client));

        let mut probe = bus.subscribe("auth.events.>").await?; // (test)

        // Publish an event
        let payload = serde_json::to_vec(&serde_json::json!({
            "event_type": "user.created",
            "user_id": "usr_123",
            "timestamp": "2026-02-11T23:00:00Z"
        }))?;

        bus.publish("auth.events.user.created", payload).await?;

        // (test) The event arrived, unchanged.
        let msg = tokio::time::timeout(WAIT, probe.next())
            .await?
            .expect("delivered");
        assert_eq!(msg.subject, "auth.events.user.created");
        let event: serde_json::Value = serde_json::from_slice(&msg.payload)?;
        assert_eq!(event["event_type"], "user.created");
        assert_eq!(event["user_id"], "usr_123");
        assert_eq!(event["timestamp"], "2026-02-11T23:00:00Z");

        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Usage › Subscribing to Events
// ---------------------------------------------------------------------------
mod subscribing_to_events {
    use super::WAIT;

    #[allow(unused_imports)]
    // (test) `InMemoryBus`'s inherent methods shadow the trait's, so `EventBus` is unused
    use event_bus::{EventBus, InMemoryBus};
    use futures::StreamExt;

    #[tokio::test]
    async fn main() -> Result<(), Box<dyn std::error::Error>> {
        let bus = InMemoryBus::new();

        // Subscribe to all auth events
        let mut stream = bus.subscribe("auth.events.>").await?;

        // (test) Publish a few events (one not matching the pattern), then close
        // the bus so that the loop below ends.
        let publisher = bus.clone();
        let publishing = tokio::spawn(async move {
            for (subject, user) in [
                ("auth.events.user.created", "usr_1"),
                ("billing.events.invoice.paid", "usr_x"),
                ("auth.events.user.profile.updated", "usr_2"),
                ("auth.events", "usr_x"), // `>` needs at least one more token
                ("auth.events.session.revoked", "usr_3"),
            ] {
                let payload = serde_json::to_vec(&serde_json::json!({ "user_id": user })).unwrap();
                publisher.publish(subject, payload).await.unwrap();
            }
            super::drained(&publisher).await;
            publisher.close();
        });
        let mut received = Vec::new(); // (test)

        tokio::time::timeout(WAIT, async {
            // Process events as they arrive
            while let Some(msg) = stream.next().await {
                println!(
                    "Received event on {}: {} bytes",
                    msg.subject,
                    msg.payload.len()
                );

                // Deserialize and process
                let event: serde_json::Value = serde_json::from_slice(&msg.payload)?;
                println!("Event: {:?}", event);
                received.push((msg.subject.to_string(), event["user_id"].clone()));
                // (test)
            }
            Ok::<_, Box<dyn std::error::Error>>(())
        })
        .await??;

        publishing.await?;
        assert_eq!(
            received,
            vec![
                ("auth.events.user.created".to_string(), "usr_1".into()),
                (
                    "auth.events.user.profile.updated".to_string(),
                    "usr_2".into()
                ),
                ("auth.events.session.revoked".to_string(), "usr_3".into()),
            ]
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Usage › Subject Pattern Matching (the bullet list, through the bus)
// ---------------------------------------------------------------------------
mod subject_pattern_matching {
    use event_bus::subject::matches;
    use event_bus::InMemoryBus;
    use futures::{FutureExt, StreamExt};

    #[tokio::test]
    async fn wildcards_as_documented() {
        let cases = [
            ("auth.*.created", "auth.user.created", true),
            ("auth.*.created", "auth.user.profile.created", false),
            ("auth.events.>", "auth.events.user.created", true),
            ("auth.events.>", "auth.events.user.profile.updated", true),
            ("auth.>", "auth.x", true),
            ("auth.>", "auth.events.user.profile.updated", true),
            ("auth.>", "auth", false),
            ("auth.>", "authx.events", false),
        ];
        for (pattern, subject, want) in cases {
            assert_eq!(matches(pattern, subject), want, "{pattern} vs {subject}");
            let bus = InMemoryBus::new();
            let mut sub = bus.subscribe(pattern).await.unwrap();
            bus.publish(subject, b"{}".to_vec()).await.unwrap();
            // An `Ok` publish has queued the message for every matching
            // subscriber, so "not delivered" is observable without waiting.
            let got = sub.next().now_or_never().flatten();
            assert_eq!(got.is_some(), want, "{pattern} vs {subject}");
            if let Some(msg) = got {
                assert_eq!(msg.subject, subject);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Usage › Config-Driven Swap
// ---------------------------------------------------------------------------
#[cfg(feature = "nats")]
mod config_driven_swap {
    use super::WAIT;
    use event_bus::async_nats; // (test) the async-nats version NatsBus is built against
    use futures::StreamExt; // (test)

    use event_bus::{EventBus, InMemoryBus, NatsBus};
    use std::sync::Arc;

    // (test) The application's own configuration.
    pub enum BusType {
        Nats,
        InMemory,
    }

    pub struct AppConfig {
        pub bus_type: BusType,
        pub nats_url: String,
    }

    async fn create_bus(
        config: &AppConfig,
    ) -> Result<Arc<dyn EventBus>, Box<dyn std::error::Error>> {
        let bus: Arc<dyn EventBus> = match config.bus_type {
            BusType::Nats => {
                let client = async_nats::connect(&config.nats_url).await?;
                Arc::new(NatsBus::new(client))
            }
            BusType::InMemory => Arc::new(InMemoryBus::new()),
        };

        Ok(bus)
    }

    /// The same code against whichever bus the configuration selects.
    async fn round_trip(bus: Arc<dyn EventBus>) -> Result<(), Box<dyn std::error::Error>> {
        let mut stream = bus.subscribe("auth.events.>").await?;
        let payload = serde_json::to_vec(&serde_json::json!({ "user_id": "usr_123" }))?;
        bus.publish("auth.events.user.created", payload.clone())
            .await?;
        let msg = tokio::time::timeout(WAIT, stream.next())
            .await?
            .expect("delivered");
        assert_eq!(msg.subject, "auth.events.user.created");
        assert_eq!(msg.payload, payload);
        Ok(())
    }

    #[tokio::test]
    async fn in_memory_branch() -> Result<(), Box<dyn std::error::Error>> {
        let config = AppConfig {
            bus_type: BusType::InMemory,
            nats_url: "nats://unused:4222".into(),
        };
        let bus = create_bus(&config).await?;
        assert_eq!(bus.backend_name(), "memory");
        round_trip(bus).await
    }

    /// (test) The same round trip on Kafka, the bus from configuration
    /// (`event_bus::connect`; the spec's own `create_bus` knows NATS and
    /// memory only), on a tansu broker the test starts (feature `kafka`).
    #[cfg(feature = "kafka")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_through_connect() -> Result<(), Box<dyn std::error::Error>> {
        let server = event_bus_testkit::kafka_server::KafkaServer::start().await?;
        let mut config = event_bus::BusConfig::default();
        config.bus_type = event_bus::BusType::Kafka;
        config.kafka.bootstrap_servers = vec![server.bootstrap()];
        let bus = event_bus::connect(&config).await?;
        assert_eq!(bus.backend_name(), "kafka");
        round_trip(bus).await
    }

    #[tokio::test]
    async fn nats_branch() -> Result<(), Box<dyn std::error::Error>> {
        let server = super::nats_server().await;
        let config = AppConfig {
            bus_type: BusType::Nats,
            nats_url: server.url(),
        };
        let bus = create_bus(&config).await?;
        assert_eq!(bus.backend_name(), "nats");
        round_trip(bus).await
    }
}

// ---------------------------------------------------------------------------
// Module Integration (steps 1-4) and Testing › Unit Tests with InMemoryBus
// ---------------------------------------------------------------------------
mod module_integration {
    use serde::{Deserialize, Serialize}; // (test)

    // 1. Add dependency to `Cargo.toml`
    const CARGO_TOML: &str = r#"
[dependencies]
event-bus = { path = "../../platform/event-bus" }
"#;

    /// The dependency line works from a module two levels below the workspace
    /// root (e.g. `modules/auth/Cargo.toml`) and names this crate.
    #[test]
    fn step1_dependency_path_points_at_this_crate() {
        let doc: toml::Table = toml::from_str(CARGO_TOML).unwrap();
        let path = doc["dependencies"]["event-bus"]["path"].as_str().unwrap();
        let this_crate = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(this_crate.join("Cargo.toml")).unwrap())
                .unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some("event-bus"));
        assert_eq!(manifest["lib"]["name"].as_str(), Some("event_bus"));
        // `../../platform/event-bus`, taken from `<workspace>/modules/auth`, is this crate.
        let workspace = this_crate.parent().unwrap().parent().unwrap();
        let mut resolved = workspace.join("modules").join("auth");
        for part in std::path::Path::new(path).components() {
            match part {
                std::path::Component::ParentDir => {
                    resolved.pop();
                }
                other => resolved.push(other),
            }
        }
        assert_eq!(
            resolved.canonicalize().unwrap(),
            this_crate.canonicalize().unwrap()
        );
    }

    // 2. Wire into application state
    use event_bus::EventBus;
    use std::sync::Arc;

    pub struct AppState {
        pub bus: Arc<dyn EventBus>,
        // ... other state
    }

    // (test) Minimal stand-ins for axum's extractors and the app's types, so
    // that the handler's signature stays as in the spec.
    pub struct State<T>(pub T);
    #[derive(Debug)]
    pub struct Json<T>(pub T);

    pub struct CreateUserRequest {
        pub email: String,
    }

    #[derive(Debug, PartialEq)]
    pub struct UserResponse {
        pub user_id: String,
        pub email: String,
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub struct UserCreatedEvent {
        pub user_id: String,
        pub email: String,
        pub event_type: String,
    }

    #[derive(Debug)]
    pub enum AppError {
        Serialize(serde_json::Error),
        Bus(event_bus::BusError),
    }

    impl std::fmt::Display for AppError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                AppError::Serialize(e) => write!(f, "cannot serialize the event: {e}"),
                AppError::Bus(e) => write!(f, "cannot publish the event: {e}"),
            }
        }
    }

    impl From<serde_json::Error> for AppError {
        fn from(e: serde_json::Error) -> Self {
            AppError::Serialize(e)
        }
    }

    impl From<event_bus::BusError> for AppError {
        fn from(e: event_bus::BusError) -> Self {
            AppError::Bus(e)
        }
    }

    // 3. Publish events from handlers
    async fn create_user(
        State(state): State<Arc<AppState>>,
        Json(payload): Json<CreateUserRequest>,
    ) -> Result<Json<UserResponse>, AppError> {
        // ... create user in database
        let user_id = "usr_123".to_string(); // (test) the id the database assigned
        let email = payload.email;
        let response = UserResponse {
            user_id: user_id.clone(),
            email: email.clone(),
        };

        // Publish event
        let event = UserCreatedEvent {
            user_id,
            email,
            event_type: "user.created".into(),
        };
        let event_bytes = serde_json::to_vec(&event)?;
        state
            .bus
            .publish("auth.events.user.created", event_bytes)
            .await?;

        Ok(Json(response))
    }

    // 4. Subscribe to events in background tasks
    mod background {
        use super::super::log;
        use event_bus::{BusMessage, EventBus}; // (test)
        use std::sync::{Arc, Mutex}; // (test)

        use futures::StreamExt;

        // (test) What the handler did, for the test to check.
        pub static PROCESSED: Mutex<Vec<String>> = Mutex::new(Vec::new());
        pub static FAILED: Mutex<Vec<String>> = Mutex::new(Vec::new());

        // (test) A handler: events must be JSON objects with a `user_id`.
        async fn handle_event(msg: &BusMessage) -> Result<(), Box<dyn std::error::Error>> {
            let result = serde_json::from_slice::<serde_json::Value>(&msg.payload)
                .map_err(|e| e.to_string())
                .and_then(|v| match v["user_id"].as_str() {
                    Some(_) => Ok(()),
                    None => Err("no user_id".to_string()),
                });
            match result {
                Ok(()) => {
                    PROCESSED.lock().unwrap().push(msg.subject.to_string());
                    Ok(())
                }
                Err(e) => {
                    FAILED.lock().unwrap().push(msg.subject.to_string());
                    Err(e.into())
                }
            }
        }

        pub async fn start_event_consumer(bus: Arc<dyn EventBus>) {
            let mut stream = bus.subscribe("auth.events.>").await.unwrap();

            while let Some(msg) = stream.next().await {
                match handle_event(&msg).await {
                    Ok(_) => log::info!("Processed event: {}", msg.subject),
                    Err(e) => log::error!("Failed to process event: {}", e),
                }
            }
        }
    }

    #[tokio::test]
    async fn step3_handler_publishes_and_responds() {
        use futures::StreamExt;
        let bus = event_bus::InMemoryBus::new();
        let mut stream = bus.subscribe("auth.events.>").await.unwrap();
        let state = Arc::new(AppState {
            bus: Arc::new(bus.clone()),
        });
        let Json(response) = create_user(
            State(state.clone()),
            Json(CreateUserRequest {
                email: "ada@example.com".into(),
            }),
        )
        .await
        .unwrap();
        assert_eq!(
            response,
            UserResponse {
                user_id: "usr_123".into(),
                email: "ada@example.com".into()
            }
        );
        let msg = tokio::time::timeout(super::WAIT, stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.subject, "auth.events.user.created");
        let event: UserCreatedEvent = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(event.email, "ada@example.com");
        assert_eq!(event.event_type, "user.created");
    }

    /// (test) The same handler, unchanged, on Kafka: the bus comes from
    /// configuration (`event_bus::connect`, `type = "kafka"`), on a tansu
    /// broker the test starts (feature `kafka`).
    #[cfg(feature = "kafka")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn step3_handler_publishes_on_kafka_through_connect() {
        use futures::StreamExt;
        let server = event_bus_testkit::kafka_server::KafkaServer::start()
            .await
            .unwrap_or_else(|e| panic!("start the Kafka broker: {e}"));
        let mut config = event_bus::BusConfig::default();
        config.bus_type = event_bus::BusType::Kafka;
        config.kafka.bootstrap_servers = vec![server.bootstrap()];
        let bus = event_bus::connect(&config).await.unwrap();
        assert_eq!(bus.backend_name(), "kafka");
        let mut stream = bus.subscribe("auth.events.>").await.unwrap();
        let state = Arc::new(AppState { bus });
        let Json(response) = create_user(
            State(state),
            Json(CreateUserRequest {
                email: "ada@example.com".into(),
            }),
        )
        .await
        .unwrap();
        assert_eq!(response.user_id, "usr_123");
        let msg = tokio::time::timeout(std::time::Duration::from_secs(30), stream.next())
            .await
            .expect("the event within 30 s")
            .unwrap();
        assert_eq!(msg.subject, "auth.events.user.created");
        let event: UserCreatedEvent = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(event.email, "ada@example.com");
        assert_eq!(event.event_type, "user.created");
    }

    /// The handler turns a bus error into its own error (here: a publish to a
    /// closed bus, on a subject whose route is cached).
    #[tokio::test]
    async fn step3_handler_reports_bus_errors() {
        let bus = event_bus::InMemoryBus::new();
        let state = Arc::new(AppState {
            bus: Arc::new(bus.clone()),
        });
        let request = || {
            Json(CreateUserRequest {
                email: "ada@example.com".into(),
            })
        };
        create_user(State(state.clone()), request()).await.unwrap();
        bus.close();
        let err = create_user(State(state), request()).await;
        assert!(
            matches!(&err, Err(AppError::Bus(e)) if e.kind() == event_bus::ErrorKind::Closed),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn step4_background_consumer_processes_until_the_bus_closes() {
        let bus = event_bus::InMemoryBus::new();
        let consumer = tokio::spawn(background::start_event_consumer(Arc::new(bus.clone())));
        super::subscribed(&bus, 1).await;

        bus.publish(
            "auth.events.user.created",
            br#"{"user_id":"usr_1"}"#.to_vec(),
        )
        .await
        .unwrap();
        bus.publish("auth.events.user.deleted", b"not json".to_vec())
            .await
            .unwrap();
        bus.publish("billing.events.paid", br#"{"user_id":"usr_x"}"#.to_vec())
            .await
            .unwrap();
        bus.publish(
            "auth.events.user.profile.updated",
            br#"{"user_id":"usr_1"}"#.to_vec(),
        )
        .await
        .unwrap();
        super::drained(&bus).await;
        bus.close();

        tokio::time::timeout(super::WAIT, consumer)
            .await
            .expect("the consumer ends when the bus closes")
            .unwrap();
        assert_eq!(
            *background::PROCESSED.lock().unwrap(),
            [
                "auth.events.user.created",
                "auth.events.user.profile.updated"
            ]
        );
        assert_eq!(
            *background::FAILED.lock().unwrap(),
            ["auth.events.user.deleted"]
        );
    }

    // Testing › Unit Tests with InMemoryBus
    #[cfg(test)]
    mod tests {
        use super::{create_user, AppState, CreateUserRequest, Json, State, UserCreatedEvent}; // (test)
        use std::sync::Arc; // (test)
        use std::time::Duration; // (test)

        #[allow(unused_imports)]
        // (test) `InMemoryBus`'s inherent methods shadow the trait's, so `EventBus` is unused
        use event_bus::{EventBus, InMemoryBus};
        use futures::StreamExt;

        #[tokio::test]
        async fn test_user_creation_publishes_event() {
            let bus = Arc::new(InMemoryBus::new());
            let mut stream = bus.subscribe("auth.events.user.created").await.unwrap();

            // Execute the operation
            let state = AppState { bus: bus.clone() };
            create_user(
                State(Arc::new(state)),
                Json(CreateUserRequest {
                    email: "ada@example.com".into(),
                }),
            )
            .await
            .unwrap();

            // Verify event was published
            let msg = tokio::time::timeout(Duration::from_secs(1), stream.next())
                .await
                .unwrap()
                .unwrap();

            let event: UserCreatedEvent = serde_json::from_slice(&msg.payload).unwrap();
            assert_eq!(event.user_id, "usr_123");
        }
    }
}

// ---------------------------------------------------------------------------
// Testing › Integration Tests with NATS
// ---------------------------------------------------------------------------
#[cfg(feature = "nats")]
mod integration_tests_with_nats {
    use super::WAIT;
    use event_bus::async_nats; // (test)
    use event_bus::{EventBus, NatsBus}; // (test)
    use futures::StreamExt; // (test)
    use std::sync::Arc; // (test)

    const DOCKER_COMPOSE_TEST_YML: &str = r#"
# docker-compose.test.yml
services:
  nats:
    image: nats:2.10-alpine
    command: ["-js", "-sd", "/data"]
    ports:
      - "4222:4222"
"#;

    /// The compose file's image is the server version `NatsBus` requires, on
    /// the port the default config uses.
    #[test]
    fn docker_compose_matches_what_the_bus_needs() {
        let (major, minor, _) = event_bus::nats::MIN_SERVER_VERSION;
        assert!(DOCKER_COMPOSE_TEST_YML.contains(&format!("image: nats:{major}.{minor}-alpine")));
        // The compose file publishes the port that the bus's default config uses.
        let default_url = &event_bus::BusConfig::default().nats.urls[0];
        let port = default_url.rsplit(':').next().unwrap();
        assert!(
            DOCKER_COMPOSE_TEST_YML.contains(&format!("- \"{port}:4222\"")),
            "{default_url}"
        );
    }

    #[tokio::test]
    // The spec marks this test `#[ignore] // Requires docker-compose`; here it
    // starts its own nats-server, so it always runs (and fails, with install
    // instructions, when no nats-server >= 2.10 is found).
    async fn test_with_real_nats() {
        let server = super::nats_server().await;
        let client = async_nats::connect(server.url()).await.unwrap(); // (test) spec: "nats://localhost:4222"
        let bus = Arc::new(NatsBus::new(client));

        // Test with real NATS...
        let mut stream = bus.subscribe("auth.events.>").await.unwrap();
        bus.publish(
            "auth.events.user.created",
            br#"{"user_id":"usr_123"}"#.to_vec(),
        )
        .await
        .unwrap();
        let msg = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.subject, "auth.events.user.created");
        assert_eq!(&msg.payload[..], br#"{"user_id":"usr_123"}"#);
        assert_eq!(bus.backend_name(), "nats");
    }
}
