//! The AI-provider layer of Voice Kraliki: speech-to-text, chat completion (LLM), text-to-speech
//! and sentiment behind one [`Gateway`], with deadlines, timeouts, retries, circuit breakers,
//! failover, concurrency limits, metrics and client spans. The `provider-gateway` service wraps
//! it in gRPC; nothing here knows about gRPC beyond [`ErrorCode`]'s names.
//!
//! # Layout
//! - [`config`]: [`ProvidersConfig::from_env`] reads every variable with the shared reader (table in the README).
//! - [`types`]: requests and results independent of any wire format.
//! - [`error`]: [`ProviderError`] and its gRPC-like [`ErrorCode`] and client-safe message.
//! - `gateway`: [`Gateway`], the failover loop and the stream guard (idle timeout, deadline).
//! - `providers/`: one module per provider speaking its real wire format: `openai` (any
//!   OpenAI-compatible server), `deepgram`, `local` (offline sentiment), `simulated` (load
//!   tests and fault drills, used only when listed).
//! - `resilience/`: circuit breaker, retry backoff, concurrency limiter.
//! - `http`, `sse`, `audio`: shared HTTP plumbing, the SSE parser, WAV/μ-law/resampling.
//! - [`sentiment`]: the lexicon-based analyser behind `local`.
//! - [`metrics`]: metric names, [`HISTOGRAM_BUCKETS`] and help texts.
//!
//! # Use
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use providers::{ChatMessage, ChatRequest, Gateway, ProvidersConfig, Role};
//! use futures_util::StreamExt;
//!
//! let config = ProvidersConfig::from_env(&providers::config::Env::from_process())?;
//! let gateway = Gateway::new(config)?;
//! let request = ChatRequest {
//!     messages: vec![ChatMessage::new(Role::User, "Hello")],
//!     ..ChatRequest::default()
//! };
//! let deadline = providers::deadline_in(std::time::Duration::from_secs(30));
//! let mut stream = gateway.chat(request, Some(deadline)).await?;
//! while let Some(chunk) = stream.next().await {
//!     print!("{}", chunk?.delta);
//! }
//! # Ok(()) }
//! ```

mod audio;
pub mod config;
pub mod error;
mod gateway;
mod http;
pub mod metrics;
mod providers;
mod resilience;
pub mod sentiment;
mod sse;
pub mod types;

pub use config::{ProvidersConfig, Secret};
pub use error::{ErrorCode, ProviderError};
pub use gateway::{Gateway, deadline_in};
pub use metrics::HISTOGRAM_BUCKETS;
pub use types::*;
