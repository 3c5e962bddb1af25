//! Firewall rules in Triton's language: parsing (`parse`) and, for each
//! node, the rule set its agent enforces (`compile`). Never talks to a node
//! or the database itself.

pub mod compile;
pub mod parse;

pub use compile::{node_firewall, touches};

pub use parse::{Action, IcmpType, ParseError, Ports, Protocol, Rule, Target, Targets, parse};
