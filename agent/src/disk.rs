//! The agent's flash: a NOR flash kept in a file, so that the firmware's journal and config store
//! run unchanged on a Linux board's disk (SD card, eMMC, SSD).
//!
//! [`FileFlash`] follows the rules of the firmware's
//! [`RamFlash`](fabmeter_firmware::storage::RamFlash): erase sets whole sectors to `0xFF`, a write
//! is 4-byte aligned and may only program erased bytes. Every write and erase goes to the file and
//! is followed by `fdatasync` before it returns, so once the journal's `append` returned the event
//! is on the disk: a SIGKILL or a power cut after it loses nothing. The firmware's journal recovery
//! (CRC per record, sector sequence numbers) then handles a write torn by a power cut exactly as on
//! a microcontroller's flash.
//!
//! The file holds the whole flash (no sparse tricks); a copy is kept in RAM for reads.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use fabmeter_firmware::storage::MIN_SECTOR;

/// Erase sector of the agent's flash file, bytes.
pub const DISK_SECTOR: usize = 4096;

/// Errors of [`FileFlash`] operations (what the journal sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFlashError {
    /// Misaligned offset or length.
    NotAligned,
    /// Outside the flash.
    OutOfBounds,
    /// A write over bytes that were not erased.
    NotErased,
    /// The file could not be written or synced (disk full, I/O error): the operation may not be
    /// durable.
    Io,
}

impl NorFlashError for FileFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            FileFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            FileFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            FileFlashError::NotErased | FileFlashError::Io => NorFlashErrorKind::Other,
        }
    }
}

/// Why a flash file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file or its directory could not be created, read or synced.
    #[error("{path}: {source}; check that the agent's data_dir exists and is writable by the agent's user")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is larger than the flash: it was made for another geometry.
    #[error("{path}: {found} bytes, larger than the {expected}-byte flash this agent uses; it was not written by this agent version: move it away (its unsent events are lost) and start again")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The flash capacity.
        expected: u64,
    },
}

/// A NOR flash in a file, every change synced to the disk before it returns.
#[derive(Debug)]
pub struct FileFlash {
    file: File,
    data: Vec<u8>,
    path: PathBuf,
    /// Writes and erases done (each one synced).
    syncs: u64,
    /// The file was shorter than the flash when opened (a torn creation or truncation) and was
    /// padded with erased bytes.
    repaired: bool,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl FileFlash {
    /// Opens (or creates, erased) the flash file `path` of `sectors` × [`DISK_SECTOR`] bytes.
    ///
    /// A file shorter than the flash (a creation cut short, a truncated copy) is padded with erased
    /// bytes: the journal's recovery then keeps every intact record and skips torn ones. A file
    /// longer than the flash is refused.
    pub fn open(path: &Path, sectors: usize) -> Result<FileFlash, OpenError> {
        let capacity = sectors * DISK_SECTOR;
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len > capacity as u64 {
            return Err(OpenError::TooLarge {
                path: path.to_path_buf(),
                found: len,
                expected: capacity as u64,
            });
        }
        let mut data = vec![0xFF; capacity];
        file.read_exact_at(&mut data[..len as usize], 0)
            .map_err(io_err(path))?;
        let repaired = existed && len < capacity as u64;
        if len < capacity as u64 {
            file.write_all_at(&data[len as usize..], len)
                .and_then(|_| file.sync_all())
                .map_err(io_err(path))?;
            if !existed {
                // The new file's directory entry must be durable too.
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(io_err(dir))?;
                }
            }
        }
        Ok(FileFlash {
            file,
            data,
            path: path.to_path_buf(),
            syncs: 0,
            repaired,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes and erases done since opening, each followed by `fdatasync`.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Whether the file was shorter than the flash when opened and was padded.
    pub fn repaired(&self) -> bool {
        self.repaired
    }

    fn persist(&mut self, start: usize, end: usize) -> Result<(), FileFlashError> {
        self.syncs += 1;
        self.file
            .write_all_at(&self.data[start..end], start as u64)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| {
                tracing::error!(file = %self.path.display(), "flash file write failed: {e}");
                FileFlashError::Io
            })
    }
}

impl ErrorType for FileFlash {
    type Error = FileFlashError;
}

impl ReadNorFlash for FileFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FileFlashError> {
        let start = offset as usize;
        let end = start
            .checked_add(bytes.len())
            .filter(|&e| e <= self.data.len())
            .ok_or(FileFlashError::OutOfBounds)?;
        bytes.copy_from_slice(&self.data[start..end]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.data.len()
    }
}

impl NorFlash for FileFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = DISK_SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), FileFlashError> {
        let (from, to) = (from as usize, to as usize);
        if !from.is_multiple_of(DISK_SECTOR) || !to.is_multiple_of(DISK_SECTOR) || from > to {
            return Err(FileFlashError::NotAligned);
        }
        if to > self.data.len() {
            return Err(FileFlashError::OutOfBounds);
        }
        self.data[from..to].fill(0xFF);
        self.persist(from, to)
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FileFlashError> {
        let start = offset as usize;
        if !start.is_multiple_of(4) || !bytes.len().is_multiple_of(4) {
            return Err(FileFlashError::NotAligned);
        }
        let end = start
            .checked_add(bytes.len())
            .filter(|&e| e <= self.data.len())
            .ok_or(FileFlashError::OutOfBounds)?;
        if self.data[start..end].iter().any(|&b| b != 0xFF) {
            return Err(FileFlashError::NotErased);
        }
        self.data[start..end].copy_from_slice(bytes);
        self.persist(start, end)
    }
}

const _: () = assert!(DISK_SECTOR >= MIN_SECTOR);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{new_device, AGENT_FLASH_SECTORS};
    use fabmeter_firmware::journal::EventKey;

    fn start(p: &Path) -> Result<Box<crate::run::AgentDevice>, String> {
        let flash = FileFlash::open(p, AGENT_FLASH_SECTORS).map_err(|e| e.to_string())?;
        new_device(
            flash,
            crate::input::Relay::None,
            &crate::sim::demo_badge_key(),
            0,
        )
    }

    #[test]
    fn behaves_like_nor_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.flash");
        let mut f = FileFlash::open(&p, 4).unwrap();
        assert!(!f.repaired());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4 * 4096);
        f.write(4092, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(f.write(4092, &[0; 4]), Err(FileFlashError::NotErased));
        assert_eq!(f.write(2, &[0; 4]), Err(FileFlashError::NotAligned));
        assert_eq!(f.write(16384, &[0; 4]), Err(FileFlashError::OutOfBounds));
        assert_eq!(f.erase(1, 4096), Err(FileFlashError::NotAligned));
        f.erase(4096, 8192).unwrap();
        assert_eq!(f.syncs(), 2);
        drop(f);
        let mut f = FileFlash::open(&p, 4).unwrap();
        let mut b = [0u8; 8];
        f.read(4092, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn a_journal_on_disk_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.flash");
        let mut dev = start(&p).unwrap();
        assert_eq!(dev.boot(), 1);
        for t in 1..=5u64 {
            dev.on_badge(t * 10_000, &[4, 1, 2, t as u8]);
        }
        let before: Vec<EventKey> = dev.journal().entries().iter().map(|e| e.key).collect();
        assert!(before.len() >= 3, "{before:?}");
        // Acknowledge the first one, as after a PUBACK.
        dev.on_puback(before[0]);
        drop(dev); // like a SIGKILL: nothing is flushed at the end
        let dev = start(&p).unwrap();
        assert_eq!(dev.boot(), 2, "the boot counter is persisted");
        let after: Vec<EventKey> = dev.journal().entries().iter().map(|e| e.key).collect();
        // Everything not acknowledged, in order, then the new boot's counters.
        assert_eq!(&after[..before.len() - 1], &before[1..]);
        assert_eq!(after[before.len() - 1], EventKey { boot: 2, seq: 1 });
    }

    /// Journal write throughput with a sync per write: each event is one synced append, its
    /// acknowledgement another. Prints events/s (docs/AGENT.md quotes it).
    #[test]
    fn journal_throughput_with_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.flash");
        let mut dev = start(&p).unwrap();
        let n = 300u64;
        let t = std::time::Instant::now();
        for i in 0..n {
            dev.on_badge(1000 + i * 1000, &[4, 9, (i >> 8) as u8, i as u8]);
        }
        let appended = t.elapsed();
        let keys: Vec<EventKey> = dev.journal().entries().iter().map(|e| e.key).collect();
        let t = std::time::Instant::now();
        for k in &keys {
            dev.on_puback(*k);
        }
        let acked = t.elapsed();
        assert!(dev.journal().is_empty());
        eprintln!(
            "journal on disk: {:.0} events/s appended, {:.0} acks/s, {:.0} events/s through (append + ack)",
            n as f64 / appended.as_secs_f64(),
            keys.len() as f64 / acked.as_secs_f64(),
            n as f64 / (appended + acked).as_secs_f64()
        );
    }

    #[test]
    fn a_truncated_file_is_padded_and_a_garbled_one_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.flash");
        let mut dev = start(&p).unwrap();
        for t in 1..=4u64 {
            dev.on_badge(t * 10_000, &[4, 1, 2, t as u8]);
        }
        let n = dev.journal().len();
        drop(dev);
        // Cut the file in the middle of the journal's region: later records are gone, the state
        // (boot counter) record near the start is kept.
        let bytes = std::fs::read(&p).unwrap();
        let first_used = bytes
            .iter()
            .rposition(|&b| b != 0xFF)
            .expect("something was written");
        std::fs::write(&p, &bytes[..first_used - 40]).unwrap();
        let f = FileFlash::open(&p, AGENT_FLASH_SECTORS).unwrap();
        assert!(f.repaired());
        let dev = new_device(
            f,
            crate::input::Relay::None,
            &crate::sim::demo_badge_key(),
            0,
        )
        .unwrap();
        assert!(dev.boot() >= 2, "boot {}", dev.boot());
        assert!(dev.journal().len() <= n + 1);
        drop(dev);

        // Garbage over the whole file: nothing readable, but the agent starts (an empty journal).
        let mut g = vec![0u8; AGENT_FLASH_SECTORS * DISK_SECTOR];
        let mut x = 0x1234_5678u32;
        for b in &mut g {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        std::fs::write(&p, &g).unwrap();
        let dev = start(&p);
        match dev {
            Ok(d) => assert_eq!(d.journal().entries()[0].key.seq, 1),
            Err(e) => assert!(e.contains("m.flash"), "{e}"),
        }

        // A file too large for this geometry is refused with a clear error.
        std::fs::write(&p, vec![0xFF; (AGENT_FLASH_SECTORS + 1) * DISK_SECTOR]).unwrap();
        let e = FileFlash::open(&p, AGENT_FLASH_SECTORS).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }
}
