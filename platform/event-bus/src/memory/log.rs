//! The in-memory bus's log: the last messages published, kept so that a
//! durable consumer created later can start with [`StartPosition::All`] or
//! [`StartPosition::Sequence`](crate::consumer::StartPosition::Sequence), as
//! on a JetStream stream.
//!
//! **When it records.** Keeping every message costs the plain
//! publish/subscribe path about a third of its throughput (a clone of each
//! message, a lock, and a working set of up to `log_max_messages` messages
//! that no longer fits the CPU caches; measured with the
//! `inmemory_compare` bench). So the log records from the moment the first
//! durable consumer is created on the bus (the moment replays become
//! possible), or from the bus's creation with
//! [`MemoryConfig::log_from_start`]. A bus used for plain publish/subscribe
//! pays nothing but one relaxed atomic load per publish.
//!
//! **What it holds.** Every message published while it records (with
//! subscribers or not), each with a bus sequence number, within
//! [`MemoryConfig::log_max_messages`] and [`MemoryConfig::log_max_bytes`]
//! (the oldest go first). The entries share the payload and subject with
//! the delivered messages (reference counts, no copies).
//!
//! [`StartPosition::All`]: crate::consumer::StartPosition::All

use super::MemoryConfig;
use crate::error::{BusError, ErrorKind};
use crate::message::BusMessage;
use std::collections::VecDeque;

pub(crate) struct Log {
    entries: VecDeque<BusMessage>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    /// The sequence of the first message recorded (0: not recording yet).
    recorded_from: u64,
}

/// Where a new durable consumer starts, from the log.
pub(crate) struct Replay {
    /// The logged messages it starts with (those its filter matches).
    pub(crate) messages: VecDeque<BusMessage>,
    /// Messages the consumer's feed brings up to this sequence are already
    /// replayed or before its start.
    pub(crate) skip_through: u64,
}

fn size(msg: &BusMessage) -> usize {
    msg.payload.len() + msg.headers.wire_len() + msg.subject.as_str().len()
}

impl Log {
    pub(crate) fn new(config: &MemoryConfig) -> Self {
        Log {
            entries: VecDeque::new(),
            bytes: 0,
            max_messages: config.log_max_messages,
            max_bytes: config.log_max_bytes,
            recorded_from: 0,
        }
    }

    /// Whether the configuration allows a log at all.
    pub(crate) fn enabled(config: &MemoryConfig) -> bool {
        config.log_max_messages > 0 && config.log_max_bytes > 0
    }

    /// Recording starts with the message numbered `next_seq`.
    pub(crate) fn start(&mut self, next_seq: u64) {
        self.recorded_from = next_seq;
    }

    /// Records `msg` (numbered after every message recorded before it).
    pub(crate) fn push(&mut self, msg: BusMessage) {
        self.bytes += size(&msg);
        self.entries.push_back(msg);
        while self.entries.len() > self.max_messages || self.bytes > self.max_bytes {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= size(&old),
                None => break,
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Up to `max` logged messages on subjects matching `pattern`, from
    /// sequence `from` on.
    pub(crate) fn read(&self, pattern: &str, from: u64, max: usize) -> Vec<BusMessage> {
        let start = self.entries.partition_point(|m| m.sequence < from);
        self.entries
            .range(start..)
            .filter(|m| crate::subject::matches(pattern, m.subject.as_str()))
            .take(max)
            .cloned()
            .collect()
    }

    /// Removes the message numbered `sequence`; false if it is not held.
    pub(crate) fn remove(&mut self, sequence: u64) -> bool {
        let Ok(at) = self.entries.binary_search_by_key(&sequence, |m| m.sequence) else {
            return false;
        };
        if let Some(old) = self.entries.remove(at) {
            self.bytes -= size(&old);
        }
        true
    }

    /// The start of a consumer on `filter` from sequence `from` (`None`:
    /// the oldest message held), given that the bus has numbered messages
    /// up to `last_seq`. A sequence the log no longer (or never) held is
    /// `Unsupported`: the consumer would silently miss messages.
    pub(crate) fn replay(
        &self,
        consumer: &str,
        filter: &str,
        from: Option<u64>,
        last_seq: u64,
    ) -> Result<Replay, BusError> {
        let first_held = self.entries.front().map_or(last_seq + 1, |m| m.sequence);
        let from = match from {
            None => {
                if self.recorded_from > 1 && first_held == self.recorded_from {
                    tracing::warn!(
                        consumer,
                        recorded_from = self.recorded_from,
                        "StartPosition::All on the in-memory bus starts with the oldest message its log holds: \
                         messages published before its first durable consumer was created were not recorded \
                         (set memory.log_from_start to record from the start)"
                    );
                }
                first_held
            }
            Some(0) => {
                return Err(BusError::new(
                    ErrorKind::Config,
                    format!(
                        "consumer {consumer:?}: StartPosition::Sequence(0): sequences start at 1"
                    ),
                ))
            }
            Some(n) if n < first_held => {
                let held = if self.entries.is_empty() {
                    "holds no message yet".to_string()
                } else {
                    format!("holds sequences {first_held}..={last_seq}")
                };
                return Err(BusError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "consumer {consumer:?}: StartPosition::Sequence({n}) is not supported by the memory \
                         backend here: its log {held} (it records from the first durable consumer on, or \
                         from the start with memory.log_from_start, and keeps memory.log_max_messages = {} \
                         / memory.log_max_bytes = {})",
                        self.max_messages, self.max_bytes
                    ),
                ));
            }
            Some(n) => n,
        };
        let start = self.entries.partition_point(|m| m.sequence < from);
        let messages = self
            .entries
            .range(start..)
            .filter(|m| crate::subject::matches(filter, m.subject.as_str()))
            .cloned()
            .collect();
        Ok(Replay {
            messages,
            skip_through: last_seq.max(from.saturating_sub(1)),
        })
    }
}
