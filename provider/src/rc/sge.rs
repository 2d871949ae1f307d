//! Gathering from and scattering to a work request's SGE list.

use super::{AccessFlags, RegionError, Regions, Sge};

/// A work request's SGE list, kept in the request: up to two entries
/// inline (most work requests have one), so posting allocates nothing.
pub(crate) type Sges = smallvec::SmallVec<[Sge; 2]>;

/// Why a local SGE access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SgeError {
    /// Bad lkey, range or right, or memory that cannot be made present.
    Protection,
    /// More data than the SGEs hold.
    Length,
}

/// Total length of an SGE list.
pub(crate) fn total_len(sges: &[Sge]) -> u64 {
    sges.iter().map(|s| u64::from(s.length)).sum()
}

/// Walks the pieces of `sges` covering `[offset, offset + len)`.
fn for_each_piece(
    sges: &[Sge],
    mut offset: u64,
    mut len: usize,
    mut f: impl FnMut(&Sge, u64, usize, usize) -> Result<(), SgeError>,
) -> Result<(), SgeError> {
    let mut done = 0;
    for sge in sges {
        if len == 0 {
            break;
        }
        let sge_len = u64::from(sge.length);
        if offset >= sge_len {
            offset -= sge_len;
            continue;
        }
        let n = ((sge_len - offset) as usize).min(len);
        f(sge, sge.addr + offset, n, done)?;
        done += n;
        len -= n;
        offset = 0;
    }
    if len > 0 {
        Err(SgeError::Length)
    } else {
        Ok(())
    }
}

/// Copies `dst.len()` bytes starting at byte `offset` of the SGE list into
/// `dst`.
pub(crate) fn gather(
    regions: &dyn Regions,
    pd: u32,
    sges: &[Sge],
    offset: u64,
    dst: &mut [u8],
) -> Result<(), SgeError> {
    for_each_piece(sges, offset, dst.len(), |sge, va, n, at| {
        let mr = regions.lookup_mr(sge.lkey).ok_or(SgeError::Protection)?;
        mr.check(pd, va, n as u64, AccessFlags::empty())
            .map_err(|_| SgeError::Protection)?;
        mr.read(va, &mut dst[at..at + n])
            .map_err(|_| SgeError::Protection)
    })
}

/// Copies `src` into the SGE list starting at byte `offset`.
pub(crate) fn scatter(
    regions: &dyn Regions,
    pd: u32,
    sges: &[Sge],
    offset: u64,
    src: &[u8],
) -> Result<(), SgeError> {
    for_each_piece(sges, offset, src.len(), |sge, va, n, at| {
        let mr = regions.lookup_mr(sge.lkey).ok_or(SgeError::Protection)?;
        mr.check(pd, va, n as u64, AccessFlags::LOCAL_WRITE)
            .map_err(|_| SgeError::Protection)?;
        mr.write(va, &src[at..at + n]).map_err(|e| match e {
            RegionError::Protection | RegionError::Fault | RegionError::Misaligned => {
                SgeError::Protection
            }
        })
    })
}
