//! Idempotency inboxes: the de-duplication stage of the runner.
//!
//! An inbox records, per `(consumer, message id)`, that an event's effects
//! were committed. [`Inbox::begin`] claims the pair and opens a unit of work
//! (`Tx`) that the handler writes through; [`Inbox::commit`] makes the claim
//! and the handler's writes durable together. A redelivery of an event whose
//! claim committed (for example because the process died between commit and
//! ack) finds the claim and is acknowledged without running the handler
//! again: **exactly-once effects** on top of at-least-once delivery.
//!
//! * [`MemoryInbox`]: bounded, with a TTL; for tests and single-process use
//!   (its `Tx` is a claim token; effects elsewhere are not transactional).
//! * `PgInbox` (crate `event-bus-postgres`): the claim row and the handler's
//!   own writes in one PostgreSQL transaction.
//! * [`NoInbox`]: no de-duplication.

use crate::error::{BusError, ErrorKind};
use crate::message::MessageId;
use async_trait::async_trait;
use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store of processed `(consumer, message id)` pairs.
#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// The unit of work a handler writes through (a database transaction).
    type Tx: Send + 'static;

    /// Claims `(consumer, message_id)`: `Ok(None)` if its effects were
    /// already committed (a duplicate), else a unit of work. A claim held by
    /// another worker at the same moment is an [`ErrorKind::Conflict`]
    /// error (the runner retries).
    async fn begin(
        &self,
        consumer: &str,
        message_id: &MessageId,
    ) -> Result<Option<Self::Tx>, BusError>;

    /// Commits the claim together with the handler's writes.
    async fn commit(&self, tx: Self::Tx) -> Result<(), BusError>;

    /// Abandons the claim and the handler's writes.
    async fn rollback(&self, tx: Self::Tx);

    /// Removes claims older than `age`; returns how many.
    async fn purge_older_than(&self, age: Duration) -> Result<u64, BusError>;

    /// For an inbox that does not de-duplicate: a unit of work to use without
    /// calling `begin`/`commit`/`rollback` (saves their cost per event).
    fn trivial_tx(&self) -> Option<Self::Tx> {
        None
    }
}

/// A shared inbox: runners (or instances of one runner) that share it see
/// each other's claims.
#[async_trait]
impl<I: Inbox> Inbox for Arc<I> {
    type Tx = I::Tx;

    async fn begin(
        &self,
        consumer: &str,
        message_id: &MessageId,
    ) -> Result<Option<Self::Tx>, BusError> {
        (**self).begin(consumer, message_id).await
    }

    async fn commit(&self, tx: Self::Tx) -> Result<(), BusError> {
        (**self).commit(tx).await
    }

    async fn rollback(&self, tx: Self::Tx) {
        (**self).rollback(tx).await
    }

    async fn purge_older_than(&self, age: Duration) -> Result<u64, BusError> {
        (**self).purge_older_than(age).await
    }

    fn trivial_tx(&self) -> Option<Self::Tx> {
        (**self).trivial_tx()
    }
}

/// No de-duplication: every delivery runs the handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoInbox;

#[async_trait]
impl Inbox for NoInbox {
    type Tx = ();

    async fn begin(
        &self,
        _consumer: &str,
        _message_id: &MessageId,
    ) -> Result<Option<()>, BusError> {
        Ok(Some(()))
    }

    async fn commit(&self, _tx: ()) -> Result<(), BusError> {
        Ok(())
    }

    async fn rollback(&self, _tx: ()) {}

    async fn purge_older_than(&self, _age: Duration) -> Result<u64, BusError> {
        Ok(0)
    }

    fn trivial_tx(&self) -> Option<()> {
        Some(())
    }
}

/// An in-process inbox, bounded in size and age.
#[derive(Debug)]
pub struct MemoryInbox {
    state: Arc<Mutex<MemState>>,
    capacity: usize,
    ttl: Duration,
}

/// `(consumer, message id)`, with its hash computed once (a message id
/// hashes its display form, which costs some formatting). The consumer name
/// is shared (see `MemState::consumers`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ClaimKey {
    hash: u64,
    consumer: Arc<str>,
    id: MessageId,
}

impl ClaimKey {
    fn new(consumer: Arc<str>, id: MessageId) -> Self {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = rustc_hash::FxBuildHasher.build_hasher();
        consumer.hash(&mut h);
        id.hash(&mut h);
        ClaimKey {
            hash: h.finish(),
            consumer,
            id,
        }
    }
}

impl std::hash::Hash for ClaimKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

#[derive(Debug, Default)]
struct MemState {
    /// `true` = committed, `false` = claimed (in progress).
    entries: FxHashMap<ClaimKey, (bool, Instant)>,
    /// Committed claims, oldest first (an entry whose time no longer
    /// matches was committed again later and is skipped).
    order: VecDeque<(ClaimKey, Instant)>,
    /// Consumer names, one allocation each.
    consumers: FxHashSet<Arc<str>>,
}

impl MemState {
    fn consumer(&mut self, name: &str) -> Arc<str> {
        if let Some(c) = self.consumers.get(name) {
            return c.clone();
        }
        let c: Arc<str> = Arc::from(name);
        self.consumers.insert(c.clone());
        c
    }
}

/// The claim token of a [`MemoryInbox`]. Dropping it without a commit
/// releases the claim (like a rolled-back transaction).
#[derive(Debug)]
pub struct MemoryClaim {
    key: ClaimKey,
    state: Arc<Mutex<MemState>>,
    settled: bool,
}

impl Drop for MemoryClaim {
    fn drop(&mut self) {
        if !self.settled {
            let mut st = self.state.lock();
            if st.entries.get(&self.key).is_some_and(|(done, _)| !done) {
                st.entries.remove(&self.key);
            }
        }
    }
}

impl Default for MemoryInbox {
    fn default() -> Self {
        Self::new(100_000, Duration::from_secs(24 * 3600))
    }
}

impl MemoryInbox {
    /// Remembers up to `capacity` events for up to `ttl` each.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        MemoryInbox {
            state: Arc::new(Mutex::new(MemState::default())),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// Number of remembered claims.
    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn evict(&self, st: &mut MemState, now: Instant) {
        while let Some((key, at)) = st.order.front() {
            let expired = now.duration_since(*at) >= self.ttl;
            if !expired && st.entries.len() <= self.capacity {
                break;
            }
            if st.entries.get(key).is_some_and(|(_, t)| t == at) {
                st.entries.remove(key);
            }
            st.order.pop_front();
        }
    }
}

#[async_trait]
impl Inbox for MemoryInbox {
    type Tx = MemoryClaim;

    async fn begin(
        &self,
        consumer: &str,
        message_id: &MessageId,
    ) -> Result<Option<MemoryClaim>, BusError> {
        let now = Instant::now();
        let mut st = self.state.lock();
        self.evict(&mut st, now);
        let key = ClaimKey::new(st.consumer(consumer), message_id.clone());
        match st.entries.get(&key) {
            Some((true, _)) => Ok(None),
            Some((false, _)) => Err(BusError::new(
                ErrorKind::Conflict,
                format!("message {message_id} is being processed by another worker of consumer {consumer:?}"),
            )),
            None => {
                // Only committed claims are queued for eviction: one in
                // progress is released by its token (commit or drop).
                st.entries.insert(key.clone(), (false, now));
                Ok(Some(MemoryClaim {
                    key,
                    state: self.state.clone(),
                    settled: false,
                }))
            }
        }
    }

    async fn commit(&self, mut tx: MemoryClaim) -> Result<(), BusError> {
        tx.settled = true;
        let now = Instant::now();
        let mut st = self.state.lock();
        st.entries.insert(tx.key.clone(), (true, now));
        st.order.push_back((tx.key.clone(), now));
        self.evict(&mut st, now);
        Ok(())
    }

    async fn rollback(&self, tx: MemoryClaim) {
        drop(tx); // releases the claim
    }

    async fn purge_older_than(&self, age: Duration) -> Result<u64, BusError> {
        let now = Instant::now();
        let mut st = self.state.lock();
        let before = st.entries.len();
        st.entries
            .retain(|_, (done, at)| !*done || now.duration_since(*at) < age);
        Ok((before - st.entries.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn claims_commit_and_duplicates() {
        let inbox = MemoryInbox::default();
        let tx = inbox
            .begin("c", &"m1".into())
            .await
            .unwrap()
            .expect("first claim");
        assert_eq!(
            inbox.begin("c", &"m1".into()).await.unwrap_err().kind(),
            ErrorKind::Conflict
        );
        inbox.commit(tx).await.unwrap();
        assert!(
            inbox.begin("c", &"m1".into()).await.unwrap().is_none(),
            "committed: a duplicate"
        );
        assert!(
            inbox.begin("other", &"m1".into()).await.unwrap().is_some(),
            "per consumer"
        );
        let tx = inbox.begin("c", &"m2".into()).await.unwrap().unwrap();
        inbox.rollback(tx).await;
        let tx = inbox
            .begin("c", &"m2".into())
            .await
            .unwrap()
            .expect("rolled back: claimable again");
        drop(tx);
        assert!(
            inbox.begin("c", &"m2".into()).await.unwrap().is_some(),
            "dropped: claimable again"
        );
    }

    #[tokio::test]
    async fn bounded_by_capacity_and_ttl() {
        let inbox = MemoryInbox::new(10, Duration::from_secs(3600));
        for i in 0..100 {
            let tx = inbox
                .begin("c", &i.to_string().into())
                .await
                .unwrap()
                .unwrap();
            inbox.commit(tx).await.unwrap();
        }
        assert!(inbox.len() <= 11, "{}", inbox.len());
        let short = MemoryInbox::new(10, Duration::ZERO);
        let tx = short.begin("c", &"x".into()).await.unwrap().unwrap();
        short.commit(tx).await.unwrap();
        assert!(
            short.begin("c", &"x".into()).await.unwrap().is_some(),
            "expired claims are forgotten"
        );
        // Purging removes committed claims older than the age, and only those.
        let inbox = MemoryInbox::default();
        for id in ["a", "b"] {
            let tx = inbox.begin("c", &id.into()).await.unwrap().unwrap();
            inbox.commit(tx).await.unwrap();
        }
        let _in_progress = inbox.begin("c", &"c".into()).await.unwrap().unwrap();
        assert_eq!(
            inbox
                .purge_older_than(Duration::from_secs(3600))
                .await
                .unwrap(),
            0,
            "nothing that old"
        );
        assert_eq!(inbox.purge_older_than(Duration::ZERO).await.unwrap(), 2);
        assert!(
            inbox.begin("c", &"a".into()).await.unwrap().is_some(),
            "purged"
        );
        assert_eq!(
            inbox.begin("c", &"c".into()).await.unwrap_err().kind(),
            ErrorKind::Conflict,
            "a claim in progress is kept"
        );
    }
}
