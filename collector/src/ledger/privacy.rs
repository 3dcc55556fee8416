//! Personal data in the SQLite ledger: the raw events of a member's sessions, for the member
//! export of `crate::privacy`.

use rusqlite::params;
use serde::Serialize;

use super::{u64_of, SqliteLedger};
use crate::ledger::LedgerError;

/// One stored event, as received from the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredEvent {
    /// Machine id.
    pub machine: String,
    /// Ledger boot.
    pub boot: u32,
    /// Sequence number within the boot.
    pub seq: u32,
    /// Event kind (`session_started`, `session_ended`...).
    pub kind: String,
    /// Wall time, unix ms.
    pub wall_ms: u64,
    /// Reception, unix ms.
    pub received_ms: u64,
    /// The payload as received (JSON text).
    pub payload: String,
}

impl SqliteLedger {
    /// The stored events of one session (its start, progress and end), in order.
    pub fn session_events(
        &self,
        machine: &str,
        boot: u32,
        session: u32,
    ) -> Result<Vec<StoredEvent>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT machine, boot, seq, kind, wall_ms, received_ms, payload FROM events
             WHERE site=?1 AND machine=?2 AND boot=?3 AND session=?4 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![self.site, machine, boot, session], |r| {
            Ok(StoredEvent {
                machine: r.get(0)?,
                boot: r.get(1)?,
                seq: r.get(2)?,
                kind: r.get(3)?,
                wall_ms: u64_of(r.get(4)?),
                received_ms: u64_of(r.get(5)?),
                payload: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
