//! The bounded on-disk backlog: append-only segment files of line protocol.
//!
//! Synchronous file IO: it runs on the sink's own thread (see the module docs of
//! [`timeseries`](super)), never on the caller's runtime.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Sequence number given to the first segment of an empty backlog. Segments appended later
/// count up, batches put back in front (after a failed write) count down.
const FRESH_SEQ: u64 = 1_000_000_000_000;
/// Digits of a segment file name (`{seq:020}.lp`), so that names sort like numbers.
const SEQ_DIGITS: usize = 20;
/// File name extension of segments.
const SEGMENT_EXT: &str = "lp";

/// A batch of complete lines of line protocol, each ending in `\n`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Chunk {
    pub text: String,
    pub lines: u64,
}

impl Chunk {
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    pub fn bytes(&self) -> u64 {
        self.text.len() as u64
    }

    /// Splits into two halves by lines (for isolating bad lines). Needs at least two lines.
    pub fn split_in_half(self) -> (Chunk, Chunk) {
        let half = self.lines / 2;
        let mut first = Chunk::default();
        let mut second = Chunk::default();
        for (i, line) in self.text.split_inclusive('\n').enumerate() {
            let target = if (i as u64) < half {
                &mut first
            } else {
                &mut second
            };
            target.text.push_str(line);
            target.lines += 1;
        }
        (first, second)
    }
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    seq: u64,
    bytes: u64,
    lines: u64,
}

/// A segment dropped to respect the size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Evicted {
    pub seq: u64,
    pub lines: u64,
}

/// What opening an existing backlog found.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    pub segments: usize,
    pub lines: u64,
    pub bytes: u64,
    /// Bytes of torn last lines cut off (a crash in the middle of an append).
    pub torn_bytes: u64,
}

/// The backlog directory. Segments are ordered by sequence number; the last one may be open
/// for appending.
#[derive(Debug)]
pub(crate) struct Backlog {
    dir: PathBuf,
    max_bytes: u64,
    max_lines_per_segment: u64,
    segments: VecDeque<Segment>,
    open: Option<File>,
    dirty: bool,
    bytes: u64,
    lines: u64,
}

impl Backlog {
    /// Opens (creating it if needed) the backlog in `dir`, recovering the segments a previous
    /// run left behind.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        max_lines_per_segment: u64,
    ) -> io::Result<(Backlog, Recovery)> {
        fs::create_dir_all(dir)?;
        let mut recovery = Recovery::default();
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seq) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            found.push(seq);
        }
        found.sort_unstable();
        let mut segments = VecDeque::new();
        for seq in found {
            let path = segment_path(dir, seq);
            let data = fs::read(&path)?;
            let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if keep < data.len() {
                recovery.torn_bytes += (data.len() - keep) as u64;
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(keep as u64)?;
                file.sync_all()?;
            }
            if keep == 0 {
                fs::remove_file(&path)?;
                continue;
            }
            let lines = data[..keep].iter().filter(|&&b| b == b'\n').count() as u64;
            recovery.segments += 1;
            recovery.lines += lines;
            recovery.bytes += keep as u64;
            segments.push_back(Segment {
                seq,
                bytes: keep as u64,
                lines,
            });
        }
        let backlog = Backlog {
            dir: dir.to_path_buf(),
            max_bytes,
            max_lines_per_segment: max_lines_per_segment.max(1),
            segments,
            open: None,
            dirty: false,
            bytes: recovery.bytes,
            lines: recovery.lines,
        };
        Ok((backlog, recovery))
    }

    /// The backlog directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    pub fn segment_count(&self) -> u64 {
        self.segments.len() as u64
    }

    /// Appends a chunk behind everything else. Drops the oldest segments first when the chunk
    /// would not fit (returned so the caller counts them); a chunk bigger than the whole backlog
    /// is not written at all (returned as evicted with `seq` 0).
    pub fn append(&mut self, chunk: &Chunk) -> io::Result<Vec<Evicted>> {
        if chunk.is_empty() {
            return Ok(Vec::new());
        }
        if chunk.bytes() > self.max_bytes {
            return Ok(vec![Evicted {
                seq: 0,
                lines: chunk.lines,
            }]);
        }
        let evicted = self.make_room(chunk.bytes())?;
        let fits_open = match (self.open.as_ref(), self.segments.back()) {
            (Some(_), Some(last)) => last.lines + chunk.lines <= self.max_lines_per_segment,
            _ => false,
        };
        if !fits_open {
            self.close_open()?;
            let seq = self.segments.back().map_or(FRESH_SEQ, |s| s.seq + 1);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(segment_path(&self.dir, seq))?;
            self.segments.push_back(Segment {
                seq,
                bytes: 0,
                lines: 0,
            });
            self.open = Some(file);
        }
        if let (Some(file), Some(last)) = (self.open.as_mut(), self.segments.back_mut()) {
            if let Err(e) = file.write_all(chunk.text.as_bytes()) {
                // Cut a partial write off so the segment keeps whole lines only.
                let _ = file.set_len(last.bytes);
                return Err(e);
            }
            last.bytes += chunk.bytes();
            last.lines += chunk.lines;
            self.bytes += chunk.bytes();
            self.lines += chunk.lines;
            self.dirty = true;
        }
        Ok(evicted)
    }

    /// Puts a chunk in front of everything else (a batch whose write failed), as its own,
    /// closed segment. Respects the size limit like [`Backlog::append`], by dropping the oldest
    /// segments, which may be this chunk itself (`seq` 0).
    pub fn push_front(&mut self, chunk: &Chunk) -> io::Result<Vec<Evicted>> {
        if chunk.is_empty() {
            return Ok(Vec::new());
        }
        if chunk.bytes() + self.bytes > self.max_bytes {
            // The oldest data is this chunk: drop it rather than newer segments.
            return Ok(vec![Evicted {
                seq: 0,
                lines: chunk.lines,
            }]);
        }
        let seq = self
            .segments
            .front()
            .map_or(FRESH_SEQ, |s| s.seq.saturating_sub(1));
        let path = segment_path(&self.dir, seq);
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        if let Err(e) = file
            .write_all(chunk.text.as_bytes())
            .and_then(|()| file.sync_all())
        {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        sync_dir(&self.dir);
        self.segments.push_front(Segment {
            seq,
            bytes: chunk.bytes(),
            lines: chunk.lines,
        });
        self.bytes += chunk.bytes();
        self.lines += chunk.lines;
        Ok(Vec::new())
    }

    /// The oldest segment: its sequence number and contents. Closes it first if it is the one
    /// open for appending (later appends start a new segment).
    pub fn head(&mut self) -> io::Result<Option<(u64, Chunk)>> {
        let Some(first) = self.segments.front() else {
            return Ok(None);
        };
        let seq = first.seq;
        if self.segments.len() == 1 && self.open.is_some() {
            self.close_open()?;
        }
        let mut bytes = Vec::new();
        File::open(segment_path(&self.dir, seq))?.read_to_end(&mut bytes)?;
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        let lines = text.bytes().filter(|&b| b == b'\n').count() as u64;
        Ok(Some((seq, Chunk { text, lines })))
    }

    /// Deletes a segment (written, or replaced). Returns whether it was still there.
    pub fn remove(&mut self, seq: u64) -> io::Result<bool> {
        let Some(index) = self.segments.iter().position(|s| s.seq == seq) else {
            return Ok(false);
        };
        if index + 1 == self.segments.len() && self.open.is_some() {
            self.close_open()?;
        }
        fs::remove_file(segment_path(&self.dir, seq))?;
        if let Some(segment) = self.segments.remove(index) {
            self.bytes -= segment.bytes;
            self.lines -= segment.lines;
        }
        Ok(true)
    }

    /// Forgets the oldest segment after it could not be read, deleting its file if possible.
    /// Returns its line count.
    pub fn forget_head(&mut self) -> u64 {
        let Some(segment) = self.segments.pop_front() else {
            return 0;
        };
        if self.segments.is_empty() {
            self.open = None;
        }
        let _ = fs::remove_file(segment_path(&self.dir, segment.seq));
        self.bytes -= segment.bytes;
        self.lines -= segment.lines;
        segment.lines
    }

    /// fsyncs the open segment if it has unsynced appends.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            if let Some(file) = &self.open {
                file.sync_data()?;
            }
            self.dirty = false;
        }
        Ok(())
    }

    /// Closes (and fsyncs) the open segment.
    pub fn close_open(&mut self) -> io::Result<()> {
        if let Some(file) = self.open.take() {
            file.sync_all()?;
            self.dirty = false;
            sync_dir(&self.dir);
        }
        Ok(())
    }

    /// Drops the oldest segments until `incoming` more bytes fit.
    fn make_room(&mut self, incoming: u64) -> io::Result<Vec<Evicted>> {
        let mut evicted = Vec::new();
        while self.bytes + incoming > self.max_bytes {
            let Some(oldest) = self.segments.front() else {
                break;
            };
            let seq = oldest.seq;
            let lines = oldest.lines;
            self.remove(seq)?;
            evicted.push(Evicted { seq, lines });
        }
        Ok(evicted)
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:0width$}.{SEGMENT_EXT}", width = SEQ_DIGITS))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXT)?.strip_suffix('.')?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// fsyncs a directory so that created or removed names survive a crash (best effort).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(lines: &[&str]) -> Chunk {
        let mut c = Chunk::default();
        for l in lines {
            c.text.push_str(l);
            c.text.push('\n');
            c.lines += 1;
        }
        c
    }

    fn drain(b: &mut Backlog) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((seq, c)) = b.head().expect("head") {
            out.extend(c.text.lines().map(str::to_owned));
            assert!(b.remove(seq).expect("remove"));
        }
        out
    }

    #[test]
    fn append_rotate_push_front_and_drain_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut b, rec) = Backlog::open(dir.path(), 1 << 20, 2).expect("open");
        assert_eq!(rec.segments, 0);
        b.append(&chunk(&["c", "d"])).expect("append");
        b.append(&chunk(&["e"])).expect("append");
        b.append(&chunk(&["f"])).expect("append");
        b.push_front(&chunk(&["a", "b"])).expect("push front");
        assert_eq!((b.lines(), b.segment_count()), (6, 3));
        assert_eq!(drain(&mut b), ["a", "b", "c", "d", "e", "f"]);
        assert_eq!((b.lines(), b.bytes()), (0, 0));
    }

    #[test]
    fn survives_reopen_and_cuts_torn_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut b, _) = Backlog::open(dir.path(), 1 << 20, 100).expect("open");
            b.append(&chunk(&["one", "two"])).expect("append");
            b.sync().expect("sync");
        }
        // A crash in the middle of an append leaves a partial line.
        let seg = segment_path(dir.path(), FRESH_SEQ);
        let mut f = OpenOptions::new().append(true).open(&seg).expect("seg");
        f.write_all(b"thr").expect("write");
        fs::write(dir.path().join("unrelated.txt"), "x").expect("write");
        let (mut b, rec) = Backlog::open(dir.path(), 1 << 20, 100).expect("reopen");
        assert_eq!((rec.segments, rec.lines, rec.torn_bytes), (1, 2, 3));
        b.append(&chunk(&["three"])).expect("append");
        assert_eq!(drain(&mut b), ["one", "two", "three"]);
    }

    #[test]
    fn full_backlog_drops_oldest_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Each line is 4 bytes; room for 3 segments of 2 lines.
        let (mut b, _) = Backlog::open(dir.path(), 24, 2).expect("open");
        for i in 0..5 {
            let l1 = format!("a{i}0");
            let l2 = format!("a{i}1");
            let evicted = b.append(&chunk(&[&l1, &l2])).expect("append");
            let expected = if i < 3 { 0 } else { 1 };
            assert_eq!(evicted.len(), expected, "append {i}");
        }
        assert_eq!(drain(&mut b), ["a20", "a21", "a30", "a31", "a40", "a41"]);
        let too_big = chunk(&["x".repeat(30).as_str()]);
        assert_eq!(
            b.append(&too_big).expect("append"),
            [Evicted { seq: 0, lines: 1 }]
        );
    }

    #[test]
    fn split_in_half_keeps_order() {
        let (a, b) = chunk(&["1", "2", "3"]).split_in_half();
        assert_eq!((a.text.as_str(), a.lines), ("1\n", 1));
        assert_eq!((b.text.as_str(), b.lines), ("2\n3\n", 2));
    }
}
