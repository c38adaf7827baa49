//! Tokens: HS256 JWTs only, with the claims of PROTOCOLS.md. The accepted algorithm is
//! fixed here and never taken from the token header.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Leeway for `exp` and `nbf`, as PROTOCOLS.md allows for clock skew.
const LEEWAY_SECS: u64 = 60;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("token has no exp claim (auth.require_exp is on)")]
    MissingExp,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token is for room {token_room:?}, not {room:?}")]
    WrongRoom { token_room: String, room: String },
    #[error("{0}")]
    BadId(String),
    #[error(
        "token lives too long: it expires in {expires_in_s} s, more than auth.max_token_ttl_s \
         ({max_s} s) from now"
    )]
    TooLong { expires_in_s: u64, max_s: u64 },
    #[error("token has no exp claim and auth.max_token_ttl_s ({max_s} s) is set")]
    NoExpWithMaxTtl { max_s: u64 },
}

/// The claims as they appear on the wire; aliases follow PROTOCOLS.md.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(rename = "userId", alias = "sub")]
    user_id: String,
    #[serde(
        rename = "userName",
        alias = "name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    user_name: Option<String>,
    #[serde(
        rename = "roomId",
        alias = "room",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    room_id: Option<String>,
    /// Required unless `auth.require_exp` is off (checked by the validation, which names
    /// the claim, before these claims are read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(
        rename = "canPublish",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    can_publish: Option<bool>,
    #[serde(
        rename = "canSubscribe",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    can_subscribe: Option<bool>,
}

/// Who a verified token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub user_name: String,
    /// When set, the token is valid for this room only.
    pub room: Option<String>,
    pub can_publish: bool,
    pub can_subscribe: bool,
}

impl Identity {
    /// Checks the token's room scope against the room a client asks for.
    pub fn check_room(&self, room: &str) -> Result<(), AuthError> {
        match &self.room {
            Some(r) if r != room => Err(AuthError::WrongRoom {
                token_room: r.clone(),
                room: room.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// What a minted token carries.
pub struct Grant<'a> {
    pub user_id: &'a str,
    pub user_name: Option<&'a str>,
    pub room: Option<&'a str>,
    pub ttl: Duration,
}

/// Verifies and mints tokens with one HS256 secret.
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    /// `auth.max_token_ttl_s`: the latest `exp` accepted, from now.
    max_ttl: Option<Duration>,
}

impl Authenticator {
    /// Tokens must carry `exp` (the default of `auth.require_exp`).
    pub fn new(secret: &[u8]) -> Self {
        Self::with_require_exp(secret, true)
    }

    /// `require_exp` off accepts tokens without `exp` (they never expire); an `exp` that is
    /// there is checked either way.
    pub fn with_require_exp(secret: &[u8], require_exp: bool) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let required: &[&str] = if require_exp { &["exp"] } else { &[] };
        validation.set_required_spec_claims(required);
        Authenticator {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            max_ttl: None,
        }
    }

    /// Refuses tokens whose `exp` is more than `max` from now (beyond the clock-skew
    /// leeway), and tokens without `exp` (`auth.max_token_ttl_s`); `None` accepts any.
    pub fn with_max_ttl(mut self, max: Option<Duration>) -> Self {
        self.max_ttl = max;
        self
    }

    /// Verifies a token and returns the identity it carries.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm must be HS256".into()),
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthError::MissingExp,
                ErrorKind::MissingRequiredClaim(c) => {
                    AuthError::Invalid(format!("missing claim {c}"))
                }
                _ => AuthError::Invalid(e.to_string()),
            })?;
        let c = data.claims;
        if let Some(max) = self.max_ttl {
            let max_s = max.as_secs();
            let exp = c.exp.ok_or(AuthError::NoExpWithMaxTtl { max_s })?;
            let expires_in_s = exp.saturating_sub(unix_now());
            if expires_in_s > max_s + LEEWAY_SECS {
                return Err(AuthError::TooLong {
                    expires_in_s,
                    max_s,
                });
            }
        }
        validate_id("userId", &c.user_id).map_err(AuthError::BadId)?;
        if let Some(room) = &c.room_id {
            validate_id("roomId", room).map_err(AuthError::BadId)?;
        }
        Ok(Identity {
            user_name: c.user_name.unwrap_or_else(|| c.user_id.clone()),
            user_id: c.user_id,
            room: c.room_id,
            can_publish: c.can_publish.unwrap_or(true),
            can_subscribe: c.can_subscribe.unwrap_or(true),
        })
    }

    /// Mints a token; returns it with its expiry (unix seconds).
    pub fn mint(&self, grant: &Grant) -> (String, u64) {
        let exp = unix_now() + grant.ttl.as_secs();
        let claims = Claims {
            user_id: grant.user_id.to_string(),
            user_name: grant.user_name.map(str::to_string),
            room_id: grant.room.map(str::to_string),
            exp: Some(exp),
            nbf: None,
            can_publish: None,
            can_subscribe: None,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding of plain claims cannot fail");
        (token, exp)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Room and user ids: 1-128 chars of `[A-Za-z0-9_.:-]`.
pub fn validate_id(what: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} must be 1-128 characters of A-Z a-z 0-9 _ . : - (got {:?})",
            truncate(id, 40)
        ))
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A random secret for dev mode, base64url without padding.
pub fn random_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret-0123456789";

    fn b64(v: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    fn sign(alg: Algorithm, claims: &serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn future() -> u64 {
        unix_now() + 600
    }

    #[test]
    fn accepts_a_good_token_with_aliases() {
        let a = Authenticator::new(SECRET);
        let t = sign(
            Algorithm::HS256,
            &json!({"sub": "u1", "name": "Ann", "room": "r1", "exp": future(), "canPublish": false}),
            SECRET,
        );
        let id = a.verify(&t).unwrap();
        assert_eq!(id.user_id, "u1");
        assert_eq!(id.user_name, "Ann");
        assert_eq!(id.room.as_deref(), Some("r1"));
        assert!(!id.can_publish);
        assert!(id.can_subscribe);
    }

    #[test]
    fn minted_token_round_trips_and_user_name_defaults_to_id() {
        let a = Authenticator::new(SECRET);
        let (t, exp) = a.mint(&Grant {
            user_id: "bob",
            user_name: None,
            room: Some("room-1"),
            ttl: Duration::from_secs(3600),
        });
        assert!(exp > unix_now());
        let id = a.verify(&t).unwrap();
        assert_eq!(id.user_name, "bob");
        assert!(id.check_room("room-1").is_ok());
    }

    #[test]
    fn rejects_alg_none() {
        let a = Authenticator::new(SECRET);
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(json!({"userId": "u", "exp": future()})
            .to_string()
            .as_bytes());
        assert!(a.verify(&format!("{header}.{body}.")).is_err());
        assert!(a.verify(&format!("{header}.{body}")).is_err());
    }

    #[test]
    fn rejects_other_hmac_algorithms() {
        let a = Authenticator::new(SECRET);
        let claims = json!({"userId": "u", "exp": future()});
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let t = sign(alg, &claims, SECRET);
            assert!(
                matches!(a.verify(&t), Err(AuthError::Invalid(_))),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn rejects_rs256_even_when_signed_over_the_secret() {
        // The classic confusion attack: an RS256 header with an HMAC signature made from
        // the secret. Our verifier must not pick the algorithm from the header.
        let a = Authenticator::new(SECRET);
        let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
        let body = b64(json!({"userId": "u", "exp": future()})
            .to_string()
            .as_bytes());
        let hs = sign(
            Algorithm::HS256,
            &json!({"userId": "u", "exp": future()}),
            SECRET,
        );
        let sig = hs.rsplit('.').next().unwrap();
        assert!(a.verify(&format!("{header}.{body}.{sig}")).is_err());
    }

    #[test]
    fn rejects_wrong_signature() {
        let a = Authenticator::new(SECRET);
        let t = sign(
            Algorithm::HS256,
            &json!({"userId": "u", "exp": future()}),
            b"another-secret-xxxxxx",
        );
        assert_eq!(
            a.verify(&t),
            Err(AuthError::Invalid("bad signature".into()))
        );
    }

    #[test]
    fn rejects_expired_and_future_nbf_and_missing_exp() {
        let a = Authenticator::new(SECRET);
        let expired = sign(
            Algorithm::HS256,
            &json!({"userId": "u", "exp": unix_now() - 120}),
            SECRET,
        );
        assert_eq!(a.verify(&expired), Err(AuthError::Expired));
        let nbf = sign(
            Algorithm::HS256,
            &json!({"userId": "u", "exp": future(), "nbf": unix_now() + 300}),
            SECRET,
        );
        assert_eq!(a.verify(&nbf), Err(AuthError::NotYetValid));
        let no_exp = sign(Algorithm::HS256, &json!({"userId": "u"}), SECRET);
        assert!(a.verify(&no_exp).is_err());
    }

    #[test]
    fn require_exp_on_refuses_a_token_without_exp_naming_the_claim() {
        let a = Authenticator::with_require_exp(SECRET, true);
        let no_exp = sign(
            Algorithm::HS256,
            &json!({"userId": "u", "roomId": "r1", "userName": "Ann"}),
            SECRET,
        );
        let err = a.verify(&no_exp).unwrap_err();
        assert_eq!(err, AuthError::MissingExp);
        let text = err.to_string();
        assert_eq!(text, "token has no exp claim (auth.require_exp is on)");
        assert!(!text.contains("missing field"), "{text}");
        assert!(!text.contains("line 1"), "{text}");
        // Authenticator::new is the same as require_exp on.
        assert_eq!(
            Authenticator::new(SECRET).verify(&no_exp),
            Err(AuthError::MissingExp)
        );
    }

    #[test]
    fn require_exp_off_accepts_a_token_without_exp_but_still_checks_one_that_is_there() {
        let a = Authenticator::with_require_exp(SECRET, false);
        let no_exp = sign(
            Algorithm::HS256,
            &json!({"userId": "u", "roomId": "r1"}),
            SECRET,
        );
        let id = a.verify(&no_exp).unwrap();
        assert_eq!((id.user_id.as_str(), id.room.as_deref()), ("u", Some("r1")));
        let expired = sign(
            Algorithm::HS256,
            &json!({"userId": "u", "exp": unix_now() - 120}),
            SECRET,
        );
        assert_eq!(a.verify(&expired), Err(AuthError::Expired));
        let future_nbf = sign(
            Algorithm::HS256,
            &json!({"userId": "u", "nbf": unix_now() + 300}),
            SECRET,
        );
        assert_eq!(a.verify(&future_nbf), Err(AuthError::NotYetValid));
        // The signature and the algorithm are checked as always.
        let forged = sign(
            Algorithm::HS256,
            &json!({"userId": "u"}),
            b"another-secret-xxxxxx",
        );
        assert!(a.verify(&forged).is_err());
        let hs512 = sign(Algorithm::HS512, &json!({"userId": "u"}), SECRET);
        assert!(a.verify(&hs512).is_err());
    }

    #[test]
    fn max_ttl_refuses_tokens_that_live_too_long_and_tokens_without_exp() {
        let day = Duration::from_secs(86_400);
        let a = Authenticator::with_require_exp(SECRET, false).with_max_ttl(Some(day));
        // Year 3000.
        let forever = sign(
            Algorithm::HS256,
            &json!({"userId": "u", "exp": 32_503_680_000u64}),
            SECRET,
        );
        let err = a.verify(&forever).unwrap_err();
        assert!(
            matches!(err, AuthError::TooLong { max_s: 86_400, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("auth.max_token_ttl_s"), "{err}");
        let no_exp = sign(Algorithm::HS256, &json!({"userId": "u"}), SECRET);
        let err = a.verify(&no_exp).unwrap_err();
        assert_eq!(err, AuthError::NoExpWithMaxTtl { max_s: 86_400 });
        assert!(err.to_string().contains("auth.max_token_ttl_s"), "{err}");
        // Within the maximum (the clock-skew leeway included), and minted tokens: fine.
        let hour = sign(
            Algorithm::HS256,
            &json!({"userId": "u", "exp": unix_now() + 3600}),
            SECRET,
        );
        assert!(a.verify(&hour).is_ok());
        let edge = sign(
            Algorithm::HS256,
            &json!({"userId": "u", "exp": unix_now() + 86_400 + 30}),
            SECRET,
        );
        assert!(a.verify(&edge).is_ok());
        let (minted, _) = a.mint(&Grant {
            user_id: "m",
            user_name: None,
            room: None,
            ttl: day,
        });
        assert!(a.verify(&minted).is_ok());
        // Unset (the default): the year 3000 passes.
        assert!(Authenticator::new(SECRET).verify(&forever).is_ok());
    }

    #[test]
    fn nbf_within_leeway_is_accepted() {
        let a = Authenticator::new(SECRET);
        let t = sign(
            Algorithm::HS256,
            &json!({"userId": "u", "exp": future(), "nbf": unix_now() + 30}),
            SECRET,
        );
        assert!(a.verify(&t).is_ok());
    }

    #[test]
    fn token_for_another_room_is_refused() {
        let a = Authenticator::new(SECRET);
        let t = sign(
            Algorithm::HS256,
            &json!({"userId": "u", "roomId": "a", "exp": future()}),
            SECRET,
        );
        let id = a.verify(&t).unwrap();
        assert!(matches!(
            id.check_room("b"),
            Err(AuthError::WrongRoom { .. })
        ));
        assert!(id.check_room("a").is_ok());
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("roomId", "room_1.a:b-c").is_ok());
        assert!(validate_id("roomId", "").is_err());
        assert!(validate_id("roomId", "has space").is_err());
        assert!(validate_id("roomId", &"x".repeat(129)).is_err());
        let a = Authenticator::new(SECRET);
        let t = sign(
            Algorithm::HS256,
            &json!({"userId": "bad id", "exp": future()}),
            SECRET,
        );
        assert!(matches!(a.verify(&t), Err(AuthError::BadId(_))));
    }
}
