//! `X-Twilio-Signature` and the parameters it covers.
//!
//! Signatures follow Twilio's definition: HMAC-SHA1, keyed with the auth token, over the full
//! URL Twilio requested followed by every POST parameter sorted by name, each name immediately
//! followed by its value; base64-encoded. The URL is `PUBLIC_BASE_URL` plus the request's path
//! and query, which is why `PUBLIC_BASE_URL` must be the address Twilio is given.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha1::Sha1;

/// A Twilio call SID: `CA` and 32 lowercase hexadecimal characters, exactly (a looser rule lets
/// a signed form be re-split into other parameters).
pub fn is_call_sid(sid: &str) -> bool {
    is_sid(sid, "CA")
}

/// A Twilio account SID as Twilio sends it: `AC` and 32 lowercase hexadecimal characters.
pub fn is_account_sid(sid: &str) -> bool {
    is_sid(sid, "AC")
}

fn is_sid(sid: &str, prefix: &str) -> bool {
    sid.len() == 34 && sid.starts_with(prefix) && sid[2..].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The base64 `X-Twilio-Signature` of a POST to `url` with form `params`.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    mac(auth_token, url, params).map(|m| STANDARD.encode(m.finalize().into_bytes())).unwrap_or_default()
}

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Option<Hmac<Sha1>> {
    // HMAC accepts keys of any length, so this is always `Some`.
    let mut mac = <Hmac<Sha1>>::new_from_slice(auth_token.as_bytes()).ok()?;
    mac.update(url.as_bytes());
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // By name (byte order, case-sensitive), then by value for repeated names.
    sorted.sort();
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    Some(mac)
}

/// Checks `signature` in constant time; a header that is not base64 never matches.
pub fn verify_signature(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    let Ok(presented) = STANDARD.decode(signature.trim()) else { return false };
    mac(auth_token, url, params).is_some_and(|m| m.verify_slice(&presented).is_ok())
}

/// The URL as given and with its default port added or removed: Twilio signs the URL as it was
/// configured, and whether that carried `:443` is not ours to know (Twilio's own libraries
/// accept both the same way).
pub(super) fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else { return variants };
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => return variants,
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let without = authority.strip_suffix(&format!(":{default_port}"));
    match without {
        Some(host) => variants.push(format!("{scheme}://{host}{tail}")),
        None if !authority.ends_with(']') && authority.contains(':') => {}
        None => variants.push(format!("{scheme}://{authority}:{default_port}{tail}")),
    }
    variants
}

/// Decodes an `application/x-www-form-urlencoded` body into its pairs, in order.
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}
