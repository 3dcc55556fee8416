//! Personal data (docs/SECURITY.md "Personal data"): everything the collector holds about one
//! member, as one JSON document (`fabmeter-collector member export`); the retention purge
//! (`privacy purge`, and daily inside the collector); the erasure of a member (`member erase`).

use serde::Serialize;

use crate::billing::invoice::Invoice;
use crate::config::{Config, MemberConfig};
use crate::ledger::{
    BillingError, ErasureReport, Ledger, LedgerError, PurgeReport, SessionQuery, SessionView,
    StoredEvent,
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
    /// The member has a session in progress: erasing now would leave its end without a start.
    #[error(
        "member {member:?} has {open} session(s) in progress: erase once they ended (badge out)"
    )]
    OpenSessions {
        /// The member.
        member: String,
        /// How many.
        open: u64,
    },
    /// `--by` or `--reason` is empty.
    #[error("an erasure records who asked for it and why: give a non-empty --by and --reason")]
    Unrecorded,
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
    /// The member's billing identity (`[[billing.customers]]`: legal name, address, SIREN, VAT
    /// number), when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billing_identity: Option<crate::billing::tariff::Customer>,
}

/// Collects everything the configuration and the ledger hold about `member` at `now_ms`.
pub fn export_member(
    config: &Config,
    ledger: &dyn Ledger,
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
    let documents = ledger.member_documents(member)?;
    Ok(MemberExport {
        format: EXPORT_FORMAT,
        site: config.site.id.clone(),
        exported_ms: now_ms,
        member: entry,
        sessions,
        documents,
        billing_identity: config
            .billing
            .as_ref()
            .and_then(|b| b.customers.iter().find(|c| c.member == member).cloned()),
    })
}

/// Purges the personal data older than the site's `[privacy] retention_days` at `now_ms` that no
/// billing run settled (see [`Ledger::purge`]); with `dry_run`, changes nothing.
pub fn purge(
    config: &Config,
    ledger: &mut dyn Ledger,
    now_ms: u64,
    dry_run: bool,
) -> Result<PurgeReport, PrivacyError> {
    Ok(ledger.purge(now_ms, config.privacy.retention_days, dry_run)?)
}

/// How a purge report reads: one line per machine and month, then the total.
pub fn describe_purge(r: &PurgeReport) -> String {
    let mut out = String::new();
    for (machine, months) in &r.by_machine_month {
        for (month, c) in months {
            out.push_str(&format!(
                "{machine} {month}: {} sessions, {} session events, {} access_denied\n",
                c.sessions, c.session_events, c.access_denied
            ));
        }
    }
    out.push_str(&format!(
        "{} before {}: {} sessions, {} session events, {} access_denied{}\n",
        if r.dry_run { "would purge" } else { "purged" },
        crate::api::format_utc(r.cutoff_ms),
        r.total.sessions,
        r.total.session_events,
        r.total.access_denied,
        if r.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    ));
    out
}

/// Erases `member`'s personal data that no invoice needs, at `now_ms`, recording `by` and
/// `reason` (see [`Ledger::erase_member`]). The member must still be in the site file
/// (their badges are read from it); the operator removes the entry afterwards.
pub fn erase_member(
    config: &Config,
    ledger: &mut dyn Ledger,
    member: &str,
    by: &str,
    reason: &str,
    now_ms: u64,
) -> Result<ErasureReport, PrivacyError> {
    if by.trim().is_empty() || reason.trim().is_empty() {
        return Err(PrivacyError::Unrecorded);
    }
    let entry = config
        .members
        .iter()
        .find(|m| m.id == member)
        .ok_or_else(|| PrivacyError::UnknownMember(member.to_owned()))?;
    let r = ledger.erase_member(member, &entry.badges, by, reason, now_ms)?;
    if r.open_sessions > 0 {
        return Err(PrivacyError::OpenSessions {
            member: member.to_owned(),
            open: r.open_sessions,
        });
    }
    Ok(r)
}

/// How often the collector purges.
pub const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// The collector's periodic purge on `ledger` (of either engine): once at start, then every
/// [`PURGE_EVERY`], until `shutdown`.
pub async fn run_purges<L: Ledger + 'static>(
    config: std::sync::Arc<Config>,
    ledger: L,
    now_ms: fn() -> u64,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let ledger = std::sync::Arc::new(std::sync::Mutex::new(ledger));
    loop {
        let (c, l) = (config.clone(), ledger.clone());
        let done = tokio::task::spawn_blocking(move || {
            let mut l = l.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            purge(&c, &mut *l, now_ms(), false)
        })
        .await;
        match done {
            Ok(Ok(r)) if r.total != crate::ledger::PurgedCounts::default() => {
                tracing::info!(
                    sessions = r.total.sessions,
                    session_events = r.total.session_events,
                    access_denied = r.total.access_denied,
                    "retention purge"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "retention purge failed; retried tomorrow"),
            Err(e) => tracing::error!(error = %e, "retention purge panicked; retried tomorrow"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PURGE_EVERY) => {}
        }
    }
}
