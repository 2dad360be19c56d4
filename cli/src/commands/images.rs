//! `image list|import|upload|delete`. An upload creates the image, then streams the file
//! with a progress bar; when the upload is refused, the image it created is deleted again,
//! so a failed upload leaves nothing behind.

use std::path::Path;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use tokio::io::AsyncReadExt;
use vmm_shared::api::images::{CreateImageRequest, ImageView};

use super::Context;
use crate::cli::{ImageCommand, ImageDetails};
use crate::client::read_json;
use crate::exit::{Failure, Result};
use crate::output::{self, Format, Table};

pub async fn run(context: &Context, command: ImageCommand) -> Result<()> {
    let client = &context.client;
    match command {
        ImageCommand::List => {
            let images: Vec<ImageView> = client.list("/api/images").await?;
            output::print(context.format, &images, |images| {
                let mut table =
                    Table::new(&["ID", "NAME", "STATUS", "OS", "FORMAT", "SIZE", "USER"]);
                for image in images {
                    table.row(vec![
                        image.id.to_string(),
                        image.name.clone(),
                        match &image.error {
                            Some(error) => format!("{} ({error})", image.status),
                            None => image.status.to_string(),
                        },
                        output::opt(image.os.clone()),
                        output::opt(image.format),
                        output::opt(image.size_bytes.map(output::bytes)),
                        image.default_user.clone(),
                    ]);
                }
                table
            })
        }
        ImageCommand::Import {
            name,
            source_url,
            details,
        } => {
            let image: ImageView = client
                .post("/api/images", &request(name, Some(source_url), details))
                .await?;
            output::done(
                context.format,
                "the coordinator downloads the file; `vmmctl image list` shows when it is ready",
            );
            show(context.format, &image)
        }
        ImageCommand::Upload {
            name,
            file,
            details,
        } => upload(context, name, &file, details).await,
        ImageCommand::Delete { image } => {
            let image = client.image(&image).await?;
            client.delete(&format!("/api/images/{}", image.id)).await?;
            output::done(context.format, format!("deleted image {}", image.name));
            Ok(())
        }
    }
}

fn request(name: String, source_url: Option<String>, details: ImageDetails) -> CreateImageRequest {
    CreateImageRequest {
        name,
        os: details.os,
        min_disk_gb: details.min_disk_gb,
        source_url,
        sha256: details.sha256,
        default_user: details.default_user,
    }
}

async fn upload(context: &Context, name: String, path: &Path, details: ImageDetails) -> Result<()> {
    let client = &context.client;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|err| Failure::usage(format!("cannot open {}: {err}", path.display())))?;
    let size = file.metadata().await?.len();
    let image: ImageView = client
        .post("/api/images", &request(name, None, details))
        .await?;

    let bar = if context.format == Format::Table {
        ProgressBar::new(size)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
        )
        .map_err(Failure::general)?
        .progress_chars("=> "),
    );
    bar.set_message(format!("uploading {}", image.name));
    let counted = bar.clone();
    let chunks = futures::stream::unfold(file, |mut file| async move {
        let mut buffer = vec![0u8; 256 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok::<_, std::io::Error>(buffer), file))
            }
            Err(err) => Some((Err(err), file)),
        }
    })
    .inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            counted.inc(chunk.len() as u64);
        }
    });
    let sent = client
        .send(
            client
                .request(Method::PUT, &format!("/api/images/{}/file", image.id))
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_LENGTH, size)
                // Checking a large file takes the coordinator a while after the last byte.
                .timeout(std::time::Duration::from_secs(3600))
                .body(reqwest::Body::wrap_stream(chunks)),
        )
        .await;
    bar.finish_and_clear();
    match sent {
        Ok(response) => {
            let image: ImageView = read_json(response).await?;
            output::done(context.format, format!("uploaded {}", path.display()));
            show(context.format, &image)
        }
        Err(failure) => {
            // The image was made for this upload: it goes with it.
            let _ = client.delete(&format!("/api/images/{}", image.id)).await;
            Err(failure)
        }
    }
}

fn show(format: Format, image: &ImageView) -> Result<()> {
    output::print_item(format, image, |image| {
        vec![
            ("id", image.id.to_string()),
            ("name", image.name.clone()),
            ("status", image.status.to_string()),
            ("error", output::opt(image.error.clone())),
            ("os", output::opt(image.os.clone())),
            ("format", output::opt(image.format)),
            ("size", output::opt(image.size_bytes.map(output::bytes))),
            ("default user", image.default_user.clone()),
            ("created", image.created_at.clone()),
        ]
    })
}
