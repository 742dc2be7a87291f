//! The data map: which processes send which kinds of personal data to which third-party APIs,
//! how they authenticate, and since when. What a privacy team needs for its records of
//! processing. Written atomically as JSON, and as a Markdown report.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::SystemTime,
};

use serde::Serialize;

use super::{Analysis, inspect::Side};

/// One flow: a process calling a route of a third-party host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub process: String,
    pub host: String,
    pub route: String,
    /// Data types sent (request side).
    pub sent: BTreeSet<&'static str>,
    /// Data types received (response side).
    pub received: BTreeSet<&'static str>,
    pub auth: BTreeSet<&'static str>,
    pub calls: u64,
    /// Calls that carried personal data or secrets.
    pub calls_with_data: u64,
    pub plaintext_calls: u64,
    pub first_seen: String,
    pub last_seen: String,
}

/// A flow's key, owned or borrowed, ordered as the tuple (process, host, route): lets a call
/// find its flow without copying three strings first.
trait FlowKey {
    fn parts(&self) -> (&str, &str, &str);
}

impl FlowKey for (String, String, String) {
    fn parts(&self) -> (&str, &str, &str) {
        (&self.0, &self.1, &self.2)
    }
}

impl FlowKey for (&str, &str, &str) {
    fn parts(&self) -> (&str, &str, &str) {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn FlowKey + 'a> for (String, String, String) {
    fn borrow(&self) -> &(dyn FlowKey + 'a) {
        self
    }
}

impl PartialEq for dyn FlowKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn FlowKey + '_ {}

impl PartialOrd for dyn FlowKey + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn FlowKey + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

/// All flows, bounded: beyond `max_flows`, new flows are counted but not kept.
#[derive(Debug)]
pub struct DataMap {
    flows: BTreeMap<(String, String, String), Flow>,
    max_flows: usize,
    dropped: u64,
}

#[derive(Serialize)]
struct Document<'a> {
    generated_at: String,
    flows: Vec<&'a Flow>,
    flows_not_kept: u64,
}

impl DataMap {
    #[must_use]
    pub fn new(max_flows: usize) -> Self {
        Self {
            flows: BTreeMap::new(),
            max_flows,
            dropped: 0,
        }
    }

    /// Calls whose new flow was not kept because the map was full, since start.
    #[must_use]
    pub const fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Number of flows kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Adds a call; only calls to third parties make flows.
    pub fn record(&mut self, a: &Analysis) {
        let c = &a.call;
        if !c.third_party {
            return;
        }
        let key = (c.comm.as_str(), c.host.as_str(), c.route.as_str());
        let full = self.flows.len() >= self.max_flows;
        let flow = match self.flows.get_mut(&key as &dyn FlowKey) {
            Some(flow) => flow,
            None if full => {
                self.dropped += 1;
                return;
            }
            None => self
                .flows
                .entry((c.comm.clone(), c.host.clone(), c.route.clone()))
                .or_insert_with(|| Flow {
                    process: c.comm.clone(),
                    host: c.host.clone(),
                    route: c.route.clone(),
                    first_seen: c.ts.clone(),
                    ..Flow::default()
                }),
        };
        flow.calls += 1;
        flow.last_seen.clone_from(&c.ts);
        if c.ts < flow.first_seen {
            flow.first_seen.clone_from(&c.ts);
        }
        flow.auth.insert(c.auth);
        if !c.tls {
            flow.plaintext_calls += 1;
        }
        if !a.data_types.is_empty() {
            flow.calls_with_data += 1;
        }
        for (side, t) in &a.data_types {
            match side {
                Side::Request => flow.sent.insert(t.name()),
                Side::Response => flow.received.insert(t.name()),
            };
        }
    }

    /// The map as pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        let doc = Document {
            generated_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            flows: self.flows.values().collect(),
            flows_not_kept: self.dropped,
        };
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }

    /// A human-readable report: data leaving for each third party, then every flow.
    #[must_use]
    pub fn to_markdown(&self) -> String {
        let mut out = String::from("# apimon data map\n\n");
        out.push_str(&format!(
            "Generated {}. {} flows from processes to third-party APIs.\n\n",
            humantime::format_rfc3339_seconds(SystemTime::now()),
            self.flows.len()
        ));
        // Per host: data types sent, processes, auth schemes, calls.
        type HostSummary<'a> = (BTreeSet<&'a str>, BTreeSet<&'a str>, BTreeSet<&'a str>, u64);
        let mut by_host: BTreeMap<&str, HostSummary<'_>> = BTreeMap::new();
        for f in self.flows.values() {
            let e = by_host.entry(&f.host).or_default();
            e.0.extend(&f.sent);
            e.1.insert(&f.process);
            e.2.extend(&f.auth);
            e.3 += f.calls;
        }
        out.push_str("## Third parties\n\n| host | personal data and secrets sent | processes | authentication | calls |\n|---|---|---|---|---|\n");
        for (host, (sent, procs, auth, calls)) in &by_host {
            out.push_str(&format!(
                "| {host} | {} | {} | {} | {calls} |\n",
                list(sent),
                list(procs),
                list(auth)
            ));
        }
        out.push_str("\n## Flows\n\n| process | host | route | sent | received | auth | calls | plaintext | first seen | last seen |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for f in self.flows.values() {
            out.push_str(&format!(
                "| {} | {} | `{}` | {} | {} | {} | {} | {} | {} | {} |\n",
                f.process,
                f.host,
                f.route,
                list(&f.sent),
                list(&f.received),
                list(&f.auth),
                f.calls,
                f.plaintext_calls,
                f.first_seen,
                f.last_seen
            ));
        }
        if self.dropped > 0 {
            out.push_str(&format!(
                "\n{} calls belonged to flows beyond the map's size limit.\n",
                self.dropped
            ));
        }
        out
    }

    /// Writes the JSON map to `path` atomically (temporary file, fsync, rename).
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        crate::durable::replace(path, self.to_json().as_bytes())
    }

    /// Writes the Markdown report to `path` atomically.
    pub fn write_markdown(&self, path: &Path) -> std::io::Result<()> {
        crate::durable::replace(path, self.to_markdown().as_bytes())
    }
}

fn list(set: &BTreeSet<&str>) -> String {
    if set.is_empty() {
        "-".to_owned()
    } else {
        set.iter().copied().collect::<Vec<_>>().join(", ")
    }
}
