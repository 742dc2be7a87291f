//! The network namespace that holds the bench's "third-party API", joined to the host by a
//! veth pair, deleted again on drop.
//!
//! Names and addresses differ from the integration tests' (`apimon-test-*`, 198.51.100.0/24)
//! so that a bench and a test run on the same machine never take each other's routes.

use std::process::Command;

use anyhow::Result;

use crate::cmd::output_of;

/// Namespace name.
pub(crate) const NETNS: &str = "apimon-bench";
/// Host end of the veth pair.
const HOST_IF: &str = "apimon-bh0";
/// Namespace end of the veth pair.
const NS_IF: &str = "apimon-bn0";
/// Host address on the veth (TEST-NET-3, never routed anywhere else).
const HOST_ADDR: &str = "203.0.113.1";
/// The API's address: public by apimon's rules, so calls to it are third-party calls.
pub(crate) const API_ADDR: &str = "203.0.113.10";

/// The namespace and its veth pair, removed on drop.
pub(crate) struct Netns(());

impl Netns {
    /// Creates the namespace (removing leftovers of a killed run first) and brings links up.
    pub(crate) fn create() -> Result<Self> {
        remove();
        ip(&["netns", "add", NETNS])?;
        // From here on, a failure still deletes what was made.
        let netns = Self(());
        ip(&[
            "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF,
        ])?;
        ip(&["link", "set", NS_IF, "netns", NETNS])?;
        ip(&["addr", "add", &format!("{HOST_ADDR}/24"), "dev", HOST_IF])?;
        ip(&["link", "set", HOST_IF, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", NETNS, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        in_ns(&["addr", "add", &format!("{API_ADDR}/24"), "dev", NS_IF])?;
        in_ns(&["link", "set", NS_IF, "up"])?;
        in_ns(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove();
    }
}

fn remove() {
    // Deleting the namespace deletes its veth end, and with it the peer; deleting the host end
    // as well covers a namespace that was never made.
    let _ = Command::new("ip").args(["netns", "del", NETNS]).output();
    let _ = Command::new("ip").args(["link", "del", HOST_IF]).output();
}

fn ip(args: &[&str]) -> Result<()> {
    output_of(Command::new("ip").args(args)).map(drop)
}
