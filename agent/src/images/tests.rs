//! The image cache on an in-memory host, with a source of the test's own beside the real
//! gRPC one (tested in `stream.rs`): fetching once, verifying, resuming, refusing, sweeping,
//! evicting.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::StreamExt as _;
use sha2::{Digest as _, Sha256};

use super::*;
use crate::hypervisor::memory::MemoryHost;
use crate::hypervisor::{Hypervisor as _, VmSpec, image_volume_name};

const CHUNK: usize = 64 * 1024;

/// Serves one image's bytes in chunks, after a pause; can break a transfer off after some
/// bytes, or send bytes other than the image's. Counts fetches and remembers their offsets.
struct FakeSource {
    image_id: ImageId,
    bytes: Vec<u8>,
    delay: Duration,
    /// The first transfer breaks off once this many bytes went out.
    break_after: Option<usize>,
    offsets: std::sync::Mutex<Vec<u64>>,
    fetches: AtomicUsize,
}

impl FakeSource {
    fn new(image_id: ImageId, bytes: Vec<u8>) -> Self {
        Self {
            image_id,
            bytes,
            delay: Duration::ZERO,
            break_after: None,
            offsets: std::sync::Mutex::new(Vec::new()),
            fetches: AtomicUsize::new(0),
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl ImageSource for FakeSource {
    fn fetch(
        &self,
        image_id: ImageId,
        offset: u64,
    ) -> BoxFuture<'static, Result<source::ChunkStream, FetchError>> {
        let attempt = self.fetches.fetch_add(1, Ordering::SeqCst);
        self.offsets.lock().unwrap().push(offset);
        let known = image_id == self.image_id;
        let offset = usize::try_from(offset).unwrap();
        let mut chunks: Vec<Result<Vec<u8>, FetchError>> = self.bytes
            [offset.min(self.bytes.len())..]
            .chunks(CHUNK)
            .map(|chunk| Ok(chunk.to_vec()))
            .collect();
        if let (0, Some(limit)) = (attempt, self.break_after) {
            chunks.truncate(limit / CHUNK);
            chunks.push(Err(FetchError::new(
                FetchErrorKind::Unavailable,
                "the connection broke",
            )));
        }
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if !known {
                return Err(FetchError::new(FetchErrorKind::NotFound, "no such image"));
            }
            Ok(futures::stream::iter(chunks).boxed())
        })
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn image_bytes() -> Vec<u8> {
    (0..(5 * CHUNK + 17)).map(|n| (n % 253) as u8).collect()
}

fn wanted(image_id: ImageId, bytes: &[u8]) -> WantedImage {
    WantedImage {
        image_id,
        sha256: sha256_hex(bytes),
        size_bytes: bytes.len() as u64,
        format: ImageFormat::Raw,
    }
}

struct Setup {
    host: MemoryHost,
    cache: Arc<ImageCache>,
    source: Arc<FakeSource>,
    dir: tempfile::TempDir,
}

async fn setup(source: FakeSource) -> Setup {
    let host = MemoryHost::new();
    let hypervisor = host.spawn_handle().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(source);
    let cache = Arc::new(ImageCache::new(
        hypervisor,
        Arc::clone(&source) as Arc<dyn ImageSource>,
        dir.path().join("cache"),
    ));
    Setup {
        host,
        cache,
        source,
        dir,
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn an_image_is_fetched_verified_and_cached_once() {
    let image_id = ImageId::new_random();
    let bytes = image_bytes();
    let setup = setup(FakeSource::new(image_id, bytes.clone())).await;
    let wanted = wanted(image_id, &bytes);

    let lease = setup.cache.acquire(&wanted).await.unwrap();
    assert_eq!(lease.base.image_id, image_id);
    assert_eq!(lease.base.format, ImageFormat::Raw);
    drop(lease);
    assert!(setup.host.volumes().contains(&image_volume_name(image_id)));
    assert_eq!(setup.source.fetches(), 1);
    let held = setup.cache.held().await.unwrap();
    assert_eq!(
        held,
        [HeldImage {
            image_id,
            sha256: wanted.sha256.clone(),
            size_bytes: bytes.len() as u64,
        }]
    );
    // Only the record is left in the cache directory: the fetched file became the base.
    assert_eq!(
        files_in(&setup.dir.path().join("cache")),
        [format!("{image_id}.verified")]
    );

    // Cached: not fetched again.
    setup.cache.acquire(&wanted).await.unwrap();
    assert_eq!(setup.source.fetches(), 1);
}

#[tokio::test]
async fn concurrent_creates_from_one_image_fetch_it_once() {
    let image_id = ImageId::new_random();
    let bytes = image_bytes();
    let mut source = FakeSource::new(image_id, bytes.clone());
    source.delay = Duration::from_millis(200);
    let setup = setup(source).await;
    let wanted = wanted(image_id, &bytes);
    let acquisitions: Vec<_> = (0..5)
        .map(|_| {
            let cache = Arc::clone(&setup.cache);
            let wanted = wanted.clone();
            tokio::spawn(async move { cache.acquire(&wanted).await.map(|lease| lease.base) })
        })
        .collect();
    for acquisition in acquisitions {
        assert_eq!(acquisition.await.unwrap().unwrap().image_id, image_id);
    }
    assert_eq!(setup.source.fetches(), 1);
}

#[tokio::test]
async fn a_transfer_that_breaks_off_is_resumed_where_it_stopped() {
    let image_id = ImageId::new_random();
    let bytes = image_bytes();
    let mut source = FakeSource::new(image_id, bytes.clone());
    source.break_after = Some(2 * CHUNK);
    let setup = setup(source).await;
    setup
        .cache
        .acquire(&wanted(image_id, &bytes))
        .await
        .unwrap();
    assert_eq!(
        *setup.source.offsets.lock().unwrap(),
        [0, 2 * CHUNK as u64],
        "the second attempt starts where the first stopped"
    );
    assert_eq!(
        setup.cache.held().await.unwrap()[0].sha256,
        sha256_hex(&bytes)
    );
}

#[tokio::test]
async fn bytes_that_do_not_match_the_checksum_are_refused_and_nothing_is_cached() {
    let image_id = ImageId::new_random();
    let bytes = image_bytes();
    let mut tampered = bytes.clone();
    tampered[CHUNK + 5] ^= 0xff;
    let setup = setup(FakeSource::new(image_id, tampered.clone())).await;
    let wanted = wanted(image_id, &bytes);
    let error = setup.cache.acquire(&wanted).await.unwrap_err();
    let ImageError::Invalid(message) = &error else {
        panic!("a mismatch is refused as invalid: {error:?}");
    };
    assert!(message.contains(&wanted.sha256), "{message}");
    assert!(message.contains(&sha256_hex(&tampered)), "{message}");
    assert!(
        setup.host.volumes().is_empty(),
        "{:?}",
        setup.host.volumes()
    );
    assert!(setup.cache.held().await.unwrap().is_empty());
    assert!(files_in(&setup.dir.path().join("cache")).is_empty());

    // More bytes than the image has: stopped early, nothing kept.
    let short = WantedImage {
        size_bytes: CHUNK as u64,
        ..wanted.clone()
    };
    let error = setup.cache.acquire(&short).await.unwrap_err();
    assert!(error.to_string().contains("more than"), "{error}");
    assert!(setup.host.volumes().is_empty());
    assert!(files_in(&setup.dir.path().join("cache")).is_empty());
}

#[tokio::test]
async fn an_image_the_source_does_not_have_is_not_retried() {
    let setup = setup(FakeSource::new(ImageId::new_random(), image_bytes())).await;
    let other = ImageId::new_random();
    let error = setup
        .cache
        .acquire(&wanted(other, b"whatever"))
        .await
        .unwrap_err();
    assert!(matches!(error, ImageError::Unavailable(_)), "{error:?}");
    assert!(error.to_string().contains("no such image"), "{error}");
    assert_eq!(setup.source.fetches(), 1);
}

#[tokio::test]
async fn the_start_up_sweep_removes_fetches_cut_short_and_records_without_a_base() {
    let image_id = ImageId::new_random();
    let bytes = image_bytes();
    let setup = setup(FakeSource::new(image_id, bytes.clone())).await;
    setup
        .cache
        .acquire(&wanted(image_id, &bytes))
        .await
        .unwrap();
    let cache_dir = setup.dir.path().join("cache");
    // What a kill -9 during a fetch leaves, and a record whose base someone removed.
    let partial = records::fetch_path(&cache_dir, ImageId::new_random());
    std::fs::write(&partial, b"half an image").unwrap();
    let gone = ImageId::new_random();
    records::write(
        &cache_dir,
        gone,
        &records::VerifiedImage {
            sha256: sha256_hex(b"x"),
            size_bytes: 1,
            format: ImageFormat::Raw,
        },
    )
    .unwrap();
    assert_eq!(setup.cache.sweep().await.unwrap(), 2);
    assert_eq!(files_in(&cache_dir), [format!("{image_id}.verified")]);
    // A partial fetch never counts as cached.
    assert_eq!(setup.cache.held().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_image_in_use_is_kept_and_an_unused_one_evicted() {
    let image_id = ImageId::new_random();
    let bytes = image_bytes();
    let setup = setup(FakeSource::new(image_id, bytes.clone())).await;
    let lease = setup
        .cache
        .acquire(&wanted(image_id, &bytes))
        .await
        .unwrap();
    let vm_id = vmm_shared::VmId::new_random();
    let mut host = setup.host.clone();
    host.create_vm(
        vm_id,
        &VmSpec {
            display_name: "web".into(),
            cpu: 1,
            memory_mib: 128,
            disk_gb: 1,
            start: false,
            image: Some(lease.base),
            seed: None,
        },
    )
    .unwrap();
    drop(lease);
    assert_eq!(
        setup.cache.evict(image_id).await.unwrap(),
        Eviction::InUse { disks: 1 }
    );
    assert_eq!(
        setup.cache.held().await.unwrap()[0].sha256,
        sha256_hex(&bytes)
    );
    host.delete_vm(vm_id).unwrap();
    assert_eq!(
        setup.cache.evict(image_id).await.unwrap(),
        Eviction::Removed
    );
    assert!(setup.cache.held().await.unwrap().is_empty());
    assert!(files_in(&setup.dir.path().join("cache")).is_empty());
    assert_eq!(
        setup.cache.evict(image_id).await.unwrap(),
        Eviction::NotCached
    );
}

#[test]
fn image_descriptions_are_checked() {
    let good = vmm_proto::ImageRef {
        image_id: ImageId::new_random().to_string(),
        sha256: "AB".repeat(32),
        size_bytes: 10,
        format: "qcow2".into(),
        virtual_size_bytes: 10,
    };
    let wanted = WantedImage::from_ref(&good).unwrap();
    assert_eq!(wanted.sha256, "ab".repeat(32), "normalised to lower case");
    for bad in [
        vmm_proto::ImageRef {
            image_id: "../../etc".into(),
            ..good.clone()
        },
        vmm_proto::ImageRef {
            sha256: "xyz".into(),
            ..good.clone()
        },
        vmm_proto::ImageRef {
            format: "vmdk".into(),
            ..good.clone()
        },
        vmm_proto::ImageRef {
            size_bytes: 0,
            ..good.clone()
        },
    ] {
        assert!(matches!(
            WantedImage::from_ref(&bad),
            Err(ImageError::Invalid(_))
        ));
    }
}
