//! The generic reader every service uses for its own variables: typed parsers that report every
//! bad variable with its name, once, before anything starts; and [`Secret`].

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use super::Env;

/// One bad variable: its name, the offending value (unless secret) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.variable, self.message)
    }
}

/// Every bad variable found while loading a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// Records a bad variable.
    pub fn push(&mut self, variable: &str, message: impl Into<String>) {
        self.0.push(ConfigError { variable: variable.to_string(), message: message.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Merges another set of errors into this one.
    pub fn extend(&mut self, other: ConfigErrors) {
        self.0.extend(other.0);
    }

    /// `Ok(value)` when no error was recorded.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() { Ok(value) } else { Err(self) }
    }
}

/// Typed reads that record an error (and return the default) instead of failing early, so a
/// configuration reports every bad variable at once.
pub struct Reader<'a> {
    env: &'a Env,
    pub errors: ConfigErrors,
}

impl<'a> Reader<'a> {
    pub fn new(env: &'a Env) -> Self {
        Self { env, errors: ConfigErrors::default() }
    }

    pub fn env(&self) -> &Env {
        self.env
    }

    /// An optional string.
    pub fn string(&self, name: &str) -> Option<String> {
        self.env.get(name).map(|v| v.trim().to_string())
    }

    /// A string with a default.
    pub fn string_or(&self, name: &str, default: &str) -> String {
        self.string(name).unwrap_or_else(|| default.to_string())
    }

    /// A secret: never echoed in an error message.
    pub fn secret(&self, name: &str) -> Option<Secret> {
        self.env.get(name).map(|v| Secret(v.trim().to_string()))
    }

    /// Any `FromStr` value with a default; `expected` describes a valid value.
    pub fn parse_or<T: FromStr>(&mut self, name: &str, default: T, expected: &str) -> T {
        match self.env.get(name) {
            None => default,
            Some(raw) => match raw.trim().parse::<T>() {
                Ok(v) => v,
                Err(_) => {
                    self.errors.push(name, format!("{raw:?} is not {expected}"));
                    default
                }
            },
        }
    }

    /// A listen or peer address such as `0.0.0.0:8000`.
    pub fn addr_or(&mut self, name: &str, default: &str) -> SocketAddr {
        let fallback = default.parse().expect("default address is valid");
        self.parse_or(name, fallback, "a socket address like 0.0.0.0:8000")
    }

    /// A boolean: `true/false/1/0/yes/no/on/off`, any case.
    pub fn bool_or(&mut self, name: &str, default: bool) -> bool {
        match self.env.get(name) {
            None => default,
            Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    self.errors.push(name, format!("{raw:?} is not a boolean (true or false)"));
                    default
                }
            },
        }
    }

    /// A number in `[min, max]`.
    pub fn f64_in(&mut self, name: &str, default: f64, min: f64, max: f64) -> f64 {
        match self.env.get(name) {
            None => default,
            Some(raw) => match raw.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && (min..=max).contains(&v) => v,
                _ => {
                    self.errors.push(name, format!("{raw:?} is not a number between {min} and {max}"));
                    default
                }
            },
        }
    }

    /// A positive integer in `[1, max]`.
    pub fn positive_or(&mut self, name: &str, default: usize, max: usize) -> usize {
        match self.env.get(name) {
            None => default,
            Some(raw) => match raw.trim().parse::<usize>() {
                Ok(v) if (1..=max).contains(&v) => v,
                _ => {
                    self.errors.push(name, format!("{raw:?} is not a whole number between 1 and {max}"));
                    default
                }
            },
        }
    }

    /// A duration in seconds (fractions allowed, e.g. `0.5`), at most `max_seconds`.
    pub fn seconds_or(&mut self, name: &str, default: Duration, max_seconds: f64) -> Duration {
        match self.env.get(name) {
            None => default,
            Some(raw) => match raw.trim().trim_end_matches('s').parse::<f64>() {
                Ok(v) if v.is_finite() && (0.0..=max_seconds).contains(&v) => Duration::from_secs_f64(v),
                _ => {
                    self.errors.push(name, format!("{raw:?} is not a number of seconds between 0 and {max_seconds}"));
                    default
                }
            },
        }
    }

    /// A URL with one of the given schemes.
    pub fn url_or(&mut self, name: &str, default: &str, schemes: &[&str]) -> String {
        let value = self.string_or(name, default);
        if let Err(message) = check_url(&value, schemes) {
            self.errors.push(name, format!("{value:?} {message}"));
            return default.to_string();
        }
        value.trim_end_matches('/').to_string()
    }

    /// A number in `[min, max]` of any type that parses (integers, floats).
    pub fn number_in<T: FromStr + PartialOrd + Copy + fmt::Display>(
        &mut self,
        name: &str,
        default: T,
        min: T,
        max: T,
    ) -> T {
        match self.env.get(name) {
            None => default,
            Some(raw) => match raw.trim().parse::<T>() {
                Ok(v) if v >= min && v <= max => v,
                Ok(_) => {
                    self.errors.push(name, format!("must be between {min} and {max}"));
                    default
                }
                Err(_) => {
                    self.errors.push(name, format!("{raw:?} is not a number"));
                    default
                }
            },
        }
    }

    /// A duration in seconds in `[min, max_seconds]` read from `name`, or, while it is unset,
    /// from the older `legacy_ms` name in milliseconds (accepted for one release, with a
    /// warning on stderr naming the new variable).
    pub fn seconds_or_legacy_ms(
        &mut self,
        name: &str,
        legacy_ms: &str,
        default: Duration,
        min: Duration,
        max_seconds: f64,
    ) -> Duration {
        if self.env.get(name).is_none()
            && let Some(raw) = self.env.get(legacy_ms)
        {
            let max_ms = (max_seconds * 1000.0) as u64;
            let ms = match raw.trim().parse::<u64>() {
                Ok(v) if v <= max_ms && Duration::from_millis(v) >= min => v,
                _ => {
                    self.errors.push(legacy_ms, format!("{raw:?} is not a number of milliseconds up to {max_ms}"));
                    return default;
                }
            };
            let d = Duration::from_millis(ms);
            eprintln!("warning: {legacy_ms} is deprecated and will be removed; set {name}={} instead", d.as_secs_f64());
            return d;
        }
        let d = self.seconds_or(name, default, max_seconds);
        if d < min {
            self.errors.push(name, format!("must be at least {} seconds", min.as_secs_f64()));
            return default;
        }
        d
    }

    /// Records an error on a variable.
    pub fn error(&mut self, name: &str, message: impl Into<String>) {
        self.errors.push(name, message);
    }
}

/// Checks that `value` looks like `scheme://host[:port][/path]` with an allowed scheme.
pub fn check_url(value: &str, schemes: &[&str]) -> Result<(), String> {
    let Some((scheme, rest)) = value.split_once("://") else {
        return Err(format!("is not a URL (expected {}://host:port)", schemes.join(" or ")));
    };
    if !schemes.contains(&scheme) {
        return Err(format!("has scheme {scheme:?}; expected {}", schemes.join(" or ")));
    }
    let host = rest.split(['/', '?']).next().unwrap_or("");
    if host.is_empty() || host.contains(' ') {
        return Err("has no host".to_string());
    }
    if let Some((_, port)) = host.rsplit_once(':')
        && !host.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("has an invalid port {port:?}"));
    }
    Ok(())
}

/// A secret value (API keys, tokens, DSNs): prints as `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
