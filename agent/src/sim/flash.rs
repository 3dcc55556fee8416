//! A sparse NOR flash in RAM: erased sectors take no memory, so thousands of simulated devices fit
//! in one process.
//!
//! Same rules as the firmware's [`RamFlash`](fabmeter_firmware::storage::RamFlash) (4-byte writes
//! that may only program erased bytes, whole-sector erases), but each sector is allocated on its
//! first write and freed when erased. A device with a large journal region costs only the sectors
//! its journal currently uses.

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// Errors of [`SparseFlash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseFlashError {
    /// Misaligned offset or length.
    NotAligned,
    /// Outside the flash.
    OutOfBounds,
    /// A write over bytes that were not erased.
    NotErased,
}

impl NorFlashError for SparseFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            SparseFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            SparseFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            SparseFlashError::NotErased => NorFlashErrorKind::Other,
        }
    }
}

/// A NOR flash of `sectors × SECTOR` bytes whose erased sectors are not allocated.
#[derive(Debug, Clone)]
pub struct SparseFlash<const SECTOR: usize> {
    sectors: Vec<Option<Box<[u8]>>>,
}

impl<const SECTOR: usize> SparseFlash<SECTOR> {
    /// An erased flash of `sectors` erase sectors.
    pub fn new(sectors: usize) -> Self {
        SparseFlash {
            sectors: vec![None; sectors],
        }
    }

    /// Bytes currently allocated (sectors holding data).
    pub fn allocated(&self) -> usize {
        self.sectors.iter().filter(|s| s.is_some()).count() * SECTOR
    }

    fn check(&self, offset: u32, len: usize) -> Result<usize, SparseFlashError> {
        let start = offset as usize;
        start
            .checked_add(len)
            .filter(|&e| e <= self.sectors.len() * SECTOR)
            .ok_or(SparseFlashError::OutOfBounds)?;
        Ok(start)
    }
}

impl<const SECTOR: usize> ErrorType for SparseFlash<SECTOR> {
    type Error = SparseFlashError;
}

impl<const SECTOR: usize> ReadNorFlash for SparseFlash<SECTOR> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SparseFlashError> {
        let mut pos = self.check(offset, bytes.len())?;
        let mut done = 0;
        while done < bytes.len() {
            let (s, within) = (pos / SECTOR, pos % SECTOR);
            let n = (SECTOR - within).min(bytes.len() - done);
            let out = &mut bytes[done..done + n];
            match &self.sectors[s] {
                Some(data) => out.copy_from_slice(&data[within..within + n]),
                None => out.fill(0xFF),
            }
            done += n;
            pos += n;
        }
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.sectors.len() * SECTOR
    }
}

impl<const SECTOR: usize> NorFlash for SparseFlash<SECTOR> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), SparseFlashError> {
        let (from, to) = (from as usize, to as usize);
        if from % SECTOR != 0 || to % SECTOR != 0 || from > to {
            return Err(SparseFlashError::NotAligned);
        }
        if to > self.sectors.len() * SECTOR {
            return Err(SparseFlashError::OutOfBounds);
        }
        for s in &mut self.sectors[from / SECTOR..to / SECTOR] {
            *s = None;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SparseFlashError> {
        let start = self.check(offset, bytes.len())?;
        if !start.is_multiple_of(4) || !bytes.len().is_multiple_of(4) {
            return Err(SparseFlashError::NotAligned);
        }
        // Check everything first: a refused write changes nothing.
        let mut pos = start;
        let mut done = 0;
        while done < bytes.len() {
            let (s, within) = (pos / SECTOR, pos % SECTOR);
            let n = (SECTOR - within).min(bytes.len() - done);
            if let Some(data) = &self.sectors[s] {
                if data[within..within + n].iter().any(|&b| b != 0xFF) {
                    return Err(SparseFlashError::NotErased);
                }
            }
            done += n;
            pos += n;
        }
        let mut pos = start;
        let mut done = 0;
        while done < bytes.len() {
            let (s, within) = (pos / SECTOR, pos % SECTOR);
            let n = (SECTOR - within).min(bytes.len() - done);
            let data = self.sectors[s].get_or_insert_with(|| vec![0xFF; SECTOR].into_boxed_slice());
            data[within..within + n].copy_from_slice(&bytes[done..done + n]);
            done += n;
            pos += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_nor() {
        let mut f = SparseFlash::<1024>::new(4);
        assert_eq!(f.allocated(), 0);
        f.write(1020, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(f.allocated(), 2048);
        let mut b = [0u8; 12];
        f.read(1016, &mut b).unwrap();
        assert_eq!(b, [0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(f.write(1020, &[0; 4]), Err(SparseFlashError::NotErased));
        assert_eq!(f.write(1, &[0; 4]), Err(SparseFlashError::NotAligned));
        assert_eq!(f.write(4096, &[0; 4]), Err(SparseFlashError::OutOfBounds));
        f.erase(1024, 2048).unwrap();
        assert_eq!(f.allocated(), 1024);
        f.read(1024, &mut b[..4]).unwrap();
        assert_eq!(&b[..4], &[0xFF; 4]);
    }
}
