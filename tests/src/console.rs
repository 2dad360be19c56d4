//! A console client as a user's program would be: asks for a ticket with the REST API and
//! connects the WebSocket it names (loopback only), then reads and writes the console's
//! bytes. Output is kept as received; a test looks for its own text in it rather than for
//! exact bytes (the test image's shell sends terminal queries after each prompt).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::api::Api;

/// How long a close may wait for the coordinator's answer.
const CLOSE_ANSWER: Duration = Duration::from_secs(10);

/// What `POST /api/vms/{id}/console` answered.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub ticket: String,
    /// Path and query of the WebSocket.
    pub url: String,
    pub expires_at: String,
}

/// Asks for a ticket; the full response, for tests of refusals.
pub async fn try_ticket(
    api: &Api,
    vm_id: &str,
    kind: &str,
    force: bool,
) -> Result<crate::Response> {
    let body = if force {
        json!({"type": kind, "force": true})
    } else {
        json!({"type": kind})
    };
    api.post(&format!("/api/vms/{vm_id}/console"), &body).await
}

/// A ticket for the `kind` console of `vm_id` (200 expected).
pub async fn ticket(api: &Api, vm_id: &str, kind: &str, force: bool) -> Result<Ticket> {
    let response = try_ticket(api, vm_id, kind, force)
        .await?
        .expect_status(200)
        .with_context(|| format!("a {kind} console ticket for VM {vm_id}"))?;
    let body: Value = response.body;
    let field = |name: &str| -> Result<String> {
        body[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no {name:?} in {body}"))
    };
    Ok(Ticket {
        ticket: field("ticket")?,
        url: field("url")?,
        expires_at: field("expires_at")?,
    })
}

/// How a WebSocket connect ended when it was refused.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// An open console session.
pub struct ConsoleClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every byte received so far.
    pub received: Vec<u8>,
    /// How far [`ConsoleClient::read_exact`] has consumed `received`.
    consumed: usize,
    /// The subprotocol the server chose.
    pub protocol: Option<String>,
}

/// Connects to `path` (a ticket's `url`) on the coordinator at `http_base`, optionally with
/// a bearer token and a subprotocol; `Err(Refused)` when the server answered with an HTTP
/// status instead of switching protocols.
pub async fn connect(
    http_base: &str,
    path: &str,
    bearer: Option<&str>,
    subprotocol: Option<&str>,
) -> Result<std::result::Result<ConsoleClient, Refused>> {
    // A path on `http_base`, or the absolute URL of another coordinator.
    let absolute = if path.starts_with('/') {
        format!("{http_base}{path}")
    } else {
        path.to_owned()
    };
    let url = format!(
        "ws://{}",
        absolute
            .strip_prefix("http://")
            .context("the API is reached over http:// on loopback")?
    );
    let mut request = url.as_str().into_client_request()?;
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    if let Some(protocol) = subprotocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_str(protocol)?);
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, response)) => Ok(Ok(ConsoleClient {
            socket,
            received: Vec::new(),
            consumed: 0,
            protocol: response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
        })),
        Err(WsError::Http(response)) => Ok(Err(Refused {
            status: response.status().as_u16(),
            body: response
                .body()
                .as_ref()
                .map(|body| String::from_utf8_lossy(body).into_owned())
                .unwrap_or_default(),
        })),
        Err(error) => Err(error).context("connecting the console's WebSocket"),
    }
}

/// Connects and expects the session to open.
pub async fn open(http_base: &str, ticket: &Ticket) -> Result<ConsoleClient> {
    match connect(http_base, &ticket.url, None, None).await? {
        Ok(client) => Ok(client),
        Err(refused) => bail!(
            "the console was refused: {} {}",
            refused.status,
            refused.body
        ),
    }
}

/// Connects and expects an HTTP refusal.
pub async fn refused(http_base: &str, path: &str, bearer: Option<&str>) -> Result<Refused> {
    match connect(http_base, path, bearer, None).await? {
        Ok(_) => bail!("{path} opened a console; it should have been refused"),
        Err(refused) => Ok(refused),
    }
}

/// How a session was closed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl ConsoleClient {
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.socket
            .send(Message::Binary(bytes.to_vec().into()))
            .await
            .context("sending to the console")
    }

    /// Reads one message into `received`; `Ok(Some(closed))` when the server closed.
    async fn read_one(&mut self, timeout: Duration) -> Result<Option<Option<Closed>>> {
        let message = match tokio::time::timeout(timeout, self.socket.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => bail!("the console's WebSocket ended without a close message"),
            Ok(Some(message)) => message.context("reading the console")?,
        };
        match message {
            Message::Binary(bytes) => self.received.extend_from_slice(&bytes),
            Message::Text(text) => self.received.extend_from_slice(text.as_bytes()),
            Message::Close(frame) => {
                let closed = frame.map(|frame| Closed {
                    code: u16::from(frame.code),
                    reason: frame.reason.to_string(),
                });
                return Ok(Some(Some(closed.unwrap_or(Closed {
                    code: u16::from(CloseCode::Status),
                    reason: String::new(),
                }))));
            }
            _ => {}
        }
        Ok(Some(None))
    }

    /// Reads until `needle` appears in what was received after byte `from`; returns how
    /// long it took.
    pub async fn read_until_after(
        &mut self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if contains(
                &self.received[from.min(self.received.len())..],
                needle.as_bytes(),
            ) {
                return Ok(started.elapsed());
            }
            let left = timeout.checked_sub(started.elapsed()).with_context(|| {
                format!(
                    "{needle:?} did not appear within {timeout:?}; the console showed: {}",
                    self.tail(600)
                )
            })?;
            if let Some(Some(closed)) = self.read_one(left).await? {
                bail!("the console closed ({closed:?}) before {needle:?} appeared");
            }
        }
    }

    /// Reads whatever arrives within `duration`.
    pub async fn read_for(&mut self, duration: Duration) -> Result<()> {
        let until = Instant::now() + duration;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.read_one(left).await? {
                None => return Ok(()),
                Some(Some(closed)) => bail!("the console closed: {closed:?}"),
                Some(None) => {}
            }
        }
        Ok(())
    }

    /// Reads until the server closes the session; its code and reason.
    pub async fn closed(&mut self, timeout: Duration) -> Result<Closed> {
        let until = Instant::now() + timeout;
        loop {
            let left = until
                .checked_duration_since(Instant::now())
                .context("the console was not closed in time")?;
            match self.read_one(left).await? {
                Some(Some(closed)) => return Ok(closed),
                Some(None) => {}
                None => bail!("the console was not closed within {timeout:?}"),
            }
        }
    }

    /// The next `count` bytes not consumed yet (for protocols such as RFB).
    pub async fn read_exact(&mut self, count: usize, timeout: Duration) -> Result<Vec<u8>> {
        let until = Instant::now() + timeout;
        while self.received.len() - self.consumed < count {
            let left = until
                .checked_duration_since(Instant::now())
                .with_context(|| format!("{count} bytes did not arrive within {timeout:?}"))?;
            if let Some(Some(closed)) = self.read_one(left).await? {
                bail!("the console closed ({closed:?}) while waiting for {count} bytes");
            }
        }
        let bytes = self.received[self.consumed..self.consumed + count].to_vec();
        self.consumed += count;
        Ok(bytes)
    }

    /// Closes the session from the client's side, as a browser does: sends a close message
    /// and waits for the coordinator's answer to it (what it sends meanwhile is dropped).
    pub async fn close(mut self) -> Result<()> {
        self.socket.close(None).await.or_else(|error| match error {
            WsError::ConnectionClosed | WsError::AlreadyClosed => Ok(()),
            error => Err(error),
        })?;
        let answered = async { while let Some(Ok(_)) = self.socket.next().await {} };
        tokio::time::timeout(CLOSE_ANSWER, answered)
            .await
            .with_context(|| format!("the close was not answered within {CLOSE_ANSWER:?}"))
    }

    /// The last `bytes` bytes received, as text.
    pub fn tail(&self, bytes: usize) -> String {
        let start = self.received.len().saturating_sub(bytes);
        String::from_utf8_lossy(&self.received[start..]).into_owned()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// The resident memory of process `pid` in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS without a figure")?
        .parse()?;
    ensure!(kib > 0, "VmRSS of {pid} is 0");
    Ok(kib)
}
