//! Property tests of `event_bus::subject`: the matcher, the subscription trie
//! (with its match cache) and the validators, each against a small reference
//! implementation written here from the rules in the `subject` module docs
//! (the NATS rules), not from the code under test.

use event_bus::subject::{
    is_wildcard, matches, patterns_overlap, validate_pattern, validate_subject, Sublist,
    MAX_SUBJECT_LEN,
};
use event_bus::ErrorKind;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------

/// Reference matcher over token lists: `*` is exactly one token, a final `>`
/// is one or more tokens, anything else (including `foo*`, `*b`, `>x`) is a
/// literal token compared exactly.
fn ref_matches(pattern: &[&str], subject: &[&str]) -> bool {
    let one = |p: &str, s: &str| p == "*" || p == s;
    match pattern.split_last() {
        Some((&">", head)) => {
            subject.len() > head.len() && head.iter().zip(subject).all(|(p, s)| one(p, s))
        }
        _ => pattern.len() == subject.len() && pattern.iter().zip(subject).all(|(p, s)| one(p, s)),
    }
}

fn toks(s: &str) -> Vec<&str> {
    s.split('.').collect()
}

/// The characters the docs forbid anywhere in a subject: space, tab, CR, LF,
/// form feed and NUL. (Other whitespace, e.g. vertical tab or U+00A0, is allowed.)
const FORBIDDEN: [char; 6] = [' ', '\t', '\r', '\n', '\x0c', '\0'];

/// Reference validator, phrased differently from the implementation (string
/// predicates rather than a token walk):
/// * non-empty, at most `MAX_SUBJECT_LEN` bytes;
/// * no forbidden character anywhere;
/// * no empty token: no leading, trailing or double `.`;
/// * literal: no token is exactly `*` or `>`;
/// * pattern: a token that is exactly `>` may only be the last one.
fn ref_valid(s: &str, literal: bool) -> bool {
    if s.is_empty() || s.len() > MAX_SUBJECT_LEN {
        return false;
    }
    if s.contains(FORBIDDEN) {
        return false;
    }
    if s.starts_with('.') || s.ends_with('.') || s.contains("..") {
        return false;
    }
    let tokens = toks(s);
    let wild_at: Vec<usize> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == "*" || **t == ">")
        .map(|(i, _)| i)
        .collect();
    if literal {
        return wild_at.is_empty();
    }
    let tails = tokens.iter().filter(|t| **t == ">").count();
    tails == 0 || (tails == 1 && tokens.last() == Some(&">"))
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Pattern tokens: literals (some of them containing wildcard characters but
/// not being wildcards) and the two wildcards.
const PATTERN_TOKENS: &[&str] = &["a", "b", "c", "*", ">", "foo*", "*b", ">x"];
/// Literal tokens.
const SUBJECT_TOKENS: &[&str] = &["a", "b", "c", "foo*", "*b", ">x"];

fn join(tokens: &[&str]) -> String {
    tokens.join(".")
}

/// Any token list from the pattern alphabet, 1..6 tokens, kept if `validate_pattern` accepts it.
fn random_pattern(max_tokens: usize) -> impl Strategy<Value = String> {
    vec(select(PATTERN_TOKENS), 1..=max_tokens)
        .prop_map(|t| join(&t))
        .prop_filter("valid pattern", |p| validate_pattern(p).is_ok())
}

/// A literal subject, 1..max tokens, kept if `validate_subject` accepts it.
fn subject(max_tokens: usize) -> impl Strategy<Value = String> {
    vec(select(SUBJECT_TOKENS), 1..=max_tokens)
        .prop_map(|t| join(&t))
        .prop_filter("valid subject", |s| validate_subject(s).is_ok())
}

/// A (pattern, subject) pair where the pattern is derived from the subject
/// (tokens kept, replaced by `*` or by another literal, optionally cut short
/// with `>`), so that matches are frequent.
fn derived_pair() -> impl Strategy<Value = (String, String)> {
    vec(select(SUBJECT_TOKENS), 1..=6)
        .prop_flat_map(|s| {
            let n = s.len();
            (
                Just(s),
                vec(0u8..6, n),
                proptest::option::of(0..=n),
                any::<bool>(),
            )
        })
        .prop_map(|(s, edits, tail, extend)| {
            let mut p: Vec<&str> = s
                .iter()
                .zip(edits)
                .map(|(t, e)| match e {
                    0..=2 => *t,
                    3 | 4 => "*",
                    _ => "a",
                })
                .collect();
            if let Some(k) = tail {
                p.truncate(k);
                p.push(">");
            } else if extend {
                p.push("*");
            }
            (join(&p), join(&s))
        })
        .prop_filter("valid pair", |(p, s)| {
            validate_pattern(p).is_ok() && validate_subject(s).is_ok()
        })
}

fn pair() -> impl Strategy<Value = (String, String)> {
    prop_oneof![(random_pattern(6), subject(6)), derived_pair(),]
}

#[derive(Clone, Debug)]
enum Op {
    /// Subscribe `pattern` with a fresh id.
    Insert(String),
    /// Remove the `n`-th subscription ever inserted (mod count), with its own
    /// pattern: `Some` if still live, `None` if removed already.
    Remove(usize),
    /// Remove the `n`-th subscription ever inserted with some other pattern:
    /// only removes it if the pattern happens to be its own.
    RemoveWithPattern(usize, String),
    /// Match a subject (through the cache) and compare with the reference.
    Match(String),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => random_pattern(4).prop_map(Op::Insert),
        2 => any::<usize>().prop_map(Op::Remove),
        1 => (any::<usize>(), random_pattern(4)).prop_map(|(n, p)| Op::RemoveWithPattern(n, p)),
        5 => subject(5).prop_map(Op::Match),
    ]
}

/// Characters for arbitrary strings: mostly the interesting ones (separators,
/// wildcards, every forbidden character, whitespace that is *allowed*,
/// multi-byte letters), plus any Unicode scalar value.
fn interesting_char() -> impl Strategy<Value = char> {
    let special = select(vec![
        '.', '.', '.', '*', '>', 'a', 'b', 'Z', '-', ' ', '\t', '\n', '\r', '\x0c', '\0', '\x0b',
        '\u{85}', '\u{a0}', '\u{2028}', '\u{3000}', '\u{feff}', '\u{fffd}', 'é', '日', '🦀',
    ]);
    prop_oneof![3 => special, 1 => any::<char>()]
}

fn arbitrary_string(max_chars: usize) -> impl Strategy<Value = String> {
    vec(interesting_char(), 0..=max_chars).prop_map(|c| c.into_iter().collect())
}

/// Strings built from tokens (some of them bad), so that valid subjects and
/// near-misses are frequent.
fn tokenish_string() -> impl Strategy<Value = String> {
    let token = select(vec![
        "a", "bc", "*", ">", "foo*", ">x", "", " ", "a b", "x\0", "\t", "日本", "\u{a0}", "\x0b",
    ]);
    vec(token, 1..=8).prop_map(|t| t.join("."))
}

fn check_validators(s: &str) -> Result<(), TestCaseError> {
    for (literal, kind) in [
        (true, ErrorKind::InvalidSubject),
        (false, ErrorKind::InvalidPattern),
    ] {
        let got = if literal {
            validate_subject(s)
        } else {
            validate_pattern(s)
        };
        let want = ref_valid(s, literal);
        prop_assert_eq!(
            got.is_ok(),
            want,
            "{}({:?}) = {:?}, reference says {}",
            if literal {
                "validate_subject"
            } else {
                "validate_pattern"
            },
            s,
            got.as_ref().map_err(|e| e.to_string()),
            want
        );
        if let Err(e) = got {
            prop_assert_eq!(e.kind(), kind);
            if s.len() <= MAX_SUBJECT_LEN {
                let text = e.to_string();
                prop_assert!(
                    text.contains(&format!("{s:?}")),
                    "error does not name the input: {}",
                    text
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (a) `matches` agrees with the reference matcher.
    #[test]
    fn matches_agrees_with_reference((pattern, subject) in pair()) {
        prop_assert!(ref_valid(&pattern, false), "generator/validator disagree on {:?}", pattern);
        prop_assert!(ref_valid(&subject, true), "generator/validator disagree on {:?}", subject);
        let want = ref_matches(&toks(&pattern), &toks(&subject));
        prop_assert_eq!(matches(&pattern, &subject), want, "matches({:?}, {:?})", pattern, subject);
        // A literal pattern matches exactly itself.
        if !is_wildcard(&pattern) {
            prop_assert_eq!(matches(&pattern, &subject), pattern == subject);
        }
        // Every subject matches itself and `>`.
        prop_assert!(matches(&subject, &subject));
        prop_assert!(matches(">", &subject));
    }

    /// (b) The trie returns exactly the reference's subscriptions under random
    /// interleavings of inserts, removes and (cached) matches, for several
    /// cache sizes including 0 (no cache) and tiny ones (constant eviction).
    #[test]
    fn sublist_agrees_with_reference(
        cache_size in select(vec![0usize, 1, 2, 3, 8, 4096]),
        ops in vec(op(), 1..80),
    ) {
        let mut list: Sublist<u64> = Sublist::with_cache_size(cache_size);
        // Every subscription ever inserted, in insertion order, and the live ones.
        let mut history: Vec<(String, u64)> = Vec::new();
        let mut live: BTreeMap<u64, String> = BTreeMap::new();
        let mut queried: BTreeSet<String> = BTreeSet::new();
        let mut next_id = 1u64;

        let expected = |live: &BTreeMap<u64, String>, subject: &str| -> Vec<u64> {
            let s = toks(subject);
            live.iter()
                .filter(|(_, p)| ref_matches(&toks(p), &s))
                .map(|(id, _)| *id)
                .collect()
        };

        for op in &ops {
            match op {
                Op::Insert(pattern) => {
                    let id = next_id;
                    next_id += 1;
                    list.insert(pattern, id, id);
                    history.push((pattern.clone(), id));
                    live.insert(id, pattern.clone());
                }
                Op::Remove(n) if !history.is_empty() => {
                    let (pattern, id) = history[n % history.len()].clone();
                    let want = live.remove(&id).map(|_| id);
                    prop_assert_eq!(list.remove(&pattern, id), want, "remove({:?}, {})", pattern, id);
                }
                Op::RemoveWithPattern(n, other) if !history.is_empty() => {
                    let id = history[n % history.len()].1;
                    let want = match live.get(&id) {
                        Some(p) if p == other => live.remove(&id).map(|_| id),
                        _ => None,
                    };
                    prop_assert_eq!(list.remove(other, id), want, "remove({:?}, {})", other, id);
                }
                Op::Remove(_) | Op::RemoveWithPattern(..) => {
                    prop_assert_eq!(list.remove("a", 12345), None);
                }
                Op::Match(subject) => {
                    queried.insert(subject.clone());
                    let m = list.matches(subject);
                    let u = list.match_uncached(subject);
                    prop_assert_eq!(&*m.subject, subject.as_str());
                    prop_assert_eq!(&*u.subject, subject.as_str());
                    let mut got = m.subs.to_vec();
                    got.sort_unstable();
                    prop_assert_eq!(&got, &expected(&live, subject), "matches({:?})", subject);
                    prop_assert_eq!(&m.subs, &u.subs, "cached and uncached order differ for {:?}", subject);
                }
            }
            prop_assert_eq!(list.len(), live.len());
            prop_assert_eq!(list.is_empty(), live.is_empty());
            prop_assert!(list.cache_len() <= cache_size, "cache {} > {}", list.cache_len(), cache_size);
            // Whatever the cache holds right now (what the in-memory bus's fast
            // path reads) must be current.
            for subject in &queried {
                if let Some(hit) = list.cached(subject) {
                    let mut got = hit.subs.to_vec();
                    got.sort_unstable();
                    prop_assert_eq!(&got, &expected(&live, subject), "stale cache entry for {:?} after {:?}", subject, op);
                }
            }
        }
        // Final sweep: every subject queried, through the cache and without it.
        for subject in &queried {
            let want = expected(&live, subject);
            for m in [list.matches(subject), list.match_uncached(subject)] {
                let mut got = m.subs.to_vec();
                got.sort_unstable();
                prop_assert_eq!(&got, &want, "final matches({:?})", subject);
            }
        }
        // Removing everything that is left empties the table.
        for (id, pattern) in std::mem::take(&mut live) {
            prop_assert_eq!(list.remove(&pattern, id), Some(id));
        }
        prop_assert!(list.is_empty());
        for subject in &queried {
            prop_assert!(list.matches(subject).subs.is_empty());
        }
    }

    /// (c) The validators never panic on arbitrary strings and accept exactly
    /// what the reference accepts; errors have the right kind and name the input.
    #[test]
    fn validators_agree_with_reference_on_arbitrary_strings(s in arbitrary_string(64)) {
        check_validators(&s)?;
    }

    /// (c) The same on strings built from (good and bad) tokens.
    #[test]
    fn validators_agree_with_reference_on_token_strings(s in tokenish_string()) {
        check_validators(&s)?;
    }

    /// `is_wildcard` is "some token is exactly `*` or `>`".
    #[test]
    fn is_wildcard_agrees_with_reference(s in tokenish_string()) {
        let want = toks(&s).iter().any(|t| *t == "*" || *t == ">");
        prop_assert_eq!(is_wildcard(&s), want);
    }

    /// `patterns_overlap(a, b)` is "some subject matches both", checked by brute
    /// force over every subject of at most max(len a, len b) tokens built from
    /// the literals of the alphabet plus one token that appears in neither.
    #[test]
    fn patterns_overlap_agrees_with_brute_force(a in random_pattern(4), b in random_pattern(4)) {
        let (ta, tb) = (toks(&a), toks(&b));
        let max = ta.len().max(tb.len());
        let alphabet = ["a", "b", "c", "foo*", "*b", ">x", "fresh"];
        let mut want = false;
        let mut subject: Vec<&str> = Vec::new();
        // Enumerate subjects of 1..=max tokens (odometer).
        'lengths: for len in 1..=max {
            let mut idx = vec![0usize; len];
            loop {
                subject.clear();
                subject.extend(idx.iter().map(|&i| alphabet[i]));
                if ref_matches(&ta, &subject) && ref_matches(&tb, &subject) {
                    want = true;
                    break 'lengths;
                }
                let mut k = 0;
                while k < len && idx[k] + 1 == alphabet.len() {
                    idx[k] = 0;
                    k += 1;
                }
                if k == len {
                    break;
                }
                idx[k] += 1;
            }
        }
        prop_assert_eq!(patterns_overlap(&a, &b), want, "patterns_overlap({:?}, {:?})", a, b);
        prop_assert_eq!(patterns_overlap(&b, &a), want, "patterns_overlap({:?}, {:?})", b, a);
    }

    /// Strings around the length limit, with multi-byte characters so that the
    /// limit falls inside a character: no panic (the long-input error message
    /// cuts the input at a character boundary), same verdict as the reference.
    #[test]
    fn validators_near_the_length_limit(
        chars in vec(select(vec!['a', 'é', '日', '🦀', '.', '*']), 480..=1100),
    ) {
        let s: String = chars.into_iter().collect();
        check_validators(&s)?;
    }
}

// ---------------------------------------------------------------------------
// Exhaustive and boundary checks (cheap, deterministic)
// ---------------------------------------------------------------------------

/// Every pattern of up to 3 tokens from the pattern alphabet against every
/// subject of up to 3 tokens from the literal alphabet.
#[test]
fn matches_exhaustive_small() {
    fn all(alphabet: &[&'static str], max: usize) -> Vec<Vec<&'static str>> {
        let mut out: Vec<Vec<&str>> = Vec::new();
        let mut frontier: Vec<Vec<&str>> = vec![Vec::new()];
        for _ in 0..max {
            frontier = frontier
                .iter()
                .flat_map(|prefix| {
                    alphabet.iter().map(move |t| {
                        let mut v = prefix.clone();
                        v.push(*t);
                        v
                    })
                })
                .collect();
            out.extend(frontier.iter().cloned());
        }
        out
    }
    let patterns = all(PATTERN_TOKENS, 3);
    let subjects = all(SUBJECT_TOKENS, 3);
    let (mut valid_patterns, mut pairs, mut hits) = (0, 0, 0);
    for p in &patterns {
        let ps = join(p);
        let valid = validate_pattern(&ps).is_ok();
        assert_eq!(valid, ref_valid(&ps, false), "validate_pattern({ps:?})");
        if !valid {
            continue;
        }
        valid_patterns += 1;
        for s in &subjects {
            let ss = join(s);
            assert!(validate_subject(&ss).is_ok(), "{ss:?}");
            let want = ref_matches(p, s);
            assert_eq!(matches(&ps, &ss), want, "matches({ps:?}, {ss:?})");
            pairs += 1;
            hits += usize::from(want);
        }
    }
    // Sanity: the enumeration is what we think it is, and matches occur.
    assert_eq!(patterns.len(), 8 + 64 + 512);
    assert!(
        valid_patterns > 400 && hits > 1000,
        "{valid_patterns} {pairs} {hits}"
    );
}

#[test]
fn length_limit_boundaries() {
    let exact = "a".repeat(MAX_SUBJECT_LEN);
    assert!(validate_subject(&exact).is_ok());
    assert!(validate_subject(&(exact.clone() + "a")).is_err());
    // 682 × 3 bytes + 2 = 2048 bytes.
    let multi = "日".repeat(682) + "ab";
    assert_eq!(multi.len(), MAX_SUBJECT_LEN);
    assert!(validate_pattern(&multi).is_ok());
    let over = "日".repeat(683);
    assert_eq!(over.len(), MAX_SUBJECT_LEN + 1);
    let err = validate_pattern(&over).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidPattern);
    assert!(err.to_string().contains("2049"), "{err}");
    // The 48-byte cut of the error message lands inside a 4-byte character.
    let crab = format!("{}{}", "a".repeat(46), "🦀".repeat(600));
    assert!(crab.len() > MAX_SUBJECT_LEN);
    assert!(validate_subject(&crab).is_err());
}
