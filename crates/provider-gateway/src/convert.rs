//! Between the gRPC contract (`kraliki.provider.v1`) and the `providers` crate's types: input
//! checks that only make sense at this boundary (enum values, sizes, counts) and the mapping
//! of results. Checks of the domain itself (sample rates, temperature, model names) stay in
//! `providers`, which reports them as `invalid_argument` too.

use bytes::Bytes;
use kraliki_proto::provider::v1 as pb;
use providers::{
    AudioEncoding, Capability, ChatMessage, ChatRequest, CircuitState, FinishReason, OutputEncoding, ProviderInfo,
    Role, SentimentLabel, SentimentResult, SynthesisRequest, Transcript, TranscriptionRequest, Usage,
};
use tonic::Status;

/// Longest text accepted in one field: a synthesis text, a sentiment text, one chat message.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Most messages in one chat request.
pub const MAX_MESSAGES: usize = 100;

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// A caller's value echoed in an error message, cut so that it cannot flood logs or clients.
pub fn echo(value: &str) -> String {
    value.chars().take(32).collect()
}

fn optional(value: String) -> Option<String> {
    let trimmed = value.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

fn check_text(field: &str, text: &str) -> Result<(), Status> {
    if text.trim().is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(invalid(format!("{field} exceeds {MAX_TEXT_CHARS} characters")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Capabilities and listings

/// The proto capability of a `providers` capability.
pub fn capability_to_proto(capability: Capability) -> pb::Capability {
    match capability {
        Capability::Stt => pb::Capability::SpeechToText,
        Capability::Llm => pb::Capability::Chat,
        Capability::Tts => pb::Capability::TextToSpeech,
        Capability::Sentiment => pb::Capability::Sentiment,
    }
}

/// The name used in logs, metric labels and call-api's `/v1/providers`.
pub fn capability_name(capability: Capability) -> &'static str {
    match capability {
        Capability::Stt => "speech_to_text",
        Capability::Llm => "chat",
        Capability::Tts => "text_to_speech",
        Capability::Sentiment => "sentiment",
    }
}

/// `ListProviders`' filter: `None` for all, or one capability.
pub fn capability_filter(value: i32) -> Result<Option<Capability>, Status> {
    match pb::Capability::try_from(value) {
        Ok(pb::Capability::Unspecified) => Ok(None),
        Ok(pb::Capability::SpeechToText) => Ok(Some(Capability::Stt)),
        Ok(pb::Capability::Chat) => Ok(Some(Capability::Llm)),
        Ok(pb::Capability::TextToSpeech) => Ok(Some(Capability::Tts)),
        Ok(pb::Capability::Sentiment) => Ok(Some(Capability::Sentiment)),
        Err(_) => Err(invalid(format!("unknown capability {value}"))),
    }
}

fn circuit_to_proto(state: CircuitState) -> pb::CircuitState {
    match state {
        CircuitState::Closed => pb::CircuitState::Closed,
        CircuitState::HalfOpen => pb::CircuitState::HalfOpen,
        CircuitState::Open => pb::CircuitState::Open,
    }
}

/// One row of `ListProviders`; `None` for a provider absent from the capability's failover
/// order (the contract lists only providers in an order).
pub fn provider_status(info: ProviderInfo) -> Option<pb::ProviderStatus> {
    let priority = u32::try_from(info.order?).unwrap_or(u32::MAX);
    Some(pb::ProviderStatus {
        name: info.name,
        capability: capability_to_proto(info.capability) as i32,
        configured: info.configured,
        reason: info.reason.unwrap_or_default(),
        priority,
        model: info.model.unwrap_or_default(),
        circuit_state: circuit_to_proto(info.circuit) as i32,
    })
}

// ---------------------------------------------------------------------------------------------
// Transcription

/// A `TranscribeRequest` as the providers crate's request. An unspecified encoding is accepted
/// for a WAV file (recognised by its `RIFF` header); raw audio must say what it is.
pub fn transcription_request(request: pb::TranscribeRequest) -> Result<TranscriptionRequest, Status> {
    if request.audio.is_empty() {
        return Err(invalid("audio is empty"));
    }
    let encoding = match pb::AudioEncoding::try_from(request.encoding) {
        Ok(pb::AudioEncoding::Wav) => AudioEncoding::Wav,
        Ok(pb::AudioEncoding::Pcm16) => AudioEncoding::Pcm16,
        Ok(pb::AudioEncoding::Mulaw) => AudioEncoding::Mulaw,
        Ok(pb::AudioEncoding::Alaw) => AudioEncoding::Alaw,
        Ok(pb::AudioEncoding::Unspecified) if request.audio.starts_with(b"RIFF") => AudioEncoding::Wav,
        Ok(pb::AudioEncoding::Unspecified) => {
            return Err(invalid("encoding is required (WAV, PCM16, MULAW or ALAW)"));
        }
        Err(_) => return Err(invalid(format!("unknown audio encoding {}", request.encoding))),
    };
    if encoding != AudioEncoding::Wav && request.sample_rate_hz == 0 {
        return Err(invalid("sample_rate_hz is required for raw audio"));
    }
    let channels = match request.channels {
        0 => 1,
        n => u16::try_from(n).map_err(|_| invalid("channels must be 1..=8"))?,
    };
    let mut out = TranscriptionRequest::new(Bytes::from(request.audio), encoding);
    if request.sample_rate_hz != 0 {
        out.sample_rate = request.sample_rate_hz;
    }
    out.channels = channels;
    out.language = optional(request.language);
    out.model = optional(request.model);
    out.conversation_id = optional(request.call_id);
    Ok(out)
}

/// The transcript as the gRPC answer; confidence is the mean of the words' confidences.
pub fn transcribe_response(transcript: Transcript) -> pb::TranscribeResponse {
    let confidences: Vec<f64> = transcript.words.iter().filter_map(|w| w.confidence).map(f64::from).collect();
    let confidence = (!confidences.is_empty()).then(|| confidences.iter().sum::<f64>() / confidences.len() as f64);
    pb::TranscribeResponse {
        text: transcript.text,
        language: transcript.language.unwrap_or_default(),
        duration_seconds: transcript.duration_seconds.unwrap_or_default(),
        segments: transcript
            .segments
            .into_iter()
            .map(|s| pb::TranscriptSegment { start_seconds: s.start, end_seconds: s.end, text: s.text })
            .collect(),
        provider: transcript.provider,
        model: transcript.model,
        confidence,
    }
}

// ---------------------------------------------------------------------------------------------
// Chat

/// A `StreamChatRequest` as the providers crate's request.
pub fn chat_request(request: pb::StreamChatRequest) -> Result<ChatRequest, Status> {
    if request.messages.is_empty() {
        return Err(invalid("at least one message is required"));
    }
    if request.messages.len() > MAX_MESSAGES {
        return Err(invalid(format!("at most {MAX_MESSAGES} messages are accepted")));
    }
    let messages = request
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match pb::Role::try_from(m.role) {
                Ok(pb::Role::System) => Role::System,
                Ok(pb::Role::User) => Role::User,
                Ok(pb::Role::Assistant) => Role::Assistant,
                Ok(pb::Role::Unspecified) => return Err(invalid(format!("messages[{i}].role is required"))),
                Err(_) => return Err(invalid(format!("messages[{i}].role: unknown role {}", m.role))),
            };
            check_text(&format!("messages[{i}].content"), &m.content)?;
            Ok(ChatMessage::new(role, m.content))
        })
        .collect::<Result<Vec<_>, Status>>()?;
    if let Some(t) = request.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(invalid("temperature must be between 0 and 2"));
    }
    Ok(ChatRequest {
        messages,
        model: optional(request.model),
        temperature: request.temperature,
        max_tokens: (request.max_tokens > 0).then_some(request.max_tokens),
        conversation_id: optional(request.call_id),
    })
}

/// One `delta` message.
pub fn chat_delta(text: String) -> pb::StreamChatResponse {
    pb::StreamChatResponse { event: Some(pb::stream_chat_response::Event::Delta(text)) }
}

/// The last message of a chat stream.
pub fn chat_done(
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
    provider: &str,
    model: &str,
) -> pb::StreamChatResponse {
    let finish_reason = match finish_reason {
        // A stream that ended cleanly without saying why ended naturally.
        None | Some(FinishReason::Stop) => "stop".to_owned(),
        Some(FinishReason::Length) => "length".to_owned(),
        Some(FinishReason::ContentFilter) => "content_filter".to_owned(),
        Some(FinishReason::ToolCalls) => "tool_calls".to_owned(),
        Some(FinishReason::Other(other)) => other,
    };
    let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let usage = usage.map(|u| pb::Usage {
        prompt_tokens: count(u.prompt_tokens),
        completion_tokens: count(u.completion_tokens),
        total_tokens: count(u.total_tokens),
    });
    pb::StreamChatResponse {
        event: Some(pb::stream_chat_response::Event::Done(pb::ChatCompletion {
            finish_reason,
            usage,
            provider: provider.to_owned(),
            model: model.to_owned(),
        })),
    }
}

// ---------------------------------------------------------------------------------------------
// Speech synthesis

/// A `SynthesizeSpeechRequest` as the providers crate's request; telephone defaults (μ-law,
/// 8 kHz) for an unspecified encoding or rate.
pub fn synthesis_request(request: pb::SynthesizeSpeechRequest) -> Result<SynthesisRequest, Status> {
    check_text("text", &request.text)?;
    let encoding = match pb::AudioEncoding::try_from(request.encoding) {
        Ok(pb::AudioEncoding::Unspecified | pb::AudioEncoding::Mulaw) => OutputEncoding::Mulaw,
        Ok(pb::AudioEncoding::Pcm16) => OutputEncoding::Pcm16,
        Ok(other) => {
            return Err(invalid(format!(
                "encoding {} is not offered for speech: use PCM16 or MULAW",
                other.as_str_name()
            )));
        }
        Err(_) => return Err(invalid(format!("unknown audio encoding {}", request.encoding))),
    };
    let mut out = SynthesisRequest::new(request.text);
    out.encoding = encoding;
    if request.sample_rate_hz != 0 {
        out.sample_rate = request.sample_rate_hz;
    }
    out.voice = optional(request.voice);
    out.model = optional(request.model);
    out.conversation_id = optional(request.call_id);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Sentiment

/// The text of an `AnalyzeSentimentRequest`, checked.
pub fn sentiment_text(request: &pb::AnalyzeSentimentRequest) -> Result<(), Status> {
    check_text("text", &request.text)?;
    let language = request.language.trim();
    if language.len() > 16 || !language.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(invalid("language must be a BCP-47 tag such as `en` or `en-US`"));
    }
    Ok(())
}

/// The sentiment as the gRPC answer.
pub fn sentiment_response(result: SentimentResult) -> pb::AnalyzeSentimentResponse {
    let label = match result.label {
        SentimentLabel::Negative => pb::SentimentLabel::Negative,
        SentimentLabel::Neutral => pb::SentimentLabel::Neutral,
        SentimentLabel::Positive => pb::SentimentLabel::Positive,
    };
    pb::AnalyzeSentimentResponse {
        score: f64::from(result.score),
        label: label as i32,
        keywords: result.keywords,
        provider: result.provider,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<impl std::fmt::Debug, Status>) -> (tonic::Code, String) {
        let status = result.unwrap_err();
        (status.code(), status.message().to_owned())
    }

    #[test]
    fn raw_audio_needs_its_rate_and_wav_is_recognised_without_an_encoding() {
        let raw = pb::TranscribeRequest {
            audio: vec![0; 160],
            encoding: pb::AudioEncoding::Mulaw as i32,
            ..Default::default()
        };
        assert_eq!(code(transcription_request(raw)).1, "sample_rate_hz is required for raw audio");
        let wav = pb::TranscribeRequest { audio: b"RIFF....WAVE".to_vec(), ..Default::default() };
        assert_eq!(transcription_request(wav).unwrap().encoding, AudioEncoding::Wav);
        let unknown = pb::TranscribeRequest { audio: vec![1], encoding: 42, ..Default::default() };
        assert_eq!(
            code(transcription_request(unknown)),
            (tonic::Code::InvalidArgument, "unknown audio encoding 42".into())
        );
    }

    #[test]
    fn chat_checks_roles_sizes_and_counts() {
        let message = |role: i32, content: &str| pb::ChatMessage { role, content: content.into() };
        let user = pb::Role::User as i32;
        let too_many =
            pb::StreamChatRequest { messages: vec![message(user, "hi"); MAX_MESSAGES + 1], ..Default::default() };
        assert!(code(chat_request(too_many)).1.contains("at most 100 messages"));
        let long = pb::StreamChatRequest {
            messages: vec![message(user, &"a".repeat(MAX_TEXT_CHARS + 1))],
            ..Default::default()
        };
        assert_eq!(code(chat_request(long)).1, "messages[0].content exceeds 10000 characters");
        let bad_role =
            pb::StreamChatRequest { messages: vec![message(user, "hi"), message(9, "x")], ..Default::default() };
        assert_eq!(code(chat_request(bad_role)).1, "messages[1].role: unknown role 9");
        let ok = pb::StreamChatRequest { messages: vec![message(user, "hi")], max_tokens: 0, ..Default::default() };
        assert_eq!(chat_request(ok).unwrap().max_tokens, None);
    }

    #[test]
    fn speech_defaults_to_the_phone_format_and_refuses_containers() {
        let request =
            synthesis_request(pb::SynthesizeSpeechRequest { text: "Hello".into(), ..Default::default() }).unwrap();
        assert_eq!((request.encoding, request.sample_rate), (OutputEncoding::Mulaw, 8_000));
        let wav = pb::SynthesizeSpeechRequest {
            text: "Hello".into(),
            encoding: pb::AudioEncoding::Wav as i32,
            ..Default::default()
        };
        assert!(code(synthesis_request(wav)).1.contains("use PCM16 or MULAW"));
        let blank = pb::SynthesizeSpeechRequest { text: "  ".into(), ..Default::default() };
        assert_eq!(code(synthesis_request(blank)).1, "text is empty");
    }

    #[test]
    fn listing_omits_providers_outside_the_order() {
        let info = |order| ProviderInfo {
            name: "openai".into(),
            capability: Capability::Llm,
            order,
            configured: false,
            reason: Some("OPENAI_API_KEY is not set".into()),
            circuit: CircuitState::HalfOpen,
            model: Some("gpt-4o-mini".into()),
        };
        assert!(provider_status(info(None)).is_none());
        let row = provider_status(info(Some(1))).unwrap();
        assert_eq!(row.priority, 1);
        assert_eq!(row.capability, pb::Capability::Chat as i32);
        assert_eq!(row.circuit_state, pb::CircuitState::HalfOpen as i32);
        assert_eq!(row.reason, "OPENAI_API_KEY is not set");
    }
}
