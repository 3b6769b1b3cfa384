//! Offline, lexicon-based sentiment for call-centre speech (the `local` provider).
//!
//! In the manner of VADER: each opinion word or phrase has a valence (−4…4); a negator within
//! the three words before it flips and damps it ("not happy", "never had a problem"); boosters
//! and diminishers before it scale it ("really slow", "a bit confusing"), "at all" after it
//! strengthens it; after a contrast word ("but", "however") what follows weighs 1.5× and what
//! came before 0.5×; a concession clause ("even though I was confused") weighs 0.5×;
//! exclamation marks and words in capitals add emphasis. The sum is squashed into −1…1 and
//! labelled with a neutral band of ±[`NEUTRAL_BAND`].

mod lexicon;

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::types::{SentimentLabel, SentimentResult};

/// Scores within ±this are neutral.
pub const NEUTRAL_BAND: f32 = 0.2;
const SQUASH_ALPHA: f32 = 15.0;
const NEGATION_WINDOW: usize = 3;
/// Pronoun negators ("nothing you suggested has worked") reach across the clause.
const SUBJECT_NEGATION_WINDOW: usize = 6;
const SUBJECT_NEGATORS: &[&str] = &["nothing", "nobody", "no one", "noone", "none", "never"];
/// Information questions ("What is the reference for my complaint?") carry little sentiment.
const QUESTION_WEIGHT: f32 = 0.4;
const QUESTION_OPENERS: &[&str] = &[
    "what", "what's", "which", "when", "where", "who", "how", "can", "could", "do", "does", "did", "is", "are", "will",
    "would", "should", "may", "have", "has", "shall",
];
const MAX_PHRASE: usize = 4;
const KEYWORDS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Entry {
    Valence(f32),
    /// Counts only when negated (see `lexicon::NEGATED_ONLY`).
    NegatedOnly(f32),
    Negator,
    Booster(f32),
    Contrast,
    Concession,
}

struct Lexicon {
    entries: HashMap<String, Entry>,
}

static LEXICON: LazyLock<Lexicon> = LazyLock::new(|| {
    let mut entries = HashMap::new();
    for line in lexicon::VALENCES.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((word, value)) = line.rsplit_once(' ')
            && let Ok(v) = value.parse::<f32>()
        {
            entries.insert(word.to_owned(), Entry::Valence(v));
        }
    }
    for (w, v) in lexicon::NEGATED_ONLY {
        entries.insert((*w).to_owned(), Entry::NegatedOnly(*v));
    }
    // Modifiers win over valences when both list a word.
    for (w, f) in lexicon::BOOSTERS.iter().chain(lexicon::BOOSTER_PHRASES).chain(lexicon::DIMINISHERS) {
        entries.insert((*w).to_owned(), Entry::Booster(*f));
    }
    for w in lexicon::NEGATORS.iter().chain(lexicon::NEGATOR_PHRASES) {
        entries.insert((*w).to_owned(), Entry::Negator);
    }
    for w in lexicon::CONTRASTS {
        entries.insert((*w).to_owned(), Entry::Contrast);
    }
    for w in lexicon::CONCESSIONS {
        entries.insert((*w).to_owned(), Entry::Concession);
    }
    Lexicon { entries }
});

/// Number of entries (words and phrases) in the lexicon.
pub fn lexicon_size() -> usize {
    LEXICON.entries.len()
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word {
        text: String,
        shouting: bool,
    },
    /// `.`, `!`, `?` end a sentence; `,`, `;`, `:` end a clause.
    Stop {
        sentence: bool,
        exclamation: bool,
        question: bool,
    },
}

fn tokenize(text: &str) -> Vec<Token> {
    let text = text.replace(['\u{2019}', '\u{2018}', '`'], "'");
    let letters: Vec<char> = text.chars().filter(|c| c.is_alphabetic()).collect();
    let all_caps = !letters.is_empty() && letters.iter().all(|c| c.is_uppercase());
    let mut tokens = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, tokens: &mut Vec<Token>| {
        if word.is_empty() {
            return;
        }
        let raw = std::mem::take(word);
        let raw = raw.trim_matches(|c| c == '\'' || c == '-');
        if raw.is_empty() {
            return;
        }
        let shouting =
            !all_caps && raw.chars().count() > 1 && raw.chars().all(|c| !c.is_alphabetic() || c.is_uppercase());
        let lower = raw.to_lowercase();
        // Contractions: the auxiliary carries no sentiment, the negation does.
        let negated = lower.ends_with("n't")
            || matches!(
                lower.as_str(),
                "dont"
                    | "doesnt"
                    | "didnt"
                    | "isnt"
                    | "wasnt"
                    | "arent"
                    | "werent"
                    | "cant"
                    | "couldnt"
                    | "wouldnt"
                    | "shouldnt"
                    | "wont"
                    | "havent"
                    | "hasnt"
                    | "hadnt"
                    | "aint"
            );
        let text = if negated { "not".to_owned() } else { lower };
        tokens.push(Token::Word { text, shouting });
    };
    for c in text.chars() {
        if c.is_alphanumeric() || c == '\'' || (c == '-' && !word.is_empty()) {
            word.push(c);
            continue;
        }
        flush(&mut word, &mut tokens);
        match c {
            '.' | '!' | '?' => tokens.push(Token::Stop { sentence: true, exclamation: c == '!', question: c == '?' }),
            ',' | ';' | ':' | '(' | ')' | '—' | '–' => {
                tokens.push(Token::Stop { sentence: false, exclamation: false, question: false })
            }
            _ => {}
        }
    }
    flush(&mut word, &mut tokens);
    tokens
}

/// One scored word or phrase.
#[derive(Debug)]
struct Hit {
    text: String,
    score: f32,
    clause: usize,
    sentence: usize,
}

/// Analyse one text.
pub fn analyze(text: &str) -> SentimentResult {
    let lex = &*LEXICON;
    let tokens = tokenize(text);
    let mut hits: Vec<Hit> = Vec::new();
    // Modifiers seen since the last stop, as (position among words of the clause, entry).
    let mut pending: Vec<(usize, Entry, String)> = Vec::new();
    let mut clause = 0usize;
    let mut word_in_clause = 0usize;
    let mut first_in_sentence = true;
    let mut exclamations = 0usize;
    let mut contrast_at: Option<usize> = None; // index into `hits` where the last contrast began
    let mut concession = false;
    let mut concession_hits: Vec<usize> = Vec::new();
    let mut never_in_clause = false;
    let questions = information_questions(&tokens);
    let mut sentence = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let Token::Word { .. } = &tokens[i] else {
            if let Token::Stop { sentence: sentence_end, exclamation, .. } = tokens[i] {
                exclamations += usize::from(exclamation);
                first_in_sentence |= sentence_end;
                sentence += usize::from(sentence_end);
            }
            pending.clear();
            clause += 1;
            word_in_clause = 0;
            concession = false;
            never_in_clause = false;
            i += 1;
            continue;
        };
        // Longest phrase first.
        let mut matched = None;
        for len in (1..=MAX_PHRASE).rev() {
            let Some(words) = words_at(&tokens, i, len) else { continue };
            let key = words.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>().join(" ");
            let entry = lex.entries.get(&key).copied().or_else(|| {
                // Adverbs of listed adjectives ("rudely", "clearly"), a little weaker.
                (len == 1).then(|| key.strip_suffix("ly")).flatten().and_then(|stem| match lex.entries.get(stem) {
                    Some(Entry::Valence(v)) => Some(Entry::Valence(v * 0.9)),
                    _ => None,
                })
            });
            if let Some(entry) = entry {
                let shouting = words.iter().any(|(_, s)| *s);
                matched = Some((len, key, entry, shouting));
                break;
            }
        }
        let Some((len, key, entry, shouting)) = matched else {
            word_in_clause += 1;
            first_in_sentence = false;
            i += 1;
            continue;
        };
        match entry {
            Entry::Negator => {
                if key == "never" {
                    never_in_clause = true;
                }
                pending.push((word_in_clause, entry, key));
            }
            Entry::Booster(f) if key == "at all" => {
                // A post-modifier: strengthens the last opinion of this clause.
                if let Some(h) = hits.last_mut().filter(|h| h.clause == clause) {
                    h.score *= f;
                }
            }
            Entry::Booster(_) => pending.push((word_in_clause, entry, key)),
            Entry::Contrast => {
                contrast_at = Some(hits.len());
                pending.clear();
                concession = false;
                clause += 1;
                word_in_clause = 0;
            }
            Entry::Concession => {
                concession = true;
                pending.clear();
            }
            Entry::Valence(v) if key == "well" && first_in_sentence => {
                // A discourse marker ("Well, …"), not praise.
                let _ = v;
            }
            Entry::Valence(_) | Entry::NegatedOnly(_) => {
                let (mut v, negated_only) = match entry {
                    Entry::NegatedOnly(v) => (v, true),
                    Entry::Valence(v) => (v, false),
                    _ => (0.0, false),
                };
                let mut label = key.clone();
                let mut negated = false;
                for (pos, modifier, word) in pending.iter().rev() {
                    let distance = word_in_clause.saturating_sub(*pos);
                    let reach = if SUBJECT_NEGATORS.contains(&word.as_str()) {
                        SUBJECT_NEGATION_WINDOW
                    } else {
                        NEGATION_WINDOW
                    };
                    match modifier {
                        Entry::Booster(f) if distance <= NEGATION_WINDOW => v *= f,
                        Entry::Negator if !negated && distance <= reach => {
                            negated = true;
                            label = format!("{word} {label}");
                        }
                        _ => {}
                    }
                }
                if negated_only {
                    if !negated {
                        v = 0.0;
                    }
                } else if negated {
                    // "not good" is bad; "not bad" is only mildly good.
                    v *= if v > 0.0 { -0.8 } else { -0.5 };
                }
                if shouting {
                    v *= 1.3;
                }
                if key == "again" && never_in_clause {
                    // "never again", "never using you again".
                    v = -2.2;
                    label = "never again".to_owned();
                }
                if v != 0.0 {
                    if concession {
                        concession_hits.push(hits.len());
                    }
                    hits.push(Hit { text: label, score: v, clause, sentence });
                }
            }
        }
        word_in_clause += len;
        first_in_sentence = false;
        i += len;
    }

    for &h in &concession_hits {
        hits[h].score *= 0.5;
    }
    for hit in hits.iter_mut().filter(|h| questions.contains(&h.sentence)) {
        hit.score *= QUESTION_WEIGHT;
    }
    if let Some(at) = contrast_at {
        for (n, hit) in hits.iter_mut().enumerate() {
            hit.score *= if n < at { 0.5 } else { 1.5 };
        }
    }
    let mut sum: f32 = hits.iter().map(|h| h.score).sum();
    if sum != 0.0 {
        sum += sum.signum() * exclamations.min(4) as f32 * 0.292;
    }
    let score = (sum / (sum * sum + SQUASH_ALPHA).sqrt()).clamp(-1.0, 1.0);
    let label = if score >= NEUTRAL_BAND {
        SentimentLabel::Positive
    } else if score <= -NEUTRAL_BAND {
        SentimentLabel::Negative
    } else {
        SentimentLabel::Neutral
    };
    hits.sort_by(|a, b| b.score.abs().total_cmp(&a.score.abs()));
    let mut keywords: Vec<String> = Vec::new();
    for hit in hits {
        if keywords.len() == KEYWORDS {
            break;
        }
        if !keywords.contains(&hit.text) {
            keywords.push(hit.text);
        }
    }
    SentimentResult { score, label, keywords, provider: "local".to_owned() }
}

/// Indexes of the sentences that end in `?` and open with an interrogative or auxiliary
/// ("what", "can", "is"…): requests for information. "Why …?" is left alone: it is usually a
/// complaint.
fn information_questions(tokens: &[Token]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut sentence = 0;
    let mut first: Option<&str> = None;
    for token in tokens {
        match token {
            Token::Word { text, .. } => {
                first.get_or_insert(text.as_str());
            }
            Token::Stop { sentence: true, question, .. } => {
                if *question && matches!(first, Some(w) if QUESTION_OPENERS.contains(&w)) {
                    out.push(sentence);
                }
                sentence += 1;
                first = None;
            }
            Token::Stop { .. } => {}
        }
    }
    out
}

/// `len` consecutive words starting at `i` (none if a stop interrupts them).
fn words_at(tokens: &[Token], i: usize, len: usize) -> Option<Vec<(String, bool)>> {
    let slice = tokens.get(i..i + len)?;
    slice
        .iter()
        .map(|t| match t {
            Token::Word { text, shouting } => Some((text.clone(), *shouting)),
            Token::Stop { .. } => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(text: &str) -> SentimentLabel {
        analyze(text).label
    }

    #[test]
    fn lexicon_is_large() {
        assert!(lexicon_size() > 500, "{}", lexicon_size());
    }

    #[test]
    fn negation_flips_and_damps() {
        assert_eq!(label("The agent was helpful."), SentimentLabel::Positive);
        assert_eq!(label("The agent was not helpful."), SentimentLabel::Negative);
        assert_eq!(label("The agent wasn't very helpful."), SentimentLabel::Negative);
        let not_bad = analyze("Not bad at all.");
        assert!(not_bad.score > 0.0, "{not_bad:?}");
        assert!(analyze("It was bad.").score < 0.0);
        assert!(analyze("I never had a problem with you.").score > 0.0);
        assert!(not_bad.keywords.contains(&"not bad".to_owned()), "{:?}", not_bad.keywords);
    }

    #[test]
    fn intensifiers_and_diminishers_scale() {
        let plain = analyze("The wait was slow.").score;
        let boosted = analyze("The wait was extremely slow.").score;
        let damped = analyze("The wait was slightly slow.").score;
        assert!(boosted < plain && plain < damped && damped < 0.0, "{boosted} {plain} {damped}");
    }

    #[test]
    fn but_makes_the_second_clause_win() {
        assert_eq!(label("The agent was nice but my problem is still not fixed."), SentimentLabel::Negative);
        assert_eq!(label("It took ages but she sorted it out in the end."), SentimentLabel::Positive);
    }

    #[test]
    fn call_centre_phrases() {
        assert_eq!(label("I've been on hold for forty minutes."), SentimentLabel::Negative);
        assert_eq!(label("I was charged twice."), SentimentLabel::Negative);
        assert_eq!(label("No problem, thanks for your help."), SentimentLabel::Positive);
        assert_eq!(label("I'd like to pay the outstanding balance."), SentimentLabel::Neutral);
        assert_eq!(label("Can you tell me my account number?"), SentimentLabel::Neutral);
        assert_eq!(label("I will never use this company again."), SentimentLabel::Negative);
    }

    proptest::proptest! {
        #[test]
        fn any_text_scores_within_bounds(text in "\\PC{0,300}") {
            let r = analyze(&text);
            proptest::prop_assert!((-1.0..=1.0).contains(&r.score));
            proptest::prop_assert!(r.keywords.len() <= KEYWORDS);
        }
    }

    #[test]
    fn emphasis_and_bounds() {
        let calm = analyze("This is bad.").score;
        let loud = analyze("This is BAD!!!").score;
        assert!(loud < calm);
        let extreme = analyze(&"terrible awful horrible ".repeat(50));
        assert!(extreme.score >= -1.0 && extreme.score < -0.9);
        assert_eq!(analyze("").label, SentimentLabel::Neutral);
        assert_eq!(analyze("").score, 0.0);
    }
}
