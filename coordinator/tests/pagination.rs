//! Pagination and filters of the list routes, through the real router on a temporary
//! SQLite database: pages follow one another without gaps or repeats through their
//! cursors, filters select, bad parameters answer 422, a user sees only their own VMs and
//! an admin's unbounded list is capped with a next cursor.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt as _;
use vmm_coordinator::app::router;
use vmm_coordinator::config::Placement;
use vmm_coordinator::hosts::store::{self as host_store, HostRegistration};
use vmm_coordinator::quotas::QuotaLimits;
use vmm_coordinator::users::{Role, store as user_store};
use vmm_coordinator::vms::store::{self as vm_store, NewVm};
use vmm_shared::{OperationId, VmId, VmSize};

mod support;

async fn get(app: &axum::Router, token: &str, uri: &str) -> (StatusCode, Option<String>, Value) {
    let mut request = Request::get(uri)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let next = response
        .headers()
        .get("x-next-cursor")
        .map(|v| v.to_str().unwrap().to_owned());
    if let Some(link) = response.headers().get("link") {
        let link = link.to_str().unwrap();
        assert!(link.ends_with("; rel=\"next\""), "{link}");
        assert!(link.contains(next.as_deref().unwrap()), "{link}");
    }
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, next, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn pages_filters_and_bad_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let state = support::app_state(
        dir.path(),
        support::TestSettings::new("pagination-token-0123"),
    )
    .await;
    for host in ["host-a", "host-b"] {
        host_store::register_session(
            &mut state.db.acquire().await.unwrap(),
            &HostRegistration {
                id: host.parse().unwrap(),
                cpus: 1024,
                memory_mib: 1 << 30,
                disk_gb: 1 << 20,
                libvirt_version: "0".into(),
                hypervisor: "memory".into(),
                kvm_usable: false,
                agent_version: "test".into(),
            },
        )
        .await
        .unwrap();
    }
    let alice = user_store::insert(&state.db, "alice", "hash", Role::User)
        .await
        .unwrap();
    let bob = user_store::insert(&state.db, "bob", "hash", Role::User)
        .await
        .unwrap();
    let admin = user_store::insert(&state.db, "root", "hash", Role::Admin)
        .await
        .unwrap();
    let unlimited = QuotaLimits {
        max_vms: u64::MAX,
        max_cpu: u64::MAX,
        max_memory: u64::MAX,
        max_disk_gb: u64::MAX,
        max_snapshots: u64::MAX,
    };
    for (owner, count) in [(alice.id, 25), (bob.id, 1010)] {
        for i in 0..count {
            let new = NewVm {
                id: VmId::new_random(),
                owner_id: owner,
                name: format!("vm-{i}"),
                size: VmSize {
                    cpu: 1,
                    memory_mib: 64,
                    disk_gb: 1,
                },
                image: None,
                login_user: None,
            };
            vm_store::place_and_record(
                &state.db,
                &new,
                OperationId::new_random(),
                Placement::Spread,
                4.0,
                &unlimited,
                None,
            )
            .await
            .unwrap();
        }
    }
    let token = |user| state.tokens.issue(user).unwrap().token;
    let (alice_token, admin_token) = (token(&alice), token(&admin));
    let app = router(state.clone());

    // A user without a limit: all of their VMs, no cursor.
    let (status, next, body) = get(&app, &alice_token, "/api/vms").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 25);
    assert!(next.is_none());
    // Pages of 10 through the cursors: every VM once, in order.
    let mut seen = Vec::new();
    let mut uri = "/api/vms?limit=10".to_owned();
    loop {
        let (status, next, body) = get(&app, &alice_token, &uri).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for vm in body.as_array().unwrap() {
            assert_eq!(vm["owner_id"], alice.id.to_string());
            seen.push(vm["id"].as_str().unwrap().to_owned());
        }
        match next {
            Some(cursor) => uri = format!("/api/vms?limit=10&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 25);
    // Another user's VMs are not listed, even when asked by owner.
    let (_, _, body) = get(&app, &alice_token, &format!("/api/vms?owner={}", bob.id)).await;
    assert_eq!(body.as_array().unwrap().len(), 0);
    // That empty list still checks the page asked for.
    for page in ["limit=3743", "limit=0", "cursor=nonsense"] {
        let uri = format!("/api/vms?owner={}&{page}", bob.id);
        let (status, _, body) = get(&app, &alice_token, &uri).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {body}");
    }

    // An admin's unbounded list is capped, with a cursor to the rest.
    let (status, next, body) = get(&app, &admin_token, "/api/vms").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 1000);
    let (_, last, body) = get(
        &app,
        &admin_token,
        &format!("/api/vms?cursor={}", next.unwrap()),
    )
    .await;
    assert_eq!(body.as_array().unwrap().len(), 35);
    assert!(last.is_none());
    // Filters.
    let (_, _, body) = get(
        &app,
        &admin_token,
        &format!("/api/vms?owner={}&limit=100", alice.id),
    )
    .await;
    assert_eq!(body.as_array().unwrap().len(), 25);
    let (_, _, body) = get(
        &app,
        &admin_token,
        "/api/vms?status=creating&host=host-a&limit=1000",
    )
    .await;
    let on_a = body.as_array().unwrap();
    assert!(!on_a.is_empty() && on_a.len() < 1035);
    assert!(
        on_a.iter()
            .all(|vm| vm["host"] == "host-a" && vm["status"] == "creating")
    );
    let (_, _, body) = get(&app, &admin_token, "/api/vms?status=running").await;
    assert_eq!(body.as_array().unwrap().len(), 0);
    // Operations, users and hosts page the same way.
    let (status, next, body) = get(&app, &admin_token, "/api/operations?limit=7&kind=create").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 7);
    assert!(next.is_some());
    let (_, _, body) = get(&app, &alice_token, "/api/operations?limit=1000").await;
    assert_eq!(
        body.as_array().unwrap().len(),
        25,
        "a user sees only their own operations"
    );
    let (status, next, body) = get(&app, &admin_token, "/api/admin/users?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 2);
    let (_, _, rest) = get(
        &app,
        &admin_token,
        &format!("/api/admin/users?limit=2&cursor={}", next.unwrap()),
    )
    .await;
    assert_eq!(rest.as_array().unwrap().len(), 1);
    let (_, _, body) = get(&app, &admin_token, "/api/admin/users?role=admin").await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    let (_, next, body) = get(&app, &admin_token, "/api/hosts?limit=1").await;
    assert_eq!(body[0]["id"], "host-a");
    let (_, _, body) = get(
        &app,
        &admin_token,
        &format!("/api/hosts?limit=1&cursor={}", next.unwrap()),
    )
    .await;
    assert_eq!(body[0]["id"], "host-b");

    // Bad parameters: 422 with a message naming what is wrong.
    for (uri, names) in [
        ("/api/vms?limit=0", "limit"),
        ("/api/vms?limit=abc", "limit"),
        ("/api/vms?limit=1001", "limit"),
        ("/api/vms?cursor=nonsense", "cursor"),
        ("/api/vms?status=flying", "status"),
        ("/api/vms?host=a%20b", "host"),
        ("/api/vms?owner=42", "owner"),
        ("/api/vms?colour=red", "colour"),
        ("/api/operations?kind=explode", "kind"),
        ("/api/hosts?status=gone", "status"),
        ("/api/admin/users?role=king", "role"),
    ] {
        let (status, _, body) = get(&app, &admin_token, uri).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {body}");
        assert_eq!(body["code"], 422);
        assert!(
            body["message"].as_str().unwrap().contains(names),
            "{uri}: {body}"
        );
    }
}
