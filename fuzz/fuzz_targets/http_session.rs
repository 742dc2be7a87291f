//! Any bytes, split anywhere, with gaps, in both directions: the reassembler must never panic
//! and must stay within its memory bound.
#![no_main]

use apimon::http::{Direction, Limits, Session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let limits = Limits { max_head: 1024, body: 256 };
    let mut s = Session::new(limits, control & 1 == 0, control & 2 == 0);
    // Each step: one control byte (direction, gap or data, length), then that many bytes.
    let mut input = rest;
    let mut ts = 0u64;
    while let Some((&op, tail)) = input.split_first() {
        let dir = if op & 1 == 0 { Direction::Requests } else { Direction::Responses };
        let n = usize::from(op >> 2).min(tail.len());
        ts += 1;
        if op & 2 == 0 {
            s.push(dir, &tail[..n], ts);
        } else {
            s.gap(dir, n as u64 * 97, ts);
        }
        input = &tail[n..];
        for _ in s.drain() {}
        assert!(s.memory() < 64 * 1024, "memory {}", s.memory());
    }
    s.expire(ts);
    s.close();
    for _ in s.drain() {}
});
