//! `nereid image ...`

use std::path::PathBuf;

use anyhow::{Context, bail};
use futures::StreamExt;
use nereid_api::{Image, ImageCreate, ImageFromInstance, ImageFromInstanceAccepted, JobState};
use reqwest::Method;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::client::{Client, Listed, Listing};
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum ImageCmd {
    /// List the images you can see.
    List {
        #[arg(long)]
        name: Option<String>,
        /// container or vm
        #[arg(long = "type")]
        image_type: Option<String>,
        /// unactivated, active or disabled
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        listing: Listing,
    },
    /// Show one image.
    Get { id: String },
    /// Create an image from a manifest, upload its file (verified by sha256) and activate it.
    Import {
        /// The image file (a rootfs archive, a disk, a kernel bundle).
        #[arg(long)]
        file: PathBuf,
        /// The manifest (JSON: name, version, type, os, description, requirements, public).
        #[arg(long)]
        manifest: PathBuf,
        /// Leave the image unactivated.
        #[arg(long)]
        no_activate: bool,
    },
    /// Make an image from an instance (running or stopped; it keeps
    /// running). The image stays unactivated unless --activate.
    Create {
        /// The instance (id or alias).
        instance: String,
        name: String,
        version: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Wait until the image has its file.
        #[arg(long)]
        wait: bool,
        /// Wait, then activate it.
        #[arg(long)]
        activate: bool,
    },
    /// Make an image usable for new instances.
    Activate { id: String },
    /// Keep an image from new instances.
    Disable { id: String },
    /// Make a disabled image usable again.
    Enable { id: String },
    /// Delete an image (refused while instances use it).
    Delete { id: String },
}

pub async fn run(c: &Client, fmt: Format, cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::List {
            name,
            image_type,
            state,
            listing,
        } => {
            let q: Vec<(&str, String)> = [("name", name), ("type", image_type), ("state", state)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect();
            let listed: Listed<Image> = c.list("/v1/images", &q, &listing).await?;
            let images = &listed.items;
            match fmt {
                Format::Json => output::json(&images),
                Format::Table => output::table(
                    &[
                        "ID", "NAME", "VERSION", "TYPE", "OS", "STATE", "PUBLIC", "SIZE",
                    ],
                    images
                        .iter()
                        .map(|i| {
                            vec![
                                i.id.to_string(),
                                i.name.clone(),
                                i.version.clone(),
                                i.image_type.as_str().into(),
                                i.os.clone(),
                                i.state.as_str().into(),
                                i.public.to_string(),
                                i.file
                                    .as_ref()
                                    .map(|f| output::bytes(f.size))
                                    .unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect(),
                ),
            }
            listed.footer(fmt, "images");
        }
        ImageCmd::Get { id } => show(fmt, &c.get(&format!("/v1/images/{id}"), &[]).await?),
        ImageCmd::Import {
            file,
            manifest,
            no_activate,
        } => {
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("reading {}", manifest.display()))?;
            let m: ImageCreate = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid image manifest", manifest.display()))?;
            let image = import(c, fmt, &file, &m, !no_activate).await?;
            show(fmt, &image);
        }
        ImageCmd::Create {
            instance,
            name,
            version,
            description,
            wait,
            activate,
        } => {
            let instance = super::instance::resolve(c, &instance).await?;
            let accepted: ImageFromInstanceAccepted = c
                .post(
                    &format!("/v1/instances/{instance}/images"),
                    &ImageFromInstance {
                        name,
                        version,
                        description,
                    },
                )
                .await?;
            let id = accepted.image.id;
            if !(wait || activate) {
                if fmt == Format::Json {
                    output::json(&accepted);
                } else {
                    println!(
                        "image {id} ({} {}) is being made from instance {instance}; job {}",
                        accepted.image.name, accepted.image.version, accepted.job_id
                    );
                }
                return Ok(());
            }
            let job =
                super::instance::follow(c, &accepted.job_id.to_string(), fmt == Format::Table)
                    .await?;
            if job.state != JobState::Succeeded {
                bail!(
                    "job {} failed: {}",
                    job.id,
                    job.error.unwrap_or_else(|| "no reason given".into())
                );
            }
            let image: Image = if activate {
                c.post(&format!("/v1/images/{id}/activate"), &()).await?
            } else {
                c.get(&format!("/v1/images/{id}"), &[]).await?
            };
            show(fmt, &image);
        }
        ImageCmd::Activate { id } => show(
            fmt,
            &c.post(&format!("/v1/images/{id}/activate"), &()).await?,
        ),
        ImageCmd::Disable { id } => show(
            fmt,
            &c.post(&format!("/v1/images/{id}/disable"), &()).await?,
        ),
        ImageCmd::Enable { id } => {
            show(fmt, &c.post(&format!("/v1/images/{id}/enable"), &()).await?)
        }
        ImageCmd::Delete { id } => {
            c.delete(&format!("/v1/images/{id}")).await?;
            if fmt == Format::Table {
                println!("image {id} deleted");
            }
        }
    }
    Ok(())
}

async fn file_sha256(path: &PathBuf) -> anyhow::Result<(String, u64)> {
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), size))
}

/// Creates, uploads and (optionally) activates; a failed upload deletes the
/// half-made image so a retry starts clean.
async fn import(
    c: &Client,
    fmt: Format,
    file: &PathBuf,
    m: &ImageCreate,
    activate: bool,
) -> anyhow::Result<Image> {
    let (sha, size) = file_sha256(file).await?;
    let image: Image = c.post("/v1/images", m).await?;
    let bar = if fmt == Format::Table && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let b = indicatif::ProgressBar::new(size);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b.set_message(format!("uploading {} {}", m.name, m.version));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let progress = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).inspect(move |chunk| {
        if let Ok(b) = chunk {
            progress.inc(b.len() as u64);
        }
    });
    let req = c
        .request(Method::PUT, &format!("/v1/images/{}/file", image.id))
        .query(&[("sha256", sha.as_str())])
        .header("content-type", "application/octet-stream")
        .header("content-length", size)
        .body(reqwest::Body::wrap_stream(stream));
    let uploaded: anyhow::Result<Image> = c.execute_json(req).await;
    bar.finish_and_clear();
    let uploaded = match uploaded {
        Ok(i) => i,
        Err(e) => {
            let _ = c.delete(&format!("/v1/images/{}", image.id)).await;
            return Err(e.context(format!("uploading {}", file.display())));
        }
    };
    if !activate {
        return Ok(uploaded);
    }
    c.post(&format!("/v1/images/{}/activate", image.id), &())
        .await
}

fn show(fmt: Format, i: &Image) {
    if fmt == Format::Json {
        return output::json(i);
    }
    output::fields(vec![
        ("id", i.id.to_string()),
        ("name", format!("{} {}", i.name, i.version)),
        ("type", i.image_type.as_str().into()),
        ("os", i.os.clone()),
        ("state", i.state.as_str().into()),
        ("public", i.public.to_string()),
        ("owner", i.owner.to_string()),
        (
            "file",
            i.file
                .as_ref()
                .map(|f| format!("{} sha256:{}", output::bytes(f.size), f.sha256))
                .unwrap_or_else(|| "-".into()),
        ),
        ("description", i.description.clone()),
        (
            "origin",
            i.origin
                .map(|o| o.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
    ]);
}
