//! Image builds on the engine (`POST /build`, the classic builder: the
//! engine here may predate BuildKit's API), image loads (`POST
//! /images/load`, as `docker load`), and whether an image is there.

use bollard::{body_full, errors::Error as BollardError, query_parameters::BuildImageOptions};
use futures::StreamExt;

use super::DockerRuntime;
use crate::runtime::{BuildOutput, ImageBuild, RuntimeError};

impl DockerRuntime {
    /// Builds `build`: the engine's output lines (progress lines of its
    /// steps, pulls it reports as status lines), ending with an error if
    /// the engine reports one.
    pub(super) fn build_stream(&self, build: ImageBuild) -> BuildOutput {
        let docker = self.docker.clone();
        let options = BuildImageOptions {
            dockerfile: if build.dockerfile.is_empty() {
                "Dockerfile".to_string()
            } else {
                build.dockerfile
            },
            t: Some(build.tag),
            buildargs: Some(build.build_args),
            rm: true,
            forcerm: true,
            ..Default::default()
        };
        Box::pin(async_stream(docker, options, build.context))
    }

    /// Loads the image archive in `archive` (`docker load`): the engine's
    /// output ("Loaded image: …"), ending with an error if the engine
    /// reports one (a damaged or foreign archive).
    pub(super) fn load_stream(&self, archive: std::path::PathBuf) -> BuildOutput {
        Box::pin(engine_output(self.docker.clone(), move |docker| {
            let body = futures::stream::once(tokio::fs::File::open(archive))
                .map(|file| match file {
                    Ok(f) => tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).left_stream(),
                    Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
                })
                .flatten();
            docker
                .import_image_stream(
                    bollard::query_parameters::ImportImageOptions::default(),
                    body,
                    None,
                )
                .boxed()
        }))
    }

    /// Whether the engine has an image tagged `tag`.
    pub(super) async fn has_image(&self, tag: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(tag).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(RuntimeError::Engine(e.to_string())),
        }
    }
}

/// The build's output as a stream owning its engine handle.
fn async_stream(
    docker: bollard::Docker,
    options: BuildImageOptions,
    context: Vec<u8>,
) -> impl futures::Stream<Item = Result<Vec<u8>, RuntimeError>> + Send + 'static {
    engine_output(docker, move |d| {
        d.build_image(options, None, Some(body_full(context.into())))
            .boxed()
    })
}

/// What the engine answers a build or a load with.
pub(super) type EngineStream<'a> =
    futures::stream::BoxStream<'a, Result<bollard::models::BuildInfo, BollardError>>;

/// The output of the engine call `call` makes (a build's or a load's
/// `BuildInfo` stream, which owns its engine handle) as text: the
/// engine's stream and status lines, ending with an error when the engine
/// reports one. The call runs on a task the returned stream owns: dropping
/// the stream drops the engine's response, which ends the request.
pub(super) fn engine_output(
    docker: bollard::Docker,
    call: impl for<'a> FnOnce(&'a bollard::Docker) -> EngineStream<'a> + Send + 'static,
) -> impl futures::Stream<Item = Result<Vec<u8>, RuntimeError>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(async move {
        let mut out = call(&docker);
        while let Some(item) = out.next().await {
            let item = match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        let message = detail
                            .message
                            .unwrap_or_else(|| "the engine reported a failure".into());
                        let _ = tx.send(Err(RuntimeError::Invalid(message))).await;
                        return;
                    }
                    let mut text = info.stream.unwrap_or_default();
                    if let Some(status) = info.status {
                        text.push_str(&status);
                        text.push('\n');
                    }
                    if text.is_empty() {
                        continue;
                    }
                    Ok(text.into_bytes())
                }
                Err(BollardError::DockerStreamError { error }) => Err(RuntimeError::Invalid(error)),
                Err(BollardError::DockerResponseServerError { message, .. }) => {
                    Err(RuntimeError::Invalid(message))
                }
                Err(e) => Err(RuntimeError::Engine(e.to_string())),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    futures::stream::unfold((rx, AbortOnDrop(task)), |(mut rx, guard)| async move {
        rx.recv().await.map(|item| (item, (rx, guard)))
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
