//! JSON lines: one object per line, every object with a `kind`.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::Path,
};

use serde::Serialize;

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

    /// Events written so far.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
