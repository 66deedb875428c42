//! The relay's loop: lease, read, publish, settle, wait (see the parent
//! module for what it guarantees).

use super::sql::{self, PendingRow as Row};
use super::{Config, RelayReport};
use crate::outbox::{headers_from, Outbox};
use event_bus::{BusError, Envelope, ErrorKind, EventBus, MessageId, PublishAck};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// The LISTEN side: forwards notifications to the in-process wake-up.
pub(super) async fn listen(outbox: Outbox, retry: Duration) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(outbox.pool()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "outbox relay: cannot listen for notifications yet; polling meanwhile");
                tokio::time::sleep(retry.max(Duration::from_secs(1))).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(&outbox.tables().channel).await {
            tracing::debug!(error = %e, "outbox relay: LISTEN failed; polling meanwhile");
            tokio::time::sleep(retry.max(Duration::from_secs(1))).await;
            continue;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => outbox.wake(),
                // Reconnected: notifications may have been missed.
                Ok(None) => outbox.wake(),
                Err(e) => {
                    tracing::debug!(error = %e, "outbox relay: notification connection lost; polling meanwhile");
                    tokio::time::sleep(retry.max(Duration::from_secs(1))).await;
                    break;
                }
            }
        }
    }
}

/// A key held back after a failed publish of one of its rows.
struct Held {
    until: Instant,
    failures: u32,
}

pub(super) struct Worker {
    outbox: Outbox,
    bus: Arc<dyn EventBus>,
    config: Config,
    holder: String,
    report: Arc<Mutex<RelayReport>>,
    leader: Arc<std::sync::atomic::AtomicBool>,
    stop: watch::Receiver<bool>,
    wake: watch::Receiver<u64>,
    /// Until when (on this process's clock) the lease is surely ours.
    lease_until: Option<Instant>,
    held: HashMap<String, Held>,
    /// The relay-wide backoff while the bus is unavailable: (until, current step).
    bus_backoff: Option<(Instant, Duration)>,
    last_cleanup: Instant,
    /// The removal of the last published batch, running while the next
    /// batch is read and published.
    removing: Option<Removal>,
    /// Rows per read now: `batch_size`, halved after a publish timeout,
    /// doubled back after a batch that finished in time.
    batch_limit: usize,
    /// `event_bus.outbox.events` by result: published, duplicate, refused,
    /// failed, bus_error.
    metrics: [metrics::Counter; 5],
}

/// A published batch being removed (or marked) while the next batch is
/// published. A future of the relay's own task (polled with the next
/// publish), so that it ends with the relay, as a crash would end it.
struct Removal {
    seqs: Vec<i64>,
    done: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BusError>> + Send>>,
}

/// Waits for a removal (if any).
async fn finish(removal: Option<Removal>) -> Result<(), BusError> {
    match removal {
        None => Ok(()),
        Some(r) => r.done.await,
    }
}

fn backoff_step(config: &Config, failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    config
        .backoff_min
        .checked_mul(factor)
        .unwrap_or(config.backoff_max)
        .min(config.backoff_max)
}

impl Worker {
    pub(super) fn new(
        outbox: Outbox,
        bus: Arc<dyn EventBus>,
        config: Config,
        holder: String,
        report: Arc<Mutex<RelayReport>>,
        leader: Arc<std::sync::atomic::AtomicBool>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let table = outbox.table().to_string();
        Worker {
            wake: outbox.wake_receiver(),
            batch_limit: config.batch_size,
            outbox,
            bus,
            config,
            holder,
            report,
            leader,
            stop,
            lease_until: None,
            held: HashMap::new(),
            bus_backoff: None,
            last_cleanup: Instant::now(),
            removing: None,
            metrics: ["published", "duplicate", "refused", "failed", "bus_error"].map(|r| {
                metrics::counter!(
                    event_bus::metrics::OUTBOX_EVENTS,
                    "event_bus.outbox.table" => table.clone(),
                    "event_bus.result" => r
                )
            }),
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn update(&self, f: impl FnOnce(&mut RelayReport)) {
        f(&mut self.report.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub(super) async fn run(mut self) {
        let mut db_backoff = self.config.backoff_min;
        while !self.stopping() {
            match self.step().await {
                Ok(Next::Again) => db_backoff = self.config.backoff_min,
                Ok(Next::StandBy(d)) => {
                    db_backoff = self.config.backoff_min;
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = stop.changed() => {}
                    }
                }
                Ok(Next::Wait(d)) => {
                    db_backoff = self.config.backoff_min;
                    self.wait(d).await;
                }
                Err(e) => {
                    self.update(|r| r.db_errors += 1);
                    if db_backoff == self.config.backoff_min {
                        tracing::warn!(error = %e, "outbox relay: database error; retrying with backoff");
                    } else {
                        tracing::debug!(error = %e, "outbox relay: database error");
                    }
                    self.wait(db_backoff).await;
                    db_backoff = (db_backoff * 2).min(self.config.backoff_max);
                }
            }
        }
        if let Err(e) = finish(self.removing.take()).await {
            tracing::warn!(error = %e, "outbox relay: removing the last published rows failed; they are published again (with their ids) by the next relay");
        }
        if self.lease_until.is_some() {
            // Bounded: past the lease it has expired anyway.
            let _ = tokio::time::timeout(self.config.lease, self.release()).await;
        }
        self.leader
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sleeps up to `d`, or until woken or stopped.
    async fn wait(&mut self, d: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wake.changed() => {}
            _ = stop.changed() => {}
        }
    }

    /// One turn of the loop.
    async fn step(&mut self) -> Result<Next, BusError> {
        let now = Instant::now();
        // The lease: renew when a third of it has passed, stand by when
        // another relay holds it.
        let renew_at = self.config.lease / 3 * 2;
        let fresh = self
            .lease_until
            .is_some_and(|until| until.saturating_duration_since(now) > renew_at);
        if !fresh && !self.acquire().await? {
            return Ok(Next::StandBy(self.config.lease / 4));
        }
        if let Some((until, _)) = self.bus_backoff {
            if until > now {
                return Ok(Next::Wait(until - now));
            }
        }
        // Forget keys whose backoff ended long ago (their rows were
        // published elsewhere, e.g. by another relay).
        let forget = self.config.backoff_max * 4;
        self.held.retain(|_, h| h.until + forget > now);
        self.cleanup().await?;

        let rows = self.read().await?;
        self.update(|r| r.reads += 1);
        if rows.is_empty() {
            finish(self.removing.take()).await?;
            let next_held = self
                .held
                .values()
                .map(|h| h.until)
                .filter(|t| *t > now)
                .min();
            let d = match next_held {
                Some(t) => t
                    .saturating_duration_since(now)
                    .min(self.config.poll_interval),
                None => self.config.poll_interval,
            };
            return Ok(Next::Wait(d));
        }
        // Publish only while the lease surely lasts longer than the publish.
        let left = self.lease_until.map_or(Duration::ZERO, |u| {
            u.saturating_duration_since(Instant::now())
        });
        if left <= self.config.publish_timeout {
            return Ok(Next::Again);
        }
        let mut rows = rows;
        let envelopes: Vec<Envelope> = rows
            .iter_mut()
            .map(|r| {
                Envelope::new(r.subject.clone(), std::mem::take(&mut r.payload))
                    .id(MessageId::new(r.message_id.as_str()))
                    .headers(headers_from(
                        std::mem::take(&mut r.names),
                        std::mem::take(&mut r.values),
                    ))
            })
            .collect();
        // The previous batch's removal runs meanwhile (its rows were left
        // out of this read).
        let keys: Vec<&str> = rows.iter().map(|r| r.order_key.as_str()).collect();
        let deadline = tokio::time::Instant::now() + self.config.publish_timeout;
        let span = send_span(&self.outbox.tables().rows, &envelopes);
        // Both stop at the deadline: what was acknowledged counts.
        let publish = async {
            if self.config.strict_order {
                publish_chains(self.bus.as_ref(), envelopes, &keys, deadline).await
            } else {
                publish_pipelined(self.bus.as_ref(), envelopes, &keys, deadline).await
            }
        }
        .instrument(span);
        let (results, removed) = tokio::join!(publish, finish(self.removing.take()));
        let timed_out = results
            .iter()
            .any(|r| matches!(r, Some(Err(e)) if e.kind() == ErrorKind::Timeout));
        if timed_out {
            // A slow bus or a large batch: smaller batches until they fit.
            self.batch_limit = (self.batch_limit / 2).max(1);
        } else if self.batch_limit < self.config.batch_size {
            self.batch_limit = (self.batch_limit * 2).min(self.config.batch_size);
        }
        let next = self.settle(&rows, results).await;
        removed?;
        next
    }

    /// Tries to take or renew the lease; true when this relay holds it.
    async fn acquire(&mut self) -> Result<bool, BusError> {
        let sent = Instant::now();
        let got = sql::take_lease(
            self.outbox.pool(),
            self.outbox.tables(),
            &self.holder,
            self.config.lease,
        )
        .await?;
        let had = self.lease_until.is_some();
        if got {
            // Measured from before the request: the server's expiry is later.
            self.lease_until = Some(sent + self.config.lease);
            if !had {
                self.update(|r| r.leases_acquired += 1);
                self.leader.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(holder = %self.holder, "outbox relay: took the lease; publishing");
            }
            Ok(true)
        } else {
            if had {
                tracing::warn!(holder = %self.holder, "outbox relay: lost the lease to another relay; standing by");
            }
            self.lease_until = None;
            self.leader
                .store(false, std::sync::atomic::Ordering::SeqCst);
            Ok(false)
        }
    }

    async fn release(&mut self) -> Result<(), BusError> {
        self.lease_until = None;
        sql::release_lease(self.outbox.pool(), self.outbox.tables(), &self.holder).await
    }

    /// Removes published rows kept longer than the retention.
    async fn cleanup(&mut self) -> Result<(), BusError> {
        let Some(keep) = self.config.keep_published else {
            return Ok(());
        };
        if self.last_cleanup.elapsed() < self.config.cleanup_every.min(keep) {
            return Ok(());
        }
        self.last_cleanup = Instant::now();
        sql::remove_old_published(self.outbox.pool(), self.outbox.tables(), keep).await
    }

    /// The next rows to publish: of finished transactions only (below the
    /// oldest running transaction id), in (transaction id, enqueue) order,
    /// skipping keys held back after a failure.
    async fn read(&mut self) -> Result<Vec<Row>, BusError> {
        // Keys in their backoff. (A key stays in the map, with its failure
        // count, until a row of it is published or moved to the failure
        // table, so that its backoff grows.)
        let now = Instant::now();
        let held: Vec<&str> = self
            .held
            .iter()
            .filter(|(_, h)| h.until > now)
            .map(|(k, _)| k.as_str())
            .collect();
        sql::read_pending(
            self.outbox.pool(),
            self.outbox.tables(),
            &held,
            self.batch_limit,
            self.removing.as_ref().map_or(&[][..], |r| &r.seqs[..]),
        )
        .await
    }

    /// Removes what the bus took, counts what it refused, holds back the
    /// keys of failed rows.
    async fn settle(
        &mut self,
        rows: &[Row],
        results: Vec<Option<Result<PublishAck, BusError>>>,
    ) -> Result<Next, BusError> {
        let mut done_seqs = Vec::new();
        let mut streams = Vec::new();
        let mut stream_seqs = Vec::new();
        let mut duplicates = 0;
        let mut out_of_order = 0;
        let mut refused: Vec<(&Row, BusError)> = Vec::new();
        let mut unavailable: Option<BusError> = None;
        let mut bus_errors = 0;
        let mut failed_keys: HashMap<&str, ()> = HashMap::new();
        let mut transient_keys: Vec<&str> = Vec::new();
        for (row, result) in rows.iter().zip(results) {
            let Some(result) = result else {
                // Not sent: an earlier row of its key failed (strict order), or
                // failed before it was sent (pipelined).
                continue;
            };
            match result {
                Ok(ack) => {
                    if failed_keys.contains_key(row.order_key.as_str()) {
                        out_of_order += 1;
                    } else if !self.held.is_empty() {
                        self.held.remove(row.order_key.as_str());
                    }
                    duplicates += u64::from(ack.duplicate);
                    done_seqs.push(row.seq);
                    streams.push(ack.stream);
                    stream_seqs.push(i64::try_from(ack.sequence).unwrap_or(i64::MAX));
                }
                Err(e) => {
                    let first = failed_keys.insert(row.order_key.as_str(), ()).is_none();
                    // Classified by the error itself (`ErrorKind::is_permanent`):
                    // the bus refusing this row (a schema violation, an
                    // invalid subject, too large, no permission) counts
                    // against it; a condition that passes (unavailable,
                    // timeout, no stream yet) only delays it.
                    if e.kind().is_permanent() {
                        refused.push((row, e));
                    } else {
                        bus_errors += 1;
                        if first {
                            transient_keys.push(row.order_key.as_str());
                        }
                        unavailable.get_or_insert(e);
                    }
                }
            }
        }
        let rows_table = self.outbox.tables().rows.clone();
        let published = done_seqs.len() as u64;
        if !done_seqs.is_empty() {
            // Removed while the next batch is published (the next read
            // leaves these rows out); a failed removal leaves the rows to be
            // published again, with their ids (duplicates the bus drops).
            let pool = self.outbox.pool().clone();
            let keep = self.config.keep_published.is_some();
            let seqs = done_seqs.clone();
            let done = Box::pin(async move {
                sql::settle_published(&pool, &rows_table, keep, seqs, streams, stream_seqs).await
            });
            self.removing = Some(Removal {
                seqs: done_seqs,
                done,
            });
        }
        let mut failed = 0;
        // Each key's backoff grows once per batch, however many of its rows
        // were refused.
        let mut held_now = std::collections::HashSet::new();
        for (row, e) in &refused {
            let text = e.to_string();
            if row.attempts.saturating_add(1) as u32 >= self.config.max_attempts {
                sql::move_to_failed(self.outbox.pool(), self.outbox.tables(), row.seq, &text)
                    .await?;
                self.held.remove(row.order_key.as_str());
                failed += 1;
                tracing::error!(message_id = %row.message_id, subject = %row.subject, order_key = %row.order_key, error = %text,
                    "outbox relay: the bus refused the event {} times; moved to the failure table, where its key's later rows wait for it to be retried or discarded", self.config.max_attempts);
            } else {
                sql::count_refusal(self.outbox.pool(), self.outbox.tables(), row.seq, &text)
                    .await?;
                let first = if held_now.insert(row.order_key.as_str()) {
                    self.hold(&row.order_key)
                } else {
                    false
                };
                if first {
                    tracing::warn!(message_id = %row.message_id, subject = %row.subject, error = %text,
                        "outbox relay: the bus refused the event; its key is held back and retried with backoff");
                }
            }
        }
        let refusals = refused.len() as u64;
        for (c, n) in self
            .metrics
            .iter()
            .zip([published, duplicates, refusals, failed, bus_errors])
        {
            c.increment(n);
        }
        self.update(|r| {
            r.published += published;
            r.duplicates += duplicates;
            r.out_of_order += out_of_order;
            r.refusals += refusals;
            r.failed += failed;
            r.bus_errors += bus_errors;
        });
        if out_of_order > 0 {
            tracing::warn!(
                rows = out_of_order,
                "outbox relay: rows were acknowledged after an earlier row of their key failed in the same batch"
            );
        }
        match unavailable {
            Some(e) if published == 0 => {
                // The bus is down (or not answering): back off as a whole,
                // logging once when it starts and once when it ends.
                let step = match self.bus_backoff {
                    None => {
                        tracing::warn!(error = %e, "outbox relay: the bus is unavailable; rows wait and are retried with backoff");
                        self.config.backoff_min
                    }
                    Some((_, step)) => (step * 2).min(self.config.backoff_max),
                };
                self.bus_backoff = Some((Instant::now() + step, step));
                Ok(Next::Wait(step))
            }
            _ => {
                // Some rows went through: hold back only the keys that
                // failed (the whole relay backs off when nothing went).
                for key in transient_keys {
                    self.hold(key);
                }
                if self.bus_backoff.take().is_some() {
                    tracing::info!("outbox relay: the bus is back; publishing");
                }
                Ok(Next::Again)
            }
        }
    }

    /// Holds `key` back with backoff; true when it was not held before.
    fn hold(&mut self, key: &str) -> bool {
        let config = &self.config;
        let entry = self.held.entry(key.to_string()).or_insert(Held {
            until: Instant::now(),
            failures: 0,
        });
        entry.failures = entry.failures.saturating_add(1);
        entry.until = Instant::now() + backoff_step(config, entry.failures);
        entry.failures == 1
    }
}

/// Pipelined (the default): the whole batch sent without waiting for
/// acknowledgements, then the acknowledgements awaited in order. Each row's
/// publish is started (polled once) before the next row's, so a key's rows
/// reach the bus in order (a publish that had to wait before it was sent
/// waits in line, or is sent when awaited, in order). A publish that fails
/// at once (refused before it was sent, e.g. by a schema check) keeps its
/// key's later rows in the batch back (`None`: not sent), so they are never
/// published ahead of it; a failure known only later (not acknowledged) finds
/// them sent already (counted `out_of_order` if acknowledged). Rows not
/// acknowledged by the deadline are timeouts (sent again later, same ids).
/// Results in the order of `envelopes`.
async fn publish_pipelined(
    bus: &dyn EventBus,
    envelopes: Vec<Envelope>,
    keys: &[&str],
    deadline: tokio::time::Instant,
) -> Vec<Option<Result<PublishAck, BusError>>> {
    let mut results: Vec<Option<Result<PublishAck, BusError>>> =
        (0..keys.len()).map(|_| None).collect();
    let mut cut = std::collections::HashSet::new();
    let mut in_flight = Vec::new();
    for (i, (envelope, key)) in envelopes.into_iter().zip(keys).enumerate() {
        if cut.contains(key) {
            continue;
        }
        // Unconstrained: past the first hundred or so publishes of a batch,
        // tokio's cooperative budget would stop a publish before it is on
        // its way; it would then go out only when awaited below, after the
        // acknowledgement of the rows before it (a round trip per row).
        let mut publish = tokio::task::unconstrained(bus.publish_envelope(envelope));
        match futures::poll!(&mut publish) {
            std::task::Poll::Ready(result) => {
                if result.is_err() {
                    cut.insert(*key);
                }
                results[i] = Some(result);
            }
            std::task::Poll::Pending => in_flight.push((i, publish)),
        }
    }
    // All on their way: their acknowledgements, in order.
    let sent: Vec<usize> = in_flight.iter().map(|(i, _)| *i).collect();
    let acks = async {
        for (i, publish) in in_flight {
            results[i] = Some(publish.await);
        }
    };
    if tokio::time::timeout_at(deadline, acks).await.is_err() {
        for i in sent {
            results[i].get_or_insert_with(|| {
                Err(BusError::new(
                    ErrorKind::Timeout,
                    "outbox relay: the publish was not acknowledged before the batch's deadline",
                ))
            });
        }
    }
    results
}

/// Strict order: the rows of each key published one after another (the
/// next only once the previous is acknowledged), the keys concurrently.
/// A key's chain stops at its first failure or at the deadline; the rows
/// after it are not sent, or not known to be stored (`None`). Results in the
/// order of `envelopes`.
async fn publish_chains(
    bus: &dyn EventBus,
    envelopes: Vec<Envelope>,
    keys: &[&str],
    deadline: tokio::time::Instant,
) -> Vec<Option<Result<PublishAck, BusError>>> {
    let mut chains: Vec<Vec<(usize, Envelope)>> = Vec::new();
    let mut chain_of: HashMap<&str, usize> = HashMap::new();
    for (i, (envelope, key)) in envelopes.into_iter().zip(keys).enumerate() {
        let c = *chain_of.entry(key).or_insert_with(|| {
            chains.push(Vec::new());
            chains.len() - 1
        });
        chains[c].push((i, envelope));
    }
    let done = futures::future::join_all(chains.into_iter().map(|chain| async move {
        let mut out = Vec::with_capacity(chain.len());
        let mut stopped = false;
        for (i, envelope) in chain {
            if stopped {
                out.push((i, None));
                continue;
            }
            match tokio::time::timeout_at(deadline, bus.publish_envelope(envelope)).await {
                Ok(result) => {
                    stopped = result.is_err();
                    out.push((i, Some(result)));
                }
                // Unknown whether it was stored: sent again later, same id.
                Err(_) => {
                    stopped = true;
                    out.push((
                        i,
                        Some(Err(BusError::new(
                            ErrorKind::Timeout,
                            "outbox relay: the publish was not acknowledged before the batch's deadline",
                        ))),
                    ));
                }
            }
        }
        out
    }))
    .await;
    let mut results: Vec<Option<Result<PublishAck, BusError>>> =
        (0..keys.len()).map(|_| None).collect();
    for (i, r) in done.into_iter().flatten() {
        results[i] = r;
    }
    results
}

/// What the loop does next.
enum Next {
    /// Go on at once.
    Again,
    /// Wait up to this long (or until woken).
    Wait(Duration),
    /// Another relay holds the lease: try again after this long (commits
    /// do not wake a standby).
    StandBy(Duration),
}

/// The relay's span for one batch: `send {outbox table}`, linked to the
/// context each row was enqueued in (feature `otel`); each message's own
/// publish span is its child, and the message keeps its row's context.
fn send_span(table: &str, envelopes: &[Envelope]) -> tracing::Span {
    let span = tracing::info_span!(
        target: "event_bus::send",
        "send",
        otel.name = %format_args!("send {table}"),
        otel.kind = "client",
        messaging.system = "outbox",
        messaging.operation.name = "send",
        messaging.operation.type = "send",
        messaging.batch.message_count = envelopes.len(),
    );
    #[cfg(feature = "otel")]
    if !span.is_disabled() {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        for env in envelopes {
            if let Some(cx) = event_bus::trace::extract_span_context(&env.headers) {
                span.add_link(cx);
            }
        }
    }
    span
}
