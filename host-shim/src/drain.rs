//! Graceful shutdown: one trigger, many watchers. Every listener, connection
//! and tunnel holds a watcher; draining tells them all to stop taking new work
//! and waits until every watcher is gone (or a deadline passes).

use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub fn channel() -> (Trigger, Watcher) {
    let (signal_tx, signal_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::channel(1);
    (Trigger { signal: signal_tx, done: done_rx }, Watcher { signal: signal_rx, _alive: done_tx })
}

pub struct Trigger {
    signal: watch::Sender<bool>,
    done: mpsc::Receiver<()>,
}

impl Trigger {
    /// Starts the drain and waits for every watcher to be dropped. Returns false
    /// if the deadline passed first.
    pub async fn drain(mut self, deadline: Duration) -> bool {
        let _ = self.signal.send(true);
        // recv() yields None once the last watcher (and its sender) is gone.
        tokio::time::timeout(deadline, self.done.recv()).await.is_ok()
    }
}

#[derive(Clone)]
pub struct Watcher {
    signal: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Watcher {
    /// Resolves once draining has started (or the trigger was dropped).
    pub async fn draining(&self) {
        let mut signal = self.signal.clone();
        let _ = signal.wait_for(|draining| *draining).await;
    }
}
