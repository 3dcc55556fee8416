//! The journal: a fixed-capacity log of encoded events, kept in flash until the broker acknowledged
//! them (or, with confirmations on, until the collector confirmed them: see [`crate::device`]), plus the device's persisted state (boot counter, lifetime counters, overflow counter).
//!
//! # Layout
//!
//! The journal owns `M` erase sectors (see [`crate::storage::Layout`]) used as a ring. A sector in use
//! starts with a 16-byte header `{magic "FMJ1", sector_seq, !sector_seq, crc}`; `sector_seq` grows by
//! one each time a sector is opened, so the sectors in use are the run of consecutive sequence
//! numbers ending at the highest one, the **tail**, where records are appended. Records are aligned to
//! 16 bytes: a 16-byte header `{0xA5, kind, len u16, a u32, b u32, crc32}` (the CRC covers the first
//! 12 header bytes and the payload) then the payload, padded. Kinds:
//!
//! | kind | a, b | payload |
//! |---|---|---|
//! | event | boot, seq | class, session, the event's JSON (ASCII) with `sent_uptime_ms = uptime_ms` |
//! | ack | boot, seq | none: the event was acknowledged (PUBACK, or the collector's confirmation) |
//! | drop | boot, seq | none: the full-journal policy dropped the event |
//! | state | 0, 0 | boot counter, lifetime counters, overflow counter; the newest one wins |
//! | retire | sector_seq | none: every sector up to `sector_seq` is dead |
//!
//! An event is **live** when an event record with its key (boot, seq) exists in a sector in use and no
//! ack or drop record with that key does. Live events are kept in RAM in key order, which is the
//! order in which they are sent (boot is persisted and bumped at every start, seq grows within a
//! boot).
//!
//! # Compaction
//!
//! When the tail is full the next sector of the ring is erased and opened. When fewer than two free
//! sectors remain, the oldest sector (the **head**) is compacted: its live events (and the newest
//! state record, if it lies there) are copied verbatim to the tail, a `retire(head)` record is
//! appended, and only then is the head erased.
//!
//! # Why a power cut at any write or erase loses nothing and duplicates nothing
//!
//! * A record is appended with one write; a torn record fails its CRC and is skipped on recovery
//!   (scanning resumes at the next 16-byte boundary: inside a record payload no 16-byte boundary holds
//!   the byte 0xA5, because event JSON is ASCII and the state payload puts a 0 tag at each boundary).
//!   After recovery, appends resume after the last non-erased byte of the tail.
//! * Until its write completed, an event was not journaled (`append` did not return `Ok`); once it
//!   completed, only an ack or drop record can kill it.
//! * A copy made by compaction has the same key as the original; recovery keeps one entry per key
//!   (the newest copy's location), so a cut in the middle of a compaction duplicates nothing. Copies
//!   are only made of live events, so every copy of an event precedes its ack: erasing sectors in
//!   order never resurrects an acknowledged event.
//! * A head is erased only after its `retire` record is durable; a torn erase leaves a sector whose
//!   sequence number is at most the highest retired one, which recovery ignores. A torn sector header
//!   is invalid, so the previous tail stays the tail.
//! * The state record is written before any event of a new boot exists, so the boot counter never
//!   goes back; recovery also takes the maximum with the boots found in the journal.
//!
//! The test `journal::tests::power_cut_at_every_step` replays a scenario with a cut injected after
//! each possible number of flash operations and checks exactly that.
//!
//! # When full (the overflow policy)
//!
//! Telemetry is never journaled. The journal holds at most `CAP` events; when a new event finds it
//! full, one victim is dropped, in this order of preference:
//!
//! 1. the oldest `session_progress` of a session whose later progress or `session_ended` is in the
//!    journal (its totals are contained in the later event);
//! 2. the oldest event that is not a session start, progress or end (state, access denied, fault,
//!    counters, command result);
//! 3. the oldest `session_started` whose `session_ended` is in the journal (the end carries the badge
//!    and the totals);
//! 4. otherwise the new event itself is dropped, unless it is a `session_ended`: then the oldest
//!    event that is not a `session_ended` goes. A `session_ended` is only ever dropped when the
//!    journal holds nothing but `session_ended` events.
//!
//! Each drop adds one to the overflow counter (`counters.journal_dropped`), persisted with the state.

use embedded_storage::nor_flash::NorFlash;
use fabmeter_protocol::message::EventBody;

use crate::storage::{align_up, le32, le64, Crc32, Layout, StorageError, ALIGN};

/// Longest event JSON the journal stores.
pub const MAX_EVENT_LEN: usize = 320;
const REC_HDR: usize = 16;
const EVENT_META: usize = 16;
/// Largest record, header and padding included.
pub const MAX_RECORD: usize = align_up(REC_HDR + EVENT_META + MAX_EVENT_LEN);
const SECTOR_HDR: usize = 16;
const STATE_LEN: usize = 64;
const SECTOR_MAGIC: u32 = 0x464d_4a31; // "FMJ1"
const REC_MAGIC: u8 = 0xA5;

const K_EVENT: u8 = 1;
const K_ACK: u8 = 2;
const K_DROP: u8 = 3;
const K_STATE: u8 = 4;
const K_RETIRE: u8 = 5;

/// The identity of an event on the wire: (boot, seq). Ordered by boot, then seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventKey {
    /// Boot counter.
    pub boot: u32,
    /// Sequence number within the boot.
    pub seq: u32,
}

/// What the overflow policy needs to know about an event, without parsing its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClass {
    /// `session_started`; its session id is its own seq.
    Started,
    /// `session_progress` of a session.
    Progress(u32),
    /// `session_ended` of a session.
    Ended(u32),
    /// Any other kind.
    Other,
}

impl EventClass {
    /// The class of an event body.
    pub fn of(body: &EventBody) -> EventClass {
        match body {
            EventBody::SessionStarted { .. } => EventClass::Started,
            EventBody::SessionProgress { session, .. } => EventClass::Progress(*session),
            EventBody::SessionEnded { session, .. } => EventClass::Ended(*session),
            _ => EventClass::Other,
        }
    }

    fn encode(self) -> (u8, u32) {
        match self {
            EventClass::Started => (1, 0),
            EventClass::Progress(s) => (2, s),
            EventClass::Ended(s) => (3, s),
            EventClass::Other => (0, 0),
        }
    }

    fn decode(tag: u8, session: u32) -> EventClass {
        match tag {
            1 => EventClass::Started,
            2 => EventClass::Progress(session),
            3 => EventClass::Ended(session),
            _ => EventClass::Other,
        }
    }

    /// The session this event belongs to, for a key of the same boot.
    fn session(self, key: EventKey) -> Option<EventKey> {
        match self {
            EventClass::Started => Some(key),
            EventClass::Progress(s) | EventClass::Ended(s) => Some(EventKey {
                boot: key.boot,
                seq: s,
            }),
            EventClass::Other => None,
        }
    }
}

/// A live event in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its key.
    pub key: EventKey,
    /// Its class.
    pub class: EventClass,
    loc_seq: u32,
    loc_off: u32,
}

/// What the device keeps across reboots besides events and config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersistedState {
    /// The boot counter (0 before the first start).
    pub boot: u32,
    /// Events dropped by the overflow policy, ever.
    pub journal_dropped: u32,
    /// Lifetime seconds powered (idle or busy).
    pub on_s: u64,
    /// Lifetime seconds busy.
    pub busy_s: u64,
    /// Lifetime energy, watt-hours.
    pub energy_wh: u64,
    /// The box id (docs/PROTOCOL.md `box`), 0 until one is drawn. Kept with the boot counter, so
    /// that both live and die together: a wiped state starts a new boot count with a new box id.
    pub box_id: u32,
}

impl PersistedState {
    fn encode(&self) -> [u8; STATE_LEN] {
        // Each 16-byte block starts with a 0 tag byte (see the module docs on resynchronisation).
        let mut p = [0u8; STATE_LEN];
        p[4..8].copy_from_slice(&self.boot.to_le_bytes());
        p[8..12].copy_from_slice(&self.journal_dropped.to_le_bytes());
        // Zero in states written before the field existed: no box id drawn yet.
        p[12..16].copy_from_slice(&self.box_id.to_le_bytes());
        p[24..32].copy_from_slice(&self.on_s.to_le_bytes());
        p[40..48].copy_from_slice(&self.busy_s.to_le_bytes());
        p[56..64].copy_from_slice(&self.energy_wh.to_le_bytes());
        p
    }
    fn decode(p: &[u8]) -> PersistedState {
        PersistedState {
            boot: le32(&p[4..8]),
            journal_dropped: le32(&p[8..12]),
            on_s: le64(&p[24..32]),
            busy_s: le64(&p[40..48]),
            energy_wh: le64(&p[56..64]),
            box_id: le32(&p[12..16]),
        }
    }
}

/// What became of an appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Journaled; nothing dropped.
    Stored,
    /// Journaled; this older event was dropped to make room.
    StoredDropping(EventKey),
    /// Not journaled: the policy dropped the new event itself.
    Dropped,
}

struct RecHdr {
    kind: u8,
    len: usize,
    a: u32,
    b: u32,
}

/// The journal. `CAP` is the most events it holds.
pub struct Journal<const CAP: usize> {
    first: u32,
    sectors: u32,
    size: usize,
    tail_phys: u32,
    tail_seq: u32,
    tail_off: usize,
    head_seq: u32,
    index: heapless::Vec<Entry, CAP>,
    state: PersistedState,
    state_loc: Option<(u32, u32)>,
}

impl<const CAP: usize> core::fmt::Debug for Journal<CAP> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Journal")
            .field("len", &self.index.len())
            .field("head_seq", &self.head_seq)
            .field("tail_seq", &self.tail_seq)
            .field("tail_off", &self.tail_off)
            .finish()
    }
}

impl<const CAP: usize> Journal<CAP> {
    /// Recovers the journal from flash (or formats an empty one).
    ///
    /// Fails with [`StorageError::Geometry`] when the journal region cannot hold `CAP` events of
    /// the largest size with room for compaction.
    pub fn open<S: NorFlash>(flash: &mut S, layout: Layout) -> Result<Self, StorageError> {
        let size = layout.sector;
        let m = layout.journal_sectors;
        let per_sector = (size - SECTOR_HDR - MAX_RECORD - ALIGN) / MAX_RECORD;
        let usable = (m as usize).saturating_sub(3) * per_sector;
        if per_sector < 2 || usable < CAP + 2 {
            return Err(StorageError::Geometry);
        }
        let mut j = Journal {
            first: layout.journal_first,
            sectors: m,
            size,
            tail_phys: 0,
            tail_seq: 0,
            tail_off: size,
            head_seq: 0,
            index: heapless::Vec::new(),
            state: PersistedState::default(),
            state_loc: None,
        };
        let mut buf = [0u8; MAX_RECORD];
        // Pass 1: the highest sector, and the highest retired sector.
        let mut retired = 0u32;
        let mut best: Option<(u32, u32)> = None;
        for p in 0..m {
            let Some(seq) = j.sector_header(flash, p)? else {
                continue;
            };
            if best.is_none_or(|(s, _)| seq > s) {
                best = Some((seq, p));
            }
            let mut off = SECTOR_HDR;
            while off < size {
                match j.read_record(flash, p, off, &mut buf)? {
                    Some(h) => {
                        if h.kind == K_RETIRE {
                            retired = retired.max(h.a);
                        }
                        off += align_up(REC_HDR + h.len);
                    }
                    None => off += ALIGN,
                }
            }
        }
        match best {
            Some((seq, p)) if seq > retired => {
                j.tail_seq = seq;
                j.tail_phys = p;
                j.head_seq = seq;
                while j.tail_seq - j.head_seq + 1 < m && j.head_seq - 1 > retired {
                    let prev = j.phys(j.head_seq - 1);
                    if j.sector_header(flash, prev)? != Some(j.head_seq - 1) {
                        break;
                    }
                    j.head_seq -= 1;
                }
            }
            _ => {
                j.format(flash, retired + 1)?;
                return Ok(j);
            }
        }
        // Pass 2: replay the sectors in use, oldest first.
        let mut boot_seen = 0u32;
        for seq in j.head_seq..=j.tail_seq {
            let p = j.phys(seq);
            let mut off = SECTOR_HDR;
            let mut dirty_end = SECTOR_HDR;
            while off < size {
                match j.read_record(flash, p, off, &mut buf)? {
                    Some(h) => {
                        let total = align_up(REC_HDR + h.len);
                        j.replay(seq, off as u32, &h, &buf[REC_HDR..REC_HDR + h.len]);
                        if h.kind == K_EVENT {
                            boot_seen = boot_seen.max(h.a);
                        }
                        off += total;
                        dirty_end = off;
                    }
                    None => {
                        if buf[..ALIGN].iter().any(|&b| b != 0xFF) {
                            dirty_end = off + ALIGN;
                        }
                        off += ALIGN;
                    }
                }
            }
            if seq == j.tail_seq {
                j.tail_off = dirty_end;
            }
        }
        j.state.boot = j.state.boot.max(boot_seen);
        // A cut in the middle of a compaction leaves too few free sectors: finish it now.
        j.keep_free(flash)?;
        Ok(j)
    }

    fn format<S: NorFlash>(&mut self, flash: &mut S, seq: u32) -> Result<(), StorageError> {
        self.tail_seq = seq - 1;
        self.head_seq = seq;
        self.tail_off = self.size;
        self.tail_phys = self.sectors - 1;
        self.open_next(flash)
    }

    fn replay(&mut self, seq: u32, off: u32, h: &RecHdr, payload: &[u8]) {
        let key = EventKey {
            boot: h.a,
            seq: h.b,
        };
        match h.kind {
            K_EVENT => {
                let class = EventClass::decode(payload[0], le32(&payload[4..8]));
                match self.index.binary_search_by_key(&key, |e| e.key) {
                    Ok(i) => {
                        self.index[i].loc_seq = seq;
                        self.index[i].loc_off = off;
                    }
                    Err(i) => {
                        let e = Entry {
                            key,
                            class,
                            loc_seq: seq,
                            loc_off: off,
                        };
                        // Cannot overflow: appends keep at most CAP live events.
                        let _ = self.index.insert(i, e);
                    }
                }
            }
            K_ACK | K_DROP => {
                if let Ok(i) = self.index.binary_search_by_key(&key, |e| e.key) {
                    self.index.remove(i);
                }
            }
            K_STATE => {
                self.state = PersistedState::decode(payload);
                self.state_loc = Some((seq, off));
            }
            _ => {}
        }
    }

    fn phys(&self, seq: u32) -> u32 {
        let back = self.tail_seq.wrapping_sub(seq) % self.sectors;
        (self.tail_phys + self.sectors - back) % self.sectors
    }

    fn addr(&self, phys: u32, off: usize) -> u32 {
        (self.first + phys) * self.size as u32 + off as u32
    }

    fn live_sectors(&self) -> u32 {
        self.tail_seq + 1 - self.head_seq
    }

    fn sector_header<S: NorFlash>(
        &self,
        flash: &mut S,
        phys: u32,
    ) -> Result<Option<u32>, StorageError> {
        let mut h = [0u8; SECTOR_HDR];
        flash.read(self.addr(phys, 0), &mut h)?;
        let seq = le32(&h[4..8]);
        let ok = le32(&h[0..4]) == SECTOR_MAGIC
            && le32(&h[8..12]) == !seq
            && le32(&h[12..16]) == crate::storage::crc32(&h[..12]);
        Ok(ok.then_some(seq))
    }

    /// Reads the record at `off` into `buf` (header first); `None` if no valid record starts there.
    fn read_record<S: NorFlash>(
        &self,
        flash: &mut S,
        phys: u32,
        off: usize,
        buf: &mut [u8; MAX_RECORD],
    ) -> Result<Option<RecHdr>, StorageError> {
        if off + REC_HDR > self.size {
            buf[..ALIGN].fill(0xFF);
            return Ok(None);
        }
        flash.read(self.addr(phys, off), &mut buf[..REC_HDR])?;
        let len = usize::from(u16::from_le_bytes([buf[2], buf[3]]));
        let total = align_up(REC_HDR + len);
        if buf[0] != REC_MAGIC || total > MAX_RECORD || off + total > self.size {
            return Ok(None);
        }
        let mut head = [0u8; REC_HDR];
        head.copy_from_slice(&buf[..REC_HDR]);
        flash.read(self.addr(phys, off + REC_HDR), &mut buf[REC_HDR..total])?;
        let mut crc = Crc32::new();
        crc.update(&head[..12]);
        crc.update(&buf[REC_HDR..REC_HDR + len]);
        if crc.finish() != le32(&head[12..16]) {
            buf[..REC_HDR].copy_from_slice(&head);
            return Ok(None);
        }
        let h = RecHdr {
            kind: head[1],
            len,
            a: le32(&head[4..8]),
            b: le32(&head[8..12]),
        };
        let valid = match h.kind {
            K_EVENT => len >= EVENT_META,
            K_STATE => len == STATE_LEN,
            K_ACK | K_DROP | K_RETIRE => len == 0,
            _ => false,
        };
        if !valid {
            return Ok(None);
        }
        Ok(Some(h))
    }

    fn open_next<S: NorFlash>(&mut self, flash: &mut S) -> Result<(), StorageError> {
        if self.live_sectors() >= self.sectors {
            return Err(StorageError::Full);
        }
        let next = (self.tail_phys + 1) % self.sectors;
        let seq = self.tail_seq + 1;
        let start = self.addr(next, 0);
        flash.erase(start, start + self.size as u32)?;
        let mut h = [0u8; SECTOR_HDR];
        h[0..4].copy_from_slice(&SECTOR_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&seq.to_le_bytes());
        h[8..12].copy_from_slice(&(!seq).to_le_bytes());
        let crc = crate::storage::crc32(&h[..12]);
        h[12..16].copy_from_slice(&crc.to_le_bytes());
        flash.write(start, &h)?;
        self.tail_phys = next;
        self.tail_seq = seq;
        self.tail_off = SECTOR_HDR;
        Ok(())
    }

    /// Compacts heads until at least two sectors are free.
    fn keep_free<S: NorFlash>(&mut self, flash: &mut S) -> Result<(), StorageError> {
        let mut rounds = 0;
        while self.sectors - self.live_sectors() < 2 {
            rounds += 1;
            if rounds > self.sectors {
                return Err(StorageError::Full);
            }
            self.compact_head(flash)?;
        }
        Ok(())
    }

    fn compact_head<S: NorFlash>(&mut self, flash: &mut S) -> Result<(), StorageError> {
        let h = self.head_seq;
        if h == self.tail_seq {
            return Err(StorageError::Full);
        }
        let p = self.phys(h);
        let mut buf = [0u8; MAX_RECORD];
        let mut off = SECTOR_HDR;
        while off < self.size {
            let Some(hdr) = self.read_record(flash, p, off, &mut buf)? else {
                off += ALIGN;
                continue;
            };
            let total = align_up(REC_HDR + hdr.len);
            let here = (h, off as u32);
            let key = EventKey {
                boot: hdr.a,
                seq: hdr.b,
            };
            let copy_event = hdr.kind == K_EVENT
                && self
                    .index
                    .iter()
                    .any(|e| e.key == key && (e.loc_seq, e.loc_off) == here);
            let copy_state = hdr.kind == K_STATE && self.state_loc == Some(here);
            if copy_event || copy_state {
                // Copies may use the whole tail (no reserve) and spill into a free sector.
                if self.tail_off + total > self.size {
                    self.open_next(flash)?;
                }
                let at = self.write_raw(flash, &buf[..total])?;
                if copy_state {
                    self.state_loc = Some(at);
                } else if let Ok(i) = self.index.binary_search_by_key(&key, |e| e.key) {
                    self.index[i].loc_seq = at.0;
                    self.index[i].loc_off = at.1;
                }
            }
            off += total;
        }
        if self.tail_off + REC_HDR > self.size {
            self.open_next(flash)?;
        }
        let rec = record(K_RETIRE, h, 0, &[], &mut buf);
        self.write_raw(flash, &buf[..rec])?;
        self.head_seq = h + 1;
        let start = self.addr(p, 0);
        flash.erase(start, start + self.size as u32)?;
        Ok(())
    }

    /// Writes a complete record at the tail; returns its location.
    fn write_raw<S: NorFlash>(
        &mut self,
        flash: &mut S,
        rec: &[u8],
    ) -> Result<(u32, u32), StorageError> {
        let at = (self.tail_seq, self.tail_off as u32);
        let addr = self.addr(self.tail_phys, self.tail_off);
        // Whatever happens, these bytes are no longer erased.
        self.tail_off += rec.len();
        flash.write(addr, rec)?;
        Ok(at)
    }

    /// Appends a record, opening and compacting sectors as needed.
    fn append_record<S: NorFlash>(
        &mut self,
        flash: &mut S,
        kind: u8,
        a: u32,
        b: u32,
        payload: &[u8],
    ) -> Result<(u32, u32), StorageError> {
        let mut buf = [0u8; MAX_RECORD];
        let total = record(kind, a, b, payload, &mut buf);
        // Normal appends keep a reserve of one record and a retire record for compaction.
        let mut rounds = 0;
        while self.tail_off + total + MAX_RECORD + ALIGN > self.size {
            rounds += 1;
            if rounds > 2 * self.sectors {
                return Err(StorageError::Full);
            }
            self.open_next(flash)?;
            self.keep_free(flash)?;
        }
        self.write_raw(flash, &buf[..total])
    }

    /// Number of live (unacknowledged) events.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no event waits for an acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The live events, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.index
    }

    /// The persisted state as last saved (or recovered).
    pub fn state(&self) -> PersistedState {
        self.state
    }

    /// Persists a new state record.
    pub fn save_state<S: NorFlash>(
        &mut self,
        flash: &mut S,
        state: PersistedState,
    ) -> Result<(), StorageError> {
        let at = self.append_record(flash, K_STATE, 0, 0, &state.encode())?;
        self.state = state;
        self.state_loc = Some(at);
        Ok(())
    }

    /// Journals an encoded event. `json` must be ASCII and at most [`MAX_EVENT_LEN`] bytes; `key`
    /// must be greater than every key journaled before.
    pub fn append<S: NorFlash>(
        &mut self,
        flash: &mut S,
        key: EventKey,
        class: EventClass,
        json: &[u8],
    ) -> Result<Appended, StorageError> {
        if json.len() > MAX_EVENT_LEN || !json.is_ascii() {
            return Err(StorageError::TooLarge);
        }
        let mut outcome = Appended::Stored;
        if self.index.is_full() {
            match self.victim(class, key) {
                Some(i) => {
                    let v = self.index[i].key;
                    self.append_record(flash, K_DROP, v.boot, v.seq, &[])?;
                    self.index.remove(i);
                    outcome = Appended::StoredDropping(v);
                }
                None => {
                    self.count_drop(flash)?;
                    return Ok(Appended::Dropped);
                }
            }
            self.count_drop(flash)?;
        }
        let mut payload = [0u8; EVENT_META + MAX_EVENT_LEN];
        let (tag, session) = class.encode();
        payload[0] = tag;
        payload[4..8].copy_from_slice(&session.to_le_bytes());
        payload[EVENT_META..EVENT_META + json.len()].copy_from_slice(json);
        let at = self.append_record(
            flash,
            K_EVENT,
            key.boot,
            key.seq,
            &payload[..EVENT_META + json.len()],
        )?;
        let entry = Entry {
            key,
            class,
            loc_seq: at.0,
            loc_off: at.1,
        };
        match self.index.binary_search_by_key(&key, |e| e.key) {
            Ok(i) => self.index[i] = entry,
            Err(i) => {
                // Room was made above.
                let _ = self.index.insert(i, entry);
            }
        }
        Ok(outcome)
    }

    fn count_drop<S: NorFlash>(&mut self, flash: &mut S) -> Result<(), StorageError> {
        let mut s = self.state;
        s.journal_dropped = s.journal_dropped.saturating_add(1);
        self.save_state(flash, s)
    }

    /// Index of the event the overflow policy drops to make room for a new event of `class`, or
    /// `None` when the new event itself is dropped.
    fn victim(&self, new_class: EventClass, new_key: EventKey) -> Option<usize> {
        let has_later = |i: usize, pred: &dyn Fn(&Entry) -> bool| {
            self.index[i + 1..].iter().any(pred)
                || pred(&Entry {
                    key: new_key,
                    class: new_class,
                    loc_seq: 0,
                    loc_off: 0,
                })
        };
        // 1. A progress superseded by a later progress or end of the same session.
        for (i, e) in self.index.iter().enumerate() {
            if let EventClass::Progress(_) = e.class {
                let s = e.class.session(e.key);
                let later = |o: &Entry| {
                    matches!(o.class, EventClass::Progress(_) | EventClass::Ended(_))
                        && o.class.session(o.key) == s
                };
                if has_later(i, &later) {
                    return Some(i);
                }
            }
        }
        // 2. Informational events.
        if let Some(i) = self.index.iter().position(|e| e.class == EventClass::Other) {
            return Some(i);
        }
        // 3. A start whose end is in the journal.
        for (i, e) in self.index.iter().enumerate() {
            if e.class == EventClass::Started {
                let s = Some(e.key);
                let ended = |o: &Entry| {
                    matches!(o.class, EventClass::Ended(_)) && o.class.session(o.key) == s
                };
                if has_later(i, &ended) {
                    return Some(i);
                }
            }
        }
        // 4. The new event, unless it is an end.
        if matches!(new_class, EventClass::Ended(_)) {
            return self
                .index
                .iter()
                .position(|e| !matches!(e.class, EventClass::Ended(_)))
                .or(Some(0));
        }
        None
    }

    /// Removes an acknowledged event. Returns false if it was not in the journal (a duplicate
    /// acknowledgement).
    pub fn ack<S: NorFlash>(&mut self, flash: &mut S, key: EventKey) -> Result<bool, StorageError> {
        let Ok(i) = self.index.binary_search_by_key(&key, |e| e.key) else {
            return Ok(false);
        };
        self.append_record(flash, K_ACK, key.boot, key.seq, &[])?;
        self.index.remove(i);
        Ok(true)
    }

    /// Reads a live event's JSON into `out`; returns its length.
    pub fn read<S: NorFlash>(
        &self,
        flash: &mut S,
        entry: &Entry,
        out: &mut [u8],
    ) -> Result<usize, StorageError> {
        let mut buf = [0u8; MAX_RECORD];
        let p = self.phys(entry.loc_seq);
        let h = self
            .read_record(flash, p, entry.loc_off as usize, &mut buf)?
            .ok_or(StorageError::Corrupt)?;
        if h.kind != K_EVENT || h.a != entry.key.boot || h.b != entry.key.seq {
            return Err(StorageError::Corrupt);
        }
        let json = &buf[REC_HDR + EVENT_META..REC_HDR + h.len];
        let dst = out.get_mut(..json.len()).ok_or(StorageError::TooLarge)?;
        dst.copy_from_slice(json);
        Ok(json.len())
    }
}

/// Builds a record in `buf`; returns its padded length.
fn record(kind: u8, a: u32, b: u32, payload: &[u8], buf: &mut [u8; MAX_RECORD]) -> usize {
    let total = align_up(REC_HDR + payload.len());
    buf[..total].fill(0xFF);
    buf[0] = REC_MAGIC;
    buf[1] = kind;
    buf[2..4].copy_from_slice(&(payload.len() as u16).to_le_bytes());
    buf[4..8].copy_from_slice(&a.to_le_bytes());
    buf[8..12].copy_from_slice(&b.to_le_bytes());
    buf[REC_HDR..REC_HDR + payload.len()].copy_from_slice(payload);
    let mut crc = Crc32::new();
    crc.update(&buf[..12]);
    crc.update(payload);
    buf[12..16].copy_from_slice(&crc.finish().to_le_bytes());
    total
}

#[cfg(test)]
mod tests;
