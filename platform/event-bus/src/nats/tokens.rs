//! The set of first subject tokens known to reach a stream, read on every
//! publish and written rarely.
//!
//! A lock's reader count is a shared cache line that every reader writes;
//! with publishers on several threads it moves between cores on every
//! publish. Here a lookup is atomic loads only: a fixed open-addressing table
//! of write-once slots, each with a `present` flag (so a token can be removed
//! and added again), and a locked overflow set for tokens beyond its
//! capacity (an application with that many first tokens pays the lock).
//!
//! A lookup may miss a token being added at that moment; callers treat a
//! miss as "not known yet" and take their slower, always-correct path.

use parking_lot::RwLock;
use rustc_hash::{FxHashSet, FxHasher};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Slots in the lock-free table.
const SLOTS: usize = 128;

struct Slot {
    token: Box<str>,
    present: AtomicBool,
}

pub(crate) struct TokenSet {
    slots: Box<[OnceLock<Slot>]>,
    overflow: RwLock<FxHashSet<String>>,
    overflowed: AtomicBool,
}

impl Default for TokenSet {
    fn default() -> Self {
        TokenSet {
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
            overflow: RwLock::default(),
            overflowed: AtomicBool::new(false),
        }
    }
}

fn start(token: &str) -> usize {
    let mut h = FxHasher::default();
    token.hash(&mut h);
    h.finish() as usize % SLOTS
}

impl TokenSet {
    /// The slot holding `token`, if it has one.
    fn slot(&self, token: &str) -> Option<&Slot> {
        let first = start(token);
        for i in 0..SLOTS {
            match self.slots[(first + i) % SLOTS].get() {
                // Slots fill in probe order: an empty one ends the probe.
                None => return None,
                Some(s) if &*s.token == token => return Some(s),
                Some(_) => {}
            }
        }
        None
    }

    pub(crate) fn contains(&self, token: &str) -> bool {
        match self.slot(token) {
            Some(s) => s.present.load(Ordering::Acquire),
            None => self.overflowed.load(Ordering::Acquire) && self.overflow.read().contains(token),
        }
    }

    pub(crate) fn insert(&self, token: &str) {
        let first = start(token);
        for i in 0..SLOTS {
            let s = self.slots[(first + i) % SLOTS].get_or_init(|| Slot {
                token: token.into(),
                present: AtomicBool::new(true),
            });
            if &*s.token == token {
                s.present.store(true, Ordering::Release);
                return;
            }
        }
        self.overflow.write().insert(token.to_string());
        self.overflowed.store(true, Ordering::Release);
    }

    pub(crate) fn remove(&self, token: &str) {
        if let Some(s) = self.slot(token) {
            s.present.store(false, Ordering::Release);
        }
        if self.overflowed.load(Ordering::Acquire) {
            self.overflow.write().remove(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_and_overflow() {
        let set = TokenSet::default();
        assert!(!set.contains("orders"));
        set.insert("orders");
        assert!(set.contains("orders"));
        set.remove("orders");
        assert!(!set.contains("orders"));
        set.insert("orders");
        assert!(set.contains("orders"));
        // Past the table's capacity, tokens go to the overflow set.
        let many: Vec<String> = (0..SLOTS * 2).map(|i| format!("t{i}")).collect();
        for t in &many {
            set.insert(t);
        }
        assert!(many.iter().all(|t| set.contains(t)));
        assert!(set.contains("orders"));
        assert!(!set.contains("t-none"));
        set.remove(&many[SLOTS + 7]);
        assert!(!set.contains(&many[SLOTS + 7]));
        assert!(set.contains(&many[SLOTS + 8]));
    }
}
