//! Catch-up subscriptions for stores that publish their head position on a
//! `watch` channel: read pages of history, then wait for the head to move.
//!
//! The head is marked seen *before* each read, so an append that lands after
//! the read wakes the loop: no event falls between history and live. The
//! loop also re-reads every [`LIVE_POLL_INTERVAL`], because another process
//! appending to the same store file does not move this process's head.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{
    Direction, EventStore, ReadFrom, RecordedEvent, StoreError, StreamFilter, Subscription,
    SUBSCRIPTION_BUFFER_EVENTS, SUBSCRIPTION_PAGE_EVENTS,
};

/// How often a caught-up subscription looks for events appended by other
/// processes.
pub const LIVE_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Waits until the head moves or the poll interval passes; false once the
/// store is closed.
async fn wait_for_more(head: &mut watch::Receiver<u64>) -> bool {
    match tokio::time::timeout(LIVE_POLL_INTERVAL, head.changed()).await {
        Ok(Ok(())) | Err(_) => true,
        Ok(Err(_)) => false,
    }
}

/// The catch-up loop: reads pages with `read_page(next)` from `first`, sends
/// every event, moves `next` past each event with `after`, and waits for the
/// head to move once a page comes back short.
fn catch_up<F, Fut>(
    mut head: watch::Receiver<u64>,
    first: u64,
    mut read_page: F,
    after: fn(&RecordedEvent) -> u64,
) -> Subscription
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send,
{
    let (sender, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER_EVENTS);
    tokio::spawn(async move {
        let mut next = first;
        loop {
            head.borrow_and_update();
            let page = match read_page(next).await {
                Ok(page) => page,
                Err(err) => {
                    let _ = sender.send(Err(err)).await;
                    return;
                }
            };
            let full = page.len() == SUBSCRIPTION_PAGE_EVENTS;
            for event in page {
                next = after(&event);
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if !full && !wait_for_more(&mut head).await {
                return;
            }
        }
    });
    Subscription::new(receiver)
}

/// Subscribes to every matching stream from `from_position`.
pub(crate) fn subscribe_all<S: EventStore>(
    store: S,
    head: watch::Receiver<u64>,
    from_position: u64,
    filter: StreamFilter,
) -> Subscription {
    let read_page = move |next: u64| {
        let store = store.clone();
        let filter = filter.clone();
        async move {
            store
                .read_all(next, SUBSCRIPTION_PAGE_EVENTS, &filter)
                .await
        }
    };
    catch_up(head, from_position.max(1), read_page, |e| e.position + 1)
}

/// Subscribes to one stream from `from_revision`.
pub(crate) fn subscribe_stream<S: EventStore>(
    store: S,
    head: watch::Receiver<u64>,
    stream: String,
    from_revision: u64,
) -> Subscription {
    let read_page = move |next: u64| {
        let store = store.clone();
        let stream = stream.clone();
        async move {
            store
                .read_stream(
                    &stream,
                    ReadFrom::Revision(next),
                    Direction::Forwards,
                    SUBSCRIPTION_PAGE_EVENTS,
                )
                .await
        }
    };
    catch_up(head, from_revision, read_page, |e| e.revision + 1)
}
