//! Where results go: JSON lines events, Prometheus metrics and the HTTP endpoint serving them.

pub mod alert_metrics;
pub mod events;
pub mod metrics;
pub mod server;
