//! The SmartOS metadata protocol, as `mdata-get`, `mdata-list`, `mdata-put`
//! and `mdata-delete` (and cloud-init's SmartOS source) speak it: a client
//! sends `NEGOTIATE V2` and gets `V2_OK`, then frames
//! `V2 <body length> <crc32 of body, 8 hex> <body>` where the body is
//! `<request id> <command> [<base64 argument>]` and the answer carries the
//! same request id with `SUCCESS [<base64 value>]`, `NOTFOUND` or
//! `FAILURE [<base64 message>]`. Version 1 `GET <key>` lines are answered in
//! version 1 (`SUCCESS`, the value with leading dots doubled, `.`).
//!
//! Pure: it turns one request line into one answer against a [`Keys`]; it
//! never does I/O.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// What the protocol reads and changes.
pub trait Keys {
    /// `sdc:` keys are asked without their prefix.
    fn sdc(&self, key: &str) -> Option<String>;
    fn get(&self, key: &str) -> Option<String>;
    fn keys(&self) -> Vec<String>;
    /// Err: why it was refused.
    fn put(&mut self, key: &str, value: &str) -> Result<(), String>;
    fn delete(&mut self, key: &str) -> Result<(), String>;
}

/// The answer to one line (with its newline), or None for a V2 frame so
/// broken it cannot be answered (a bad length or checksum: the client
/// times out and resets, as with SmartOS's agent).
pub fn answer(line: &str, keys: &mut dyn Keys) -> Option<String> {
    let line = line.trim_end_matches(['\n', '\r']);
    let (cmd, rest) = match line.trim_start().split_once(' ') {
        Some((c, r)) => (c, r.trim()),
        None => (line.trim(), ""),
    };
    match cmd {
        "NEGOTIATE" if rest == "V2" => Some("V2_OK\n".into()),
        "NEGOTIATE" => Some("FAILURE\n".into()),
        "V2" => v2(rest, keys),
        "GET" if !rest.is_empty() => Some(match get(rest, keys) {
            Some(v) => {
                let mut out = String::from("SUCCESS\n");
                for l in v.split('\n') {
                    if l.starts_with('.') {
                        out.push('.');
                    }
                    out.push_str(l);
                    out.push('\n');
                }
                out + ".\n"
            }
            None => "NOTFOUND\n".into(),
        }),
        _ => Some("invalid command\n".into()),
    }
}

fn get(key: &str, keys: &dyn Keys) -> Option<String> {
    match key.strip_prefix("sdc:") {
        Some(k) => keys.sdc(k),
        None => keys.get(key),
    }
}

fn v2(frame: &str, keys: &mut dyn Keys) -> Option<String> {
    let mut parts = frame.splitn(3, ' ');
    let len: usize = parts.next()?.parse().ok()?;
    let crc = parts.next()?;
    let body = parts.next()?;
    if len == 0 || body.len() != len || crc != format!("{:08x}", crc32(body.as_bytes())) {
        return None;
    }
    let (reqid, rest) = body.split_once(' ')?;
    if reqid.is_empty() || !reqid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (cmd, arg) = rest.split_once(' ').unwrap_or((rest, ""));
    let arg = match decode(arg.trim()) {
        Some(a) => a,
        None => {
            return Some(frame_v2(
                reqid,
                "FAILURE",
                Some("the argument is not base64"),
            ));
        }
    };
    let (code, value): (&str, Option<String>) = match cmd {
        "GET" if arg.trim().is_empty() => ("FAILURE", Some("Invalid GET Request".into())),
        "GET" => match get(arg.trim(), keys) {
            Some(v) => ("SUCCESS", Some(v)),
            None => ("NOTFOUND", None),
        },
        "KEYS" => ("SUCCESS", Some(keys.keys().join("\n"))),
        "PUT" => {
            let mut terms = arg.trim().split(' ');
            match (
                terms.next().map(decode),
                terms.next().map(decode),
                terms.next(),
            ) {
                (Some(Some(k)), Some(Some(v)), None) if !k.trim().is_empty() => {
                    match keys.put(k.trim(), &v) {
                        Ok(()) => ("SUCCESS", None),
                        Err(e) => ("FAILURE", Some(e)),
                    }
                }
                _ => ("FAILURE", Some("Invalid PUT Request".into())),
            }
        }
        "DELETE" if arg.trim().is_empty() => ("FAILURE", Some("Invalid DELETE Request".into())),
        "DELETE" => match keys.delete(arg.trim()) {
            Ok(()) => ("SUCCESS", None),
            Err(e) => ("FAILURE", Some(e)),
        },
        other => ("FAILURE", Some(format!("Unknown command {other}"))),
    };
    Some(frame_v2(reqid, code, value.as_deref()))
}

fn decode(b64: &str) -> Option<String> {
    if b64.is_empty() {
        return Some(String::new());
    }
    String::from_utf8(STANDARD.decode(b64).ok()?).ok()
}

/// `V2 <len> <crc> <reqid> <code>[ <base64 value>]\n`. An empty value is
/// sent without a payload, as SmartOS's agent does.
pub fn frame_v2(reqid: &str, code: &str, value: Option<&str>) -> String {
    let mut body = format!("{reqid} {code}");
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        body.push(' ');
        body.push_str(&STANDARD.encode(v));
    }
    format!("V2 {} {:08x} {body}\n", body.len(), crc32(body.as_bytes()))
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Map(BTreeMap<String, String>);

    impl Keys for Map {
        fn sdc(&self, key: &str) -> Option<String> {
            (key == "uuid").then(|| "u-1".to_string())
        }
        fn get(&self, key: &str) -> Option<String> {
            self.0.get(key).cloned()
        }
        fn keys(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
        fn put(&mut self, key: &str, value: &str) -> Result<(), String> {
            if key.starts_with("sdc:") {
                return Err("Cannot update the \"sdc\" Namespace.".into());
            }
            self.0.insert(key.into(), value.into());
            Ok(())
        }
        fn delete(&mut self, key: &str) -> Result<(), String> {
            self.0.remove(key);
            Ok(())
        }
    }

    /// A request frame as clients build it.
    fn req(cmd: &str, arg: Option<&str>) -> String {
        let mut body = format!("dc4fae17 {cmd}");
        if let Some(a) = arg {
            body.push(' ');
            body.push_str(&STANDARD.encode(a));
        }
        format!("V2 {} {:08x} {body}\n", body.len(), crc32(body.as_bytes()))
    }

    /// The code and decoded value of an answer frame, checking its framing.
    fn parse(frame: &str) -> (String, Option<String>) {
        let frame = frame.strip_suffix('\n').unwrap();
        let mut p = frame.splitn(4, ' ');
        assert_eq!(p.next(), Some("V2"));
        let len: usize = p.next().unwrap().parse().unwrap();
        let crc = p.next().unwrap();
        let body = p.next().unwrap();
        assert_eq!(body.len(), len);
        assert_eq!(crc, format!("{:08x}", crc32(body.as_bytes())));
        let mut b = body.split(' ');
        assert_eq!(b.next(), Some("dc4fae17"));
        let code = b.next().unwrap().to_string();
        let value = b
            .next()
            .map(|v| String::from_utf8(STANDARD.decode(v).unwrap()).unwrap());
        (code, value)
    }

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_v2_session_gets_lists_puts_and_deletes() {
        let mut m = Map::default();
        assert_eq!(answer("NEGOTIATE V2\n", &mut m).unwrap(), "V2_OK\n");
        assert_eq!(
            parse(&answer(&req("GET", Some("sdc:uuid")), &mut m).unwrap()),
            ("SUCCESS".into(), Some("u-1".into()))
        );
        assert_eq!(
            parse(&answer(&req("GET", Some("nope")), &mut m).unwrap()),
            ("NOTFOUND".into(), None)
        );
        let put = format!(
            "{} {}",
            STANDARD.encode("user-data"),
            STANDARD.encode("a b\nc")
        );
        assert_eq!(
            parse(&answer(&req("PUT", Some(&put)), &mut m).unwrap()).0,
            "SUCCESS"
        );
        assert_eq!(
            parse(&answer(&req("GET", Some("user-data")), &mut m).unwrap())
                .1
                .as_deref(),
            Some("a b\nc")
        );
        assert_eq!(
            parse(&answer(&req("KEYS", None), &mut m).unwrap())
                .1
                .as_deref(),
            Some("user-data")
        );
        let put = format!("{} {}", STANDARD.encode("sdc:uuid"), STANDARD.encode("x"));
        let (code, why) = parse(&answer(&req("PUT", Some(&put)), &mut m).unwrap());
        assert_eq!(
            (code.as_str(), why.unwrap().contains("sdc")),
            ("FAILURE", true)
        );
        assert_eq!(
            parse(&answer(&req("DELETE", Some("user-data")), &mut m).unwrap()).0,
            "SUCCESS"
        );
        assert_eq!(
            parse(&answer(&req("GET", Some("user-data")), &mut m).unwrap()).0,
            "NOTFOUND"
        );
    }

    #[test]
    fn broken_frames_get_no_answer_and_junk_gets_invalid_command() {
        let mut m = Map::default();
        let good = req("GET", Some("sdc:uuid"));
        let bad_crc = good.replacen(&good[5..13], "00000000", 1);
        assert_eq!(answer(&bad_crc, &mut m), None);
        assert_eq!(answer("V2 3 00000000 abc\n", &mut m), None);
        assert_eq!(answer("V2\n", &mut m), None);
        assert_eq!(answer("\n", &mut m).unwrap(), "invalid command\n");
        assert_eq!(
            answer("HELLO there\n", &mut m).unwrap(),
            "invalid command\n"
        );
        assert_eq!(answer("NEGOTIATE V9\n", &mut m).unwrap(), "FAILURE\n");
    }

    #[test]
    fn v1_get_doubles_leading_dots() {
        let mut m = Map::default();
        m.0.insert("k".into(), ".a\nb".into());
        assert_eq!(answer("GET k\n", &mut m).unwrap(), "SUCCESS\n..a\nb\n.\n");
        assert_eq!(answer("GET x\n", &mut m).unwrap(), "NOTFOUND\n");
    }

    proptest::proptest! {
        #[test]
        fn no_line_panics(s in "\\PC*") {
            let mut m = Map::default();
            let _ = answer(&s, &mut m);
            let _ = answer(&format!("V2 {s}"), &mut m);
        }
    }
}
