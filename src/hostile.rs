//! What strangers send, as proptest strategies, for the property tests of every decoder
//! and parser that takes input from outside: message bodies and headers from the
//! broker, query strings and JSON bodies from HTTP clients.
//!
//! The values are chosen to hurt: NULs, terminal escapes and C1 controls in text,
//! Unicode that trims or counts differently from bytes, text just under and just over
//! every length limit, numbers at and past every bound (`i64::MAX`, 2^53 as a float,
//! `3.0` for `3`), numeric strings written every way, and JSON trees nested within
//! serde_json's depth limit.
//!
//! Each suite runs a bounded number of cases ([`config`]) so `cargo test` stays fast: all
//! of them take about 4 s in a debug build. `PROPTEST_CASES=100000 cargo test --lib`
//! (or with a test's name) runs them longer; `PROPTEST_RNG_SEED=N` tries other inputs
//! than the fixed seed CI uses.

use crate::broker::{HeaderValue, Message, Properties};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::{Map, Number, Value};

/// The seed every suite starts from unless `PROPTEST_RNG_SEED` says otherwise: a run in
/// CI tries the same inputs as the run before it, so a failure is a change in the code.
const SEED: u64 = 23;

/// `cases` cases from the fixed seed, unless `PROPTEST_CASES` or `PROPTEST_RNG_SEED`
/// is set. No failure persistence file: a failure prints the minimal input, which
/// belongs in a named regression test beside the fix.
pub fn config(cases: u32) -> ProptestConfig {
    let set = |name| std::env::var_os(name).is_some();
    // The default reads PROPTEST_CASES and PROPTEST_RNG_SEED.
    let mut config = ProptestConfig::default();
    if !set("PROPTEST_CASES") {
        config.cases = cases;
    }
    if !set("PROPTEST_RNG_SEED") {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config.failure_persistence = None;
    config
}

/// Characters that have broken parsers: controls, separators, escapes, invisible and
/// multi-byte ones; and any character at all.
pub fn nasty_char() -> BoxedStrategy<char> {
    prop_oneof![
        2 => any::<char>(),
        3 => prop::sample::select(&[
            '\0', '\u{1}', '\u{8}', '\t', '\n', '\u{b}', '\u{c}', '\r', '\u{1b}', '\u{1f}',
            '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}', '\u{2028}', '\u{202e}', '\u{3000}',
            '\u{feff}', ' ', '"', '\'', '\\', '%', '&', '=', '+', '#', '?', '/', ':', '@',
            '`', '{', '[', 'é', '日', '🎮', 'a', 'Z', '0', '9', '-', '.', 's',
        ][..]),
    ]
    .boxed()
}

/// Text just under, at and just over each length limit (50, 100, 255, 5000), in
/// characters of one to four bytes.
pub fn boundary_text() -> BoxedStrategy<String> {
    (
        prop::sample::select(&['a', 'é', '日', '🎮', ' '][..]),
        prop::sample::select(&[1, 49, 50, 51, 99, 100, 101, 254, 255, 256, 4999, 5000, 5001][..]),
    )
        .prop_map(|(c, n)| c.to_string().repeat(n))
        .boxed()
}

/// Numbers as text, written every way a client might: signs, padding, fractions,
/// exponents, and past every integer type's range.
pub fn numeric_text() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (-5i64..1100).prop_map(|n| n.to_string()),
        (1940i64..2100).prop_map(|n| n.to_string()),
        prop::sample::select(
            &[
                "0",
                "-0",
                "+1",
                "007",
                " 5 ",
                "5.0",
                "1e3",
                "0x10",
                "1_000",
                "١",
                "９",
                "2147483648",
                "4294967296",
                "9223372036854775807",
                "9223372036854775808",
                "-9223372036854775809",
                "99999999999999999999999",
                "NaN",
                "inf",
                "",
            ][..]
        )
        .prop_map(str::to_owned),
    ]
    .boxed()
}

/// Any of the above, or plain words.
pub fn nasty_string() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::collection::vec(nasty_char(), 0..24).prop_map(String::from_iter),
        1 => boundary_text(),
        2 => numeric_text(),
        1 => "[a-zA-Z ]{0,12}",
    ]
    .boxed()
}

/// JSON numbers at and past the bounds: any integer, any finite float, and the edges
/// of exactness (2^53) and of every range a field has.
pub fn nasty_number() -> BoxedStrategy<Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        (-5i64..2100).prop_map(Number::from),
        any::<f64>().prop_filter_map("finite", Number::from_f64),
        prop::sample::select(
            &[
                0.0,
                -0.0,
                0.5,
                3.0,
                1950.0,
                1e3,
                1e300,
                -1e300,
                9_007_199_254_740_992.0,
                9_007_199_254_740_994.0,
                9.223_372_036_854_776e18,
            ][..]
        )
        .prop_filter_map("finite", Number::from_f64),
    ]
    .boxed()
}

/// A JSON leaf: null, a boolean, a nasty number or a nasty string.
pub fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        nasty_number().prop_map(Value::Number),
        nasty_string().prop_map(Value::String),
    ]
    .boxed()
}

/// Any JSON value: leaves, and arrays and objects of them up to eight levels deep.
pub fn json_value() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(8, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((nasty_string(), inner), 0..6)
                    .prop_map(|entries| Value::Object(Map::from_iter(entries))),
            ]
        })
        .boxed()
}

/// A JSON object with some of `keys` (and now and then a key of its own), each valued
/// by `value`: the shape of a body, so that most cases get past "not an object".
pub fn object_of(
    keys: &'static [&'static str],
    value: impl Strategy<Value = Value>,
) -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        9 => prop::sample::select(keys).prop_map(str::to_owned),
        1 => nasty_string(),
    ];
    prop::collection::vec((key, value), 0..keys.len() + 2)
        .prop_map(|entries| Value::Object(Map::from_iter(entries)))
}

/// Header values as any AMQP client could set them, past what retrocat writes.
pub fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        any::<i64>().prop_map(HeaderValue::Int),
        prop::sample::select(&[i64::MIN, -1, 0, 1, i64::MAX][..]).prop_map(HeaderValue::Int),
        numeric_text().prop_map(HeaderValue::Str),
        any::<bool>().prop_map(HeaderValue::Bool),
        nasty_string().prop_map(HeaderValue::Str),
    ]
}

/// A message from the broker: any body, any message id, and up to `headers` headers
/// named by `names`, valued by [`header_value`].
pub fn message(
    names: impl Strategy<Value = String>,
    headers: usize,
) -> impl Strategy<Value = Message> {
    (
        prop::collection::vec(any::<u8>(), 0..512),
        prop::option::of(nasty_string()),
        prop::collection::btree_map(names, header_value(), 0..=headers),
    )
        .prop_map(|(body, message_id, headers)| Message {
            body: body.into(),
            properties: Properties {
                message_id,
                headers,
                ..Properties::default()
            },
        })
}

/// Key/value pairs of a query string: mostly the `known` parameters, valued by
/// `values`, and now and then another key.
pub fn query_pairs(
    known: &'static [&'static str],
    values: impl Strategy<Value = String>,
) -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        8 => prop::sample::select(known).prop_map(str::to_owned),
        1 => nasty_string(),
    ];
    prop::collection::vec((key, values), 0..8)
}

/// `pairs` as a query string, percent-encoded as a browser's form would send it.
pub fn encode_query(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The last non-blank, trimmed value of `key` in `pairs`: the one a parser that lets
/// later values win, and skips blank ones, must have kept.
pub fn last_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .filter(|(name, _)| name == key)
        .map(|(_, value)| value.trim())
        .find(|value| !value.is_empty())
}

/// `pairs` as a request's URI, for the extractors that read its query; a rejected
/// case when it is longer than a URI may be (64 KiB), which no request gets past
/// either.
pub fn uri_with_query(pairs: &[(String, String)]) -> Result<axum::http::Uri, TestCaseError> {
    format!("/?{}", encode_query(pairs))
        .parse()
        .map_err(|e| TestCaseError::reject(format!("not a URI: {e}")))
}

/// A refused query is a 400 that names a parameter it holds: in its `errors`, or in
/// its detail as axum's rejections do (`limit: invalid digit…`, ``unknown field `x` ``).
pub fn check_refused_query(
    error: &crate::api::error::ApiError,
    pairs: &[(String, String)],
) -> Result<(), TestCaseError> {
    use crate::api::error::ApiError;
    let ApiError::BadRequest { detail, errors } = error else {
        return Err(TestCaseError::fail(format!("not a 400: {error:?}")));
    };
    let sent = |name: &str| pairs.iter().any(|(key, _)| key == name);
    let named = errors.iter().any(|error| sent(&error.field))
        || pairs.iter().any(|(key, _)| {
            detail.contains(&format!("`{key}`")) || detail.contains(&format!("{key}: "))
        });
    prop_assert!(named, "{detail:?} names no parameter of {pairs:?}");
    Ok(())
}

/// A refused body is a 400 or a 422; one refused for its fields names each: a field of
/// the body's (`fields`; a nested one by its path, `gameData.title`, `gameData[0]`) or a key it holds.
/// Only an unknown key `""` has no name to give.
pub fn check_refused_body(
    error: &crate::api::error::ApiError,
    body: &Value,
    fields: &[&str],
) -> Result<(), TestCaseError> {
    use crate::api::error::ApiError;
    let (ApiError::BadRequest { errors, .. } | ApiError::Unprocessable { errors, .. }) = error
    else {
        return Err(TestCaseError::fail(format!(
            "neither a 400 nor a 422: {error:?}"
        )));
    };
    let Value::Object(object) = body else {
        return Ok(());
    };
    prop_assert!(
        !errors.is_empty() || object.contains_key(""),
        "a refused object names a field: {error:?}"
    );
    for error in errors {
        let field = error.field.as_str();
        let top = field.split(['.', '[']).next().unwrap_or_default();
        prop_assert!(
            fields.contains(&top) || object.contains_key(field),
            "{field:?} is neither a field nor a key sent: {error:?}"
        );
    }
    Ok(())
}
