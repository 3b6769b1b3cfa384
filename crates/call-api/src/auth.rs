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
    /// Parses `key1,tenant:key2,…`. Keys must be at least 16 characters.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, entry) in raw.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let (tenant, key) = match entry.split_once(':') {
                Some((t, k)) => (t.trim(), k.trim()),
                None => (DEFAULT_TENANT, entry),
            };
            if tenant.is_empty() || !tenant.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("entry {} has an invalid tenant (letters, digits, - and _ only)", i + 1));
            }
            if key.len() < 16 {
                return Err(format!("entry {} is shorter than 16 characters", i + 1));
            }
            keys.push((digest(key), tenant.to_string()));
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
    pub fn new(keys: ApiKeys, limits: &crate::config::LimitsConfig) -> Self {
        let limiter = RateLimiter::new(limits.rate_per_second, limits.rate_burst, keys.len()).map(Arc::new);
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
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
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

#[cfg(test)]
mod tests {
    use super::*;

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
