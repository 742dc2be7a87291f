//! How many bytes wait in the kernel's ring buffer: the producer position minus the consumer
//! position, read from the ring's two position pages. aya reads them too but does not say;
//! the pipeline needs the figure because a small ring never lets the lag grow, it only fills
//! (and then the kernel cuts bodies and drops records).

use std::{
    os::fd::RawFd,
    sync::atomic::{AtomicUsize, Ordering},
};

use memmap2::{Mmap, MmapOptions};

/// Read-only views of the ring's consumer page (offset 0) and producer page (one page on).
/// The data pages are not mapped: they add nothing here.
#[derive(Debug)]
pub struct RingFill {
    consumer: Mmap,
    producer: Mmap,
}

impl RingFill {
    /// Maps the position pages of the ring buffer map `fd`.
    ///
    /// # Errors
    /// The kernel refused the mapping (not a ring buffer, or no memory).
    pub fn new(fd: RawFd) -> std::io::Result<Self> {
        // SAFETY: no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        // sysconf says -1 when it fails, and why in errno.
        let page = usize::try_from(page).map_err(|_negative| std::io::Error::last_os_error())?;
        // SAFETY: the kernel owns these pages and only ever stores whole, aligned words in
        // them; they are read through atomics below, never as plain memory.
        let consumer = unsafe { MmapOptions::new().len(page).map(fd)? };
        // SAFETY: as above.
        let producer = unsafe { MmapOptions::new().offset(page as u64).len(page).map(fd)? };
        Ok(Self { consumer, producer })
    }

    /// Bytes written by the kernel and not yet consumed (record headers included).
    #[must_use]
    pub fn bytes(&self) -> u64 {
        let load = |m: &Mmap| {
            // SAFETY: the mapping is page-aligned and a page long, so it holds an aligned
            // `usize`; the kernel and aya update it atomically.
            unsafe { &*m.as_ptr().cast::<AtomicUsize>() }.load(Ordering::Acquire)
        };
        // Consumer first: the producer is then at least as far, so the difference is never
        // negative but for a wrap of the counters, which `wrapping_sub` handles.
        let consumer = load(&self.consumer);
        let producer = load(&self.producer);
        producer.wrapping_sub(consumer) as u64
    }
}
