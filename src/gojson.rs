//! JSON objects read as Go's `encoding/json` reads them into a struct, for the configs
//! weft shares with flanneld (net-conf.json): a key matches a field exactly or, failing
//! that, case-insensitively (ASCII; Go also folds a few Unicode letters, which no real
//! config uses), keys are taken in document order so the last of several spellings wins,
//! and keys no field takes are listed, so a typo is reported instead of ignored.
//!
//! [`Object`] keeps the document's order (serde_json's map does not, without its
//! `preserve_order` feature); the per-type readers turn `null` into what Go does for that
//! field type, which each caller states.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// A JSON object with its keys in document order, duplicates kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Object, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, Value>()? {
                    v.push((k, val));
                }
                Ok(Object(v))
            }
        }
        d.deserialize_map(V)
    }
}

impl Object {
    /// Parses a document whose top level is an object.
    pub fn parse(json: &str) -> Result<Object, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// An object value (a nested object), in document order.
    pub fn from_value(v: &Value) -> Option<Object> {
        // Nested maps come through serde_json's map, which sorts keys: re-read the text,
        // which serde_json writes in that map's order, so only the order among different
        // spellings of one key can differ from the document's (see `field`).
        serde_json::from_str(&v.to_string()).ok()
    }

    /// The value Go would store in field `name` of a struct with `fields` (all its field
    /// names, `name` among them): the last key equal to `name`, or equal to it ignoring
    /// ASCII case when no field is named exactly that key.
    pub fn field(&self, name: &str, fields: &[&str]) -> Option<&Value> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| {
                k == name || (!fields.contains(&k.as_str()) && k.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v)
    }

    /// The keys no field of `fields` takes, in document order.
    pub fn unknown(&self, fields: &[&str]) -> Vec<String> {
        self.0
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !fields.iter().any(|f| f.eq_ignore_ascii_case(k)))
            .cloned()
            .collect()
    }
}

/// Go's name for a JSON value's kind, as its "cannot unmarshal" errors say it.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A Go `bool` field: `null` leaves the default (`None`), anything but a boolean is an
/// error naming the field.
pub fn boolean(field: &str, v: Option<&Value>) -> Result<Option<bool>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!(
            "{field} is a JSON {}, not true or false",
            kind(other)
        )),
    }
}

/// A Go integer field (`int`, `uint`): `null` leaves the default; the number must be an
/// integer literal in range (Go refuses `24.0` and `2e1` for integer fields).
pub fn integer(field: &str, v: Option<&Value>, min: i64, max: i64) -> Result<Option<i64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) if n.is_i64() || n.is_u64() => {
                if (min..=max).contains(&i) {
                    Ok(Some(i))
                } else {
                    Err(format!("{field} {i} is out of range ({min}-{max})"))
                }
            }
            _ => Err(format!("{field} {n} is not an integer")),
        },
        Some(other) => Err(format!("{field} is a JSON {}, not a number", kind(other))),
    }
}

/// A Go `string` field: `null` leaves the default.
pub fn string(field: &str, v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{field} is a JSON {}, not a string", kind(other))),
    }
}

/// A field of one of flannel's address types (`ip.IP4`, `ip.IP4Net`, `ip.IP6Net`), whose
/// `UnmarshalJSON` trims the quotes off the raw text and parses the rest: `null` (the
/// text `null`) and numbers reach the parser, which refuses them.
pub fn address_text(field: &str, v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "{field} is {}: it must be a quoted address",
            serde_json::to_string(other).unwrap_or_default()
        )),
    }
}

/// An IPv4 CIDR as Go's `net.ParseCIDR` reads one: a dotted quad without leading zeros and
/// a decimal prefix length (host bits kept; Go returns them masked beside the address).
pub fn parse_ipv4_cidr(s: &str) -> Option<ipnet::Ipv4Net> {
    let (addr, len) = s.split_once('/')?;
    if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ipnet::Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[&str] = &["Network", "SubnetLen", "Backend"];

    #[test]
    fn keys_match_as_go_matches_them() {
        let o = Object::parse(r#"{"network":"a","NETWORK":"b","SubnetLen":1}"#).unwrap();
        // The last spelling wins.
        assert_eq!(o.field("Network", FIELDS), Some(&Value::from("b")));
        let o = Object::parse(r#"{"Network":"a","network":"b"}"#).unwrap();
        assert_eq!(o.field("Network", FIELDS), Some(&Value::from("b")));
        // A repeated key: the last.
        let o = Object::parse(r#"{"SubnetLen":1,"SubnetLen":2}"#).unwrap();
        assert_eq!(o.field("SubnetLen", FIELDS), Some(&Value::from(2)));
        assert_eq!(o.field("Backend", FIELDS), None);
    }

    #[test]
    fn unknown_keys_are_listed_in_order() {
        let o = Object::parse(r#"{"Netwrok":"x","subnetlen":2,"Foo":null}"#).unwrap();
        assert_eq!(o.unknown(FIELDS), ["Netwrok", "Foo"]);
    }

    #[test]
    fn typed_readers_follow_go() {
        assert_eq!(boolean("B", Some(&Value::Null)), Ok(None));
        assert!(boolean("B", Some(&Value::from("true"))).is_err());
        assert_eq!(integer("N", Some(&Value::from(24)), 0, 32), Ok(Some(24)));
        let float: Value = serde_json::from_str("24.0").unwrap();
        assert!(integer("N", Some(&float), 0, 32).is_err());
        assert!(integer("N", Some(&Value::from(-1)), 0, 32).is_err());
        assert_eq!(integer("N", Some(&Value::Null), 0, 32), Ok(None));
        assert!(address_text("SubnetMin", Some(&Value::Null)).is_err());
        assert!(address_text("SubnetMin", Some(&Value::from(5))).is_err());
        assert_eq!(string("T", Some(&Value::Null)), Ok(None));
    }
}
