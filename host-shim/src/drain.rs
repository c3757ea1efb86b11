//! Graceful shutdown: one trigger, many watchers. Every listener, connection
//! and tunnel holds a watcher; draining tells them all to stop taking new work
//! and waits until every watcher is gone. At the deadline the trigger forces the
//! rest closed (as ztunnel's force shutdown), so every tunnel still records its close.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// The stages of a shim's life, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Running,
    Draining,
    Forced,
}

pub fn channel() -> (Trigger, Watcher) {
    let (signal_tx, signal_rx) = watch::channel(Stage::Running);
    let (done_tx, done_rx) = mpsc::channel(1);
    (Trigger { signal: signal_tx, done: done_rx }, Watcher { signal: signal_rx, _alive: done_tx })
}

pub struct Trigger {
    signal: watch::Sender<Stage>,
    done: mpsc::Receiver<()>,
}

impl Trigger {
    /// Starts the drain and waits for every watcher to be dropped. Returns false
    /// if the deadline passed first; what was still open is then told to close now.
    pub async fn drain(mut self, deadline: Duration) -> bool {
        let _ = self.signal.send(Stage::Draining);
        // recv() yields None once the last watcher (and its sender) is gone.
        let finished = tokio::time::timeout(deadline, self.done.recv()).await.is_ok();
        if !finished {
            let _ = self.signal.send(Stage::Forced);
        }
        finished
    }
}

#[derive(Clone)]
pub struct Watcher {
    signal: watch::Receiver<Stage>,
    _alive: mpsc::Sender<()>,
}

impl Watcher {
    /// Resolves once draining has started (or the trigger was dropped).
    pub async fn draining(&self) {
        self.reached(Stage::Draining).await;
    }

    /// Resolves once the drain deadline passed: close whatever is still open.
    /// A dropped trigger (a shim dropped without `shutdown`) only drains.
    pub async fn forced(&self) {
        let mut signal = self.signal.clone();
        if signal.wait_for(|stage| *stage >= Stage::Forced).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    async fn reached(&self, stage: Stage) {
        let mut signal = self.signal.clone();
        let _ = signal.wait_for(|now| *now >= stage).await;
    }
}
