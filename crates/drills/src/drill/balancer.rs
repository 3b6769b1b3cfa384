//! A small loopback round-robin TCP balancer, standing in for a Kubernetes Service in front of
//! the call-api replicas (`drill scale`). It accepts on one port and forwards each new TCP
//! connection to the next backend whose `/ready` answered 200 recently (polled every 200 ms),
//! skipping a backend that refuses the connection. It forwards bytes and changes nothing; it
//! notes which backend took each media WebSocket (`GET /v1/calls/{id}/media…`, read from the
//! connection's first bytes without consuming them), so the drill knows which replica carries
//! which call.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

/// How often each backend's `/ready` is asked.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// A 200 from `/ready` older than this no longer counts.
const READY_FOR: Duration = Duration::from_millis(1000);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How the balancer learns which backends may take connections.
#[derive(Debug, Clone, Copy)]
pub enum Readiness {
    /// `GET http://backend/ready` every [`POLL_EVERY`]; only a recent 200 counts.
    Poll,
    /// Every backend is taken as ready (refused connections are still skipped): the tests'.
    #[cfg(test)]
    Assume,
}

/// A media WebSocket the balancer forwarded: which call, to which backend, when.
#[derive(Debug, Clone)]
pub struct Route {
    pub call: String,
    pub backend: usize,
    pub at: Instant,
}

struct Backend {
    addr: SocketAddr,
    /// When `/ready` last answered 200 (None: the last poll did not).
    ready: Mutex<Option<Instant>>,
    forwarded: AtomicU64,
    refused: AtomicU64,
}

struct Shared {
    backends: Vec<Backend>,
    readiness: Readiness,
    next: AtomicUsize,
    /// Connections refused because no backend was ready or every one refused.
    dropped: AtomicU64,
    routes: Mutex<Vec<Route>>,
}

impl Shared {
    fn eligible(&self, i: usize) -> bool {
        match self.readiness {
            #[cfg(test)]
            Readiness::Assume => true,
            Readiness::Poll => self.backends[i].ready.lock().expect("ready").is_some_and(|t| t.elapsed() < READY_FOR),
        }
    }
}

/// Per backend: connections forwarded and connection attempts refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendStats {
    pub forwarded: u64,
    pub refused: u64,
}

/// The running balancer; stops (listener, poller and every forwarded connection) when dropped.
pub struct Balancer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Balancer {
    /// Listens on `listen` (port 0 for any) and forwards to `backends` in turn.
    pub async fn start(listen: SocketAddr, backends: &[SocketAddr], readiness: Readiness) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            backends: backends
                .iter()
                .map(|a| Backend {
                    addr: *a,
                    ready: Mutex::new(None),
                    forwarded: AtomicU64::new(0),
                    refused: AtomicU64::new(0),
                })
                .collect(),
            readiness,
            next: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            routes: Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        if matches!(readiness, Readiness::Poll) {
            tokio::spawn(poll(shared.clone(), stop.clone()));
        }
        tokio::spawn(accept(listener, shared.clone(), stop.clone()));
        Ok(Self { addr, shared, stop })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Vec<BackendStats> {
        self.shared
            .backends
            .iter()
            .map(|b| BackendStats {
                forwarded: b.forwarded.load(Ordering::Relaxed),
                refused: b.refused.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Connections closed at once because no backend was ready or every one refused.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Whether backend `i` may take connections now.
    pub fn is_ready(&self, i: usize) -> bool {
        self.shared.eligible(i)
    }

    /// Every media WebSocket forwarded so far.
    pub fn routes(&self) -> Vec<Route> {
        self.shared.routes.lock().expect("routes").clone()
    }
}

async fn poll(shared: Arc<Shared>, stop: CancellationToken) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client");
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let asks = shared.backends.iter().map(|b| {
            let http = http.clone();
            async move {
                let ok =
                    matches!(http.get(format!("http://{}/ready", b.addr)).send().await, Ok(r) if r.status() == 200);
                *b.ready.lock().expect("ready") = ok.then(Instant::now);
            }
        });
        futures_util::future::join_all(asks).await;
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    // Dropped (every forwarded connection aborted) when the balancer stops.
    let mut connections = JoinSet::new();
    loop {
        let client = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        connections.spawn(forward(client, shared.clone()));
    }
}

async fn forward(mut client: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let n = shared.backends.len();
    let first = shared.next.fetch_add(1, Ordering::Relaxed);
    for k in 0..n {
        let i = (first + k) % n;
        if !shared.eligible(i) {
            continue;
        }
        let backend = &shared.backends[i];
        let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend.addr)).await {
            Ok(Ok(s)) => s,
            _ => {
                backend.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let _ = upstream.set_nodelay(true);
        backend.forwarded.fetch_add(1, Ordering::Relaxed);
        // The request line, if the client speaks first (HTTP does); not consumed.
        let mut head = [0u8; 512];
        if let Ok(Ok(len)) = tokio::time::timeout(Duration::from_secs(1), client.peek(&mut head)).await
            && let Some(call) = media_call(&head[..len])
        {
            shared.routes.lock().expect("routes").push(Route { call, backend: i, at: Instant::now() });
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
    // No backend: the client sees its connection closed, as with a Service without endpoints.
    shared.dropped.fetch_add(1, Ordering::Relaxed);
}

/// The call id of `GET /v1/calls/{id}/media[?…] HTTP/1.1`.
pub fn media_call(head: &[u8]) -> Option<String> {
    let line = head.split(|b| *b == b'\r' || *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let path = line.strip_prefix("GET ")?.split(' ').next()?;
    let path = path.split('?').next()?;
    let id = path.strip_prefix("/v1/calls/")?.strip_suffix("/media")?;
    (!id.is_empty() && !id.contains('/')).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::{Router, http::StatusCode, routing::get};

    use super::*;

    /// A backend answering `/ready` with `ready` and `/who` with its name.
    async fn backend(name: &'static str, ready: StatusCode) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        telemetry::install_crypto_provider();
        let app = Router::new()
            .route("/ready", get(move || async move { ready }))
            .route("/who", get(move || async move { name }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (addr, task)
    }

    /// A loopback port nothing listens on (bound, then released).
    fn refusing_port() -> SocketAddr {
        telemetry::install_crypto_provider();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    /// `n` requests through the balancer, each on a new connection: who answered, how often.
    async fn who(balancer: &Balancer, n: usize) -> BTreeMap<String, usize> {
        let http =
            reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(5)).build().unwrap();
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let name = match http.get(format!("{}/who", balancer.url())).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => "no answer".into(),
            };
            *seen.entry(name).or_insert(0) += 1;
        }
        seen
    }

    #[tokio::test]
    async fn skips_a_backend_that_refuses_and_spreads_over_the_live_ones() {
        let (a, _ta) = backend("a", StatusCode::OK).await;
        let (b, _tb) = backend("b", StatusCode::OK).await;
        let dead = refusing_port();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let balancer = Balancer::start(any, &[a, dead, b], Readiness::Assume).await.unwrap();
        let seen = who(&balancer, 30).await;
        assert_eq!(seen.get("no answer"), None, "{seen:?}");
        assert_eq!(seen["a"] + seen["b"], 30);
        assert!(seen["a"] >= 10 && seen["b"] >= 10, "round robin over the two live ones: {seen:?}");
        let stats = balancer.stats();
        assert_eq!(stats[1].forwarded, 0);
        assert!(stats[1].refused >= 10, "{stats:?}");
        assert_eq!(balancer.dropped(), 0);
    }

    #[tokio::test]
    async fn only_backends_whose_ready_answers_200_take_connections() {
        let (a, _ta) = backend("a", StatusCode::OK).await;
        let (b, _tb) = backend("b", StatusCode::SERVICE_UNAVAILABLE).await;
        let (c, _tc) = backend("c", StatusCode::OK).await;
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let balancer = Balancer::start(any, &[a, b, c], Readiness::Poll).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(balancer.is_ready(0) && balancer.is_ready(2)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!balancer.is_ready(1));
        let seen = who(&balancer, 20).await;
        assert_eq!(seen.get("b"), None, "{seen:?}");
        assert!(seen["a"] >= 5 && seen["c"] >= 5, "{seen:?}");
    }

    #[tokio::test]
    async fn no_ready_backend_closes_the_connection() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let balancer = Balancer::start(any, &[refusing_port()], Readiness::Assume).await.unwrap();
        assert_eq!(who(&balancer, 2).await.get("no answer"), Some(&2));
        assert_eq!(balancer.dropped(), 2);
    }

    #[test]
    fn reads_the_call_of_a_media_request_line() {
        let id = "0190e0a4-1111-7000-8000-000000000001";
        let head = format!("GET /v1/calls/{id}/media?token=abc HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(media_call(head.as_bytes()).as_deref(), Some(id));
        assert_eq!(media_call(format!("GET /v1/calls/{id}/media HTTP/1.1\r\n").as_bytes()).as_deref(), Some(id));
        assert_eq!(media_call(format!("POST /v1/calls/{id}/end HTTP/1.1\r\n").as_bytes()), None);
        assert_eq!(media_call(b"GET /v1/calls HTTP/1.1\r\n"), None);
        assert_eq!(media_call(b"\x16\x03\x01binary"), None);
    }
}
