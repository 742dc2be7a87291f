//! Processes the bench starts: each leads its own process group, so that one signal reaches
//! it and everything it forked (nginx's workers), and it is stopped when its guard drops.

use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::interrupt;

/// A running child process group, stopped (signal, then SIGKILL) on drop.
pub(crate) struct Guarded {
    name: String,
    child: Child,
    stop_signal: libc::c_int,
    status: Option<ExitStatus>,
}

impl Guarded {
    /// Starts `cmd` as the leader of a new process group; `stop_signal` asks it to finish.
    pub(crate) fn spawn(name: &str, cmd: &mut Command, stop_signal: libc::c_int) -> Result<Self> {
        // A group of its own: a terminal's Ctrl-C reaches only xtask, which then stops each
        // child in order, and a signal to the group also reaches forked workers.
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("failed to start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            stop_signal,
            status: None,
        })
    }

    /// The leader's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child itself (to take its pipes).
    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its exit status if it has exited, without blocking.
    pub(crate) fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Waits up to `limit` for the child to exit by itself; `None` if it is still running.
    /// An interruption stops the wait with an error.
    pub(crate) fn wait_for(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(Some(status));
            }
            interrupt::check()?;
            if Instant::now() >= end {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends the stop signal to the group, waits up to `grace`, then kills the group.
    pub(crate) fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let pgid = self.group();
        if self.exited().ok().flatten().is_none() {
            // SAFETY: signalling a process group this guard created.
            unsafe { libc::kill(-pgid, self.stop_signal) };
            let end = Instant::now() + grace;
            while self.exited().ok().flatten().is_none() && Instant::now() < end {
                thread::sleep(Duration::from_millis(20));
            }
        }
        // The leader may be gone while what it forked is not (an nginx worker whose master
        // died): SIGKILL whatever is left of the group. ESRCH (nothing left) is the normal case.
        // SAFETY: as above; the group id is the pid of our own child.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        self.status
    }

    fn group(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).unwrap_or(libc::pid_t::MAX)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
