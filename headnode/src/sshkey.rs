//! OpenSSH public keys, one line each (`ssh-ed25519 AAAA... comment`): checks
//! that the blob is a well-formed key of the type the line names, and works
//! out the size and fingerprint `ssh-keygen -l` shows.
//!
//! Pure: it never touches the database, and it never sees a private key
//! (a line that looks like one is refused without being echoed).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

/// The longest key line accepted (an RSA 16384-bit key is about 2,800 bytes).
pub const MAX_KEY_LEN: usize = 8192;
/// RSA keys shorter than this are refused.
pub const MIN_RSA_BITS: u32 = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// `RSA`, `ED25519`, `ECDSA`, `ED25519-SK`, `ECDSA-SK` (as `ssh-keygen -l`).
    pub key_type: &'static str,
    pub bits: u32,
    /// `SHA256:<unpadded base64>`.
    pub fingerprint: String,
    /// Empty when the line has none.
    pub comment: String,
    /// `<type> <base64>[ <comment>]`, whitespace normalised.
    pub line: String,
}

/// Parses one public key line; the error says what is wrong with it.
pub fn parse(text: &str) -> Result<PublicKey, String> {
    if text.len() > MAX_KEY_LEN {
        return Err(format!("a key line is at most {MAX_KEY_LEN} bytes"));
    }
    let text = text.trim();
    if text.contains("PRIVATE KEY") {
        return Err("this is a private key; give the public one (the .pub file)".into());
    }
    if text.contains(['\n', '\r']) {
        return Err("one key per line: the text holds several lines".into());
    }
    let mut parts = text.splitn(3, [' ', '\t']);
    let name = parts.next().unwrap_or_default();
    let Some(b64) = parts.next() else {
        return Err("expected `<type> <base64 key> [comment]`".into());
    };
    let comment = parts.next().unwrap_or_default().trim().to_string();
    if comment.chars().any(char::is_control) {
        return Err("the comment holds control characters".into());
    }
    let blob = STANDARD
        .decode(b64)
        .map_err(|e| format!("the key is not valid base64: {e}"))?;
    let mut r = Reader(&blob);
    let inner = r.string()?;
    if inner != name.as_bytes() {
        return Err(format!(
            "the line says {} but the key inside is {}",
            crate::validate::truncate(name),
            crate::validate::truncate(&String::from_utf8_lossy(inner))
        ));
    }
    let (key_type, bits) = match name {
        "ssh-ed25519" => ("ED25519", ed25519(&mut r)?),
        "sk-ssh-ed25519@openssh.com" => {
            let bits = ed25519(&mut r)?;
            r.string()?; // application
            ("ED25519-SK", bits)
        }
        "ssh-rsa" => {
            let _e = r.mpint()?;
            let n = r.mpint()?;
            let bits = mpint_bits(n);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA keys must have at least {MIN_RSA_BITS} bits; this one has {bits}"
                ));
            }
            ("RSA", bits)
        }
        "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" => {
            ("ECDSA", ecdsa(&mut r, &name["ecdsa-sha2-".len()..])?)
        }
        "sk-ecdsa-sha2-nistp256@openssh.com" => {
            let bits = ecdsa(&mut r, "nistp256")?;
            r.string()?; // application
            ("ECDSA-SK", bits)
        }
        "ssh-dss" => return Err("DSA keys are obsolete and not accepted".into()),
        other => {
            return Err(format!(
                "unknown key type {}; expected ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256/384/521 or their sk- forms",
                crate::validate::truncate(other)
            ));
        }
    };
    if !r.0.is_empty() {
        return Err(format!(
            "{} bytes follow the key inside the blob",
            r.0.len()
        ));
    }
    let fingerprint = format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(&blob)));
    let mut line = format!("{name} {b64}");
    if !comment.is_empty() {
        line.push(' ');
        line.push_str(&comment);
    }
    Ok(PublicKey {
        key_type,
        bits,
        fingerprint,
        comment,
        line,
    })
}

fn ed25519(r: &mut Reader) -> Result<u32, String> {
    let k = r.string()?;
    if k.len() != 32 {
        return Err(format!("an ed25519 key is 32 bytes, this one {}", k.len()));
    }
    Ok(256)
}

fn ecdsa(r: &mut Reader, curve: &str) -> Result<u32, String> {
    let named = r.string()?;
    if named != curve.as_bytes() {
        return Err("the key's curve does not match its type".into());
    }
    let (bits, coord) = match curve {
        "nistp256" => (256, 32),
        "nistp384" => (384, 48),
        _ => (521, 66),
    };
    let q = r.string()?;
    // An uncompressed point: 0x04, X, Y.
    if q.len() != 1 + 2 * coord || q[0] != 4 {
        return Err(format!("malformed {curve} public point"));
    }
    Ok(bits)
}

fn mpint_bits(n: &[u8]) -> u32 {
    let n = match n.iter().position(|&b| b != 0) {
        Some(i) => &n[i..],
        None => return 0,
    };
    (n.len() as u32 - 1) * 8 + (8 - n[0].leading_zeros())
}

/// The SSH wire format's length-prefixed strings.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn string(&mut self) -> Result<&'a [u8], String> {
        const TRUNCATED: &str = "the key blob is truncated";
        if self.0.len() < 4 {
            return Err(TRUNCATED.into());
        }
        let (len, rest) = self.0.split_at(4);
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        if rest.len() < len {
            return Err(TRUNCATED.into());
        }
        let (s, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(s)
    }

    fn mpint(&mut self) -> Result<&'a [u8], String> {
        let m = self.string()?;
        if m.first().is_some_and(|&b| b & 0x80 != 0) {
            return Err("a negative number in an RSA key".into());
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `ssh-keygen -t ed25519`; `ssh-keygen -l` printed
    // `256 SHA256:5wQ5qkdqMVj25KtTDrqxj/9RIHQOFb13hqvk8P+hdiw me@ed25519 (ED25519)`.
    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPKFFcOjrmDRB9XeLy0iPxj3RQYdXqGUwqhcsHvciCAx me@ed25519";
    const EC: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBLWylVGAAfSUkQ8YFNDkK5+SBuxwmrYtDTt/M7qbs6Ln4EyHPAyVbWTJS8SJ0A9lkXsRYn9szyAz7HCxQgRXdsU= me@ecdsa";

    #[test]
    fn fingerprints_and_sizes_are_those_ssh_keygen_shows() {
        let k = parse(ED).unwrap();
        assert_eq!(
            (
                k.key_type,
                k.bits,
                k.fingerprint.as_str(),
                k.comment.as_str()
            ),
            (
                "ED25519",
                256,
                "SHA256:5wQ5qkdqMVj25KtTDrqxj/9RIHQOFb13hqvk8P+hdiw",
                "me@ed25519"
            )
        );
        let k = parse(EC).unwrap();
        assert_eq!(
            (k.key_type, k.bits, k.fingerprint.as_str()),
            (
                "ECDSA",
                256,
                "SHA256:6kTlDDghYk7pHQsCu2H9LxYjbyai0tWqBdbRmQAZcgM"
            )
        );
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        let blob = ED.split(' ').nth(1).unwrap();
        for (text, says) in [
            ("", "expected"),
            ("ssh-ed25519", "expected"),
            ("ssh-ed25519 !!!notbase64", "base64"),
            (
                &format!("ssh-rsa {blob}") as &str,
                "the key inside is ssh-ed25519",
            ),
            (&format!("ssh-ed25519 {}", &blob[..40]), "truncated"),
            (&format!("ssh-ed25519 {}", &blob[..41]), "base64"),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAAQA=", "32 bytes"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
            (&format!("{ED}\n{ED}"), "several lines"),
            ("ssh-dss AAAAB3NzaC1kc3M=", "obsolete"),
            ("ssh-foo AAAAB3NzaC1mb28=", "unknown key type"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        // A small RSA key (e = 65537, a 1024-bit n).
        let mut blob = Vec::new();
        for part in [&b"ssh-rsa"[..], &[1, 0, 1], &[0xc0; 128]] {
            blob.extend((part.len() as u32 + u32::from(part[0] & 0x80 != 0)).to_be_bytes());
            if part[0] & 0x80 != 0 {
                blob.push(0);
            }
            blob.extend(part);
        }
        let e = parse(&format!("ssh-rsa {}", STANDARD.encode(&blob))).unwrap_err();
        assert!(e.contains("has 1024"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics(s in "\\PC*", b in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse(&s);
            let _ = parse(&format!("ssh-ed25519 {}", STANDARD.encode(&b)));
            let _ = parse(&format!("ssh-rsa {}", STANDARD.encode(&b)));
        }
    }
}
