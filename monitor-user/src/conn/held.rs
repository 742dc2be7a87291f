//! The calls of a connection whose peer userspace is looking up (see
//! `ConnEvent::Resolve`): held until the answer, so that they carry the peer (a server that
//! accepts without the peer's address has its first calls parsed before the answer comes).

use std::sync::Arc;

use super::{ConnEvent, ConnInfo};
use crate::http::Exchange;

/// Calls held at most; beyond, they all go on without a peer, in order.
pub(super) const MAX_HELD: usize = 64;
/// Longest calls are held for an answer (ns of capture time): it takes a few syscalls,
/// unless the control thread is stuck or gone.
pub(super) const MAX_HOLD_NS: u64 = 2_000_000_000;

/// Calls waiting for their connection's peer.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// Since when (capture time, ns) the connection waits, if it does.
    since: Option<u64>,
    #[expect(
        clippy::vec_box,
        reason = "they arrive and leave boxed: no move out and back"
    )]
    calls: Vec<Box<Exchange>>,
}

impl Held {
    /// Calls of a connection waiting for its peer since `ts`, or not waiting.
    pub(super) fn new(waiting_since: Option<u64>) -> Self {
        Self {
            since: waiting_since,
            calls: Vec::new(),
        }
    }

    /// Hands `x` on, or keeps it while waiting.
    pub(super) fn pass(
        &mut self,
        info: &Arc<ConnInfo>,
        x: Box<Exchange>,
        out: &mut Vec<ConnEvent>,
    ) {
        if self.since.is_some() {
            if self.calls.len() < MAX_HELD {
                self.calls.push(x);
                return;
            }
            // Waited long enough: on without a peer, in order.
            self.release(info, out);
        }
        out.push(ConnEvent::Exchange(Arc::clone(info), x));
    }

    /// Hands on every call held, with what `info` says now, and waits no more.
    pub(super) fn release(&mut self, info: &Arc<ConnInfo>, out: &mut Vec<ConnEvent>) {
        self.since = None;
        for x in self.calls.drain(..) {
            out.push(ConnEvent::Exchange(Arc::clone(info), x));
        }
    }

    /// Whether it has waited longer than [`MAX_HOLD_NS`] at capture time `now`.
    pub(super) fn overdue(&self, now: u64) -> bool {
        self.since
            .is_some_and(|since| now.saturating_sub(since) > MAX_HOLD_NS)
    }

    /// Calls held.
    pub(super) fn len(&self) -> usize {
        self.calls.len()
    }

    /// Approximate bytes the calls held take.
    pub(super) fn memory(&self) -> usize {
        self.calls
            .iter()
            .map(|x| {
                let response = x.response.as_ref().map_or(0, |r| r.body.data.capacity());
                512 + x.request.body.data.capacity() + response
            })
            .sum()
    }
}
