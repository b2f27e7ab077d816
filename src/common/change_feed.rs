//! A value that changes over time (an agent's operation, a coordinator's task) and the
//! watchers that follow it: the latest state for whoever asks, and every change, in order,
//! for every watcher, through one bounded buffer. A watcher that falls further behind than
//! the buffer is told so, with how far, instead of silently missing changes.
use std::sync::{Mutex, MutexGuard};

use futures::Stream;
use tokio::sync::{
    broadcast::{self, error::RecvError},
    watch,
};

/// A watcher that did not keep up: the changes it missed and what the buffer holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this watcher fell {skipped} changes behind (the buffer holds {buffer}); \
     watch again to continue from the current state"
)]
pub struct FellBehind {
    pub skipped: u64,
    pub buffer: usize,
}

pub struct Feed<T> {
    latest: watch::Sender<T>,
    /// The changes not yet read by every watcher; `None` once the value is final. The
    /// mutex orders a change against a new watcher's first look, so each watcher sees
    /// every change exactly once: in its first value or from the buffer.
    changes: Mutex<Option<broadcast::Sender<T>>>,
    buffer: usize,
}

impl<T: Clone + Send + Sync + 'static> Feed<T> {
    /// A feed starting at `initial`, where a watcher may fall `buffer` changes behind.
    pub fn new(initial: T, buffer: usize) -> Self {
        let (changes, _) = broadcast::channel(buffer.max(1));
        Self {
            latest: watch::channel(initial).0,
            changes: Mutex::new(Some(changes)),
            buffer: buffer.max(1),
        }
    }

    fn changes(&self) -> MutexGuard<'_, Option<broadcast::Sender<T>>> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest value.
    pub fn latest(&self) -> T {
        self.latest.borrow().clone()
    }

    /// The latest value, borrowed (hold it briefly: changes wait for it).
    pub fn borrow(&self) -> watch::Ref<'_, T> {
        self.latest.borrow()
    }

    /// The latest value as it changes, for whoever only needs the newest (waiting for an
    /// operation to finish); it may skip intermediate states.
    pub fn subscribe_latest(&self) -> watch::Receiver<T> {
        self.latest.subscribe()
    }

    /// Changes the value and hands the new one to every watcher.
    pub fn modify(&self, change: impl FnOnce(&mut T)) {
        let changes = self.changes();
        self.latest.send_modify(change);
        if let Some(tx) = changes.as_ref() {
            // An error only says that nobody watches right now.
            let _ = tx.send(self.latest.borrow().clone());
        }
    }

    /// Replaces the value (see [`Feed::modify`]).
    pub fn replace(&self, value: T) {
        self.modify(|v| *v = value);
    }

    /// The value is final: watchers read what is buffered and end; the buffer goes with
    /// the last of them.
    pub fn close(&self) {
        self.changes().take();
    }

    /// How many watchers still follow the changes (0 once the value is final).
    pub fn watchers(&self) -> usize {
        self.changes()
            .as_ref()
            .map_or(0, broadcast::Sender::receiver_count)
    }

    /// A watcher: the value now, then every change from here on.
    pub fn watch(&self) -> Watcher<T> {
        let changes = self.changes();
        Watcher {
            first: Some(self.latest.borrow().clone()),
            changes: changes.as_ref().map(broadcast::Sender::subscribe),
            buffer: self.buffer,
        }
    }
}

pub struct Watcher<T> {
    first: Option<T>,
    changes: Option<broadcast::Receiver<T>>,
    buffer: usize,
}

impl<T: Clone + Send + 'static> Watcher<T> {
    /// A watcher of a value that will not change any more.
    pub fn finished(value: T) -> Self {
        Self {
            first: Some(value),
            changes: None,
            buffer: 0,
        }
    }

    /// The value when watching began, then each change in order; `None` once the feed is
    /// closed and everything was read; an error (and nothing after it) for a watcher that
    /// fell behind.
    pub async fn next(&mut self) -> Option<Result<T, FellBehind>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        let changes = self.changes.as_mut()?;
        match changes.recv().await {
            Ok(value) => Some(Ok(value)),
            Err(RecvError::Closed) => {
                self.changes = None;
                None
            }
            Err(RecvError::Lagged(skipped)) => {
                self.changes = None;
                Some(Err(FellBehind {
                    skipped,
                    buffer: self.buffer,
                }))
            }
        }
    }

    /// The watcher as a stream that ends after the first value `done` holds for.
    pub fn until(self, done: fn(&T) -> bool) -> impl Stream<Item = Result<T, FellBehind>> {
        futures::stream::unfold(Some(self), move |watcher| async move {
            let mut watcher = watcher?;
            match watcher.next().await? {
                Ok(value) => {
                    let more = !done(&value);
                    Some((Ok(value), more.then_some(watcher)))
                }
                Err(behind) => Some((Err(behind), None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_slow_watcher_gets_every_change_in_order() {
        let feed = Feed::new(0u32, 8);
        let early = feed.watch();
        for i in 1..=5 {
            feed.replace(i);
        }
        let late = feed.watch();
        feed.replace(6);
        feed.close();
        let early: Vec<_> = early.until(|_| false).map(Result::unwrap).collect().await;
        assert_eq!(early, [0, 1, 2, 3, 4, 5, 6]);
        let late: Vec<_> = late.until(|_| false).map(Result::unwrap).collect().await;
        assert_eq!(late, [5, 6], "its first look, then what changed after it");
    }

    #[tokio::test]
    async fn a_watcher_further_behind_than_the_buffer_is_told_how_far() {
        let feed = Feed::new(0u32, 4);
        let mut watcher = feed.watch();
        assert_eq!(watcher.next().await, Some(Ok(0)));
        for i in 1..=10 {
            feed.replace(i);
        }
        assert_eq!(
            watcher.next().await,
            Some(Err(FellBehind {
                skipped: 6,
                buffer: 4
            }))
        );
        assert_eq!(watcher.next().await, None, "nothing after the error");
        // A fresh watcher starts from the current state.
        assert_eq!(feed.watch().next().await, Some(Ok(10)));
    }

    #[tokio::test]
    async fn the_stream_ends_with_the_final_value() {
        let feed = Feed::new(0u32, 8);
        let watcher = feed.watch();
        for i in 1..=3 {
            feed.replace(i);
        }
        let seen: Vec<_> = watcher
            .until(|v| *v == 2)
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(seen, [0, 1, 2]);
        let done: Vec<_> = Watcher::finished(9u32)
            .until(|_| true)
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(done, [9]);
    }
}
