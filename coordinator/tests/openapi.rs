//! The OpenAPI document against the real router (in process, on a temporary SQLite
//! database): every route the router serves is in the document with the same methods, and
//! nothing the document lists is missing from the router; the document is served without a
//! token, is OpenAPI 3.1, declares the bearer scheme, and every reference in it resolves.
//!
//! The router's paths are read from its `Debug` form (axum prints every registered path)
//! and each path's methods from the `Allow` header of its 405 answer, so a route added to
//! `app::router` without a `#[utoipa::path]` in `openapi.rs` fails here.
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt as _;
use vmm_coordinator::app::router;

mod support;

async fn test_router(dir: &std::path::Path) -> Router {
    router(support::app_state(dir, support::TestSettings::new("unused")).await)
}

async fn send(router: &Router, method: Method, path: &str) -> axum::response::Response {
    send_json(router, method, path, None, None).await
}

async fn send_json(
    router: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> axum::response::Response {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let mut request = request.body(body).unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    router.clone().oneshot(request).await.unwrap()
}

/// Every path registered in the router under `/api/`, as written in `app::router`
/// (`/api/vms/{id}`); the fallbacks' own paths aside.
fn router_paths(router: &Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    let mut paths = BTreeSet::new();
    let mut rest = debug.as_str();
    while let Some(start) = rest.find("\"/api/") {
        let tail = &rest[start + 1..];
        let end = tail.find('"').unwrap();
        paths.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    paths
}

/// `/api/vms/{id}` with a value in every parameter.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in path.chars() {
        match c {
            '{' => {
                inside = true;
                out.push_str("00000000-0000-4000-8000-000000000000");
            }
            '}' => inside = false,
            _ if inside => {}
            _ => out.push(c),
        }
    }
    out
}

/// The (method, path) pairs the router serves, HEAD aside (axum answers it for every GET).
async fn served_routes(router: &Router) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for path in router_paths(router) {
        // No route takes TRACE: the answer is 405 with the path's methods in `Allow`.
        let response = send(router, Method::TRACE, &concrete(&path)).await;
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{path}: TRACE should not be routed"
        );
        let allow = response
            .headers()
            .get(header::ALLOW)
            .unwrap_or_else(|| panic!("{path}: a 405 without Allow"))
            .to_str()
            .unwrap()
            .to_owned();
        for method in allow.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            if method != "HEAD" {
                routes.insert((method.to_ascii_lowercase(), path.clone()));
            }
        }
    }
    routes
}

fn documented_routes(document: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in [
            "get", "put", "post", "delete", "patch", "options", "head", "trace",
        ] {
            if item.get(method).is_some() {
                routes.insert((method.to_owned(), path.clone()));
            }
        }
    }
    routes
}

async fn served_document(router: &Router) -> Value {
    let response = send(router, Method::GET, "/api/openapi.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/json",
        "served as JSON"
    );
    let bytes = axum::body::to_bytes(response.into_body(), 4 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn every_route_of_the_router_is_in_the_document_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let router = test_router(dir.path()).await;
    let served = served_routes(&router).await;
    // The walk must have found the router's routes, or it proves nothing.
    assert!(
        served.len() >= 30 && served.contains(&("post".into(), "/api/vms/{id}/action".into())),
        "the router's routes were not found in its Debug form: {served:?}"
    );
    let document = served_document(&router).await;
    let documented = documented_routes(&document);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes the router serves but the OpenAPI document lacks: {undocumented:?}"
    );
    let phantom: Vec<_> = documented.difference(&served).collect();
    assert!(
        phantom.is_empty(),
        "routes the document lists but the router does not serve: {phantom:?}"
    );
}

#[tokio::test]
async fn a_route_missing_from_the_document_is_caught() {
    // The same walk over the router with one more route: the comparison must see it.
    let dir = tempfile::tempdir().unwrap();
    let extra = test_router(dir.path())
        .await
        .route("/api/undocumented", axum::routing::patch(|| async { "" }));
    let served = served_routes(&extra).await;
    let document = served_document(&extra).await;
    let documented = documented_routes(&document);
    let undocumented: Vec<_> = served.difference(&documented).cloned().collect();
    assert_eq!(
        undocumented,
        [("patch".to_owned(), "/api/undocumented".to_owned())]
    );
}

async fn json_answer(response: axum::response::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// An administrator's token: registered through the router, promoted in the database.
async fn admin_token(router: &Router, db: &vmm_coordinator::db::Db) -> String {
    let credentials = serde_json::json!({"username": "doc-admin", "password": "a-long-password"});
    let (status, body) = json_answer(
        send_json(
            router,
            Method::POST,
            "/api/auth/register",
            None,
            Some(&credentials),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    sqlx::query("UPDATE users SET role = 'admin' WHERE username = 'doc-admin'")
        .execute(db)
        .await
        .unwrap();
    let (status, body) = json_answer(
        send_json(
            router,
            Method::POST,
            "/api/auth/login",
            None,
            Some(&credentials),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// Every operation the document says takes a JSON body, sent wrong types (every property a
/// nested array, which no field accepts) and a JSON value that is not an object: 422 with
/// the JSON error body, whatever the route. The routes come from the document, so a new
/// one is covered as soon as it is documented.
#[tokio::test]
async fn every_json_body_refuses_wrong_types_with_422() {
    let dir = tempfile::tempdir().unwrap();
    let state = support::app_state(dir.path(), support::TestSettings::new("unused")).await;
    let db = state.db.clone();
    let router = router(state);
    let token = admin_token(&router, &db).await;
    let document = served_document(&router).await;
    let schemas = &document["components"]["schemas"];
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Some(schema) = operation.pointer("/requestBody/content/application~1json/schema")
            else {
                continue;
            };
            let name = schema["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .unwrap_or_else(|| panic!("{method} {path}: body schema {schema}"));
            let properties = schemas[name]["properties"].as_object().unwrap();
            let wrong: serde_json::Map<String, Value> = properties
                .keys()
                .map(|key| (key.clone(), serde_json::json!([[[]]])))
                .collect();
            let method: Method = method.to_uppercase().parse().unwrap();
            let path = concrete(path);
            for body in [Value::Object(wrong), serde_json::json!([1, 2])] {
                let response =
                    send_json(&router, method.clone(), &path, Some(&token), Some(&body)).await;
                let (status, answer) = json_answer(response).await;
                assert_eq!(
                    status,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{method} {path} with {body}: {answer}"
                );
                assert_eq!(answer["code"], 422, "{method} {path}: {answer}");
                assert!(
                    answer["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{method} {path}: {answer}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} JSON bodies in the document");
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => out.push(target),
                    _ => refs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_public_openapi_3_1_with_the_bearer_scheme_and_error_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let router = test_router(dir.path()).await;
    let document = served_document(&router).await;
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    let scheme = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(document["security"], serde_json::json!([{"bearer": []}]));
    let error = &document["components"]["schemas"]["ErrorBody"];
    let required: Vec<&str> = error["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["code", "message"]);

    let public: BTreeSet<&str> = [
        "/api/health",
        "/api/metrics",
        "/api/openapi.json",
        "/api/auth/register",
        "/api/auth/login",
        "/api/console/{ticket}",
    ]
    .into();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.contains_key("default"),
                "{method} {path}: no default error answer"
            );
            let open = operation["security"] == serde_json::json!([{}]);
            assert_eq!(
                open,
                public.contains(path.as_str()),
                "{method} {path}: security {}",
                operation["security"]
            );
            if !open {
                assert!(responses.contains_key("401"), "{method} {path}: no 401");
            }
        }
    }

    let mut targets = Vec::new();
    refs(&document, &mut targets);
    assert!(!targets.is_empty());
    for target in targets {
        let name = target.strip_prefix("#/components/schemas/").unwrap();
        assert!(
            document["components"]["schemas"].get(name).is_some(),
            "{target} does not resolve"
        );
    }
}

/// The document spells every enum as the JSON does (serde's names, not the Rust variants).
#[tokio::test]
async fn enums_in_the_document_are_spelled_as_the_json() {
    use vmm_shared::api::{console, hosts, images, operations, snapshots, users, vms};
    let dir = tempfile::tempdir().unwrap();
    let document = served_document(&test_router(dir.path()).await).await;
    let schemas = &document["components"]["schemas"];
    let expected: Vec<(&str, Vec<&str>)> = vec![
        ("Role", users::Role::ALL.map(|v| v.as_str()).to_vec()),
        ("VmAction", vms::VmAction::ALL.map(|v| v.as_str()).to_vec()),
        (
            "VmStatus",
            vmm_shared::VmStatus::ALL.map(|v| v.as_str()).to_vec(),
        ),
        (
            "OperationKind",
            vmm_shared::OperationKind::ALL.map(|v| v.as_str()).to_vec(),
        ),
        (
            "SnapshotStatus",
            snapshots::SnapshotStatus::ALL.map(|v| v.as_str()).to_vec(),
        ),
        (
            "CapturedState",
            snapshots::CapturedState::ALL.map(|v| v.as_str()).to_vec(),
        ),
        (
            "ImageStatus",
            images::ImageStatus::ALL.map(|v| v.as_str()).to_vec(),
        ),
        (
            "DiskFormat",
            images::DiskFormat::ALL.map(|v| v.as_str()).to_vec(),
        ),
        (
            "HostStatus",
            hosts::HostStatus::ALL.map(|v| v.as_str()).to_vec(),
        ),
        (
            "OperationStatus",
            operations::OperationStatus::ALL
                .map(|v| v.as_str())
                .to_vec(),
        ),
        (
            "ConsoleKind",
            console::ConsoleKind::ALL.map(|v| v.as_str()).to_vec(),
        ),
    ];
    for (name, values) in expected {
        let documented: Vec<&str> = schemas[name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no enum in {}", schemas[name]))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(documented, values, "{name}");
    }
}
