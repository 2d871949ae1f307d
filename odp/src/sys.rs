//! The system calls the ODP layer needs, with errors as values.
//!
//! Making pages present uses `madvise(MADV_POPULATE_READ/WRITE)` (Linux
//! 5.14+): it faults pages in exactly as a CPU access would, but reports
//! unmapped or protected memory as an error instead of a signal.

use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// The base page size of the system.
pub fn page_size() -> usize {
    static PAGE_SIZE: OnceLock<usize> = OnceLock::new();
    *PAGE_SIZE.get_or_init(|| {
        // SAFETY: sysconf has no memory-safety preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size).unwrap_or(4096)
    })
}

/// Why pages could not be made present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PopulateError {
    /// Part of the range is not mapped (`ENOMEM`).
    Unmapped,
    /// The mapping forbids the access or cannot be faulted in: `EFAULT`
    /// (the access would raise SIGSEGV or SIGBUS, e.g. a write to a
    /// read-only mapping), `EINVAL` (incompatible permissions such as
    /// `PROT_NONE`, or a `VM_IO`/`VM_PFNMAP` mapping), `EPERM`, `EHWPOISON`.
    Denied,
}

/// Makes `[addr, addr + len)` present, for writing if `write` (which also
/// breaks copy-on-write sharing, like a CPU write fault).
pub(crate) fn populate(addr: usize, len: usize, write: bool) -> Result<(), PopulateError> {
    let advice = if write {
        libc::MADV_POPULATE_WRITE
    } else {
        libc::MADV_POPULATE_READ
    };
    loop {
        // SAFETY: MADV_POPULATE_* only faults pages in; it never changes the
        // contents or the layout of the address space.
        let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) };
        if rc == 0 {
            return Ok(());
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR | libc::EAGAIN) => continue,
            Some(libc::ENOMEM) => return Err(PopulateError::Unmapped),
            _ => return Err(PopulateError::Denied),
        }
    }
}

/// Whether every page of `[addr, addr + len)` is mapped. `msync(MS_ASYNC)`
/// is a no-op for the data on Linux but fails with `ENOMEM` on a hole, in one
/// call for any length.
pub fn is_mapped(addr: usize, len: usize) -> bool {
    let mask = page_size() - 1;
    let start = addr & !mask;
    let Some(end) = addr.checked_add(len).and_then(|e| e.checked_add(mask)) else {
        return false;
    };
    // SAFETY: msync(MS_ASYNC) neither reads nor writes the memory; it only
    // walks the mappings of the range.
    let rc = unsafe {
        libc::msync(
            start as *mut libc::c_void,
            (end & !mask) - start,
            libc::MS_ASYNC,
        )
    };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOMEM)
}

/// The length of the mapping that starts exactly at `addr`, from
/// `/proc/self/maps` (for `shmdt`, which names only the address). Reads the
/// file with a stack buffer and raw calls: it may run inside an
/// interposed call, where allocating is not safe.
pub(crate) fn mapping_len_at(addr: usize) -> Option<usize> {
    let mut parser = MapsParser::default();
    let mut buf = [0u8; 4096];
    let found = read_proc_maps(&mut buf, |chunk| {
        match chunk.iter().find_map(|&b| parser.feed(b, addr)) {
            Some(len) => ControlFlow::Break(len),
            None => ControlFlow::Continue(()),
        }
    })?;
    found.break_value()
}

/// Reads `/proc/self/maps` through `buf` with raw calls (no allocation:
/// callers may run inside an interposed call), handing each chunk read to
/// `chunk` until it breaks or the file ends. `None` if the file cannot be
/// opened or read; otherwise how the scan ended.
pub(crate) fn read_proc_maps<B>(
    buf: &mut [u8],
    mut chunk: impl FnMut(&[u8]) -> ControlFlow<B>,
) -> Option<ControlFlow<B>> {
    // SAFETY: a NUL-terminated path and plain flags.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let result = loop {
        // SAFETY: `buf` is writable for its whole length; `fd` is open.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break None;
        }
        if n == 0 {
            break Some(ControlFlow::Continue(()));
        }
        if let ControlFlow::Break(b) = chunk(&buf[..n as usize]) {
            break Some(ControlFlow::Break(b));
        }
    };
    // SAFETY: closes the descriptor opened above, once.
    unsafe { libc::close(fd) };
    result
}

/// The page size backing `[addr, addr + len)`: when every mapping in the
/// range is hugetlbfs memory, its `KernelPageSize` from `/proc/self/smaps`
/// (2 MiB or 1 GiB), else the base page size. A range with nothing mapped
/// yet gets the base page size.
///
/// `/proc/self/maps` is consulted first: generating `smaps` walks the page
/// tables of every mapping, which is far too slow to do for each
/// registration of ordinary memory.
pub(crate) fn backing_page_size(addr: usize, len: usize) -> usize {
    let base = page_size();
    let end = addr.saturating_add(len);
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return base;
    };
    let overlapping = || {
        maps.lines().filter_map(|line| {
            let (range, rest) = line.split_once(' ')?;
            let (lo, hi) = range.split_once('-')?;
            let lo = usize::from_str_radix(lo, 16).ok()?;
            let hi = usize::from_str_radix(hi, 16).ok()?;
            (lo < end && addr < hi).then_some(rest)
        })
    };
    let mut any = false;
    for rest in overlapping() {
        any = true;
        // The path is the sixth field; hugetlb memory is an anonymous
        // "/anon_hugepage" or a file on a hugetlbfs mount.
        let path = rest.split_whitespace().nth(4).unwrap_or("");
        if !(path == "/anon_hugepage" || is_on_hugetlbfs(path)) {
            return base;
        }
    }
    if !any {
        return base;
    }
    kernel_page_size(addr, end).unwrap_or(base)
}

fn is_on_hugetlbfs(path: &str) -> bool {
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    let Ok(c_path) = std::ffi::CString::new(path) else {
        return false;
    };
    if !path.starts_with('/') {
        return false;
    }
    // SAFETY: a NUL-terminated path and a statfs buffer we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == HUGETLBFS_MAGIC
}

/// The `KernelPageSize` all mappings overlapping `[addr, end)` agree on.
fn kernel_page_size(addr: usize, end: usize) -> Option<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut size = None;
    let mut in_range = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((lo, hi)) = range.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            in_range = lo < end && addr < hi;
        } else if in_range && let Some(kib) = line.strip_prefix("KernelPageSize:") {
            let bytes = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()?
                * 1024;
            match size {
                None => size = Some(bytes),
                Some(s) if s != bytes => return None,
                Some(_) => {}
            }
        }
    }
    size
}

/// Byte-at-a-time parser of `/proc/self/maps` lines (`start-end ...`).
#[derive(Default)]
struct MapsParser {
    field: u8,
    start: usize,
    end: usize,
}

impl MapsParser {
    /// Feeds one byte; returns the length when a line for `addr` ends.
    fn feed(&mut self, byte: u8, addr: usize) -> Option<usize> {
        match (self.field, byte) {
            (_, b'\n') => {
                let hit = (self.field >= 2 && self.start == addr).then(|| self.end - self.start);
                *self = Self::default();
                return hit;
            }
            (0, b'-') => self.field = 1,
            (1, b' ') => self.field = 2,
            (0 | 1, _) => {
                let digit = (byte as char).to_digit(16).unwrap_or(0) as usize;
                let value = if self.field == 0 {
                    &mut self.start
                } else {
                    &mut self.end
                };
                *value = (*value << 4) | digit;
            }
            _ => {}
        }
        None
    }
}

/// Locks `[addr, addr + len)` in memory (the userspace stand-in for pinning).
pub(crate) fn mlock(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: mlock changes residency, not contents or layout.
    let rc = unsafe { libc::mlock(addr as *const libc::c_void, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unlocks `[addr, addr + len)`. Errors are ignored: the range may already
/// be unmapped (an invalidation reported after the fact), which unlocks it.
pub(crate) fn munlock(addr: usize, len: usize) {
    // SAFETY: munlock changes residency, not contents or layout.
    unsafe { libc::munlock(addr as *const libc::c_void, len) };
}

/// Reader of `/proc/self/pagemap`: the page frame behind each virtual page.
///
/// Frame numbers read as zero without `CAP_SYS_ADMIN`; the reader reports
/// whether they are real.
#[derive(Debug)]
pub(crate) struct Pagemap {
    file: Option<File>,
    frames_visible: bool,
}

/// One pagemap entry: bit 63 present, bits 0-54 the frame number.
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_PFN_MASK: u64 = (1 << 55) - 1;

impl Pagemap {
    pub(crate) fn open() -> Self {
        let file = File::open("/proc/self/pagemap").ok();
        let mut pagemap = Self {
            file,
            frames_visible: false,
        };
        // Probe with a page we know is present: our own stack.
        let probe = 0u64;
        let addr = &probe as *const u64 as usize;
        let mut frame = [0u64];
        pagemap.frames_visible =
            pagemap.read(addr & !(page_size() - 1), &mut frame) && frame[0] != 0;
        pagemap
    }

    /// Whether frame numbers are real (not hidden as zero).
    pub(crate) fn frames_visible(&self) -> bool {
        self.frames_visible
    }

    /// Fills `frames` with the frame numbers of the pages from `addr` on
    /// (0 where a page is not present or frames are hidden). Returns false
    /// if pagemap is unreadable.
    pub(crate) fn read(&self, addr: usize, frames: &mut [u64]) -> bool {
        self.read_raw(addr, frames, |entry| {
            if entry & PAGEMAP_PRESENT != 0 {
                entry & PAGEMAP_PFN_MASK
            } else {
                0
            }
        })
    }

    /// Fills `present` with 1 for each page from `addr` on that the CPU
    /// page table maps (visible without privileges), else 0. Returns false
    /// if pagemap is unreadable.
    pub(crate) fn present(&self, addr: usize, present: &mut [u64]) -> bool {
        self.read_raw(addr, present, |entry| {
            u64::from(entry & PAGEMAP_PRESENT != 0)
        })
    }

    fn read_raw(&self, addr: usize, out: &mut [u64], decode: impl Fn(u64) -> u64) -> bool {
        let Some(file) = &self.file else { return false };
        let offset = (addr / page_size() * 8) as u64;
        // SAFETY: u64 has no invalid bit patterns and the slice is exactly
        // 8 * len bytes of initialised memory we own exclusively.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len() * 8) };
        if file.read_exact_at(bytes, offset).is_err() {
            return false;
        }
        for entry in out.iter_mut() {
            *entry = decode(*entry);
        }
        true
    }
}
