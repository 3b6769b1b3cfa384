//! Liveness and readiness: a registry that the service feeds (its dependencies' checks, started,
//! draining) behind HTTP `/health` + `/ready` and `grpc.health.v1.Health` per service name.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::json;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::ServiceInfo;

type CheckFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Readiness result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reasons: Vec<String>,
}

/// The health of one service. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    version: String,
    environment: String,
    started: AtomicBool,
    draining: AtomicBool,
    shutdown: RwLock<Option<tokio_util::sync::CancellationToken>>,
    checks: RwLock<Vec<(String, CheckFn)>>,
    grpc: RwLock<Option<(HealthReporter, Vec<String>)>>,
}

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl Health {
    pub fn new(info: &ServiceInfo, environment: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                service: info.name.clone(),
                version: info.version.clone(),
                environment: environment.to_string(),
                started: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                shutdown: RwLock::new(None),
                checks: RwLock::new(Vec::new()),
                grpc: RwLock::new(None),
            }),
        }
    }

    /// Adds a readiness check (e.g. "database"); an `Err` carries the reason shown by `/ready`.
    pub fn add_check<F, Fut>(&self, name: &str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || Box::pin(check()));
        self.inner.checks.write().expect("health lock").push((name.to_string(), check));
    }

    /// The `grpc.health.v1.Health` server for these service names: NOT_SERVING until
    /// [`Health::set_started`], and again once draining. The empty service name (liveness)
    /// serves for as long as the process does.
    pub async fn grpc_server(
        &self,
        services: &[&str],
    ) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health + use<>> {
        let (reporter, server) = tonic_health::server::health_reporter();
        for s in services {
            reporter.set_service_status(*s, ServingStatus::NotServing).await;
        }
        *self.inner.grpc.write().expect("health lock") =
            Some((reporter, services.iter().map(|s| s.to_string()).collect()));
        self.sync_grpc().await;
        server
    }

    /// The service has started: its listeners are bound and its own dependencies initialised.
    pub async fn set_started(&self) {
        self.inner.started.store(true, Ordering::SeqCst);
        self.sync_grpc().await;
    }

    /// Shutdown has begun: readiness fails from now on.
    pub async fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.sync_grpc().await;
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
            || self.inner.shutdown.read().expect("health lock").as_ref().is_some_and(|t| t.is_cancelled())
    }

    /// Fails readiness the moment `token` is cancelled (no waiting for a task to notice).
    pub(crate) fn link_shutdown(&self, token: tokio_util::sync::CancellationToken) {
        *self.inner.shutdown.write().expect("health lock") = Some(token);
    }

    async fn sync_grpc(&self) {
        let grpc = self.inner.grpc.read().expect("health lock").clone();
        if let Some((reporter, services)) = grpc {
            let serving = self.inner.started.load(Ordering::SeqCst) && !self.is_draining();
            let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
            for s in &services {
                reporter.set_service_status(s.as_str(), status).await;
            }
        }
    }

    /// Runs every check (concurrently, each bounded) and reports why the service is not ready.
    pub async fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if self.is_draining() {
            reasons.push("shutting down".to_string());
        }
        if !self.inner.started.load(Ordering::SeqCst) {
            reasons.push("starting".to_string());
        }
        let checks = self.inner.checks.read().expect("health lock").clone();
        let results = futures_util::future::join_all(checks.iter().map(|(name, check)| {
            let fut = check();
            async move {
                match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
                    Ok(Ok(())) => None,
                    Ok(Err(reason)) => Some(format!("{name}: {reason}")),
                    Err(_) => Some(format!("{name}: check timed out")),
                }
            }
        }))
        .await;
        reasons.extend(results.into_iter().flatten());
        Readiness { ready: reasons.is_empty(), reasons }
    }

    /// `/health` body.
    pub fn liveness_body(&self) -> serde_json::Value {
        json!({
            "status": "healthy",
            "version": self.inner.version,
            "service": self.inner.service,
            "environment": self.inner.environment,
        })
    }

    /// Router with `GET /health` and `GET /ready`.
    pub fn router(&self) -> Router {
        Router::new().route("/health", get(health)).route("/ready", get(ready)).with_state(self.clone())
    }
}

async fn health(State(h): State<Health>) -> impl IntoResponse {
    Json(h.liveness_body())
}

async fn ready(State(h): State<Health>) -> impl IntoResponse {
    let r = h.readiness().await;
    if r.ready {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "reasons": r.reasons})))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_follows_start_checks_and_drain() {
        let h = Health::new(&ServiceInfo::new("svc", "1.0.0"), "test");
        assert_eq!(h.readiness().await.reasons, ["starting"]);
        h.set_started().await;
        assert!(h.readiness().await.ready);
        let flag = Arc::new(AtomicBool::new(true));
        let f = flag.clone();
        h.add_check("database", move || {
            let ok = f.load(Ordering::SeqCst);
            async move { if ok { Ok(()) } else { Err("connection refused".to_string()) } }
        });
        assert!(h.readiness().await.ready);
        flag.store(false, Ordering::SeqCst);
        assert_eq!(h.readiness().await.reasons, ["database: connection refused"]);
        flag.store(true, Ordering::SeqCst);
        h.set_draining().await;
        assert_eq!(h.readiness().await.reasons, ["shutting down"]);
    }
}
