//! What a JSON value means as an object id, judged without the producer's parser, for the
//! property tests (`e2e/tests/it/hostile_input.rs`) and the fuzz target (`fuzz/`).
//!
//! A whole number is an id whatever its spelling (`7`, `7.0`, `0.7e1`), as JSON Schema
//! has it. The judge reads plain integers exactly, and other numbers through Rust's
//! correctly rounded `f64` parse, which is exact only for a decimal of at most 15
//! significant digits; beyond that it does not know.

/// The verdict on one JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdVerdict {
    /// Certainly this id.
    Id(i64),
    /// Certainly not an id: not a number, negative, fractional or above 2^63-1.
    NotAnId,
    /// A spelling too long for an exact `f64`: either way is plausible.
    Unsure,
}

/// Judges `literal`, the text of one JSON value (a number as written in the body).
pub fn judge_id(literal: &str) -> IdVerdict {
    let literal = literal.trim();
    let magnitude = literal.strip_prefix('-').unwrap_or(literal);
    if !magnitude.starts_with(|c: char| c.is_ascii_digit()) {
        return IdVerdict::NotAnId;
    }
    if magnitude.bytes().all(|b| b.is_ascii_digit()) {
        return match literal.parse::<i128>() {
            Ok(id) => i64::try_from(id)
                .ok()
                .filter(|id| *id >= 0)
                .map_or(IdVerdict::NotAnId, IdVerdict::Id),
            // Longer than any i128: far above 2^63-1, or a long run of zeros.
            Err(_) if magnitude.bytes().all(|b| b == b'0') => IdVerdict::Id(0),
            Err(_) => IdVerdict::NotAnId,
        };
    }
    let mantissa = magnitude.split(['e', 'E']).next().unwrap_or_default();
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0');
    if significant.is_empty() {
        return IdVerdict::Id(0);
    }
    let Ok(value) = literal.parse::<f64>() else {
        return IdVerdict::NotAnId;
    };
    if value < 0.0 {
        return IdVerdict::NotAnId;
    }
    // An `f64` holds every integer below 2^53 and tells apart every decimal of at most
    // 15 significant digits, so for such a spelling `value` is exactly what is written.
    if significant.len() <= 15 {
        if value.fract() != 0.0 || value == 0.0 {
            // A fraction, or a nonzero number too small for an f64: not whole.
            return IdVerdict::NotAnId;
        }
        if value < 1e15 {
            return IdVerdict::Id(value as i64);
        }
    }
    if value >= 1e19 {
        return IdVerdict::NotAnId;
    }
    IdVerdict::Unsure
}

/// Judges the literal of a callback's `ttl_secs` (or `stale_after_secs`, read the same
/// way): null, or a whole number (in any spelling, as for ids) from 1 to 31,536,000.
/// `None`: the spelling is too long to know.
pub fn judge_ttl(literal: &str) -> Option<bool> {
    if literal.trim() == "null" {
        return Some(true);
    }
    match judge_id(literal) {
        IdVerdict::Id(secs) => Some((1..=31_536_000).contains(&secs)),
        IdVerdict::NotAnId => Some(false),
        IdVerdict::Unsure => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_in_any_spelling_and_the_rest() {
        for (literal, verdict) in [
            ("7", IdVerdict::Id(7)),
            ("-0", IdVerdict::Id(0)),
            ("7.0", IdVerdict::Id(7)),
            ("0.7e1", IdVerdict::Id(7)),
            ("7000e-3", IdVerdict::Id(7)),
            ("-0.0e5", IdVerdict::Id(0)),
            ("9223372036854775807", IdVerdict::Id(i64::MAX)),
            ("9223372036854775808", IdVerdict::NotAnId),
            ("-1", IdVerdict::NotAnId),
            ("-1.0", IdVerdict::NotAnId),
            ("7.5", IdVerdict::NotAnId),
            ("1e-400", IdVerdict::NotAnId),
            ("1e400", IdVerdict::NotAnId),
            ("\"7\"", IdVerdict::NotAnId),
            ("null", IdVerdict::NotAnId),
            ("[7]", IdVerdict::NotAnId),
            ("9007199254740993.0", IdVerdict::Unsure),
            ("7.0000000000000000001", IdVerdict::Unsure),
        ] {
            assert_eq!(judge_id(literal), verdict, "{literal}");
        }
    }
}
