//! Whole numbers as JSON Schema counts them: `3` and `3.0` alike. A client that
//! writes every number as a float (JavaScript's `JSON.stringify` of a computed value,
//! a schema-driven fuzzer) is not refused for the spelling.

use serde::Deserialize;

/// A JSON number that is a whole `i64`, written as an integer or with a zero fraction
/// (`3.0`): JSON Schema's `integer` takes both.
pub fn whole(number: &serde_json::Number) -> Option<i64> {
    /// From 2^53 on, a float need not be the number that was written.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    number.as_i64().or_else(|| {
        let float = number.as_f64()?;
        (float.fract() == 0.0 && float.abs() < EXACT).then_some(float as i64)
    })
}

/// Deserializes a whole number into `T` (see [`whole`]), for a body's integer fields.
pub fn whole_number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    integer(serde_json::Number::deserialize(deserializer)?)
}

/// [`whole_number`] for an optional field (with `#[serde(default)]`): `null` is `None`.
pub fn optional_whole_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    Option::<serde_json::Number>::deserialize(deserializer)?
        .map(integer)
        .transpose()
}

fn integer<T: TryFrom<i64>, E: serde::de::Error>(number: serde_json::Number) -> Result<T, E> {
    whole(&number)
        .and_then(|value| T::try_from(value).ok())
        .ok_or_else(|| E::custom(format!("expected an integer in range, got {number}")))
}

#[cfg(test)]
mod tests {
    use super::whole;

    fn of(json: &str) -> Option<i64> {
        whole(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn whole_numbers_may_be_written_with_a_zero_fraction() {
        assert_eq!(of("3"), Some(3));
        assert_eq!(of("3.0"), Some(3));
        assert_eq!(of("-1e3"), Some(-1000));
        assert_eq!(of("3.5"), None);
        // Too large for a float to hold exactly, or for an i64 at all.
        assert_eq!(of("9007199254740993.0"), None);
        assert_eq!(of("-9223372036854775809"), None);
        assert_eq!(of("9223372036854775807"), Some(i64::MAX));
    }

    mod properties {
        use super::*;
        use crate::hostile::{self, nasty_number};
        use proptest::prelude::*;

        /// 2^53: below it, every whole number has an exact float.
        const EXACT: i64 = 1 << 53;

        proptest! {
            #![proptest_config(hostile::config(1024))]

            /// A whole number reads the same however it is spelled.
            #[test]
            fn a_whole_number_reads_the_same_in_any_spelling(n in any::<i64>(), small in -EXACT + 1..EXACT) {
                prop_assert_eq!(of(&n.to_string()), Some(n));
                for spelling in [format!("{small}.0"), format!("{small}e0"), format!("{small}.000E0")] {
                    prop_assert_eq!(of(&spelling), Some(small), "{}", spelling);
                }
            }

            /// Any number is either the whole number it denotes exactly, or refused.
            #[test]
            fn a_number_is_read_exactly_or_refused(number in nasty_number()) {
                if let Some(value) = whole(&number) {
                    match (number.as_i64(), number.as_f64()) {
                        (Some(exact), _) => prop_assert_eq!(value, exact),
                        (None, Some(float)) => {
                            prop_assert!(float.fract() == 0.0 && float.abs() < EXACT as f64);
                            prop_assert_eq!(value as f64, float);
                        }
                        (None, None) => prop_assert!(false, "{number} has no value"),
                    }
                }
            }
        }
    }
}
