//! A WireGuard key (private, public or preshared): 32 bytes, written in standard base64 as
//! `wg` and flanneld write them (`wgtypes.ParseKey`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use boringtun::x25519;

/// Why a key text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64.
    #[error("not base64 ({0})")]
    Base64(String),
    /// Base64 of another length than 32 bytes.
    #[error("{0} bytes, where a WireGuard key is 32 (44 characters of base64)")]
    Length(usize),
}

/// 32 bytes of key. `Debug` shows only the public half's first characters, never a secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Parses a key as `wg` and flanneld's `wgtypes.ParseKey` do: standard base64 of
    /// exactly 32 bytes. Line breaks are skipped, as Go's base64 decoder skips them, so
    /// a file `wg genkey` wrote (with its newline) reads.
    pub fn parse(text: &str) -> Result<Key, KeyError> {
        let clean: String = text.chars().filter(|c| *c != '\n' && *c != '\r').collect();
        let bytes = STANDARD
            .decode(clean.as_bytes())
            .map_err(|e| KeyError::Base64(e.to_string()))?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        Ok(Key(arr))
    }

    /// A fresh private key from the operating system's random source (`getrandom`), as
    /// `wg genkey`; clamped as Curve25519 wants, so it reads back as `wg` writes it.
    pub fn generate() -> std::io::Result<Key> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| std::io::Error::other(e.to_string()))?;
        k[0] &= 248;
        k[31] = (k[31] & 127) | 64;
        Ok(Key(k))
    }

    /// The public key of this private key (`wg pubkey`).
    pub fn public(&self) -> Key {
        let secret = x25519::StaticSecret::from(self.0);
        Key(x25519::PublicKey::from(&secret).to_bytes())
    }

    /// The key in standard base64, as `wg` writes it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.public().to_base64();
        write!(f, "Key(public {}…)", &p[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wg pubkey` is X25519 of the base point: RFC 7748 section 6.1's Alice, whose
    /// private key and public key are printed there.
    #[test]
    fn a_private_key_gives_the_public_key_wg_gives() {
        let hex = |s: &str| -> [u8; 32] {
            let v: Vec<u8> = (0..64)
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect();
            v.try_into().unwrap()
        };
        let private = Key(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let public = hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(private.public().0, public);
        let text = private.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(Key::parse(&text).unwrap(), private);
        assert_eq!(Key::parse(&format!("{text}\n")).unwrap(), private);
    }

    #[test]
    fn malformed_keys_are_refused_with_why() {
        assert!(matches!(Key::parse("not a key!"), Err(KeyError::Base64(_))));
        assert_eq!(Key::parse("AAAA"), Err(KeyError::Length(3)));
        assert_eq!(Key::parse(""), Err(KeyError::Length(0)));
        let long = STANDARD.encode([7u8; 33]);
        assert_eq!(Key::parse(&long), Err(KeyError::Length(33)));
    }

    #[test]
    fn generated_keys_differ_and_are_clamped() {
        let (a, b) = (Key::generate().unwrap(), Key::generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.0[0] & 7, 0);
        assert_eq!(a.0[31] & 0xc0, 0x40);
        assert!(!format!("{a:?}").contains(&a.to_base64()));
    }
}
