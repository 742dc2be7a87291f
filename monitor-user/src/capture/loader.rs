//! Loads the embedded eBPF object, attaches its tracepoints, and hands out its maps.

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{Program, TracePoint},
};
use common::{ConnState, FdKey};
use tracing::{debug, warn};

/// The kernel side, compiled by build.rs from monitor-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apimon"));

/// Why the kernel side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the eBPF object failed: {0}")]
    Object(#[source] Box<aya::EbpfError>),
    #[error("the kernel rejected program {program}: {source}")]
    Program {
        program: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {program} to tracepoint {category}/{name} failed: {source}")]
    Attach {
        program: String,
        category: &'static str,
        name: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error(
        "this binary was built with AYA_BUILD_SKIP and carries no eBPF object; rebuild without it"
    )]
    NotBuilt,
    #[error("map {0} is missing from the eBPF object or has the wrong type")]
    Map(&'static str),
}

/// Tunables set at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub ring_buffer_bytes: u32,
    pub wakeup_bytes: u64,
    /// Every process's OpenSSL calls are probed (per file), not only those userspace marks.
    pub probe_all: bool,
    /// Load (and so verify) every program without attaching anything (`apimon check`).
    pub verify_only: bool,
}

/// The loaded kernel side: programs (to attach uprobes later) and the maps userspace uses.
pub struct Kernel {
    pub ebpf: Ebpf,
    pub ring: RingBuf<MapData>,
    pub fds: HashMap<MapData, FdKey, ConnState>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Processes whose OpenSSL calls are probed.
    pub probed: HashMap<MapData, u32, u8>,
    /// The ring buffer's marks the programs were loaded with.
    pub marks: RingMarks,
    /// Tracepoints attached.
    pub tracepoints: usize,
    /// Programs loaded (accepted by the verifier).
    pub programs: usize,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("tracepoints", &self.tracepoints)
            .finish_non_exhaustive()
    }
}

/// Tracepoints that may be missing on some architectures or kernels without harm.
const OPTIONAL: &[&str] = &[
    "sys_enter_accept",
    "sys_exit_accept",
    "sys_enter_sendfile64",
    "sys_exit_sendfile64",
];

/// Loads every program, attaches the tracepoints; uprobes are attached later per file.
pub fn load(options: LoadOptions) -> Result<Kernel, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NotBuilt);
    }
    let pid = std::process::id();
    let marks = RingMarks::new(options.ring_buffer_bytes, options.wakeup_bytes);
    let mut ebpf = EbpfLoader::new()
        .override_global("SELF_TGID", &pid, true)
        .override_global("WAKEUP_BYTES", &marks.wakeup, true)
        .override_global("SHED_BYTES", &marks.shed, true)
        .override_global("PROBE_ALL", &u8::from(options.probe_all), true)
        .map_max_entries(common::maps::EVENTS, options.ring_buffer_bytes)
        .load(OBJECT)
        .map_err(|e| LoadError::Object(Box::new(e)))?;

    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
    let mut tracepoints = 0;
    let programs = names.len();
    for name in names {
        let Some(program) = ebpf.program_mut(&name) else {
            continue;
        };
        let program_error = |source| LoadError::Program {
            program: name.clone(),
            source: Box::new(source),
        };
        match program {
            Program::TracePoint(tp) => {
                tp.load().map_err(program_error)?;
                if options.verify_only {
                    continue;
                }
                let category = if name.starts_with("sched_") {
                    "sched"
                } else {
                    "syscalls"
                };
                match attach_tracepoint(tp, category, &name) {
                    Ok(()) => tracepoints += 1,
                    Err(e) if OPTIONAL.contains(&name.as_str()) => {
                        warn!("optional tracepoint {category}/{name} not attached: {e}");
                    }
                    Err(source) => {
                        return Err(LoadError::Attach {
                            program: name.clone(),
                            category,
                            name,
                            source: Box::new(source),
                        });
                    }
                }
            }
            Program::UProbe(up) => up.load().map_err(program_error)?,
            _ => debug!("program {name} of an unexpected type left unloaded"),
        }
    }

    let ring = RingBuf::try_from(
        ebpf.take_map(common::maps::EVENTS)
            .ok_or(LoadError::Map("EVENTS"))?,
    )
    .map_err(|_wrong_type| LoadError::Map("EVENTS"))?;
    let fds = HashMap::try_from(
        ebpf.take_map(common::maps::FDS)
            .ok_or(LoadError::Map("FDS"))?,
    )
    .map_err(|_wrong_type| LoadError::Map("FDS"))?;
    let counters = PerCpuArray::try_from(
        ebpf.take_map(common::maps::COUNTERS)
            .ok_or(LoadError::Map("COUNTERS"))?,
    )
    .map_err(|_wrong_type| LoadError::Map("COUNTERS"))?;
    let probed = HashMap::try_from(
        ebpf.take_map(common::maps::PROBED)
            .ok_or(LoadError::Map("PROBED"))?,
    )
    .map_err(|_wrong_type| LoadError::Map("PROBED"))?;
    debug!(
        "ring buffer {} bytes: wake-up at {}, shedding above {}",
        options.ring_buffer_bytes, marks.wakeup, marks.shed
    );
    Ok(Kernel {
        ebpf,
        ring,
        fds,
        counters,
        probed,
        marks,
        tracepoints,
        programs,
    })
}

/// The kernel's two marks on a ring buffer: when it wakes the agent, and above what fill its
/// data ops forward only their first record (`WAKEUP_BYTES` and `SHED_BYTES` in monitor-ebpf).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingMarks {
    /// Bytes waiting before the reader is woken.
    pub wakeup: u64,
    /// Bytes waiting above which the kernel sheds bodies: the pipeline is beyond capacity.
    pub shed: u64,
}

impl RingMarks {
    /// Marks for a ring of `ring` bytes: shedding above half of it, and waking the reader by
    /// a quarter at the latest, so that a small ring (or a large `wakeup_bytes`) never leaves
    /// the agent asleep until the kernel sheds.
    #[must_use]
    pub fn new(ring: u32, wakeup_bytes: u64) -> Self {
        let shed = u64::from(ring) / 2;
        Self {
            wakeup: wakeup_bytes.min(shed / 2),
            shed,
        }
    }
}

fn attach_tracepoint(
    tp: &mut TracePoint,
    category: &str,
    name: &str,
) -> Result<(), aya::programs::ProgramError> {
    tp.attach(category, name).map(drop)
}

#[cfg(test)]
mod tests {
    use super::RingMarks;

    #[test]
    fn ring_marks_wake_before_shedding() {
        let marks = |ring, wakeup| {
            let m = RingMarks::new(ring, wakeup);
            (m.wakeup, m.shed)
        };
        // Defaults: 16 MiB ring, 64 KiB wake-up.
        assert_eq!(marks(16 << 20, 64 << 10), (64 << 10, 8 << 20));
        // The smallest ring: waking at 64 KiB would never happen; a quarter of it does.
        assert_eq!(marks(64 << 10, 64 << 10), (16 << 10, 32 << 10));
        assert_eq!(marks(64 << 10, 0), (0, 32 << 10));
    }
}
