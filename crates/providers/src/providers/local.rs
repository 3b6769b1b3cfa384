//! The `local` provider: the built-in sentiment analyser, no network.

use crate::types::SentimentResult;

pub(crate) const MODEL: &str = "lexicon-v1";

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Local;

impl Local {
    pub(crate) fn new() -> Self {
        Self
    }

    pub(crate) fn analyze(&self, text: &str) -> SentimentResult {
        crate::sentiment::analyze(text)
    }
}
