//! `GET /openapi.json`: OpenAPI 3.1 of every route the node serves, generated from the handlers'
//! annotations and the request and answer types they use.

use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::views::Problem;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "dialog-events",
        description = "Realtime change notifications for dialogs: the Dialogporten-style dialog API, \
            the Altinn Events-style poll, publish and webhook APIs, GraphQL subscriptions over \
            WebSocket and SSE, and operations. Errors are `application/problem+json` (RFC 9457); a \
            400 names the offending field in `detail` and `errors`. Bearer tokens come from the \
            configured issuers (or the development issuer); `dialogEvents` takes the dialog token \
            of a single-dialog read."
    ),
    paths(
        super::dialogs::create,
        super::dialogs::list_as_owner,
        super::dialogs::get_as_owner,
        super::dialogs::replace,
        super::dialogs::delete,
        super::dialogs::add_activity,
        super::dialogs::add_transmission,
        super::dialogs::restore,
        super::dialogs::purge,
        super::dialogs::list_as_end_user,
        super::dialogs::get_as_end_user,
        super::events::poll,
        super::events::publish,
        super::subscriptions::create,
        super::subscriptions::list,
        super::subscriptions::get,
        super::subscriptions::delete,
        super::subscriptions::deliveries,
        super::subscriptions::replay,
        super::subscriptions::rotate_secret,
        super::subscriptions::dead_letters,
        super::subscriptions::redrive,
        super::admin::list_nodes,
        super::admin::list_resources,
        super::admin::put_resource,
        super::admin::delete_resource,
        super::admin::list_delegations,
        super::admin::add_delegation,
        super::admin::remove_delegation,
        super::admin::backup,
        super::ops::live,
        super::ops::ready,
        super::ops::metrics,
        super::ops::jwks,
        super::ops::authorization_server,
        crate::realtime::query,
        crate::realtime::query_get,
        crate::realtime::sse::stream,
        super::pages::console,
        super::pages::console_file,
        super::pages::graphiql,
        super::pages::graphiql_file,
        super::pages::api_docs,
        super::pages::api_docs_file,
        super::pages::mint,
        openapi_json,
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
    tags(
        (name = "dialogs", description = "Dialogs, as service owners and end users see them"),
        (name = "events", description = "The poll API and publishing (Altinn Events)"),
        (name = "webhooks", description = "Webhook subscriptions and their deliveries"),
        (name = "admin", description = "Registry, delegations, nodes, dead letters, backup (scope `dialog-events:admin`)"),
        (name = "graphql", description = "GraphQL queries and `dialogEvents` subscriptions"),
        (name = "operations", description = "Health, metrics and dialog-token keys"),
        (name = "pages", description = "The console, GraphiQL, this reference, development tokens"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document, built once.
pub fn document() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default())
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/openapi.json").route(web::get().to(openapi_json)));
}

#[utoipa::path(get, path = "/openapi.json", tag = "pages",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)))]
async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}
