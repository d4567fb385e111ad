//! What a device key signs, and the keys themselves (Ed25519, RFC 8032, through ed25519-dalek): the
//! pay agent signs, the server verifies. Both statements are short UTF-8 texts of `key=value` lines in a
//! fixed order, so the bytes a subscriber's key signed are the bytes kept as evidence, readable as they
//! are; the server verifies the signature over the exact bytes sent, then reads them back strictly
//! ([`ConsentStatement::parse`]): one spelling per statement, nothing left over.
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

/// The first line of a consent statement.
const CONSENT_V1: &str = "gtpcharge-consent-v1";
/// The first line of an enrollment statement.
const ENROLL_V1: &str = "gtpcharge-enroll-v1";

/// The subscriber's answer about one purchase, as shown and as signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentStatement {
    pub purchase_id: i64,
    pub amount: i64,
    pub currency: String,
    pub service_provider_id: i64,
    pub nonce: String,
    pub approve: bool,
    /// The agent's clock when the subscriber answered (Unix microseconds); evidence, not checked.
    pub at_us: i64,
}

impl ConsentStatement {
    pub fn to_bytes(&self) -> Vec<u8> {
        format!(
            "{CONSENT_V1}\npurchase={}\namount={}\ncurrency={}\nsp={}\nnonce={}\ndecision={}\nat_us={}\n",
            self.purchase_id,
            self.amount,
            self.currency,
            self.service_provider_id,
            self.nonce,
            if self.approve { "approve" } else { "refuse" },
            self.at_us
        )
        .into_bytes()
    }

    /// The statement these bytes are, if they are exactly what [`ConsentStatement::to_bytes`] writes
    /// for some statement; anything else (other order, spaces, a number with a sign or leading zeros,
    /// a line too many) is `None`.
    pub fn parse(bytes: &[u8]) -> Option<ConsentStatement> {
        let text = std::str::from_utf8(bytes).ok()?;
        let body = text.strip_prefix(CONSENT_V1)?.strip_prefix('\n')?.strip_suffix('\n')?;
        let mut lines = body.split('\n');
        let mut field = |key: &str| lines.next()?.strip_prefix(key)?.strip_prefix('=').map(str::to_owned);
        let number = |text: String| text.parse::<i64>().ok();
        let statement = ConsentStatement {
            purchase_id: number(field("purchase")?)?,
            amount: number(field("amount")?)?,
            currency: field("currency")?,
            service_provider_id: number(field("sp")?)?,
            nonce: field("nonce")?,
            approve: match field("decision")?.as_str() {
                "approve" => true,
                "refuse" => false,
                _ => return None,
            },
            at_us: number(field("at_us")?)?,
        };
        // Written back, it must be these very bytes: no other spelling, nothing left over.
        (statement.to_bytes() == bytes).then_some(statement)
    }
}

/// What a device signs to prove it holds its key when it completes an enrollment.
pub fn enrollment_statement(enrollment_id: i64, token: &str) -> Vec<u8> {
    format!("{ENROLL_V1}\nenrollment={enrollment_id}\ntoken={token}\n").into_bytes()
}

/// Whether `signature` is `public_key`'s signature over `message` (strict verification: no malleable
/// signatures, no weak keys).
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let (Ok(key), Ok(signature)) = (<[u8; 32]>::try_from(public_key), <[u8; 64]>::try_from(signature)) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&key) else { return false };
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature)).is_ok()
}

/// Whether `public_key` is a usable Ed25519 public key (32 bytes, a point on the curve, not weak).
pub fn valid_public_key(public_key: &[u8]) -> bool {
    <[u8; 32]>::try_from(public_key)
        .ok()
        .and_then(|key| VerifyingKey::from_bytes(&key).ok())
        .is_some_and(|key| !key.is_weak())
}

/// A device's key pair (the pay agent's). The 32-byte seed is the secret.
pub struct DeviceKey(SigningKey);

impl DeviceKey {
    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<DeviceKey, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(DeviceKey(SigningKey::from_bytes(&seed)))
    }

    pub fn from_seed(seed: [u8; 32]) -> DeviceKey {
        DeviceKey(SigningKey::from_bytes(&seed))
    }

    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> ConsentStatement {
        ConsentStatement {
            purchase_id: 42,
            amount: 199,
            currency: "EUR".into(),
            service_provider_id: 3,
            nonce: "abc".into(),
            approve: true,
            at_us: 1_700_000_000_000_000,
        }
    }

    #[test]
    fn a_statement_reads_back_only_in_its_one_spelling() {
        let bytes = statement().to_bytes();
        assert_eq!(ConsentStatement::parse(&bytes), Some(statement()));
        let text = String::from_utf8(bytes).unwrap();
        for other in [
            text.replace("amount=199", "amount=0199"),
            text.replace("amount=199", "amount=+199"),
            text.replace("decision=approve", "decision=yes"),
            text.replace("purchase=42\namount=199", "amount=199\npurchase=42"),
            format!("{text}extra=1\n"),
            text.trim_end().to_owned(),
            text.replace('\n', "\r\n"),
        ] {
            assert_eq!(ConsentStatement::parse(other.as_bytes()), None, "{other:?}");
        }
    }

    #[test]
    fn signatures_verify_only_over_the_bytes_signed_by_the_key() {
        let key = DeviceKey::from_seed([7; 32]);
        let other = DeviceKey::from_seed([8; 32]);
        let bytes = statement().to_bytes();
        let signature = key.sign(&bytes);
        assert!(valid_public_key(&key.public_key()));
        assert!(verify(&key.public_key(), &bytes, &signature));
        assert!(!verify(&other.public_key(), &bytes, &signature));
        let mut changed = bytes.clone();
        changed[30] ^= 1;
        assert!(!verify(&key.public_key(), &changed, &signature));
        assert!(!verify(&key.public_key(), &bytes, &signature[..63]));
        assert!(!valid_public_key(&[0u8; 31]));
        assert_eq!(DeviceKey::from_seed(key.seed()).public_key(), key.public_key());
        let enrollment = enrollment_statement(5, "gc1abc");
        assert_eq!(enrollment, b"gtpcharge-enroll-v1\nenrollment=5\ntoken=gc1abc\n");
    }
}
