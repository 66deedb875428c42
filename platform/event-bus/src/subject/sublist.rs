//! A subject trie with a match cache, after nats-server's `server/sublist.go`.
//!
//! Subscriptions are stored in a tree of levels, one per token, with the
//! `*` and `>` wildcards in their own slots. Matching a literal subject walks
//! at most three branches per level, so its cost depends on the subject's
//! length and on the subscriptions that can match it, not on the number of
//! unrelated subscriptions. Results are cached per literal subject (empty
//! results too, which makes publishing to a subject nobody listens to a
//! single hash lookup); a subscription change updates only the cached
//! entries it can match.

use super::matches;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// Identifier of one registered subscription.
pub type SubId = u64;

/// Default number of literal subjects whose match results are cached.
pub const DEFAULT_CACHE_SIZE: usize = 4096;

struct Node<T> {
    subs: Vec<(SubId, T)>,
    next: Option<Box<Level<T>>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            subs: Vec::new(),
            next: None,
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.next.as_ref().is_none_or(|l| l.is_empty())
    }
}

struct Level<T> {
    literal: FxHashMap<Box<str>, Node<T>>,
    pwc: Option<Box<Node<T>>>,
    fwc: Option<Box<Node<T>>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Level {
            literal: FxHashMap::default(),
            pwc: None,
            fwc: None,
        }
    }
}

impl<T> Level<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.pwc.is_none() && self.fwc.is_none()
    }

    fn node_mut(&mut self, token: &str) -> &mut Node<T> {
        match token {
            "*" => self.pwc.get_or_insert_with(Default::default),
            ">" => self.fwc.get_or_insert_with(Default::default),
            _ => self.literal.entry(token.into()).or_default(),
        }
    }
}

/// The result of matching one literal subject: the subject (shared, so that
/// messages can carry it without copying) and the matching subscriptions.
pub struct Match<T> {
    /// The literal subject.
    pub subject: Arc<str>,
    /// The subscriptions it matches, in a deterministic order.
    pub subs: Box<[T]>,
}

/// The routing table: patterns to subscriptions, with a match cache.
///
/// `T` is what a match returns for each subscription (the in-memory bus
/// stores its subscriber queues here). The structure is not synchronised;
/// wrap it in a lock.
pub struct Sublist<T> {
    root: Level<T>,
    cache: FxHashMap<Arc<str>, Arc<Match<T>>>,
    cache_max: usize,
    count: usize,
}

impl<T: Clone> Default for Sublist<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> Sublist<T> {
    /// An empty table with the default cache size.
    pub fn new() -> Self {
        Self::with_cache_size(DEFAULT_CACHE_SIZE)
    }

    /// An empty table caching up to `cache_max` subjects (0 disables the cache).
    pub fn with_cache_size(cache_max: usize) -> Self {
        Sublist {
            root: Level::default(),
            cache: FxHashMap::default(),
            cache_max,
            count: 0,
        }
    }

    /// Number of registered subscriptions.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no subscription is registered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Number of cached subjects.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Registers `value` under `pattern` (assumed valid) with identifier `id`.
    pub fn insert(&mut self, pattern: &str, id: SubId, value: T) {
        let mut level = &mut self.root;
        let mut tokens = pattern.split('.').peekable();
        loop {
            let token = tokens.next().expect("a pattern has at least one token");
            let node = level.node_mut(token);
            if tokens.peek().is_none() {
                node.subs.push((id, value));
                break;
            }
            level = node.next.get_or_insert_with(Default::default);
        }
        self.count += 1;
        self.refresh_cache(pattern);
    }

    /// Removes the subscription `id` registered under `pattern`; returns its value.
    pub fn remove(&mut self, pattern: &str, id: SubId) -> Option<T> {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let removed = Self::remove_at(&mut self.root, &tokens, id);
        if removed.is_some() {
            self.count -= 1;
            self.refresh_cache(pattern);
        }
        removed
    }

    fn remove_at(level: &mut Level<T>, tokens: &[&str], id: SubId) -> Option<T> {
        let (token, rest) = tokens.split_first()?;
        let node = match *token {
            "*" => level.pwc.as_deref_mut()?,
            ">" => level.fwc.as_deref_mut()?,
            t => level.literal.get_mut(t)?,
        };
        let removed = if rest.is_empty() {
            let pos = node.subs.iter().position(|(sid, _)| *sid == id)?;
            Some(node.subs.remove(pos).1)
        } else {
            let next = node.next.as_deref_mut()?;
            let removed = Self::remove_at(next, rest, id);
            if next.is_empty() {
                node.next = None;
            }
            removed
        };
        // Prune the branch if it became empty.
        if node.is_empty() {
            match *token {
                "*" => level.pwc = None,
                ">" => level.fwc = None,
                t => {
                    level.literal.remove(t);
                }
            }
        }
        removed
    }

    /// Re-computes the cached results that a change to `pattern` can affect.
    fn refresh_cache(&mut self, pattern: &str) {
        if self.cache.is_empty() {
            return;
        }
        let affected: Vec<Arc<str>> = self
            .cache
            .keys()
            .filter(|subject| matches(pattern, subject))
            .cloned()
            .collect();
        for subject in affected {
            let fresh = Arc::new(Match {
                subs: self.collect_subs(&subject),
                subject: subject.clone(),
            });
            self.cache.insert(subject, fresh);
        }
    }

    /// The cached result for the literal `subject`, if any.
    #[inline]
    pub fn cached(&self, subject: &str) -> Option<&Arc<Match<T>>> {
        self.cache.get(subject)
    }

    /// Matches the literal `subject` (assumed valid) and caches the result.
    pub fn matches(&mut self, subject: &str) -> Arc<Match<T>> {
        if let Some(hit) = self.cache.get(subject) {
            return hit.clone();
        }
        let result = self.match_uncached(subject);
        if self.cache_max > 0 {
            if self.cache.len() >= self.cache_max {
                // Evict about a quarter, like nats-server's cache sweep: any
                // entries will do, the cache is an accelerator only.
                let drop_n = (self.cache_max / 4).max(1);
                let victims: Vec<Arc<str>> = self.cache.keys().take(drop_n).cloned().collect();
                for v in victims {
                    self.cache.remove(&v);
                }
            }
            self.cache.insert(result.subject.clone(), result.clone());
        }
        result
    }

    /// Matches the literal `subject` by walking the trie, without the cache.
    pub fn match_uncached(&self, subject: &str) -> Arc<Match<T>> {
        Arc::new(Match {
            subject: subject.into(),
            subs: self.collect_subs(subject),
        })
    }

    fn collect_subs(&self, subject: &str) -> Box<[T]> {
        let tokens: Vec<&str> = subject.split('.').collect();
        let mut out = Vec::new();
        Self::collect(&self.root, &tokens, &mut out);
        out.into()
    }

    fn collect(level: &Level<T>, tokens: &[&str], out: &mut Vec<T>) {
        let Some((token, rest)) = tokens.split_first() else {
            return;
        };
        if let Some(fwc) = &level.fwc {
            out.extend(fwc.subs.iter().map(|(_, v)| v.clone()));
        }
        if let Some(pwc) = &level.pwc {
            Self::visit(pwc, rest, out);
        }
        if let Some(node) = level.literal.get(*token) {
            Self::visit(node, rest, out);
        }
    }

    fn visit(node: &Node<T>, rest: &[&str], out: &mut Vec<T>) {
        if rest.is_empty() {
            out.extend(node.subs.iter().map(|(_, v)| v.clone()));
        } else if let Some(next) = &node.next {
            Self::collect(next, rest, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(m: Arc<Match<u64>>) -> Vec<u64> {
        let mut v = m.subs.to_vec();
        v.sort();
        v
    }

    #[test]
    fn routes_literals_and_wildcards() {
        let mut s = Sublist::new();
        s.insert("foo.bar", 1, 1u64);
        s.insert("foo.*", 2, 2);
        s.insert("foo.>", 3, 3);
        s.insert(">", 4, 4);
        s.insert("*.bar", 5, 5);
        s.insert("foo", 6, 6);
        assert_eq!(sorted(s.matches("foo.bar")), vec![1, 2, 3, 4, 5]);
        assert_eq!(sorted(s.matches("foo.baz")), vec![2, 3, 4]);
        assert_eq!(sorted(s.matches("foo.baz.qux")), vec![3, 4]);
        assert_eq!(sorted(s.matches("foo")), vec![4, 6]);
        assert_eq!(sorted(s.matches("other")), vec![4]);
    }

    #[test]
    fn cache_follows_inserts_and_removes() {
        let mut s = Sublist::new();
        assert!(s.matches("a.b").subs.is_empty());
        assert_eq!(s.cache_len(), 1);
        s.insert("a.*", 1, 1u64);
        assert_eq!(sorted(s.matches("a.b")), vec![1]);
        s.insert("a.b", 2, 2);
        assert_eq!(sorted(s.matches("a.b")), vec![1, 2]);
        assert_eq!(s.remove("a.*", 1), Some(1));
        assert_eq!(sorted(s.matches("a.b")), vec![2]);
        assert_eq!(s.remove("a.*", 1), None);
        assert_eq!(s.remove("a.b", 2), Some(2));
        assert!(s.matches("a.b").subs.is_empty());
        assert!(s.root.is_empty(), "removing everything prunes the trie");
        assert!(s.is_empty());
    }

    #[test]
    fn duplicate_patterns_are_distinct_subscriptions() {
        let mut s = Sublist::new();
        s.insert("x.>", 1, 1u64);
        s.insert("x.>", 2, 2);
        assert_eq!(sorted(s.matches("x.y")), vec![1, 2]);
        s.remove("x.>", 1);
        assert_eq!(sorted(s.matches("x.y")), vec![2]);
    }

    #[test]
    fn cache_is_bounded() {
        let mut s: Sublist<u64> = Sublist::with_cache_size(8);
        for i in 0..100 {
            s.matches(&format!("s.{i}"));
            assert!(s.cache_len() <= 8);
        }
    }
}
