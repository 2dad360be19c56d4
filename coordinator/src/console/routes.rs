//! The console routes: `POST /api/vms/{id}/console` (a ticket) and
//! `GET /api/console/{ticket}` (the WebSocket).
//!
//! Who may open a console: the VM's owner or an admin, as for every VM route (anyone else
//! gets 404), and only while the VM runs (409). The WebSocket's credential is the ticket
//! alone (browsers cannot send a bearer token there). A ticket that is unknown, used,
//! expired or foreign is answered 401, and is used up by being presented. Foreign means:
//! presented with a bearer token of another user (a client that sends a token must be the
//! ticket's user), or with `?vm=` or `?type=` naming another VM or console type than the
//! ticket's (the `url` a ticket comes with names both, so a ticket cannot be used on a URL
//! meant for another console).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;
use vmm_proto::{OpenConsole, coordinator_message};
use vmm_shared::VmStatus;
use vmm_shared::api::console::{ConsoleKind, ConsoleQuery, TicketRequest, TicketView};

use super::Consoles;
use super::relay::{MAX_CLIENT_MESSAGE, Relay};
use super::sessions::{AttachOutcome, ConsoleId, Refusal};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::hosts::DispatchError;
use crate::http::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::users;
use crate::vms::Vm;
use crate::vms::routes::load_visible;

/// The WebSocket subprotocol noVNC may ask for; chosen when offered.
pub const BINARY_SUBPROTOCOL: &str = "binary";

fn require_running(vm: &Vm) -> Result<(), ApiError> {
    if vm.status == VmStatus::Running {
        Ok(())
    } else {
        Err(ApiError::Conflict(format!(
            "VM {} is {}; its console can be opened only while it runs",
            vm.id, vm.status
        )))
    }
}

fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Busy { .. } => ApiError::Conflict(refusal.to_string()),
        Refusal::HostFull(_) => ApiError::Unavailable(refusal.to_string()),
    }
}

/// `POST /api/vms/{id}/console`: a ticket for the VM's console.
#[utoipa::path(
    post, path = "/api/vms/{id}/console", tag = "console",
    params(("id" = String, Path, description = "The VM's ID")),
    request_body = vmm_shared::api::console::TicketRequest,
    responses(
        (status = 200, description = "A one-use ticket and the WebSocket URL to use it on", body = vmm_shared::api::console::TicketView),
        (status = 404, description = "No such VM (or another user's)", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The VM is not running, or another session holds the console (`force` takes it over)", body = vmm_shared::api::ErrorBody),
        (status = 503, description = "The host has no room for another console, or (several coordinators) its session is held by a coordinator without a public URL", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn create_ticket(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<TicketRequest>,
) -> Result<Json<TicketView>, ApiError> {
    let vm = load_visible(&app, &user, &id).await?;
    require_running(&vm)?;
    // A console relays through the coordinator holding the host's session (the bytes cannot
    // travel through the database, as commands do): when that is another coordinator, the
    // ticket is recorded for it and the URL points at it.
    if let Some(holder_url) = crate::cluster::console_elsewhere(&app.db, &vm.host_id).await? {
        let Some(holder_url) = holder_url else {
            return Err(ApiError::Unavailable(format!(
                "host {} is connected to another coordinator, which has no PUBLIC_URL: its \
                 consoles open only through that coordinator",
                vm.host_id
            )));
        };
        let issued = super::tickets::issue_routed(
            &app.db,
            app.consoles.tickets.ttl(),
            user.id,
            vm.id,
            body.kind,
            body.force,
        )
        .await?;
        tracing::info!(user = %user.username, vm_id = %vm.id, r#type = body.kind.as_str(),
            force = body.force, coordinator = %holder_url,
            "console ticket issued for the coordinator holding the host");
        return Ok(Json(ticket_view(&holder_url, issued, &vm, body.kind)));
    }
    if !body.force
        && let Some((holder, seconds)) = app.consoles.sessions.holder(vm.id, body.kind)
    {
        return Err(refused(Refusal::Busy {
            kind: body.kind,
            holder,
            seconds,
        }));
    }
    let issued = app
        .consoles
        .tickets
        .issue(user.id, vm.id, body.kind, body.force)
        .map_err(|error| ApiError::Unavailable(error.to_string()))?;
    tracing::info!(user = %user.username, vm_id = %vm.id, r#type = body.kind.as_str(),
        force = body.force, "console ticket issued");
    Ok(Json(ticket_view("", issued, &vm, body.kind)))
}

/// The answer for a ticket whose WebSocket is at `base` (empty: this coordinator).
fn ticket_view(
    base: &str,
    issued: super::tickets::Issued,
    vm: &Vm,
    kind: ConsoleKind,
) -> TicketView {
    TicketView {
        url: format!(
            "{base}/api/console/{}?vm={}&type={}",
            issued.ticket, vm.id, kind
        ),
        ticket: issued.ticket,
        expires_at: issued
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        kind,
        vm_id: vm.id,
    }
}

/// Stops awaiting a host's attach when dropped.
struct StopWaiting {
    consoles: Arc<Consoles>,
    console_id: ConsoleId,
}

impl Drop for StopWaiting {
    fn drop(&mut self) {
        self.consoles.sessions.stop_waiting(self.console_id);
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::Unauthorized(message.to_owned())
}

/// `GET /api/console/{ticket}`: redeems the ticket, has the host open the console, and
/// answers `101 Switching Protocols` once it is attached.
#[utoipa::path(
    get, path = "/api/console/{ticket}", tag = "console",
    description = "A WebSocket (RFC 6455), not a JSON endpoint: connect with a WebSocket client (`Upgrade: websocket`). The ticket is the only credential (browsers cannot send a bearer token on a WebSocket). Serial consoles carry the raw bytes of the VM's first serial port as binary messages; VNC consoles carry RFB with security type None (noVNC's `binary` subprotocol is chosen when offered).",
    security(()),
    params(("ticket" = String, Path, description = "A ticket from `POST /api/vms/{id}/console`"), vmm_shared::api::console::ConsoleQuery),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open and attached to the console"),
        (status = 400, description = "Not a WebSocket request", body = vmm_shared::api::ErrorBody),
        (status = 401, description = "The ticket is unknown, used, expired, or for another user, VM or console type", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The VM stopped, or another session holds the console", body = vmm_shared::api::ErrorBody),
        (status = 503, description = "The VM's host is not connected or did not attach the console", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn open_console(
    State(app): State<AppState>,
    ApiPath(ticket): ApiPath<String>,
    query: Result<Query<ConsoleQuery>, QueryRejection>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Checked before the ticket is taken: a plain GET must not use it up.
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::BadRequest(format!(
            "this URL is a console's WebSocket: connect to it with a WebSocket client \
             ({rejection})"
        ))
    })?;
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let ticket = match app.consoles.tickets.redeem(&ticket) {
        Some(ticket) => Some(ticket),
        None if crate::cluster::is_shared(&app.db) => {
            super::tickets::redeem_routed(&app.db, &ticket).await?
        }
        None => None,
    };
    let ticket = ticket.ok_or_else(|| {
        unauthorized(
            "this console ticket is unknown, used already or expired; ask for a new one \
             with POST /api/vms/{id}/console",
        )
    })?;
    if let Some(header) = headers.get(AUTHORIZATION) {
        let user = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .and_then(|token| app.tokens.user_of(token.trim()).ok())
            .ok_or_else(|| unauthorized("the Authorization header holds no valid token"))?;
        if user != ticket.user {
            tracing::warn!(%peer, vm_id = %ticket.vm, "console ticket presented by another user");
            return Err(unauthorized(
                "this console ticket was issued to another user",
            ));
        }
    }
    if query
        .vm
        .as_deref()
        .is_some_and(|vm| vm != ticket.vm.to_string())
    {
        return Err(unauthorized("this console ticket is for another VM"));
    }
    if query
        .kind
        .as_deref()
        .is_some_and(|kind| kind != ticket.kind.as_str())
    {
        return Err(unauthorized(
            "this console ticket is for another console type",
        ));
    }
    let user = users::store::find_by_id(&app.db, ticket.user)
        .await?
        .ok_or_else(|| unauthorized("the console ticket's user no longer exists"))?;
    let user = CurrentUser {
        id: user.id,
        username: user.username,
        role: user.role,
        api_token: None,
    };
    let vm = load_visible(&app, &user, &ticket.vm.to_string()).await?;
    require_running(&vm)?;

    let console_id = Uuid::new_v4();
    let session = app
        .consoles
        .sessions
        .begin(
            vm.id,
            ticket.kind,
            &vm.host_id,
            console_id,
            &user.username,
            ticket.force,
        )
        .map_err(refused)?;
    let outcome = app.consoles.sessions.expect_attach(console_id, &vm.host_id);
    // Whatever ends this request (an answer, a timeout, the client going away), the host's
    // attach is no longer awaited.
    let _waiting = StopWaiting {
        consoles: Arc::clone(&app.consoles),
        console_id,
    };
    let open = coordinator_message::Body::OpenConsole(OpenConsole {
        console_id: console_id.to_string(),
        vm_id: vm.id.to_string(),
        kind: super::kind_to_proto(ticket.kind) as i32,
    });
    if !app.registry.notify(&vm.host_id, open).await {
        return Err(DispatchError::NotConnected(vm.host_id.clone()).into());
    }
    let patience = app.consoles.settings.open_timeout;
    let attached = match tokio::time::timeout(patience, outcome).await {
        Ok(Ok(AttachOutcome::Attached(attached))) => attached,
        Ok(Ok(AttachOutcome::Failed { kind, message })) => {
            tracing::warn!(%console_id, vm_id = %vm.id, host = %vm.host_id, %message,
                "the host could not open a console");
            return Err(DispatchError::Failed { kind, message }.into());
        }
        Ok(Err(_)) => return Err(DispatchError::Disconnected(vm.host_id.clone()).into()),
        Err(_) => {
            return Err(ApiError::Timeout(format!(
                "host {} did not open the console within {}",
                vm.host_id,
                vmm_shared::duration::display(patience)
            )));
        }
    };
    metrics::counter!("console_sessions_opened_total", "type" => ticket.kind.as_str()).increment(1);
    tracing::info!(%console_id, vm_id = %vm.id, host = %vm.host_id, user = %user.username,
        r#type = ticket.kind.as_str(), force = ticket.force, %peer, "console opened");
    let relay = Relay {
        attached: *attached,
        session,
        kind: ticket.kind,
        idle_timeout: app.consoles.settings.idle_timeout,
        vm: vm.id,
        host: vm.host_id,
        username: user.username,
    };
    Ok(upgrade
        .protocols([BINARY_SUBPROTOCOL])
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| relay.run(socket))
        .into_response())
}
