//! Detaches uprobes off the control thread.
//!
//! Removing a uprobe waits for RCU grace periods in the kernel (tens of milliseconds each on
//! a small VM), so a process's eight probes took most of a second to detach: long enough for
//! the control thread to miss the next program's start. Links are closed here instead, many
//! at once, so that the closes share their grace periods.

use std::{
    sync::mpsc::{Receiver, Sender, channel},
    thread,
};

use tracing::warn;

/// Something whose drop detaches a probe: an aya link, a perf event fd.
type Item = Box<dyn Send>;

/// At most this many links are closed at the same time.
const PARALLEL: usize = 16;

/// Sends links to the thread that closes them.
#[derive(Debug)]
pub struct Reaper {
    links: Sender<Vec<Item>>,
}

impl Reaper {
    /// Starts the closing thread; it ends once the `Reaper` is dropped and all is closed.
    #[must_use]
    pub fn start() -> Self {
        let (links, rx) = channel();
        if let Err(e) = thread::Builder::new()
            .name("apimon-detach".into())
            .spawn(move || run(&rx))
        {
            // Links sent now are dropped with the channel, on the sender's thread: slower,
            // not wrong.
            warn!("cannot start the detach thread: {e}");
        }
        Self { links }
    }

    /// Detaches `links` soon, without waiting.
    pub fn detach<T: Send + 'static>(&self, links: Vec<T>) {
        if links.is_empty() {
            return;
        }
        let items = links.into_iter().map(|l| Box::new(l) as Item).collect();
        // If the thread is gone the links come back in the error and are dropped here.
        let _ = self.links.send(items);
    }
}

fn run(rx: &Receiver<Vec<Item>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = first;
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        let per_thread = batch.len().div_ceil(PARALLEL).max(1);
        thread::scope(|s| {
            let mut rest = batch;
            while !rest.is_empty() {
                let chunk: Vec<Item> = rest.drain(..per_thread.min(rest.len())).collect();
                s.spawn(move || drop(chunk));
            }
        });
    }
}
