//! Body decoders and the JSON walker on any bytes: decoded output stays within its limit,
//! every scalar lies inside the document, and nothing panics.
#![no_main]

use apimon::analysis::{body, json};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    for enc in [Some("gzip"), Some("deflate"), Some("br"), Some("x-gzip"), Some("identity"), None] {
        let out = body::decode(data, enc, LIMIT);
        assert!(out.len() <= LIMIT.max(data.len()), "{enc:?} decoded past its limit");
    }
    for ct in [
        Some("application/json"),
        Some("multipart/form-data; boundary=XyZ"),
        Some("multipart/form-data"),
        Some("text/plain; charset=utf-8"),
        None,
    ] {
        let _ = body::kind(ct, data);
    }
    for part in body::multipart(data, "XyZ") {
        assert!(part.body.len() <= data.len());
    }
    let mut scalars = 0usize;
    json::walk(data, |path, scalar| {
        assert!(scalar.span.start <= scalar.span.end && scalar.span.end <= data.len());
        let _ = json::scalar_text(data, scalar);
        let _ = path.key();
        let _ = path.parent_key();
        if scalars < 64 {
            let _ = path.render();
        }
        scalars += 1;
    });
});
