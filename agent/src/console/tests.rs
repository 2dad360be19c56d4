//! Console relays against an in-process fake coordinator (the real generated gRPC server
//! trait, over loopback TCP) and an in-memory host, whose guest end of each console the test
//! drives.

use std::io::{ErrorKind as IoErrorKind, Write as _};
use std::pin::Pin;

use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Response, Status};
use vmm_proto::agent_control_server::{AgentControl, AgentControlServer};
use vmm_proto::{AgentMessage, CoordinatorMessage, FetchImageRequest, ImageChunk};

use super::*;
use crate::hypervisor::VmSpec;
use crate::hypervisor::memory::MemoryHost;

const TOKEN: &str = "console-test-token";

/// A console the fake coordinator accepted: the attach frame, the agent's frames, and the
/// way down to the agent.
struct Attached {
    attach: ConsoleAttach,
    inbound: Streaming<ConsoleFrame>,
    down: tokio::sync::mpsc::Sender<Result<ConsoleFrame, Status>>,
}

struct FakeCoordinator {
    attached: mpsc::UnboundedSender<Attached>,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentControl for FakeCoordinator {
    type SessionStream = Boxed<CoordinatorMessage>;
    type FetchImageStream = Boxed<ImageChunk>;
    type ConsoleStream = ReceiverStream<Result<ConsoleFrame, Status>>;

    async fn session(
        &self,
        _request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Err(Status::unimplemented("consoles only"))
    }

    async fn fetch_image(
        &self,
        _request: Request<FetchImageRequest>,
    ) -> Result<Response<Self::FetchImageStream>, Status> {
        Err(Status::unimplemented("consoles only"))
    }

    async fn console(
        &self,
        request: Request<Streaming<ConsoleFrame>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        if authorization != Some(&format!("Bearer {TOKEN}")) {
            return Err(Status::unauthenticated("wrong token"));
        }
        let mut inbound = request.into_inner();
        let Some(ConsoleFrame {
            body: Some(FrameBody::Attach(attach)),
        }) = inbound.message().await?
        else {
            return Err(Status::invalid_argument("the first frame must be attach"));
        };
        let (down, queue) = tokio::sync::mpsc::channel(4);
        let _ = self.attached.send(Attached {
            attach,
            inbound,
            down,
        });
        Ok(Response::new(ReceiverStream::new(queue)))
    }
}

struct Setup {
    host: MemoryHost,
    hypervisor: HypervisorHandle,
    relays: Arc<ConsoleRelays>,
    attached: mpsc::UnboundedReceiver<Attached>,
}

async fn setup() -> Setup {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (attached_tx, attached) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentControlServer::new(FakeCoordinator {
                attached: attached_tx,
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let host = MemoryHost::new();
    let hypervisor = host.spawn_handle().await.unwrap();
    let relays = Arc::new(
        ConsoleRelays::new(
            &url,
            "host-1".parse().unwrap(),
            crate::enrol::Credentials::SharedToken(crate::config::AgentToken::new(TOKEN).unwrap()),
            hypervisor.clone(),
        )
        .unwrap(),
    );
    Setup {
        host,
        hypervisor,
        relays,
        attached,
    }
}

async fn running_vm(hypervisor: &HypervisorHandle) -> VmId {
    let vm_id = VmId::new_random();
    let spec = VmSpec {
        display_name: "console".into(),
        cpu: 1,
        memory_mib: 128,
        disk_gb: 1,
        start: true,
        image: None,
        seed: None,
    };
    hypervisor
        .call(move |hv| hv.create_vm(vm_id, &spec))
        .await
        .unwrap();
    vm_id
}

fn open_request(console_id: &str, vm_id: VmId, kind: vmm_proto::ConsoleKind) -> OpenConsole {
    OpenConsole {
        console_id: console_id.into(),
        vm_id: vm_id.to_string(),
        kind: kind as i32,
    }
}

async fn next_attached(attached: &mut mpsc::UnboundedReceiver<Attached>) -> Attached {
    tokio::time::timeout(Duration::from_secs(10), attached.recv())
        .await
        .expect("the agent attached in time")
        .expect("the fake coordinator runs")
}

async fn next_frame(inbound: &mut Streaming<ConsoleFrame>) -> Option<FrameBody> {
    tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("a frame in time")
        .ok()
        .flatten()
        .and_then(|frame| frame.body)
}

/// The guest's end of the console, once the agent has opened it.
async fn guest_end(
    host: &MemoryHost,
    vm_id: VmId,
    kind: ConsoleKind,
) -> std::os::unix::net::UnixStream {
    for _ in 0..200 {
        if let Some(guest) = host.take_console_guest(vm_id, kind) {
            return guest;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the agent never opened the console");
}

/// Bytes go both ways; a second session of the same console takes over, closing the
/// first with a reason; the guest's end closing ends the session with a reason.
#[tokio::test]
async fn a_console_relays_both_ways_and_a_newer_session_takes_over() {
    let mut setup = setup().await;
    let vm_id = running_vm(&setup.hypervisor).await;
    setup
        .relays
        .open(open_request("c-1", vm_id, vmm_proto::ConsoleKind::Serial));
    let mut first = next_attached(&mut setup.attached).await;
    assert_eq!(first.attach.console_id, "c-1");
    assert_eq!(first.attach.host_id, "host-1");
    assert!(first.attach.error.is_none(), "{:?}", first.attach.error);
    let mut guest = guest_end(&setup.host, vm_id, ConsoleKind::Serial).await;

    guest.write_all(b"login: ").unwrap();
    assert_eq!(
        next_frame(&mut first.inbound).await,
        Some(FrameBody::Data(b"login: ".to_vec()))
    );
    first
        .down
        .send(Ok(ConsoleFrame {
            body: Some(FrameBody::Data(b"root\r".to_vec())),
        }))
        .await
        .unwrap();
    let typed = tokio::task::spawn_blocking(move || {
        let mut buffer = [0_u8; 5];
        std::io::Read::read_exact(&mut guest, &mut buffer).unwrap();
        (buffer, guest)
    })
    .await
    .unwrap();
    assert_eq!(&typed.0, b"root\r");

    setup
        .relays
        .open(open_request("c-2", vm_id, vmm_proto::ConsoleKind::Serial));
    let frame = next_frame(&mut first.inbound).await;
    let Some(FrameBody::Closed(closed)) = frame else {
        panic!("the first session must be closed with a reason: {frame:?}");
    };
    assert!(closed.reason.contains("took over"), "{}", closed.reason);
    assert_eq!(next_frame(&mut first.inbound).await, None);
    let mut second = next_attached(&mut setup.attached).await;
    assert_eq!(second.attach.console_id, "c-2");
    let guest = guest_end(&setup.host, vm_id, ConsoleKind::Serial).await;
    drop(guest);
    let Some(FrameBody::Closed(closed)) = next_frame(&mut second.inbound).await else {
        panic!("a closed console must say why");
    };
    assert!(
        closed.reason.contains("closed on the host"),
        "{}",
        closed.reason
    );
}

/// A console that cannot be opened is attached with the error, classified.
#[tokio::test]
async fn a_console_that_cannot_open_is_attached_with_the_error() {
    let mut setup = setup().await;
    let vm_id = running_vm(&setup.hypervisor).await;
    setup
        .hypervisor
        .call(move |hv| hv.force_stop(vm_id, crate::hypervisor::AlreadyThere::Refuse))
        .await
        .unwrap();
    setup
        .relays
        .open(open_request("stopped", vm_id, vmm_proto::ConsoleKind::Vnc));
    let attached = next_attached(&mut setup.attached).await;
    let error = attached.attach.error.expect("an error");
    assert_eq!(error.kind(), ErrorKind::Conflict);
    assert!(error.message.contains("stopped"), "{}", error.message);

    setup.relays.open(open_request(
        "unknown",
        VmId::new_random(),
        vmm_proto::ConsoleKind::Serial,
    ));
    let attached = next_attached(&mut setup.attached).await;
    assert_eq!(attached.attach.error.unwrap().kind(), ErrorKind::NotFound);

    setup.relays.open(OpenConsole {
        console_id: "bad".into(),
        vm_id: vm_id.to_string(),
        kind: 99,
    });
    let attached = next_attached(&mut setup.attached).await;
    assert_eq!(attached.attach.error.unwrap().kind(), ErrorKind::Invalid);
}

/// A coordinator that reads nothing stops the relay's reads: a guest writing as fast as it
/// can is held up after a bounded amount (socket buffers, a few frames, HTTP/2's window),
/// and goes on once the coordinator reads again.
#[tokio::test]
async fn a_coordinator_that_reads_nothing_holds_the_guest_up() {
    let mut setup = setup().await;
    let vm_id = running_vm(&setup.hypervisor).await;
    setup
        .relays
        .open(open_request("flood", vm_id, vmm_proto::ConsoleKind::Serial));
    let mut attached = next_attached(&mut setup.attached).await;
    let guest = guest_end(&setup.host, vm_id, ConsoleKind::Serial).await;
    let written = tokio::task::spawn_blocking(move || {
        let mut guest = guest;
        guest.set_nonblocking(true).unwrap();
        let chunk = vec![b'y'; 64 * 1024];
        let mut written = 0_usize;
        let mut blocked_since: Option<Instant> = None;
        while blocked_since.is_none_or(|since| since.elapsed() < Duration::from_secs(1)) {
            match guest.write(&chunk) {
                Ok(n) => {
                    written += n;
                    blocked_since = None;
                }
                Err(error) if error.kind() == IoErrorKind::WouldBlock => {
                    blocked_since.get_or_insert_with(Instant::now);
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(error) => panic!("{error}"),
            }
            assert!(written < 64 << 20, "64 MiB taken without a reader");
        }
        (written, guest)
    })
    .await
    .unwrap();
    let (written, _guest) = written;
    eprintln!("a guest writing with nobody reading was held up after {written} bytes");
    assert!(written < 8 << 20, "{written} bytes taken without a reader");
    // Reading again lets everything through.
    let mut received = 0;
    while received < written {
        match next_frame(&mut attached.inbound).await {
            Some(FrameBody::Data(bytes)) => received += bytes.len(),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(received, written);
}

/// A guest printing a little at a time without pause reaches the coordinator in frames that
/// gather many of its writes, and the echo of a keystroke after a pause goes alone.
#[tokio::test]
async fn output_that_keeps_coming_is_gathered_into_few_frames() {
    const WRITES: usize = 1000;
    const LINE: &[u8] = b"console-flood\r\n";
    let mut setup = setup().await;
    let vm_id = running_vm(&setup.hypervisor).await;
    setup.relays.open(open_request(
        "gather",
        vm_id,
        vmm_proto::ConsoleKind::Serial,
    ));
    let mut attached = next_attached(&mut setup.attached).await;
    let guest = guest_end(&setup.host, vm_id, ConsoleKind::Serial).await;
    let writer = tokio::task::spawn_blocking(move || {
        let mut guest = guest;
        for _ in 0..WRITES {
            guest.write_all(LINE).unwrap();
            std::thread::sleep(Duration::from_micros(500));
        }
        guest
    });
    let (mut received, mut frames) = (0, 0);
    while received < WRITES * LINE.len() {
        match next_frame(&mut attached.inbound).await {
            Some(FrameBody::Data(bytes)) => {
                received += bytes.len();
                frames += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    let mut guest = writer.await.unwrap();
    eprintln!(
        "{WRITES} writes of {} bytes reached the coordinator in {frames} frames",
        LINE.len()
    );
    assert_eq!(received, WRITES * LINE.len());
    assert!(frames <= WRITES / 4, "{frames} frames for {WRITES} writes");

    tokio::time::sleep(GATHER * 10).await;
    guest.write_all(b"x").unwrap();
    assert_eq!(
        next_frame(&mut attached.inbound).await,
        Some(FrameBody::Data(b"x".to_vec()))
    );
}
