//! Who a request of the one-shot SDP dialect (`POST /join`, `GET /connect`) speaks for
//! (PROTOCOLS.md section 4): a Bearer JWT (`Authorization` header or `?token=`), or,
//! only when `auth.trust_user_claim_header` is on, the `X-User-Claim` header that an
//! upstream auth proxy sets, holding JSON `{"userid", "clientid"}`.
//!
//! A token, when one is sent, always decides (and a bad one is refused even if a claim
//! header is there too); the claim header is read only without a token. Pure: no I/O.

use serde::Deserialize;

use crate::auth::{validate_id, AuthError, Authenticator, Identity};

/// The header an auth proxy sets (names are case-insensitive).
pub const USER_CLAIM_HEADER: &str = "X-User-Claim";

/// The identity an auth proxy vouches for: a user and one of its clients (devices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserClaim {
    pub user_id: String,
    pub client_id: String,
}

/// The header's JSON; both fields are required (checked after parsing, with a message
/// that names them).
#[derive(Deserialize)]
struct RawClaim {
    #[serde(rename = "userid")]
    user_id: String,
    #[serde(rename = "clientid", default)]
    client_id: Option<String>,
}

/// Who a one-shot request speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A verified HS256 token.
    Token(Identity),
    /// The `X-User-Claim` header of a trusted auth proxy.
    Claim(UserClaim),
}

impl Caller {
    pub fn user_id(&self) -> &str {
        match self {
            Caller::Token(i) => &i.user_id,
            Caller::Claim(c) => &c.user_id,
        }
    }

    /// The client (device) id of a claim; tokens carry none.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Caller::Token(_) => None,
            Caller::Claim(c) => Some(&c.client_id),
        }
    }

    /// A token scoped to a room is valid for that conversation only; a claim has no
    /// scope.
    pub fn check_room(&self, room: &str) -> Result<(), AuthError> {
        match self {
            Caller::Token(i) => i.check_room(room),
            Caller::Claim(_) => Ok(()),
        }
    }
}

/// Why no identity was found. [`IdentityError::status`] is the HTTP answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Neither a token nor (when trusted) a claim header.
    #[error("{}", missing_message(*.trusted, *.claim_ignored))]
    Missing { trusted: bool, claim_ignored: bool },
    /// The claim header is there and trusted but is not `{"userid", "clientid"}` with
    /// both ids.
    #[error("malformed X-User-Claim: {0}")]
    BadClaim(String),
    /// A token that does not verify.
    #[error(transparent)]
    BadToken(AuthError),
}

fn missing_message(trusted: bool, claim_ignored: bool) -> String {
    let hint = if trusted {
        " or the X-User-Claim header"
    } else if claim_ignored {
        "; X-User-Claim is not trusted here (auth.trust_user_claim_header is off)"
    } else {
        ""
    };
    format!("no identity: send a token (Authorization: Bearer or ?token=){hint}")
}

impl IdentityError {
    /// 400 for a missing or unparseable identity, 401 for a bad token.
    pub fn status(&self) -> u16 {
        match self {
            IdentityError::Missing { .. } | IdentityError::BadClaim(_) => 400,
            IdentityError::BadToken(_) => 401,
        }
    }

    /// The `error.code` of the JSON answer.
    pub fn code(&self) -> &'static str {
        match self {
            IdentityError::Missing { .. } | IdentityError::BadClaim(_) => "bad_request",
            IdentityError::BadToken(_) => "unauthorized",
        }
    }
}

/// Finds the caller of a one-shot request.
///
/// `token` is the Bearer token (header, else `?token=`; an empty one counts as none),
/// `user_claim` the raw `X-User-Claim` header value, `trust_user_claim` the setting
/// `auth.trust_user_claim_header`.
pub fn identify(
    token: Option<&str>,
    user_claim: Option<&str>,
    trust_user_claim: bool,
    auth: &Authenticator,
) -> Result<Caller, IdentityError> {
    if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
        return auth
            .verify(token)
            .map(Caller::Token)
            .map_err(IdentityError::BadToken);
    }
    match user_claim {
        Some(claim) if trust_user_claim => parse_claim(claim).map(Caller::Claim),
        claim => Err(IdentityError::Missing {
            trusted: trust_user_claim,
            claim_ignored: claim.is_some(),
        }),
    }
}

/// Parses `{"userid": "...", "clientid": "..."}`: both are required, as the original
/// server (Beep backend-webrtc) requires them, and both follow the id rules (1-128
/// characters of `A-Z a-z 0-9 _ . : -`). Other fields are ignored.
pub fn parse_claim(value: &str) -> Result<UserClaim, IdentityError> {
    let bad = |m: String| IdentityError::BadClaim(m);
    let json: serde_json::Value = serde_json::from_str(value.trim())
        .map_err(|e| bad(format!("expected JSON {{\"userid\", \"clientid\"}}: {e}")))?;
    if !json.is_object() {
        return Err(bad(
            "expected a JSON object {\"userid\", \"clientid\"}".into()
        ));
    }
    let raw: RawClaim = serde_json::from_value(json)
        .map_err(|e| bad(format!("expected {{\"userid\", \"clientid\"}}: {e}")))?;
    let Some(client_id) = raw.client_id else {
        return Err(bad(
            "clientid is missing: the header must carry both userid and clientid".into(),
        ));
    };
    validate_id("userid", &raw.user_id).map_err(bad)?;
    validate_id("clientid", &client_id).map_err(bad)?;
    Ok(UserClaim {
        user_id: raw.user_id,
        client_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Grant;
    use std::time::Duration;

    const SECRET: &[u8] = b"identity-test-secret-0123456789";

    fn auth() -> Authenticator {
        Authenticator::new(SECRET)
    }

    fn token(user: &str, room: Option<&str>) -> String {
        auth()
            .mint(&Grant {
                user_id: user,
                user_name: None,
                room,
                ttl: Duration::from_secs(600),
            })
            .0
    }

    const CLAIM: &str = r#"{"userid": "carol", "clientid": "dev-1"}"#;

    #[test]
    fn a_token_names_the_user() {
        let t = token("alice", Some("c1"));
        let caller = identify(Some(&t), None, false, &auth()).unwrap();
        assert_eq!(caller.user_id(), "alice");
        assert_eq!(caller.client_id(), None);
        assert!(caller.check_room("c1").is_ok());
        assert!(caller.check_room("c2").is_err());
    }

    #[test]
    fn a_token_decides_even_when_a_claim_is_trusted() {
        let t = token("alice", None);
        let caller = identify(Some(&t), Some(CLAIM), true, &auth()).unwrap();
        assert_eq!(caller.user_id(), "alice");
        let err = identify(Some("not-a-jwt"), Some(CLAIM), true, &auth()).unwrap_err();
        assert_eq!((err.status(), err.code()), (401, "unauthorized"));
        let other = Authenticator::new(b"another-secret-0123456789")
            .mint(&Grant {
                user_id: "alice",
                user_name: None,
                room: None,
                ttl: Duration::from_secs(600),
            })
            .0;
        assert_eq!(
            identify(Some(&other), None, false, &auth())
                .unwrap_err()
                .status(),
            401
        );
    }

    #[test]
    fn a_trusted_claim_names_the_user_and_client() {
        let caller = identify(None, Some(CLAIM), true, &auth()).unwrap();
        assert_eq!(caller.user_id(), "carol");
        assert_eq!(caller.client_id(), Some("dev-1"));
        assert!(caller.check_room("anything").is_ok());
        // An empty token (`?token=`) counts as none.
        assert_eq!(
            identify(Some(" "), Some(CLAIM), true, &auth()).unwrap(),
            caller
        );
        // Other fields are ignored.
        let c = parse_claim(r#"{"userid": "u1", "clientid": "c1", "extra": 1}"#).unwrap();
        assert_eq!((c.user_id.as_str(), c.client_id.as_str()), ("u1", "c1"));
    }

    #[test]
    fn a_claim_needs_both_userid_and_clientid() {
        for bad in [
            r#"{"userid": "u1"}"#,
            r#"{"userid": "u1", "clientid": null}"#,
            r#"{"userid": "u1", "clientid": ""}"#,
            r#"{"clientid": "c1"}"#,
            r#"{"userid": "", "clientid": "c1"}"#,
        ] {
            let err = identify(None, Some(bad), true, &auth()).unwrap_err();
            assert!(
                matches!(err, IdentityError::BadClaim(_)),
                "{bad:?}: {err:?}"
            );
            assert_eq!(err.status(), 400, "{bad:?}");
        }
        let err = parse_claim(r#"{"userid": "u1"}"#).unwrap_err().to_string();
        assert!(err.contains("clientid") && err.contains("both"), "{err}");
    }

    #[test]
    fn an_untrusted_claim_is_ignored() {
        let err = identify(None, Some(CLAIM), false, &auth()).unwrap_err();
        assert_eq!(
            err,
            IdentityError::Missing {
                trusted: false,
                claim_ignored: true
            }
        );
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("not trusted"), "{err}");
    }

    #[test]
    fn no_identity_is_a_400() {
        for trusted in [false, true] {
            let err = identify(None, None, trusted, &auth()).unwrap_err();
            assert_eq!((err.status(), err.code()), (400, "bad_request"));
        }
        let err = identify(None, None, true, &auth()).unwrap_err();
        assert!(err.to_string().contains("X-User-Claim"), "{err}");
    }

    #[test]
    fn malformed_claims_are_a_400() {
        for bad in [
            "",
            "carol",
            "{",
            "[\"carol\"]",
            "\"carol\"",
            "{}",
            r#"{"clientid": "d"}"#,
            r#"{"userid": 7}"#,
            r#"{"userid": ""}"#,
            r#"{"userid": "has space"}"#,
            r#"{"userid": "u", "clientid": "bad/id"}"#,
            r#"{"userId": "camel-case-is-not-the-field"}"#,
        ] {
            let err = identify(None, Some(bad), true, &auth()).unwrap_err();
            assert!(
                matches!(err, IdentityError::BadClaim(_)),
                "{bad:?}: {err:?}"
            );
            assert_eq!(err.status(), 400, "{bad:?}");
        }
    }
}
