//! Reassembly tests: the cases HTTP/1.x clients and servers really produce, then properties
//! over arbitrary split points and garbage.

use proptest::prelude::*;

use super::{recycle as recycle_exchange, *};

const REQ: Direction = Direction::Requests;
const RES: Direction = Direction::Responses;

fn session() -> Session {
    Session::new(Limits::default(), true, true)
}

fn exchanges(s: &mut Session) -> Vec<Exchange> {
    s.drain()
        .filter_map(|e| match e {
            SessionEvent::Exchange(x) => Some(*x),
            _ => None,
        })
        .collect()
}

/// (method, target, status, request body size, response body size)
type Summary = (String, String, Option<u16>, u64, Option<u64>);

/// Request targets of the exchanges among `events`, in order.
fn targets(events: &[SessionEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Exchange(x) => Some(summary(x).1),
            _ => None,
        })
        .collect()
}

fn summary(x: &Exchange) -> Summary {
    let (method, target) = match &x.request.head.start {
        StartLine::Request { method, target } => (method.clone(), target.clone()),
        StartLine::Response { .. } => panic!("request side holds a response"),
    };
    let status = x.response.as_ref().and_then(|r| r.head.status());
    (
        method,
        target,
        status,
        x.request.body.size,
        x.response.as_ref().map(|r| r.body.size),
    )
}

#[test]
fn keep_alive_hundred_requests_in_order() {
    let mut s = session();
    let mut all = Vec::new();
    for i in 0..100u64 {
        let req = format!("GET /item/{i} HTTP/1.1\r\nHost: api.test\r\n\r\n");
        s.push(REQ, req.as_bytes(), i * 10);
        let body = format!("{{\"id\":{i}}}");
        let res = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.push(RES, res.as_bytes(), i * 10 + 5);
        all.extend(exchanges(&mut s));
    }
    assert_eq!(all.len(), 100);
    for (i, x) in all.iter().enumerate() {
        assert_eq!(summary(x).1, format!("/item/{i}"));
        assert_eq!(x.request.first_ts, i as u64 * 10);
        assert_eq!(
            x.response.as_ref().map(|r| r.last_ts),
            Some(i as u64 * 10 + 5)
        );
    }
}

#[test]
fn pipelined_requests_pair_in_order() {
    let mut s = session();
    s.push(
        REQ,
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz",
        1,
    );
    s.push(
        RES,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        2,
    );
    let got: Vec<_> = exchanges(&mut s).iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            ("GET".into(), "/a".into(), Some(200), 0, Some(1)),
            // HEAD: Content-Length describes the GET response; no body follows.
            ("HEAD".into(), "/b".into(), Some(200), 0, Some(0)),
            ("POST".into(), "/c".into(), Some(201), 3, Some(2)),
        ]
    );
}

#[test]
fn chunked_response_with_trailers() {
    let mut s = session();
    s.push(REQ, b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n", 1);
    s.push(
        RES,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        2,
    );
    s.push(RES, b"6\r\n world\r\n0\r\nX-Digest: 1\r\n\r\n", 3);
    let x = exchanges(&mut s);
    assert_eq!(x.len(), 1);
    let res = x[0].response.as_ref().expect("response");
    assert_eq!(res.body.data, b"hello world");
    assert_eq!(res.trailers.len(), 1);
    assert!(res.complete);
}

#[test]
fn expect_continue_then_body() {
    let mut s = session();
    s.push(
        REQ,
        b"PUT /upload HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        1,
    );
    s.push(RES, b"HTTP/1.1 100 Continue\r\n\r\n", 2);
    s.push(REQ, b"data", 3);
    s.push(RES, b"HTTP/1.1 204 No Content\r\n\r\n", 4);
    let x = exchanges(&mut s);
    assert_eq!(
        x.iter().map(summary).collect::<Vec<_>>(),
        vec![("PUT".into(), "/upload".into(), Some(204), 4, Some(0))]
    );
}

#[test]
fn bodiless_statuses() {
    let mut s = session();
    s.push(REQ, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 1);
    s.push(
        RES,
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        2,
    );
    let got: Vec<_> = exchanges(&mut s).iter().map(summary).collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].2, Some(304));
    assert_eq!(got[1].2, Some(204));
}

#[test]
fn close_delimited_response_ends_at_close() {
    let mut s = session();
    s.push(REQ, b"GET /old HTTP/1.0\r\n\r\n", 1);
    s.push(RES, b"HTTP/1.0 200 OK\r\n\r\nall of", 2);
    s.push(RES, b" this", 3);
    assert!(exchanges(&mut s).is_empty());
    s.close();
    let x = exchanges(&mut s);
    let res = x[0].response.as_ref().expect("response");
    assert_eq!(res.body.data, b"all of this");
    assert!(res.complete);
    assert_eq!(res.last_ts, 3);
}

#[test]
fn missing_response_is_reported_without_status() {
    let mut s = session();
    s.push(REQ, b"GET /slow HTTP/1.1\r\n\r\n", 100);
    s.expire(50);
    assert!(exchanges(&mut s).is_empty());
    s.expire(101);
    let x = exchanges(&mut s);
    assert_eq!(summary(&x[0]).2, None);
    assert!(x[0].response.is_none());

    s.push(REQ, b"GET /closed HTTP/1.1\r\n\r\n", 200);
    s.close();
    let x = exchanges(&mut s);
    assert_eq!(summary(&x[0]).1, "/closed");
    assert!(x[0].response.is_none());
}

#[test]
fn joining_mid_stream_resyncs_at_next_message() {
    let mut s = Session::new(Limits::default(), false, false);
    s.push(
        REQ,
        b"dy of an earlier request\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n",
        1,
    );
    s.push(
        RES,
        b"ous response body}HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        2,
    );
    // The response start is not at a line start: it is found only at the next line.
    s.push(RES, b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3);
    let got: Vec<_> = exchanges(&mut s).iter().map(summary).collect();
    assert_eq!(
        got,
        vec![("GET".into(), "/next".into(), Some(200), 0, Some(0))]
    );
}

#[test]
fn garbage_between_messages_is_skipped() {
    let mut s = session();
    s.push(
        REQ,
        b"GET /1 HTTP/1.1\r\n\r\n\x00\x01binary\xff junk\r\nGET /2 HTTP/1.1\r\n\r\n",
        1,
    );
    s.push(
        RES,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        2,
    );
    let events: Vec<_> = s.drain().collect();
    assert_eq!(targets(&events), vec!["/1", "/2"]);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SessionEvent::Error(Direction::Requests, _)))
    );
}

#[test]
fn lost_body_bytes_keep_real_sizes() {
    let mut s = session();
    s.push(REQ, b"GET /big HTTP/1.1\r\n\r\n", 1);
    s.push(
        RES,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\nabc",
        2,
    );
    s.gap(RES, 1_048_570, 3);
    s.push(RES, b"xyz", 4);
    let x = exchanges(&mut s);
    let res = x[0].response.as_ref().expect("response");
    assert_eq!(res.body.size, 1_048_576);
    assert!(res.body.truncated);
    assert_eq!(&res.body.data[..3], b"abc");
}

#[test]
fn lost_head_bytes_resync_on_the_next_message() {
    let mut s = session();
    s.push(REQ, b"GET /a HTTP/1.1\r\nHo", 1);
    s.gap(REQ, 100, 2);
    s.push(REQ, b"GET /b HTTP/1.1\r\n\r\n", 3);
    s.push(RES, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4);
    let got: Vec<_> = exchanges(&mut s).iter().map(summary).collect();
    assert_eq!(
        got,
        vec![("GET".into(), "/b".into(), Some(200), 0, Some(0))]
    );
}

#[test]
fn upgrade_stops_parsing() {
    let mut s = session();
    s.push(
        REQ,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        1,
    );
    s.push(
        RES,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
        2,
    );
    s.push(REQ, b"\x81\x85maskedbytes", 3);
    let events: Vec<_> = s.drain().collect();
    assert!(events.iter().any(|e| matches!(e, SessionEvent::Upgraded)));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, SessionEvent::Exchange(_)))
            .count(),
        1
    );
    assert!(!events.iter().any(|e| matches!(e, SessionEvent::Error(..))));
    assert!(s.upgraded());
}

#[test]
fn huge_head_is_rejected_and_memory_stays_bounded() {
    let limits = Limits {
        max_head: 1024,
        body: 1024,
    };
    let mut s = Session::new(limits, true, true);
    s.push(REQ, b"GET /h HTTP/1.1\r\nX-Big: ", 1);
    for _ in 0..1000 {
        s.push(REQ, &[b'a'; 1000], 2);
        assert!(s.memory() < 64 * 1024, "memory grew to {}", s.memory());
    }
    s.push(REQ, b"\r\n\r\nGET /ok HTTP/1.1\r\n\r\n", 3);
    s.push(RES, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4);
    let events: Vec<_> = s.drain().collect();
    assert!(events.contains(&SessionEvent::Error(
        Direction::Requests,
        ParseError::HeadTooLarge
    )));
    assert_eq!(targets(&events), vec!["/ok"]);
}

#[test]
fn huge_body_is_counted_not_kept() {
    let limits = Limits {
        max_head: 1024,
        body: 100,
    };
    let mut s = Session::new(limits, true, true);
    s.push(
        REQ,
        b"POST /up HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n",
        1,
    );
    for _ in 0..1000 {
        s.push(REQ, &[b'x'; 10_000], 2);
    }
    s.push(RES, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3);
    let x = exchanges(&mut s);
    assert_eq!(x[0].request.body.size, 10_000_000);
    assert_eq!(x[0].request.body.data.len(), 100);
}

#[test]
fn non_http_bytes_never_panic_nor_grow() {
    let mut s = session();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..2000 {
        let mut chunk = [0u8; 512];
        for b in &mut chunk {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        s.push(REQ, &chunk, 1);
        s.push(RES, &chunk, 1);
    }
    assert!(s.memory() < 200 * 1024);
    assert_eq!(exchanges(&mut s).len(), 0);
}

// --- properties -----------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Call {
    method: &'static str,
    path: String,
    req_body: Vec<u8>,
    req_chunked: bool,
    status: u16,
    res_body: Vec<u8>,
    res_chunked: bool,
}

#[test]
fn response_before_the_request_body_ends_keeps_the_request_head() {
    let mut s = session();
    s.push(
        REQ,
        b"POST /upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: 10\r\n\r\n12345",
        1,
    );
    s.push(
        RES,
        b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n",
        2,
    );
    let got = exchanges(&mut s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request.head.method(), Some("POST"));
    assert_eq!(got[0].request.head.header("host"), Some("api.test"));
    assert!(!got[0].request.complete);
    assert_eq!(
        got[0].response.as_ref().and_then(|r| r.head.status()),
        Some(413)
    );

    // The same when the request times out half sent.
    let mut s = session();
    s.push(
        REQ,
        b"PUT /slow HTTP/1.1\r\nHost: api.test\r\nContent-Length: 10\r\n\r\n123",
        1,
    );
    s.expire(u64::MAX);
    let got = exchanges(&mut s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request.head.method(), Some("PUT"));
    assert!(got[0].response.is_none());
}

#[test]
fn recycled_buffers_parse_exactly_as_fresh_ones() {
    // Heads of varying shapes, so that recycled ones have more, fewer or other headers, and
    // a header that is not UTF-8.
    let mut calls: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for i in 0..40usize {
        let mut req = format!(
            "{} /v1/items/{i} HTTP/1.{}\r\nHost: api{i}.test\r\n",
            ["GET", "POST", "DELETE"][i % 3],
            i % 2
        )
        .into_bytes();
        for h in 0..i % 5 {
            req.extend_from_slice(format!("X-Extra-{h}: value {i} {h}\r\n").as_bytes());
        }
        if i % 7 == 0 {
            req.extend_from_slice(b"X-Bytes: caf\xe9\r\n");
        }
        let body = "x".repeat(i * 3);
        req.extend_from_slice(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
        let status = [200, 201, 404, 204][i % 4];
        let res_body = if status == 204 {
            String::new()
        } else {
            "y".repeat(i * 5)
        };
        let mut res = format!("HTTP/1.1 {status} Reason {i}\r\n").into_bytes();
        if i % 3 == 0 {
            res.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            chunk_encode(res_body.as_bytes(), &mut res);
        } else {
            res.extend_from_slice(
                format!("Content-Length: {}\r\n\r\n{res_body}", res_body.len()).as_bytes(),
            );
        }
        calls.push((req, res));
    }
    let run = |recycle: bool| {
        let mut s = session();
        let mut out = Vec::new();
        for (i, (req, res)) in calls.iter().enumerate() {
            s.push(REQ, req, i as u64);
            s.push(RES, res, i as u64);
            for x in s.drain().filter_map(|e| match e {
                SessionEvent::Exchange(x) => Some(x),
                _ => None,
            }) {
                out.push((*x).clone());
                if recycle {
                    recycle_exchange(x);
                }
            }
        }
        out
    };
    let fresh = run(false);
    assert_eq!(fresh.len(), calls.len());
    assert_eq!(run(true), fresh);
    assert_eq!(run(true), fresh);
}

fn chunk_encode(body: &[u8], out: &mut Vec<u8>) {
    for part in body.chunks(7) {
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
}

fn encode(calls: &[Call]) -> (Vec<u8>, Vec<u8>) {
    let (mut req, mut res) = (Vec::new(), Vec::new());
    for c in calls {
        req.extend_from_slice(
            format!("{} {} HTTP/1.1\r\nHost: api.test\r\n", c.method, c.path).as_bytes(),
        );
        if c.req_chunked {
            req.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            chunk_encode(&c.req_body, &mut req);
        } else {
            req.extend_from_slice(
                format!("Content-Length: {}\r\n\r\n", c.req_body.len()).as_bytes(),
            );
            req.extend_from_slice(&c.req_body);
        }
        res.extend_from_slice(format!("HTTP/1.1 {} X\r\n", c.status).as_bytes());
        let bodiless = c.method == "HEAD" || c.status == 204 || c.status == 304;
        if c.res_chunked && !bodiless {
            res.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            chunk_encode(&c.res_body, &mut res);
        } else {
            res.extend_from_slice(
                format!("Content-Length: {}\r\n\r\n", c.res_body.len()).as_bytes(),
            );
            if !bodiless {
                res.extend_from_slice(&c.res_body);
            }
        }
    }
    (req, res)
}

fn call() -> impl Strategy<Value = Call> {
    (
        prop::sample::select(vec![
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
        ]),
        "/[a-z0-9/]{0,20}",
        prop::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
        prop::sample::select(vec![200u16, 201, 204, 301, 304, 400, 404, 500]),
        prop::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
    )
        .prop_map(
            |(method, path, req_body, req_chunked, status, res_body, res_chunked)| Call {
                method,
                path,
                req_body,
                req_chunked,
                status,
                res_body,
                res_chunked,
            },
        )
}

/// Feeds `bytes` cut at `cuts` (positions taken modulo the length).
fn feed(s: &mut Session, dir: Direction, bytes: &[u8], cuts: &[usize]) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    for w in points.windows(2) {
        s.push(dir, &bytes[w[0]..w[1]], w[0] as u64);
    }
}

fn expected(calls: &[Call]) -> Vec<Summary> {
    calls
        .iter()
        .map(|c| {
            let bodiless = c.method == "HEAD" || c.status == 204 || c.status == 304;
            let res_size = if bodiless { 0 } else { c.res_body.len() as u64 };
            (
                c.method.to_owned(),
                c.path.clone(),
                Some(c.status),
                c.req_body.len() as u64,
                Some(res_size),
            )
        })
        .collect()
}

proptest! {

    #[test]
    fn any_split_gives_the_same_exchanges(
        calls in prop::collection::vec(call(), 1..8),
        req_cuts in prop::collection::vec(any::<usize>(), 0..20),
        res_cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let (req, res) = encode(&calls);
        let mut s = session();
        // Requests first, then responses; and interleaved: both must pair the same way.
        feed(&mut s, REQ, &req, &req_cuts);
        feed(&mut s, RES, &res, &res_cuts);
        let got: Vec<_> = exchanges(&mut s).iter().map(summary).collect();
        prop_assert_eq!(&got, &expected(&calls));

        let mut s = session();
        for (c, one) in calls.iter().zip(calls.iter().map(|c| encode(std::slice::from_ref(c)))) {
            let _ = c;
            feed(&mut s, REQ, &one.0, &req_cuts);
            feed(&mut s, RES, &one.1, &res_cuts);
        }
        let got: Vec<_> = exchanges(&mut s).iter().map(summary).collect();
        prop_assert_eq!(got, expected(&calls));
    }

    #[test]
    fn garbage_between_messages_loses_only_the_garbage(
        calls in prop::collection::vec(call(), 1..6),
        garbage in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 6),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut s = session();
        let mut kept = Vec::new();
        for (c, g) in calls.iter().zip(&garbage) {
            // Garbage that itself looks like a request start would be parsed as one.
            let mut g = g.clone();
            g.retain(|&b| b != b'\n');
            g.push(b'\n');
            let (req, res) = encode(std::slice::from_ref(c));
            let mut stream = g;
            stream.extend_from_slice(&req);
            feed(&mut s, REQ, &stream, &cuts);
            feed(&mut s, RES, &res, &cuts);
            kept.push(c.clone());
        }
        s.close();
        let got: Vec<_> = exchanges(&mut s).iter().filter(|x| x.response.is_some()).map(summary).collect();
        prop_assert_eq!(got, expected(&kept));
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        a in prop::collection::vec(any::<u8>(), 0..2000),
        b in prop::collection::vec(any::<u8>(), 0..2000),
        gaps in prop::collection::vec(0u64..5000, 0..4),
    ) {
        let mut s = Session::new(Limits { max_head: 512, body: 64 }, false, true);
        for (i, part) in a.chunks(97).enumerate() {
            s.push(REQ, part, i as u64);
            if let Some(g) = gaps.get(i) { s.gap(RES, *g, i as u64); }
            s.push(RES, b.get(i * 97..).unwrap_or_default(), i as u64);
        }
        s.expire(u64::MAX);
        s.close();
        let _ = s.drain().count();
        prop_assert!(s.memory() < 16 * 1024);
    }
}
