//! Bearer API keys: stored as SHA-256 digests, compared in constant time against every
//! configured key, each optionally scoped to a tenant (`tenant:key`).

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::Response,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{error::ApiError, limits::RateLimiter};

/// The tenant a request acts for; calls are visible only within their tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

/// Tenant of keys configured without one.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Arc<Vec<([u8; 32], String)>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.keys.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Longest key: a key the server's header limits would cut could never authenticate.
    pub const MAX_KEY_LEN: usize = 512;

    /// Parses `key1,tenant:key2,…`. Keys are 16–512 printable ASCII characters without `:` or
    /// `,`; each is listed once. Errors name the entry's position, never its value.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut keys: Vec<([u8; 32], String)> = Vec::new();
        for (i, entry) in raw.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let n = i + 1;
            let mut parts = entry.split(':');
            let (tenant, key) = match (parts.next(), parts.next(), parts.next()) {
                (Some(key), None, _) => (DEFAULT_TENANT, key),
                (Some(t), Some(k), None) => (t.trim(), k.trim()),
                _ => return Err(format!("entry {n} has more than one ':' (write tenant:key)")),
            };
            if tenant.is_empty() || !tenant.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("entry {n} has an invalid tenant (letters, digits, - and _ only)"));
            }
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("entry {n} has characters a bearer header cannot carry (printable ASCII only)"));
            }
            if key.len() < 16 {
                return Err(format!("entry {n} is shorter than 16 characters"));
            }
            if key.len() > Self::MAX_KEY_LEN {
                return Err(format!("entry {n} is longer than {} characters", Self::MAX_KEY_LEN));
            }
            let d = digest(key);
            if let Some(first) = keys.iter().position(|(k, _)| *k == d) {
                return Err(format!(
                    "entry {n} repeats the key of entry {} (each key belongs to one tenant)",
                    first + 1
                ));
            }
            keys.push((d, tenant.to_string()));
        }
        Ok(Self { keys: Arc::new(keys) })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The tenant of `presented`, checking every key so timing does not reveal which matched.
    pub fn authenticate(&self, presented: &str) -> Option<Tenant> {
        self.authenticate_key(presented).map(|(_, tenant)| tenant)
    }

    /// The position of the matching key among the configured ones, and its tenant.
    pub fn authenticate_key(&self, presented: &str) -> Option<(usize, Tenant)> {
        let d = digest(presented);
        let mut found: Option<(usize, &String)> = None;
        for (i, (stored, tenant)) in self.keys.iter().enumerate() {
            if bool::from(stored.ct_eq(&d)) {
                found = Some((i, tenant));
            }
        }
        found.map(|(i, t)| (i, Tenant(t.clone())))
    }
}

/// What the API-key middleware checks: the key, then the key's rate.
#[derive(Clone, Debug)]
pub struct Gate {
    pub keys: ApiKeys,
    pub limiter: Option<Arc<RateLimiter>>,
}

impl Gate {
    /// A gate for `keys`, each limited to `rate_per_second` with bursts of `rate_burst`
    /// (`rate_per_second` 0: no limit).
    pub fn new(keys: ApiKeys, rate_per_second: f64, rate_burst: u32) -> Self {
        let limiter = RateLimiter::new(rate_per_second, rate_burst, keys.len()).map(Arc::new);
        Self { keys, limiter }
    }
}

/// Middleware: requires `Authorization: Bearer <key>`, applies the key's rate limit and adds the
/// [`Tenant`] to the request.
pub async fn require_api_key(State(gate): State<Gate>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .ok_or(ApiError::Unauthorized)?;
    let (index, tenant) = gate.keys.authenticate_key(presented).ok_or(ApiError::Unauthorized)?;
    if let Some(limiter) = &gate.limiter {
        limiter
            .check(index, tokio::time::Instant::now())
            .map_err(|retry_after_seconds| ApiError::TooManyRequests { retry_after_seconds })?;
    }
    req.extensions_mut().insert(tenant);
    Ok(next.run(req).await)
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("bEaReR  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn api_key_mistakes_are_refused_by_position_without_the_value() {
        let err = |raw: &str| ApiKeys::parse(raw).unwrap_err();
        let key = "k-aaaaaaaaaaaaaaaa";
        let e = err(&format!("{key},acme:{key}"));
        assert!(e.contains("entry 2 repeats the key of entry 1") && !e.contains(key), "{e}");
        let e = err(&format!("{key},acme:k-bbbbbbbb:bbbbbbbb"));
        assert!(e.contains("entry 2 has more than one ':'") && !e.contains("bbbb"), "{e}");
        let e = err("k-aaaaaaaaaaaaaaaé");
        assert!(e.contains("entry 1") && e.contains("printable ASCII"), "{e}");
        let e = err(&format!("{key},{}", "k".repeat(513)));
        assert!(e.contains("entry 2 is longer than 512"), "{e}");
        let e = err("k-aaaa aaaaaaaaaaaaaaaaa");
        assert!(e.contains("entry 1"), "{e}");
    }

    #[test]
    fn keys_scope_tenants_and_reject_others() {
        let keys = ApiKeys::parse("k-aaaaaaaaaaaaaaaa, acme:k-bbbbbbbbbbbbbbbb").unwrap();
        assert_eq!(keys.authenticate("k-aaaaaaaaaaaaaaaa"), Some(Tenant("default".into())));
        assert_eq!(keys.authenticate("k-bbbbbbbbbbbbbbbb"), Some(Tenant("acme".into())));
        assert_eq!(keys.authenticate("k-bbbbbbbbbbbbbbbc"), None);
        assert_eq!(keys.authenticate(""), None);
        assert!(ApiKeys::parse("short").is_err());
        assert!(ApiKeys::parse("bad tenant:k-aaaaaaaaaaaaaaaa").is_err());
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 configured)");
    }
}
