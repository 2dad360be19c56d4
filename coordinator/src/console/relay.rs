//! One console session's relay between the client's WebSocket and the agent's stream.
//!
//! Guest output goes to the client as binary messages, one per frame the agent sent; the
//! client's binary (or text) messages go to the agent as they are. Each direction awaits
//! its writer before reading more, so a client that reads nothing leaves the agent's frames
//! unread, and HTTP/2's window stops the agent. The session ends when the first of these
//! happens, and the WebSocket is closed with the code and reason of [`End`]:
//! the client closes or goes away, the agent closes the console (or its stream breaks: the
//! agent died), a newer session takes the console over, or no byte moved for the idle
//! timeout. The agent is told why with a `closed` frame, and its stream ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use vmm_proto::console_frame::Body as FrameBody;
use vmm_proto::{ConsoleClosed, ConsoleFrame};
use vmm_shared::{HostId, VmId};

use super::ConsoleKind;
use super::sessions::{Attached, SessionGuard};

/// The largest message a client may send (a paste, a burst of VNC events).
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// How long the relay tries to deliver its close message to a client that may read nothing.
const CLOSE_PATIENCE: Duration = Duration::from_secs(5);

/// WebSocket close codes of a console session (4000-4999 are the application's).
pub mod close_code {
    /// The client closed the session.
    pub const NORMAL: u16 = 1000;
    /// No byte moved either way for `CONSOLE_IDLE_TIMEOUT`.
    pub const IDLE: u16 = 4000;
    /// A newer session of the same console took it over (`"force": true`).
    pub const TAKEN_OVER: u16 = 4001;
    /// The host's agent went away (its stream broke: killed, restarted, disconnected).
    pub const AGENT_GONE: u16 = 4002;
    /// The console closed on the host (the VM stopped, or the host ended it).
    pub const HOST_CLOSED: u16 = 4003;
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// The client sent a close message, or its connection ended.
    Client(String),
    /// The agent closed the console, saying why.
    Host(String),
    /// The agent's stream broke or ended without a word.
    AgentGone(String),
    TakenOver,
    Idle(Duration),
}

impl End {
    fn code(&self) -> u16 {
        match self {
            End::Client(_) => close_code::NORMAL,
            End::Host(_) => close_code::HOST_CLOSED,
            End::AgentGone(_) => close_code::AGENT_GONE,
            End::TakenOver => close_code::TAKEN_OVER,
            End::Idle(_) => close_code::IDLE,
        }
    }

    /// The close reason (a WebSocket close reason holds at most 123 bytes).
    fn reason(&self) -> String {
        let reason = match self {
            End::Client(reason) => reason.clone(),
            End::Host(reason) => format!("the host closed the console: {reason}"),
            End::AgentGone(reason) => format!("the host's agent went away: {reason}"),
            End::TakenOver => "another session took over this console".to_owned(),
            End::Idle(after) => format!(
                "idle for {} (CONSOLE_IDLE_TIMEOUT)",
                vmm_shared::duration::display(*after)
            ),
        };
        truncate(reason, 123)
    }

    /// The label of `console_sessions_total`.
    fn label(&self) -> &'static str {
        match self {
            End::Client(_) => "client",
            End::Host(_) => "host",
            End::AgentGone(_) => "agent_gone",
            End::TakenOver => "taken_over",
            End::Idle(_) => "idle",
        }
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Everything a session's relay needs.
pub struct Relay {
    pub attached: Attached,
    pub session: SessionGuard,
    pub kind: ConsoleKind,
    pub idle_timeout: Duration,
    pub vm: VmId,
    pub host: HostId,
    pub username: String,
}

impl Relay {
    /// Relays until the session ends, then closes both sides.
    pub async fn run(self, socket: WebSocket) {
        let Relay {
            attached,
            mut session,
            kind,
            idle_timeout,
            vm,
            host,
            username,
        } = self;
        let Attached {
            mut inbound,
            outbound,
        } = attached;
        let console_id = session.console_id();
        let started = Instant::now();
        let (mut to_client, mut from_client) = socket.split();
        // Milliseconds since `started` of the last byte moved, either way.
        let last_moved = AtomicU64::new(0);
        let moved = || {
            let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            last_moved.store(now, Ordering::Relaxed);
        };
        let (mut bytes_to_client, mut bytes_to_guest) = (0_u64, 0_u64);
        let type_label = kind.as_str();

        let end = {
            let down = async {
                loop {
                    let frame = match inbound.message().await {
                        Ok(Some(frame)) => frame,
                        Ok(None) => {
                            return End::AgentGone("its console stream ended".into());
                        }
                        Err(status) => {
                            return End::AgentGone(status.message().to_owned());
                        }
                    };
                    match frame.body {
                        Some(FrameBody::Data(bytes)) => {
                            let length = bytes.len() as u64;
                            if to_client.send(Message::Binary(bytes.into())).await.is_err() {
                                return End::Client("the client's connection ended".into());
                            }
                            bytes_to_client += length;
                            metrics::counter!("console_bytes_total", "type" => type_label,
                                "direction" => "to_client")
                            .increment(length);
                            moved();
                        }
                        Some(FrameBody::Closed(closed)) => return End::Host(closed.reason),
                        Some(FrameBody::Attach(_)) | None => {}
                    }
                }
            };
            let up = async {
                loop {
                    let bytes: Vec<u8> = match from_client.next().await {
                        Some(Ok(Message::Binary(bytes))) => bytes.into(),
                        // Terminal clients (websocat's default) send text: the same bytes.
                        Some(Ok(Message::Text(text))) => text.as_str().as_bytes().to_vec(),
                        Some(Ok(Message::Close(frame))) => {
                            let reason = frame
                                .map(|frame| frame.reason.to_string())
                                .filter(|reason| !reason.is_empty())
                                .unwrap_or_else(|| "the client closed the console".into());
                            return End::Client(reason);
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Err(error)) => {
                            return End::Client(format!("the client's connection failed: {error}"));
                        }
                        None => return End::Client("the client's connection ended".into()),
                    };
                    if bytes.is_empty() {
                        continue;
                    }
                    let length = bytes.len() as u64;
                    let frame = ConsoleFrame {
                        body: Some(FrameBody::Data(bytes)),
                    };
                    if outbound.send(Ok(frame)).await.is_err() {
                        return End::AgentGone("its console stream ended".into());
                    }
                    bytes_to_guest += length;
                    metrics::counter!("console_bytes_total", "type" => type_label,
                        "direction" => "to_guest")
                    .increment(length);
                    moved();
                }
            };
            let idle = async {
                loop {
                    let last = Duration::from_millis(last_moved.load(Ordering::Relaxed));
                    let quiet = started.elapsed().saturating_sub(last);
                    if quiet >= idle_timeout {
                        return End::Idle(idle_timeout);
                    }
                    tokio::time::sleep(idle_timeout - quiet).await;
                }
            };
            tokio::select! {
                end = down => end,
                end = up => end,
                end = idle => end,
                () = session.taken_over() => End::TakenOver,
            }
        };

        let reason = end.reason();
        // Tell the agent first (it may be gone: never wait long), then the client.
        if !matches!(end, End::Host(_) | End::AgentGone(_)) {
            let closed = ConsoleFrame {
                body: Some(FrameBody::Closed(ConsoleClosed {
                    reason: reason.clone(),
                })),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), outbound.send(Ok(closed))).await;
        }
        drop(outbound);
        drop(inbound);
        // The console is free again before the client hears that the session ended (the
        // close below; also the answer to a client's own close): a client that reopens it
        // as soon as its close is answered is never refused as a second session.
        drop(session);
        if !matches!(end, End::Client(_)) {
            let close = Message::Close(Some(CloseFrame {
                code: end.code(),
                reason: Utf8Bytes::from(reason.clone()),
            }));
            let _ = tokio::time::timeout(CLOSE_PATIENCE, to_client.send(close)).await;
        }
        let _ = tokio::time::timeout(CLOSE_PATIENCE, to_client.close()).await;
        metrics::counter!("console_sessions_total", "type" => type_label, "end" => end.label())
            .increment(1);
        tracing::info!(%console_id, vm_id = %vm, host = %host, user = %username, r#type = type_label,
            end = end.label(), %reason, seconds = started.elapsed().as_secs(), bytes_to_client,
            bytes_to_guest, "console closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame_and_say_why() {
        let long = End::Host("é".repeat(200));
        assert!(long.reason().len() <= 123);
        assert!(long.reason().starts_with("the host closed the console"));
        assert_eq!(End::TakenOver.code(), close_code::TAKEN_OVER);
        let idle = End::Idle(Duration::from_secs(900));
        assert!(
            idle.reason().contains("CONSOLE_IDLE_TIMEOUT"),
            "{}",
            idle.reason()
        );
        assert_eq!(idle.code(), 4000);
    }
}
