//! Catch-up subscriptions for stores that publish their head position on a
//! `watch` channel: read pages of history, then wait for the head to move.
//!
//! The head is marked seen *before* each read, so an append that lands after
//! the read wakes the loop: no event falls between history and live. The
//! loop also re-reads every [`LIVE_POLL_INTERVAL`], because another process
//! appending to the same store file does not move this process's head.

use tokio::sync::{mpsc, watch};

use std::time::Duration;

use super::{
    Direction, EventStore, ReadFrom, StreamFilter, Subscription, SUBSCRIPTION_BUFFER_EVENTS,
    SUBSCRIPTION_PAGE_EVENTS,
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

/// Subscribes to every matching stream from `from_position`.
pub(crate) fn subscribe_all<S: EventStore>(
    store: S,
    mut head: watch::Receiver<u64>,
    from_position: u64,
    filter: StreamFilter,
) -> Subscription {
    let (sender, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER_EVENTS);
    tokio::spawn(async move {
        let mut next = from_position.max(1);
        loop {
            head.borrow_and_update();
            let page = match store
                .read_all(next, SUBSCRIPTION_PAGE_EVENTS, &filter)
                .await
            {
                Ok(page) => page,
                Err(err) => {
                    let _ = sender.send(Err(err)).await;
                    return;
                }
            };
            let full = page.len() == SUBSCRIPTION_PAGE_EVENTS;
            for event in page {
                next = event.position + 1;
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

/// Subscribes to one stream from `from_revision`.
pub(crate) fn subscribe_stream<S: EventStore>(
    store: S,
    mut head: watch::Receiver<u64>,
    stream: String,
    from_revision: u64,
) -> Subscription {
    let (sender, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER_EVENTS);
    tokio::spawn(async move {
        let mut next = from_revision;
        loop {
            head.borrow_and_update();
            let page = match store
                .read_stream(
                    &stream,
                    ReadFrom::Revision(next),
                    Direction::Forwards,
                    SUBSCRIPTION_PAGE_EVENTS,
                )
                .await
            {
                Ok(page) => page,
                Err(err) => {
                    let _ = sender.send(Err(err)).await;
                    return;
                }
            };
            let full = page.len() == SUBSCRIPTION_PAGE_EVENTS;
            for event in page {
                next = event.revision + 1;
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
