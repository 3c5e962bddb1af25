//! `named_enum!`: an enum whose variants have one stable lower-case name each,
//! used on the wire (JSON, protobuf mapping), in SQL and in the CLI. The name
//! is written once per variant; `as_str`, `parse`, `ALL`, `Display` and serde
//! all come from it, so no other place spells these strings.

/// Declares an enum of named variants:
/// `named_enum! { /// doc
///     pub enum Brand { /// doc
///         Container = "container", Kvm = "kvm" } }`
#[macro_export]
macro_rules! named_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
                 serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $s)] #[schema(rename = $s)] $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $s),+
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($s => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The names of all variants, for error messages: `a, b or c`.
            pub fn expected() -> String {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                match names.split_last() {
                    Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
                    _ => names.join(""),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::parse(s).ok_or_else(|| format!("{s:?} is not one of {}", $name::expected()))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    named_enum! {
        pub enum Colour { Red = "red", DarkBlue = "dark_blue", Green = "green" }
    }

    #[test]
    fn names_round_trip_through_parse_serde_and_display() {
        for c in Colour::ALL {
            assert_eq!(Colour::parse(c.as_str()), Some(*c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            assert_eq!(c.to_string(), c.as_str());
        }
        assert_eq!(Colour::parse("blue"), None);
        assert_eq!(Colour::expected(), "red, dark_blue or green");
        assert!(
            "x".parse::<Colour>()
                .unwrap_err()
                .contains("red, dark_blue or green")
        );
    }
}
