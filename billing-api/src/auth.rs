//! Credentials: SP API keys, probe credentials and operator keys. A secret is 32 random bytes in
//! base32 behind a kind prefix; only its SHA-256 is stored (the secrets are high-entropy, so a slow
//! password hash adds nothing). Secrets are never logged; key ids are.
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ServiceProvider,
    Probe,
    Operator,
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::ServiceProvider => "sp",
            Kind::Probe => "probe",
            Kind::Operator => "operator",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "sp" => Some(Kind::ServiceProvider),
            "probe" => Some(Kind::Probe),
            "operator" => Some(Kind::Operator),
            _ => None,
        }
    }

    fn prefix(&self) -> &'static str {
        match self {
            Kind::ServiceProvider => "gcsk_",
            Kind::Probe => "gcpk_",
            Kind::Operator => "gcok_",
        }
    }
}

/// The caller of an RPC, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub kind: Kind,
    pub service_provider_id: Option<i64>,
}

/// A freshly minted credential: the id (loggable) and the secret (shown once).
pub struct NewSecret {
    pub key_id: String,
    pub secret: String,
    pub sha256: String,
}

fn base32(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(bytes).to_ascii_lowercase()
}

pub fn mint(kind: Kind) -> Result<NewSecret, getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let mut id = [0u8; 8];
    getrandom::fill(&mut id)?;
    let secret = format!("{}{}", kind.prefix(), base32(&secret));
    Ok(NewSecret { key_id: format!("key_{}", base32(&id)), sha256: hash(&secret), secret })
}

/// 128 random bits as 26 base32 characters (a consent nonce).
pub fn random_text() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(base32(&bytes))
}

/// A webhook signing secret: `whsec_` and 256 random bits in base32.
pub fn webhook_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("whsec_{}", base32(&bytes)))
}

/// Whether `pin` has the shape of a payment PIN: 4 to 12 ASCII digits.
pub fn valid_pin(pin: &str) -> bool {
    (4..=12).contains(&pin.len()) && pin.bytes().all(|b| b.is_ascii_digit())
}

/// A payment PIN's stored form: Argon2id (the crate's defaults: 19 MiB, 2 passes) with a random
/// 16-byte salt, as a PHC string. A PIN has few possible values, so only a slow, salted hash keeps a
/// stolen table from giving them all back at once.
pub fn hash_pin(pin: &str) -> Result<String, getrandom::Error> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)?;
    // Neither can fail for a 16-byte salt and the default parameters.
    let salt = SaltString::encode_b64(&salt).map_err(|_| getrandom::Error::UNSUPPORTED)?;
    let hash =
        argon2::Argon2::default().hash_password(pin.as_bytes(), &salt).map_err(|_| getrandom::Error::UNSUPPORTED)?;
    Ok(hash.to_string())
}

/// Whether `pin` is the one `stored` ([`hash_pin`]) was made from; an unreadable `stored` matches nothing.
pub fn pin_matches(pin: &str, stored: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(stored).is_ok_and(|hash| argon2::Argon2::default().verify_password(pin.as_bytes(), &hash).is_ok())
}

pub fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The secret from `authorization: Bearer <secret>`, if well-formed.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let secret = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
    (!secret.is_empty() && secret.len() <= 128).then_some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_unique_and_hashed() {
        let a = mint(Kind::ServiceProvider).unwrap();
        let b = mint(Kind::ServiceProvider).unwrap();
        assert!(a.secret.starts_with("gcsk_"));
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.sha256, hash(&a.secret));
        assert_eq!(a.sha256.len(), 64);
        assert!(!a.sha256.contains(&a.secret));
    }

    #[test]
    fn pins_are_salted_and_checked() {
        let one = hash_pin("1234").unwrap();
        let two = hash_pin("1234").unwrap();
        assert_ne!(one, two, "a random salt each time");
        assert!(one.starts_with("$argon2id$"));
        assert!(pin_matches("1234", &one) && pin_matches("1234", &two));
        assert!(!pin_matches("1235", &one));
        assert!(!pin_matches("1234", "not a hash"));
        assert!(valid_pin("0000") && valid_pin("123456789012"));
        assert!(!valid_pin("123") && !valid_pin("1234567890123") && !valid_pin("12a4"));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
