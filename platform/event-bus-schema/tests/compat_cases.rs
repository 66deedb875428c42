//! The compatibility checker against a table of schema evolutions. Each
//! evolution (old versions, new version) is checked under several modes; each
//! check is one case asserting the verdict and the exact list of
//! (against version, rule, pointer, kind).

use event_bus_schema::compat::Mode::{
    Backward, BackwardTransitive, Forward, ForwardTransitive, Full, FullTransitive,
};
use event_bus_schema::compat::{check, reader_accepts, ChangeKind, ChangeKind::*, Mode};
use proptest::prelude::*;
use serde_json::{json, Value};

const B: &str = "BACKWARD";
const F: &str = "FORWARD";

/// (against version, rule, pointer, kind)
type Expected = (u32, &'static str, &'static str, ChangeKind);

/// Schema versions 1..=n (oldest first), a candidate, and the expected
/// outcome under some modes.
struct Evolution {
    name: &'static str,
    history: Vec<Value>,
    new: Value,
    cases: Vec<(Mode, bool, Vec<Expected>)>,
}

/// Version 1 is `old`.
fn evo(name: &'static str, old: Value, new: Value) -> Evolution {
    history(name, vec![old], new)
}

fn history(name: &'static str, history: Vec<Value>, new: Value) -> Evolution {
    Evolution {
        name,
        history,
        new,
        cases: Vec::new(),
    }
}

impl Evolution {
    /// Compatible under `mode`.
    fn ok(mut self, mode: Mode) -> Self {
        self.cases.push((mode, true, Vec::new()));
        self
    }

    /// Incompatible under `mode`, with exactly these changes, in this order.
    fn fails(mut self, mode: Mode, expected: &[Expected]) -> Self {
        self.cases.push((mode, false, expected.to_vec()));
        self
    }
}

/// An object schema with the given properties and required list.
fn obj(properties: Value, required: &[&str]) -> Value {
    json!({ "type": "object", "properties": properties, "required": required })
}

/// Like [`obj`], with `additionalProperties: false`.
fn closed(properties: Value, required: &[&str]) -> Value {
    let mut schema = obj(properties, required);
    schema["additionalProperties"] = json!(false);
    schema
}

/// `schema` with the keywords of `extra` added.
fn with(mut schema: Value, extra: Value) -> Value {
    let extra = extra.as_object().unwrap().clone();
    schema.as_object_mut().unwrap().extend(extra);
    schema
}

fn string(extra: Value) -> Value {
    with(json!({ "type": "string" }), extra)
}

fn int(extra: Value) -> Value {
    with(json!({ "type": "integer" }), extra)
}

fn array(extra: Value) -> Value {
    with(
        json!({ "type": "array", "items": { "type": "string" } }),
        extra,
    )
}

/// `{id: string, email: string}`, `id` required.
fn user() -> Value {
    let properties = json!({ "id": { "type": "string" }, "email": { "type": "string" } });
    obj(properties, &["id"])
}

/// [`user`] with property `name` set to `schema` and `required` replaced.
fn user_with(name: &str, schema: Value, required: &[&str]) -> Value {
    let mut user = user();
    user["properties"][name] = schema;
    user["required"] = json!(required);
    user
}

/// An object with one optional property `p`.
fn one(schema: Value) -> Value {
    obj(json!({ "p": schema }), &[])
}

/// `{id, address: {zip, country}}`, `address` requiring `required`.
fn address(zip: Value, required: &[&str]) -> Value {
    let inner = obj(
        json!({ "zip": zip, "country": { "type": "string" } }),
        required,
    );
    obj(
        json!({ "id": { "type": "string" }, "address": inner }),
        &["id"],
    )
}

/// `{lines: [{sku, qty}]}`, each line requiring `required`.
fn lines(qty: Value, required: &[&str]) -> Value {
    let line = obj(json!({ "sku": { "type": "string" }, "qty": qty }), required);
    obj(
        json!({ "lines": { "type": "array", "items": line } }),
        &["lines"],
    )
}

/// A draft 7 tuple: `[string, integer]`, with the keywords of `extra`.
fn pair(extra: Value) -> Value {
    let items = json!([{ "type": "string" }, { "type": "integer" }]);
    with(json!({ "type": "array", "items": items }), extra)
}

/// Two properties referring to one `$defs` entry.
fn with_defs(zip: Value) -> Value {
    json!({
        "type": "object",
        "$defs": { "Address": obj(json!({ "zip": zip }), &["zip"]) },
        "properties": {
            "home": { "$ref": "#/$defs/Address" },
            "work": { "$ref": "#/$defs/Address" }
        }
    })
}

/// A recursive tree of nodes with a `value`.
fn tree(value: Value) -> Value {
    let children = json!({ "type": "array", "items": { "$ref": "#/$defs/Node" } });
    let node = obj(json!({ "value": value, "children": children }), &["value"]);
    json!({ "$ref": "#/$defs/Node", "$defs": { "Node": node } })
}

/// Pointers used more than once.
const EMAIL_TYPE: &str = "/properties/email/type";
const P_TYPE: &str = "/properties/p/type";
const ZIP_TYPE: &str = "/properties/address/properties/zip/type";
const QTY: &str = "/properties/lines/items/properties/qty";
const QTY_TYPE: &str = "/properties/lines/items/properties/qty/type";
const DEF_ZIP_TYPE: &str = "/$defs/Address/properties/zip/type";
const NODE_VALUE_TYPE: &str = "/$defs/Node/properties/value/type";

fn evolutions() -> Vec<Evolution> {
    let name_optional = user_with("name", json!({ "type": "string" }), &["id"]);
    let name_required = user_with("name", json!({ "type": "string" }), &["id", "name"]);
    let email_int = user_with("email", json!({ "type": "integer" }), &["id"]);
    let nullable = one(json!({ "type": ["string", "null"] }));
    let status = |values: Value| one(string(json!({ "enum": values })));
    let any_of = |branches: Value| one(json!({ "anyOf": branches }));
    let map = |values: Value| json!({ "type": "object", "additionalProperties": values });
    let user_closed = closed(user()["properties"].clone(), &["id"]);
    let mut inline_as_ref = address(string(json!({})), &[]);
    inline_as_ref["$defs"] = json!({ "A": inline_as_ref["properties"]["address"].take() });
    inline_as_ref["properties"]["address"] = json!({ "$ref": "#/$defs/A" });
    vec![
        // Properties: the writer is closed, the reader open.
        evo("optional property added", user(), name_optional.clone())
            .ok(Backward)
            .ok(Forward)
            .ok(Full),
        evo("optional property removed", name_optional.clone(), user())
            .ok(Backward)
            .ok(Forward)
            .ok(FullTransitive),
        evo("required property added", user(), name_required.clone())
            .fails(Backward, &[(1, B, "/properties/name", RequiredAdded)])
            .ok(Forward)
            .fails(Full, &[(1, B, "/properties/name", RequiredAdded)]),
        evo(
            "required property removed",
            user(),
            obj(json!({ "email": { "type": "string" } }), &[]),
        )
        .fails(Forward, &[(1, F, "/properties/id", RequiredRemoved)])
        .ok(Backward),
        evo(
            "optional made required",
            user(),
            user_with("email", json!({ "type": "string" }), &["id", "email"]),
        )
        .fails(Backward, &[(1, B, "/properties/email", RequiredAdded)])
        .ok(Forward),
        evo(
            "required made optional",
            user(),
            user_with("id", json!({ "type": "string" }), &[]),
        )
        .fails(Forward, &[(1, F, "/properties/id", RequiredRemoved)])
        .ok(Backward),
        evo(
            "required but undeclared, unchanged",
            obj(json!({}), &["x"]),
            obj(json!({}), &["x"]),
        )
        .ok(FullTransitive),
        // Types.
        evo("type changed string to integer", user(), email_int.clone())
            .fails(Backward, &[(1, B, EMAIL_TYPE, TypeChanged)])
            .fails(Forward, &[(1, F, EMAIL_TYPE, TypeChanged)])
            .fails(
                Full,
                &[
                    (1, B, EMAIL_TYPE, TypeChanged),
                    (1, F, EMAIL_TYPE, TypeChanged),
                ],
            ),
        evo(
            "type widened integer to number",
            one(int(json!({}))),
            one(json!({ "type": "number" })),
        )
        .ok(Backward)
        .fails(Forward, &[(1, F, P_TYPE, TypeWidened)]),
        evo(
            "type narrowed number to integer",
            one(json!({ "type": "number" })),
            one(int(json!({}))),
        )
        .fails(Backward, &[(1, B, P_TYPE, TypeNarrowed)])
        .ok(Forward),
        evo("nullable added", one(string(json!({}))), nullable.clone())
            .ok(Backward)
            .fails(Forward, &[(1, F, P_TYPE, TypeWidened)]),
        evo("nullable removed", nullable.clone(), one(string(json!({}))))
            .fails(Full, &[(1, B, P_TYPE, TypeNarrowed)]),
        evo(
            "property schema loosened to true",
            one(int(json!({}))),
            one(json!(true)),
        )
        .ok(Backward)
        .fails(Full, &[(1, F, P_TYPE, TypeWidened)]),
        evo(
            "property schema {} given a type",
            one(json!({})),
            one(int(json!({}))),
        )
        .fails(Backward, &[(1, B, P_TYPE, TypeNarrowed)]),
        evo(
            "writer enum implies its type",
            one(json!({ "enum": ["a", "b"] })),
            one(string(json!({}))),
        )
        .ok(Backward),
        // Enums and const.
        evo(
            "enum extended",
            status(json!(["a", "b"])),
            status(json!(["a", "b", "c"])),
        )
        .ok(Backward)
        .fails(Forward, &[(1, F, "/properties/p/enum", EnumExtended)]),
        evo(
            "enum narrowed",
            status(json!(["a", "b"])),
            status(json!(["a"])),
        )
        .fails(Backward, &[(1, B, "/properties/p/enum", EnumNarrowed)])
        .ok(Forward),
        evo(
            "enum added to a free string",
            one(string(json!({}))),
            status(json!(["a"])),
        )
        .fails(Full, &[(1, B, "/properties/p/enum", EnumNarrowed)]),
        evo(
            "enum 1 and 1.0 are equal",
            one(json!({ "enum": [1, 2] })),
            one(json!({ "enum": [1.0, 2] })),
        )
        .ok(Full),
        evo(
            "const added",
            one(string(json!({}))),
            one(json!({ "const": "x" })),
        )
        .fails(Backward, &[(1, B, "/properties/p/const", EnumNarrowed)]),
        evo(
            "const changed",
            one(json!({ "const": "v1" })),
            one(json!({ "const": "v2" })),
        )
        .fails(
            Full,
            &[
                (1, B, "/properties/p/const", EnumNarrowed),
                (1, F, "/properties/p/const", EnumExtended),
            ],
        ),
        // String, number, array constraints.
        evo(
            "maxLength tightened",
            one(string(json!({ "maxLength": 10 }))),
            one(string(json!({ "maxLength": 5 }))),
        )
        .fails(
            Backward,
            &[(1, B, "/properties/p/maxLength", ConstraintNarrowed)],
        )
        .ok(Forward),
        evo(
            "maxLength loosened",
            one(string(json!({ "maxLength": 5 }))),
            one(string(json!({ "maxLength": 10 }))),
        )
        .ok(Backward)
        .fails(
            Forward,
            &[(1, F, "/properties/p/maxLength", ConstraintLoosened)],
        ),
        evo(
            "minLength added",
            one(string(json!({}))),
            one(string(json!({ "minLength": 1 }))),
        )
        .fails(
            Full,
            &[(1, B, "/properties/p/minLength", ConstraintNarrowed)],
        ),
        evo(
            "minLength loosened",
            one(string(json!({ "minLength": 3 }))),
            one(string(json!({ "minLength": 1 }))),
        )
        .fails(
            Full,
            &[(1, F, "/properties/p/minLength", ConstraintLoosened)],
        ),
        evo(
            "minimum raised",
            one(int(json!({ "minimum": 0 }))),
            one(int(json!({ "minimum": 1 }))),
        )
        .fails(
            Backward,
            &[(1, B, "/properties/p/minimum", ConstraintNarrowed)],
        )
        .ok(Forward),
        evo(
            "minimum lowered",
            one(int(json!({ "minimum": 1 }))),
            one(int(json!({ "minimum": 0 }))),
        )
        .ok(Backward),
        evo(
            "maximum lowered",
            one(int(json!({ "maximum": 100 }))),
            one(int(json!({ "maximum": 50 }))),
        )
        .fails(Full, &[(1, B, "/properties/p/maximum", ConstraintNarrowed)]),
        evo(
            "maximum removed",
            one(int(json!({ "maximum": 100 }))),
            one(int(json!({}))),
        )
        .ok(Backward)
        .fails(
            Forward,
            &[(1, F, "/properties/p/maximum", ConstraintLoosened)],
        ),
        evo(
            "minimum made exclusive",
            one(int(json!({ "minimum": 0 }))),
            one(int(json!({ "exclusiveMinimum": 0 }))),
        )
        .fails(
            Full,
            &[(1, B, "/properties/p/exclusiveMinimum", ConstraintNarrowed)],
        ),
        evo(
            "multipleOf added",
            one(int(json!({}))),
            one(int(json!({ "multipleOf": 5 }))),
        )
        .fails(
            Full,
            &[(1, B, "/properties/p/multipleOf", ConstraintNarrowed)],
        ),
        evo(
            "multipleOf 10 to 5",
            one(int(json!({ "multipleOf": 10 }))),
            one(int(json!({ "multipleOf": 5 }))),
        )
        .ok(Backward),
        evo(
            "minItems tightened",
            one(array(json!({ "minItems": 1 }))),
            one(array(json!({ "minItems": 2 }))),
        )
        .fails(
            Backward,
            &[(1, B, "/properties/p/minItems", ConstraintNarrowed)],
        ),
        evo(
            "maxItems loosened",
            one(array(json!({ "maxItems": 3 }))),
            one(array(json!({ "maxItems": 4 }))),
        )
        .fails(
            Full,
            &[(1, F, "/properties/p/maxItems", ConstraintLoosened)],
        ),
        evo(
            "uniqueItems added",
            one(array(json!({}))),
            one(array(json!({ "uniqueItems": true }))),
        )
        .fails(
            Backward,
            &[(1, B, "/properties/p/uniqueItems", ConstraintNarrowed)],
        ),
        evo(
            "pattern added",
            one(string(json!({}))),
            one(string(json!({ "pattern": "^[a-z]+$" }))),
        )
        .fails(Full, &[(1, B, "/properties/p/pattern", ConstraintNarrowed)]),
        evo(
            "pattern changed",
            one(string(json!({ "pattern": "^a" }))),
            one(string(json!({ "pattern": "^b" }))),
        )
        .fails(
            Full,
            &[
                (1, B, "/properties/p/pattern", ConstraintChanged),
                (1, F, "/properties/p/pattern", ConstraintChanged),
            ],
        ),
        evo(
            "format removed",
            one(string(json!({ "format": "email" }))),
            one(string(json!({}))),
        )
        .fails(Full, &[(1, F, "/properties/p/format", ConstraintLoosened)]),
        evo(
            "minItems loosened",
            one(array(json!({ "minItems": 2 }))),
            one(array(json!({}))),
        )
        .ok(Backward)
        .fails(
            Forward,
            &[(1, F, "/properties/p/minItems", ConstraintLoosened)],
        ),
        evo(
            "exclusiveMaximum relaxed to maximum",
            one(int(json!({ "exclusiveMaximum": 10 }))),
            one(int(json!({ "maximum": 10 }))),
        )
        .ok(Backward)
        .fails(
            Forward,
            &[(1, F, "/properties/p/exclusiveMaximum", ConstraintLoosened)],
        ),
        evo(
            "maxProperties tightened",
            with(obj(json!({}), &[]), json!({ "maxProperties": 5 })),
            with(obj(json!({}), &[]), json!({ "maxProperties": 3 })),
        )
        .fails(Full, &[(1, B, "/maxProperties", ConstraintNarrowed)]),
        // Closed readers: explicit additionalProperties false.
        evo(
            "reader closes, old had an extra property",
            name_optional.clone(),
            user_closed.clone(),
        )
        .fails(
            Full,
            &[(1, B, "/additionalProperties", AdditionalPropertiesClosed)],
        ),
        evo(
            "reader closes, same properties",
            user(),
            user_closed.clone(),
        )
        .ok(Full),
        evo(
            "closed: optional property removed",
            closed(json!({ "a": {}, "b": {} }), &[]),
            closed(json!({ "a": {} }), &[]),
        )
        .fails(Backward, &[(1, B, "/properties/b", PropertyRemoved)])
        .ok(Forward),
        evo(
            "closed: optional property added",
            closed(json!({ "a": {} }), &[]),
            closed(json!({ "a": {}, "c": {} }), &[]),
        )
        .ok(Backward)
        .fails(Forward, &[(1, F, "/properties/c", PropertyAdded)]),
        evo(
            "map writer, then closed reader",
            map(json!({ "type": "string" })),
            map(json!(false)),
        )
        .fails(
            Full,
            &[(1, B, "/additionalProperties", AdditionalPropertiesClosed)],
        ),
        evo(
            "map values string to integer",
            map(json!({ "type": "string" })),
            map(json!({ "type": "integer" })),
        )
        .fails(
            Backward,
            &[(1, B, "/additionalProperties/type", TypeChanged)],
        ),
        evo(
            "declared key becomes a map entry",
            obj(json!({ "n": { "type": "integer" } }), &[]),
            map(json!({ "type": "string" })),
        )
        .fails(
            Forward,
            &[(1, F, "/additionalProperties/type", TypeChanged)],
        ),
        // Nested objects and arrays of objects.
        evo(
            "nested type changed",
            address(string(json!({})), &[]),
            address(int(json!({})), &[]),
        )
        .fails(
            Full,
            &[(1, B, ZIP_TYPE, TypeChanged), (1, F, ZIP_TYPE, TypeChanged)],
        ),
        evo(
            "nested required added",
            address(string(json!({})), &[]),
            address(string(json!({})), &["country"]),
        )
        .fails(
            Full,
            &[(
                1,
                B,
                "/properties/address/properties/country",
                RequiredAdded,
            )],
        ),
        evo(
            "array item property type changed",
            lines(int(json!({})), &["sku"]),
            lines(string(json!({})), &["sku"]),
        )
        .fails(Backward, &[(1, B, QTY_TYPE, TypeChanged)]),
        evo(
            "array item required removed",
            lines(int(json!({})), &["sku", "qty"]),
            lines(int(json!({})), &["sku"]),
        )
        .fails(Full, &[(1, F, QTY, RequiredRemoved)]),
        evo(
            "array item widened",
            lines(int(json!({})), &[]),
            lines(json!({ "type": "number" }), &[]),
        )
        .fails(Full, &[(1, F, QTY_TYPE, TypeWidened)]),
        // $ref and $defs.
        evo(
            "$defs entry changed, used twice, reported once",
            with_defs(string(json!({}))),
            with_defs(int(json!({}))),
        )
        .fails(
            Full,
            &[
                (1, B, DEF_ZIP_TYPE, TypeChanged),
                (1, F, DEF_ZIP_TYPE, TypeChanged),
            ],
        ),
        evo(
            "inline schema moved to $defs",
            address(string(json!({})), &[]),
            inline_as_ref,
        )
        .ok(FullTransitive),
        evo(
            "recursive $ref, unchanged",
            tree(string(json!({}))),
            tree(string(json!({}))),
        )
        .ok(FullTransitive),
        evo(
            "recursive $ref, value type changed",
            tree(string(json!({}))),
            tree(int(json!({}))),
        )
        .fails(
            Full,
            &[
                (1, B, NODE_VALUE_TYPE, TypeChanged),
                (1, F, NODE_VALUE_TYPE, TypeChanged),
            ],
        ),
        evo(
            "$ref that does not resolve",
            one(string(json!({}))),
            one(json!({ "$ref": "#/$defs/Missing" })),
        )
        .fails(Backward, &[(1, B, "/properties/p/$ref", RefUnresolved)]),
        evo(
            "$ref to another document",
            one(string(json!({}))),
            one(json!({ "$ref": "other.json#/x" })),
        )
        .fails(Forward, &[(1, F, "/properties/p/$ref", RefUnresolved)]),
        // Compositions are compared conservatively.
        evo(
            "anyOf unchanged",
            any_of(json!([{ "type": "string" }, { "type": "null" }])),
            any_of(json!([{ "type": "string" }, { "type": "null" }])),
        )
        .ok(Full),
        evo(
            "anyOf branch added",
            any_of(json!([{ "type": "string" }])),
            any_of(json!([{ "type": "string" }, { "type": "null" }])),
        )
        .fails(
            Full,
            &[
                (1, B, "/properties/p/anyOf", CompositionChanged),
                (1, F, "/properties/p/anyOf", CompositionChanged),
            ],
        ),
        // Transitive vs not: v1 has an integer `email`, v2 drops it, v3 (new)
        // brings it back as a string: fine against v2, not against v1.
        history(
            "email re-added with another type",
            vec![
                email_int.clone(),
                obj(json!({ "id": { "type": "string" } }), &["id"]),
            ],
            user(),
        )
        .ok(Backward)
        .fails(BackwardTransitive, &[(1, B, EMAIL_TYPE, TypeChanged)])
        .ok(Forward)
        .fails(ForwardTransitive, &[(1, F, EMAIL_TYPE, TypeChanged)])
        .ok(Full)
        .fails(
            FullTransitive,
            &[
                (1, B, EMAIL_TYPE, TypeChanged),
                (1, F, EMAIL_TYPE, TypeChanged),
            ],
        ),
        // Transitive reports against each version that breaks, oldest first.
        history(
            "required added over two versions",
            vec![user(), user()],
            name_required.clone(),
        )
        .fails(
            BackwardTransitive,
            &[
                (1, B, "/properties/name", RequiredAdded),
                (2, B, "/properties/name", RequiredAdded),
            ],
        ),
        // Keywords the checker does not analyse (but the validator may
        // enforce) count as changes, never as nothing.
        evo(
            "dependencies added",
            user(),
            with(user(), json!({ "dependencies": { "coupon": ["email"] } })),
        )
        .fails(
            FullTransitive,
            &[
                (1, B, "/dependencies", UnsupportedKeywordChanged),
                (1, F, "/dependencies", UnsupportedKeywordChanged),
            ],
        )
        .fails(
            Backward,
            &[(1, B, "/dependencies", UnsupportedKeywordChanged)],
        )
        .fails(
            Forward,
            &[(1, F, "/dependencies", UnsupportedKeywordChanged)],
        )
        .ok(Mode::None),
        evo(
            "dependentRequired added",
            user(),
            with(
                user(),
                json!({ "dependentRequired": { "email": ["name"] } }),
            ),
        )
        .fails(
            Backward,
            &[(1, B, "/dependentRequired", UnsupportedKeywordChanged)],
        ),
        evo(
            "dependentSchemas added",
            user(),
            with(
                user(),
                json!({ "dependentSchemas": { "email": { "required": ["name"] } } }),
            ),
        )
        .fails(
            Backward,
            &[(1, B, "/dependentSchemas", UnsupportedKeywordChanged)],
        ),
        evo(
            "unknown keyword in a nested schema, and a vendor keyword",
            one(string(json!({}))),
            one(string(
                json!({ "x-max-words": 3, "contentMediaType": "application/json" }),
            )),
        )
        .fails(
            Forward,
            &[
                (
                    1,
                    F,
                    "/properties/p/contentMediaType",
                    UnsupportedKeywordChanged,
                ),
                (1, F, "/properties/p/x-max-words", UnsupportedKeywordChanged),
            ],
        ),
        evo(
            "dependencies unchanged, optional property added",
            with(user(), json!({ "dependencies": { "email": ["id"] } })),
            with(
                user_with("name", json!({ "type": "string" }), &["id"]),
                json!({ "dependencies": { "email": ["id"] } }),
            ),
        )
        .ok(FullTransitive),
        // Draft 4's boolean exclusive bounds are not analysed.
        evo(
            "draft 4 exclusiveMinimum added",
            one(int(json!({ "minimum": 0 }))),
            one(int(json!({ "minimum": 0, "exclusiveMinimum": true }))),
        )
        .fails(
            Backward,
            &[(
                1,
                B,
                "/properties/p/exclusiveMinimum",
                UnsupportedKeywordChanged,
            )],
        ),
        // Draft 7 tuples: `items` as a list, `additionalItems`.
        evo(
            "tuple items unchanged",
            one(pair(json!({}))),
            one(pair(json!({}))),
        )
        .ok(FullTransitive),
        evo(
            "tuple item type changed",
            one(pair(json!({}))),
            one(json!({ "type": "array", "items": [{ "type": "string" }, { "type": "string" }] })),
        )
        .fails(
            Full,
            &[
                (1, B, "/properties/p/items", ItemsChanged),
                (1, F, "/properties/p/items", ItemsChanged),
            ],
        ),
        evo(
            "tuple closed with additionalItems",
            one(pair(json!({}))),
            one(pair(json!({ "additionalItems": false }))),
        )
        .fails(
            Backward,
            &[(
                1,
                B,
                "/properties/p/additionalItems",
                UnsupportedKeywordChanged,
            )],
        ),
        evo(
            "one items schema became a tuple",
            one(array(json!({}))),
            one(json!({ "type": "array", "items": [{ "type": "string" }] })),
        )
        .fails(Forward, &[(1, F, "/properties/p/items", ItemsChanged)]),
        // NONE, and nothing registered yet.
        evo("type changed under NONE", user(), email_int.clone()).ok(Mode::None),
        history("first version", vec![], user()).ok(FullTransitive),
        evo("identical", user(), user()).ok(FullTransitive),
    ]
}

#[test]
fn table() {
    let evolutions = evolutions();
    let count: usize = evolutions.iter().map(|e| e.cases.len()).sum();
    assert!(count >= 40, "only {count} cases");
    let mut failures = Vec::new();
    for evolution in &evolutions {
        let history: Vec<(u32, &Value)> = (1..).zip(&evolution.history).collect();
        for (mode, compatible, expected) in &evolution.cases {
            let result = check(*mode, &history, &evolution.new);
            let changes = result.clone().err().unwrap_or_default();
            let got: Vec<(u32, &str, &str, ChangeKind)> = changes
                .iter()
                .map(|c| (c.against_version, c.rule, c.pointer.as_str(), c.kind))
                .collect();
            if result.is_ok() != *compatible || got != *expected {
                let lines: Vec<String> = changes.iter().map(|c| format!("    {c}")).collect();
                let name = evolution.name;
                failures.push(format!(
                    "{name} / {mode}:\n  expected {expected:?}\n  got      {got:?}\n{}",
                    lines.join("\n")
                ));
            }
        }
    }
    let failed = failures.len();
    assert!(
        failures.is_empty(),
        "{failed} of {count} cases failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn reader_accepts_is_the_backward_core() {
    let changes = reader_accepts(&email_required(), &user());
    assert_eq!(changes.len(), 1);
    let change = &changes[0];
    assert_eq!(
        (change.rule, change.pointer.as_str(), change.kind),
        (B, "/properties/email", RequiredAdded)
    );
    assert_eq!(change.against_version, 0);
    assert!(change.detail.contains("email"), "{}", change.detail);
    assert!(reader_accepts(&user(), &email_required()).is_empty());
    assert!(reader_accepts(&json!(true), &user()).is_empty());
    assert!(reader_accepts(&user(), &json!(false)).is_empty());
    assert_eq!(
        reader_accepts(&json!(false), &user())[0].kind,
        ConstraintNarrowed
    );
}

fn email_required() -> Value {
    user_with("email", json!({ "type": "string" }), &["id", "email"])
}

#[test]
fn mode_parsing() {
    assert_eq!("FULL_TRANSITIVE".parse(), Ok(FullTransitive));
    assert_eq!(" backward_transitive ".parse(), Ok(BackwardTransitive));
    assert!("FULLY"
        .parse::<Mode>()
        .unwrap_err()
        .to_string()
        .contains("FULLY"));
    assert_eq!(Mode::default(), FullTransitive);
    let names: Vec<String> = Mode::ALL.iter().map(Mode::to_string).collect();
    let expected = [
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
        "NONE",
    ];
    assert_eq!(names, expected);
    for mode in Mode::ALL {
        assert_eq!(mode.to_string().parse(), Ok(mode));
        assert_eq!(mode.to_string().to_lowercase().parse(), Ok(mode));
        let json = serde_json::to_value(mode).unwrap();
        assert_eq!(json, json!(mode.as_str()));
        assert_eq!(serde_json::from_value::<Mode>(json).unwrap(), mode);
    }
}

#[test]
fn change_and_kind_display() {
    let err = check(Mode::Backward, &[(7, &user())], &email_required()).unwrap_err();
    let line = err[0].to_string();
    assert!(
        line.starts_with("BACKWARD required_added at /properties/email (against version 7): "),
        "{line}"
    );
    assert_eq!(TypeWidened.to_string(), "type_widened");
}

#[test]
fn property_names_are_escaped_in_pointers() {
    let old = obj(json!({ "a/b~c": { "type": "string" } }), &[]);
    let new = obj(json!({ "a/b~c": { "type": "integer" } }), &[]);
    let err = check(Mode::Backward, &[(1, &old)], &new).unwrap_err();
    assert_eq!(err[0].pointer, "/properties/a~1b~0c/type");
}

/// Random schemas in the supported subset, with a `$defs` entry that may
/// refer to itself.
fn schema() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!(true)),
        Just(json!({})),
        Just(json!({ "type": "string", "maxLength": 5, "pattern": "^a" })),
        Just(json!({ "type": ["string", "null"], "format": "email" })),
        (0..10i64)
            .prop_map(|n| json!({ "type": "integer", "minimum": n, "exclusiveMaximum": 100 })),
        Just(json!({ "type": "number", "multipleOf": 0.5 })),
        Just(json!({ "enum": ["a", 1, null] })),
        Just(json!({ "const": 3 })),
        Just(json!({ "$ref": "#/$defs/d" })),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        let names = prop::sample::subsequence(vec!["a", "b", "c"], 0..=3);
        let extra = prop_oneof![
            Just(None),
            Just(Some(json!(false))),
            inner.clone().prop_map(Some)
        ];
        prop_oneof![
            (prop::collection::vec(inner.clone(), 3), names, extra).prop_map(
                |(schemas, required, extra)| {
                    let properties: serde_json::Map<String, Value> = ["a", "b", "c"]
                        .iter()
                        .map(|n| n.to_string())
                        .zip(schemas)
                        .collect();
                    let mut o =
                        json!({ "type": "object", "properties": properties, "required": required });
                    if let Some(extra) = extra {
                        o["additionalProperties"] = extra;
                    }
                    o
                }
            ),
            (inner.clone(), 0..3u32).prop_map(
                |(items, min)| json!({ "type": "array", "items": items, "minItems": min })
            ),
            prop::collection::vec(inner, 1..3).prop_map(|branches| json!({ "anyOf": branches })),
        ]
    })
}

fn rooted(def: Value, body: Value) -> Value {
    json!({ "type": "object", "$defs": { "d": def }, "properties": { "body": body } })
}

proptest! {
    #[test]
    fn every_schema_is_compatible_with_itself(def in schema(), body in schema()) {
        let s = rooted(def, body);
        prop_assert!(reader_accepts(&s, &s).is_empty(), "{:?}", reader_accepts(&s, &s));
        for mode in Mode::ALL {
            prop_assert!(check(mode, &[(1, &s), (2, &s)], &s).is_ok(), "{mode}: {s}");
        }
    }

    #[test]
    fn adding_an_optional_property_is_fully_compatible(
        def in schema(),
        body in schema(),
        added in schema(),
    ) {
        let old = rooted(def, body);
        let mut new = old.clone();
        new["properties"]["added"] = added;
        prop_assert!(check(Mode::FullTransitive, &[(1, &old)], &new).is_ok(), "{new}");
    }
}
