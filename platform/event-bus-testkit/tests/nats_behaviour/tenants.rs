//! Tenants: isolation by account and by subject prefix, stream names per tenant.

use super::*;

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
    let root = server.bus(&[]).await.unwrap();
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
    let root = server.bus(&[]).await.unwrap();
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
