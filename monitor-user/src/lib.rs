//! apimon: a Linux host agent that sees the HTTP calls processes make to third-party APIs (and
//! the calls they serve), plaintext or TLS, and reports them as events and metrics.

pub mod alert;
pub mod analysis;
pub mod analyze;
pub mod capture;
pub mod config;
pub mod conn;
pub mod durable;
pub mod evict;
pub mod har;
pub mod http;
pub mod output;
pub mod pipeline;
pub mod run;
pub mod shed;
pub mod timestamp;
