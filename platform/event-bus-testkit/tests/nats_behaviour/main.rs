//! NatsBus behaviour beyond the conformance suite, each against its own real
//! nats-server: multi-tenancy (accounts and tenant prefixes), declared
//! streams and drift, errors (server down, payload limit, permissions, old
//! servers), config-driven construction, and the spec's integration example.

use async_nats::jetstream;
use event_bus::config::BusConfig;
use event_bus::nats::streams::StreamAction;
use event_bus::nats::{NatsConfig, StreamSpec, StreamStorage};
use event_bus::{Envelope, ErrorKind, EventBus, EventBusExt, NatsBus, Subscription};
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

mod connection;
mod consumers;
mod streams;
mod tenants;
