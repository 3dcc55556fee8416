//! Personal data (docs/SECURITY.md "Personal data"): everything the collector holds about one
//! member, as one JSON document (`fabmeter-collector member export`).

use serde::Serialize;

use crate::billing::invoice::Invoice;
use crate::config::{Config, MemberConfig};
use crate::ledger::{
    BillingError, Ledger, LedgerError, SessionQuery, SessionView, SqliteLedger, StoredEvent,
};

/// The `format` of a member export.
pub const EXPORT_FORMAT: &str = "fabmeter-member-export/1";

/// Why an export failed. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// The member is not in the site configuration.
    #[error("unknown member {0:?}: members are the [[members]] of the site configuration")]
    UnknownMember(String),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The invoices could not be read.
    #[error(transparent)]
    Billing(#[from] BillingError),
}

/// One session of the member, with the raw events it was derived from.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedSession {
    /// The session as the ledger derived it (machine, times, durations, energy, badge hash).
    #[serde(flatten)]
    pub session: SessionView,
    /// The stored events of the session, payloads as received.
    pub events: Vec<StoredEvent>,
}

/// Everything held about one member.
#[derive(Debug, Clone, Serialize)]
pub struct MemberExport {
    /// [`EXPORT_FORMAT`].
    pub format: &'static str,
    /// Site id.
    pub site: String,
    /// When the export was made, unix ms.
    pub exported_ms: u64,
    /// The member's entry of the site configuration (id, name, badge hashes).
    pub member: MemberConfig,
    /// Sessions attributed to the member, or made with one of the member's badges, oldest first.
    pub sessions: Vec<ExportedSession>,
    /// Invoices and credit notes issued to the member, in chain order.
    pub documents: Vec<Invoice>,
}

/// Collects everything the configuration and the ledger hold about `member` at `now_ms`.
pub fn export_member(
    config: &Config,
    ledger: &SqliteLedger,
    member: &str,
    now_ms: u64,
) -> Result<MemberExport, PrivacyError> {
    let entry = config
        .members
        .iter()
        .find(|m| m.id == member)
        .cloned()
        .ok_or_else(|| PrivacyError::UnknownMember(member.to_owned()))?;
    let mut views = ledger.sessions(&SessionQuery::default())?;
    views.retain(|s| {
        s.member.as_deref() == Some(member)
            || s.badge.as_ref().is_some_and(|b| entry.badges.contains(b))
    });
    views.sort_by_key(|s| (s.start_ms, s.machine.clone(), s.boot, s.session));
    let mut sessions = Vec::with_capacity(views.len());
    for s in views {
        let events = ledger.session_events(&s.machine, s.boot, s.session)?;
        sessions.push(ExportedSession { session: s, events });
    }
    let documents = ledger
        .documents()?
        .into_iter()
        .filter(|d| d.buyer.id == member)
        .collect();
    Ok(MemberExport {
        format: EXPORT_FORMAT,
        site: config.site.id.clone(),
        exported_ms: now_ms,
        member: entry,
        sessions,
        documents,
    })
}
