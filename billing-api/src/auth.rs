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
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
