//! Subject and pattern validation and matching, against a reference model.
//!
//! Input: fields separated by 0xFF (see `common.rs`): a subject, then
//! patterns. Every field is checked as a subject and as a pattern; the first
//! field is matched against every valid pattern, by `subject::matches` and
//! by a `Sublist` (with a tiny cache, before and after removing a pattern).
//! The model below is written from the rules in the `subject` module docs,
//! not from its code, as plainly as possible (splits into vectors, recursion
//! on token lists): no panic, the same verdicts, the same matches.
#![no_main]

mod common;

use event_bus::subject::{
    is_reserved, is_wildcard, matches, patterns_overlap, validate_bus_pattern,
    validate_bus_subject, validate_pattern, validate_subject, Sublist, MAX_SUBJECT_LEN,
};
use event_bus::{ErrorKind, Subject};
use libfuzzer_sys::fuzz_target;

// ------------------------------------------------------------ reference model

/// The model's verdict: is `s` a valid subject (`literal`) or pattern?
fn model_valid(s: &str, literal: bool) -> bool {
    if s.is_empty() || s.len() > MAX_SUBJECT_LEN {
        return false;
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return false;
        }
        if t.chars()
            .any(|c| [' ', '\t', '\r', '\n', '\u{c}', '\0'].contains(&c))
        {
            return false;
        }
        if literal && (*t == "*" || *t == ">") {
            return false;
        }
        if *t == ">" && i + 1 != tokens.len() {
            return false;
        }
    }
    true
}

/// Is `s` in a namespace the bus leaves to the server: a first token that
/// starts with `$` (`$JS`, `$KV`, `$SYS`, ...) or is `_INBOX`?
fn model_reserved(s: &str) -> bool {
    let first = s.split('.').next().unwrap_or("");
    first.starts_with('$') || first == "_INBOX"
}

/// Does the pattern (as tokens) match the subject (as tokens)? Recursive,
/// straight from the definition: `*` is one token, `>` one or more.
fn model_match(p: &[&str], s: &[&str]) -> bool {
    match (p.split_first(), s.split_first()) {
        (None, None) => true,
        (Some((&">", _)), Some(_)) => true,
        (Some((&pt, p_rest)), Some((&st, s_rest))) => {
            (pt == "*" || pt == st) && model_match(p_rest, s_rest)
        }
        _ => false,
    }
}

/// Can some subject match both patterns? Recursive on the tokens: a `>`
/// absorbs any non-empty rest of the other; `*` is compatible with any one
/// token (a literal or a wildcard of the other).
fn model_overlap(a: &[&str], b: &[&str]) -> bool {
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        (Some((&">", _)), Some(_)) | (Some(_), Some((&">", _))) => true,
        (Some((&x, a_rest)), Some((&y, b_rest))) => {
            (x == y || x == "*" || y == "*") && model_overlap(a_rest, b_rest)
        }
        _ => false,
    }
}

fn tokens(s: &str) -> Vec<&str> {
    s.split('.').collect()
}

// ------------------------------------------------------------ the checks

fn check_verdicts(s: &str) {
    for (literal, result, kind) in [
        (true, validate_subject(s), ErrorKind::InvalidSubject),
        (false, validate_pattern(s), ErrorKind::InvalidPattern),
    ] {
        let want = model_valid(s, literal);
        match result {
            Ok(()) => assert!(
                want,
                "accepted {s:?} (literal: {literal}); the model refuses it"
            ),
            Err(e) => {
                assert!(
                    !want,
                    "refused {s:?} (literal: {literal}): {e}; the model accepts it"
                );
                assert_eq!(e.kind(), kind, "{s:?}: {e}");
                let text = e.to_string();
                if s.len() <= MAX_SUBJECT_LEN {
                    assert!(
                        text.contains(&format!("{s:?}")),
                        "the error must name {s:?}: {text}"
                    );
                } else {
                    assert!(text.contains(&MAX_SUBJECT_LEN.to_string()), "{text}");
                }
            }
        }
    }
    assert_eq!(
        Subject::new(s).is_ok(),
        model_valid(s, true),
        "Subject::new({s:?})"
    );
    // What a bus accepts: the syntax, and not a reserved namespace.
    assert_eq!(is_reserved(s), model_reserved(s), "is_reserved({s:?})");
    for (literal, result, kind) in [
        (true, validate_bus_subject(s), ErrorKind::InvalidSubject),
        (false, validate_bus_pattern(s), ErrorKind::InvalidPattern),
    ] {
        let want = model_valid(s, literal) && !model_reserved(s);
        match result {
            Ok(()) => assert!(
                want,
                "a bus accepts {s:?} (literal: {literal}); the model refuses it"
            ),
            Err(e) => {
                assert!(
                    !want,
                    "a bus refuses {s:?} (literal: {literal}): {e}; the model accepts it"
                );
                assert_eq!(e.kind(), kind, "{s:?}: {e}");
            }
        }
    }
    if model_valid(s, false) {
        let wild = tokens(s).iter().any(|t| *t == "*" || *t == ">");
        assert_eq!(is_wildcard(s), wild, "is_wildcard({s:?})");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(fields) = common::fields(data) else {
        return;
    };
    if fields.len() > 16 {
        return;
    }
    for f in &fields {
        check_verdicts(f);
    }
    let subject = fields[0];
    let patterns: Vec<&str> = fields[1..]
        .iter()
        .copied()
        .filter(|p| model_valid(p, false))
        .collect();

    // Overlap: exact against the model for every pair of valid patterns.
    for a in &patterns {
        for b in &patterns {
            assert_eq!(
                patterns_overlap(a, b),
                model_overlap(&tokens(a), &tokens(b)),
                "patterns_overlap({a:?}, {b:?})"
            );
        }
    }
    if !model_valid(subject, true) {
        return;
    }
    let s_tokens = tokens(subject);
    let want: Vec<bool> = patterns
        .iter()
        .map(|p| model_match(&tokens(p), &s_tokens))
        .collect();
    for (p, &w) in patterns.iter().zip(&want) {
        assert_eq!(matches(p, subject), w, "matches({p:?}, {subject:?})");
    }
    // A subject matched by two patterns proves that they overlap.
    for (i, a) in patterns.iter().enumerate() {
        for (j, b) in patterns.iter().enumerate() {
            if want[i] && want[j] {
                assert!(
                    patterns_overlap(a, b),
                    "{a:?} and {b:?} both match {subject:?}"
                );
            }
        }
    }

    // The routing table: the same answer, from the trie and from its cache,
    // and after a removal (the cache must not serve a stale match).
    let mut list = Sublist::with_cache_size(2);
    for (id, p) in patterns.iter().enumerate() {
        list.insert(p, id as u64, id);
    }
    let expected = |removed: Option<usize>| -> Vec<usize> {
        (0..patterns.len())
            .filter(|&i| want[i] && Some(i) != removed)
            .collect()
    };
    for _ in 0..2 {
        let mut got = list.matches(subject).subs.to_vec();
        got.sort_unstable();
        assert_eq!(
            got,
            expected(None),
            "Sublist::matches({subject:?}) over {patterns:?}"
        );
        assert_eq!(&*list.matches(subject).subject, subject);
    }
    if !patterns.is_empty() {
        let victim = data.len() % patterns.len();
        assert_eq!(list.remove(patterns[victim], victim as u64), Some(victim));
        let mut got = list.matches(subject).subs.to_vec();
        got.sort_unstable();
        assert_eq!(
            got,
            expected(Some(victim)),
            "after removing {:?}",
            patterns[victim]
        );
        let mut uncached = list.match_uncached(subject).subs.to_vec();
        uncached.sort_unstable();
        assert_eq!(uncached, got);
    }
});
