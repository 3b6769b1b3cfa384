//! gRPC clients for audio-processor and provider-gateway, balanced across their replicas.
//!
//! `AUDIO_PROCESSOR_URL` and `PROVIDER_GATEWAY_URL` are comma-separated lists of `http://` URLs.
//! A URL whose host is a DNS name (a Kubernetes headless Service, a compose service) is resolved
//! again every `PEER_RESOLVE_INTERVAL_SECONDS`, and every address becomes an endpoint with its own
//! HTTP/2 connection. Each endpoint keeps a `grpc.health.v1.Health/Watch` stream open on that
//! connection, so an endpoint that stops serving (drains, is killed, loses its network) leaves
//! the rotation as soon as its connection or its health says so, not at the next probe, and comes
//! back by itself when it serves again.
//!
//! Every new unary call and every new stream goes to the next serving endpoint (round robin). A
//! call whose connection could not be made was not sent: unary and server-streaming calls (one
//! request message) are then sent to another endpoint. `peer_endpoints{peer}` counts the serving
//! endpoints and `peer_up{peer}` says whether there is at least one. A peer being down is not a
//! readiness failure (that would cascade); routes that need it answer 503.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::http;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use kraliki_proto::{
    audio::v1::audio_processor_client::AudioProcessorClient,
    provider::v1::provider_gateway_client::ProviderGatewayClient,
};
use telemetry::grpc::{GrpcClientLayer, GrpcService};
use tokio_util::sync::CancellationToken;
use tonic::{
    body::Body,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tower::{Layer, Service, ServiceExt as _};

pub type Traced = GrpcService<Balanced>;

/// Largest answer accepted from audio-processor: recording analyses carry the speech audio
/// (32 kB per second of speech), so a long recording's answer is large.
pub const SPEECH_RESPONSE_LIMIT: usize = 512 << 20;

pub const AUDIO_PROCESSOR: &str = "audio-processor";
pub const PROVIDER_GATEWAY: &str = "provider-gateway";

/// How many endpoints a call that could not be sent tries in all.
const MAX_ATTEMPTS: usize = 3;
/// Pause before a health watch that ended is opened again.
const WATCH_RETRY: Duration = Duration::from_secs(1);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

// ---- Configuration ---------------------------------------------------------------------------

/// One entry of a peer URL list: `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTarget {
    /// An IP literal (used as it is) or a DNS name (resolved again and again).
    pub host: String,
    pub port: u16,
}

impl PeerTarget {
    fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Parses a comma-separated list of `http://host[:port]` URLs (port 80 when absent). The
    /// message names what is wrong with which entry, never the whole value.
    pub fn parse_list(raw: &str) -> Result<Vec<Self>, String> {
        let mut targets = Vec::new();
        for (i, entry) in raw.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                return Err(format!("entry {} is empty (expected http://host:port, comma-separated)", i + 1));
            }
            let target = Self::parse(entry).map_err(|e| format!("entry {} ({entry}): {e}", i + 1))?;
            if targets.contains(&target) {
                return Err(format!("entry {} ({entry}) is listed twice", i + 1));
            }
            targets.push(target);
        }
        Ok(targets)
    }

    fn parse(entry: &str) -> Result<Self, String> {
        let uri: http::Uri = entry.parse().map_err(|_| "is not a URL".to_string())?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err("https is not supported: the services speak plaintext HTTP/2 to each other (put a mesh \
                            in between for mTLS)"
                    .into());
            }
            _ => return Err("must start with http://".into()),
        }
        let authority = uri.authority().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            return Err("must not carry credentials".into());
        }
        if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/" && !pq.as_str().is_empty()) {
            return Err("must not have a path or query".into());
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err("has no host".into());
        }
        let port = authority.port_u16().unwrap_or(80);
        if port == 0 {
            return Err("port 0 cannot be reached".into());
        }
        Ok(Self { host, port })
    }
}

/// Where call-api finds its peers and how often it looks again.
#[derive(Debug, Clone)]
pub struct PeersConfig {
    /// `AUDIO_PROCESSOR_URL`, default `http://127.0.0.1:50051`.
    pub audio: Vec<PeerTarget>,
    /// `PROVIDER_GATEWAY_URL`, default `http://127.0.0.1:50052`.
    pub gateway: Vec<PeerTarget>,
    /// `PEER_RESOLVE_INTERVAL_SECONDS`: how often DNS names are resolved again, default 5.
    pub resolve_interval: Duration,
    /// `INTERNAL_AUTH_TOKEN`: sent as `authorization: Bearer <token>` on every call to a peer
    /// (the health watch goes without: health is open).
    pub auth_token: Option<telemetry::Secret>,
}

impl PeersConfig {
    pub const DEFAULT_AUDIO_URL: &'static str = "http://127.0.0.1:50051";
    pub const DEFAULT_GATEWAY_URL: &'static str = "http://127.0.0.1:50052";

    pub fn read(r: &mut telemetry::Reader<'_>) -> Self {
        let list = |r: &mut telemetry::Reader<'_>, name: &str, default: &str| {
            let raw = r.string(name).filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_string());
            match PeerTarget::parse_list(&raw) {
                Ok(list) => list,
                Err(e) => {
                    r.error(name, e);
                    Vec::new()
                }
            }
        };
        let audio = list(r, "AUDIO_PROCESSOR_URL", Self::DEFAULT_AUDIO_URL);
        let gateway = list(r, "PROVIDER_GATEWAY_URL", Self::DEFAULT_GATEWAY_URL);
        let resolve_interval = r.seconds_or("PEER_RESOLVE_INTERVAL_SECONDS", Duration::from_secs(5), 3600.0);
        if resolve_interval < Duration::from_millis(100) {
            r.error("PEER_RESOLVE_INTERVAL_SECONDS", "must be at least 0.1 seconds");
        }
        let auth_token = telemetry::config::read_internal_auth_token(r);
        Self { audio, gateway, resolve_interval, auth_token }
    }
}

// ---- Resolution ------------------------------------------------------------------------------

/// Turns a DNS name into addresses; injectable so that tests can change the answer.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (A and AAAA records; a headless Service answers with every ready pod).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemDns;

impl Resolve for SystemDns {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<io::Result<Vec<SocketAddr>>> {
        let host = host.to_string();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) })
    }
}

// ---- The endpoint set ------------------------------------------------------------------------

const UNKNOWN: u8 = 0;
const SERVING: u8 = 1;
const DOWN: u8 = 2;

/// One address of a peer: its connection and what its health watch last said.
#[derive(Clone)]
struct Member {
    addr: SocketAddr,
    channel: Channel,
    health: Arc<AtomicU8>,
    stop: CancellationToken,
}

/// The endpoints of one peer.
pub struct EndpointSet {
    peer: &'static str,
    /// The gRPC service whose health is watched.
    service: &'static str,
    members: RwLock<Vec<Member>>,
    next: AtomicUsize,
}

impl EndpointSet {
    fn new(peer: &'static str, service: &'static str) -> Arc<Self> {
        metrics::gauge!(crate::metrics::PEER_ENDPOINTS, "peer" => peer).set(0.0);
        Arc::new(Self { peer, service, members: RwLock::new(Vec::new()), next: AtomicUsize::new(0) })
    }

    fn members(&self) -> Vec<Member> {
        self.members.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The addresses in the set and whether each is serving (tests, logs).
    pub fn snapshot(&self) -> Vec<(SocketAddr, bool)> {
        self.members().iter().map(|m| (m.addr, m.health.load(Ordering::Relaxed) == SERVING)).collect()
    }

    /// Endpoints whose health watch says they serve.
    pub fn serving(&self) -> usize {
        self.members().iter().filter(|m| m.health.load(Ordering::Relaxed) == SERVING).count()
    }

    /// The next endpoint in turn among those serving (else those not yet watched, else those
    /// last seen down), skipping `tried`.
    fn pick(&self, tried: &[SocketAddr]) -> Option<Member> {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        let eligible = |state: u8| {
            members
                .iter()
                .filter(move |m| m.health.load(Ordering::Relaxed) == state && !tried.contains(&m.addr))
                .collect::<Vec<_>>()
        };
        let mut pool = eligible(SERVING);
        if pool.is_empty() {
            pool = eligible(UNKNOWN);
        }
        // None known to serve (all restarting, or not yet watched again since they came up):
        // try them anyway rather than fail without trying, as a single connection would.
        if pool.is_empty() {
            pool = eligible(DOWN);
        }
        if pool.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        Some(pool[i].clone())
    }

    fn set_health(&self, member: &Member, state: u8) {
        if member.health.swap(state, Ordering::Relaxed) != state {
            match state {
                SERVING => tracing::info!(peer = self.peer, endpoint = %member.addr, "peer endpoint serving"),
                _ => tracing::info!(peer = self.peer, endpoint = %member.addr, "peer endpoint left the rotation"),
            }
            self.record();
        }
    }

    fn record(&self) {
        let serving = self.serving();
        metrics::gauge!(crate::metrics::PEER_ENDPOINTS, "peer" => self.peer).set(serving as f64);
        metrics::gauge!(crate::metrics::PEER_UP, "peer" => self.peer).set(if serving > 0 { 1.0 } else { 0.0 });
    }

    /// Makes the set exactly `addrs`: new addresses join (and start their health watch), gone
    /// ones leave (their watch stops; calls already on them finish on their connection).
    fn update(self: &Arc<Self>, addrs: &BTreeSet<SocketAddr>, watch_retry: Duration) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let before = members.len();
        members.retain(|m| {
            let keep = addrs.contains(&m.addr);
            if !keep {
                m.stop.cancel();
                tracing::info!(peer = self.peer, endpoint = %m.addr, "peer endpoint removed (no longer resolved)");
            }
            keep
        });
        let removed = before - members.len();
        let mut added = 0;
        for addr in addrs {
            if members.iter().any(|m| m.addr == *addr) {
                continue;
            }
            let Ok(channel) = endpoint(*addr) else { continue };
            let member = Member {
                addr: *addr,
                channel,
                health: Arc::new(AtomicU8::new(UNKNOWN)),
                stop: CancellationToken::new(),
            };
            tokio::spawn(watch(Arc::downgrade(self), member.clone(), watch_retry));
            tracing::info!(peer = self.peer, endpoint = %addr, "peer endpoint added");
            members.push(member);
            added += 1;
        }
        drop(members);
        if added + removed > 0 {
            self.record();
        }
    }

    fn stop(&self) {
        for m in self.members.read().unwrap_or_else(|e| e.into_inner()).iter() {
            m.stop.cancel();
        }
    }
}

fn endpoint(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Keeps one endpoint's health current from a `Health/Watch` stream on its own connection. The
/// stream is dropped as soon as the endpoint stops serving, so that it never holds a draining
/// server open.
async fn watch(set: std::sync::Weak<EndpointSet>, member: Member, retry: Duration) {
    let Some(service) = set.upgrade().map(|s| s.service) else { return };
    let mut client = HealthClient::new(member.channel.clone());
    let set_health = |state: u8| {
        if let Some(set) = set.upgrade() {
            set.set_health(&member, state);
        }
    };
    loop {
        let request = HealthCheckRequest { service: service.to_string() };
        let opened = tokio::select! {
            () = member.stop.cancelled() => return,
            opened = client.watch(request) => opened,
        };
        match opened {
            Ok(response) => {
                let mut updates = response.into_inner();
                loop {
                    let update = tokio::select! {
                        () = member.stop.cancelled() => return,
                        update = updates.message() => update,
                    };
                    match update {
                        Ok(Some(u)) if u.status == ServingStatus::Serving as i32 => set_health(SERVING),
                        Ok(Some(_)) | Ok(None) | Err(_) => {
                            set_health(DOWN);
                            break;
                        }
                    }
                }
            }
            Err(_) => set_health(DOWN),
        }
        tokio::select! {
            () = member.stop.cancelled() => return,
            () = tokio::time::sleep(retry) => {}
        }
    }
}

/// Resolution of one peer's targets, remembering each name's last good answer.
struct Resolution {
    set: Arc<EndpointSet>,
    targets: Vec<PeerTarget>,
    resolver: Arc<dyn Resolve>,
    last: BTreeMap<usize, Vec<SocketAddr>>,
    failing: BTreeSet<usize>,
    watch_retry: Duration,
}

impl Resolution {
    /// Resolves every target once and makes the set match.
    async fn once(&mut self) {
        let mut addrs = BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if let Some(ip) = t.ip() {
                addrs.insert(SocketAddr::new(ip, t.port));
                continue;
            }
            match self.resolver.resolve(&t.host, t.port).await {
                Ok(found) => {
                    if self.failing.remove(&i) {
                        tracing::info!(peer = self.set.peer, host = %t.host, addresses = found.len(), "peer name resolves again");
                    }
                    self.last.insert(i, found);
                }
                // A failed lookup keeps the last answer: DNS trouble alone does not empty the set
                // (endpoints that are really gone leave it through their health watch).
                Err(e) => {
                    if self.failing.insert(i) {
                        tracing::warn!(peer = self.set.peer, host = %t.host, error = %e, "could not resolve a peer name; keeping its last addresses");
                    }
                }
            }
            addrs.extend(self.last.get(&i).into_iter().flatten().copied());
        }
        self.set.update(&addrs, self.watch_retry);
    }

    /// Resolves again every `interval` until `stop`.
    async fn run(mut self, interval: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    self.set.stop();
                    return;
                }
                () = tokio::time::sleep(interval) => {}
            }
            self.once().await;
        }
    }
}

// ---- The balanced channel --------------------------------------------------------------------

/// A tower service over a peer's endpoint set: each request goes to the next serving endpoint.
#[derive(Clone)]
pub struct Balanced {
    set: Arc<EndpointSet>,
    /// `authorization: Bearer <INTERNAL_AUTH_TOKEN>`, when set (a sensitive header value).
    auth: Option<http::HeaderValue>,
}

/// Whether the call failed before any of it reached the peer: its connection could not be made.
fn not_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Sends `req` to `member` once; a connection that could not be made marks it down.
async fn send_once(
    set: &EndpointSet,
    member: &Member,
    req: http::Request<Body>,
) -> Result<http::Response<Body>, BoxError> {
    let result = member.channel.clone().oneshot(req).await;
    if let Err(e) = &result
        && not_sent(e)
    {
        set.set_health(member, DOWN);
    }
    result.map_err(Into::into)
}

impl Balanced {
    fn no_endpoint(&self) -> BoxError {
        Box::new(tonic::Status::unavailable(format!("no {} endpoint is serving", self.set.peer)))
    }
}

impl Service<http::Request<Body>> for Balanced {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if let Some(auth) = &self.auth {
            req.headers_mut().insert(http::header::AUTHORIZATION, auth.clone());
        }
        let this = self.clone();
        Box::pin(async move {
            // One request message (unary, server streaming): it can be sent again elsewhere.
            let replayable = telemetry::grpc::known_methods()
                .get(req.uri().path())
                .is_some_and(|m| matches!(m.kind, "unary" | "server_stream"));
            if !replayable {
                let Some(member) = this.set.pick(&[]) else { return Err(this.no_endpoint()) };
                return send_once(&this.set, &member, req).await;
            }
            let (parts, body) = req.into_parts();
            let bytes: Bytes = body.collect().await.map_err(|e| -> BoxError { Box::new(e) })?.to_bytes();
            let mut tried = Vec::new();
            loop {
                let Some(member) = this.set.pick(&tried) else { return Err(this.no_endpoint()) };
                let mut request = http::Request::new(Body::new(http_body_util::Full::new(bytes.clone())));
                *request.method_mut() = parts.method.clone();
                *request.uri_mut() = parts.uri.clone();
                *request.version_mut() = parts.version;
                *request.headers_mut() = parts.headers.clone();
                *request.extensions_mut() = parts.extensions.clone();
                match member.channel.clone().oneshot(request).await {
                    Err(e) if not_sent(&e) => {
                        this.set.set_health(&member, DOWN);
                        tried.push(member.addr);
                        if tried.len() >= MAX_ATTEMPTS {
                            return Err(e.into());
                        }
                        metrics::counter!(crate::metrics::PEER_RETRIES_TOTAL, "peer" => this.set.peer).increment(1);
                        tracing::debug!(peer = this.set.peer, endpoint = %member.addr, "call not sent, trying another endpoint");
                    }
                    result => return result.map_err(Into::into),
                }
            }
        })
    }
}

/// A tower service over one endpoint of a peer (a shared live stream stays on the endpoint it
/// was opened on). A stream whose connection could not be made marks the endpoint down, as
/// [`Balanced`] does, so the next pick skips it.
#[derive(Clone)]
pub struct Pinned {
    set: Arc<EndpointSet>,
    member: Member,
    auth: Option<http::HeaderValue>,
}

impl Service<http::Request<Body>> for Pinned {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if let Some(auth) = &self.auth {
            req.headers_mut().insert(http::header::AUTHORIZATION, auth.clone());
        }
        let this = self.clone();
        Box::pin(async move { send_once(&this.set, &this.member, req).await })
    }
}

// ---- The clients -----------------------------------------------------------------------------

/// Clients of both peers. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    pub audio: AudioProcessorClient<Traced>,
    pub gateway: ProviderGatewayClient<Traced>,
    pub audio_endpoints: Arc<EndpointSet>,
    pub gateway_endpoints: Arc<EndpointSet>,
    auth: Option<http::HeaderValue>,
    stop: CancellationToken,
}

impl Peers {
    /// Clients for the configured peers; their endpoints are resolved now and kept current in
    /// the background (with the system resolver) until [`Peers::close`].
    pub async fn start(config: &PeersConfig) -> Self {
        Self::start_with(config, Arc::new(SystemDns)).await
    }

    /// As [`Peers::start`], resolving DNS names with `resolver`.
    pub async fn start_with(config: &PeersConfig, resolver: Arc<dyn Resolve>) -> Self {
        let stop = CancellationToken::new();
        let audio_endpoints = EndpointSet::new(AUDIO_PROCESSOR, kraliki_proto::audio::v1::SERVICE_NAME);
        let gateway_endpoints = EndpointSet::new(PROVIDER_GATEWAY, kraliki_proto::provider::v1::SERVICE_NAME);
        metrics::gauge!(crate::metrics::PEER_UP, "peer" => AUDIO_PROCESSOR).set(0.0);
        metrics::gauge!(crate::metrics::PEER_UP, "peer" => PROVIDER_GATEWAY).set(0.0);
        for (set, targets) in [(&audio_endpoints, &config.audio), (&gateway_endpoints, &config.gateway)] {
            let mut resolution = Resolution {
                set: set.clone(),
                targets: targets.clone(),
                resolver: resolver.clone(),
                last: BTreeMap::new(),
                failing: BTreeSet::new(),
                watch_retry: WATCH_RETRY.min(config.resolve_interval),
            };
            // The first resolution happens before serving, so the first calls have endpoints
            // (bounded: a slow DNS server does not hold the start; the loop tries again).
            let _ = tokio::time::timeout(Duration::from_secs(3), resolution.once()).await;
            tokio::spawn(resolution.run(config.resolve_interval, stop.clone()));
        }
        let auth = config.auth_token.as_ref().map(telemetry::auth::bearer_header);
        let balanced = |set: &Arc<EndpointSet>| Balanced { set: set.clone(), auth: auth.clone() };
        Self {
            audio: AudioProcessorClient::new(GrpcClientLayer.layer(balanced(&audio_endpoints)))
                .max_decoding_message_size(SPEECH_RESPONSE_LIMIT),
            gateway: ProviderGatewayClient::new(GrpcClientLayer.layer(balanced(&gateway_endpoints))),
            audio_endpoints,
            gateway_endpoints,
            auth,
            stop,
        }
    }

    /// The next serving audio-processor endpoint (round robin, as a new stream on
    /// [`Peers::audio`] would go) and a client that stays on it.
    pub fn pick_audio(&self) -> Option<(SocketAddr, AudioProcessorClient<GrpcService<Pinned>>)> {
        let member = self.audio_endpoints.pick(&[])?;
        let pinned = Pinned { set: self.audio_endpoints.clone(), member: member.clone(), auth: self.auth.clone() };
        Some((
            member.addr,
            AudioProcessorClient::new(GrpcClientLayer.layer(pinned)).max_decoding_message_size(SPEECH_RESPONSE_LIMIT),
        ))
    }

    /// Stops resolving and watching (at the very end of shutdown: live calls use the peers
    /// while they drain).
    pub fn close(&self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_lists_parse_and_name_the_bad_entry() {
        let list =
            PeerTarget::parse_list("http://audio-processor:50051, http://10.0.0.2:50051,http://[::1]:7").unwrap();
        assert_eq!(
            list,
            [
                PeerTarget { host: "audio-processor".into(), port: 50051 },
                PeerTarget { host: "10.0.0.2".into(), port: 50051 },
                PeerTarget { host: "::1".into(), port: 7 },
            ]
        );
        assert_eq!(list[1].ip(), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(list[2].ip(), Some("::1".parse().unwrap()));
        assert_eq!(list[0].ip(), None);
        assert_eq!(PeerTarget::parse_list("http://a").unwrap()[0].port, 80);
        for (bad, says) in [
            ("", "entry 1 is empty"),
            ("http://a:1,,http://b:2", "entry 2 is empty"),
            ("ftp://a:1", "must start with http://"),
            ("https://a:1", "https is not supported"),
            ("http://a:1/v1", "path"),
            ("http://u:p@a:1", "credentials"),
            ("http://a:0", "port 0"),
            ("http://a:1,http://a:1", "listed twice"),
            ("not a url", "not a URL"),
        ] {
            let e = PeerTarget::parse_list(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    /// A resolver whose answer the test changes.
    struct FakeDns(std::sync::Mutex<io::Result<Vec<SocketAddr>>>);

    impl Default for FakeDns {
        fn default() -> Self {
            Self(std::sync::Mutex::new(Ok(Vec::new())))
        }
    }

    impl FakeDns {
        fn answer(&self, addrs: io::Result<Vec<SocketAddr>>) {
            *self.0.lock().unwrap() = addrs;
        }
    }

    impl Resolve for Arc<FakeDns> {
        fn resolve(&self, host: &str, _port: u16) -> BoxFuture<io::Result<Vec<SocketAddr>>> {
            assert_eq!(host, "audio.test");
            let answer = match &*self.0.lock().unwrap() {
                Ok(a) => Ok(a.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            Box::pin(async move { answer })
        }
    }

    fn addrs(set: &EndpointSet) -> Vec<SocketAddr> {
        let mut a: Vec<_> = set.snapshot().into_iter().map(|(a, _)| a).collect();
        a.sort();
        a
    }

    async fn eventually(mut f: impl FnMut() -> bool) {
        for _ in 0..400 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached within 4 s");
    }

    #[tokio::test]
    async fn dns_answers_are_followed_and_a_failed_lookup_keeps_the_last_one() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let c: SocketAddr = "127.0.0.3:1".parse().unwrap();
        let dns = Arc::new(FakeDns::default());
        dns.answer(Ok(vec![a, b]));
        let config = PeersConfig {
            audio: PeerTarget::parse_list("http://audio.test:1").unwrap(),
            gateway: PeerTarget::parse_list("http://127.0.0.9:1").unwrap(),
            resolve_interval: Duration::from_millis(50),
            auth_token: None,
        };
        let peers = Peers::start_with(&config, Arc::new(dns.clone())).await;
        assert_eq!(addrs(&peers.audio_endpoints), [a, b]);
        assert_eq!(addrs(&peers.gateway_endpoints), ["127.0.0.9:1".parse().unwrap()]);
        // A new replica joins and one leaves, without a restart.
        dns.answer(Ok(vec![b, c]));
        eventually(|| addrs(&peers.audio_endpoints) == [b, c]).await;
        // DNS trouble alone does not empty the set.
        dns.answer(Err(io::Error::other("SERVFAIL")));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(addrs(&peers.audio_endpoints), [b, c]);
        dns.answer(Ok(vec![a]));
        eventually(|| addrs(&peers.audio_endpoints) == [a]).await;
        // Nothing listens on these addresses: every endpoint is down, and a call says so at once.
        eventually(|| peers.audio_endpoints.snapshot().iter().all(|(_, serving)| !serving)).await;
        peers.close();
    }

    #[test]
    fn connect_errors_mean_not_sent() {
        let connect: BoxError =
            Box::new(tonic::ConnectError(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused))));
        assert!(not_sent(&*connect));
        let other: BoxError = Box::new(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(!not_sent(&*other));
    }
}
