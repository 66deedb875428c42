//! Compatibility of a candidate JSON Schema version with the registered ones.
//!
//! [`check`] applies one of Confluent Schema Registry's [`Mode`]s:
//! BACKWARD means consumers using the new schema can read what producers of
//! the latest earlier version wrote (reader = new, writer = old); FORWARD means
//! consumers still on the latest earlier version can read what producers of
//! the new one write (reader = old, writer = new); FULL is both; the
//! `_TRANSITIVE` variants check against every earlier version instead of only
//! the latest; NONE checks nothing.
//!
//! # Content model
//!
//! The core question, [`reader_accepts`], is asked with a *closed writer* and
//! an *open reader*: a producer only sends the properties its schema declares
//! (even without `additionalProperties: false`), and a consumer ignores the
//! properties its schema does not declare (unless it says
//! `additionalProperties: false` or gives a schema for them). So adding or
//! removing an optional property is compatible in every direction, unlike in
//! Confluent's open model (confluentinc/schema-registry#1458, #2927). A writer
//! whose `additionalProperties` is a schema object (a map) is taken to produce
//! extra properties matching it.
//!
//! # Supported keywords (a subset of drafts 4 to 2020-12)
//!
//! * boolean schemas; `{}` and an absent subschema accept anything;
//! * `type` (string or list; `integer` is a subset of `number`), `enum`,
//!   `const` (as a one-value `enum`);
//! * `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`,
//!   `multipleOf`, `minLength`, `maxLength`, `minItems`, `maxItems`,
//!   `uniqueItems`, `minProperties`, `maxProperties`: a reader bound tighter
//!   than the writer's is a break;
//! * `pattern`, `format`: a reader that adds one breaks; two different values
//!   break both ways (regular-expression inclusion is not analysed);
//! * `properties`, `required`, `additionalProperties`, `items` (one schema),
//!   walked recursively;
//! * `$ref` to a local JSON Pointer (`#`, `#/$defs/...`, `#/definitions/...`);
//!   each (reader, writer) pair of locations is visited once, so cycles end.
//!
//! # Treated conservatively
//!
//! Anything else is only accepted when it is the same on both sides:
//! `allOf`/`anyOf`/`oneOf` (same length, branches pairwise compatible in both
//! directions), `not`/`if`/`then`/`else`, `prefixItems`/`contains`, tuple
//! `items` (a list, drafts 7 and 2019-09), keywords next to a `$ref` (must be
//! equal on both sides), and every keyword not listed here or among the
//! annotations below (raw JSON equality, reported as
//! [`ChangeKind::UnsupportedKeywordChanged`]): `dependencies`,
//! `dependentRequired`, `dependentSchemas`, `additionalItems`,
//! `patternProperties`, `propertyNames`, `unevaluatedProperties`,
//! `unevaluatedItems`, `$dynamicRef`, `$recursiveRef`, `contentSchema`,
//! `contentEncoding`, `contentMediaType`, draft 4's boolean
//! `exclusiveMinimum`/`exclusiveMaximum`, vendor extensions and misspellings
//! alike: a keyword the checker does not understand is never taken for
//! nothing, since the validator may enforce it. A writer `enum` narrows its
//! types but its values are not checked against reader bounds such as `maxLength` (a
//! bound the writer schema lacks is reported). The closed-writer model
//! applies to any writer: `{}` or `true` may produce any type, but objects
//! only with the properties it declares (none). Remote references and
//! `$anchor` references are reported as [`ChangeKind::RefUnresolved`].
//! Annotations (`$schema`, `$id`, `$comment`, `$defs`, `definitions`,
//! `title`, `description`, `default`, `examples`, `deprecated`, `readOnly`,
//! `writeOnly`, ...) are ignored.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A compatibility mode, with Confluent Schema Registry's meaning and names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    /// New consumers can read data written with the latest earlier version.
    Backward,
    /// New consumers can read data written with any earlier version.
    BackwardTransitive,
    /// Consumers of the latest earlier version can read new data.
    Forward,
    /// Consumers of any earlier version can read new data.
    ForwardTransitive,
    /// Backward and forward against the latest earlier version.
    Full,
    /// Backward and forward against every earlier version (the default).
    #[default]
    FullTransitive,
    /// No check.
    None,
}

impl Mode {
    /// Every mode, in declaration order.
    pub const ALL: [Mode; 7] = [
        Mode::Backward,
        Mode::BackwardTransitive,
        Mode::Forward,
        Mode::ForwardTransitive,
        Mode::Full,
        Mode::FullTransitive,
        Mode::None,
    ];

    /// Confluent's name of the mode, e.g. `"BACKWARD_TRANSITIVE"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Backward => "BACKWARD",
            Mode::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Mode::Forward => "FORWARD",
            Mode::ForwardTransitive => "FORWARD_TRANSITIVE",
            Mode::Full => "FULL",
            Mode::FullTransitive => "FULL_TRANSITIVE",
            Mode::None => "NONE",
        }
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Mode::Backward | Mode::BackwardTransitive | Mode::Full | Mode::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Mode::Forward | Mode::ForwardTransitive | Mode::Full | Mode::FullTransitive
        )
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Mode::BackwardTransitive | Mode::ForwardTransitive | Mode::FullTransitive
        )
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Mode`] from an unknown name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseModeError(String);

impl fmt::Display for ParseModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown compatibility mode `{}` (expected one of ",
            self.0
        )?;
        let names: Vec<&str> = Mode::ALL.iter().map(|m| m.as_str()).collect();
        write!(f, "{})", names.join(", "))
    }
}

impl std::error::Error for ParseModeError {}

impl FromStr for Mode {
    type Err = ParseModeError;

    /// Parses Confluent's names, ignoring ASCII case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| ParseModeError(s.to_owned()))
    }
}

/// What the new version changed, for one breaking change.
///
/// Kinds come in mirrored pairs: the same difference between reader and writer
/// is a `...Narrowed` change when the new version is the reader (it breaks
/// BACKWARD) and a `...Widened`/`...Extended`/`...Loosened` one when the new
/// version is the writer (it breaks FORWARD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A property became required (new or formerly optional): old data may lack it.
    RequiredAdded,
    /// A required property was removed or made optional: old consumers require it.
    RequiredRemoved,
    /// A property was added that an old reader with `additionalProperties: false` rejects.
    PropertyAdded,
    /// A property was removed from a closed (`additionalProperties: false`) reader.
    PropertyRemoved,
    /// The reader now rejects properties it does not declare.
    AdditionalPropertiesClosed,
    /// The writer now produces extra properties (`additionalProperties` schema)
    /// that an old closed reader rejects.
    AdditionalPropertiesOpened,
    /// The types no longer overlap (e.g. string to integer).
    TypeChanged,
    /// The new version accepts fewer types (e.g. number to integer).
    TypeNarrowed,
    /// The new version produces more types (e.g. integer to number, or adds null).
    TypeWidened,
    /// The new version accepts fewer `enum`/`const` values.
    EnumNarrowed,
    /// The new version may produce more `enum`/`const` values.
    EnumExtended,
    /// A bound or `pattern`/`format` was tightened or added.
    ConstraintNarrowed,
    /// A bound or `pattern`/`format` was loosened or removed.
    ConstraintLoosened,
    /// A `pattern` or `format` was replaced by another (not analysed).
    ConstraintChanged,
    /// `prefixItems`/`contains` or tuple `items` differ (compared conservatively).
    ItemsChanged,
    /// `allOf`/`anyOf`/`oneOf`/`not`/`if`/`then`/`else`, or keywords next to a
    /// `$ref`, differ (compared conservatively).
    CompositionChanged,
    /// A keyword this checker does not analyse differs.
    UnsupportedKeywordChanged,
    /// A `$ref` could not be resolved inside its schema.
    RefUnresolved,
}

impl ChangeKind {
    /// A short stable name, e.g. `"required_added"`.
    pub const fn as_str(self) -> &'static str {
        use ChangeKind::*;
        match self {
            RequiredAdded => "required_added",
            RequiredRemoved => "required_removed",
            PropertyAdded => "property_added",
            PropertyRemoved => "property_removed",
            AdditionalPropertiesClosed => "additional_properties_closed",
            AdditionalPropertiesOpened => "additional_properties_opened",
            TypeChanged => "type_changed",
            TypeNarrowed => "type_narrowed",
            TypeWidened => "type_widened",
            EnumNarrowed => "enum_narrowed",
            EnumExtended => "enum_extended",
            ConstraintNarrowed => "constraint_narrowed",
            ConstraintLoosened => "constraint_loosened",
            ConstraintChanged => "constraint_changed",
            ItemsChanged => "items_changed",
            CompositionChanged => "composition_changed",
            UnsupportedKeywordChanged => "unsupported_keyword_changed",
            RefUnresolved => "ref_unresolved",
        }
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One breaking change of a candidate against one earlier version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// JSON Pointer into the new schema, at the location reached after
    /// following its `$ref`s (e.g. `/$defs/Address/properties/zip/type`).
    /// Keyword changes end with the reader's keyword that is violated
    /// (`/properties/email/type`, `.../maxLength`); property changes point at
    /// the property (`/properties/email`), even where the new version no
    /// longer has it; `additional_properties_*` at `.../additionalProperties`.
    pub pointer: String,
    /// What changed.
    pub kind: ChangeKind,
    /// The direction it breaks: `"BACKWARD"` or `"FORWARD"`.
    pub rule: &'static str,
    /// A human-readable explanation.
    pub detail: String,
    /// The earlier version this change breaks against (0 from [`reader_accepts`]).
    pub against_version: u32,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} at {} (against version {}): {}",
            self.rule, self.kind, self.pointer, self.against_version, self.detail
        )
    }
}

/// Checks `candidate` against the `earlier` versions (oldest first, so the
/// last is the latest) under `mode`. `Err` lists every breaking change against
/// every version the mode checks, version by version (BACKWARD before FORWARD).
pub fn check(mode: Mode, earlier: &[(u32, &Value)], candidate: &Value) -> Result<(), Vec<Change>> {
    let against = match (mode.transitive(), earlier.split_last()) {
        (true, _) => earlier,
        (false, Some((latest, _))) => std::slice::from_ref(latest),
        (false, None) => &[],
    };
    let mut changes = Vec::new();
    for &(version, old) in against {
        if mode.backward() {
            changes.extend(compare(Dir::Backward, old, candidate, version));
        }
        if mode.forward() {
            changes.extend(compare(Dir::Forward, old, candidate, version));
        }
    }
    if changes.is_empty() {
        Ok(())
    } else {
        Err(changes)
    }
}

/// Can a consumer using `reader` read every event a producer using `writer`
/// can produce? Returns the reasons it cannot (empty: it can).
///
/// This is the BACKWARD check with `reader` as the new version: kinds are
/// named as changes from `writer` to `reader`, pointers point into `reader`,
/// `rule` is `"BACKWARD"` and `against_version` is 0.
pub fn reader_accepts(reader: &Value, writer: &Value) -> Vec<Change> {
    compare(Dir::Backward, writer, reader, 0)
}

fn compare(dir: Dir, old: &Value, new: &Value, version: u32) -> Vec<Change> {
    let (reader, writer) = match dir {
        Dir::Backward => (new, old),
        Dir::Forward => (old, new),
    };
    let mut walk = Walk::new(dir);
    walk.walk(Node::root(reader), Node::root(writer));
    for change in &mut walk.out {
        change.against_version = version;
    }
    walk.out
}

/// Which side is the new version: the reader (BACKWARD) or the writer (FORWARD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Backward,
    Forward,
}

/// A subschema and where it is: its document and its JSON Pointer there.
#[derive(Debug, Clone)]
struct Node<'a> {
    root: &'a Value,
    schema: &'a Value,
    ptr: String,
}

static TRUE: Value = Value::Bool(true);

impl<'a> Node<'a> {
    fn root(root: &'a Value) -> Self {
        let ptr = String::new();
        Node {
            root,
            schema: root,
            ptr,
        }
    }

    fn get(&self, keyword: &str) -> Option<&'a Value> {
        self.schema.as_object()?.get(keyword)
    }

    /// The subschema at `self/keyword` (`true` when absent).
    fn child(&self, keyword: &str) -> Node<'a> {
        self.at(self.get(keyword).unwrap_or(&TRUE), &format!("/{keyword}"))
    }

    fn at(&self, schema: &'a Value, suffix: &str) -> Node<'a> {
        let ptr = format!("{}{suffix}", self.ptr);
        Node {
            root: self.root,
            schema,
            ptr,
        }
    }

    /// The identity of the node's document.
    fn doc(&self) -> usize {
        std::ptr::from_ref(self.root) as usize
    }

    fn num(&self, keyword: &str) -> Option<f64> {
        self.get(keyword).and_then(Value::as_f64)
    }
}

/// The kind reported when the new version is the reader, and when it is the writer.
type Kinds = (ChangeKind, ChangeKind);
const NARROWED: Kinds = (
    ChangeKind::ConstraintNarrowed,
    ChangeKind::ConstraintLoosened,
);
const REPLACED: Kinds = (ChangeKind::ConstraintChanged, ChangeKind::ConstraintChanged);
const COMPOSED: Kinds = (
    ChangeKind::CompositionChanged,
    ChangeKind::CompositionChanged,
);
const TUPLED: Kinds = (ChangeKind::ItemsChanged, ChangeKind::ItemsChanged);
const UNKNOWN: Kinds = (
    ChangeKind::UnsupportedKeywordChanged,
    ChangeKind::UnsupportedKeywordChanged,
);
const UNRESOLVED: Kinds = (ChangeKind::RefUnresolved, ChangeKind::RefUnresolved);

/// Keywords that never change what a schema accepts. (`contentEncoding` and
/// `contentMediaType` are not among them: drafts 6 and 7 assert them.)
#[rustfmt::skip]
const ANNOTATIONS: &[&str] = &[
    "$schema", "$id", "$comment", "$anchor", "$dynamicAnchor", "$vocabulary", "$defs",
    "definitions", "title", "description", "default", "examples", "deprecated", "readOnly",
    "writeOnly",
];
const COMPOSITION: &[&str] = &["allOf", "anyOf", "oneOf", "not", "if", "then", "else"];
const TUPLES: &[&str] = &["prefixItems", "contains", "minContains", "maxContains"];
/// The assertion and applicator keywords the walk analyses.
#[rustfmt::skip]
const ANALYSED: &[&str] = &[
    "$ref", "type", "enum", "const", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "minLength", "maxLength", "pattern", "format", "items",
    "minItems", "maxItems", "uniqueItems", "properties", "required", "additionalProperties",
    "minProperties", "maxProperties",
];

/// Whether the walk understands keyword `kw` with this value. Every other
/// keyword (`dependencies`, `dependentRequired`, `additionalItems`,
/// `patternProperties`, a vendor extension, ...) is compared as raw JSON: a
/// difference is a change, never nothing.
fn understood(kw: &str, value: &Value) -> bool {
    // Draft 4's boolean `exclusiveMinimum`/`exclusiveMaximum` modify
    // `minimum`/`maximum`: not analysed.
    let legacy_bound = kw.starts_with("exclusiveM") && value.is_boolean();
    [ANNOTATIONS, COMPOSITION, TUPLES, ANALYSED]
        .iter()
        .any(|list| list.contains(&kw))
        && !legacy_bound
}
const ALL_TYPES: &[&str] = &["null", "boolean", "object", "array", "number", "string"];

/// The recursive walk over a reader and a writer schema, collecting breaks.
struct Walk {
    dir: Dir,
    /// (reader, writer) locations compared or being compared: ends `$ref`
    /// cycles. A location is its document's address and a pointer in it.
    visited: HashSet<(usize, String, usize, String)>,
    out: Vec<Change>,
}

impl Walk {
    fn new(dir: Dir) -> Self {
        let (visited, out) = (HashSet::new(), Vec::new());
        Walk { dir, visited, out }
    }

    /// "new" or "old": the version names of the reader and the writer.
    fn names(&self) -> (&'static str, &'static str) {
        match self.dir {
            Dir::Backward => ("new", "old"),
            Dir::Forward => ("old", "new"),
        }
    }

    /// Records a break at `suffix` below the new side's location.
    fn report(&mut self, r: &Node, w: &Node, suffix: &str, kinds: Kinds, detail: String) {
        let (new, kind, rule) = match self.dir {
            Dir::Backward => (r, kinds.0, "BACKWARD"),
            Dir::Forward => (w, kinds.1, "FORWARD"),
        };
        let pointer = format!("{}{suffix}", new.ptr);
        let against_version = 0;
        self.out.push(Change {
            pointer,
            kind,
            rule,
            detail,
            against_version,
        });
    }

    fn walk<'a>(&mut self, r: Node<'a>, w: Node<'a>) {
        let key = (r.doc(), r.ptr.clone(), w.doc(), w.ptr.clone());
        if !self.visited.insert(key) {
            return;
        }
        if r.get("$ref").is_some() || w.get("$ref").is_some() {
            return self.follow_refs(r, w);
        }
        match (r.schema, w.schema) {
            (Value::Bool(true), _) | (_, Value::Bool(false)) => return,
            (Value::Bool(false), _) => {
                let detail = format!("the {} version accepts nothing (`false`)", self.names().0);
                return self.report(&r, &w, "", NARROWED, detail);
            }
            _ => {}
        }
        let w_types = writer_types(&w);
        let r_types = declared_types(&r);
        let r_may = |t: &str| r_types.as_ref().is_none_or(|rt| overlaps(rt, t));
        let w_may = |t: &str| {
            w_types
                .iter()
                .any(|wt| wt == t || (t == "number" && wt == "integer"))
        };
        self.types(&r, &w, r_types.as_deref(), &w_types);
        self.enums(&r, &w);
        if w_may("number") && r_may("number") {
            self.numbers(&r, &w);
        }
        if w_may("string") && r_may("string") {
            self.count(&r, &w, "minLength", false);
            self.count(&r, &w, "maxLength", true);
            self.same_or_absent(&r, &w, "pattern");
            self.same_or_absent(&r, &w, "format");
        }
        if w_may("array") && r_may("array") {
            self.arrays(&r, &w);
        }
        if w_may("object") && r_may("object") {
            self.objects(&r, &w);
        }
        for kw in COMPOSITION {
            if !self.equivalent(&r, &w, kw) {
                let detail = format!("`{kw}` differs; compositions must be equivalent");
                self.report(&r, &w, &format!("/{kw}"), COMPOSED, detail);
            }
        }
        let mut others: Vec<&str> = [&r, &w]
            .into_iter()
            .filter_map(|n| n.schema.as_object())
            .flatten()
            .filter(|(kw, value)| !understood(kw, value))
            .map(|(kw, _)| kw.as_str())
            .collect();
        others.sort_unstable();
        others.dedup();
        for kw in others {
            if r.get(kw) != w.get(kw) {
                let detail = format!("`{kw}` differs; it is not analysed, only compared as JSON");
                self.report(&r, &w, &format!("/{kw}"), UNKNOWN, detail);
            }
        }
    }

    /// Follows one `$ref` hop on each side that has one, then walks on.
    fn follow_refs<'a>(&mut self, r: Node<'a>, w: Node<'a>) {
        let (rs, ws) = (ref_siblings(&r), ref_siblings(&w));
        if (rs.is_some() || ws.is_some()) && rs != ws {
            let detail = "keywords next to `$ref` differ; they are only compared as JSON".into();
            return self.report(&r, &w, "/$ref", COMPOSED, detail);
        }
        match (resolve(&r), resolve(&w)) {
            (Ok(r2), Ok(w2)) => self.walk(r2, w2),
            (Err(e), _) | (_, Err(e)) => self.report(&r, &w, "/$ref", UNRESOLVED, e),
        }
    }

    fn types(&mut self, r: &Node, w: &Node, r_types: Option<&[String]>, w_types: &[String]) {
        let Some(r_types) = r_types else { return };
        let rejected: Vec<&String> = w_types.iter().filter(|t| !accepts(r_types, t)).collect();
        if rejected.is_empty() {
            return;
        }
        let kinds = if w_types.iter().any(|t| overlaps(r_types, t)) {
            (ChangeKind::TypeNarrowed, ChangeKind::TypeWidened)
        } else {
            (ChangeKind::TypeChanged, ChangeKind::TypeChanged)
        };
        let (rn, wn) = self.names();
        let detail =
            format!("the {rn} version accepts {r_types:?}, the {wn} may produce {rejected:?}");
        self.report(r, w, "/type", kinds, detail);
    }

    fn enums(&mut self, r: &Node, w: &Node) {
        let Some(allowed) = enum_values(r) else {
            return;
        };
        let kw = if r.get("const").is_some() {
            "const"
        } else {
            "enum"
        };
        let (rn, wn) = self.names();
        let detail = match enum_values(w) {
            None => format!("the {rn} version only accepts its `{kw}`, the {wn} is not restricted"),
            Some(values) => {
                let extra: Vec<String> = values
                    .into_iter()
                    .filter(|v| !allowed.iter().any(|a| json_eq(a, v)))
                    .map(Value::to_string)
                    .collect();
                if extra.is_empty() {
                    return;
                }
                format!("the {rn} version does not accept {}", extra.join(", "))
            }
        };
        let kinds = (ChangeKind::EnumNarrowed, ChangeKind::EnumExtended);
        self.report(r, w, &format!("/{kw}"), kinds, detail);
    }

    fn numbers(&mut self, r: &Node, w: &Node) {
        let (rn, wn) = self.names();
        for lower in [true, false] {
            let Some((rv, r_excl, kw)) = bound(r, lower) else {
                continue;
            };
            let theirs = bound(w, lower);
            let fine = theirs.is_some_and(|(wv, w_excl, _)| {
                let inside = if lower { wv > rv } else { wv < rv };
                inside || (wv == rv && (w_excl || !r_excl))
            });
            if !fine {
                let theirs = theirs.map_or("none".into(), |(v, _, k)| format!("`{k}` {v}"));
                let detail = format!("the {rn} version has `{kw}` {rv}, the {wn} {theirs}");
                self.report(r, w, &format!("/{kw}"), NARROWED, detail);
            }
        }
        let Some(rm) = r.num("multipleOf") else {
            return;
        };
        let fine = w.num("multipleOf").is_some_and(|wm| {
            let q = wm / rm;
            (q - q.round()).abs() < 1e-9
        });
        if !fine {
            let detail = format!("the {rn} version requires a multiple of {rm}, the {wn} does not");
            self.report(r, w, "/multipleOf", NARROWED, detail);
        }
    }

    /// A count bound (`minLength`, `maxItems`, ...): absent means 0 or unbounded.
    fn count(&mut self, r: &Node, w: &Node, kw: &str, upper: bool) {
        let Some(rv) = r.num(kw) else { return };
        let fine = match w.num(kw) {
            Some(wv) if upper => wv <= rv,
            Some(wv) => wv >= rv,
            None => !upper && rv <= 0.0,
        };
        if !fine {
            let (rn, wn) = self.names();
            let theirs = w.num(kw).map_or("none".into(), |v| v.to_string());
            let detail = format!("the {rn} version has `{kw}` {rv}, the {wn} {theirs}");
            self.report(r, w, &format!("/{kw}"), NARROWED, detail);
        }
    }

    /// `pattern`/`format`/`uniqueItems`: a reader value must be repeated by the writer.
    fn same_or_absent(&mut self, r: &Node, w: &Node, kw: &str) {
        let Some(rv) = r.get(kw).filter(|v| **v != Value::Bool(false)) else {
            return;
        };
        let (rn, wn) = self.names();
        let (kinds, detail) = match w.get(kw) {
            Some(wv) if wv == rv => return,
            Some(Value::Bool(false)) | None => (
                NARROWED,
                format!("the {rn} version requires `{kw}` {rv}, the {wn} does not"),
            ),
            Some(wv) => (
                REPLACED,
                format!("`{kw}` {wv} replaced by {rv}; not analysed"),
            ),
        };
        self.report(r, w, &format!("/{kw}"), kinds, detail);
    }

    fn arrays<'a>(&mut self, r: &Node<'a>, w: &Node<'a>) {
        for kw in TUPLES {
            if !self.equivalent(r, w, kw) {
                let detail = format!("`{kw}` differs; it must be equivalent");
                self.report(r, w, &format!("/{kw}"), TUPLED, detail);
            }
        }
        self.count(r, w, "minItems", false);
        self.count(r, w, "maxItems", true);
        self.same_or_absent(r, w, "uniqueItems");
        let tuple = |n: &Node| n.get("items").is_some_and(Value::is_array);
        if tuple(r) || tuple(w) {
            // Draft 7 and 2019-09 tuples (`items` as a list of schemas).
            if !self.equivalent(r, w, "items") {
                let detail = "tuple `items` differs; it must be equivalent".to_string();
                self.report(r, w, "/items", TUPLED, detail);
            }
        } else {
            self.walk(r.child("items"), w.child("items"));
        }
    }

    fn objects<'a>(&mut self, r: &Node<'a>, w: &Node<'a>) {
        use ChangeKind::*;
        let (rn, wn) = self.names();
        self.count(r, w, "minProperties", false);
        self.count(r, w, "maxProperties", true);
        let (r_req, w_req) = (required(r), required(w));
        for name in r_req.iter().filter(|n| !w_req.contains(n)) {
            let detail = format!("the {rn} version requires `{name}`, the {wn} may omit it");
            self.report(
                r,
                w,
                &prop_ptr(name),
                (RequiredAdded, RequiredRemoved),
                detail,
            );
        }
        // The writer is closed: it produces its declared properties, its
        // required ones, and (only if `additionalProperties` is a schema
        // object) anything else matching that schema.
        let (r_props, w_props) = (properties(r), properties(w));
        let (r_extra, w_extra) = (r.get("additionalProperties"), w.get("additionalProperties"));
        let w_closed = w_extra == Some(&Value::Bool(false));
        let w_extra = w_extra.filter(|v| v.is_object());
        let mut names: Vec<&str> = w_props.iter().map(|(n, _)| *n).collect();
        if !w_closed {
            names.extend(w_req.iter().map(String::as_str));
        }
        if w_extra.is_some() {
            names.extend(r_props.iter().map(|(n, _)| *n));
        }
        let mut seen = HashSet::new();
        for name in names.into_iter().filter(|n| seen.insert(*n)) {
            let w_node = match (w_props.iter().find(|(n, _)| *n == name), w_extra) {
                (Some((_, s)), _) => w.at(s, &prop_ptr(name)),
                (None, Some(s)) => w.at(s, "/additionalProperties"),
                (None, None) => w.at(&TRUE, &prop_ptr(name)),
            };
            let r_node = match (r_props.iter().find(|(n, _)| *n == name), r_extra) {
                (Some((_, s)), _) => r.at(s, &prop_ptr(name)),
                (None, None | Some(Value::Bool(true))) => continue, // an open reader ignores it
                (None, Some(Value::Bool(false))) => {
                    // New reader: it dropped `name` (the old writer was already
                    // closed) or closed its content model. Old reader: the new
                    // writer added `name`.
                    let (suffix, backward) = match (self.dir, w_closed) {
                        (Dir::Backward, false) => {
                            ("/additionalProperties".into(), AdditionalPropertiesClosed)
                        }
                        _ => (prop_ptr(name), PropertyRemoved),
                    };
                    let detail =
                        format!("the {rn} version rejects `{name}`, the {wn} may produce it");
                    self.report(r, w, &suffix, (backward, PropertyAdded), detail);
                    continue;
                }
                (None, Some(s)) => r.at(s, "/additionalProperties"),
            };
            self.walk(r_node, w_node);
        }
        match (w_extra, r_extra) {
            (None, _) | (_, None | Some(Value::Bool(true))) => {}
            (Some(_), Some(Value::Bool(false))) => {
                let detail = format!(
                    "the {wn} version may produce undeclared properties, the {rn} rejects them"
                );
                let kinds = (AdditionalPropertiesClosed, AdditionalPropertiesOpened);
                self.report(r, w, "/additionalProperties", kinds, detail);
            }
            (Some(_), Some(_)) => self.walk(
                r.child("additionalProperties"),
                w.child("additionalProperties"),
            ),
        }
    }

    /// Whether `kw` is absent on both sides or mutually compatible (lists: same
    /// length, pairwise). Each direction is walked apart, its findings dropped,
    /// starting from the pairs visited so far (so cycles end; a pair already
    /// visited has had its breaks reported).
    fn equivalent(&self, r: &Node, w: &Node, kw: &str) -> bool {
        let both_ways = |suffix: String, a: &Value, b: &Value| {
            let (a, b) = (r.at(a, &suffix), w.at(b, &suffix));
            [(a.clone(), b.clone()), (b, a)].into_iter().all(|(x, y)| {
                let mut walk = Walk::new(Dir::Backward);
                walk.visited = self.visited.clone();
                walk.walk(x, y);
                walk.out.is_empty()
            })
        };
        match (r.get(kw), w.get(kw)) {
            (Some(Value::Array(ra)), Some(Value::Array(wa))) => {
                let mut pairs = ra.iter().zip(wa).enumerate();
                ra.len() == wa.len()
                    && pairs.all(|(i, (a, b))| both_ways(format!("/{kw}/{i}"), a, b))
            }
            (
                Some(a @ (Value::Object(_) | Value::Bool(_))),
                Some(b @ (Value::Object(_) | Value::Bool(_))),
            ) => both_ways(format!("/{kw}"), a, b),
            (a, b) => a == b,
        }
    }
}

/// The assertion keywords next to a `$ref`, if it has any.
fn ref_siblings<'a>(node: &Node<'a>) -> Option<Vec<(&'a String, &'a Value)>> {
    node.get("$ref")?;
    let is_assertion = |k: &&String| *k != "$ref" && !ANNOTATIONS.contains(&k.as_str());
    let siblings: Vec<_> = node
        .schema
        .as_object()?
        .iter()
        .filter(|(k, _)| is_assertion(k))
        .collect();
    (!siblings.is_empty()).then_some(siblings)
}

/// Follows the node's `$ref` (one hop), if it has one.
fn resolve<'a>(node: &Node<'a>) -> Result<Node<'a>, String> {
    let Some(reference) = node.get("$ref") else {
        return Ok(node.clone());
    };
    let fragment = reference.as_str().and_then(|s| s.strip_prefix('#'));
    let Some(fragment) = fragment.filter(|f| f.is_empty() || f.starts_with('/')) else {
        return Err(format!(
            "`$ref` {reference} is not a local JSON Pointer reference"
        ));
    };
    match node.root.pointer(fragment) {
        Some(schema) => Ok(Node {
            root: node.root,
            schema,
            ptr: fragment.to_owned(),
        }),
        None => Err(format!(
            "`$ref` {reference} does not resolve inside the schema"
        )),
    }
}

fn prop_ptr(name: &str) -> String {
    format!("/properties/{}", name.replace('~', "~0").replace('/', "~1"))
}

fn properties<'a>(node: &Node<'a>) -> Vec<(&'a str, &'a Value)> {
    let props = node.get("properties").and_then(Value::as_object);
    props
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v))
        .collect()
}

fn required(node: &Node) -> Vec<String> {
    let list = node.get("required").and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// The effective lower (or upper) bound: value, exclusive, keyword.
fn bound(node: &Node, lower: bool) -> Option<(f64, bool, &'static str)> {
    let (inc, exc) = match lower {
        true => ("minimum", "exclusiveMinimum"),
        false => ("maximum", "exclusiveMaximum"),
    };
    let inclusive = node.num(inc).map(|v| (v, false, inc));
    let exclusive = node.num(exc).map(|v| (v, true, exc));
    match (inclusive, exclusive) {
        (Some(i), Some(e)) if (lower && e.0 >= i.0) || (!lower && e.0 <= i.0) => Some(e),
        (Some(i), _) => Some(i),
        (None, e) => e,
    }
}

fn declared_types(node: &Node) -> Option<Vec<String>> {
    match node.get("type")? {
        Value::String(t) => Some(vec![t.clone()]),
        Value::Array(ts) => Some(
            ts.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    }
}

/// The types a writer may produce: its `enum`/`const` values' types, else its
/// `type`, else every type.
fn writer_types(w: &Node) -> Vec<String> {
    let declared = declared_types(w);
    let mut types: Vec<String> = match enum_values(w) {
        Some(values) => values
            .into_iter()
            .map(|v| type_of(v).to_owned())
            .filter(|t| declared.as_ref().is_none_or(|d| accepts(d, t)))
            .collect(),
        None => declared.unwrap_or_else(|| ALL_TYPES.iter().map(|t| (*t).to_owned()).collect()),
    };
    types.sort();
    types.dedup();
    types
}

/// Does a reader with `types` accept every value of type `t`?
fn accepts(types: &[String], t: &str) -> bool {
    types
        .iter()
        .any(|r| r == t || (t == "integer" && r == "number"))
}

/// Does a reader with `types` accept some value of type `t`?
fn overlaps(types: &[String], t: &str) -> bool {
    accepts(types, t) || (t == "number" && types.iter().any(|r| r == "integer"))
}

fn enum_values<'a>(node: &Node<'a>) -> Option<Vec<&'a Value>> {
    if let Some(c) = node.get("const") {
        return Some(vec![c]);
    }
    node.get("enum")?.as_array().map(|vs| vs.iter().collect())
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// JSON equality where `1` and `1.0` are the same number.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(k, x)| ys.get(k).is_some_and(|y| json_eq(x, y)))
        }
        _ => a == b,
    }
}
