//! Pulling images (`create_image`), with a registry's credentials when the
//! scheduler sent some: the engine's progress folded into one running
//! total, and the engine's errors sorted into what a user can act on
//! (credentials, reachability, a missing image).
//!
//! The credentials are used for the one request and dropped; nothing here
//! logs them (bollard's `DockerCredentials` is never formatted).

use std::collections::HashMap;

use bollard::{
    Docker, auth::DockerCredentials, errors::Error as BollardError, models::CreateImageInfo,
    query_parameters::CreateImageOptions,
};
use devctl_proto::pb;
use futures::StreamExt;

use super::super::{PullProgress, RuntimeError};

/// `image` with `:latest` when it names neither a tag nor a digest (the
/// engine would pull every tag of the repository otherwise).
fn with_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || image.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// Starts the pull of `image` as `policy` asks (see
/// [`super::super::ContainerRuntime::pull`]).
pub(super) fn pull(
    docker: &Docker,
    node: &str,
    image: &str,
    policy: pb::PullPolicy,
    auth: Option<pb::RegistryAuth>,
) -> PullProgress {
    let (docker, node, image) = (docker.clone(), node.to_string(), image.to_string());
    let present = async move {
        let there = match docker.inspect_image(&image).await {
            Ok(_) => true,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => false,
            Err(e) => return Err(RuntimeError::Engine(e.to_string())),
        };
        Ok((docker, node, image, there))
    };
    futures::stream::once(present)
        .flat_map(move |checked| match checked {
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            Ok((_, _, _, true)) if policy != pb::PullPolicy::Always => {
                futures::stream::once(async {
                    Ok(pb::PullProgress {
                        status: "present".into(),
                        ..Default::default()
                    })
                })
                .boxed()
            }
            Ok((docker, node, image, _)) => pull_now(docker, node, image, auth.clone()),
        })
        .boxed()
}

fn pull_now(
    docker: Docker,
    node: String,
    image: String,
    auth: Option<pb::RegistryAuth>,
) -> PullProgress {
    let host = devctl_proto::registry::registry_host(&image);
    let credentials = auth.map(|a| DockerCredentials {
        username: Some(a.username),
        password: Some(a.password),
        serveraddress: Some(a.host),
        ..Default::default()
    });
    let had_credentials = credentials.is_some();
    let options = CreateImageOptions {
        from_image: Some(with_tag(&image)),
        ..Default::default()
    };
    let mut layers = Layers::default();
    docker
        .create_image(Some(options), None, credentials)
        .map(move |item| match item {
            Ok(info) => {
                layers.update(&info);
                Ok(layers.progress(info.status.unwrap_or_default()))
            }
            Err(e) => Err(classify(e, &image, &host, &node, had_credentials)),
        })
        .boxed()
}

/// What is known of each layer of a pull.
#[derive(Debug, Default)]
struct Layers {
    /// layer id -> (downloaded, size, complete)
    by_id: HashMap<String, (i64, i64, bool)>,
}

impl Layers {
    fn update(&mut self, info: &CreateImageInfo) {
        let Some(id) = info.id.as_deref() else {
            return;
        };
        let status = info.status.as_deref().unwrap_or_default();
        // Lines like "Pulling from team/app" carry the tag as their id.
        if status.starts_with("Pulling from") || status.starts_with("Digest") {
            return;
        }
        let layer = self.by_id.entry(id.to_string()).or_default();
        match status {
            "Downloading" => {
                if let Some(d) = &info.progress_detail {
                    layer.0 = d.current.unwrap_or(layer.0);
                    layer.1 = d.total.unwrap_or(layer.1).max(0);
                }
            }
            "Download complete" | "Verifying Checksum" => layer.0 = layer.1,
            "Pull complete" | "Already exists" => {
                layer.0 = layer.1;
                layer.2 = true;
            }
            _ => {}
        }
    }

    fn progress(&self, status: String) -> pb::PullProgress {
        pb::PullProgress {
            status,
            current_bytes: self.by_id.values().map(|l| l.0).sum(),
            total_bytes: self.by_id.values().map(|l| l.1).sum(),
            layers: self.by_id.len() as i32,
            layers_done: self.by_id.values().filter(|l| l.2).count() as i32,
            ..Default::default()
        }
    }
}

/// Sorts an engine's pull error into what the user can do about it.
fn classify(
    e: BollardError,
    image: &str,
    host: &str,
    node: &str,
    had_credentials: bool,
) -> RuntimeError {
    let (status, message) = match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => (Some(status_code), message),
        BollardError::DockerStreamError { error } => (None, error),
        other => return RuntimeError::Engine(other.to_string()),
    };
    let lower = message.to_ascii_lowercase();
    let auth = lower.contains("unauthorized")
        || lower.contains("authentication required")
        || lower.contains("no basic auth credentials")
        || lower.contains("denied");
    let unreachable = lower.contains("connection refused")
        || lower.contains("no such host")
        || lower.contains("i/o timeout")
        || lower.contains("dial tcp")
        || lower.contains("tls handshake")
        || lower.contains("server gave http response")
        || lower.contains("network is unreachable")
        || lower.contains("context deadline exceeded");
    let missing = status == Some(404)
        || lower.contains("manifest unknown")
        || lower.contains("not found")
        || lower.contains("does not exist");
    if auth {
        let given = if had_credentials {
            "refused the stored credentials"
        } else {
            "wants credentials and none are stored for it"
        };
        RuntimeError::RegistryAuth(format!(
            "registry {host} {given} when node {node} pulled {image:?}: {message}; store working ones with `devctl registries add {host} --username USER --password-stdin`"
        ))
    } else if unreachable {
        RuntimeError::RegistryUnreachable(format!(
            "node {node} could not reach registry {host} to pull {image:?}: {message}; check the host and port in the image reference and that the registry is up"
        ))
    } else if missing {
        RuntimeError::NotInRegistry(format!(
            "registry {host} has no image {image:?} (pulled by node {node}): {message}; check the repository name and tag"
        ))
    } else {
        RuntimeError::Engine(format!("pulling {image:?} on node {node}: {message}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_without_tag_gets_latest() {
        assert_eq!(with_tag("busybox"), "busybox:latest");
        assert_eq!(with_tag("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b:latest");
        assert_eq!(with_tag("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000/a/b:1");
        assert_eq!(with_tag("a/b@sha256:00"), "a/b@sha256:00");
    }
}
