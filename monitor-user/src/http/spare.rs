//! Buffers of messages already handled, filled again by the next messages parsed on the same
//! thread. A head is a dozen strings and a body one more buffer: allocating them for every
//! message was a third of the agent's allocations. The pipeline hands exchanges back with
//! [`recycle`] once they are analysed; elsewhere (offline analysis, tests) nothing is handed
//! back and parsing allocates as before. Bounded in count and in what each message keeps.

use std::cell::RefCell;

use super::{Body, Direction, Exchange, Head, Header, Message, StartLine, parser::Partial};

/// Messages kept per direction, and boxes of each kind: enough for the requests in flight
/// between two drains.
const MAX_SPARE: usize = 32;
/// Headers kept beyond those of the kept messages (a head with fewer headers than the one
/// whose buffers it reuses leaves some).
const MAX_LOOSE_HEADERS: usize = 64;
/// A message holding more buffer than this is freed, not kept.
const MAX_KEPT_BYTES: usize = 16 * 1024;

struct Spares {
    requests: Vec<Message>,
    responses: Vec<Message>,
    #[expect(
        clippy::vec_box,
        reason = "the boxes are what is reused, as `SessionEvent`'s"
    )]
    exchanges: Vec<Box<Exchange>>,
    headers: Vec<Header>,
    /// Boxes of messages in progress that ended, for the next message's body.
    #[expect(
        clippy::vec_box,
        reason = "the boxes are what is reused, as the parser's body state's"
    )]
    partials: Vec<Box<Partial>>,
}

thread_local! {
    static SPARES: RefCell<Spares> = const {
        RefCell::new(Spares {
            requests: Vec::new(),
            responses: Vec::new(),
            exchanges: Vec::new(),
            headers: Vec::new(),
            partials: Vec::new(),
        })
    };
}

/// A head that owns no memory, to leave in place of one moved out.
pub(super) const EMPTY_HEAD: Head = Head {
    start: StartLine::Request {
        method: String::new(),
        target: String::new(),
    },
    version: 1,
    headers: Vec::new(),
};

fn empty(direction: Direction) -> Message {
    let start = match direction {
        Direction::Requests => StartLine::Request {
            method: String::new(),
            target: String::new(),
        },
        Direction::Responses => StartLine::Response {
            status: 0,
            reason: String::new(),
        },
    };
    Message {
        head: Head {
            start,
            ..EMPTY_HEAD
        },
        body: Body::default(),
        trailers: Vec::new(),
        head_bytes: 0,
        first_ts: 0,
        last_ts: 0,
        complete: false,
    }
}

/// A message to parse into: its body and trailers are empty, its head's buffers are to be
/// overwritten.
pub(super) fn message(direction: Direction) -> Message {
    SPARES
        .with_borrow_mut(|s| match direction {
            Direction::Requests => s.requests.pop(),
            Direction::Responses => s.responses.pop(),
        })
        .unwrap_or_else(|| empty(direction))
}

/// Makes `headers` `n` long, keeping the buffers of those beyond `n` for other heads and
/// taking kept ones before allocating; the headers' contents are to be overwritten.
pub(super) fn resize_headers(headers: &mut Vec<Header>, n: usize) {
    if headers.len() == n {
        return;
    }
    SPARES.with_borrow_mut(|s| {
        while headers.len() > n {
            if let Some(h) = headers.pop()
                && s.headers.len() < MAX_LOOSE_HEADERS
                && h.name.capacity() + h.value.capacity() <= 1024
            {
                s.headers.push(h);
            }
        }
        while headers.len() < n {
            headers.push(s.headers.pop().unwrap_or(Header {
                name: String::new(),
                value: String::new(),
            }));
        }
    });
}

/// An exchange in a box that held one before.
pub(super) fn exchange(request: Message, response: Option<Message>) -> Box<Exchange> {
    match SPARES.with_borrow_mut(|s| s.exchanges.pop()) {
        Some(mut x) => {
            x.request = request;
            x.response = response;
            x
        }
        None => Box::new(Exchange { request, response }),
    }
}

/// A message in progress in a box that held one before.
pub(super) fn partial(partial: Partial) -> Box<Partial> {
    match SPARES.with_borrow_mut(|s| s.partials.pop()) {
        Some(mut b) => {
            *b = partial;
            b
        }
        None => Box::new(partial),
    }
}

/// Hands back the box of a message in progress that ended (its contents moved out).
pub(super) fn keep_partial(b: Box<Partial>) {
    SPARES.with_borrow_mut(|s| {
        if s.partials.len() < MAX_SPARE {
            s.partials.push(b);
        }
    });
}

fn kept_bytes(m: &Message) -> usize {
    let start = match &m.head.start {
        StartLine::Request { method, target } => method.capacity() + target.capacity(),
        StartLine::Response { reason, .. } => reason.capacity(),
    };
    let headers: usize = m
        .head
        .headers
        .iter()
        .chain(&m.trailers)
        .map(|h| h.name.capacity() + h.value.capacity())
        .sum();
    start + headers + m.body.data.capacity()
}

fn keep(mut m: Message) {
    if kept_bytes(&m) > MAX_KEPT_BYTES {
        return;
    }
    m.body.data.clear();
    m.body.size = 0;
    m.body.truncated = false;
    m.body.shed = false;
    m.trailers.clear();
    SPARES.with_borrow_mut(|s| {
        let pool = match m.head.start {
            StartLine::Request { .. } => &mut s.requests,
            StartLine::Response { .. } => &mut s.responses,
        };
        if pool.len() < MAX_SPARE {
            pool.push(m);
        }
    });
}

/// Hands back an exchange that is no longer needed: the next messages parsed on this thread
/// reuse its buffers instead of allocating.
pub fn recycle(mut x: Box<Exchange>) {
    let request = std::mem::replace(&mut x.request, empty(Direction::Requests));
    let response = x.response.take();
    keep(request);
    if let Some(r) = response {
        keep(r);
    }
    SPARES.with_borrow_mut(|s| {
        if s.exchanges.len() < MAX_SPARE {
            s.exchanges.push(x);
        }
    });
}
