//! The firewall rule language of Triton (sdc-fwrule), parsed into a `Rule`:
//!
//! ```text
//! FROM <targets> TO <targets> (ALLOW | BLOCK) <protocol> [PRIORITY <0-100>]
//! targets  := any | all vms | <target> | ( <target> OR <target> ... )
//! target   := vm <uuid> | ip <ipv4> | subnet <ipv4>/<len> | tag <name> [= <value>]
//! protocol := (tcp | udp) (all | PORT (<n> | all) | PORTS <n|a-b>, ...
//!                          | ( PORT <n> AND PORT <n> ... ))
//!           | icmp (all | TYPE (all | <t> [CODE <c>]) | ( TYPE <t> [CODE <c>] AND ... ))
//! ```
//!
//! Keywords are case-insensitive; tag names and values may be quoted
//! (`"with spaces"`, `\"` and `\\` escaped). Errors name the line and
//! column. It must never panic, whatever the input (a property test feeds it
//! arbitrary text).

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The most targets in one list, and ports or ICMP types in one rule.
pub const MAX_ITEMS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub from: Targets,
    pub to: Targets,
    pub action: Action,
    pub protocol: Protocol,
    /// 0-100; a higher priority is considered first.
    pub priority: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    Any,
    AllVms,
    List(Vec<Target>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Vm(Uuid),
    Ip(Ipv4Addr),
    Subnet(Ipv4Addr, u8),
    Tag { key: String, value: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp(Ports),
    Udp(Ports),
    Icmp(Vec<IcmpType>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ports {
    All,
    /// Inclusive ranges (a single port is `(p, p)`).
    List(Vec<(u16, u16)>),
}

/// An ICMP type, with a code or for every code; `None` type: all of ICMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpType {
    pub r#type: Option<u8>,
    pub code: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Quoted(String),
    Open,
    Close,
    Comma,
    Eq,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "{w:?}"),
            Tok::Quoted(q) => write!(f, "the quoted {q:?}"),
            Tok::Open => f.write_str("'('"),
            Tok::Close => f.write_str("')'"),
            Tok::Comma => f.write_str("','"),
            Tok::Eq => f.write_str("'='"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
    column: usize,
}

fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '/' | '-' | '_')
}

fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let mut out = Vec::new();
    let (mut line, mut column) = (1usize, 0usize);
    let mut chars = text.chars().peekable();
    let err = |line, column, message: String| ParseError {
        line,
        column,
        message,
    };
    while let Some(c) = chars.next() {
        column += 1;
        let (l, col) = (line, column);
        let simple = match c {
            '\n' => {
                line += 1;
                column = 0;
                continue;
            }
            c if c.is_whitespace() => continue,
            '(' => Some(Tok::Open),
            ')' => Some(Tok::Close),
            ',' => Some(Tok::Comma),
            '=' => Some(Tok::Eq),
            _ => None,
        };
        if let Some(tok) = simple {
            out.push(Token {
                tok,
                line: l,
                column: col,
            });
            continue;
        }
        if c == '"' {
            let mut s = String::new();
            loop {
                let Some(c) = chars.next() else {
                    return Err(err(l, col, "this quoted text is never closed".into()));
                };
                column += 1;
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some(e @ ('"' | '\\')) => {
                            column += 1;
                            s.push(e);
                        }
                        _ => {
                            return Err(err(
                                line,
                                column,
                                "only \\\" and \\\\ may follow a backslash".into(),
                            ));
                        }
                    },
                    '\n' => {
                        return Err(err(l, col, "a quoted text ends at its line".into()));
                    }
                    c if c.is_control() => {
                        return Err(err(line, column, "control character in quotes".into()));
                    }
                    c => s.push(c),
                }
            }
            out.push(Token {
                tok: Tok::Quoted(s),
                line: l,
                column: col,
            });
            continue;
        }
        if !word_char(c) {
            return Err(err(l, col, format!("unexpected character {c:?}")));
        }
        let mut w = c.to_string();
        while let Some(&n) = chars.peek() {
            if !word_char(n) {
                break;
            }
            w.push(n);
            chars.next();
            column += 1;
        }
        out.push(Token {
            tok: Tok::Word(w),
            line: l,
            column: col,
        });
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    /// Where the text ends (for "expected X at the end").
    end: (usize, usize),
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }

    fn fail<T>(&self, expected: &str) -> Result<T, ParseError> {
        Err(match self.peek() {
            Some(t) => ParseError {
                line: t.line,
                column: t.column,
                message: format!("expected {expected}, found {}", t.tok),
            },
            None => ParseError {
                line: self.end.0,
                column: self.end.1,
                message: format!("expected {expected}, found the end of the rule"),
            },
        })
    }

    /// Takes the keyword `kw` (any case) if it is next.
    fn eat(&mut self, kw: &str) -> bool {
        match self.peek() {
            Some(Token {
                tok: Tok::Word(w), ..
            }) if w.eq_ignore_ascii_case(kw) => {
                self.pos += 1;
                true
            }
            _ => false,
        }
    }

    fn eat_tok(&mut self, tok: &Tok) -> bool {
        if self.peek().is_some_and(|t| &t.tok == tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, kw: &str) -> Result<(), ParseError> {
        if self.eat(kw) { Ok(()) } else { self.fail(kw) }
    }

    /// The next word, checked by `conv`; `what` names it in errors.
    fn value<T>(&mut self, what: &str, conv: impl Fn(&str) -> Option<T>) -> Result<T, ParseError> {
        if let Some(Token {
            tok: Tok::Word(w), ..
        }) = self.peek()
            && let Some(v) = conv(w)
        {
            self.pos += 1;
            return Ok(v);
        }
        self.fail(what)
    }

    /// A tag name or value: a word or quoted text.
    fn text(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Some(Token {
                tok: Tok::Word(w) | Tok::Quoted(w),
                ..
            }) if !w.is_empty() && w.len() <= 128 => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => self.fail(what),
        }
    }

    fn rule(&mut self) -> Result<Rule, ParseError> {
        self.expect("FROM")?;
        let from = self.targets()?;
        self.expect("TO")?;
        let to = self.targets()?;
        let action = if self.eat("ALLOW") {
            Action::Allow
        } else if self.eat("BLOCK") {
            Action::Block
        } else {
            return self.fail("ALLOW or BLOCK");
        };
        let protocol = if self.eat("tcp") {
            Protocol::Tcp(self.ports()?)
        } else if self.eat("udp") {
            Protocol::Udp(self.ports()?)
        } else if self.eat("icmp") {
            Protocol::Icmp(self.icmp()?)
        } else {
            return self.fail("tcp, udp or icmp");
        };
        let priority = if self.eat("PRIORITY") {
            self.value("a priority from 0 to 100", |w| {
                w.parse::<u8>().ok().filter(|p| *p <= 100)
            })?
        } else {
            0
        };
        if self.peek().is_some() {
            return self.fail("the end of the rule");
        }
        Ok(Rule {
            from,
            to,
            action,
            protocol,
            priority,
        })
    }

    fn targets(&mut self) -> Result<Targets, ParseError> {
        if self.eat("any") {
            return Ok(Targets::Any);
        }
        if self.eat("all") {
            self.expect("vms")?;
            return Ok(Targets::AllVms);
        }
        if !self.eat_tok(&Tok::Open) {
            return Ok(Targets::List(vec![self.target()?]));
        }
        let mut list = vec![self.target()?];
        while self.eat("OR") {
            if list.len() == MAX_ITEMS {
                return self.fail(&format!("at most {MAX_ITEMS} targets"));
            }
            list.push(self.target()?);
        }
        if !self.eat_tok(&Tok::Close) {
            return self.fail("OR or ')'");
        }
        Ok(Targets::List(list))
    }

    fn target(&mut self) -> Result<Target, ParseError> {
        if self.eat("vm") {
            return self
                .value("an instance's uuid", |w| Uuid::parse_str(w).ok())
                .map(Target::Vm);
        }
        if self.eat("ip") {
            return self
                .value("an IPv4 address", |w| w.parse::<Ipv4Addr>().ok())
                .map(Target::Ip);
        }
        if self.eat("subnet") {
            return self.value("an IPv4 subnet such as 10.0.0.0/24", |w| {
                let (addr, len) = w.split_once('/')?;
                let addr: Ipv4Addr = addr.parse().ok()?;
                let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                (u32::from(addr) & !mask == 0).then_some(Target::Subnet(addr, len))
            });
        }
        if self.eat("tag") {
            let key = self.text("a tag name")?;
            let value = if self.eat_tok(&Tok::Eq) {
                Some(self.text("a tag value")?)
            } else {
                None
            };
            return Ok(Target::Tag { key, value });
        }
        self.fail("any, all vms, '(', vm, ip, subnet or tag")
    }

    fn port(&mut self) -> Result<(u16, u16), ParseError> {
        self.value("a port (1-65535) or a range such as 8000-8080", |w| {
            let one = |s: &str| s.parse::<u16>().ok().filter(|p| *p >= 1);
            match w.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (one(a)?, one(b)?);
                    (a <= b).then_some((a, b))
                }
                None => one(w).map(|p| (p, p)),
            }
        })
    }

    fn ports(&mut self) -> Result<Ports, ParseError> {
        if self.eat("all") {
            return Ok(Ports::All);
        }
        if self.eat("PORT") {
            if self.eat("all") {
                return Ok(Ports::All);
            }
            return Ok(Ports::List(vec![self.port()?]));
        }
        if self.eat("PORTS") {
            let mut list = vec![self.port()?];
            while self.eat_tok(&Tok::Comma) {
                if list.len() == MAX_ITEMS {
                    return self.fail(&format!("at most {MAX_ITEMS} ports"));
                }
                list.push(self.port()?);
            }
            return Ok(Ports::List(list));
        }
        if self.eat_tok(&Tok::Open) {
            let mut list = Vec::new();
            loop {
                if list.len() == MAX_ITEMS {
                    return self.fail(&format!("at most {MAX_ITEMS} ports"));
                }
                self.expect("PORT")?;
                list.push(self.port()?);
                if !self.eat("AND") {
                    break;
                }
            }
            if !self.eat_tok(&Tok::Close) {
                return self.fail("AND or ')'");
            }
            return Ok(Ports::List(list));
        }
        self.fail("PORT, PORTS, all or '('")
    }

    fn icmp_type(&mut self) -> Result<IcmpType, ParseError> {
        self.expect("TYPE")?;
        if self.eat("all") {
            return Ok(IcmpType {
                r#type: None,
                code: None,
            });
        }
        let t = self.value("an ICMP type (0-255)", |w| w.parse::<u8>().ok())?;
        let code = if self.eat("CODE") {
            Some(self.value("an ICMP code (0-255)", |w| w.parse::<u8>().ok())?)
        } else {
            None
        };
        Ok(IcmpType {
            r#type: Some(t),
            code,
        })
    }

    fn icmp(&mut self) -> Result<Vec<IcmpType>, ParseError> {
        if self.eat("all") {
            return Ok(vec![IcmpType {
                r#type: None,
                code: None,
            }]);
        }
        if !self.eat_tok(&Tok::Open) {
            return Ok(vec![self.icmp_type()?]);
        }
        let mut list = vec![self.icmp_type()?];
        while self.eat("AND") {
            if list.len() == MAX_ITEMS {
                return self.fail(&format!("at most {MAX_ITEMS} ICMP types"));
            }
            list.push(self.icmp_type()?);
        }
        if !self.eat_tok(&Tok::Close) {
            return self.fail("AND or ')'");
        }
        Ok(list)
    }
}

/// Parses one rule.
pub fn parse(text: &str) -> Result<Rule, ParseError> {
    let toks = tokenize(text)?;
    let end = text
        .lines()
        .enumerate()
        .last()
        .map_or((1, 1), |(i, l)| (i + 1, l.chars().count() + 1));
    Parser { toks, pos: 0, end }.rule()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Rule {
        parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn tritons_examples_parse() {
        let r = ok("FROM any TO tag role=web ALLOW tcp PORT 80");
        assert_eq!(r.from, Targets::Any);
        assert_eq!(
            r.to,
            Targets::List(vec![Target::Tag {
                key: "role".into(),
                value: Some("web".into())
            }])
        );
        assert_eq!(r.action, Action::Allow);
        assert_eq!(r.protocol, Protocol::Tcp(Ports::List(vec![(80, 80)])));
        assert_eq!(r.priority, 0);

        let r = ok(
            "from (vm 163dcedb-828d-43c9-b076-625423250ee2 OR tag db) to \
                    (subnet 10.2.2.0/24 or ip 10.3.0.1) block tcp (port 443 and port 8443)",
        );
        assert_eq!(
            r.from,
            Targets::List(vec![
                Target::Vm("163dcedb-828d-43c9-b076-625423250ee2".parse().unwrap()),
                Target::Tag {
                    key: "db".into(),
                    value: None
                }
            ])
        );
        assert_eq!(
            r.to,
            Targets::List(vec![
                Target::Subnet("10.2.2.0".parse().unwrap(), 24),
                Target::Ip("10.3.0.1".parse().unwrap())
            ])
        );
        assert_eq!(
            r.protocol,
            Protocol::Tcp(Ports::List(vec![(443, 443), (8443, 8443)]))
        );

        let r = ok(
            r#"FROM all vms TO tag "VM type" = "LDAP server" ALLOW udp PORTS 389, 1000-2000 PRIORITY 7"#,
        );
        assert_eq!(r.from, Targets::AllVms);
        assert_eq!(
            r.protocol,
            Protocol::Udp(Ports::List(vec![(389, 389), (1000, 2000)]))
        );
        assert_eq!(r.priority, 7);

        let r = ok("FROM any TO all vms ALLOW icmp TYPE 8 CODE 0");
        assert_eq!(
            r.protocol,
            Protocol::Icmp(vec![IcmpType {
                r#type: Some(8),
                code: Some(0)
            }])
        );
        assert_eq!(
            ok("FROM any TO all vms ALLOW icmp (TYPE 0 AND TYPE 3 CODE 4)").protocol,
            Protocol::Icmp(vec![
                IcmpType {
                    r#type: Some(0),
                    code: None
                },
                IcmpType {
                    r#type: Some(3),
                    code: Some(4)
                }
            ])
        );
        assert_eq!(
            ok("FROM any TO all vms BLOCK tcp PORT all").protocol,
            Protocol::Tcp(Ports::All)
        );
        assert_eq!(
            ok("FROM any TO all vms BLOCK udp all").protocol,
            Protocol::Udp(Ports::All)
        );
    }

    #[test]
    fn errors_name_the_line_and_column_and_what_was_expected() {
        assert_eq!(
            err("FROM any TO all vms ALOW tcp PORT 80"),
            "line 1, column 21: expected ALLOW or BLOCK, found \"ALOW\""
        );
        assert_eq!(
            err("FROM any\nTO tag role=web ALLOW tcp PORT 70000"),
            "line 2, column 32: expected a port (1-65535) or a range such as 8000-8080, found \"70000\""
        );
        assert_eq!(
            err("FROM any TO all vms ALLOW tcp"),
            "line 1, column 30: expected PORT, PORTS, all or '(', found the end of the rule"
        );
        assert!(err("FROM subnet 10.0.0.1/24 TO any ALLOW tcp PORT 1").contains("column 13"));
        assert!(err("FROM any TO vm nope ALLOW tcp PORT 1").contains("uuid"));
        assert!(err("FROM any TO any ALLOW tcp PORT 1 PRIORITY 101").contains("0 to 100"));
        assert!(err("FROM any TO any ALLOW tcp PORTS 9-3").contains("range"));
        assert!(err("FROM any TO any ALLOW tcp PORT 1 extra").contains("the end of the rule"));
        assert!(err("FROM tag \"open TO any ALLOW tcp PORT 1").contains("never closed"));
        assert!(err("FROM any TO any ALLOW tcp PORT 1;").contains("unexpected character ';'"));
        assert!(err("").contains("expected FROM, found the end"));
    }

    #[test]
    fn lists_are_bounded() {
        let many: Vec<String> = (1..=40).map(|i| format!("ip 10.0.0.{i}")).collect();
        let text = format!("FROM ({}) TO any ALLOW tcp PORT 1", many.join(" OR "));
        assert!(err(&text).contains("at most 32 targets"));
        let ports: Vec<String> = (1..=40).map(|i| i.to_string()).collect();
        let text = format!("FROM any TO any ALLOW tcp PORTS {}", ports.join(", "));
        assert!(err(&text).contains("at most 32 ports"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn no_text_makes_it_panic(text in "\\PC*") {
            let _ = parse(&text);
        }

        #[test]
        fn no_sequence_of_its_own_words_makes_it_panic(
            words in proptest::collection::vec(proptest::sample::select(vec![
                "FROM", "TO", "any", "all", "vms", "vm", "ip", "subnet", "tag", "(", ")", "OR",
                "AND", ",", "=", "ALLOW", "BLOCK", "tcp", "udp", "icmp", "PORT", "PORTS", "TYPE",
                "CODE", "PRIORITY", "80", "0", "65535", "65536", "1-2", "2-1", "-", "10.0.0.1",
                "10.0.0.0/8", "10.0.0.1/33", "\"q\"", "\"", "163dcedb-828d-43c9-b076-625423250ee2",
                "\n", "255", "256", "100", "101",
            ]), 0..40)
        ) {
            let _ = parse(&words.join(" "));
        }
    }
}
