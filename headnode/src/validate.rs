//! Field validation shared by handlers: names, identifiers, lengths. Each
//! check returns an `InvalidArgument` that names the field and says why.

use crate::error::{Error, Result};

/// A resource name: 1-64 characters of letters, digits, `-`, `_`, `.`,
/// starting with a letter or digit.
pub fn name(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.chars().count() > 64 {
        return Err(Error::invalid(
            field,
            format!(
                "must be at most 64 characters, got {}",
                value.chars().count()
            ),
        ));
    }
    if !value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err(Error::invalid(field, "must start with a letter or a digit"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
    {
        return Err(Error::invalid(
            field,
            format!("must hold only letters, digits, '-', '_' and '.', found {c:?}"),
        ));
    }
    Ok(())
}

/// What `interface` takes, as the OpenAPI document says it.
pub const INTERFACE: &str = "^(?!\\.\\.?$)[!-.0-9;-~]{1,15}$";

/// A network interface name as Linux accepts it, in printable ASCII: 1-15
/// characters, no '/', ':' or space, not `.` or `..` (`INTERFACE`).
pub fn interface(field: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > 15 {
        return Err(Error::invalid(
            field,
            format!(
                "an interface name has 1 to 15 characters, got {:?}",
                truncate(value)
            ),
        ));
    }
    let printable = |c: char| c.is_ascii_graphic() && c != '/' && c != ':';
    if !value.chars().all(printable) || value == "." || value == ".." {
        return Err(Error::invalid(
            field,
            format!("{:?} is not a valid interface name", truncate(value)),
        ));
    }
    Ok(())
}

/// Traits (of packages and servers): names to a string, number, boolean or
/// list of strings.
pub fn traits(
    field: &str,
    traits: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Result<()> {
    use serde_json::Value;
    for (k, v) in traits {
        name(field, k)?;
        let ok = match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => true,
            Value::Array(items) => items.iter().all(Value::is_string),
            Value::Null | Value::Object(_) => false,
        };
        if !ok {
            return Err(Error::invalid(
                &format!("{field}.{k}"),
                "a trait is a string, a number, a boolean or a list of strings",
            ));
        }
    }
    Ok(())
}

/// Free text of at most `max` characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<()> {
    let n = value.chars().count();
    if n > max {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} characters, got {n}"),
        ));
    }
    Ok(())
}

/// Keeps echoed input short in messages.
pub fn truncate(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

/// An image's name, version and description (uploaded or made from an instance).
pub fn image_label(name_: &str, version: &str, description: &str) -> Result<()> {
    name("name", name_)?;
    name("version", version)?;
    text("description", description, 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_printable_ascii_without_slash_colon_or_dots() {
        for ok in ["eth0", "br-ext.100", "x", "abcdefghijklmno"] {
            assert!(interface("i", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "abcdefghijklmnop",
            "ethé",
        ] {
            assert!(interface("i", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn traits_are_named_and_hold_strings_numbers_booleans_or_string_lists() {
        let t = |v: serde_json::Value| serde_json::from_value(v).unwrap();
        assert!(
            traits(
                "traits",
                &t(serde_json::json!({"ssd": true, "rack": "a1", "gen": 3, "hw": ["x", "y"]}))
            )
            .is_ok()
        );
        for bad in [
            serde_json::json!({"": true}),
            serde_json::json!({"x": null}),
            serde_json::json!({"x": {}}),
            serde_json::json!({"x": [1]}),
        ] {
            assert!(traits("traits", &t(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_checked_for_length_charset_and_first_character() {
        assert!(name("name", "web-01.prod_a").is_ok());
        assert!(name("name", "").is_err());
        assert!(name("name", "-x").is_err());
        assert!(
            name("name", "a b")
                .unwrap_err()
                .to_string()
                .contains("name:")
        );
        let long = "a".repeat(10_000);
        assert!(
            name("name", &long)
                .unwrap_err()
                .to_string()
                .contains("at most 64")
        );
    }

    #[test]
    fn interface_names_follow_linux_rules() {
        assert!(interface("nic", "eth0").is_ok());
        assert!(interface("nic", "a234567890123456").is_err());
        assert!(interface("nic", "a/b").is_err());
        assert!(interface("nic", "").is_err());
    }
}
