//! The `kraliki.provider.v1.ProviderGateway` gRPC service.

use std::{pin::Pin, sync::Arc};

use futures_util::Stream;
use kraliki_proto::provider::v1::{
    AnalyzeSentimentRequest, AnalyzeSentimentResponse, Capability, ListProvidersRequest, ListProvidersResponse,
    StreamChatRequest, StreamChatResponse, SynthesizeSpeechRequest, SynthesizeSpeechResponse, TranscribeRequest,
    TranscribeResponse, provider_gateway_server::ProviderGateway,
};
use tonic::{Request, Response, Status};

use crate::registry::ProvidersConfig;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The gateway's gRPC front.
pub struct Gateway {
    providers: Arc<ProvidersConfig>,
}

impl Gateway {
    pub fn new(providers: ProvidersConfig) -> Self {
        Self { providers: Arc::new(providers) }
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not available in this release"))
}

#[tonic::async_trait]
impl ProviderGateway for Gateway {
    #[tracing::instrument(skip_all, fields(capability = request.get_ref().capability))]
    async fn list_providers(
        &self,
        request: Request<ListProvidersRequest>,
    ) -> Result<Response<ListProvidersResponse>, Status> {
        let wanted = request.into_inner().capability;
        if Capability::try_from(wanted).is_err() {
            return Err(Status::invalid_argument(format!("unknown capability {wanted}")));
        }
        let providers = self
            .providers
            .statuses()
            .into_iter()
            .filter(|p| wanted == Capability::Unspecified as i32 || p.capability == wanted)
            .collect();
        Ok(Response::new(ListProvidersResponse { providers }))
    }

    async fn transcribe(&self, _: Request<TranscribeRequest>) -> Result<Response<TranscribeResponse>, Status> {
        Err(not_yet("transcription"))
    }

    type StreamChatStream = ResponseStream<StreamChatResponse>;

    async fn stream_chat(&self, _: Request<StreamChatRequest>) -> Result<Response<Self::StreamChatStream>, Status> {
        Err(not_yet("chat"))
    }

    type SynthesizeSpeechStream = ResponseStream<SynthesizeSpeechResponse>;

    async fn synthesize_speech(
        &self,
        _: Request<SynthesizeSpeechRequest>,
    ) -> Result<Response<Self::SynthesizeSpeechStream>, Status> {
        Err(not_yet("speech synthesis"))
    }

    async fn analyze_sentiment(
        &self,
        _: Request<AnalyzeSentimentRequest>,
    ) -> Result<Response<AnalyzeSentimentResponse>, Status> {
        Err(not_yet("sentiment"))
    }
}
