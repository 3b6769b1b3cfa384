//! What calls cost in money: the prices file (`PROVIDER_PRICES_FILE`), the usage a call
//! accumulates while it runs ([`CostMeter`]), and the breakdown stored on the call
//! ([`CostBreakdown`]).
//!
//! Usage comes from what provider-gateway reports: chat token counts (`ChatCompletion.usage`),
//! the transcribed audio's length (`TranscribeResponse.duration_seconds`, or the length of the
//! audio sent when the provider reports none), and for speech the characters of the text sent
//! and the seconds of audio received. Each is kept under the provider and model that served
//! it; a provider or model the prices file does not name is priced as unknown, never as zero.
//!
//! Arithmetic: amounts are `f64` in the file's currency. An item's cost is its quantity times
//! its unit price (`tokens × price ÷ 1,000,000`, `seconds ÷ 60 × price per minute`,
//! `characters × price ÷ 1,000,000`), rounded to 9 decimal places (nano-units); sums are
//! rounded the same way, so a stored figure never carries binary noise such as
//! `0.30000000000000004`.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The environment variable naming the prices file.
pub const PRICES_FILE_VARIABLE: &str = "PROVIDER_PRICES_FILE";
/// The largest prices file read (a file of every model of every provider is a few KB).
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// The providers provider-gateway implements; a prices file naming another is a typo.
pub const KNOWN_PROVIDERS: &[&str] = &["deepgram", "local", "openai", "simulated"];
/// Decimal places kept in amounts (nano-units of the currency).
const DECIMALS: i32 = 9;

/// What a provider did for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = CostCapability)]
pub enum Capability {
    SpeechToText,
    Chat,
    TextToSpeech,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SpeechToText => "speech_to_text",
            Self::Chat => "chat",
            Self::TextToSpeech => "text_to_speech",
        }
    }
}

// ---- The prices file -------------------------------------------------------------------------

/// The prices file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PricesFile {
    /// ISO 4217 code of every price in the file.
    currency: String,
    /// When the prices were taken from the providers' pages (`YYYY-MM-DD`), for people.
    #[serde(default)]
    prices_taken_on: Option<String>,
    #[serde(default)]
    providers: BTreeMap<String, ProviderPrices>,
}

/// One provider's prices, by capability and model. A model name ending in `*` matches every
/// model starting with what precedes it (`aura-2-*`); an exact name wins over a pattern, a
/// longer pattern over a shorter one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderPrices {
    #[serde(default)]
    chat: BTreeMap<String, ChatPrice>,
    #[serde(default)]
    speech_to_text: BTreeMap<String, SpeechToTextPrice>,
    #[serde(default)]
    text_to_speech: BTreeMap<String, TextToSpeechPrice>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatPrice {
    input_per_million_tokens: f64,
    output_per_million_tokens: f64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpeechToTextPrice {
    /// Per minute of audio transcribed.
    per_minute: f64,
}

/// Speech is priced by the text sent or by the audio produced (exactly one of the two).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextToSpeechPrice {
    #[serde(default)]
    per_million_characters: Option<f64>,
    /// Per minute of audio produced.
    #[serde(default)]
    per_minute: Option<f64>,
}

/// A unit price, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Price {
    Chat { input_per_million_tokens: f64, output_per_million_tokens: f64 },
    PerMinute(f64),
    PerMillionCharacters(f64),
}

/// The prices call-api applies, read once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Prices {
    pub currency: String,
    pub taken_on: Option<chrono::NaiveDate>,
    /// (capability, provider) → model name or pattern → price.
    table: BTreeMap<(Capability, String), BTreeMap<String, Price>>,
}

/// Why a prices file cannot be used: the file, the entry and what is wrong, on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricesError(pub String);

impl std::fmt::Display for PricesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Prices {
    /// Reads `PROVIDER_PRICES_FILE` when set; a bad file is a configuration error (the service
    /// does not start).
    pub fn read(r: &mut telemetry::Reader<'_>) -> Option<Arc<Self>> {
        let path = r.string(PRICES_FILE_VARIABLE).filter(|p| !p.is_empty())?;
        match Self::load(Path::new(&path)) {
            Ok(prices) => Some(Arc::new(prices)),
            Err(e) => {
                r.error(PRICES_FILE_VARIABLE, e.0);
                None
            }
        }
    }

    /// Reads and checks the prices file at `path` (`.yaml`, `.yml`, or `.json`, which is YAML
    /// too).
    pub fn load(path: &Path) -> Result<Self, PricesError> {
        let shown = path.display().to_string();
        let fail = |entry: &str, problem: String| PricesError(format!("{shown}: {entry}: {}", one_line(&problem)));
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        if !matches!(extension.as_str(), "yaml" | "yml" | "json") {
            return Err(fail("file", format!("unsupported file type {extension:?}: use .yaml, .yml or .json")));
        }
        let size = std::fs::metadata(path).map_err(|e| fail("file", format!("cannot read it: {e}")))?.len();
        if size > MAX_FILE_BYTES {
            return Err(fail("file", format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail("file", format!("cannot read it: {e}")))?;
        Self::parse(&text).map_err(|(entry, problem)| fail(&entry, problem))
    }

    /// Parses and checks a prices document; the error names the entry and the problem.
    pub fn parse(text: &str) -> Result<Self, (String, String)> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let file: PricesFile = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let entry = e.path().to_string();
            let entry = if entry.is_empty() || entry == "." { "document".to_string() } else { entry };
            (entry, e.into_inner().to_string())
        })?;
        let currency = file.currency.trim().to_string();
        if !is_currency(&currency) {
            return Err(("currency".into(), format!("{currency:?} is not an ISO 4217 currency code such as USD")));
        }
        let taken_on = match &file.prices_taken_on {
            None => None,
            Some(raw) => Some(
                chrono::NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d")
                    .map_err(|_| ("prices_taken_on".to_string(), format!("{raw:?} is not a date (YYYY-MM-DD)")))?,
            ),
        };
        let mut table: BTreeMap<(Capability, String), BTreeMap<String, Price>> = BTreeMap::new();
        for (provider, prices) in &file.providers {
            if !KNOWN_PROVIDERS.contains(&provider.as_str()) {
                return Err((
                    format!("providers.{provider}"),
                    format!("unknown provider (known: {})", KNOWN_PROVIDERS.join(", ")),
                ));
            }
            let mut add = |capability: Capability, model: &str, price: Price| -> Result<(), (String, String)> {
                let entry = format!("providers.{provider}.{}.{model}", capability.as_str());
                check_model(model).map_err(|p| (entry.clone(), p))?;
                table.entry((capability, provider.clone())).or_default().insert(model.to_string(), price);
                Ok(())
            };
            for (model, p) in &prices.chat {
                let entry = format!("providers.{provider}.chat.{model}");
                check_amount(&entry, "input_per_million_tokens", p.input_per_million_tokens)?;
                check_amount(&entry, "output_per_million_tokens", p.output_per_million_tokens)?;
                add(
                    Capability::Chat,
                    model,
                    Price::Chat {
                        input_per_million_tokens: p.input_per_million_tokens,
                        output_per_million_tokens: p.output_per_million_tokens,
                    },
                )?;
            }
            for (model, p) in &prices.speech_to_text {
                check_amount(&format!("providers.{provider}.speech_to_text.{model}"), "per_minute", p.per_minute)?;
                add(Capability::SpeechToText, model, Price::PerMinute(p.per_minute))?;
            }
            for (model, p) in &prices.text_to_speech {
                let entry = format!("providers.{provider}.text_to_speech.{model}");
                let price = match (p.per_million_characters, p.per_minute) {
                    (Some(v), None) => {
                        check_amount(&entry, "per_million_characters", v)?;
                        Price::PerMillionCharacters(v)
                    }
                    (None, Some(v)) => {
                        check_amount(&entry, "per_minute", v)?;
                        Price::PerMinute(v)
                    }
                    _ => return Err((entry, "give exactly one of per_million_characters and per_minute".into())),
                };
                add(Capability::TextToSpeech, model, price)?;
            }
        }
        Ok(Self { currency, taken_on, table })
    }

    /// The price of `model` of `provider` for `capability`, with the name it is listed under
    /// (the model, or the pattern that matched it).
    fn lookup(&self, capability: Capability, provider: &str, model: &str) -> Option<(&str, Price)> {
        let models = self.table.get(&(capability, provider.to_string()))?;
        if let Some((key, price)) = models.get_key_value(model) {
            return Some((key.as_str(), *price));
        }
        models
            .iter()
            .filter_map(|(key, price)| key.strip_suffix('*').map(|prefix| (key, prefix, price)))
            .filter(|(_, prefix, _)| model.starts_with(prefix))
            .max_by_key(|(_, prefix, _)| prefix.len())
            .map(|(key, _, price)| (key.as_str(), *price))
    }

    /// Every (provider, listed model, capability) of the file: the label sets of
    /// `provider_cost_total`.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, Capability)> {
        self.table.iter().flat_map(|((capability, provider), models)| {
            models.keys().map(move |model| (provider.as_str(), model.as_str(), *capability))
        })
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check_amount(entry: &str, field: &str, value: f64) -> Result<(), (String, String)> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err((format!("{entry}.{field}"), format!("{value} is not a price (a finite number, 0 or more)")))
    }
}

fn check_model(model: &str) -> Result<(), String> {
    let name = model.strip_suffix('*').unwrap_or(model);
    if model.is_empty() || model.len() > 128 || name.contains('*') || model.chars().any(char::is_whitespace) {
        return Err("a model is a name without spaces, optionally ending in * (at most 128 characters)".into());
    }
    Ok(())
}

/// ISO 4217 codes of currencies in use (funds and precious metals included; the testing and
/// "no currency" codes are not).
const CURRENCIES: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD \
     BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD \
     FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW \
     KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK \
     NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN \
     SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XAG XAU \
     XBA XBB XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU XUA YER ZAR ZMW ZWG ZWL";

fn is_currency(code: &str) -> bool {
    code.len() == 3 && CURRENCIES.split_whitespace().any(|c| c == code)
}

/// `value` rounded to [`DECIMALS`] places.
pub fn round_amount(value: f64) -> f64 {
    let scale = 10f64.powi(DECIMALS);
    (value * scale).round() / scale
}

// ---- The breakdown ---------------------------------------------------------------------------

/// What a call cost, by capability, in the prices file's currency. Shown on the call record as
/// `cost`; `null` there when no prices file was configured while the call ran (or the call
/// never reached a provider).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CostBreakdown {
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
    /// Speech-to-text cost; `null` when some of its usage had no price.
    pub speech_to_text: Option<f64>,
    /// Chat (language model) cost; `null` when some of its usage had no price.
    pub chat: Option<f64>,
    /// Text-to-speech cost; `null` when some of its usage had no price.
    pub text_to_speech: Option<f64>,
    /// The sum of the three; `null` unless `complete`.
    pub total: Option<f64>,
    /// Every usage item had a price.
    pub complete: bool,
    /// Provider requests cut (barge-in, the call ending, a failure) before they reported their
    /// usage: what they cost, if anything, is not included.
    pub unreported_requests: u32,
    /// The usage, by capability, provider and model, and what each cost (`null`: no price).
    pub items: Vec<CostItem>,
}

/// One capability of one provider and model within a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CostItem {
    pub capability: Capability,
    pub provider: String,
    /// The model as the provider reported it.
    pub model: String,
    /// The prices file entry that priced it (the model, or a pattern such as `aura-2-*`);
    /// absent when no entry matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priced_as: Option<String>,
    /// Chat: prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Chat: generated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// Speech to text: audio transcribed; text to speech: audio received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Text to speech: characters of text synthesised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub characters: Option<u64>,
    /// What it cost; `null` when the prices file has no price for it.
    pub cost: Option<f64>,
}

impl CostBreakdown {
    /// The breakdown of `items` (aggregates recomputed).
    fn from_items(currency: String, mut items: Vec<CostItem>, unreported_requests: u32) -> Self {
        items.sort_by(|a, b| {
            (a.capability, &a.provider, &a.model, &a.priced_as).cmp(&(
                b.capability,
                &b.provider,
                &b.model,
                &b.priced_as,
            ))
        });
        let sum = |capability: Option<Capability>| -> Option<f64> {
            let mut total = 0.0;
            for item in items.iter().filter(|i| capability.is_none_or(|c| i.capability == c)) {
                total += item.cost?;
            }
            Some(round_amount(total))
        };
        let speech_to_text = sum(Some(Capability::SpeechToText));
        let chat = sum(Some(Capability::Chat));
        let text_to_speech = sum(Some(Capability::TextToSpeech));
        let complete = items.iter().all(|i| i.cost.is_some());
        let total = match (speech_to_text, chat, text_to_speech) {
            (Some(a), Some(b), Some(c)) => Some(round_amount(a + b + c)),
            _ => None,
        };
        Self { currency, speech_to_text, chat, text_to_speech, total, complete, unreported_requests, items }
    }

    /// Two parts of one call (its live session and its recording analyses) as one: quantities
    /// and costs of the same provider and model add up. Items priced in another currency
    /// count as unpriced.
    pub fn merge(&self, other: &Self) -> Self {
        let mut items: Vec<CostItem> = self.items.clone();
        for item in &other.items {
            let mut item = item.clone();
            if other.currency != self.currency {
                item.cost = None;
                item.priced_as = None;
            }
            match items.iter_mut().find(|i| {
                (i.capability, &i.provider, &i.model, &i.priced_as, i.cost.is_some())
                    == (item.capability, &item.provider, &item.model, &item.priced_as, item.cost.is_some())
            }) {
                Some(existing) => {
                    let add_u = |a: Option<u64>, b: Option<u64>| match (a, b) {
                        (None, None) => None,
                        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
                    };
                    let add_f = |a: Option<f64>, b: Option<f64>| match (a, b) {
                        (None, None) => None,
                        (a, b) => Some(round_amount(a.unwrap_or(0.0) + b.unwrap_or(0.0))),
                    };
                    existing.input_tokens = add_u(existing.input_tokens, item.input_tokens);
                    existing.output_tokens = add_u(existing.output_tokens, item.output_tokens);
                    existing.characters = add_u(existing.characters, item.characters);
                    existing.seconds = add_f(existing.seconds, item.seconds);
                    existing.cost = add_f(existing.cost, item.cost);
                }
                None => items.push(item),
            }
        }
        Self::from_items(
            self.currency.clone(),
            items,
            self.unreported_requests.saturating_add(other.unreported_requests),
        )
    }

    /// The cost shown for a call whose live session and recording analyses stored these parts.
    pub fn of_parts(live: Option<Self>, recording: Option<Self>) -> Option<Self> {
        match (live, recording) {
            (Some(a), Some(b)) => Some(a.merge(&b)),
            (a, b) => a.or(b),
        }
    }
}

// ---- Accumulating usage during a call ---------------------------------------------------------

/// Usage of one provider and model for one capability.
#[derive(Debug, Default, Clone, Copy)]
struct Quantities {
    input_tokens: u64,
    output_tokens: u64,
    seconds: f64,
    characters: u64,
}

#[derive(Debug, Default)]
struct Usage {
    items: BTreeMap<(Capability, String, String), Quantities>,
    unreported: u32,
}

#[derive(Debug)]
struct MeterInner {
    prices: Arc<Prices>,
    usage: Mutex<Usage>,
}

/// The usage of one call (a live session, or one recording analysis), accumulated in memory
/// as provider responses arrive and priced when it is settled. Cheap to clone; does nothing
/// when no prices file is configured.
#[derive(Debug, Clone, Default)]
pub struct CostMeter {
    inner: Option<Arc<MeterInner>>,
}

/// Longest a provider reported `model` name kept (longer names are cut).
const MAX_NAME: usize = 128;

fn name(s: &str) -> String {
    let s = s.trim();
    let s = if s.is_empty() { "unknown" } else { s };
    s.chars().take(MAX_NAME).collect()
}

impl CostMeter {
    pub fn new(prices: Option<Arc<Prices>>) -> Self {
        Self { inner: prices.map(|prices| Arc::new(MeterInner { prices, usage: Mutex::default() })) }
    }

    /// Whether anything is metered (a prices file is configured).
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    fn add(&self, capability: Capability, provider: &str, model: &str, f: impl FnOnce(&mut Quantities)) {
        let Some(inner) = &self.inner else { return };
        let mut usage = inner.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(usage.items.entry((capability, name(provider), name(model))).or_default());
    }

    /// A chat completion's reported token counts.
    pub fn chat(&self, provider: &str, model: &str, input_tokens: u64, output_tokens: u64) {
        self.add(Capability::Chat, provider, model, |q| {
            q.input_tokens = q.input_tokens.saturating_add(input_tokens);
            q.output_tokens = q.output_tokens.saturating_add(output_tokens);
        });
    }

    /// A transcription: the duration the provider reported, or (when it reported none) the
    /// length of the audio sent.
    pub fn speech_to_text(&self, provider: &str, model: &str, reported_seconds: f64, sent_seconds: f64) {
        let seconds =
            if reported_seconds.is_finite() && reported_seconds > 0.0 { reported_seconds } else { sent_seconds };
        self.add(Capability::SpeechToText, provider, model, |q| q.seconds += seconds.max(0.0));
    }

    /// Speech synthesised: the characters of the text sent and the seconds of audio received.
    pub fn text_to_speech(&self, provider: &str, model: &str, characters: u64, seconds: f64) {
        self.add(Capability::TextToSpeech, provider, model, |q| {
            q.characters = q.characters.saturating_add(characters);
            q.seconds += seconds.max(0.0);
        });
    }

    /// A provider request that was cut before it reported its usage.
    pub fn unreported(&self) {
        let Some(inner) = &self.inner else { return };
        let mut usage = inner.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        usage.unreported = usage.unreported.saturating_add(1);
    }

    /// The breakdown of the usage so far; `None` when no prices file is configured.
    pub fn breakdown(&self) -> Option<CostBreakdown> {
        let inner = self.inner.as_ref()?;
        let usage = inner.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let prices = &inner.prices;
        let items = usage
            .items
            .iter()
            .map(|((capability, provider, model), q)| {
                let found = prices.lookup(*capability, provider, model);
                let cost = found.map(|(_, price)| round_amount(cost_of(price, q)));
                let (input_tokens, output_tokens, seconds, characters) = match capability {
                    Capability::Chat => (Some(q.input_tokens), Some(q.output_tokens), None, None),
                    Capability::SpeechToText => (None, None, Some(round_amount(q.seconds)), None),
                    Capability::TextToSpeech => (None, None, Some(round_amount(q.seconds)), Some(q.characters)),
                };
                CostItem {
                    capability: *capability,
                    provider: provider.clone(),
                    model: model.clone(),
                    priced_as: found.map(|(key, _)| key.to_string()),
                    input_tokens,
                    output_tokens,
                    seconds,
                    characters,
                    cost,
                }
            })
            .collect();
        Some(CostBreakdown::from_items(prices.currency.clone(), items, usage.unreported))
    }

    /// Waits (at most `wait`) until no other handle on this meter is left (the call's turns
    /// have all stopped), then gives the breakdown and records it in the metrics.
    pub async fn settle(self, wait: Duration) -> Option<CostBreakdown> {
        let inner = self.inner.as_ref()?;
        let deadline = tokio::time::Instant::now() + wait;
        while Arc::strong_count(inner) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let breakdown = self.breakdown()?;
        crate::metrics::cost_settled(&breakdown);
        Some(breakdown)
    }
}

/// What `q` costs at `price`, unrounded.
fn cost_of(price: Price, q: &Quantities) -> f64 {
    match price {
        Price::Chat { input_per_million_tokens, output_per_million_tokens } => {
            q.input_tokens as f64 * input_per_million_tokens / 1e6
                + q.output_tokens as f64 * output_per_million_tokens / 1e6
        }
        Price::PerMinute(per_minute) => q.seconds / 60.0 * per_minute,
        Price::PerMillionCharacters(per_million) => q.characters as f64 * per_million / 1e6,
    }
}

/// A provider request whose usage is not known yet: counted as unreported when it is dropped
/// (the request was cut) before [`Pending::reported`].
#[derive(Debug)]
pub struct Pending {
    meter: CostMeter,
    open: bool,
}

impl Pending {
    pub fn new(meter: &CostMeter) -> Self {
        Self { meter: meter.clone(), open: meter.is_on() }
    }

    /// The request reported its usage (or needs none counted).
    pub fn reported(&mut self) {
        self.open = false;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.open {
            self.meter.unreported();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
currency: EUR
prices_taken_on: 2026-01-31
providers:
  openai:
    chat:
      gpt-4o-mini: {input_per_million_tokens: 0.15, output_per_million_tokens: 0.6}
    speech_to_text:
      whisper-1: {per_minute: 0.006}
    text_to_speech:
      tts-1: {per_million_characters: 15}
      gpt-4o-mini-tts: {per_minute: 0.015}
  deepgram:
    text_to_speech:
      aura-2-*: {per_million_characters: 30}
      aura-2-thalia-*: {per_million_characters: 31}
      aura-2-zeus-en: {per_million_characters: 32}
";

    fn prices() -> Arc<Prices> {
        Arc::new(Prices::parse(FILE).expect("valid"))
    }

    #[test]
    fn a_file_parses_and_models_match_exactly_then_by_the_longest_pattern() {
        let p = prices();
        assert_eq!(p.currency, "EUR");
        assert_eq!(p.taken_on, chrono::NaiveDate::from_ymd_opt(2026, 1, 31));
        let tts = |model: &str| p.lookup(Capability::TextToSpeech, "deepgram", model).map(|(k, _)| k.to_string());
        assert_eq!(tts("aura-2-zeus-en").as_deref(), Some("aura-2-zeus-en"));
        assert_eq!(tts("aura-2-thalia-en").as_deref(), Some("aura-2-thalia-*"));
        assert_eq!(tts("aura-2-asteria-en").as_deref(), Some("aura-2-*"));
        assert_eq!(tts("aura-asteria-en"), None);
        assert_eq!(p.lookup(Capability::Chat, "openai", "gpt-4o"), None, "no invented price");
        assert_eq!(p.lookup(Capability::Chat, "deepgram", "gpt-4o-mini"), None);
        assert_eq!(p.entries().count(), 7);
    }

    #[test]
    fn the_example_file_is_valid() {
        let p = Prices::parse(include_str!("../../../deploy/prices.example.yaml")).expect("the example parses");
        assert_eq!(p.currency, "USD");
        assert!(p.taken_on.is_some(), "the example says when its prices were taken");
        for (capability, provider, model) in [
            (Capability::Chat, "openai", "gpt-4o-mini"),
            (Capability::SpeechToText, "openai", "whisper-1"),
            (Capability::TextToSpeech, "openai", "gpt-4o-mini-tts"),
            (Capability::SpeechToText, "deepgram", "nova-3"),
            (Capability::TextToSpeech, "deepgram", "aura-2-thalia-en"),
            (Capability::Chat, "simulated", "simulated-1"),
            (Capability::SpeechToText, "simulated", "simulated-1"),
            (Capability::TextToSpeech, "simulated", "simulated-1"),
        ] {
            assert!(p.lookup(capability, provider, model).is_some(), "{provider} {model} {capability:?}");
        }
    }

    #[test]
    fn bad_files_name_the_entry() {
        let cases = [
            ("currency: USX\n", "currency"),
            ("currency: usd\n", "currency"),
            ("providers: {}\n", "document"),
            ("currency: USD\ncolour: red\n", "colour"),
            ("currency: USD\nprices_taken_on: yesterday\n", "prices_taken_on"),
            ("currency: USD\nproviders: {opanai: {}}\n", "providers.opanai"),
            ("currency: USD\nproviders: {openai: {vision: {}}}\n", "providers.openai"),
            (
                "currency: USD\nproviders: {openai: {chat: {gpt-4o: {input_per_million_tokens: -1, output_per_million_tokens: 1}}}}\n",
                "providers.openai.chat.gpt-4o.input_per_million_tokens",
            ),
            (
                "currency: USD\nproviders: {openai: {chat: {gpt-4o: {input_per_million_tokens: .nan, output_per_million_tokens: 1}}}}\n",
                "providers.openai.chat.gpt-4o.input_per_million_tokens",
            ),
            (
                "currency: USD\nproviders: {openai: {chat: {gpt-4o: {input_per_million_tokens: 1}}}}\n",
                "providers.openai.chat.gpt-4o",
            ),
            (
                "currency: USD\nproviders: {openai: {chat: {gpt-4o: {input_per_million_tokens: 1, output_per_million_tokens: 1, cached: 0.5}}}}\n",
                "providers.openai.chat.gpt-4o",
            ),
            (
                "currency: USD\nproviders: {openai: {speech_to_text: {whisper-1: {per_minute: ten}}}}\n",
                "providers.openai.speech_to_text.whisper-1.per_minute",
            ),
            (
                "currency: USD\nproviders: {openai: {text_to_speech: {tts-1: {per_minute: 1, per_million_characters: 2}}}}\n",
                "providers.openai.text_to_speech.tts-1",
            ),
            (
                "currency: USD\nproviders: {openai: {text_to_speech: {tts-1: {}}}}\n",
                "providers.openai.text_to_speech.tts-1",
            ),
            (
                "currency: USD\nproviders: {openai: {speech_to_text: {'a*b': {per_minute: 1}}}}\n",
                "providers.openai.speech_to_text.a*b",
            ),
            // Bad syntax: the entry is wherever the parser stopped.
            ("currency: 'USD\n", ""),
        ];
        for (text, entry) in cases {
            match Prices::parse(text) {
                Ok(p) => panic!("{text:?} was accepted: {p:?}"),
                Err((got, problem)) => {
                    assert!(got.starts_with(entry), "{text:?}: entry {got:?}, want {entry:?} ({problem})");
                    assert!(!problem.is_empty());
                }
            }
        }
    }

    #[test]
    fn loading_checks_the_file_type_and_keeps_the_error_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("prices.toml");
        std::fs::write(&toml, "currency = 'USD'").unwrap();
        let e = Prices::load(&toml).unwrap_err().0;
        assert!(e.contains("prices.toml") && e.contains("unsupported file type"), "{e}");
        let missing = dir.path().join("missing.yaml");
        assert!(Prices::load(&missing).unwrap_err().0.contains("cannot read it"));
        let bad = dir.path().join("bad.yml");
        std::fs::write(
            &bad,
            "currency: USD\nproviders:\n  openai:\n    chat:\n      x: {input_per_million_tokens: 1}\n",
        )
        .unwrap();
        let e = Prices::load(&bad).unwrap_err().0;
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("bad.yml: providers.openai.chat.x"), "{e}");
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"currency": "USD", "providers": {"simulated": {}}}"#).unwrap();
        assert_eq!(Prices::load(&good).unwrap().currency, "USD");
    }

    #[test]
    fn usage_is_priced_per_item_and_unknown_models_stay_unknown() {
        let meter = CostMeter::new(Some(prices()));
        meter.chat("openai", "gpt-4o-mini", 1000, 100);
        meter.chat("openai", "gpt-4o-mini", 234, 5);
        meter.speech_to_text("openai", "whisper-1", 1.5, 9.0);
        meter.speech_to_text("openai", "whisper-1", 0.0, 2.25);
        meter.text_to_speech("openai", "tts-1", 120, 4.0);
        meter.text_to_speech("openai", "gpt-4o-mini-tts", 50, 3.0);
        let b = meter.breakdown().unwrap();
        let chat = round_amount(1234.0 * 0.15 / 1e6 + 105.0 * 0.6 / 1e6);
        let stt = round_amount(3.75 / 60.0 * 0.006);
        let tts = round_amount(round_amount(120.0 * 15.0 / 1e6) + round_amount(3.0 / 60.0 * 0.015));
        assert_eq!(b.chat, Some(chat));
        assert_eq!(b.speech_to_text, Some(stt));
        assert_eq!(b.text_to_speech, Some(tts));
        assert_eq!(b.total, Some(round_amount(chat + stt + tts)));
        assert!(b.complete);
        assert_eq!(b.currency, "EUR");

        meter.chat("openai", "gpt-9", 10, 10);
        let b = meter.breakdown().unwrap();
        assert_eq!((b.chat, b.total, b.complete), (None, None, false), "unknown, never zero");
        assert_eq!(b.speech_to_text, Some(stt), "the other capabilities keep their figures");
        let unknown = b.items.iter().find(|i| i.model == "gpt-9").unwrap();
        assert_eq!((unknown.cost, unknown.priced_as.as_deref(), unknown.input_tokens), (None, None, Some(10)));

        assert!(CostMeter::new(None).breakdown().is_none(), "no prices file: no cost at all");
    }

    #[test]
    fn parts_merge_by_provider_and_model() {
        let live = CostMeter::new(Some(prices()));
        live.speech_to_text("openai", "whisper-1", 60.0, 0.0);
        live.chat("openai", "gpt-4o-mini", 1_000_000, 0);
        live.unreported();
        let recording = CostMeter::new(Some(prices()));
        recording.speech_to_text("openai", "whisper-1", 120.0, 0.0);
        let merged = CostBreakdown::of_parts(live.breakdown(), recording.breakdown()).unwrap();
        assert_eq!(merged.speech_to_text, Some(0.018));
        assert_eq!(merged.chat, Some(0.15));
        assert_eq!(merged.total, Some(0.168));
        assert_eq!(merged.unreported_requests, 1);
        assert_eq!(merged.items.iter().filter(|i| i.capability == Capability::SpeechToText).count(), 1);
        assert_eq!(CostBreakdown::of_parts(None, None), None);
        let json = serde_json::to_value(&merged).unwrap();
        assert_eq!(serde_json::from_value::<CostBreakdown>(json).unwrap(), merged);
    }

    #[test]
    fn a_cut_request_counts_as_unreported() {
        let meter = CostMeter::new(Some(prices()));
        drop(Pending::new(&meter));
        let mut done = Pending::new(&meter);
        done.reported();
        drop(done);
        assert_eq!(meter.breakdown().unwrap().unreported_requests, 1);
    }
}
