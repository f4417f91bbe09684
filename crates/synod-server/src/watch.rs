//! etcd's Watch service: one bidirectional stream multiplexes many watchers (etcd
//! `v3rpc/watch.go`).
//!
//! Each stream has one task. It reads client requests and the stream's notice queue, which the
//! [`WatchHub`](synod_core::watch::WatchHub) fills without ever blocking; the task turns notices
//! into responses (adding `prev_kv` and fragmenting as asked) and sends them to a bounded output
//! queue. A client that stops reading fills the output queue, then the notice queue, and its
//! watchers fall back to the hub's unsynced group: memory stays bounded and apply never waits.
//! Both queues are bounded in bytes as well as in entries ([`QUEUE_BYTES_MAX`] each, with room
//! for one item of any size), so large values cannot make a stalled stream hold gigabytes.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use synod_api::etcdserverpb::watch_server::Watch;
use synod_api::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request::FilterType,
    watch_request::RequestUnion,
};
use synod_api::mvccpb::Event;
use synod_core::auth::Access;
use synod_core::mvcc::kv_store::RangeOptions;
use synod_core::watch::{WatchNotice, WatchRequest as HubRequest, WatchSink};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::caller::{self, Credentials};
use crate::error::ServerError;
use crate::member::Member;

/// Responses buffered for a client before the stream's task waits for it to read.
const OUTPUT_QUEUE_MAX: usize = 128;
/// Notices buffered between the hub and the stream's task; when full, watchers go unsynced.
const NOTICE_QUEUE_MAX: usize = 1024;
/// Bytes of events each of a stream's two queues holds for its client.
const QUEUE_BYTES_MAX: usize = 32 << 20;
/// Size past which a batch of events is cut, between two revisions, into another response.
const RESPONSE_BYTES_TARGET: usize = 1 << 20;
/// Watchers one stream may hold.
const WATCHERS_PER_STREAM_MAX: usize = 100_000;
/// How often a deferred progress request is retried.
const PROGRESS_RETRY: Duration = Duration::from_millis(100);

const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const EMPTY_WATCHER_RANGE: &str = "mvcc: watcher range is empty";
const TOO_MANY_WATCHERS: &str = "synod: too many watchers on this stream";

/// Bytes one of a stream's queues holds (module docs): taken when an item is queued, given back
/// when it is taken off. The two queues have a budget each, so the task, waiting for room in
/// the output queue, never waits on bytes that only it could free.
pub(crate) struct StreamBudget {
    used: AtomicUsize,
    limit: usize,
    freed: Notify,
}

impl StreamBudget {
    fn new(limit: usize) -> StreamBudget {
        StreamBudget {
            used: AtomicUsize::new(0),
            limit,
            freed: Notify::new(),
        }
    }

    /// Takes `bytes` if they fit (anything fits in an empty budget).
    fn try_take(&self, bytes: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used == 0 || used + bytes <= self.limit).then_some(used + bytes)
            })
            .is_ok();
        if taken {
            crate::metrics::metrics()
                .watch_queued_bytes
                .add(bytes as i64);
        }
        taken
    }

    fn release(&self, bytes: usize) {
        let released = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            })
            .map_or(0, |used| used.min(bytes));
        crate::metrics::metrics()
            .watch_queued_bytes
            .sub(released as i64);
        self.freed.notify_waiters();
    }

    /// Whether the hub may catch a watcher up now: half the budget is free.
    fn has_room(&self) -> bool {
        self.used.load(Ordering::Acquire) <= self.limit / 2
    }
}

/// What a notice holds in memory, roughly: its events' keys and values.
fn notice_bytes(notice: &WatchNotice) -> usize {
    const OVERHEAD: usize = 64;
    match notice {
        WatchNotice::Events { events, .. } => events
            .iter()
            .map(|event| {
                OVERHEAD
                    + event
                        .kv
                        .as_ref()
                        .map_or(0, |kv| kv.key.len() + kv.value.len())
            })
            .sum(),
        _ => OVERHEAD,
    }
}

/// Splits `events` (in revision order) into runs of whole revisions of about `target` bytes.
fn by_whole_revisions(events: Vec<Event>, target: usize) -> Vec<Vec<Event>> {
    let mut batches: Vec<Vec<Event>> = Vec::new();
    let mut current: Vec<Event> = Vec::new();
    let mut bytes = 0;
    let revision = |event: &Event| event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    for event in events {
        let starts_revision = current
            .last()
            .is_none_or(|last| revision(last) != revision(&event));
        if bytes >= target && starts_revision {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += event.encoded_len();
        current.push(event);
    }
    if !current.is_empty() || batches.is_empty() {
        batches.push(current);
    }
    batches
}

/// The sending half of a stream's notice queue, bounded in bytes when it has a budget.
pub(crate) struct ChannelSink {
    sender: mpsc::Sender<WatchNotice>,
    budget: Option<Arc<StreamBudget>>,
}

impl ChannelSink {
    /// A sink bounded in entries only (the member's own watchers, which read at once).
    pub(crate) fn new(sender: mpsc::Sender<WatchNotice>) -> ChannelSink {
        ChannelSink {
            sender,
            budget: None,
        }
    }
}

impl WatchSink for ChannelSink {
    fn try_send(&self, notice: WatchNotice) -> bool {
        let Some(budget) = &self.budget else {
            return self.sender.try_send(notice).is_ok();
        };
        let bytes = notice_bytes(&notice);
        if !budget.try_take(bytes) {
            return false;
        }
        if self.sender.try_send(notice).is_err() {
            budget.release(bytes);
            return false;
        }
        true
    }

    fn has_room(&self) -> bool {
        self.sender.capacity() > 0 && self.budget.as_ref().is_none_or(|b| b.has_room())
    }
}

pub struct WatchService {
    member: Arc<Member>,
}

impl WatchService {
    pub fn new(member: Arc<Member>) -> WatchService {
        WatchService { member }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct WatcherOptions {
    prev_kv: bool,
    fragment: bool,
    /// The id this watcher has in the hub. Hub ids are never reused on a stream, so a notice
    /// queued for a canceled watcher cannot be mistaken for one of a new watcher that the client
    /// created with the same watch id.
    hub_id: i64,
}

struct StreamTask {
    member: Arc<Member>,
    credentials: Credentials,
    /// Bytes in the notice queue (taken by the sink, given back here).
    notice_budget: Arc<StreamBudget>,
    /// Bytes in the output queue (taken here, given back as the client's side reads).
    output_budget: Arc<StreamBudget>,
    stream: u64,
    sink: Arc<ChannelSink>,
    output: mpsc::Sender<Result<WatchResponse, Status>>,
    /// Client watch id to the watcher's options.
    options: HashMap<i64, WatcherOptions>,
    /// Hub id to client watch id, for the watchers alive on this stream.
    by_hub_id: HashMap<i64, i64>,
    next_hub_id: i64,
    next_auto_id: i64,
    progress_pending: bool,
}

impl WatchService {
    /// Serves one watch stream: `requests` are the client's create, cancel and progress
    /// requests; the returned stream carries the responses. Shared by gRPC and the HTTP gateway.
    /// As in etcd, the stream stays open after the client stops sending requests.
    /// `credentials` are the stream's; each watcher is checked against them when created.
    pub fn open<S>(
        &self,
        mut requests: S,
        credentials: Credentials,
    ) -> impl Stream<Item = Result<WatchResponse, Status>> + Send + Unpin + 'static
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let (output, output_receiver) = mpsc::channel(OUTPUT_QUEUE_MAX);
        let (notices, mut notice_receiver) = mpsc::channel(NOTICE_QUEUE_MAX);
        let notice_budget = Arc::new(StreamBudget::new(QUEUE_BYTES_MAX));
        let output_budget = Arc::new(StreamBudget::new(QUEUE_BYTES_MAX));
        let mut task = StreamTask {
            member: self.member.clone(),
            credentials,
            stream: self.member.machine.hub.new_stream(),
            sink: Arc::new(ChannelSink {
                sender: notices,
                budget: Some(notice_budget.clone()),
            }),
            notice_budget,
            output_budget: output_budget.clone(),
            output,
            options: HashMap::new(),
            by_hub_id: HashMap::new(),
            next_hub_id: 0,
            next_auto_id: 0,
            progress_pending: false,
        };
        tokio::spawn(async move {
            let mut retry = tokio::time::interval(PROGRESS_RETRY);
            let mut requests_open = true;
            loop {
                let keep_going = tokio::select! {
                    request = requests.next(), if requests_open => match request {
                        Some(Ok(request)) => task.on_request(request).await,
                        // The client half-closed: keep delivering until it goes away.
                        None => {
                            requests_open = false;
                            true
                        }
                        Some(Err(_)) => false,
                    },
                    Some(notice) = notice_receiver.recv() => task.on_notice(notice).await,
                    _ = retry.tick(), if task.progress_pending => task.retry_progress().await,
                    _ = task.output.closed() => false,
                };
                if !keep_going {
                    break;
                }
            }
            task.member.machine.hub.remove_stream(task.stream);
        });
        ReceiverStream::new(output_receiver).inspect(move |item| {
            if let Ok(response) = item {
                output_budget.release(response.encoded_len());
            }
        })
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: tonic::Request<tonic::Streaming<WatchRequest>>,
    ) -> Result<tonic::Response<Self::WatchStream>, Status> {
        let credentials = Credentials::of(&request);
        Ok(tonic::Response::new(Box::pin(
            self.open(request.into_inner(), credentials),
        )))
    }
}

impl StreamTask {
    /// Queues a response for the client, first waiting, while the client does not read, until
    /// it fits in the stream's bytes.
    async fn send(&self, response: WatchResponse) -> bool {
        let bytes = response.encoded_len();
        loop {
            let freed = self.output_budget.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.output_budget.try_take(bytes) {
                break;
            }
            tokio::select! {
                _ = freed => {}
                _ = self.output.closed() => return false,
            }
        }
        if self.output.send(Ok(response)).await.is_err() {
            self.output_budget.release(bytes);
            return false;
        }
        true
    }

    fn header(&self, revision: i64) -> Option<synod_api::etcdserverpb::ResponseHeader> {
        Some(self.member.header(revision))
    }

    /// Returns false when the stream should end.
    async fn on_request(&mut self, request: WatchRequest) -> bool {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if let Some(options) = self.options.remove(&cancel.watch_id) {
                    self.member.machine.hub.cancel(self.stream, options.hub_id);
                    self.by_hub_id.remove(&options.hub_id);
                    let response = WatchResponse {
                        header: self.header(self.member.machine.store.current_revision()),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..WatchResponse::default()
                    };
                    return self.send(response).await;
                }
                true
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_pending = true;
                self.retry_progress().await
            }
            None => true,
        }
    }

    async fn retry_progress(&mut self) -> bool {
        if self
            .member
            .machine
            .hub
            .request_progress(self.stream, &*self.sink)
        {
            self.progress_pending = false;
        }
        true
    }

    async fn create(&mut self, mut create: WatchCreateRequest) -> bool {
        if create.key.is_empty() {
            // The smallest key: an empty key watches from the start of the key space.
            create.key = vec![0];
        }
        let revision = self.member.machine.store.current_revision();
        let refuse = |reason: &str| WatchResponse {
            header: Some(self.member.header(revision)),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_owned(),
            ..WatchResponse::default()
        };
        // READ on the range as sent (etcd checks before it widens anything: GHSA-xg4h-6gfc-h4m8).
        let allowed = match caller::resolve(&self.member, &self.credentials).await {
            Ok(caller) => self
                .member
                .machine
                .auth
                .check_keys(&caller, Access::Read, &create.key, &create.range_end)
                .map_err(ServerError::from),
            Err(refused) => Err(refused),
        };
        if let Err(refused) = allowed {
            let status = Status::from(refused);
            if self.member.security.audit.is_on() {
                crate::audit::refused(
                    &self.member,
                    &self.credentials.user_hint(&self.member),
                    self.credentials.remote(),
                    "/etcdserverpb.Watch/Watch",
                    status.message(),
                );
            }
            return self.send(refuse(status.message())).await;
        }
        let is_range_to_end = create.range_end == [0];
        if !create.range_end.is_empty() && !is_range_to_end && create.key >= create.range_end {
            return self.send(refuse(EMPTY_WATCHER_RANGE)).await;
        }
        if self.options.len() >= WATCHERS_PER_STREAM_MAX {
            return self.send(refuse(TOO_MANY_WATCHERS)).await;
        }
        let watch_id = if create.watch_id == 0 {
            while self.options.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            let id = self.next_auto_id;
            self.next_auto_id += 1;
            id
        } else {
            create.watch_id
        };
        if self.options.contains_key(&watch_id) {
            return self.send(refuse(DUPLICATE_WATCH_ID)).await;
        }
        let request = HubRequest {
            key: create.key,
            range_end: create.range_end,
            // "Now" means right after the revision in the created response, as in etcd, so the
            // client's view and the watcher's start agree whatever is applied meanwhile.
            start_revision: if create.start_revision <= 0 {
                revision + 1
            } else {
                create.start_revision
            },
            no_put: create.filters.contains(&(FilterType::Noput as i32)),
            no_delete: create.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: create.progress_notify,
        };
        let hub_id = self.next_hub_id;
        self.next_hub_id += 1;
        self.options.insert(
            watch_id,
            WatcherOptions {
                prev_kv: create.prev_kv,
                fragment: create.fragment,
                hub_id,
            },
        );
        self.by_hub_id.insert(hub_id, watch_id);
        // The created response goes out before the hub can hand this watcher anything: notices
        // are read by this same task, after this send.
        let created = WatchResponse {
            header: self.header(revision),
            watch_id,
            created: true,
            ..WatchResponse::default()
        };
        if !self.send(created).await {
            return false;
        }
        let registered =
            self.member
                .machine
                .hub
                .watch(self.stream, hub_id, request, self.sink.clone());
        assert!(registered, "hub ids are never reused on a stream");
        true
    }

    async fn on_notice(&mut self, notice: WatchNotice) -> bool {
        // Out of the notice queue; the responses made of it count in the output queue.
        self.notice_budget.release(notice_bytes(&notice));
        // Notices name hub ids; the client knows its own watch ids. Notices queued for a watcher
        // that has since been canceled match no live hub id and are dropped.
        let hub_id = match &notice {
            WatchNotice::Events { watch_id, .. }
            | WatchNotice::Progress { watch_id, .. }
            | WatchNotice::Compacted { watch_id, .. } => *watch_id,
        };
        let watch_id = if hub_id == -1 {
            -1
        } else {
            match self.by_hub_id.get(&hub_id) {
                Some(&watch_id) => watch_id,
                None => return true,
            }
        };
        match notice {
            WatchNotice::Events {
                revision, events, ..
            } => {
                // The hub shares one copy of a revision's events among its watchers; the
                // response owns its own.
                let mut events = events.to_vec();
                let options = self.options.get(&watch_id).copied().unwrap_or_default();
                if options.prev_kv {
                    self.attach_prev_kvs(&mut events);
                }
                // A catch-up can carry many revisions: one response per batch of whole
                // revisions, so no response is larger than a client takes (4 MiB by default in
                // most) unless one revision is.
                for events in by_whole_revisions(events, RESPONSE_BYTES_TARGET) {
                    let response = WatchResponse {
                        header: self.header(revision),
                        watch_id,
                        events,
                        ..WatchResponse::default()
                    };
                    let parts = if options.fragment {
                        fragments(response, self.member.config.request_bytes_max)
                    } else {
                        vec![response]
                    };
                    for part in parts {
                        if !self.send(part).await {
                            return false;
                        }
                    }
                }
                true
            }
            WatchNotice::Compacted {
                compact_revision,
                revision,
                ..
            } => {
                self.options.remove(&watch_id);
                self.by_hub_id.remove(&hub_id);
                let response = WatchResponse {
                    header: self.header(revision),
                    watch_id,
                    compact_revision,
                    canceled: true,
                    ..WatchResponse::default()
                };
                self.send(response).await
            }
            WatchNotice::Progress { revision, .. } => {
                let response = WatchResponse {
                    header: self.header(revision),
                    watch_id,
                    ..WatchResponse::default()
                };
                self.send(response).await
            }
        }
    }

    /// Adds the value each key had before the event (not for creations), as etcd does: read at
    /// the revision before, empty when that history is compacted.
    fn attach_prev_kvs(&self, events: &mut [Event]) {
        for event in events {
            let Some(kv) = &event.kv else { continue };
            let is_create =
                event.r#type == synod_api::mvccpb::event::EventType::Put as i32 && kv.version == 1;
            if is_create {
                continue;
            }
            let options = RangeOptions {
                revision: kv.mod_revision - 1,
                ..RangeOptions::default()
            };
            if let Ok(mut found) = self.member.machine.store.range(&kv.key, &[], options) {
                event.prev_kv = found.kvs.pop();
            }
        }
    }
}

/// Splits a response whose size reaches `size_max` into fragments (all but the last marked
/// `fragment`), never splitting below one event (etcd `sendFragments`).
fn fragments(response: WatchResponse, size_max: usize) -> Vec<WatchResponse> {
    if response.encoded_len() < size_max || response.events.len() < 2 {
        return vec![response];
    }
    let mut parts = Vec::new();
    let template = WatchResponse {
        events: Vec::new(),
        fragment: true,
        ..response.clone()
    };
    let mut current = template.clone();
    for event in response.events {
        current.events.push(event);
        if current.events.len() > 1 && current.encoded_len() >= size_max {
            let overflow = current.events.pop().expect("pushed above");
            parts.push(std::mem::replace(&mut current, template.clone()));
            current.events.push(overflow);
        }
    }
    current.fragment = false;
    parts.push(current);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_api::mvccpb::KeyValue;

    #[test]
    fn fragments_split_large_responses_and_mark_all_but_the_last() {
        let event = |i: u8| Event {
            kv: Some(KeyValue {
                key: vec![i],
                value: vec![0; 100],
                ..KeyValue::default()
            }),
            ..Event::default()
        };
        let response = WatchResponse {
            watch_id: 3,
            events: (0..10).map(event).collect(),
            ..WatchResponse::default()
        };
        let parts = fragments(response.clone(), 350);
        assert!(parts.len() > 1);
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts.last().expect("parts").fragment);
        let events: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(events, response.events);
        assert_eq!(fragments(response.clone(), 1 << 20), vec![response]);
    }

    fn event_at(revision: i64, bytes: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: b"k".to_vec(),
                value: vec![0; bytes],
                mod_revision: revision,
                ..KeyValue::default()
            }),
            ..Event::default()
        }
    }

    #[test]
    fn batches_end_between_revisions_only() {
        let events = vec![
            event_at(1, 600),
            event_at(1, 600),
            event_at(2, 100),
            event_at(3, 900),
            event_at(4, 10),
        ];
        let batches = by_whole_revisions(events, 1000);
        let revisions: Vec<Vec<i64>> = batches
            .iter()
            .map(|b| {
                b.iter()
                    .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
                    .collect()
            })
            .collect();
        assert_eq!(revisions, vec![vec![1, 1], vec![2, 3], vec![4]]);
        assert_eq!(by_whole_revisions(Vec::new(), 1000).len(), 1);
    }

    #[test]
    fn a_budget_takes_one_item_of_any_size() {
        let budget = StreamBudget::new(100);
        assert!(budget.try_take(500), "an empty budget takes anything");
        assert!(!budget.try_take(1));
        budget.release(500);
        assert!(budget.try_take(60));
        assert!(budget.try_take(40));
        assert!(!budget.try_take(1));
        assert!(!budget.has_room());
    }
}
