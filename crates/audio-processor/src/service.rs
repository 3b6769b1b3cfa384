//! The `kraliki.audio.v1.AudioProcessor` gRPC service.

use std::pin::Pin;

use futures_util::Stream;
use kraliki_proto::audio::v1::{
    AnalyzeRecordingRequest, AnalyzeRecordingResponse, AnalyzeRecordingStreamRequest, StreamAudioRequest,
    StreamAudioResponse, audio_processor_server::AudioProcessor,
};
use tonic::{Request, Response, Status, Streaming};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The audio processor's gRPC front.
#[derive(Default)]
pub struct Processor;

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not available in this release"))
}

#[tonic::async_trait]
impl AudioProcessor for Processor {
    async fn analyze_recording(
        &self,
        _: Request<AnalyzeRecordingRequest>,
    ) -> Result<Response<AnalyzeRecordingResponse>, Status> {
        Err(not_yet("recording analysis"))
    }

    async fn analyze_recording_stream(
        &self,
        _: Request<Streaming<AnalyzeRecordingStreamRequest>>,
    ) -> Result<Response<AnalyzeRecordingResponse>, Status> {
        Err(not_yet("recording analysis"))
    }

    type StreamAudioStream = ResponseStream<StreamAudioResponse>;

    async fn stream_audio(
        &self,
        _: Request<Streaming<StreamAudioRequest>>,
    ) -> Result<Response<Self::StreamAudioStream>, Status> {
        Err(not_yet("live streams"))
    }
}
