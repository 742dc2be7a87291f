//! Pairs the requests and responses of one connection into exchanges.

use std::collections::VecDeque;

use super::{
    Head, Message,
    parser::{Answering, Direction, Limits, ParseError, Sink, StreamParser},
    spare,
};

/// Requests awaiting a response at most (pipelining depth); older ones are given up.
const MAX_PENDING: usize = 256;

/// A request and the response that answered it, if one came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub request: Message,
    pub response: Option<Message>,
}

/// What a [`Session`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// A request with its response, or one whose response will not come (closed, timed out).
    Exchange(Box<Exchange>),
    /// Bytes that could not be parsed in one direction.
    Error(Direction, ParseError),
    /// A response that no request was waiting for (joined mid-stream, or lost bytes).
    UnmatchedResponse,
    /// The connection switched protocol (101, CONNECT tunnel): no more HTTP/1.x on it.
    Upgraded,
}

#[derive(Debug)]
struct Pending {
    /// What the response must know of the request.
    answering: Answering,
    /// A copy of the head, made only if the request may be reported before its message
    /// ends (see [`Session::keep_unfinished_head`]); the message has the head.
    head: Option<Head>,
    started_ts: u64,
    message: Option<Message>,
}

#[derive(Debug, Default)]
struct Pairing {
    pending: VecDeque<Pending>,
    events: Vec<SessionEvent>,
    upgraded: bool,
}

impl Pending {
    /// The request as far as it got: whole if it ended, else its head alone.
    fn into_request(self) -> Message {
        self.message.unwrap_or_else(|| Message {
            head: self.head.unwrap_or(spare::EMPTY_HEAD),
            body: super::Body::default(),
            trailers: Vec::new(),
            head_bytes: 0,
            first_ts: self.started_ts,
            last_ts: self.started_ts,
            complete: false,
        })
    }
}

impl Pairing {
    fn give_up(&mut self, pending: Pending) {
        let request = pending.into_request();
        self.events
            .push(SessionEvent::Exchange(spare::exchange(request, None)));
    }
}

impl Sink for Pairing {
    fn request_started(&mut self, head: &Head, ts: u64) {
        if self.pending.len() >= MAX_PENDING
            && let Some(oldest) = self.pending.pop_front()
        {
            self.give_up(oldest);
        }
        let method = head.method();
        self.pending.push_back(Pending {
            answering: Answering {
                head: method.is_some_and(|m| m.eq_ignore_ascii_case("HEAD")),
                connect: method.is_some_and(|m| m.eq_ignore_ascii_case("CONNECT")),
            },
            head: None,
            started_ts: ts,
            message: None,
        });
    }

    fn answering(&mut self) -> Answering {
        self.pending
            .front()
            .map_or_else(Answering::default, |p| p.answering)
    }

    fn message(&mut self, direction: Direction, message: Message) {
        match direction {
            Direction::Requests => {
                if let Some(p) = self.pending.iter_mut().find(|p| p.message.is_none()) {
                    p.message = Some(message);
                }
            }
            Direction::Responses => {
                let status = message.head.status().unwrap_or(0);
                // 100 Continue, 103 Early Hints: interim, the final response follows.
                if (100..200).contains(&status) && status != 101 {
                    return;
                }
                let Some(pending) = self.pending.pop_front() else {
                    self.events.push(SessionEvent::UnmatchedResponse);
                    return;
                };
                let connect = pending.answering.connect;
                if status == 101 || (connect && (200..300).contains(&status)) {
                    self.upgraded = true;
                }
                let request = pending.into_request();
                self.events.push(SessionEvent::Exchange(spare::exchange(
                    request,
                    Some(message),
                )));
                if self.upgraded {
                    self.events.push(SessionEvent::Upgraded);
                }
            }
        }
    }

    fn error(&mut self, direction: Direction, error: ParseError) {
        self.events.push(SessionEvent::Error(direction, error));
    }
}

/// Both directions of one HTTP/1.x connection.
#[derive(Debug)]
pub struct Session {
    requests: StreamParser,
    responses: StreamParser,
    pairing: Pairing,
}

impl Session {
    /// A session; `fresh` streams are seen from their first byte, others resync first.
    #[must_use]
    pub fn new(limits: Limits, fresh_requests: bool, fresh_responses: bool) -> Self {
        Self {
            requests: StreamParser::new(Direction::Requests, limits, fresh_requests),
            responses: StreamParser::new(Direction::Responses, limits, fresh_responses),
            pairing: Pairing::default(),
        }
    }

    /// Keeps no body bytes from now on, sizes still counted (true), or keeps them again.
    pub fn set_shed_bodies(&mut self, shed: bool) {
        self.requests.set_shed_bodies(shed);
        self.responses.set_shed_bodies(shed);
    }

    /// Bytes of `direction` that arrived at `ts` (capture clock, ns).
    pub fn push(&mut self, direction: Direction, data: &[u8], ts: u64) {
        if self.pairing.upgraded {
            return;
        }
        match direction {
            Direction::Requests => self.requests.push(data, ts, &mut self.pairing),
            Direction::Responses => {
                self.keep_unfinished_head();
                self.responses.push(data, ts, &mut self.pairing);
            }
        }
    }

    /// Before anything that may report a request whose body is still arriving (its response
    /// came first, it timed out, the connection closed): copy its head, which until then only
    /// the requests parser holds. Requests are parsed in order, so only the newest pending
    /// request can be unfinished, and the parser is inside its body.
    fn keep_unfinished_head(&mut self) {
        if let Some(p) = self.pairing.pending.back_mut()
            && p.message.is_none()
            && p.head.is_none()
        {
            p.head = self.requests.partial_head().cloned();
        }
    }

    /// The first bytes of `direction` were missed (the agent started, or its probes were
    /// attached, after the connection began).
    pub fn join_mid_stream(&mut self, direction: Direction) {
        match direction {
            Direction::Requests => self.requests.join_mid_stream(),
            Direction::Responses => self.responses.join_mid_stream(),
        }
    }

    /// `n` bytes of `direction` happened but were not captured.
    pub fn gap(&mut self, direction: Direction, n: u64, ts: u64) {
        if self.pairing.upgraded {
            return;
        }
        let parser = match direction {
            Direction::Requests => &mut self.requests,
            Direction::Responses => {
                self.keep_unfinished_head();
                &mut self.responses
            }
        };
        parser.gap(n, ts, &mut self.pairing);
    }

    /// The connection closed: finish what can be finished, give up on the rest.
    pub fn close(&mut self) {
        self.keep_unfinished_head();
        self.responses.close(&mut self.pairing);
        self.requests.close(&mut self.pairing);
        while let Some(p) = self.pairing.pending.pop_front() {
            self.pairing.give_up(p);
        }
    }

    /// Gives up on requests that started before `deadline` and are still unanswered.
    pub fn expire(&mut self, deadline: u64) {
        // Only the newest request can be unfinished, and it is given up only if it started
        // before the deadline: an upload still in time keeps its head where it is.
        if self
            .pairing
            .pending
            .back()
            .is_some_and(|p| p.started_ts < deadline)
        {
            self.keep_unfinished_head();
        }
        while self
            .pairing
            .pending
            .front()
            .is_some_and(|p| p.started_ts < deadline)
        {
            if let Some(p) = self.pairing.pending.pop_front() {
                self.pairing.give_up(p);
            }
        }
    }

    /// Takes the events produced so far.
    pub fn drain(&mut self) -> std::vec::Drain<'_, SessionEvent> {
        self.pairing.events.drain(..)
    }

    /// Whether the connection left HTTP/1.x (upgrade or tunnel).
    #[must_use]
    pub fn upgraded(&self) -> bool {
        self.pairing.upgraded
    }

    /// Requests waiting for a response.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pairing.pending.len()
    }

    /// Approximate bytes of memory this session holds.
    #[must_use]
    pub fn memory(&self) -> usize {
        self.requests.buffered()
            + self.responses.buffered()
            + self
                .pairing
                .pending
                .iter()
                .map(|p| {
                    p.message
                        .as_ref()
                        .map_or(256, |m| m.body.data.capacity() + 256)
                })
                .sum::<usize>()
    }

    /// Bytes skipped while looking for message starts, both directions.
    #[must_use]
    pub fn skipped_bytes(&self) -> u64 {
        self.requests.skipped_bytes() + self.responses.skipped_bytes()
    }

    /// Whether a request has started and not been answered, or a message is half parsed.
    #[must_use]
    pub fn busy(&self) -> bool {
        !self.pairing.pending.is_empty()
            || self.requests.in_message()
            || self.responses.in_message()
    }
}
