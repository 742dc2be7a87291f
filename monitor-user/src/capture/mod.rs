//! Live capture: loads the kernel side, reads its ring buffer, attaches TLS probes, and finds
//! connections open before start.

pub mod backfill;
pub mod control;
pub mod elf;
pub mod hold;
pub mod host;
pub mod loader;
pub mod peer;
pub mod probe_events;
mod probe_site;
pub mod procfs;
pub mod reaper;
pub mod records;
pub mod ring_fill;
pub mod tls;
