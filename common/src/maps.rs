//! Names and sizes of the maps both sides refer to.

/// Ring buffer of records (default size; userspace may resize it at load time).
pub const EVENTS: &str = "EVENTS";
/// Default ring buffer size in bytes (a power of two multiple of the page size).
pub const EVENTS_BYTES: u32 = 16 * 1024 * 1024;
/// `(tgid, fd) -> ConnState`: sockets and tracked connections.
pub const FDS: &str = "FDS";
/// Entries in [`FDS`]: tracked connections plus recently created sockets.
pub const FDS_ENTRIES: u32 = 65_536;
/// Per-CPU drop counters, indexed by [`crate::counter`].
pub const COUNTERS: &str = "COUNTERS";
/// Threads that may be inside a followed syscall or TLS call at the same time.
pub const THREADS_ENTRIES: u32 = 16_384;
/// `(tgid, SSL*) -> socket`: which connection a TLS session runs on.
pub const SSL_ENTRIES: u32 = 16_384;
/// Processes whose OpenSSL calls are probed (userspace writes `tgid -> 1`).
pub const PROBED: &str = "PROBED";
/// Entries in [`PROBED`].
pub const PROBED_ENTRIES: u32 = 16_384;
