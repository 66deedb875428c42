//! The registry on both stores (memory, and a JetStream key-value bucket on
//! a real nats-server shared by two connections) and the contracts
//! directory: versions, compatibility, drafts, bad schemas, subject
//! look-ups. Validation on publish and consume: `validating_bus.rs`.

use event_bus::ErrorKind;
use event_bus_schema::compat::Mode;
use event_bus_schema::registry::{Registry, TypeSettings, MAX_SCHEMA_BYTES};
use event_bus_schema::ValidationFailure;
use event_bus_testkit::nats_server::NatsServer;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

mod common;
use common::{user_breaking, user_v1, user_v2};

#[tokio::test]
async fn versions_are_checked_at_registration_in_memory() {
    let r = Registry::memory();
    r.define(
        "auth.user.created",
        TypeSettings::new("auth.events.user.created"),
    )
    .await
    .unwrap();
    assert_eq!(r.register("auth.user.created", user_v1()).await.unwrap(), 1);
    assert_eq!(
        r.register("auth.user.created", user_v1()).await.unwrap(),
        1,
        "same schema, same version"
    );
    assert_eq!(r.register("auth.user.created", user_v2()).await.unwrap(), 2);
    let err = r
        .register("auth.user.created", user_breaking())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let text = err.to_string();
    assert!(text.contains("FULL_TRANSITIVE"), "{text}");
    assert!(text.contains("/properties/user_id/type"), "{text}");
    assert!(
        text.contains("required_added at /properties/tenant"),
        "{text}"
    );
    let changes = r.check("auth.user.created", &user_breaking()).unwrap_err();
    assert!(changes.len() >= 2, "{changes:?}");
    assert_eq!(r.latest("auth.user.created").unwrap().version, 2);

    // NONE lets anything through.
    r.define(
        "auth.user.created",
        TypeSettings::new("auth.events.user.created").compatibility(Mode::None),
    )
    .await
    .unwrap();
    assert_eq!(
        r.register("auth.user.created", user_breaking())
            .await
            .unwrap(),
        3
    );
}

/// Registering a schema an earlier version has returns that version and
/// adds nothing, as Confluent does: under the default rule and under
/// BACKWARD, where checking v1 again against v2 would refuse it.
#[tokio::test]
async fn a_schema_an_earlier_version_has_registers_as_that_version() {
    let mut email_optional = user_v1();
    email_optional["required"] = json!(["user_id"]);
    for (mode, v2) in [
        (Mode::FullTransitive, user_v2()),
        (Mode::Backward, email_optional),
    ] {
        let r = Registry::memory();
        let settings = TypeSettings::new("auth.events.user.created").compatibility(mode);
        r.define("auth.user.created", settings).await.unwrap();
        assert_eq!(r.register("auth.user.created", user_v1()).await.unwrap(), 1);
        assert_eq!(
            r.register("auth.user.created", v2.clone()).await.unwrap(),
            2
        );
        assert_eq!(
            r.register("auth.user.created", user_v1()).await.unwrap(),
            1,
            "{mode}: v1's schema again is v1"
        );
        assert_eq!(r.check("auth.user.created", &user_v1()), Ok(1), "{mode}");
        let t = r.get("auth.user.created").unwrap();
        assert_eq!(
            t.versions.keys().copied().collect::<Vec<_>>(),
            [1, 2],
            "{mode}"
        );
        assert_eq!(
            r.register("auth.user.created", v2).await.unwrap(),
            2,
            "{mode}"
        );
    }
}

/// `Registry::validate` is the one way to validate a payload: JSON bytes
/// and the same document parsed give the same verdict and violations; text
/// that is not JSON is a violation at the root; an unknown type or version
/// says so.
#[tokio::test]
async fn validate_takes_bytes_or_a_parsed_value_alike() {
    let r = Registry::memory();
    r.register("geo.user", user_v1()).await.unwrap();
    let docs = [
        json!({"user_id": "u1", "email": "a@example.com"}),
        json!({"user_id": 1}),
        json!({"email": 2}),
        json!([]),
        json!(null),
    ];
    for doc in docs {
        let bytes = serde_json::to_vec(&doc).unwrap();
        let from_bytes = r.validate("geo.user", None, &bytes);
        let from_value = r.validate("geo.user", Some(1), &doc);
        match (from_bytes, from_value) {
            (Ok(a), Ok(b)) => assert_eq!((a.version, b.version), (1, 1), "{doc}"),
            (
                Err(ValidationFailure::Invalid { violations: a, .. }),
                Err(ValidationFailure::Invalid { violations: b, .. }),
            ) => {
                assert!(!a.is_empty(), "{doc}");
                assert_eq!(a, b, "{doc}");
            }
            (a, b) => panic!("{doc}: bytes {a:?}, value {b:?}"),
        }
    }
    let Err(ValidationFailure::Invalid { violations, .. }) =
        r.validate("geo.user", None, b"{\"id\":")
    else {
        panic!("text that is not JSON is refused")
    };
    assert_eq!(violations[0].pointer, "");
    assert!(
        violations[0].message.starts_with("not JSON"),
        "{violations:?}"
    );
    for (type_name, version) in [("geo.none", None), ("geo.user", Some(2))] {
        let failure = r.validate(type_name, version, &json!({})).unwrap_err();
        assert!(
            matches!(failure, ValidationFailure::UnknownVersion { .. }),
            "{}",
            failure.describe("s")
        );
    }
}

/// A schema is compiled in the draft its `$schema` names: a draft-07 tuple
/// (`items` as a list, `additionalItems`) that passes its meta-schema also
/// compiles and validates as draft 7; an unknown `$schema` is an error
/// naming it.
#[tokio::test]
async fn schemas_are_compiled_in_the_draft_they_declare() {
    let r = Registry::memory();
    let draft7 = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "point": {
                "type": "array",
                "items": [{"type": "string"}, {"type": "integer"}],
                "additionalItems": false
            },
            "coupon": {"type": "string"},
            "email": {"type": "string"}
        },
        "dependencies": {"coupon": ["email"]}
    });
    assert_eq!(r.register("geo.point", draft7).await.unwrap(), 1);
    let ok = br#"{"point": ["a", 1], "coupon": "c", "email": "e"}"#;
    r.validate("geo.point", None, ok).unwrap();
    for (bad, at) in [
        (&br#"{"point": ["a", "b"]}"#[..], "/point/1"),
        (br#"{"point": ["a", 1, 2]}"#, "/point"),
        (br#"{"coupon": "c"}"#, ""),
    ] {
        let failure = r.validate("geo.point", None, bad).unwrap_err();
        let text = failure.describe("geo");
        let event_bus_schema::registry::ValidationFailure::Invalid { violations, .. } = failure
        else {
            panic!("{text}")
        };
        assert_eq!(violations[0].pointer, at, "{text}");
    }

    let draft2019 = json!({
        "$schema": "https://json-schema.org/draft/2019-09/schema",
        "type": "array",
        "items": [{"type": "string"}],
        "additionalItems": {"type": "integer"}
    });
    assert_eq!(r.register("geo.line", draft2019).await.unwrap(), 1);
    r.validate("geo.line", None, br#"["a", 1, 2]"#).unwrap();
    r.validate("geo.line", None, br#"["a", "b"]"#).unwrap_err();

    // Draft 4: a boolean `exclusiveMinimum` modifies `minimum`.
    let draft4 = json!({
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "integer",
        "minimum": 0,
        "exclusiveMinimum": true
    });
    assert_eq!(r.register("geo.count", draft4).await.unwrap(), 1);
    r.validate("geo.count", None, b"1").unwrap();
    r.validate("geo.count", None, b"0").unwrap_err();

    // Without `$schema`: 2020-12, where a list is not a valid `items`.
    let err = r
        .register("geo.bare", json!({"items": [{"type": "string"}]}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");

    let unknown = json!({"$schema": "https://example.com/my-dialect", "type": "object"});
    let err = r.register("geo.custom", unknown).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let text = err.to_string();
    assert!(
        text.contains("https://example.com/my-dialect") && text.contains("$schema"),
        "{text}"
    );
}

/// The checker and the validator agree: when a v2 adding a keyword is
/// accepted under FULL_TRANSITIVE, an event v1's producers send is valid
/// under v2. Keywords the checker does not analyse must not be taken for
/// nothing (each case but the control is refused).
#[tokio::test]
async fn an_accepted_version_accepts_what_the_earlier_one_produced() {
    let draft7 = "http://json-schema.org/draft-07/schema#";
    // Draft 7 (`tags` a one-string tuple) or 2020-12.
    let base = |schema_uri: Option<&str>| {
        let mut s = json!({
            "type": "object",
            "properties": {
                "email": {"type": "string"},
                "coupon": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}}
            }
        });
        if let Some(uri) = schema_uri {
            s["$schema"] = json!(uri);
            s["properties"]["tags"]["items"] = json!([{"type": "string"}]);
        }
        s
    };
    let with = |mut s: Value, pointer: &str, kw: &str, value: Value| {
        s.pointer_mut(pointer).unwrap()[kw] = value;
        s
    };
    let coupon = json!({"coupon": "SPRING"});
    let tags = json!({"tags": ["a", "b"]});
    // (draft, where, the keyword v2 adds, its value, an event of v1's producers)
    let added = [
        (
            Some(draft7),
            "",
            "dependencies",
            json!({"coupon": ["email"]}),
            &coupon,
        ),
        (
            None,
            "",
            "dependentRequired",
            json!({"coupon": ["email"]}),
            &coupon,
        ),
        (
            None,
            "",
            "dependentSchemas",
            json!({"coupon": {"required": ["email"]}}),
            &coupon,
        ),
        (
            Some(draft7),
            "/properties/tags",
            "additionalItems",
            json!(false),
            &tags,
        ),
    ];
    let mut cases: Vec<(Value, Value, Value)> = added
        .into_iter()
        .map(|(uri, at, kw, value, event)| {
            (base(uri), with(base(uri), at, kw, value), event.clone())
        })
        .collect();
    // The control: the keyword unchanged, an optional property added.
    let deps = with(
        base(Some(draft7)),
        "",
        "dependencies",
        json!({"coupon": ["email"]}),
    );
    let name = json!({"type": "string"});
    cases.push((
        deps.clone(),
        with(deps, "/properties", "name", name),
        json!({"coupon": "SPRING", "email": "a@example.com"}),
    ));
    let mut accepted = 0;
    for (v1, v2, event) in cases {
        let r = Registry::memory();
        r.register("shop.order", v1.clone()).await.unwrap();
        let payload = serde_json::to_vec(&event).unwrap();
        r.validate("shop.order", Some(1), &payload)
            .unwrap_or_else(|f| panic!("the event is valid under v1: {}", f.describe("t")));
        match r.register("shop.order", v2.clone()).await {
            Ok(2) => {
                accepted += 1;
                if let Err(f) = r.validate("shop.order", Some(2), &payload) {
                    panic!(
                        "v2 was accepted under FULL_TRANSITIVE but refuses an event of v1: {}\nv1 {v1}\nv2 {v2}",
                        f.describe("t")
                    );
                }
            }
            Ok(n) => panic!("registered as v{n}"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
        }
    }
    assert_eq!(accepted, 1, "only the control is accepted");
}

#[tokio::test]
async fn bad_schemas_are_errors_naming_the_problem() {
    let r = Registry::memory();
    let err = r.register("t.x", json!({"type": 5})).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("/type"), "{err}");

    let huge = json!({"description": "x".repeat(10 * 1024 * 1024)});
    let err = r.register("t.x", huge).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(
        err.to_string().contains(&MAX_SCHEMA_BYTES.to_string()),
        "{err}"
    );

    let err = r.register("Bad Name", user_v1()).await.unwrap_err();
    assert!(err.to_string().contains("Bad Name"), "{err}");

    // A reference cycle: refused or validated, within a bound, never a hang.
    let cycle = json!({
        "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
        "$ref": "#/$defs/a"
    });
    let r2 = r.clone();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async move {
        match r2.register("t.cycle", cycle).await {
            Ok(_) => r2
                .validate("t.cycle", None, b"{}")
                .map(|_| ())
                .map_err(|f| f.describe("t")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect("a $ref cycle is decided within 10 s");
    let err = outcome.expect_err("a $ref cycle is refused");
    assert!(err.contains("t.cycle"), "{err}");

    // A remote reference is not fetched.
    let err = r
        .register(
            "t.remote",
            json!({"$ref": "https://example.com/schema.json"}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("example.com"), "{err}");
}

#[tokio::test]
async fn a_contracts_directory_loads_and_versions_stay_immutable() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("auth.user.created");
    std::fs::create_dir(&t).unwrap();
    std::fs::write(
        t.join("type.json"),
        r#"{"subject": "auth.events.user.created", "compatibility": "BACKWARD", "validation": "enforce"}"#,
    )
    .unwrap();
    std::fs::write(t.join("v1.json"), user_v1().to_string()).unwrap();
    std::fs::write(t.join("v2.json"), user_v2().to_string()).unwrap();
    let r = Registry::memory();
    let report = r.load_dir(dir.path()).await.unwrap();
    assert_eq!(report.types, 1);
    assert_eq!(
        report.registered,
        vec![
            ("auth.user.created".to_string(), 1),
            ("auth.user.created".to_string(), 2)
        ]
    );
    assert_eq!(
        r.get("auth.user.created").unwrap().settings.compatibility,
        Mode::Backward
    );
    let again = r.load_dir(dir.path()).await.unwrap();
    assert_eq!((again.registered.len(), again.unchanged), (0, 2));

    // Editing a registered version is refused, naming the file.
    std::fs::write(t.join("v1.json"), user_v2().to_string()).unwrap();
    let err = r.load_dir(dir.path()).await.unwrap_err();
    assert!(
        err.to_string().contains("v1.json") && err.to_string().contains("immutable"),
        "{err}"
    );
    std::fs::write(t.join("v1.json"), user_v1().to_string()).unwrap();

    // A malformed schema names the file and the JSON Pointer.
    std::fs::write(
        t.join("v3.json"),
        r#"{"type": "object", "properties": {"a": {"minLength": "two"}}}"#,
    )
    .unwrap();
    let err = r.load_dir(dir.path()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("v3.json") && text.contains("/properties/a/minLength"),
        "{text}"
    );
    // Not JSON at all: the file, line and column.
    std::fs::write(t.join("v3.json"), "{\"type\": ").unwrap();
    let err = r.load_dir(dir.path()).await.unwrap_err();
    assert!(
        err.to_string().contains("v3.json") && err.to_string().contains("line 1"),
        "{err}"
    );
    // A new file repeating an earlier version: refused, naming both.
    std::fs::write(t.join("v3.json"), user_v1().to_string()).unwrap();
    let err = r.load_dir(dir.path()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("v3.json") && text.contains("same schema as auth.user.created v1"),
        "{text}"
    );
    let t_entry = r.get("auth.user.created").unwrap();
    assert_eq!(t_entry.versions.keys().copied().collect::<Vec<_>>(), [1, 2]);
    // A gap in the numbering.
    std::fs::remove_file(t.join("v3.json")).unwrap();
    std::fs::write(t.join("v4.json"), user_v2().to_string()).unwrap();
    let err = r.load_dir(dir.path()).await.unwrap_err();
    assert!(err.to_string().contains("without gaps"), "{err}");
}

async fn nats_registry(server: &NatsServer) -> Registry {
    let client = async_nats::connect(server.url()).await.unwrap();
    Registry::nats(client, "CONTRACTS").await.unwrap()
}

/// How long a registry may take to see what another registered (through
/// the bucket's watch): the bound of a loaded machine, not the figure.
const PROPAGATION: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_share_the_registry_through_jetstream_kv() {
    let mut server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let a = nats_registry(&server).await;
    let b = nats_registry(&server).await;
    a.define(
        "auth.user.created",
        TypeSettings::new("auth.events.user.created"),
    )
    .await
    .unwrap();
    a.register("auth.user.created", user_v1()).await.unwrap();

    // B sees it (typically within a few milliseconds: the figure is
    // printed; the bound is generous for a loaded machine).
    let registered = Instant::now();
    assert_eq!(a.register("auth.user.created", user_v2()).await.unwrap(), 2);
    while b.version("auth.user.created", 2).is_none() {
        assert!(
            registered.elapsed() < PROPAGATION,
            "not seen within {PROPAGATION:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), b.changed()).await;
    }
    eprintln!(
        "a version reached the other registry in {:?}",
        registered.elapsed()
    );
    assert_eq!(
        b.get("auth.user.created").unwrap().settings.subject,
        "auth.events.user.created"
    );
    // B's subject look-up (remembered per subject) follows A's changes.
    assert_eq!(
        b.type_for_subject("auth.events.user.created").unwrap().0,
        "auth.user.created"
    );
    assert!(b.type_for_subject("auth.events.user.deleted").is_none());
    a.define("auth.user.any", TypeSettings::new("auth.events.user.*"))
        .await
        .unwrap();
    let defined = Instant::now();
    while b.type_for_subject("auth.events.user.deleted").is_none() {
        assert!(
            defined.elapsed() < PROPAGATION,
            "not seen within {PROPAGATION:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), b.changed()).await;
    }
    eprintln!(
        "a definition reached the other registry in {:?}",
        defined.elapsed()
    );
    assert_eq!(
        b.type_for_subject("auth.events.user.deleted").unwrap().0,
        "auth.user.any"
    );
    assert_eq!(
        b.type_for_subject("auth.events.user.created").unwrap().0,
        "auth.user.created",
        "the exact pattern is more specific"
    );
    // B checks against what A registered.
    let err = b
        .register("auth.user.created", user_breaking())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");

    // Both register a new version at once: both get distinct numbers.
    let mut v3a = user_v2();
    v3a["properties"]["nickname"] = json!({"type": "string"});
    let mut v3b = user_v2();
    v3b["properties"]["avatar"] = json!({"type": "string"});
    let (ra, rb) = tokio::join!(
        a.register("auth.user.created", v3a),
        b.register("auth.user.created", v3b)
    );
    let mut got = [ra.unwrap(), rb.unwrap()];
    got.sort();
    assert_eq!(got, [3, 4]);

    // A service still on v1 (a rollback, a rolling deploy) registering at
    // start-up gets v1 back: nothing is added.
    assert_eq!(b.register("auth.user.created", user_v1()).await.unwrap(), 1);
    assert_eq!(a.register("auth.user.created", user_v2()).await.unwrap(), 2);

    // A restart of nats-server keeps every version (and no other).
    drop((a, b));
    server.restart().await.unwrap();
    let c = nats_registry(&server).await;
    let t = c.get("auth.user.created").unwrap();
    assert_eq!(
        t.versions.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(t.versions[&1].schema, user_v1());
}

#[tokio::test]
async fn subject_look_ups_follow_definitions() {
    let registry = Registry::memory();
    registry
        .define("shop.any", TypeSettings::new("shop.>"))
        .await
        .unwrap();
    assert_eq!(
        registry.type_for_subject("shop.order.placed").unwrap().0,
        "shop.any"
    );
    assert!(registry.type_for_subject("bank.paid").is_none());
    registry
        .define("shop.order.placed", TypeSettings::new("shop.order.placed"))
        .await
        .unwrap();
    registry
        .define("bank.paid", TypeSettings::new("bank.paid"))
        .await
        .unwrap();
    assert_eq!(
        registry.type_for_subject("shop.order.placed").unwrap().0,
        "shop.order.placed"
    );
    assert_eq!(
        registry.type_for_subject("bank.paid").unwrap().0,
        "bank.paid"
    );
    // Many distinct subjects: each answered right, the memory bounded.
    for i in 0..10_000 {
        let subject = format!("shop.order.{i}");
        assert_eq!(registry.type_for_subject(&subject).unwrap().0, "shop.any");
    }
    registry
        .define("shop.any", TypeSettings::new("shop.*.*.*"))
        .await
        .unwrap();
    assert!(registry.type_for_subject("shop.order.7").is_none());
}
