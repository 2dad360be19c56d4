//! Property tests of request parsing, through the coordinator's real axum router (in
//! process, on a temporary SQLite database, no agent connected): arbitrary bytes and
//! arbitrary JSON sent to `POST /api/vms`, `POST /api/vms/{id}/snapshots`,
//! `POST /api/auth/register` and `POST /api/auth/login` never panic the server and are
//! always answered with success or with the documented JSON error
//! (`{"code": <status>, "message": "…"}`) and a 4xx status — or, for a create that is valid
//! but has no host to go to, 503 naming that. Never a 500.
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use vmm_coordinator::app::router;

mod support;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: Router,
    token: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (router, token) = runtime.block_on(async {
            let settings = support::TestSettings {
                operation_timeout: Duration::from_secs(5),
                host_dead_after: Duration::from_secs(10),
                ..support::TestSettings::new("unused")
            };
            let state = support::app_state(dir.path(), settings).await;
            let router = router(state);
            let credentials = json!({"username": "prop-user", "password": "a-long-password"});
            let registered = send(
                &router,
                "/api/auth/register",
                None,
                &[],
                credentials.to_string().into_bytes(),
            )
            .await;
            assert_eq!(registered.0, StatusCode::CREATED, "{}", registered.1);
            let login = send(
                &router,
                "/api/auth/login",
                None,
                &[],
                credentials.to_string().into_bytes(),
            )
            .await;
            assert_eq!(login.0, StatusCode::OK, "{}", login.1);
            let token = login.1["token"].as_str().unwrap().to_owned();
            (router, token)
        });
        Fixture {
            runtime,
            router,
            token,
            _dir: dir,
        }
    })
}

async fn send(
    router: &Router,
    path: &str,
    token: Option<&str>,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = Request::post(path).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let mut request = request.body(Body::from(body)).unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, body)
}

/// Success, or the documented JSON error with a 4xx status (or 503 for "no host").
fn check_answer(path: &str, status: StatusCode, body: &Value) -> Result<(), TestCaseError> {
    if status.is_success() {
        return Ok(());
    }
    prop_assert!(
        status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "{path}: unexpected status {status} with {body}"
    );
    prop_assert_eq!(
        body.get("code").and_then(Value::as_u64),
        Some(u64::from(status.as_u16())),
        "{}: error body {}",
        path,
        body
    );
    let message = body.get("message").and_then(Value::as_str).unwrap_or("");
    prop_assert!(
        !message.trim().is_empty(),
        "{path}: empty message in {body}"
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        prop_assert!(
            message.contains("host"),
            "{path}: 503 must be about hosts: {message}"
        );
    }
    Ok(())
}

/// Arbitrary JSON values, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        ".{0,80}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Objects shaped like the real request bodies, with hostile values in their fields.
fn vm_like_json() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just(json!("vm-1")), any_json()],
        prop_oneof![(0u64..100).prop_map(|n| json!(n)), any_json()],
        prop_oneof![(0u64..5000).prop_map(|n| json!(n)), any_json()],
        proptest::option::of(prop_oneof![(0u64..5000).prop_map(|n| json!(n)), any_json()]),
        proptest::option::of((".{0,8}", any_json())),
    )
        .prop_map(|(name, cpu, memory, disk_gb, extra)| {
            let mut body = json!({"name": name, "cpu": cpu, "memory": memory});
            if let Some(disk_gb) = disk_gb {
                body["disk_gb"] = disk_gb;
            }
            if let Some((key, value)) = extra {
                body[key] = value;
            }
            body
        })
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        any_json().prop_map(|value| value.to_string().into_bytes()),
        vm_like_json().prop_map(|value| value.to_string().into_bytes()),
    ]
}

fn any_idempotency_key() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::option::of("[ -~]{0,300}").prop_map(|key| {
        key.map(|key| vec![("idempotency-key".to_owned(), key)])
            .unwrap_or_default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 192,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn vm_creates_never_fail_badly(body in any_body(), headers in any_idempotency_key()) {
        let fixture = fixture();
        let (status, answer) = fixture.runtime.block_on(
            send(&fixture.router, "/api/vms", Some(&fixture.token), &headers, body),
        );
        check_answer("/api/vms", status, &answer)?;
        // No host is connected, so nothing can ever be created.
        prop_assert!(!status.is_success(), "created without a host: {answer}");
    }

    #[test]
    fn snapshot_creates_never_fail_badly(
        body in any_body(),
        headers in any_idempotency_key(),
        // Percent-escapes included: a segment that decodes to invalid UTF-8 must still get
        // the JSON error.
        vm in prop_oneof![
            Just(uuid::Uuid::new_v4().to_string()),
            "[a-zA-Z0-9._~-]{1,40}",
            "(%[0-9A-F]{2}|[a-z]){1,12}",
        ],
    ) {
        let fixture = fixture();
        let path = format!("/api/vms/{vm}/snapshots");
        let (status, answer) = fixture.runtime.block_on(
            send(&fixture.router, &path, Some(&fixture.token), &headers, body),
        );
        check_answer(&path, status, &answer)?;
        prop_assert!(!status.is_success(), "a snapshot of a VM that does not exist: {answer}");
    }

    #[test]
    fn auth_bodies_never_fail_badly(
        body in prop_oneof![
            any_body(),
            (any_json(), any_json()).prop_map(|(username, password)| {
                json!({"username": username, "password": password}).to_string().into_bytes()
            }),
        ],
        login in any::<bool>(),
    ) {
        let fixture = fixture();
        let path = if login { "/api/auth/login" } else { "/api/auth/register" };
        let (status, answer) = fixture.runtime.block_on(
            send(&fixture.router, path, None, &[], body),
        );
        check_answer(path, status, &answer)?;
        prop_assert_ne!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
