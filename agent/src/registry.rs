//! Pulls (`PullCommand`): the runtime's pull progress turned into the
//! pull's stream (see bus.proto): one encoded `PullProgress` per chunk, at
//! most a few a second, the last one repeated while the engine reports
//! nothing (so the scheduler can tell a slow pull from a lost agent), and a
//! final one with `done` (and the error, if the pull failed). The stream
//! itself never fails: a failed pull is a `done` progress with its error.

use std::time::Duration;

use devctl_proto::pb;
use futures::StreamExt;
use prost::Message;

use crate::runtime::{OutputChunks, PullProgress};

/// How often the last progress is repeated while the engine is silent.
pub const REPEAT: Duration = Duration::from_secs(3);
/// Progress updates closer together than this are merged into one.
const COALESCE: Duration = Duration::from_millis(300);

enum State {
    /// The first progress goes out at once (the reader learns the pull
    /// started); later ones are merged.
    Starting(PullProgress),
    Pulling(PullProgress, pb::PullProgress),
    Done,
}

fn chunk(
    p: &pb::PullProgress,
) -> Result<(pb::OutputStream, Vec<u8>), crate::runtime::RuntimeError> {
    Ok((pb::OutputStream::Unspecified, p.encode_to_vec()))
}

/// The pull's stream from the runtime's progress.
pub fn pull_chunks(progress: PullProgress) -> OutputChunks {
    futures::stream::unfold(State::Starting(progress), |state| async move {
        let (mut progress, mut last) = match state {
            State::Starting(mut progress) => match progress.next().await {
                Some(Ok(first)) if first.status != "present" => {
                    return Some((chunk(&first), State::Pulling(progress, first)));
                }
                // Present, failed or over: the end follows at once.
                item => {
                    let rest = futures::stream::iter(item).chain(progress).boxed();
                    (rest, pb::PullProgress::default())
                }
            },
            State::Pulling(progress, last) => (progress, last),
            State::Done => return None,
        };
        let first = match tokio::time::timeout(REPEAT, progress.next()).await {
            // The engine is silent: say the pull goes on.
            Err(_) => return Some((chunk(&last), State::Pulling(progress, last))),
            Ok(item) => item,
        };
        let mut item = first;
        loop {
            match item {
                Some(Ok(p)) => {
                    last = p;
                    // Merge what follows closely.
                    match tokio::time::timeout(COALESCE, progress.next()).await {
                        Err(_) => {
                            return Some((chunk(&last), State::Pulling(progress, last)));
                        }
                        Ok(next) => item = next,
                    }
                }
                Some(Err(e)) => {
                    let done = pb::PullProgress {
                        done: true,
                        error: Some(pb::AgentError {
                            code: e.code() as i32,
                            message: e.to_string(),
                        }),
                        ..last
                    };
                    return Some((chunk(&done), State::Done));
                }
                None => {
                    let pulled = last.status != "present";
                    let done = pb::PullProgress {
                        done: true,
                        pulled,
                        ..last
                    };
                    return Some((chunk(&done), State::Done));
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeError;

    fn decode(c: &(pb::OutputStream, Vec<u8>)) -> pb::PullProgress {
        pb::PullProgress::decode(c.1.as_slice()).unwrap()
    }

    #[tokio::test]
    async fn a_pull_ends_with_done() {
        let steps = vec![
            Ok(pb::PullProgress {
                status: "Downloading".into(),
                current_bytes: 1,
                total_bytes: 10,
                ..Default::default()
            }),
            Ok(pb::PullProgress {
                status: "Pull complete".into(),
                current_bytes: 10,
                total_bytes: 10,
                ..Default::default()
            }),
        ];
        let out: Vec<_> = pull_chunks(futures::stream::iter(steps).boxed())
            .collect()
            .await;
        let last = decode(out.last().unwrap().as_ref().unwrap());
        assert!(last.done && last.pulled && last.error.is_none());
        assert_eq!(last.current_bytes, 10);
    }

    #[tokio::test]
    async fn a_present_image_is_not_pulled() {
        let steps = vec![Ok(pb::PullProgress {
            status: "present".into(),
            ..Default::default()
        })];
        let out: Vec<_> = pull_chunks(futures::stream::iter(steps).boxed())
            .collect()
            .await;
        // Merged into the one last message.
        assert_eq!(out.len(), 1);
        let last = decode(out.last().unwrap().as_ref().unwrap());
        assert!(last.done && !last.pulled);
    }

    #[tokio::test]
    async fn a_failed_pull_ends_with_its_error() {
        let steps = vec![Err(RuntimeError::RegistryAuth("refused".into()))];
        let out: Vec<_> = pull_chunks(futures::stream::iter(steps).boxed())
            .collect()
            .await;
        let last = decode(out.last().unwrap().as_ref().unwrap());
        let e = last.error.unwrap();
        assert_eq!(e.code, pb::AgentErrorCode::RegistryAuthFailed as i32);
        assert!(last.done);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_engine_repeats_the_last_progress() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tx.unbounded_send(Ok(pb::PullProgress {
            status: "Extracting".into(),
            ..Default::default()
        }))
        .unwrap();
        let mut chunks = pull_chunks(rx.boxed());
        let first = decode(&chunks.next().await.unwrap().unwrap());
        assert_eq!(first.status, "Extracting");
        // Nothing more from the engine: the same progress again.
        let again = decode(&chunks.next().await.unwrap().unwrap());
        assert_eq!(again.status, "Extracting");
        assert!(!again.done);
        drop(tx);
        let end = decode(&chunks.next().await.unwrap().unwrap());
        assert!(end.done);
        assert!(chunks.next().await.is_none());
    }
}
