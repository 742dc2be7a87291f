//! JSON lines: one object per line, every object with a `kind`.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::Path,
};

use serde::Serialize;

use crate::analysis::{Analysis, Call};

/// Writes events to a file or stdout, buffered; flushed on `flush` and on drop.
pub struct EventWriter {
    out: BufWriter<Box<dyn Write + Send>>,
    written: u64,
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriter")
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl EventWriter {
    /// `-` is stdout; anything else a file, appended to (created if missing).
    pub fn open(target: &Path) -> io::Result<Self> {
        let sink: Box<dyn Write + Send> = if target == Path::new("-") {
            Box::new(io::stdout())
        } else {
            Box::new(OpenOptions::new().create(true).append(true).open(target)?)
        };
        Ok(Self::new(sink))
    }

    /// Events to any writer (tests, offline analysis).
    #[must_use]
    pub fn new(sink: Box<dyn Write + Send>) -> Self {
        Self {
            out: BufWriter::with_capacity(64 * 1024, sink),
            written: 0,
        }
    }

    /// Writes one event as a line.
    pub fn write<T: Serialize>(&mut self, event: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, event).map_err(io::Error::other)?;
        self.out.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    /// Writes a call exactly as [`write`](Self::write) would, without serde: escaping every
    /// key and value through it was the largest cost of a call's event, and every call has
    /// one. Every field is named below, so that a new one cannot be forgotten.
    pub fn write_call(&mut self, call: &Call) -> io::Result<()> {
        let Call {
            kind,
            ts,
            entry,
            pid,
            comm,
            direction,
            tls,
            tls_library,
            remote_addr,
            host,
            method,
            path,
            route,
            status,
            duration_ms,
            request_bytes,
            response_bytes,
            third_party,
            auth,
            error,
        } = call;
        let o = &mut self.out;
        str_field(o, b"{\"kind\":", kind)?;
        str_field(o, b",\"ts\":", ts)?;
        if let Some(entry) = entry {
            num_field(o, b",\"entry\":", entry)?;
        }
        if let Some(pid) = pid {
            num_field(o, b",\"pid\":", pid)?;
        }
        str_field(o, b",\"comm\":", comm)?;
        str_field(o, b",\"direction\":", direction.as_str())?;
        bool_field(o, b",\"tls\":", *tls)?;
        if let Some(lib) = tls_library {
            str_field(o, b",\"tls_library\":", lib)?;
        }
        match remote_addr {
            Some(addr) => str_field(o, b",\"remote_addr\":", addr)?,
            None => o.write_all(b",\"remote_addr\":null")?,
        }
        str_field(o, b",\"host\":", host)?;
        str_field(o, b",\"method\":", method)?;
        str_field(o, b",\"path\":", path)?;
        str_field(o, b",\"route\":", route)?;
        num_field(o, b",\"status\":", status)?;
        num_field(o, b",\"duration_ms\":", duration_ms)?;
        num_field(o, b",\"request_bytes\":", request_bytes)?;
        num_field(o, b",\"response_bytes\":", response_bytes)?;
        bool_field(o, b",\"third_party\":", *third_party)?;
        str_field(o, b",\"auth\":", auth)?;
        if let Some(error) = error {
            str_field(o, b",\"error\":", error)?;
        }
        o.write_all(b"}\n")?;
        self.written += 1;
        Ok(())
    }

    /// A call's event, then its findings'.
    pub fn write_analysis(&mut self, a: &Analysis) -> io::Result<()> {
        self.write_call(&a.call)?;
        a.findings.iter().try_for_each(|f| self.write(f))
    }

    /// Events written so far.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A value as serde_json writes it (numbers, `null`).
fn json<T: Serialize + ?Sized>(out: &mut impl Write, value: &T) -> io::Result<()> {
    serde_json::to_writer(out, value).map_err(io::Error::other)
}

/// `key` (such as `,"host":`), then `value` as a JSON string.
#[inline]
fn str_field(out: &mut impl Write, key: &'static [u8], value: &str) -> io::Result<()> {
    out.write_all(key)?;
    json_str(out, value)
}

/// `key`, then `value` as serde_json writes it (a number, or `null`).
#[inline]
fn num_field<T: Serialize + ?Sized>(
    out: &mut impl Write,
    key: &'static [u8],
    value: &T,
) -> io::Result<()> {
    out.write_all(key)?;
    json(out, value)
}

/// `key`, then `true` or `false`.
#[inline]
fn bool_field(out: &mut impl Write, key: &'static [u8], value: bool) -> io::Result<()> {
    out.write_all(key)?;
    out.write_all(if value { b"true" } else { b"false" })
}

/// Whether serde_json escapes anything in `s`: a control character, `"` or `\\`. Eight bytes
/// at a time (the classic "has a byte less than / equal to" tricks, exact as a yes or no).
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH != 0;
    let equal = |w: u64, b: u8| below(w ^ (ONES * u64::from(b)), 1);
    let mut words = s.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        if below(w, 0x20) || equal(w, b'"') || equal(w, b'\\') {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A string as serde_json writes it: as is between quotes unless something needs escaping.
fn json_str(out: &mut impl Write, s: &str) -> io::Result<()> {
    if !needs_escape(s.as_bytes()) {
        out.write_all(b"\"")?;
        out.write_all(s.as_bytes())?;
        out.write_all(b"\"")
    } else {
        json(out, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::CallDirection;

    /// A writer whose lines the test can read back.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    proptest::proptest! {
        #[test]
        fn escaping_is_detected_as_serde_escapes(s in "(?s).{0,40}", bytes in proptest::collection::vec(0u8..0x80, 0..40)) {
            for s in [s, String::from_utf8(bytes).unwrap_or_default()] {
                let serde = serde_json::to_string(&s).unwrap_or_default();
                proptest::prop_assert_eq!(needs_escape(s.as_bytes()), serde.len() != s.len() + 2);
                let mut out = Vec::new();
                json_str(&mut out, &s).unwrap_or_default();
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap_or_default(), serde);
            }
        }
    }

    #[test]
    fn calls_are_written_as_serde_writes_them() {
        let base = Call {
            kind: "call",
            ts: "2026-11-23T02:43:49.990Z".into(),
            entry: None,
            pid: Some(14010),
            comm: "curl".into(),
            direction: CallDirection::Egress,
            tls: true,
            tls_library: Some("openssl".into()),
            remote_addr: Some("198.51.100.10:8443".into()),
            host: "api.partner.test".into(),
            method: "GET".into(),
            path: "/v1/users/42".into(),
            route: "/v1/users/{id}".into(),
            status: Some(200),
            duration_ms: Some(1.7),
            request_bytes: 0,
            response_bytes: 1_048_576,
            third_party: true,
            auth: "bearer",
            error: None,
        };
        let odd = "q\"uo\\te\u{1}\n\t\u{7f} é 🦀 </script>";
        let variants = [
            base.clone(),
            Call {
                entry: Some(7),
                pid: None,
                direction: CallDirection::Ingress,
                tls: false,
                tls_library: None,
                remote_addr: None,
                status: None,
                duration_ms: None,
                third_party: false,
                error: Some("no_response"),
                ..base.clone()
            },
            Call {
                comm: odd.into(),
                host: odd.into(),
                method: odd.into(),
                path: odd.into(),
                route: String::new(),
                ts: odd.into(),
                remote_addr: Some(odd.into()),
                tls_library: Some(odd.into()),
                duration_ms: Some(0.000_123_456_789),
                ..base.clone()
            },
            Call {
                duration_ms: Some(f64::NAN),
                ..base.clone()
            },
            Call {
                duration_ms: Some(123_456_789.125),
                request_bytes: u64::MAX,
                ..base
            },
        ];
        for call in &variants {
            let sink = Shared::default();
            let mut w = EventWriter::new(Box::new(sink.clone()));
            w.write(call).expect("serde");
            w.write_call(call).expect("by hand");
            w.flush().expect("flush");
            assert_eq!(w.written(), 2);
            let text = String::from_utf8(sink.0.lock().expect("lock").clone()).expect("utf8");
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2);
            assert_eq!(lines[1], lines[0]);
        }
    }
}
