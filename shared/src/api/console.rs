//! Consoles: `POST /api/vms/{id}/console` (a ticket) and `GET /api/console/{ticket}` (the
//! WebSocket).

use serde::{Deserialize, Serialize};

use super::api_enum;
use crate::VmId;

api_enum! {
    /// Which console of a VM.
    pub enum ConsoleKind {
        /// The first serial port: raw bytes, as a terminal sees them.
        Serial => "serial",
        /// The screen: RFB (VNC) with security type None, as noVNC speaks it.
        Vnc => "vnc",
    }
}

/// `POST /api/vms/{id}/console`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    #[serde(rename = "type")]
    pub kind: ConsoleKind,
    /// Take the console over from the session that holds it.
    #[serde(default)]
    pub force: bool,
}

/// A console ticket: one use, short-lived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TicketView {
    pub ticket: String,
    /// Where to connect the WebSocket: a path and query (prepend `ws://` or `wss://` and the
    /// API's host), or, with several coordinators, the absolute `http(s)://` URL of the
    /// coordinator holding the VM's host (connect with `ws(s)://` instead).
    pub url: String,
    /// RFC 3339.
    pub expires_at: String,
    #[serde(rename = "type")]
    pub kind: ConsoleKind,
    pub vm_id: VmId,
}

/// `?vm=` and `?type=` of the WebSocket URL: optional, checked against the ticket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
pub struct ConsoleQuery {
    /// The VM the ticket is for.
    pub vm: Option<String>,
    /// The console type the ticket is for.
    #[serde(rename = "type")]
    pub kind: Option<String>,
}
