//! The registry: versioned JSON Schemas per event type, shared through a
//! JetStream key-value bucket on NATS (or held in memory), with the
//! compatibility rules of [`compat`] checked at registration.
//!
//! On NATS every version is one immutable key, `<type>.v<N>`, written with
//! `create` (a second writer of the same version is refused by the server),
//! and a type's settings are the key `<type>.settings`, updated with
//! compare-and-set. Each [`Registry`] keeps a copy of the bucket and
//! watches it, so a version registered by one service is seen by the others
//! within a moment (about a millisecond in the test, which prints it).

use crate::compat::{self, Change, Mode};
use crate::version::check_size;
pub use crate::version::{
    check_schema, describe, parse_schema, Payload, ValidationFailure, Version, Violation,
    MAX_SCHEMA_BYTES,
};
use event_bus::{BusError, ErrorKind};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

/// The default bucket on NATS.
pub const DEFAULT_BUCKET: &str = "EVENT_CONTRACTS";

/// What validation does with an event that does not match its schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validation {
    /// No validation.
    Off,
    /// Logged (`WARN`) and let through.
    Warn,
    /// Refused: not published, or dead-lettered when consumed.
    #[default]
    Enforce,
}

/// A type's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeSettings {
    /// The subject or subject pattern the type's events travel on.
    pub subject: String,
    /// The compatibility rule new versions must follow.
    #[serde(default, with = "mode_name")]
    pub compatibility: Mode,
    /// What validation does with a violation.
    #[serde(default)]
    pub validation: Validation,
}

impl TypeSettings {
    /// Settings for events on `subject`, `FULL_TRANSITIVE`, enforced.
    pub fn new(subject: impl Into<String>) -> Self {
        TypeSettings {
            subject: subject.into(),
            compatibility: Mode::default(),
            validation: Validation::default(),
        }
    }

    /// With another compatibility rule.
    pub fn compatibility(mut self, mode: Mode) -> Self {
        self.compatibility = mode;
        self
    }

    /// With another validation setting.
    pub fn validation(mut self, v: Validation) -> Self {
        self.validation = v;
        self
    }
}

mod mode_name {
    use crate::compat::Mode;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(m: &Mode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&m.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A type as the registry knows it.
#[derive(Clone, Debug)]
pub struct TypeEntry {
    /// Its settings (a type whose first version was registered before it
    /// was defined has the defaults, its own name as subject).
    pub settings: TypeSettings,
    /// Its versions by number.
    pub versions: BTreeMap<u32, Arc<Version>>,
}

impl TypeEntry {
    /// The newest version.
    pub fn latest(&self) -> Option<&Arc<Version>> {
        self.versions.values().next_back()
    }
}

enum Store {
    Memory,
    Kv(Box<async_nats::jetstream::kv::Store>),
}

struct Inner {
    store: Store,
    types: RwLock<HashMap<String, TypeEntry>>,
    /// What [`Registry::type_for_subject`] found per subject (a publish
    /// looks its subject up once, not against every type); emptied on every
    /// change and when it reaches [`SUBJECT_CACHE`] entries.
    by_subject: RwLock<HashMap<String, Option<Arc<SubjectType>>>>,
    changed: tokio::sync::watch::Sender<u64>,
    /// The task applying the bucket's changes (NATS).
    watcher: OnceLock<tokio::task::JoinHandle<()>>,
}

/// The type of a subject, as the registry stood when it was looked up.
#[derive(Debug)]
pub(crate) struct SubjectType {
    /// The type's name.
    pub(crate) name: String,
    /// Its settings.
    pub(crate) settings: TypeSettings,
    /// Its newest version, if any.
    pub(crate) latest: Option<Arc<Version>>,
}

/// Subjects whose type [`Inner::by_subject`] remembers, at most.
const SUBJECT_CACHE: usize = 4096;

impl Inner {
    /// After a change of `types` (its write lock released): forget the
    /// subjects' types, wake the watchers.
    fn changed(&self) {
        self.by_subject.write().clear();
        self.changed.send_modify(|n| *n += 1);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.get() {
            w.abort();
        }
    }
}

/// The registry of event contracts. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("types", &self.inner.types.read().len())
            .finish()
    }
}

/// Checks an event type's name: dot-separated tokens of `a-z`, `0-9`, `_`
/// and `-`, the last not `settings` nor `v<N>` (those end the bucket's keys).
pub fn validate_type_name(name: &str) -> Result<(), BusError> {
    let bad = |why: &str| {
        BusError::new(
            ErrorKind::Config,
            format!("invalid event type name {name:?}: {why}"),
        )
    };
    if name.is_empty() || name.len() > 200 {
        return Err(bad("must be 1 to 200 characters"));
    }
    for token in name.split('.') {
        if token.is_empty() {
            return Err(bad("empty token"));
        }
        if !token
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(bad("tokens are made of a-z, 0-9, _ and -"));
        }
    }
    let last = name.rsplit('.').next().unwrap_or_default();
    if last == "settings" || parse_version_token(last).is_some() {
        return Err(bad("the last token cannot be `settings` or `v<N>`"));
    }
    Ok(())
}

fn parse_version_token(token: &str) -> Option<u32> {
    token.strip_prefix('v')?.parse().ok().filter(|v| *v > 0)
}

/// A bucket key: (type, `None` for settings or `Some(version)`).
fn parse_key(key: &str) -> Option<(&str, Option<u32>)> {
    let (type_name, last) = key.rsplit_once('.')?;
    if last == "settings" {
        return Some((type_name, None));
    }
    Some((type_name, Some(parse_version_token(last)?)))
}

fn kv_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> BusError {
    BusError::with_source(
        ErrorKind::Backend,
        format!("schema registry: {what}: {e}"),
        e,
    )
}

impl Registry {
    /// A registry held in this process (for the in-memory bus and tests).
    pub fn memory() -> Self {
        Registry {
            inner: Arc::new(Inner {
                store: Store::Memory,
                types: RwLock::new(HashMap::new()),
                by_subject: RwLock::new(HashMap::new()),
                changed: tokio::sync::watch::channel(0).0,
                watcher: OnceLock::new(),
            }),
        }
    }

    /// The registry in JetStream key-value bucket `bucket` (created if
    /// missing, file storage, one value per key), loaded and then watched
    /// for what other services register.
    pub async fn nats(client: async_nats::Client, bucket: &str) -> Result<Self, BusError> {
        use futures::StreamExt;
        let js = async_nats::jetstream::new(client);
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(async_nats::jetstream::kv::Config {
                    bucket: bucket.to_string(),
                    description: "event-bus event contracts".to_string(),
                    history: 1,
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| kv_error(&format!("creating bucket {bucket}"), e))?,
        };
        // Watch first (from the bucket's start: every key's latest value),
        // so that nothing written between a load and a watch is missed.
        let mut watch = kv
            .watch_all_from_revision(1)
            .await
            .map_err(|e| kv_error("watching the bucket", e))?;
        let (changed, _) = tokio::sync::watch::channel(0u64);
        let types = RwLock::new(HashMap::new());
        let inner = Arc::new(Inner {
            store: Store::Kv(Box::new(kv.clone())),
            types,
            by_subject: RwLock::new(HashMap::new()),
            changed,
            watcher: OnceLock::new(),
        });
        // The initial content: what the bucket holds now, applied before
        // returning (the watch delivers it first; `delta` 0 marks the last).
        let stored = kv
            .status()
            .await
            .map_err(|e| kv_error("reading the bucket's status", e))?
            .info
            .state
            .messages;
        let mut caught_up = stored == 0;
        while !caught_up {
            match tokio::time::timeout(std::time::Duration::from_secs(10), watch.next()).await {
                Ok(Some(Ok(entry))) => {
                    caught_up = entry.delta == 0;
                    apply(&inner, &entry);
                }
                Ok(Some(Err(e))) => return Err(kv_error("reading the bucket", e)),
                Ok(None) => break,
                Err(_) => {
                    return Err(BusError::new(
                        ErrorKind::Timeout,
                        format!("schema registry: loading bucket {bucket} took over 10 s"),
                    ))
                }
            }
        }
        let weak = Arc::downgrade(&inner);
        let watcher = tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                let Some(inner) = weak.upgrade() else { return };
                match entry {
                    Ok(entry) => apply(&inner, &entry),
                    Err(e) => {
                        tracing::warn!(error = %e, "schema registry: watching the bucket failed")
                    }
                }
            }
        });
        let _ = inner.watcher.set(watcher);
        Ok(Registry { inner })
    }

    /// Waits until the registry's content changes (a version or settings,
    /// from this process or, on NATS, another).
    pub async fn changed(&self) {
        let mut rx = self.inner.changed.subscribe();
        let _ = rx.changed().await;
    }

    /// Every type's name, sorted.
    pub fn types(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.types.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// A type's settings and versions.
    pub fn get(&self, type_name: &str) -> Option<TypeEntry> {
        self.inner.types.read().get(type_name).cloned()
    }

    /// A type's settings (without copying its versions).
    pub fn settings(&self, type_name: &str) -> Option<TypeSettings> {
        self.inner
            .types
            .read()
            .get(type_name)
            .map(|t| t.settings.clone())
    }

    /// A type's newest version.
    pub fn latest(&self, type_name: &str) -> Option<Arc<Version>> {
        self.inner
            .types
            .read()
            .get(type_name)
            .and_then(|t| t.latest().cloned())
    }

    /// One version of a type.
    pub fn version(&self, type_name: &str, version: u32) -> Option<Arc<Version>> {
        self.inner
            .types
            .read()
            .get(type_name)
            .and_then(|t| t.versions.get(&version).cloned())
    }

    /// The type whose subject pattern matches `subject` (the most specific
    /// if several do: the longest pattern), with its settings.
    pub fn type_for_subject(&self, subject: &str) -> Option<(String, TypeSettings)> {
        self.subject_type(subject)
            .map(|t| (t.name.clone(), t.settings.clone()))
    }

    /// [`type_for_subject`](Self::type_for_subject) with the type's newest
    /// version, remembered per subject until the registry changes.
    pub(crate) fn subject_type(&self, subject: &str) -> Option<Arc<SubjectType>> {
        if let Some(found) = self.inner.by_subject.read().get(subject) {
            return found.clone();
        }
        let types = self.inner.types.read();
        let found = types
            .iter()
            .filter(|(_, t)| event_bus::subject::matches(&t.settings.subject, subject))
            // The longest pattern wins; between equals, the first name.
            .max_by(|(a_name, a), (b_name, b)| {
                a.settings
                    .subject
                    .len()
                    .cmp(&b.settings.subject.len())
                    .then_with(|| b_name.cmp(a_name))
            })
            .map(|(name, t)| {
                Arc::new(SubjectType {
                    name: name.clone(),
                    settings: t.settings.clone(),
                    latest: t.latest().cloned(),
                })
            });
        // Remembered while `types` is still read-locked: a change waits for
        // the lock and empties the cache after, so nothing stale stays.
        let mut cache = self.inner.by_subject.write();
        if cache.len() >= SUBJECT_CACHE {
            cache.clear();
        }
        cache.insert(subject.to_string(), found.clone());
        found
    }

    /// Defines a type or changes its settings (compare-and-set on NATS: a
    /// concurrent change is retried on the new value).
    pub async fn define(&self, type_name: &str, settings: TypeSettings) -> Result<(), BusError> {
        validate_type_name(type_name)?;
        event_bus::subject::validate_bus_pattern(&settings.subject)?;
        let bytes = serde_json::to_vec(&settings).expect("settings serialise");
        match &self.inner.store {
            Store::Memory => {
                set_settings(&mut self.inner.types.write(), type_name, settings);
                self.inner.changed();
                Ok(())
            }
            Store::Kv(kv) => {
                let key = format!("{type_name}.settings");
                loop {
                    let current = kv
                        .entry(key.as_str())
                        .await
                        .map_err(|e| kv_error(&format!("reading {key}"), e))?;
                    let written = match current {
                        Some(entry) if entry.value.as_ref() == bytes.as_slice() => {
                            return Ok(());
                        }
                        Some(entry) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
                            kv.update(key.as_str(), bytes.clone().into(), entry.revision)
                                .await
                                .map(|_| ())
                                .map_err(|e| e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision)
                        }
                        _ => kv
                            .create(key.as_str(), bytes.clone().into())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists),
                    };
                    match written {
                        Ok(()) => break,
                        // Someone else changed it meanwhile: read it again.
                        Err(true) => continue,
                        Err(false) => {
                            return Err(BusError::new(
                                ErrorKind::Backend,
                                format!("schema registry: writing {key} failed"),
                            ))
                        }
                    }
                }
                self.wait_for(|r| r.settings(type_name).as_ref() == Some(&settings))
                    .await;
                Ok(())
            }
        }
    }

    /// Checks whether `schema` could be registered as the next version of
    /// `type_name` under its compatibility rule: the version it would get
    /// (the existing one if a version has this very schema, as
    /// [`register`](Self::register) returns it), or every breaking change
    /// (JSON Pointer, kind, the rule it breaks and the version it breaks
    /// against).
    pub fn check(&self, type_name: &str, schema: &Value) -> Result<u32, Vec<Change>> {
        let types = self.inner.types.read();
        let Some(t) = types.get(type_name) else {
            return Ok(1);
        };
        if let Some(existing) = existing_version(t, schema) {
            return Ok(existing);
        }
        let earlier: Vec<(u32, &Value)> = t
            .versions
            .values()
            .map(|v| (v.version, &v.schema))
            .collect();
        compat::check(t.settings.compatibility, &earlier, schema)?;
        Ok(t.versions.keys().next_back().map_or(1, |v| v + 1))
    }

    /// Registers `schema` as the next version of `type_name` (defined
    /// first with [`define`](Self::define), or defined here with the type's
    /// name as its subject and the default settings). A schema some version
    /// already has (the latest or an earlier one: a service rolled back, an
    /// old instance of a rolling deploy) is not registered again: that
    /// version's number is returned and nothing is checked or added, as in
    /// Confluent's registry. An incompatible schema is a
    /// [`Conflict`](ErrorKind::Conflict) error listing every breaking change.
    pub async fn register(&self, type_name: &str, schema: Value) -> Result<u32, BusError> {
        validate_type_name(type_name)?;
        let origin = format!("for {type_name}");
        let bytes = serde_json::to_vec(&schema).expect("a Value serialises");
        check_size(&origin, bytes.len())?;
        check_schema(&origin, &schema)?;
        if self.settings(type_name).is_none() {
            self.define(type_name, TypeSettings::new(type_name)).await?;
        }
        loop {
            if let Some(version) = self.registered_as(type_name, &schema) {
                return Ok(version);
            }
            let version = self.check(type_name, &schema).map_err(|changes| {
                BusError::new(
                    ErrorKind::Conflict,
                    format!(
                        "schema {origin} is not compatible ({}): {}",
                        self.get(type_name)
                            .map(|t| t.settings.compatibility)
                            .unwrap_or_default(),
                        changes
                            .iter()
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                )
            })?;
            match &self.inner.store {
                Store::Memory => {
                    let mut types = self.inner.types.write();
                    let t = types.get_mut(type_name).expect("defined above");
                    if t.versions.contains_key(&version) {
                        continue;
                    }
                    t.versions
                        .insert(version, Arc::new(Version::new(type_name, version, schema)));
                    drop(types);
                    self.inner.changed();
                    return Ok(version);
                }
                Store::Kv(kv) => {
                    let key = format!("{type_name}.v{version}");
                    match kv.create(key.as_str(), bytes.clone().into()).await {
                        Ok(_) => {
                            self.wait_for(|r| r.version(type_name, version).is_some())
                                .await;
                            return Ok(version);
                        }
                        Err(e)
                            if e.kind()
                                == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists =>
                        {
                            // Another service registered this number first:
                            // check against it too.
                            self.wait_for(|r| r.version(type_name, version).is_some())
                                .await;
                        }
                        Err(e) => return Err(kv_error(&format!("writing {key}"), e)),
                    }
                }
            }
        }
    }

    /// The number of `type_name`'s version whose schema is `schema`, if any.
    fn registered_as(&self, type_name: &str, schema: &Value) -> Option<u32> {
        let types = self.inner.types.read();
        existing_version(types.get(type_name)?, schema)
    }

    /// Waits (at most 10 s) until the watched copy satisfies `done`: what
    /// this process wrote to the bucket is visible to it on return.
    async fn wait_for(&self, done: impl Fn(&Registry) -> bool) {
        let mut rx = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done(self) {
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                tracing::warn!("schema registry: a write was not seen back within 10 s");
                return;
            }
        }
    }

    /// Validates an event's payload against `type_name`'s version `version`
    /// (the latest if `None`): the version checked, or why not. This is
    /// the one way to validate a payload: JSON bytes as they travel
    /// (`&[u8]`, `&Vec<u8>`) or a parsed value (`&serde_json::Value`), see
    /// [`Payload`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use event_bus_schema::Registry;
    /// let registry = Registry::memory();
    /// let schema = serde_json::json!({"type": "integer", "minimum": 1});
    /// registry.register("geo.count", schema).await.unwrap();
    /// assert!(registry.validate("geo.count", None, b"1").is_ok());
    /// assert!(registry.validate("geo.count", None, &serde_json::json!(0)).is_err());
    /// # }
    /// ```
    pub fn validate<'a>(
        &self,
        type_name: &str,
        version: Option<u32>,
        payload: impl Into<Payload<'a>>,
    ) -> Result<Arc<Version>, ValidationFailure> {
        let found = match version {
            Some(v) => self.version(type_name, v),
            None => self.latest(type_name),
        };
        let Some(schema) = found else {
            return Err(ValidationFailure::UnknownVersion {
                type_name: type_name.to_string(),
                version,
            });
        };
        schema.validate(payload.into())
    }
}

/// The number of the type's version whose schema is `schema`, if any.
fn existing_version(t: &TypeEntry, schema: &Value) -> Option<u32> {
    t.versions
        .values()
        .find(|v| v.schema == *schema)
        .map(|v| v.version)
}

/// Sets a type's settings, creating the type if it is new.
fn set_settings(types: &mut HashMap<String, TypeEntry>, type_name: &str, settings: TypeSettings) {
    match types.get_mut(type_name) {
        Some(t) => t.settings = settings,
        None => {
            types.insert(
                type_name.to_string(),
                TypeEntry {
                    settings,
                    versions: BTreeMap::new(),
                },
            );
        }
    }
}

/// Applies one bucket entry to the local copy.
fn apply(inner: &Inner, entry: &async_nats::jetstream::kv::Entry) {
    if entry.operation != async_nats::jetstream::kv::Operation::Put {
        return;
    }
    let Some((type_name, version)) = parse_key(&entry.key) else {
        tracing::warn!(key = %entry.key, "schema registry: ignoring a key it does not know");
        return;
    };
    let mut types = inner.types.write();
    match version {
        None => match serde_json::from_slice::<TypeSettings>(&entry.value) {
            Ok(settings) => set_settings(&mut types, type_name, settings),
            Err(e) => {
                tracing::warn!(key = %entry.key, error = %e, "schema registry: unreadable settings")
            }
        },
        Some(v) => match serde_json::from_slice::<Value>(&entry.value) {
            Ok(schema) => {
                types
                    .entry(type_name.to_string())
                    .or_insert_with(|| TypeEntry {
                        settings: TypeSettings::new(type_name),
                        versions: BTreeMap::new(),
                    })
                    .versions
                    .entry(v)
                    .or_insert_with(|| Arc::new(Version::new(type_name, v, schema)));
            }
            Err(e) => {
                tracing::warn!(key = %entry.key, error = %e, "schema registry: unreadable schema")
            }
        },
    }
    drop(types);
    inner.changed();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_and_keys() {
        for ok in ["auth.user.created", "billing.invoice-paid", "a"] {
            validate_type_name(ok).unwrap();
        }
        for bad in ["", "Auth.user", "a..b", "a.settings", "a.v2", "a b", "a.*"] {
            assert!(validate_type_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_key("auth.user.created.v12"),
            Some(("auth.user.created", Some(12)))
        );
        assert_eq!(
            parse_key("auth.user.created.settings"),
            Some(("auth.user.created", None))
        );
        assert_eq!(parse_key("auth.user.created.v0"), None);
        assert_eq!(parse_key("plain"), None);
    }
}
