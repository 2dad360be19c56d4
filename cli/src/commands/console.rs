//! `console`: attach the terminal to a VM's serial console. It asks for a ticket
//! (`POST /api/vms/{id}/console`), opens the WebSocket the ticket names, and relays bytes:
//! keystrokes as binary messages, the guest's output to stdout. On a terminal, stdin is put
//! in raw mode (so Ctrl-C reaches the guest) and restored on the way out; Ctrl-] leaves.
//! `wss://` (a coordinator behind TLS) is not supported: this client speaks `ws://` only.

use std::io::Write;
use std::os::fd::AsFd;

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;
use vmm_shared::api::console::{ConsoleKind, TicketRequest, TicketView};

use super::Context;
use crate::cli::ConsoleArgs;
use crate::exit::{Failure, Result};

/// Ctrl-]: leaves the console, as in telnet.
const ESCAPE: u8 = 0x1d;

/// The WebSocket URL of a ticket's `url`: a path on the API's own address, or (several
/// coordinators) an absolute URL of the coordinator holding the VM's host.
fn websocket_url(api_base: &str, ticket_url: &str) -> Result<String> {
    let absolute = if ticket_url.starts_with('/') {
        format!("{api_base}{ticket_url}")
    } else {
        ticket_url.to_owned()
    };
    match absolute.strip_prefix("http://") {
        Some(rest) => Ok(format!("ws://{rest}")),
        None => Err(Failure::usage(format!(
            "the console needs a plain http:// URL (wss:// is not supported), not {absolute}"
        ))),
    }
}

pub async fn run(context: &Context, args: ConsoleArgs) -> Result<()> {
    let client = &context.client;
    let vm = client.vm(&args.vm).await?;
    let ticket: TicketView = client
        .post(
            &format!("/api/vms/{}/console", vm.id),
            &TicketRequest {
                kind: ConsoleKind::Serial,
                force: args.force,
            },
        )
        .await?;
    let (socket, _) = tokio_tungstenite::connect_async(websocket_url(client.base(), &ticket.url)?)
        .await
        .map_err(|err| match err {
            tokio_tungstenite::tungstenite::Error::Http(response) => Failure::new(
                Failure::code_for_status(response.status().as_u16()),
                format!(
                    "the console did not open: {}",
                    response
                        .body()
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_else(|| response.status().to_string().into())
                ),
            ),
            other => Failure::general(format!("the console did not open: {other}")),
        })?;
    eprint!(
        "Connected to the serial console of {} (Ctrl-] leaves).\r\n",
        vm.name
    );
    let raw = RawTerminal::enter();
    let outcome = relay(socket).await;
    drop(raw);
    eprintln!();
    outcome
}

async fn relay(
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Result<()> {
    let (mut sink, mut stream) = socket.split();
    let mut stdin = tokio::io::stdin();
    let mut buffer = vec![0u8; 4096];
    let mut stdin_open = true;
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Binary(bytes))) => write_out(&bytes)?,
                Some(Ok(Message::Text(text))) => write_out(text.as_bytes())?,
                Some(Ok(Message::Close(frame))) => {
                    if let Some(frame) = frame.filter(|frame| !frame.reason.is_empty()) {
                        eprint!("\r\nThe console closed: {} ({}).\r\n", frame.reason, u16::from(frame.code));
                    }
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(Failure::general(format!("the console broke: {err}"))),
                None => return Ok(()),
            },
            read = stdin.read(&mut buffer), if stdin_open => {
                let read = read?;
                if read == 0 {
                    stdin_open = false;
                    continue;
                }
                let bytes = &buffer[..read];
                let (bytes, leave) = match bytes.iter().position(|byte| *byte == ESCAPE) {
                    Some(at) => (&bytes[..at], true),
                    None => (bytes, false),
                };
                if !bytes.is_empty() {
                    sink.send(Message::Binary(bytes.to_vec().into()))
                        .await
                        .map_err(|err| Failure::general(format!("the console broke: {err}")))?;
                }
                if leave {
                    let _ = sink.send(Message::Close(None)).await;
                    return Ok(());
                }
            }
        }
    }
}

fn write_out(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()?;
    Ok(())
}

/// The terminal in raw mode while it lives (nothing when stdin is not a terminal).
struct RawTerminal {
    saved: Option<rustix::termios::Termios>,
}

impl RawTerminal {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        if !rustix::termios::isatty(fd) {
            return Self { saved: None };
        }
        let Ok(saved) = rustix::termios::tcgetattr(fd) else {
            return Self { saved: None };
        };
        let mut raw = saved.clone();
        raw.make_raw();
        if rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &raw).is_err() {
            return Self { saved: None };
        }
        Self { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let stdin = std::io::stdin();
            let _ = rustix::termios::tcsetattr(
                stdin.as_fd(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_urls_come_from_paths_and_from_other_coordinators() {
        assert_eq!(
            websocket_url("http://127.0.0.1:8080", "/api/console/t?vm=v&type=serial").unwrap(),
            "ws://127.0.0.1:8080/api/console/t?vm=v&type=serial"
        );
        assert_eq!(
            websocket_url("http://lb:80", "http://coordinator-2:8080/api/console/t").unwrap(),
            "ws://coordinator-2:8080/api/console/t"
        );
        assert!(websocket_url("https://lb", "/api/console/t").is_err());
        assert!(websocket_url("http://lb", "https://coordinator-2/api/console/t").is_err());
    }
}
