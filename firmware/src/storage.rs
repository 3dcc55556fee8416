//! Non-volatile storage: the flash layout, CRC-32, the A/B config store, and a RAM flash for tests.
//!
//! Everything the device keeps across reboots goes through one
//! [`NorFlash`] (the MCU's internal flash, an SPI NOR chip, or
//! [`RamFlash`] on the host). The flash is split into regions of whole erase sectors:
//!
//! ```text
//! | config slot A | config slot B | journal sector 0 | journal sector 1 | ... | journal sector M-1 |
//! ```
//!
//! * The two config slots hold the raw bytes of the last applied `config` payload (so its
//!   [`ConfigHash`](fabmeter_protocol::ConfigHash) is the one the collector computes), written A/B:
//!   the slot not holding the newest copy is erased, the payload written, and the 16-byte header
//!   (magic, generation, length, CRC) written **last**. A cut at any step leaves the previous slot
//!   valid and newest.
//! * The journal sectors hold the event log and the device's persisted state (boot counter, lifetime
//!   counters): see [`crate::journal`].
//!
//! All records are aligned to [`ALIGN`] bytes, so any flash whose `WRITE_SIZE` and `READ_SIZE` divide
//! 16 works.

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};
use fabmeter_protocol::MAX_CONFIG_PAYLOAD;

/// Alignment of every record and header in flash, in bytes.
pub const ALIGN: usize = 16;

/// Smallest erase sector the layout supports.
pub const MIN_SECTOR: usize = 1024;

/// Why a storage operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageError {
    /// The flash driver reported an error (power cut, bus error, out of bounds).
    Flash(NorFlashErrorKind),
    /// The flash is too small or its write/read/erase sizes do not fit the layout.
    Geometry,
    /// A record does not fit (larger than the journal accepts).
    TooLarge,
    /// The journal has no physical room left even after compaction.
    Full,
    /// A record read back from flash failed its CRC check.
    Corrupt,
}

impl StorageError {
    /// A short description, for a `fault` detail (without `core::fmt`).
    pub const fn as_str(self) -> &'static str {
        match self {
            StorageError::Flash(_) => "flash error",
            StorageError::Geometry => "flash geometry does not fit the layout",
            StorageError::TooLarge => "record too large",
            StorageError::Full => "storage full",
            StorageError::Corrupt => "record corrupt (CRC)",
        }
    }
}

impl<E: NorFlashError> From<E> for StorageError {
    fn from(e: E) -> Self {
        StorageError::Flash(e.kind())
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib), computed incrementally.
#[derive(Debug, Clone, Copy)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    /// A new computation.
    pub const fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        let mut c = self.0;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                let mask = (c & 1).wrapping_neg();
                c = (c >> 1) ^ (0xEDB8_8320 & mask);
            }
        }
        self.0 = c;
    }
    /// The CRC of everything fed.
    pub const fn finish(self) -> u32 {
        !self.0
    }
}

/// CRC-32 of one buffer.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(data);
    c.finish()
}

/// Rounds `n` up to a multiple of [`ALIGN`].
pub const fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Where each region lies, in erase sectors of the flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Erase sector size in bytes.
    pub sector: usize,
    /// Sectors per config slot.
    pub config_slot_sectors: u32,
    /// First journal sector (after the two config slots).
    pub journal_first: u32,
    /// Number of journal sectors.
    pub journal_sectors: u32,
}

impl Layout {
    /// The layout for a flash of this type and capacity: two config slots, the rest for the journal.
    pub fn for_flash<S: NorFlash>(flash: &S) -> Result<Layout, StorageError> {
        let sector = S::ERASE_SIZE;
        if sector < MIN_SECTOR
            || !sector.is_multiple_of(ALIGN)
            || S::WRITE_SIZE == 0
            || !ALIGN.is_multiple_of(S::WRITE_SIZE)
            || S::READ_SIZE == 0
            || !ALIGN.is_multiple_of(S::READ_SIZE)
        {
            return Err(StorageError::Geometry);
        }
        let total = u32::try_from(flash.capacity() / sector).map_err(|_| StorageError::Geometry)?;
        let slot = u32::try_from((ALIGN + MAX_CONFIG_PAYLOAD).div_ceil(sector))
            .map_err(|_| StorageError::Geometry)?;
        let journal_sectors = total.checked_sub(2 * slot).ok_or(StorageError::Geometry)?;
        if journal_sectors < 3 {
            return Err(StorageError::Geometry);
        }
        Ok(Layout {
            sector,
            config_slot_sectors: slot,
            journal_first: 2 * slot,
            journal_sectors,
        })
    }

    /// Byte offset of a sector.
    pub fn sector_offset(&self, sector: u32) -> u32 {
        sector * self.sector as u32
    }
}

const CONFIG_MAGIC: u32 = 0x464d_4331; // "FMC1"

/// The A/B store of the last applied config payload (raw bytes).
#[derive(Debug, Clone, Copy)]
pub struct ConfigStore {
    layout: Layout,
    /// (slot, generation) of the newest valid copy.
    newest: Option<(u32, u32)>,
}

impl ConfigStore {
    /// Finds the newest valid copy.
    pub fn open<S: NorFlash>(flash: &mut S, layout: Layout) -> Result<ConfigStore, StorageError> {
        let mut store = ConfigStore {
            layout,
            newest: None,
        };
        for slot in 0..2 {
            if let Some((generation, _)) = store.check_slot(flash, slot)? {
                if store.newest.is_none_or(|(_, g)| generation > g) {
                    store.newest = Some((slot, generation));
                }
            }
        }
        Ok(store)
    }

    fn slot_offset(&self, slot: u32) -> u32 {
        self.layout
            .sector_offset(slot * self.layout.config_slot_sectors)
    }

    /// Validates a slot: returns (generation, length) when its header and CRC are good.
    fn check_slot<S: NorFlash>(
        &self,
        flash: &mut S,
        slot: u32,
    ) -> Result<Option<(u32, usize)>, StorageError> {
        let base = self.slot_offset(slot);
        let mut h = [0u8; ALIGN];
        flash.read(base, &mut h)?;
        let magic = le32(&h[0..4]);
        let generation = le32(&h[4..8]);
        let len = le32(&h[8..12]) as usize;
        if magic != CONFIG_MAGIC || len == 0 || len > MAX_CONFIG_PAYLOAD {
            return Ok(None);
        }
        let mut crc = Crc32::new();
        crc.update(&h[4..12]);
        let mut chunk = [0u8; 256];
        let mut done = 0usize;
        let padded = align_up(len);
        while done < padded {
            let n = (padded - done).min(chunk.len());
            flash.read(base + (ALIGN + done) as u32, &mut chunk[..n])?;
            let useful = n.min(len.saturating_sub(done));
            crc.update(&chunk[..useful]);
            done += n;
        }
        Ok((crc.finish() == le32(&h[12..16])).then_some((generation, len)))
    }

    /// Whether a config was ever stored.
    pub fn is_empty(&self) -> bool {
        self.newest.is_none()
    }

    /// Reads the newest stored payload into `buf`; returns its length, or `None` if none is stored.
    pub fn load<S: NorFlash>(
        &self,
        flash: &mut S,
        buf: &mut [u8],
    ) -> Result<Option<usize>, StorageError> {
        let Some((slot, _)) = self.newest else {
            return Ok(None);
        };
        let Some((_, len)) = self.check_slot(flash, slot)? else {
            return Err(StorageError::Corrupt);
        };
        let padded = align_up(len);
        if buf.len() < padded {
            return Err(StorageError::TooLarge);
        }
        flash.read(self.slot_offset(slot) + ALIGN as u32, &mut buf[..padded])?;
        Ok(Some(len))
    }

    /// Stores a payload in the other slot; the header goes last, so a cut keeps the previous copy.
    pub fn store<S: NorFlash>(
        &mut self,
        flash: &mut S,
        payload: &[u8],
    ) -> Result<(), StorageError> {
        if payload.is_empty() || payload.len() > MAX_CONFIG_PAYLOAD {
            return Err(StorageError::TooLarge);
        }
        let (slot, generation) = match self.newest {
            Some((s, g)) => (1 - s, g.wrapping_add(1)),
            None => (0, 1),
        };
        let base = self.slot_offset(slot);
        let end = base + self.layout.sector_offset(self.layout.config_slot_sectors);
        flash.erase(base, end)?;
        let mut chunk = [0xFFu8; 256];
        let mut done = 0usize;
        while done < payload.len() {
            let n = (payload.len() - done).min(chunk.len());
            chunk.fill(0xFF);
            chunk[..n].copy_from_slice(&payload[done..done + n]);
            flash.write(base + (ALIGN + done) as u32, &chunk[..align_up(n)])?;
            done += n;
        }
        let mut h = [0u8; ALIGN];
        h[0..4].copy_from_slice(&CONFIG_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&generation.to_le_bytes());
        h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut crc = Crc32::new();
        crc.update(&h[4..12]);
        crc.update(payload);
        h[12..16].copy_from_slice(&crc.finish().to_le_bytes());
        flash.write(base, &h)?;
        self.newest = Some((slot, generation));
        Ok(())
    }
}

pub(crate) fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Errors of [`RamFlash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamFlashError {
    /// Misaligned offset or length.
    NotAligned,
    /// Outside the flash.
    OutOfBounds,
    /// A write over bytes that were not erased (NOR with ECC forbids it).
    NotErased,
    /// The power was cut (injected); nothing works until [`RamFlash::power_on`].
    PowerCut,
}

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            RamFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            RamFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            RamFlashError::NotErased | RamFlashError::PowerCut => NorFlashErrorKind::Other,
        }
    }
}

/// A NOR flash in RAM, for host tests and simulation: `N` bytes, erase sectors of `SECTOR` bytes,
/// 4-byte writes that may only program erased (0xFF) bytes, like internal MCU flash with ECC.
///
/// [`RamFlash::cut_power_after`] injects a power cut: after that many more successful writes or
/// erases, the next one is **torn** (only its first half takes effect) and fails, and every later
/// operation fails until [`RamFlash::power_on`], which models the reboot.
#[derive(Clone)]
pub struct RamFlash<const N: usize, const SECTOR: usize> {
    data: [u8; N],
    ops: u32,
    cut_after: Option<u32>,
    dead: bool,
}

impl<const N: usize, const SECTOR: usize> Default for RamFlash<N, SECTOR> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const SECTOR: usize> RamFlash<N, SECTOR> {
    /// An erased flash.
    pub const fn new() -> Self {
        RamFlash {
            data: [0xFF; N],
            ops: 0,
            cut_after: None,
            dead: false,
        }
    }
    /// Writes and erases performed so far (including a torn one).
    pub fn ops(&self) -> u32 {
        self.ops
    }
    /// After `n` more successful writes or erases, tear the next one and cut the power.
    pub fn cut_power_after(&mut self, n: u32) {
        self.cut_after = Some(n);
    }
    /// Whether the power is cut.
    pub fn is_dead(&self) -> bool {
        self.dead
    }
    /// Power comes back (the device reboots); no cut is pending any more.
    pub fn power_on(&mut self) {
        self.dead = false;
        self.cut_after = None;
    }
    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Counts one operation; returns true if it must be torn.
    fn step(&mut self) -> Result<bool, RamFlashError> {
        if self.dead {
            return Err(RamFlashError::PowerCut);
        }
        self.ops += 1;
        match &mut self.cut_after {
            Some(0) => {
                self.dead = true;
                Ok(true)
            }
            Some(n) => {
                *n -= 1;
                Ok(false)
            }
            None => Ok(false),
        }
    }
}

impl<const N: usize, const SECTOR: usize> embedded_storage::nor_flash::ErrorType
    for RamFlash<N, SECTOR>
{
    type Error = RamFlashError;
}

impl<const N: usize, const SECTOR: usize> ReadNorFlash for RamFlash<N, SECTOR> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), RamFlashError> {
        if self.dead {
            return Err(RamFlashError::PowerCut);
        }
        let start = offset as usize;
        let end = start
            .checked_add(bytes.len())
            .filter(|&e| e <= N)
            .ok_or(RamFlashError::OutOfBounds)?;
        bytes.copy_from_slice(&self.data[start..end]);
        Ok(())
    }
    fn capacity(&self) -> usize {
        N
    }
}

impl<const N: usize, const SECTOR: usize> NorFlash for RamFlash<N, SECTOR> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), RamFlashError> {
        let (from, to) = (from as usize, to as usize);
        if from % SECTOR != 0 || to % SECTOR != 0 || from > to {
            return Err(RamFlashError::NotAligned);
        }
        if to > N {
            return Err(RamFlashError::OutOfBounds);
        }
        let torn = self.step()?;
        if torn {
            let mid = from + (to - from) / 2;
            self.data[from..mid].fill(0xFF);
            return Err(RamFlashError::PowerCut);
        }
        self.data[from..to].fill(0xFF);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RamFlashError> {
        let start = offset as usize;
        if !start.is_multiple_of(4) || !bytes.len().is_multiple_of(4) {
            return Err(RamFlashError::NotAligned);
        }
        let end = start
            .checked_add(bytes.len())
            .filter(|&e| e <= N)
            .ok_or(RamFlashError::OutOfBounds)?;
        if self.data[start..end].iter().any(|&b| b != 0xFF) {
            return Err(RamFlashError::NotErased);
        }
        let torn = self.step()?;
        if torn {
            let half = (bytes.len() / 2) & !3;
            self.data[start..start + half].copy_from_slice(&bytes[..half]);
            return Err(RamFlashError::PowerCut);
        }
        self.data[start..end].copy_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Flash = RamFlash<{ 16 * 1024 }, 1024>;

    #[test]
    fn crc32_matches_zlib() {
        // python3 -c "import zlib;print(hex(zlib.crc32(b'123456789')))"
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn ram_flash_refuses_overwrite_and_tears() {
        let mut f = Flash::new();
        f.write(0, &[1, 2, 3, 4]).unwrap();
        assert_eq!(f.write(0, &[0, 0, 0, 0]), Err(RamFlashError::NotErased));
        f.cut_power_after(0);
        assert_eq!(f.write(16, &[7; 16]), Err(RamFlashError::PowerCut));
        assert_eq!(
            &f.bytes()[16..32],
            &[7, 7, 7, 7, 7, 7, 7, 7, 255, 255, 255, 255, 255, 255, 255, 255]
        );
        assert!(f.read(0, &mut [0; 4]).is_err());
        f.power_on();
        assert!(f.read(0, &mut [0; 4]).is_ok());
    }

    #[test]
    fn config_store_survives_a_cut_at_every_step() {
        let layout = Layout::for_flash(&Flash::new()).unwrap();
        let old = b"{\"old\":1}";
        let new = [b'n'; 1000];
        let mut base = Flash::new();
        ConfigStore::open(&mut base, layout)
            .unwrap()
            .store(&mut base, old)
            .unwrap();
        let mut n = 0;
        loop {
            let mut f = base.clone();
            f.cut_power_after(n);
            let mut s = ConfigStore::open(&mut f, layout).unwrap();
            let done = s.store(&mut f, &new).is_ok();
            f.power_on();
            let s = ConfigStore::open(&mut f, layout).unwrap();
            let mut buf = [0u8; 4096];
            let len = s.load(&mut f, &mut buf).unwrap().unwrap();
            if done {
                assert_eq!(&buf[..len], &new[..]);
                break;
            }
            assert!(
                buf[..len] == old[..] || buf[..len] == new[..],
                "cut after {n}"
            );
            n += 1;
        }
        assert!(n >= 3);
    }
}
