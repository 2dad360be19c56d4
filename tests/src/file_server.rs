//! A small HTTP/1.1 file server on a loopback port, for tests that make the coordinator
//! download something (`source_url`): it serves the files it was given by path, answers 404
//! for anything else, and can hold its first answer after a number of bytes (to test a
//! download cut off half way). It listens on 127.0.0.1 only and stops when dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request head read.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug)]
pub struct FileServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Files {
    by_path: HashMap<String, Vec<u8>>,
    /// The first GET of a file sends this many bytes of its body, then stalls.
    stall_first_after: Option<usize>,
}

impl FileServer {
    /// Serves `files` (path → content, e.g. `"/image.qcow2"`).
    pub async fn start(files: Vec<(&str, Vec<u8>)>) -> Result<Self> {
        Self::start_with(files, None).await
    }

    /// As [`FileServer::start`], but the first request that finds a file gets only
    /// `bytes` bytes of it and then nothing more (the connection stays open); later
    /// requests get it whole.
    pub async fn start_stalling_first(files: Vec<(&str, Vec<u8>)>, bytes: usize) -> Result<Self> {
        Self::start_with(files, Some(bytes)).await
    }

    async fn start_with(
        files: Vec<(&str, Vec<u8>)>,
        stall_first_after: Option<usize>,
    ) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let files = Arc::new(Files {
            by_path: files
                .into_iter()
                .map(|(path, content)| (path.to_owned(), content))
                .collect(),
            stall_first_after,
        });
        let requests = Arc::new(AtomicUsize::new(0));
        let served = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let files = Arc::clone(&files);
                let served = Arc::clone(&served);
                tokio::spawn(async move {
                    let _ = answer(stream, &files, &served).await;
                });
            }
        });
        Ok(Self {
            addr,
            requests,
            task,
        })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many requests found a file.
    pub fn files_served(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut stream: TcpStream, files: &Files, served: &AtomicUsize) -> Result<()> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await?;
        anyhow::ensure!(read > 0 && head.len() < MAX_HEAD, "bad request head");
        head.extend_from_slice(&buffer[..read]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or("/");
    // The query (which may carry a token) does not select the file.
    let path = path.split('?').next().unwrap_or(path);
    let Some(content) = files.by_path.get(path) else {
        let body = b"not found\n";
        let response = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
        stream.write_all(body).await?;
        return Ok(());
    };
    let first = served.fetch_add(1, Ordering::SeqCst) == 0;
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        content.len()
    );
    stream.write_all(response.as_bytes()).await?;
    match files.stall_first_after {
        Some(bytes) if first => {
            stream
                .write_all(&content[..bytes.min(content.len())])
                .await?;
            stream.flush().await?;
            // Hold the connection open without sending more, until the client goes away.
            let mut rest = [0u8; 1];
            let _ = stream.read(&mut rest).await;
        }
        _ => stream.write_all(content).await?,
    }
    Ok(())
}
