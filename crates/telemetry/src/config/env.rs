//! Where variables come from: the process environment, after a `.env` file, or a map in tests.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

/// Where variables come from: the process environment (after `.env`) or a map in tests.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    /// Every name asked for, so tests can check artefacts only set variables that are read.
    asked: Arc<Mutex<BTreeSet<String>>>,
}

impl Env {
    /// The process environment, after loading `.env` from the working directory if present
    /// (variables already set win over the file).
    pub fn from_process() -> Self {
        let mut vars: HashMap<String, String> = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(".env") {
            for (k, v) in parse_dotenv(&text) {
                vars.insert(k, v);
            }
        }
        for (k, v) in std::env::vars() {
            vars.insert(k, v);
        }
        Self { vars, asked: Arc::default() }
    }

    /// Exactly these variables (tests, the all-in-one runner).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(), asked: Arc::default() }
    }

    /// The value of `name`, `None` when unset or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        if let Ok(mut asked) = self.asked.lock() {
            asked.insert(name.to_string());
        }
        self.vars.get(name).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    /// Sets a variable (used by tests and by the all-in-one runner).
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }

    /// The value of `name` exactly as set, empty included (for variables where empty and
    /// unset mean different things).
    pub fn get_raw(&self, name: &str) -> Option<&str> {
        if let Ok(mut asked) = self.asked.lock() {
            asked.insert(name.to_string());
        }
        self.vars.get(name).map(String::as_str)
    }

    /// Every variable name read so far through this `Env` (and its clones).
    pub fn names_read(&self) -> BTreeSet<String> {
        self.asked.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// All variables, for passing on to a child process.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

pub(crate) fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}
