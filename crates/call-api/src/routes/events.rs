//! Call events for integrators, read rather than pushed: a call's live stream (Server-Sent
//! Events) and a tenant's catch-up list. The events are those sent as webhooks (`crate::events`).

use std::{collections::HashSet, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Extension, Json,
    extract::{Path, State},
    http::HeaderMap,
    response::sse::{Event as SseEvent, KeepAlive, Sse},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    AppState,
    auth::Tenant,
    db::events::Event,
    error::{ApiError, ErrorBody},
    events::stream::Rendered,
    extract::ApiQuery,
    metrics,
};

pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 500;
/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(call_events)).routes(routes!(list_events))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(id).map_err(|_| ApiError::NotFound("call"))
}

/// A call's events as Server-Sent Events: those so far, then new ones as they happen on any
/// replica, until the client disconnects (or this replica shuts down: reconnect with
/// `Last-Event-ID` to go on from the last event received). Each message has `id` (the event id),
/// `event` (its type) and `data` (the event as JSON, the same body as its webhook).
#[utoipa::path(
    get, path = "/v1/calls/{id}/events", tag = "events", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Call id"),
        ("Last-Event-ID" = Option<String>, Header,
         description = "Resume after this event (the `id` of the last message received); an unknown id sends all"),
    ),
    responses(
        (status = 200, description = "A text/event-stream of the call's events: `id: evt_…`, `event: <type>`, \
                                      `data: <Event JSON>`; a comment every 15 s while quiet",
         content_type = "text/event-stream", body = String),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such call for this key's tenant", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn call_events(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    state.db.get_call(&tenant.0, id).await?.ok_or(ApiError::NotFound("call"))?;
    let after = match headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::trim) {
        Some(last) if !last.is_empty() => state.db.event_seq(&tenant.0, last).await?.unwrap_or(0),
        _ => 0,
    };
    // Subscribe first, then read the past: an event written in between is in one or both, and
    // is sent once.
    let mut live = state.events.subscribe(id);
    let past = state.db.call_events_after(&tenant.0, id, after).await?;
    let (tx, rx) = mpsc::channel::<Arc<Rendered>>(64);
    let stop = state.shutdown.stopping_token();
    let db = state.db.clone();
    tokio::spawn(async move {
        let _open = metrics::EventStreamOpen::new();
        let mut sent = HashSet::new();
        for event in past {
            sent.insert(event.seq);
            if tx.send(Arc::new(Rendered::new(event))).await.is_err() {
                return;
            }
        }
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => return,
                () = tx.closed() => return,
                r = live.recv() => r,
            };
            let fresh = match received {
                Ok(event) => vec![event],
                // Fell behind: what it missed is in the database.
                Err(RecvError::Lagged(_)) => match db.call_events_after(&tenant.0, id, after).await {
                    Ok(events) => events.into_iter().map(|e| Arc::new(Rendered::new(e))).collect(),
                    Err(e) => {
                        tracing::warn!(call_id = %id, error = %e, "event stream could not catch up; closing it");
                        return;
                    }
                },
                Err(RecvError::Closed) => return,
            };
            for rendered in fresh {
                let event = &rendered.event;
                // Before the resume point, or sent already.
                if event.tenant != tenant.0 || event.seq <= after || !sent.insert(event.seq) {
                    continue;
                }
                if tx.send(rendered).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = futures_util::StreamExt::map(ReceiverStream::new(rx), |event| Ok::<_, Infallible>(sse_event(&event)));
    let sse: Sse<_> = Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE));
    // Proxies that buffer answers (nginx) would hold events back: ask them not to.
    Ok(([("x-accel-buffering", "no")], sse))
}

/// Describes each message of the event stream in the OpenAPI document (before OpenAPI 3.2, a
/// `text/event-stream` schema describes one event): `id`, `event` (one of the event types) and
/// `data`, a JSON string whose content is an [`Event`].
pub fn document_stream(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type, extensions::Extensions};
    let mut data = ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("The event as JSON: the same body as its webhook"))
        .build();
    let mut content = Extensions::default();
    content.insert("contentMediaType".into(), serde_json::json!("application/json"));
    content.insert("contentSchema".into(), serde_json::json!({"$ref": "#/components/schemas/Event"}));
    data.extensions = Some(content);
    let kinds: Vec<&str> = crate::db::events::EventType::ALL.iter().map(|k| k.as_str()).collect();
    let message = ObjectBuilder::new()
        .description(Some("One Server-Sent Events message: one call event"))
        .property(
            "id",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("The event id; send it back as Last-Event-ID to resume after it")),
        )
        .property("event", ObjectBuilder::new().schema_type(Type::String).enum_values(Some(kinds)))
        .property("data", data)
        .required("id")
        .required("event")
        .required("data")
        .build();
    let Some(op) = doc.paths.paths.get_mut("/v1/calls/{id}/events").and_then(|item| item.get.as_mut()) else { return };
    if let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200")
        && let Some(stream) = ok.content.get_mut("text/event-stream")
    {
        stream.schema = Some(RefOr::T(Schema::Object(message)));
    }
}

fn sse_event(rendered: &Rendered) -> SseEvent {
    let event = &rendered.event;
    SseEvent::default().id(event.id.as_str()).event(event.kind.as_str()).data(rendered.json.as_str())
}

/// `GET /v1/events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only events after this one (an event `id`, e.g. `next_after` of the previous page).
    pub after: Option<String>,
    /// Page size, 1–500, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// A page of a tenant's events, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub events: Vec<Event>,
    /// Pass as `after` to read on (the last event here, or the `after` given when there is none
    /// yet); absent when there are no events at all.
    pub next_after: Option<String>,
}

/// A tenant's events, oldest first, for catching up after downtime: page with `after` until a
/// page is empty, then poll. An event is listed once every event before it is final (within a
/// fraction of a second normally, at most 5 s after a transaction rolled back), so paging never
/// skips one.
#[utoipa::path(
    get, path = "/v1/events", tag = "events", security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, body = EventList),
        (status = 400, description = "Unknown parameter, or `after` names no event of this tenant (it may be \
                                      older than EVENTS_RETENTION_DAYS: start again without `after`)",
         body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 422, description = "limit out of range", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn list_events(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<EventList>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::Unprocessable(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let after = match params.after.as_deref() {
        None => 0,
        Some(id) => state
            .db
            .event_seq(&tenant.0, id)
            .await?
            .ok_or_else(|| ApiError::BadRequest("after names no event of this tenant".into()))?,
    };
    let settled = state.events.fresh_settled().await.ok_or(ApiError::Unavailable("event list"))?;
    let events = state.db.tenant_events(&tenant.0, after, settled, i64::from(limit)).await?;
    let next_after = events.last().map(|e| e.id.clone()).or(params.after);
    Ok(Json(EventList { events, next_after }))
}
