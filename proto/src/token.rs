//! Purchase-token syntax.
//!
//! A token is 35 ASCII characters: the prefix `gc1`, then 32 characters of lowercase RFC 4648 base32
//! (alphabet `a-z2-7`, no padding) that encode 20 bytes: 16 bytes from the operating system's CSPRNG
//! (128 bits of randomness) followed by a 4-byte big-endian CRC-32 (IEEE) of `"gc1"` and those 16 bytes.
//!
//! ```text
//! gc1 k7v3...(26 chars of random)...  ....(6 chars: rest of random + check)
//! ```
//!
//! Why this shape:
//! - Every character is legal in a URL query, an HTTP header, a DNS label (<= 63) and a TLS SNI, so an SP
//!   can put the token anywhere its traffic goes.
//! - The prefix contains `1`, which is not in the base32 alphabet, so a scanner can find candidates with
//!   one substring search and knows where a candidate starts.
//! - The check part lets a probe drop random look-alikes without asking anyone: a random 32-character
//!   string after `gc1` passes with probability 2^-32. It is a checksum, not a MAC: unguessability comes
//!   from the 128 random bits, which the billing API only ever stores next to the purchase.
//! - Parsing ignores ASCII case, because resolvers may randomise the case of DNS names (0x20 encoding);
//!   the canonical form is lowercase.
use std::fmt;
use std::sync::LazyLock;

/// The fixed prefix every token starts with.
pub const PREFIX: &[u8; 3] = b"gc1";
/// Length of a token's text form in bytes.
pub const TEXT_LEN: usize = 35;
/// Random bytes in a token.
pub const RANDOM_LEN: usize = 16;
const BODY_BYTES: usize = RANDOM_LEN + 4;
const BODY_CHARS: usize = TEXT_LEN - PREFIX.len();

/// Lowercase RFC 4648 base32 without padding, decoding either case.
static BASE32_LOWER: LazyLock<data_encoding::Encoding> = LazyLock::new(|| {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.translate.from.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    spec.translate.to.push_str("abcdefghijklmnopqrstuvwxyz");
    match spec.encoding() {
        Ok(encoding) => encoding,
        // The specification above is a constant; a failure here is a programming error caught by tests.
        Err(error) => unreachable!("invalid base32 specification: {error}"),
    }
});

/// Why a string is not a token. Small and `Copy`: it is produced on the probe's per-packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a token is {TEXT_LEN} characters, got {0}")]
    Length(usize),
    #[error("a token starts with \"gc1\"")]
    Prefix,
    #[error("a token's body is base32 (a-z, 2-7)")]
    Alphabet,
    #[error("the token's check part does not match")]
    Check,
}

/// A valid purchase token: its 16 random bytes. The text form is derived.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token([u8; RANDOM_LEN]);

impl Token {
    /// A fresh token from the operating system's CSPRNG.
    pub fn generate() -> Result<Token, getrandom::Error> {
        let mut random = [0u8; RANDOM_LEN];
        getrandom::fill(&mut random)?;
        Ok(Token(random))
    }

    /// The token with these random bytes (for deterministic generators and tests).
    pub const fn from_random(random: [u8; RANDOM_LEN]) -> Token {
        Token(random)
    }

    /// The 16 random bytes.
    pub const fn random(&self) -> &[u8; RANDOM_LEN] {
        &self.0
    }

    /// Parses exactly [`TEXT_LEN`] bytes, ASCII case ignored. Never allocates.
    pub fn parse(text: &[u8]) -> Result<Token, TokenError> {
        if text.len() != TEXT_LEN {
            return Err(TokenError::Length(text.len()));
        }
        let (prefix, body) = text.split_at(PREFIX.len());
        if !prefix.eq_ignore_ascii_case(PREFIX) {
            return Err(TokenError::Prefix);
        }
        let mut bytes = [0u8; BODY_BYTES];
        BASE32_LOWER.decode_mut(body, &mut bytes).map_err(|_| TokenError::Alphabet)?;
        let (random, check) = bytes.split_at(RANDOM_LEN);
        let mut random_array = [0u8; RANDOM_LEN];
        random_array.copy_from_slice(random);
        if check != checksum(&random_array) {
            return Err(TokenError::Check);
        }
        Ok(Token(random_array))
    }

    /// The canonical (lowercase) text form, without allocating.
    pub fn to_text(&self) -> [u8; TEXT_LEN] {
        let mut bytes = [0u8; BODY_BYTES];
        bytes[..RANDOM_LEN].copy_from_slice(&self.0);
        bytes[RANDOM_LEN..].copy_from_slice(&checksum(&self.0));
        let mut text = [0u8; TEXT_LEN];
        text[..PREFIX.len()].copy_from_slice(PREFIX);
        BASE32_LOWER.encode_mut(&bytes, &mut text[PREFIX.len()..]);
        text
    }
}

fn checksum(random: &[u8; RANDOM_LEN]) -> [u8; 4] {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(PREFIX);
    hasher.update(random);
    hasher.finalize().to_be_bytes()
}

const _: () = assert!(BODY_CHARS * 5 == BODY_BYTES * 8, "the body must be whole base32 symbols");

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_text();
        // Base32 output and the prefix are ASCII.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({self})")
    }
}

impl std::str::FromStr for Token {
    type Err = TokenError;
    fn from_str(text: &str) -> Result<Token, TokenError> {
        Token::parse(text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_shape() {
        let token = Token::from_random([7; RANDOM_LEN]);
        let text = token.to_string();
        assert_eq!(text.len(), TEXT_LEN);
        assert!(text.starts_with("gc1"));
        assert!(text[3..].bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        assert_eq!(text.parse::<Token>(), Ok(token));
        assert_eq!(text.to_ascii_uppercase().parse::<Token>(), Ok(token), "DNS 0x20 case must not matter");
    }

    #[test]
    fn generated_tokens_differ_and_parse() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(Token::parse(&a.to_text()), Ok(a));
    }

    #[test]
    fn rejects_look_alikes() {
        let text = Token::from_random([1; RANDOM_LEN]).to_string();
        assert_eq!(Token::parse(&text.as_bytes()[..34]), Err(TokenError::Length(34)));
        let mut wrong_prefix = text.clone().into_bytes();
        wrong_prefix[0] = b'x';
        assert_eq!(Token::parse(&wrong_prefix), Err(TokenError::Prefix));
        let mut bad_symbol = text.clone().into_bytes();
        bad_symbol[10] = b'1';
        assert_eq!(Token::parse(&bad_symbol), Err(TokenError::Alphabet));
        // Flip one symbol of the random part: the check part no longer matches.
        let mut flipped = text.into_bytes();
        flipped[10] = if flipped[10] == b'a' { b'b' } else { b'a' };
        assert_eq!(Token::parse(&flipped), Err(TokenError::Check));
    }

    #[test]
    fn random_look_alikes_are_rejected() {
        // A deterministic stream of random-looking candidates: none may pass the 32-bit check.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut text = *b"gc1________________________________";
            for byte in text[3..].iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = alphabet[(state % 32) as usize];
            }
            // The last symbol carries only the low bits of the check; keep it valid base32 (trailing bits 0).
            if Token::parse(&text).is_ok() {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 0);
    }
}
