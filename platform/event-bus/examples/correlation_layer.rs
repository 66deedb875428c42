//! A layer of your own: the `correlation-id` header of each event on a
//! tracing span around each attempt, so that everything the handler logs
//! carries it. Run with `cargo run -p event-bus --example correlation_layer`;
//! it prints the handler's log line inside the `event` span, e.g.
//! `INFO event{correlation_id=req-7f3a handler="welcome"}: welcome user=42`.

use event_bus::runner::{Attempt, Event, Handler, Layer, Next, Outcome, Runner, Timeout};
use event_bus::{Envelope, EventBus, InMemoryBus};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Puts the message's `correlation-id` header on a span around each attempt.
struct Correlation;

impl Layer for Correlation {
    fn call<'a>(&'a self, attempt: &'a Attempt<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        let id = attempt
            .message
            .headers
            .get("correlation-id")
            .unwrap_or("none")
            .to_owned();
        let span = tracing::info_span!("event", correlation_id = %id, handler = attempt.handler);
        Box::pin(next.run().instrument(span))
    }
}

#[derive(serde::Deserialize)]
struct UserCreated {
    user_id: u64,
}

async fn welcome(
    done: event_bus::runner::State<'_, Arc<tokio::sync::Notify>>,
    e: Event<'_, UserCreated>,
    _tx: &mut (),
) -> Outcome {
    tracing::info!(user = e.data.user_id, "welcome");
    done.notify_one();
    Outcome::Ack
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let done = Arc::new(tokio::sync::Notify::new());
    let runner = Runner::builder(bus.clone(), "mails")
        .layer(Correlation)
        .handler(
            Handler::new("welcome", "auth.user.created", welcome)
                .with_state(done.clone())
                .layer(Timeout::new(Duration::from_secs(5))),
        )
        .build()
        .spawn()
        .await?;
    bus.publish_envelope(
        Envelope::new("auth.user.created", br#"{"user_id": 42}"#.to_vec())
            .header("correlation-id", "req-7f3a"),
    )
    .await?;
    // Bounded, should the event never arrive.
    tokio::time::timeout(Duration::from_secs(10), done.notified()).await?;
    let report = runner.shutdown().await;
    println!("handled {} event(s)", report.processed);
    Ok(())
}
