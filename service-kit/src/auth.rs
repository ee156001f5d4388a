//! Bearer-token authentication: JWTs signed HS256 (shared secret) or RS256 (public
//! key), with claims `sub`, `role` and `exp`.

use crate::config::AuthArgs;
use crate::error::{ApiError, ErrorCode};
use axum::extract::{FromRef, FromRequestParts};
use http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What the caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Acts on their own accounts only.
    Customer,
    /// Reads every account; takes cash in and out for any.
    Teller,
    /// Reads everything; operates the system.
    Admin,
    /// A machine identity, such as a payment rail: posts the tasks it is entitled to
    /// (`accounts.payment.receive`); reads no account.
    Service,
}

impl Role {
    /// The role's name, as in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Teller => "teller",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }
}

/// The claims this service reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: i64,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub role: Role,
}

impl Caller {
    /// Tellers and admins act for the bank, not for themselves.
    pub fn is_staff(&self) -> bool {
        matches!(self.role, Role::Teller | Role::Admin)
    }

    /// Refuses a machine identity (role `service`) where a person acts: it holds no
    /// accounts and moves no money of its own (a payment rail posts tasks instead).
    pub fn person(&self) -> Result<(), ApiError> {
        if self.role == Role::Service {
            return Err(ApiError::new(ErrorCode::Forbidden, "a service identity holds no accounts"));
        }
        Ok(())
    }

    /// May this caller read what `owner` owns?
    pub fn may_read(&self, owner: &str) -> bool {
        self.is_staff() || self.subject == owner
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("set JWT_SECRET, JWT_KEYS or JWT_PUBLIC_KEY_FILE: tokens cannot be checked without one")]
    NoKey,
    #[error("{0} must be at least {MIN_SECRET_BYTES} bytes of random")]
    WeakSecret(String),
    #[error("{0} is a secret written in the repository (an example): anyone can sign tokens with it")]
    KnownSecret(String),
    #[error("JWT_KEYS must be `kid=secret` pairs separated by commas, each kid once")]
    KeySet,
    #[error("cannot read the RS256 public key: {0}")]
    PublicKey(String),
}

/// The shortest HS256 secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// Every secret written in this repository (examples, defaults of old): a service
/// refuses to start with one. `tests` checks that no file of the repository assigns
/// `JWT_SECRET` a value missing from this list.
pub const KNOWN_SECRETS: &[&str] = &[
    "change-me-to-32-random-bytes-please",
    "compose-dev-only-secret-0123456789abcdef",
    "test-secret-0123456789abcdef",
    "bench-secret-0123456789abcdef",
];

fn checked_secret(name: &str, secret: &str) -> Result<DecodingKey, AuthSetupError> {
    if KNOWN_SECRETS.contains(&secret) {
        return Err(AuthSetupError::KnownSecret(name.to_owned()));
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthSetupError::WeakSecret(name.to_owned()));
    }
    Ok(DecodingKey::from_secret(secret.as_bytes()))
}

/// Checks tokens. Shared by every request through `Arc`.
pub struct JwtVerifier {
    /// For HS256 tokens without a `kid`.
    hs256: Option<DecodingKey>,
    /// For HS256 tokens with a `kid`.
    keys: std::collections::HashMap<String, DecodingKey>,
    rs256: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    max_ttl_secs: i64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("rs256", &self.rs256.is_some())
            .finish()
    }
}

impl JwtVerifier {
    pub fn from_args(args: &AuthArgs) -> Result<Self, AuthSetupError> {
        let rs256 = match &args.jwt_public_key_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| AuthSetupError::PublicKey(e.to_string()))?;
                Some(DecodingKey::from_rsa_pem(&pem).map_err(|e| AuthSetupError::PublicKey(e.to_string()))?)
            }
            None => None,
        };
        let hs256 = match &args.jwt_secret {
            Some(secret) => Some(checked_secret("JWT_SECRET", secret.expose())?),
            None => None,
        };
        let mut keys = std::collections::HashMap::new();
        for pair in args.jwt_keys.as_ref().map(|k| k.expose()).unwrap_or_default().split(',').filter(|p| !p.is_empty())
        {
            let (kid, secret) = pair.split_once('=').ok_or(AuthSetupError::KeySet)?;
            let key = checked_secret(&format!("JWT_KEYS[{kid}]"), secret)?;
            if kid.is_empty() || keys.insert(kid.to_owned(), key).is_some() {
                return Err(AuthSetupError::KeySet);
            }
        }
        // beside a public key, shared secrets are refused unless asked for
        let (hs256, keys) = if rs256.is_some() && !args.jwt_allow_hs256 {
            if hs256.is_some() || !keys.is_empty() {
                tracing::warn!(
                    "JWT_PUBLIC_KEY_FILE is set: HS256 tokens are refused (JWT_ALLOW_HS256=true accepts them)"
                );
            }
            (None, std::collections::HashMap::new())
        } else {
            (hs256, keys)
        };
        if hs256.is_none() && keys.is_empty() && rs256.is_none() {
            return Err(AuthSetupError::NoKey);
        }
        Ok(JwtVerifier {
            hs256,
            keys,
            rs256,
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
            max_ttl_secs: args.jwt_max_ttl_secs,
        })
    }

    /// Verifies a compact JWT and returns its caller.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let invalid = || ApiError::new(ErrorCode::InvalidToken, "the bearer token is not valid");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let key = match (header.alg, &header.kid) {
            (Algorithm::HS256, Some(kid)) => self.keys.get(kid),
            (Algorithm::HS256, None) => self.hs256.as_ref(),
            (Algorithm::RS256, _) => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(invalid)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => ApiError::new(ErrorCode::TokenExpired, "the bearer token has expired"),
            _ => invalid(),
        })?;
        // a token valid for longer than allowed: a leaked one would be good for too long
        if data.claims.exp - chrono::Utc::now().timestamp() > self.max_ttl_secs {
            return Err(ApiError::new(ErrorCode::InvalidToken, "the bearer token is valid for too long"));
        }
        // a subject never holds `:`: names with it are the services' own (the saga's
        // idempotency records are kept under `saga:accounts`), so no token can act as one
        if data.claims.sub.trim().is_empty() || data.claims.sub.contains(':') {
            return Err(invalid());
        }
        Ok(Caller { subject: data.claims.sub, role: data.claims.role })
    }
}

/// Mints an HS256 token (development tools and tests).
pub fn issue_hs256(
    secret: &str,
    subject: &str,
    role: Role,
    ttl_secs: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = Claims { sub: subject.to_owned(), role, exp: chrono::Utc::now().timestamp() + ttl_secs };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Arc<JwtVerifier>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::new(ErrorCode::MissingToken, "an Authorization: Bearer token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidToken, "the Authorization header must be `Bearer <token>`")
            })?;
        let caller = Arc::<JwtVerifier>::from_ref(state).verify(token)?;
        tracing::Span::current().record("actor", caller.subject.as_str());
        Ok(caller)
    }
}
