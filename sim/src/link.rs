//! The network between one simulated agent and the coordinator: a TCP relay on loopback
//! that the agent dials instead of the coordinator, so the simulator can break it the two
//! ways real networks break:
//! - [`Link::cut`]: every connection through it is closed at once (both sides see the
//!   stream end), as when a switch reboots: the agent redials;
//! - [`Link::freeze`]: bytes stop flowing both ways but nothing is closed, as in a silent
//!   partition: only a liveness bound (the coordinator's `HOST_DEAD_AFTER`, the agent's
//!   HTTP/2 keep-alive) can notice. A frozen link stays frozen for new connections too
//!   until [`Link::heal`], which cuts what froze (the agent redials).
//!
//! It never reads or changes what it carries.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The state of a link, watched by every connection through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Bytes flow. The number grows with every cut, so connections opened before a cut end.
    Open {
        cuts: u64,
    },
    Frozen {
        cuts: u64,
    },
}

impl Mode {
    fn cuts(self) -> u64 {
        match self {
            Mode::Open { cuts } | Mode::Frozen { cuts } => cuts,
        }
    }
}

/// One agent's link to the coordinator.
#[derive(Debug)]
pub struct Link {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Link {
    /// Listens on a fresh loopback port and relays every connection to `coordinator`.
    pub async fn start(coordinator: SocketAddr) -> std::io::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, watcher) = watch::channel(Mode::Open { cuts: 0 });
        tokio::spawn(async move {
            while let Ok((agent_side, _)) = listener.accept().await {
                let watcher = watcher.clone();
                tokio::spawn(async move {
                    let _ = agent_side.set_nodelay(true);
                    let Ok(coordinator_side) = TcpStream::connect(coordinator).await else {
                        return; // Dropping the agent's side tells it.
                    };
                    let _ = coordinator_side.set_nodelay(true);
                    relay(agent_side, coordinator_side, watcher).await;
                });
            }
        });
        Ok(Link { addr, mode })
    }

    /// The address the agent dials.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every connection through the link now.
    pub fn cut(&self) {
        self.mode.send_modify(|mode| {
            *mode = match *mode {
                Mode::Open { cuts } => Mode::Open { cuts: cuts + 1 },
                Mode::Frozen { cuts } => Mode::Frozen { cuts: cuts + 1 },
            }
        });
    }

    /// Stops every byte, both ways, without closing anything.
    pub fn freeze(&self) {
        self.mode
            .send_modify(|mode| *mode = Mode::Frozen { cuts: mode.cuts() });
    }

    /// Ends a freeze: what froze is cut (the agent redials), new connections flow.
    pub fn heal(&self) {
        self.mode.send_modify(|mode| {
            *mode = Mode::Open {
                cuts: mode.cuts() + 1,
            }
        });
    }
}

/// Copies both ways until either side closes or the link is cut; pauses while frozen.
async fn relay(agent: TcpStream, coordinator: TcpStream, watcher: watch::Receiver<Mode>) {
    let born = watcher.borrow().cuts();
    let (agent_read, agent_write) = agent.into_split();
    let (coordinator_read, coordinator_write) = coordinator.into_split();
    tokio::select! {
        () = pump(agent_read, coordinator_write, watcher.clone(), born) => {}
        () = pump(coordinator_read, agent_write, watcher, born) => {}
    }
    // Both halves of both sockets are dropped here: the connection is closed both ways.
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut watcher: watch::Receiver<Mode>,
    born: u64,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let mode = *watcher.borrow_and_update();
        if mode.cuts() != born {
            return;
        }
        if let Mode::Frozen { .. } = mode {
            if watcher.changed().await.is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            },
            changed = watcher.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
