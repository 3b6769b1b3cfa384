//! gRPC clients for audio-processor and provider-gateway: lazily connected, traced and metered
//! by the telemetry client layer, with a `peer_up{peer}` gauge kept current by a health probe.
//! A peer being down is not a readiness failure (that would cascade); routes that need it
//! answer 503.

use std::time::Duration;

use kraliki_proto::{
    audio::v1::audio_processor_client::AudioProcessorClient,
    provider::v1::provider_gateway_client::ProviderGatewayClient,
};
use telemetry::{Shutdown, grpc::GrpcClientLayer, grpc::GrpcService};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tower::Layer;

pub type Traced = GrpcService<Channel>;

/// Largest answer accepted from audio-processor: recording analyses carry the speech audio
/// (32 kB per second of speech), so a long recording's answer is large.
pub const SPEECH_RESPONSE_LIMIT: usize = 512 << 20;

pub const AUDIO_PROCESSOR: &str = "audio-processor";
pub const PROVIDER_GATEWAY: &str = "provider-gateway";

/// Connections to both peers. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    pub audio: AudioProcessorClient<Traced>,
    pub gateway: ProviderGatewayClient<Traced>,
}

fn channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

impl Peers {
    /// Clients for the configured URLs; nothing connects until first use.
    pub fn new(audio_url: &str, gateway_url: &str) -> Result<Self, tonic::transport::Error> {
        let audio_channel = channel(audio_url)?;
        let gateway_channel = channel(gateway_url)?;
        let peers = Self {
            audio: AudioProcessorClient::new(GrpcClientLayer.layer(audio_channel))
                .max_decoding_message_size(SPEECH_RESPONSE_LIMIT),
            gateway: ProviderGatewayClient::new(GrpcClientLayer.layer(gateway_channel)),
        };
        Ok(peers)
    }

    /// Probes each peer's health every few seconds into `peer_up{peer}` until shutdown.
    pub fn spawn_probes(&self, audio_url: &str, gateway_url: &str, shutdown: &Shutdown) {
        for (peer, url, service) in [
            (AUDIO_PROCESSOR, audio_url, kraliki_proto::audio::v1::SERVICE_NAME),
            (PROVIDER_GATEWAY, gateway_url, kraliki_proto::provider::v1::SERVICE_NAME),
        ] {
            let Ok(ch) = channel(url) else { continue };
            let mut client = HealthClient::new(ch);
            let stop = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let mut req = tonic::Request::new(HealthCheckRequest { service: service.to_string() });
                    req.set_timeout(Duration::from_secs(2));
                    let up = matches!(
                        client.check(req).await,
                        Ok(r) if r.get_ref().status == ServingStatus::Serving as i32
                    );
                    metrics::gauge!("peer_up", "peer" => peer).set(if up { 1.0 } else { 0.0 });
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        () = stop.draining() => return,
                    }
                }
            });
        }
    }
}
