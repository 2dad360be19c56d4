//! The agent's side of console sessions: when the coordinator sends `OpenConsole` on the
//! session, the agent opens that console of the VM (through the hypervisor: the serial
//! port's socket, or a connection to the screen) and attaches it to the coordinator with
//! `AgentControl.Console`, a bidirectional stream whose first frame names the console. Then
//! it relays bytes both ways until either end closes.
//!
//! Flow control, end to end: the relay reads the console only when the stream to the
//! coordinator takes the frame (a queue of [`FRAME_QUEUE`] frames, then HTTP/2's window), and
//! writes what the coordinator sends before reading the next frame. A browser that reads
//! nothing therefore stops the coordinator's reads, then this relay's, and the guest's
//! serial writes wait in QEMU; nothing here buffers more than a few frames. Output that
//! keeps coming is gathered for a few milliseconds into one frame ([`GATHER`]), so that what
//! waits in the windows on the way is a few large frames rather than thousands of tiny ones.
//!
//! One session per console: a second `OpenConsole` for the same VM and kind closes the
//! first (the coordinator decided the take-over; QEMU serves one serial client at a time),
//! and waits for it to let go before opening the console again.
//!
//! Consoles travel on a channel of their own to the coordinator's URL, with the session's
//! credential, so a console that stalls never holds up the session's heartbeats.
//!
//! What this module must never do: touch a VM other than the one named, read a console
//! faster than the coordinator takes its bytes, or keep a console open after either end
//! closed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Request, Streaming};
use vmm_proto::console_frame::Body as FrameBody;
use vmm_proto::{CommandError, ConsoleAttach, ConsoleClosed, ConsoleFrame, ErrorKind, OpenConsole};
use vmm_shared::{HostId, VmId};

use crate::enrol::{CoordinatorDialer, Credentials};
use crate::hypervisor::{
    ConsoleAccess, ConsoleKind, FailureKind, HypervisorError, HypervisorHandle,
};

/// Frames queued towards the coordinator before the relay stops reading the console.
pub const FRAME_QUEUE: usize = 4;
/// The most console bytes read into one frame.
pub const FRAME_BYTES: usize = 16 * 1024;
/// Console output read within this of the previous frame is gathered into one frame. A
/// guest that prints without pause would otherwise be sent in frames of a few bytes each
/// (one per read of its serial port), and every frame buffered on the way (by HTTP/2, up to
/// its window, while a browser reads nothing) costs its bookkeeping, many times its bytes.
/// A keystroke's echo after a pause goes at once.
pub const GATHER: Duration = Duration::from_millis(5);
/// How long the serial port's socket may refuse connections (its one client slot taken by
/// a session closing, or by `virsh console`) before the open fails.
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);
/// How long a taken-over session may take to let go of the console.
const TAKE_OVER_PATIENCE: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 windows of the console channel: what the coordinator may send on one console
/// (keystrokes, VNC input) before the agent takes it, and on all of them together. The
/// connection's is many consoles' worth, so that one console whose guest reads no input
/// cannot hold up the others.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Why a relay ended, as told to the coordinator and the log.
#[derive(Debug)]
enum End {
    /// The console closed on the host, or reading or writing it failed.
    Host(String),
    /// The coordinator closed the console, or its stream ended.
    Coordinator(String),
    /// A newer session of the same console took over.
    TakenOver,
}

/// The console sessions of this host.
pub struct ConsoleRelays {
    hypervisor: HypervisorHandle,
    /// Each console session has a connection of its own (its HTTP/2 windows are the
    /// console's alone).
    dialer: CoordinatorDialer,
    host_id: HostId,
    open: Mutex<HashMap<(VmId, ConsoleKind), OpenRelay>>,
    next_relay: AtomicU64,
}

impl std::fmt::Debug for ConsoleRelays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleRelays")
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

/// A relay running for one console: how to stop it, and how to see it has stopped.
struct OpenRelay {
    id: u64,
    stop: oneshot::Sender<()>,
    /// Its sender is dropped when the relay has let go of the console.
    finished: watch::Receiver<()>,
}

impl ConsoleRelays {
    /// Relays for the coordinator at `coordinator_url`, with the session's credential, over
    /// a channel that connects on first use.
    pub fn new(
        coordinator_url: &str,
        host_id: HostId,
        credentials: Credentials,
        hypervisor: HypervisorHandle,
    ) -> Result<Self, tonic::transport::Error> {
        let settings = |endpoint: Endpoint| {
            endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
        };
        Ok(Self {
            hypervisor,
            dialer: CoordinatorDialer::new(coordinator_url, settings, credentials)?,
            host_id,
            open: Mutex::new(HashMap::new()),
            next_relay: AtomicU64::new(0),
        })
    }

    /// Dials the coordinator of the agent's current session (see [`CurrentCoordinator`])
    /// rather than the URL given to [`ConsoleRelays::new`].
    ///
    /// [`CurrentCoordinator`]: crate::enrol::CurrentCoordinator
    pub fn following(mut self, current: crate::enrol::CurrentCoordinator) -> Self {
        self.dialer = self.dialer.following(current);
        self
    }

    /// Carries out the coordinator's `OpenConsole` in a task of its own; its outcome goes to
    /// the coordinator on the console's stream (an `attach` with the error if it fails).
    pub fn open(self: &Arc<Self>, request: OpenConsole) {
        let relays = Arc::clone(self);
        tokio::spawn(async move { relays.run(request).await });
    }

    async fn run(&self, request: OpenConsole) {
        let console_id = request.console_id.clone();
        let (vm_id, kind) = match parse(&request) {
            Ok(target) => target,
            Err(message) => {
                tracing::warn!(%console_id, %message, "refusing a malformed OpenConsole");
                let error = HypervisorError::new(FailureKind::Invalid, message);
                self.attach_failed(&console_id, &error).await;
                return;
            }
        };
        let (id, stop, finished) = self.take_over(vm_id, kind).await;
        let outcome = self.relay(&console_id, vm_id, kind, stop).await;
        drop(finished);
        self.forget(vm_id, kind, id);
        if let Err(error) = outcome {
            tracing::warn!(%console_id, %vm_id, kind = kind.as_str(), error = %error.message,
                "cannot open a console");
            self.attach_failed(&console_id, &error).await;
        }
    }

    /// Registers a new relay for the console, after stopping the one there was (and waiting,
    /// boundedly, for it to let go).
    async fn take_over(
        &self,
        vm_id: VmId,
        kind: ConsoleKind,
    ) -> (u64, oneshot::Receiver<()>, watch::Sender<()>) {
        let id = self.next_relay.fetch_add(1, Ordering::Relaxed);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (finished_tx, finished_rx) = watch::channel(());
        let previous = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (vm_id, kind),
                OpenRelay {
                    id,
                    stop: stop_tx,
                    finished: finished_rx,
                },
            );
        if let Some(mut previous) = previous {
            tracing::info!(%vm_id, kind = kind.as_str(), "a newer console session takes over");
            let _ = previous.stop.send(());
            let _ = tokio::time::timeout(TAKE_OVER_PATIENCE, previous.finished.changed()).await;
        }
        (id, stop_rx, finished_tx)
    }

    fn forget(&self, vm_id: VmId, kind: ConsoleKind, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.get(&(vm_id, kind)).is_some_and(|relay| relay.id == id) {
            open.remove(&(vm_id, kind));
        }
    }

    /// Opens the console, attaches it and relays until either end closes. An error means
    /// the console could not be opened: nothing was attached yet.
    async fn relay(
        &self,
        console_id: &str,
        vm_id: VmId,
        kind: ConsoleKind,
        stop: oneshot::Receiver<()>,
    ) -> Result<(), HypervisorError> {
        let access = self
            .hypervisor
            .call(move |hv| hv.open_console(vm_id, kind))
            .await?;
        let console = match access {
            ConsoleAccess::Socket(path) => connect_serial(&path).await?,
            ConsoleAccess::Connected(stream) => stream
                .set_nonblocking(true)
                .and_then(|()| UnixStream::from_std(stream))
                .map_err(|error| {
                    HypervisorError::new(
                        FailureKind::Unavailable,
                        format!("cannot use the console's connection: {error}"),
                    )
                })?,
        };

        let (frames, queued) = tokio::sync::mpsc::channel(FRAME_QUEUE);
        let attach = self.attach_frame(console_id, None);
        // The queue is empty: this cannot wait.
        let _ = frames.send(attach).await;
        let mut request = Request::new(ReceiverStream::new(queued));
        self.dialer.authorize(&mut request);
        let mut client = match self.dialer.client().await {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%console_id, %vm_id, error = %vmm_shared::error_chain(&error),
                    "cannot reach the coordinator for the console");
                return Ok(());
            }
        };
        let mut inbound = match client.console(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                // Nothing more can be said to the coordinator: it is the one refusing.
                tracing::warn!(%console_id, %vm_id, code = ?status.code(), message = status.message(),
                    "the coordinator refused the console");
                return Ok(());
            }
        };
        tracing::info!(%console_id, %vm_id, kind = kind.as_str(), "console attached");
        let started = Instant::now();
        let (mut reader, mut writer) = console.into_split();
        let (mut to_coordinator, mut to_guest) = (0_u64, 0_u64);

        let end = {
            let reading = async {
                let mut buffer = vec![0_u8; FRAME_BYTES];
                let mut last_sent: Option<Instant> = None;
                loop {
                    let mut length = match reader.read(&mut buffer).await {
                        Ok(0) => return End::Host("the console closed on the host".into()),
                        Ok(read) => read,
                        Err(error) => {
                            return End::Host(format!("reading the console failed: {error}"));
                        }
                    };
                    // Output that follows the previous frame closely is gathered until
                    // `GATHER` after it, into one frame.
                    let gather_until = last_sent
                        .map(|sent| sent + GATHER)
                        .filter(|until| *until > Instant::now());
                    if let Some(until) = gather_until {
                        while length < FRAME_BYTES {
                            let more = tokio::time::timeout_at(
                                until.into(),
                                reader.read(&mut buffer[length..]),
                            );
                            match more.await {
                                // Time is up, or the console closed (the next read says so).
                                Err(_) | Ok(Ok(0)) => break,
                                Ok(Ok(read)) => length += read,
                                Ok(Err(error)) => {
                                    return End::Host(format!(
                                        "reading the console failed: {error}"
                                    ));
                                }
                            }
                        }
                    }
                    let data = ConsoleFrame {
                        body: Some(FrameBody::Data(buffer[..length].to_vec())),
                    };
                    if frames.send(data).await.is_err() {
                        return End::Coordinator("the coordinator's stream ended".into());
                    }
                    to_coordinator += length as u64;
                    last_sent = Some(Instant::now());
                }
            };
            let writing = async {
                loop {
                    match inbound.message().await {
                        Ok(Some(ConsoleFrame {
                            body: Some(FrameBody::Data(bytes)),
                        })) => {
                            if let Err(error) = writer.write_all(&bytes).await {
                                return End::Host(format!(
                                    "writing to the console failed: {error}"
                                ));
                            }
                            to_guest += bytes.len() as u64;
                        }
                        Ok(Some(ConsoleFrame {
                            body: Some(FrameBody::Closed(closed)),
                        })) => return End::Coordinator(closed.reason),
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            return End::Coordinator("the coordinator ended the console".into());
                        }
                        Err(status) => {
                            return End::Coordinator(format!(
                                "the console's stream failed: {}",
                                status.message()
                            ));
                        }
                    }
                }
            };
            tokio::select! {
                end = reading => end,
                end = writing => end,
                _ = stop => End::TakenOver,
            }
        };
        let reason = match &end {
            End::Host(reason) | End::Coordinator(reason) => reason.clone(),
            End::TakenOver => "another session took over this console".to_owned(),
        };
        if !matches!(end, End::Coordinator(_)) {
            let closed = ConsoleFrame {
                body: Some(FrameBody::Closed(ConsoleClosed {
                    reason: reason.clone(),
                })),
            };
            // The coordinator may be reading nothing: never wait for it long.
            let _ = tokio::time::timeout(Duration::from_secs(1), frames.send(closed)).await;
            // Ending the request stream and then waiting for the coordinator to end its
            // side lets the frame through; dropping the answer at once would reset the
            // stream, frame and all.
            drop(frames);
            drop(writer);
            drain(inbound, Duration::from_secs(2)).await;
        }
        tracing::info!(%console_id, %vm_id, kind = kind.as_str(), %reason,
            seconds = started.elapsed().as_secs(), to_coordinator, to_guest, "console closed");
        Ok(())
    }

    fn attach_frame(&self, console_id: &str, error: Option<&HypervisorError>) -> ConsoleFrame {
        ConsoleFrame {
            body: Some(FrameBody::Attach(ConsoleAttach {
                console_id: console_id.to_owned(),
                host_id: self.host_id.to_string(),
                error: error.map(|error| CommandError {
                    kind: error_kind(error.kind) as i32,
                    message: error.message.clone(),
                }),
            })),
        }
    }

    /// Tells the coordinator the console could not be opened: a stream with only the
    /// `attach` frame carrying the error.
    async fn attach_failed(&self, console_id: &str, error: &HypervisorError) {
        let frame = self.attach_frame(console_id, Some(error));
        let mut request = Request::new(futures::stream::iter([frame]));
        self.dialer.authorize(&mut request);
        let mut client = match self.dialer.client().await {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%console_id, error = %vmm_shared::error_chain(&error),
                    "cannot tell the coordinator a console failed to open");
                return;
            }
        };
        match client.console(request).await {
            Ok(response) => drain(response.into_inner(), Duration::from_secs(5)).await,
            Err(status) => {
                tracing::warn!(%console_id, code = ?status.code(), message = status.message(),
                    "cannot tell the coordinator a console failed to open");
            }
        }
    }
}

/// Reads a stream to its end, for at most `patience` (the coordinator ends it once it has
/// the agent's last frame).
async fn drain(mut inbound: Streaming<ConsoleFrame>, patience: Duration) {
    let _ = tokio::time::timeout(patience, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
}

fn parse(request: &OpenConsole) -> Result<(VmId, ConsoleKind), String> {
    if request.console_id.is_empty() || request.console_id.len() > 64 {
        return Err("OpenConsole needs a console ID".into());
    }
    let vm_id = request
        .vm_id
        .parse::<VmId>()
        .map_err(|_| format!("OpenConsole names no VM ID: {:?}", request.vm_id))?;
    let kind = match vmm_proto::ConsoleKind::try_from(request.kind) {
        Ok(vmm_proto::ConsoleKind::Serial) => ConsoleKind::Serial,
        Ok(vmm_proto::ConsoleKind::Vnc) => ConsoleKind::Vnc,
        _ => return Err(format!("unknown console kind {}", request.kind)),
    };
    Ok((vm_id, kind))
}

fn error_kind(kind: FailureKind) -> ErrorKind {
    match kind {
        FailureKind::Conflict => ErrorKind::Conflict,
        FailureKind::NotFound => ErrorKind::NotFound,
        FailureKind::Invalid => ErrorKind::Invalid,
        FailureKind::Unavailable => ErrorKind::Unavailable,
        FailureKind::Internal => ErrorKind::Internal,
    }
}

/// Connects to the serial port's socket. QEMU serves one client at a time and keeps one
/// more waiting: while both places are taken (a session closing, `virsh console`), connects
/// are refused, and are tried again for a few seconds.
async fn connect_serial(path: &Path) -> Result<UnixStream, HypervisorError> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    loop {
        match UnixStream::connect(path).await {
            Ok(stream) => return Ok(stream),
            Err(error)
                if error.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => {
                let kind = match error.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        FailureKind::Conflict
                    }
                    _ => FailureKind::Unavailable,
                };
                return Err(HypervisorError::new(
                    kind,
                    format!(
                        "cannot connect to the serial console socket {}: {error}",
                        path.display()
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
