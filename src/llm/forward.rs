//! The rest of a streamed answer, after its first events went to the
//! client: read from the provider only when the client's connection asks
//! for more, on the connection's own task.
//!
//! A task of its own with a channel to the connection would cost a task
//! hop and a wake-up per event, and the answer's second event (usually
//! its first token) would leave in a write of its own even when it came
//! from the provider with the first. Polled by the connection, every event
//! already received goes out in one write, and a client that stops
//! reading stops the provider being read.
//!
//! Accounting happens once: when the provider's stream ends or fails
//! (before the client sees the end, so a client that has read the end
//! finds its tokens counted), or, if the client goes first, when the body
//! is dropped, as `cancelled`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt as _};
use sync_wrapper::SyncWrapper;
use tokio::time::Instant;

use super::provider::EventStream;
use super::sse::SseEvent;
use super::stream::StreamState;
use super::{Accounting, Alias, Api, LlmHandle, Served, Usage};
use crate::auth::Identity;

/// A streamed answer's body: encoded SSE events, in order.
pub struct EventBody {
    /// Only ever polled through `&mut`, so safe to share (hyper's response
    /// bodies must be `Sync`).
    events: Option<SyncWrapper<BoxStream<'static, Bytes>>>,
    /// The request's span, entered whenever the body is polled or dropped,
    /// so what happens after the handler returned is still recorded in it.
    span: tracing::Span,
}

impl Stream for EventBody {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        match &mut this.events {
            Some(events) => events.get_mut().poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

impl Drop for EventBody {
    fn drop(&mut self) {
        let _entered = self.span.enter();
        self.events.take();
    }
}

/// Who asked, and which target answers: what accounting needs after the
/// request handler has returned.
pub(super) struct StreamJob {
    pub(super) llm: LlmHandle,
    pub(super) alias: Arc<Alias>,
    pub(super) target_index: usize,
    pub(super) identity: Arc<Identity>,
    pub(super) identity_label: String,
    pub(super) api: Api,
    pub(super) started: Instant,
}

/// Forwards `events` after `first` (already converted for the client).
pub(super) fn forward(
    job: StreamJob,
    first: Vec<SseEvent>,
    events: EventStream,
    state: StreamState,
) -> EventBody {
    let forward = Forward {
        pending: first.into(),
        events,
        state,
        job,
        accounted: false,
    };
    let events = futures::stream::unfold(forward, |mut f| async move {
        let next = f.next().await?;
        Some((next, f))
    });
    EventBody {
        events: Some(SyncWrapper::new(events.boxed())),
        span: tracing::Span::current(),
    }
}

struct Forward {
    /// Events converted for the client and not yet sent.
    pending: VecDeque<SseEvent>,
    events: EventStream,
    state: StreamState,
    job: StreamJob,
    accounted: bool,
}

impl Forward {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev.encode());
            }
            if self.accounted {
                return None;
            }
            let failure = match self.events.next().await {
                Some(Ok(ev)) => match self.state.push(ev) {
                    Ok(out) => {
                        self.pending.extend(out);
                        if !self.state.is_done() {
                            continue;
                        }
                        None
                    }
                    Err(e) => Some(e.to_string()),
                },
                Some(Err(e)) => Some(e.to_string()),
                None => self.state.finish().err().map(|e| e.to_string()),
            };
            if let Some(message) = &failure {
                let text = format!("portcullis: the provider's stream failed: {message}");
                self.pending
                    .push_back(StreamState::error_event(self.job.api.wire(), &text));
            }
            let usage = self.account(failure.as_deref());
            self.spend(usage);
        }
    }

    fn spend(&self, usage: Option<Usage>) {
        let job = &self.job;
        job.llm.spend(&job.identity, &job.alias.name, usage);
    }

    /// Counts the request once with its outcome (`failure`: the stream
    /// broke; `None`: it ended normally, or the client left if it has
    /// not) and returns the usage to spend.
    fn account(&mut self, failure: Option<&str>) -> Option<Usage> {
        self.accounted = true;
        let job = &self.job;
        let target = job.alias.targets.get(job.target_index)?;
        let outcome = match failure {
            Some(message) => {
                tracing::warn!(provider = %target.provider.name, model = %target.model, error = %message,
                    "model stream failed after its first event");
                let opened = target
                    .health()
                    .failure(std::time::Instant::now(), &job.alias.breaker);
                if opened {
                    job.llm
                        .metrics
                        .llm
                        .cooling_down
                        .with_label_values(&[
                            job.alias.name.as_str(),
                            target.provider.name.as_str(),
                            target.model.as_str(),
                        ])
                        .set(1);
                }
                "stream_error"
            }
            None if self.state.is_done() => "ok",
            None => "cancelled",
        };
        let usage = self.state.usage();
        let usage = (usage != Usage::default()).then_some(usage);
        job.llm.account(
            &Accounting {
                alias: &job.alias,
                identity_label: &job.identity_label,
                api: job.api,
                started: job.started,
            },
            &Served {
                target,
                usage,
                outcome,
            },
        );
        usage
    }
}

impl Drop for Forward {
    /// The client went away before the stream ended: count what it got.
    fn drop(&mut self) {
        if self.accounted {
            return;
        }
        let usage = self.account(None);
        self.spend(usage);
    }
}
