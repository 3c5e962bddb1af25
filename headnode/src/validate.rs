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

/// A network interface name as Linux accepts it (1-15 bytes, no '/', no space).
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
    if value.contains(['/', ' ', ':']) || value == "." || value == ".." {
        return Err(Error::invalid(
            field,
            format!("{:?} is not a valid interface name", truncate(value)),
        ));
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
