//! The OpenAPI 3 document served at `GET /openapi.json`. The API routes document themselves
//! (`#[utoipa::path]` on each handler, collected by `utoipa_axum`'s router, so a route cannot be
//! served without being documented); this module adds the document's header, the bearer
//! security scheme, and the operational endpoints that the telemetry crate serves.

use utoipa::{
    Modify, OpenApi,
    openapi::{
        ContentBuilder, HttpMethod, ObjectBuilder, RefOr, ResponseBuilder, Schema, Type,
        path::OperationBuilder,
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::error::{ErrorBody, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Voice Kraliki call API",
        description = "Call lifecycle, providers and recordings. Requests need `Authorization: Bearer <api key>` \
                       except health, readiness, metrics, this document and the Twilio webhooks (signed by Twilio).",
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Operational),
    tags(
        (name = "calls", description = "Call lifecycle"),
        (name = "events", description = "Call events: a call's live stream and a tenant's catch-up list (the same \
                                         events are pushed as signed webhooks to WEBHOOK_ENDPOINTS)"),
        (name = "providers", description = "AI providers configured in provider-gateway"),
        (name = "twilio", description = "Twilio webhooks, authenticated by X-Twilio-Signature instead of an API key"),
        (name = "operations", description = "Health, readiness, metrics, API description"),
    )
)]
pub struct ApiDoc;

/// Adds the bearer scheme and the endpoints served outside the API routers.
struct Operational;

impl Modify for Operational {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key from API_KEYS (optionally tenant-scoped)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "twilio_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Twilio-Signature",
                "Twilio's HMAC-SHA1 request signature (auth token TWILIO_AUTH_TOKEN, URL under PUBLIC_BASE_URL)",
            ))),
        );
        let json = |schema: RefOr<Schema>| ContentBuilder::new().schema(Some(schema)).build();
        let object = || -> RefOr<Schema> { ObjectBuilder::new().schema_type(Type::Object).build().into() };
        let ops = [
            (
                "/health",
                "Liveness: the process serves",
                ResponseBuilder::new().description("Healthy").content("application/json", json(object())).build(),
                None,
            ),
            (
                "/ready",
                "Readiness: the database answers and the service is not draining",
                ResponseBuilder::new().description("Ready").content("application/json", json(object())).build(),
                Some(
                    ResponseBuilder::new()
                        .description("Not ready, with reasons")
                        .content("application/json", json(object()))
                        .build(),
                ),
            ),
            (
                "/metrics",
                "Prometheus metrics (text format)",
                ResponseBuilder::new()
                    .description("Metrics")
                    .content(
                        "text/plain",
                        ContentBuilder::new()
                            .schema(Some(ObjectBuilder::new().schema_type(Type::String).build()))
                            .build(),
                    )
                    .build(),
                None,
            ),
            (
                "/openapi.json",
                "This document",
                ResponseBuilder::new()
                    .description("OpenAPI 3 document")
                    .content("application/json", json(object()))
                    .build(),
                None,
            ),
        ];
        for (path, summary, ok, unavailable) in ops {
            let mut op = OperationBuilder::new().tag("operations").summary(Some(summary)).response("200", ok);
            if let Some(r) = unavailable {
                op = op.response("503", r);
            }
            // An empty requirement list overrides any global one: these endpoints are open.
            op = op.securities(Some(Vec::<utoipa::openapi::security::SecurityRequirement>::new()));
            openapi.paths.add_path_operation(path, vec![HttpMethod::Get], op.build());
        }
    }
}
