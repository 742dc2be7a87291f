//! Ring buffer records of any bytes decode to a record or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = apimon::capture::records::decode(data);
});
