//! JSON is serde_json's: reports (`--json`), checkpoint metadata and zarr metadata. `Json` is
//! `serde_json::Value` with keys kept in insertion order (feature `preserve_order`), so reports
//! read in the order they are built; integers stay exact up to u64/i64.

pub use serde_json::Value as Json;

/// An object with its fields in the given order.
pub fn obj<K: Into<String>>(fields: impl IntoIterator<Item = (K, Json)>) -> Json {
    Json::Object(fields.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

use crate::error::{Error, Result};
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use std::fmt;

fn invalid(what: &str, e: serde_json::Error) -> Error {
    Error::Invalid(format!("{what}: {e}"))
}

/// Parses `text` into `T` (a derived type), naming `what` and the line and column in errors.
pub fn parse<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| invalid(what, e))
}

/// The fields of a top-level JSON object in file order. serde_json keeps the last of two equal
/// keys; a header or metadata file with one key twice is ambiguous, so that is refused here.
pub fn entries(text: &str, what: &str) -> Result<Vec<(String, Json)>> {
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Vec<(String, Json)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut m: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out: Vec<(String, Json)> = Vec::new();
            while let Some((k, v)) = m.next_entry::<String, Json>()? {
                if out.iter().any(|(seen, _)| *seen == k) {
                    return Err(serde::de::Error::custom(format!("key '{k}' appears twice")));
                }
                out.push((k, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let out =
        serde::Deserializer::deserialize_map(&mut de, Fields).map_err(|e| invalid(what, e))?;
    de.end().map_err(|e| invalid(what, e))?;
    Ok(out)
}

/// Zarr v2 (zarr-python's writer) puts bare `NaN`, `Infinity` and `-Infinity` in `.zarray`
/// fill values, which JSON does not allow. Outside strings they become the strings zarr v3
/// uses for the same values, so one fill-value rule reads both versions.
pub fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let (mut in_str, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            in_str = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_str = true;
        } else {
            let word = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|w| rest.starts_with(w));
            if let Some(w) = word {
                out.push('"');
                out.push_str(w);
                out.push('"');
                rest = &rest[w.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_integers_are_exact() {
        let j = obj([("seed", Json::from(1_000_000_000_000_000_123u64))]);
        assert_eq!(j.to_string(), r#"{"seed":1000000000000000123}"#);
        let back: std::collections::BTreeMap<String, u64> = parse(&j.to_string(), "t").unwrap();
        assert_eq!(back["seed"], 1_000_000_000_000_000_123);
        assert_eq!(
            obj([("m", Json::from(u64::MAX))]).to_string(),
            format!("{{\"m\":{}}}", u64::MAX)
        );
    }

    #[test]
    fn duplicate_keys_are_refused_with_position() {
        let e = entries("{\"a\": 1,\n \"a\": 2}", "f.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'a' appears twice") && e.contains("line 2"),
            "{e}"
        );
        assert_eq!(entries(r#"{"b":1,"a":2}"#, "f").unwrap()[0].0, "b");
    }

    #[test]
    fn bare_non_finite_fill_values_become_strings() {
        let t = r#"{"fill_value": NaN, "x": "NaN in a \"string\" -Infinity", "y": [-Infinity, Infinity]}"#;
        let j: Json = parse(&quote_non_finite(t), "t").unwrap();
        assert_eq!(j["fill_value"], "NaN");
        assert_eq!(j["x"], "NaN in a \"string\" -Infinity");
        assert_eq!(j["y"], serde_json::json!(["-Infinity", "Infinity"]));
    }
}
