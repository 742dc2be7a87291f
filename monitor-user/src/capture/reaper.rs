//! Detaches uprobes off the control thread.
//!
//! Taking a process that still runs out of a uprobe's filter waits for an RCU grace period in
//! the kernel (tens of milliseconds on a small VM), as does removing an aya uprobe: time in
//! which the control thread would miss the next program's start. Probes are dropped here.

use std::{
    sync::mpsc::{Sender, channel},
    thread,
};

use tracing::warn;

/// Probes whose drop detaches them: aya links, perf event fds.
type Batch = Box<dyn Send>;

/// Sends probes to the thread that drops them.
#[derive(Debug)]
pub struct Reaper {
    links: Sender<Batch>,
}

impl Reaper {
    /// Starts the dropping thread; it ends once the `Reaper` is dropped and all is dropped.
    #[must_use]
    pub fn start() -> Self {
        let (links, rx) = channel::<Batch>();
        if let Err(e) = thread::Builder::new()
            .name("apimon-detach".into())
            .spawn(move || rx.into_iter().for_each(drop))
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
        // If the thread is gone the links come back in the error and are dropped here.
        let _ = self.links.send(Box::new(links));
    }
}
