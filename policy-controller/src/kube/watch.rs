//! List/watch of one kind, with the reflector protocol spelled out as events.
//!
//! Why not `kube::runtime::watcher`: it consumes BOOKMARK events and the list's own
//! resourceVersion internally, and `/status` must report the newest resourceVersion whose
//! effect is programmed, including bookmarks and relists after which a deleted object simply
//! is not listed any more. The protocol is the same: list (paged) → `Relisting`,
//! `Applied{initial}`..., `Listed{rv}`; then watch from that version; a dropped stream is
//! resumed from the last version seen; `410 Gone` (or an expired continue token) relists;
//! every failure backs off exponentially. Nothing here ever gives up.
//!
//! A custom resource whose definition is not installed ([`WatchedKind::OPTIONAL`]) answers
//! the list with 404: that is reported as an empty, complete list (the agent programs the
//! other kinds and is ready), and the list is tried again every [`WatchTuning::absent_retry`]
//! so that installing the CRD later takes effect.

use super::resource::{Slim, WatchedKind};
use futures::StreamExt;
use kube::api::{Api, ListParams, WatchEvent as KubeEvent, WatchParams};
use std::time::Duration;
use tokio::sync::mpsc;

/// What one kind's watch reports, in order.
#[derive(Debug, Clone)]
pub enum WatchEvent<T> {
    /// A (re)list begins: every object not listed again before `Listed` is gone.
    Relisting,
    /// An object was listed (`initial`) or added/modified by the watch.
    Applied {
        object: Slim<T>,
        initial: bool,
    },
    Deleted(Slim<T>),
    /// The list is complete, as of this resourceVersion.
    Listed {
        resource_version: String,
    },
    /// The server's BOOKMARK: nothing changed up to this resourceVersion.
    Bookmark {
        resource_version: String,
    },
    /// A list or watch failed (it is retried with backoff); for logs and metrics.
    Failed {
        error: String,
    },
}

/// Tuning of the retry loop.
#[derive(Debug, Clone)]
pub struct WatchTuning {
    pub page_size: u32,
    /// Server-side watch timeout; the stream ends and is resumed from the last version.
    pub watch_timeout_secs: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often the list of an optional kind whose CRD is missing is tried again.
    pub absent_retry: Duration,
}

impl Default for WatchTuning {
    fn default() -> Self {
        WatchTuning {
            page_size: 500,
            watch_timeout_secs: 290,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            absent_retry: Duration::from_secs(30),
        }
    }
}

/// Exponential backoff with jitter: each wait is drawn from `[d, 2d)` where `d` doubles from
/// `backoff_min` up to `backoff_max`. Without jitter every agent of a cluster, cut off by the
/// same API server restart, would retry at the same instants and hit the server together
/// when it comes back; with it their retries spread over the interval. Each agent's random
/// generator is seeded on its own.
struct Backoff {
    builder: backon::ExponentialBuilder,
    delays: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    fn new(t: &WatchTuning) -> Backoff {
        use backon::BackoffBuilder;
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(t.backoff_min)
            .with_max_delay(t.backoff_max)
            .with_jitter()
            .without_max_times();
        Backoff {
            builder,
            delays: builder.build(),
            max: t.backoff_max,
        }
    }

    fn next_delay(&mut self) -> Duration {
        // Never exhausted: built without a maximum number of retries.
        self.delays.next().unwrap_or(self.max)
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    fn reset(&mut self) {
        use backon::BackoffBuilder;
        self.delays = self.builder.build();
    }
}

enum ListOutcome {
    Listed(String),
    /// An optional kind's resource does not exist (404): listed as empty.
    Absent,
    Failed,
    ReceiverGone,
}

enum WatchOutcome {
    /// The stream ended (server timeout, dropped connection): resume from the last version.
    Resume,
    /// 410 Gone: the version is too old, relist.
    Relist,
    ReceiverGone,
}

/// Run list/watch for kind `T` until the receiver is dropped, sending every event through
/// `wrap` into `tx`.
pub async fn run_watch<T, E>(
    api: Api<Slim<T>>,
    tuning: WatchTuning,
    tx: mpsc::Sender<E>,
    wrap: fn(WatchEvent<T>) -> E,
) where
    T: WatchedKind,
    E: Send + 'static,
{
    let mut backoff = Backoff::new(&tuning);
    'relist: loop {
        let mut resource_version = match list_all(&api, &tuning, &tx, wrap).await {
            ListOutcome::Listed(rv) => rv,
            ListOutcome::ReceiverGone => return,
            ListOutcome::Absent => {
                tokio::time::sleep(tuning.absent_retry).await;
                continue 'relist;
            }
            ListOutcome::Failed => {
                backoff.wait().await;
                continue 'relist;
            }
        };
        backoff.reset();
        loop {
            match watch_from(
                &api,
                &tuning,
                &tx,
                wrap,
                &mut resource_version,
                &mut backoff,
            )
            .await
            {
                WatchOutcome::Resume => continue,
                WatchOutcome::Relist => continue 'relist,
                WatchOutcome::ReceiverGone => return,
            }
        }
    }
}

async fn send<T, E>(tx: &mpsc::Sender<E>, wrap: fn(WatchEvent<T>) -> E, ev: WatchEvent<T>) -> bool {
    tx.send(wrap(ev)).await.is_ok()
}

fn is_gone(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 410)
}

fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

async fn list_all<T: WatchedKind, E>(
    api: &Api<Slim<T>>,
    tuning: &WatchTuning,
    tx: &mpsc::Sender<E>,
    wrap: fn(WatchEvent<T>) -> E,
) -> ListOutcome {
    if !send(tx, wrap, WatchEvent::Relisting).await {
        return ListOutcome::ReceiverGone;
    }
    let mut continue_token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(tuning.page_size);
        if let Some(token) = continue_token.take() {
            params = params.continue_token(&token);
        }
        let page = match api.list(&params).await {
            Ok(page) => page,
            Err(err) if T::OPTIONAL && is_not_found(&err) => {
                tracing::info!(kind = %T::RESOURCE, "resource not served (CRD not installed): none");
                let listed = WatchEvent::Listed {
                    resource_version: String::new(),
                };
                if !send(tx, wrap, listed).await {
                    return ListOutcome::ReceiverGone;
                }
                return ListOutcome::Absent;
            }
            Err(err) => {
                let error = format!("list {}: {err}", T::RESOURCE);
                tracing::warn!(kind = %T::RESOURCE, gone = is_gone(&err), "{error}");
                if !send(tx, wrap, WatchEvent::Failed { error }).await {
                    return ListOutcome::ReceiverGone;
                }
                // A 410 here is an expired continue token: the caller starts over anyway.
                return ListOutcome::Failed;
            }
        };
        for object in page.items {
            if !send(
                tx,
                wrap,
                WatchEvent::Applied {
                    object,
                    initial: true,
                },
            )
            .await
            {
                return ListOutcome::ReceiverGone;
            }
        }
        continue_token = page.metadata.continue_.filter(|t| !t.is_empty());
        if continue_token.is_none() {
            let resource_version = page.metadata.resource_version.unwrap_or_default();
            tracing::debug!(kind = %T::RESOURCE, %resource_version, "listed");
            if !send(
                tx,
                wrap,
                WatchEvent::Listed {
                    resource_version: resource_version.clone(),
                },
            )
            .await
            {
                return ListOutcome::ReceiverGone;
            }
            return ListOutcome::Listed(resource_version);
        }
    }
}

async fn watch_from<T: WatchedKind, E>(
    api: &Api<Slim<T>>,
    tuning: &WatchTuning,
    tx: &mpsc::Sender<E>,
    wrap: fn(WatchEvent<T>) -> E,
    resource_version: &mut String,
    backoff: &mut Backoff,
) -> WatchOutcome {
    // Bookmarks are on by default in `WatchParams`.
    let params = WatchParams::default().timeout(tuning.watch_timeout_secs);
    let stream = match api.watch(&params, resource_version).await {
        Ok(stream) => stream,
        Err(err) => {
            let gone = is_gone(&err);
            let error = format!("watch {} from {resource_version}: {err}", T::RESOURCE);
            tracing::warn!(kind = %T::RESOURCE, "{error}");
            if !send(tx, wrap, WatchEvent::Failed { error }).await {
                return WatchOutcome::ReceiverGone;
            }
            backoff.wait().await;
            return if gone {
                WatchOutcome::Relist
            } else {
                WatchOutcome::Resume
            };
        }
    };
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let ev = match item {
            Ok(KubeEvent::Added(object) | KubeEvent::Modified(object)) => {
                *resource_version = object.resource_version().to_string();
                WatchEvent::Applied {
                    object,
                    initial: false,
                }
            }
            Ok(KubeEvent::Deleted(object)) => {
                *resource_version = object.resource_version().to_string();
                WatchEvent::Deleted(object)
            }
            Ok(KubeEvent::Bookmark(bookmark)) => {
                *resource_version = bookmark.metadata.resource_version.clone();
                WatchEvent::Bookmark {
                    resource_version: bookmark.metadata.resource_version,
                }
            }
            Ok(KubeEvent::Error(status)) => {
                let error = format!(
                    "watch {} from {resource_version}: {} ({})",
                    T::RESOURCE,
                    status.message,
                    status.code
                );
                tracing::info!(kind = %T::RESOURCE, code = status.code, "{error}");
                if !send(tx, wrap, WatchEvent::Failed { error }).await {
                    return WatchOutcome::ReceiverGone;
                }
                if status.code == 410 {
                    return WatchOutcome::Relist;
                }
                backoff.wait().await;
                return WatchOutcome::Resume;
            }
            Err(err) => {
                // A line that is not a watch event at all (the slim decoding itself never
                // fails); skip it, the stream goes on.
                let error = format!("watch {}: {err}", T::RESOURCE);
                tracing::warn!(kind = %T::RESOURCE, "{error}");
                if !send(tx, wrap, WatchEvent::Failed { error }).await {
                    return WatchOutcome::ReceiverGone;
                }
                if is_gone(&err) {
                    return WatchOutcome::Relist;
                }
                continue;
            }
        };
        backoff.reset();
        if !send(tx, wrap, ev).await {
            return WatchOutcome::ReceiverGone;
        }
    }
    // The stream ended: normal at the server timeout, or the connection dropped. Resuming at
    // once would spin against a server that closes every connection; a short wait does not.
    tracing::debug!(kind = %T::RESOURCE, %resource_version, "watch stream ended; resuming");
    tokio::time::sleep(tuning.backoff_min).await;
    WatchOutcome::Resume
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter() {
        let tuning = WatchTuning::default();
        let mut b = Backoff::new(&tuning);
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = (tuning.backoff_min * 2u32.pow(i as u32)).min(tuning.backoff_max);
            assert!(
                *d >= base && *d < base * 2,
                "retry {i}: {d:?} not in [{base:?}, 2x)"
            );
        }
        b.reset();
        assert!(b.next_delay() < tuning.backoff_min * 2, "reset starts over");
    }

    /// Ten agents cut off at the same moment do not retry at the same moments.
    #[test]
    fn agents_spread_their_retries() {
        let tuning = WatchTuning::default();
        let first_waits: std::collections::BTreeSet<Duration> = (0..10)
            .map(|_| {
                let mut b = Backoff::new(&tuning);
                (0..6).map(|_| b.next_delay()).sum::<Duration>()
            })
            .collect();
        assert!(first_waits.len() >= 9, "{first_waits:?}");
    }
}
