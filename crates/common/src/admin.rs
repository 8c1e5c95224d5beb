//! The admin token: who may call `/admin` on order and pay, and the gateway's
//! `/admin/<route>/...` forwarding. One check, shared by the services (a middleware on
//! their whole `/admin` nest) and the gateway, so both answer the same way.
//!
//! - `ADMIN_TOKEN` unset or empty: the admin API is off, every admin path answers 404.
//! - Otherwise a request needs `Authorization: Bearer <ADMIN_TOKEN>`; without it, or with
//!   another token, 401 with `WWW-Authenticate: Bearer`.

use std::fmt;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::ApiError;

/// The variable of the token (its value is never shown by `--help`).
pub const ADMIN_TOKEN_VARIABLE: &str = "ADMIN_TOKEN";

/// Shorter tokens are refused at start-up: they can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// `ADMIN_TOKEN`, as the services and the gateway read it.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Admin")]
pub struct AdminSettings {
    /// Bearer token of the /admin API (at least 16 visible ASCII characters); unset or
    /// empty: the admin API is off (404).
    #[arg(
        long,
        env = ADMIN_TOKEN_VARIABLE,
        default_value = "",
        // `--help` would otherwise print the token it found in the environment.
        hide_env_values = true,
        value_parser = AdminAuth::parse
    )]
    pub admin_token: AdminAuth,
}

/// Whether the admin API is on, and with which token. Keeps only the token's SHA-256, and
/// never prints it (a config may be logged with `{:?}`).
#[derive(Clone, Default)]
pub struct AdminAuth {
    digest: Option<[u8; 32]>,
}

/// Why a request may not use the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token is configured: the admin API does not exist.
    Off,
    /// No bearer token, or not the configured one.
    Unauthorized,
}

impl AdminAuth {
    /// The admin API off.
    pub fn off() -> Self {
        Self::default()
    }

    /// `ADMIN_TOKEN`'s value: blank is off; otherwise at least [`MIN_TOKEN_LEN`] visible
    /// ASCII characters (what an `Authorization` header can carry unchanged).
    pub fn parse(token: &str) -> Result<Self, String> {
        if token.trim().is_empty() {
            return Ok(Self::off());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the admin token must be visible ASCII, without spaces".into());
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the admin token must have at least {MIN_TOKEN_LEN} characters"
            ));
        }
        Ok(Self {
            digest: Some(digest(token.as_bytes())),
        })
    }

    pub fn is_on(&self) -> bool {
        self.digest.is_some()
    }

    /// Whether `headers` carry `Authorization: Bearer <the token>`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let expected = self.digest.as_ref().ok_or(Denied::Off)?;
        let presented = bearer(headers).ok_or(Denied::Unauthorized)?;
        // A plain `==` stops at the first differing byte, so its time leaks how long a
        // matching prefix is, and a token can be guessed byte by byte. Hashing both sides
        // gives two 32-byte digests whatever the lengths (no early return on a length
        // mismatch either), and `ct_eq` compares every byte.
        if bool::from(digest(presented).ct_eq(expected)) {
            Ok(())
        } else {
            Err(Denied::Unauthorized)
        }
    }
}

impl fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_on() {
            "AdminAuth(token set)"
        } else {
            "AdminAuth(off)"
        })
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Off => {
                ApiError::NotFound("the admin API is off (ADMIN_TOKEN is not set)".into())
            }
            Denied::Unauthorized => ApiError::Unauthorized(
                "the admin API needs the header Authorization: Bearer <ADMIN_TOKEN>".into(),
            ),
        }
    }
}

/// Middleware for a whole `/admin` router: `axum::middleware::from_fn_with_state(auth,
/// require_admin)`.
pub async fn require_admin(
    State(auth): State<AdminAuth>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(denied) => ApiError::from(denied).into_response(),
    }
}

/// The credentials of `Authorization: Bearer <credentials>` (the scheme is
/// case-insensitive, RFC 9110 §11.1), as bytes: no UTF-8 needed to compare.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let credentials = rest.trim_ascii();
    (!credentials.is_empty()).then_some(credentials)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const TOKEN: &str = "a-long-enough-admin-token";

    fn with(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        headers
    }

    #[test]
    fn only_the_configured_bearer_token_passes() {
        let auth = AdminAuth::parse(TOKEN).unwrap();
        assert!(auth.is_on());
        assert_eq!(auth.check(&with(&format!("Bearer {TOKEN}"))), Ok(()));
        assert_eq!(auth.check(&with(&format!("bearer  {TOKEN} "))), Ok(()));
        for wrong in [
            format!("Bearer {TOKEN}x"),
            format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
            "Bearer x".to_string(),
            format!("Basic {TOKEN}"),
            TOKEN.to_string(),
            "Bearer ".to_string(),
        ] {
            assert_eq!(
                auth.check(&with(&wrong)),
                Err(Denied::Unauthorized),
                "{wrong}"
            );
        }
        assert_eq!(auth.check(&HeaderMap::new()), Err(Denied::Unauthorized));
    }

    #[test]
    fn blank_is_off_and_weak_tokens_are_refused() {
        for blank in ["", "  "] {
            let auth = AdminAuth::parse(blank).unwrap();
            assert!(!auth.is_on());
            assert_eq!(
                auth.check(&with(&format!("Bearer {TOKEN}"))),
                Err(Denied::Off)
            );
        }
        assert!(AdminAuth::parse("short").is_err());
        assert!(AdminAuth::parse("with a space in the middle").is_err());
        assert_eq!(
            format!("{:?}", AdminAuth::parse(TOKEN).unwrap()),
            "AdminAuth(token set)"
        );
    }

    #[test]
    fn denials_are_a_404_and_a_401_naming_the_scheme() {
        let off = ApiError::from(Denied::Off).into_response();
        assert_eq!(off.status(), 404);
        let unauthorized = ApiError::from(Denied::Unauthorized).into_response();
        assert_eq!(unauthorized.status(), 401);
        assert_eq!(unauthorized.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
