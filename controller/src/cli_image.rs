//! `cordon-controller image ...`: build, import, list, inspect and remove sandbox images.

use std::path::PathBuf;
use std::process::ExitCode;

use cordon_controller::config::SandboxConfig;
use cordon_controller::image::build::{BuildOutcome, ImageSpec};
use cordon_controller::image::{Image, ImageError, ImageStore};

#[derive(Debug, clap::Args)]
pub(crate) struct Where {
    /// The gateway's cordon.toml: the store is its `[sandbox] images_dir`.
    #[arg(long, default_value = "/etc/cordon/cordon.toml")]
    config: PathBuf,
    /// Use this image store directory instead of the one cordon.toml names.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ImageAction {
    /// Builds an image from Debian packages with mmdebstrap; a no-op when the image was built
    /// from the same file before (--force rebuilds).
    Build {
        #[command(flatten)]
        at: Where,
        name: String,
        /// The image file (suite, packages, files, env, workdir).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Packages to add to the file's, comma-separated.
        #[arg(long, value_delimiter = ',')]
        packages: Vec<String>,
        #[arg(long)]
        force: bool,
    },
    /// Imports an OCI image archive (docker save, podman save --format oci-archive, skopeo).
    Import {
        #[command(flatten)]
        at: Where,
        file: PathBuf,
        /// The name to store it as (default: the name the archive gives it).
        #[arg(long)]
        name: Option<String>,
    },
    /// Lists the stored images.
    List {
        #[command(flatten)]
        at: Where,
        #[arg(long)]
        json: bool,
    },
    /// Prints one image as JSON (digest, layers, environment, root, where it came from).
    Inspect {
        #[command(flatten)]
        at: Where,
        name: String,
    },
    /// Removes an image (refused while a live session runs on it).
    Rm {
        #[command(flatten)]
        at: Where,
        name: String,
    },
}

fn fail(e: &ImageError) -> ExitCode {
    eprintln!("cordon-controller: {e}");
    match e {
        ImageError::InvalidName(_) | ImageError::Invalid { .. } | ImageError::Unpack(_) => {
            ExitCode::from(65)
        }
        ImageError::NotFound { .. } => ExitCode::from(66),
        ImageError::InUse { .. } => ExitCode::from(75),
        _ => ExitCode::from(70),
    }
}

/// The store, and the controller's config when it was read (for the live-session check).
fn open(at: &Where) -> Result<(ImageStore, Option<SandboxConfig>), ExitCode> {
    let config = match &at.store {
        Some(_) => None,
        None => Some(SandboxConfig::load(&at.config).map_err(|e| {
            eprintln!("cordon-controller: {e}");
            ExitCode::from(64)
        })?),
    };
    let dir = match (&at.store, &config) {
        (Some(dir), _) => std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
        (None, config) => config
            .as_ref()
            .map_or_else(PathBuf::new, |c| c.images_dir.clone()),
    };
    let store = ImageStore::open(&dir).map_err(|e| fail(&e))?;
    Ok((store, config))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn print_image(verb: &str, image: &Image, elapsed: std::time::Duration) {
    println!(
        "image {} {verb} ({}, {} layer(s), {}) in {:.1} s",
        image.name,
        short(&image.digest),
        image.layers,
        mib(image.unpacked_bytes.unwrap_or(image.size_bytes)),
        elapsed.as_secs_f64()
    );
}

pub(crate) fn run(action: ImageAction) -> Result<ExitCode, ExitCode> {
    let started = std::time::Instant::now();
    match action {
        ImageAction::Build {
            at,
            name,
            from_file,
            packages,
            force,
        } => {
            let (store, _) = open(&at)?;
            let (mut spec, source) = match &from_file {
                Some(file) => (
                    ImageSpec::load(file).map_err(|e| fail(&e))?,
                    std::path::absolute(file)
                        .unwrap_or_else(|_| file.clone())
                        .display()
                        .to_string(),
                ),
                None => (ImageSpec::default(), "--packages".to_string()),
            };
            spec.packages.extend(packages);
            eprintln!(
                "cordon-controller: building image {name} ({} package(s) with mmdebstrap; the \
                 first build of an image downloads them and takes about a minute)",
                spec.packages.len()
            );
            match store
                .build(&name, &spec, &source, force)
                .map_err(|e| fail(&e))?
            {
                BuildOutcome::Built(image) => print_image("built", &image, started.elapsed()),
                BuildOutcome::UpToDate(image) => {
                    print_image("is up to date", &image, started.elapsed())
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageAction::Import { at, file, name } => {
            let (store, _) = open(&at)?;
            let image = store.import(&file, name.as_deref()).map_err(|e| fail(&e))?;
            print_image("imported", &image, started.elapsed());
            Ok(ExitCode::SUCCESS)
        }
        ImageAction::List { at, json } => {
            let (store, _) = open(&at)?;
            let images = store.list().map_err(|e| fail(&e))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&images).unwrap_or_default()
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<24} {:<12} {:>10} {:<21} SOURCE",
                "NAME", "DIGEST", "SIZE", "CREATED"
            );
            for i in images {
                println!(
                    "{:<24} {:<12} {:>10} {:<21} {}",
                    i.name,
                    short(&i.digest),
                    mib(i.unpacked_bytes.unwrap_or(i.size_bytes)),
                    i.created.as_deref().unwrap_or("-"),
                    i.source.as_deref().unwrap_or("-")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageAction::Inspect { at, name } => {
            let (store, _) = open(&at)?;
            let image = store.get(&name).map_err(|e| fail(&e))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&image).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        ImageAction::Rm { at, name } => {
            let (store, config) = open(&at)?;
            let image = store.get(&name).map_err(|e| fail(&e))?;
            let users = match &config {
                Some(config) => {
                    cordon_controller::sandbox::sessions_on_image(config, &image.digest).map_err(
                        |e| {
                            eprintln!("cordon-controller: {e}");
                            ExitCode::from(70)
                        },
                    )?
                }
                None => Vec::new(),
            };
            store.remove(&name, users).map_err(|e| fail(&e))?;
            println!("image {name} removed");
            Ok(ExitCode::SUCCESS)
        }
    }
}
