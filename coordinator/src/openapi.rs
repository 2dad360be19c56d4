//! The REST API's OpenAPI 3.1 document, generated from the code: every handler carries a
//! `#[utoipa::path]` (method, path, parameters, bodies, statuses) and every body is a type
//! of `vmm_shared::api` deriving `ToSchema`. Served at `GET /api/openapi.json`, without a
//! token; nothing else (no documentation page that would fetch scripts from elsewhere).
//!
//! On top of what each handler declares, every operation gets the answers any route may
//! give: 401 (a route that needs a token), 429 (a spent request budget) and a `default`
//! answer with the JSON error body, so a client generated from the document knows the
//! shape of every error.
//!
//! A route added to the router but not here fails the test in `tests/openapi.rs`, which
//! walks the router's routes.

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{ResponseBuilder, Responses};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr};
use utoipa::{Modify, OpenApi};
use vmm_shared::api::ErrorBody;

use crate::{
    admin, api_tokens, console, health, hosts, images, keys, operations, pki, quotas, snapshots,
    telemetry, users, vms,
};

/// The name of the bearer token scheme in the document.
pub const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vmm",
        description = "The REST API of the vmm coordinator: users, VMs, snapshots, images, \
            SSH keys, quotas, hosts, operations and API tokens. Send the token from \
            `POST /api/auth/login`, or an API token (`vmm_pat_…`), as \
            `Authorization: Bearer <token>`. Errors answer `{\"code\", \"message\"}`. Lists \
            take `?limit=&cursor=` and name the next page's cursor in `X-Next-Cursor`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        health::health,
        telemetry::scrape_on_api,
        openapi_json,
        users::routes::register,
        users::routes::login,
        vms::routes::list_vms,
        vms::routes::create_vm,
        vms::routes::get_vm,
        vms::routes::delete_vm,
        vms::routes::vm_action,
        console::routes::create_ticket,
        console::routes::open_console,
        snapshots::routes::list_snapshots,
        snapshots::routes::create_snapshot,
        snapshots::routes::restore_snapshot,
        snapshots::routes::delete_snapshot,
        operations::routes::list_operations,
        operations::routes::get_operation,
        images::routes::list_images,
        images::routes::create_image,
        images::routes::get_image,
        images::routes::delete_image,
        images::routes::upload_file,
        keys::routes::list_keys,
        keys::routes::add_key,
        keys::routes::delete_key,
        hosts::routes::list_hosts,
        hosts::routes::drain_host,
        hosts::routes::undrain_host,
        hosts::routes::delete_host,
        pki::routes::create_join_token,
        quotas::routes::my_quota,
        quotas::routes::user_quota,
        quotas::routes::set_user_quota,
        admin::list_users,
        admin::create_user,
        admin::delete_user,
        admin::set_role,
        api_tokens::routes::create_token,
        api_tokens::routes::list_tokens,
        api_tokens::routes::delete_token,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme, &CommonAnswers),
    security(("bearer" = [])),
    tags(
        (name = "system", description = "Health, metrics and this document"),
        (name = "auth", description = "Registration and login"),
        (name = "vms", description = "Virtual machines"),
        (name = "console", description = "Serial consoles and screens over WebSocket"),
        (name = "snapshots", description = "VM snapshots"),
        (name = "operations", description = "What state-changing requests did"),
        (name = "images", description = "The image catalogue"),
        (name = "keys", description = "The caller's SSH public keys"),
        (name = "quotas", description = "Per-user limits and usage"),
        (name = "hosts", description = "Hypervisor hosts (administrators)"),
        (name = "users", description = "User administration (administrators)"),
        (name = "tokens", description = "API tokens for scripts and automation"),
    ),
)]
pub struct ApiDoc;

/// The bearer token scheme: the JWT `POST /api/auth/login` answers.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The token from `POST /api/auth/login` (a JWT), or an API token \
                         (`vmm_pat_…`, from `POST /api/tokens`), as \
                         `Authorization: Bearer <token>`. An API token of `read` scope is \
                         refused (403) on anything but GET",
                    ))
                    .build(),
            ),
        );
    }
}

/// The answers every operation may give besides its own (see the module doc).
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                add_common_answers(operation);
            }
        }
    }
}

fn error_answer(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
        .into()
}

/// Whether the operation is open to anyone: its `security` holds an empty requirement.
fn is_public(operation: &Operation) -> bool {
    operation.security.as_ref().is_some_and(|requirements| {
        requirements.iter().any(|requirement| {
            serde_json::to_value(requirement).is_ok_and(|v| v == serde_json::json!({}))
        })
    })
}

fn add_common_answers(operation: &mut Operation) {
    let public = is_public(operation);
    let responses: &mut Responses = &mut operation.responses;
    if !public {
        responses.responses.entry("401".into()).or_insert_with(|| {
            error_answer("No token, or one that is not valid (expired, revoked, malformed)")
        });
    }
    responses.responses.entry("429".into()).or_insert_with(|| {
        error_answer("The request budget of this client or user is spent; see `Retry-After`")
    });
    responses
        .responses
        .entry("default".into())
        .or_insert_with(|| error_answer("Any other error, with the JSON error body"));
}

/// The document as served.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

static DOCUMENT_JSON: LazyLock<String> = LazyLock::new(|| {
    document()
        .to_pretty_json()
        .unwrap_or_else(|err| format!("{{\"code\":500,\"message\":\"{err}\"}}"))
});

/// `GET /api/openapi.json`.
#[utoipa::path(
    get, path = "/api/openapi.json", tag = "system", security(()),
    responses(
        (status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object),
    )
)]
pub async fn openapi_json() -> Response {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT_JSON.as_str()).into_response()
}
