//! HTTP API authentication: bearer tokens with roles (docs/SECURITY.md, "API tokens").
//!
//! Tokens live in the file named by `http.tokens_file`, stored as SHA-256 hashes (a token is 32
//! random bytes, so a fast hash is enough), created and revoked with `fabmeter-collector token`.
//! The running collector re-reads the file when it changes. Without `http.tokens_file` the API is
//! open (the collector warns when it also listens beyond loopback).
//!
//! | role | may read |
//! |---|---|
//! | `manager` | everything |
//! | `member` | its own `/api/members/{id}/statement`, `/api/members/{id}/invoices[/{file}]` and `/api/members/{id}/export` |
//! | `monitor` | `/metrics` |
//!
//! `/`, `/healthz` and `/readyz` are open to all: the page holds no data (it asks for a token
//! and sends it), and probes carry none.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::provision::{write_atomic, ProvisionError};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Manager,
    /// Its own member statement.
    Member,
    /// Health and metrics.
    Monitor,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "manager" => Ok(Role::Manager),
            "member" => Ok(Role::Member),
            "monitor" => Ok(Role::Monitor),
            _ => Err(format!(
                "unknown role {s:?}: use manager, member or monitor"
            )),
        }
    }
}

/// One stored token (its hash, never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Unique name, e.g. the person or the system using it.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The member, for the `member` role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// `sha256:` and the hex SHA-256 of the token.
    pub hash: String,
    /// When it was created (UTC, RFC 3339).
    pub created: String,
}

/// The tokens file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// Every token.
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

fn hash_of(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl TokenFile {
    /// Reads `path`; a missing file holds no token.
    pub fn load(path: &Path) -> Result<Self, ProvisionError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ProvisionError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|e| ProvisionError::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.message().to_owned()),
        })
    }

    /// Writes the file (mode 0600).
    pub fn save(&self, path: &Path) -> Result<(), ProvisionError> {
        let text = format!(
            "# fabmeter API tokens (hashes only): managed by `fabmeter-collector token`.\n{}",
            toml::to_string_pretty(self).unwrap_or_default()
        );
        write_atomic(path, &text, 0o600)
    }

    /// Adds a token named `name` and returns it (shown once). A name in use is an error.
    pub fn create(
        &mut self,
        name: &str,
        role: Role,
        member: Option<&str>,
        now_utc: &str,
    ) -> Result<String, String> {
        if name.trim().is_empty() {
            return Err("--name is empty: name the person or system that uses the token".into());
        }
        if self.tokens.iter().any(|t| t.name == name) {
            return Err(format!(
                "a token named {name:?} exists: revoke it first or choose another name"
            ));
        }
        match (role, member) {
            (Role::Member, None) => {
                return Err("a member token needs --member ID (the member it may read)".into())
            }
            (Role::Manager | Role::Monitor, Some(_)) => {
                return Err("--member only goes with --role member".into())
            }
            _ => {}
        }
        let mut b = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| "the system random number generator failed".to_owned())?;
        let token = format!(
            "fm_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        );
        self.tokens.push(TokenEntry {
            name: name.to_owned(),
            role,
            member: member.map(str::to_owned),
            hash: hash_of(&token),
            created: now_utc.to_owned(),
        });
        Ok(token)
    }

    /// Removes the token named `name`; false if there was none.
    pub fn revoke(&mut self, name: &str) -> bool {
        let before = self.tokens.len();
        self.tokens.retain(|t| t.name != name);
        self.tokens.len() != before
    }

    /// The entry of a presented token.
    pub fn find(&self, token: &str) -> Option<&TokenEntry> {
        let h = hash_of(token);
        self.tokens.iter().find(|t| t.hash == h)
    }
}

/// Whether `role` (of `member`) may `GET path`.
pub fn allowed(entry: &TokenEntry, path: &str) -> bool {
    match entry.role {
        Role::Manager => true,
        Role::Monitor => path == "/metrics",
        Role::Member => {
            let Some(m) = &entry.member else { return false };
            path.strip_prefix("/api/members/")
                .and_then(|r| {
                    r.strip_suffix("/statement")
                        .or_else(|| r.strip_suffix("/export"))
                        .or_else(|| r.strip_suffix("/invoices"))
                        .or_else(|| {
                            r.rsplit_once("/invoices/")
                                .filter(|(_, f)| !f.is_empty() && !f.contains('/'))
                                .map(|(id, _)| id)
                        })
                })
                .is_some_and(|id| id == m)
        }
    }
}

fn is_open(path: &str) -> bool {
    matches!(path, "/" | "/healthz" | "/readyz")
}

/// The tokens of a running collector, re-read when the file changes.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, Arc<TokenFile>)>,
}

impl Tokens {
    /// Tokens from `path` (read now, then whenever its modification time changes).
    pub fn new(path: PathBuf) -> Result<Self, ProvisionError> {
        let file = TokenFile::load(&path)?;
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        Ok(Tokens {
            path,
            cache: Mutex::new((mtime, Arc::new(file))),
        })
    }

    fn current(&self) -> Arc<TokenFile> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.0 != mtime {
            match TokenFile::load(&self.path) {
                Ok(f) => *c = (mtime, Arc::new(f)),
                // Keep the tokens we had rather than opening or closing the API on a bad edit.
                Err(e) => {
                    tracing::error!(error = %e, "tokens file unreadable; keeping the previous tokens")
                }
            }
        }
        c.1.clone()
    }
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    let mut r = (status, Json(serde_json::json!({ "error": msg }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"fabmeter\""),
        );
    }
    r
}

/// Axum middleware: lets a request through when its bearer token allows its path.
pub async fn require_token(
    State(tokens): State<Arc<Tokens>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    if is_open(&path) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = presented else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this API needs a token: send `Authorization: Bearer <token>` (a manager creates one with `fabmeter-collector token create`)",
        );
    };
    let file = tokens.current();
    let Some(entry) = file.find(token) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unknown or revoked token: ask a manager for a new one",
        );
    };
    if !allowed(entry, &path) {
        return refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "token {:?} (role {:?}) may not read {path}",
                entry.name, entry.role
            ),
        );
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_reach_what_they_should_and_nothing_else() {
        let mut f = TokenFile::default();
        let m = f
            .create(
                "alice-phone",
                Role::Member,
                Some("alice"),
                "2026-12-01T00:00:00Z",
            )
            .expect("member");
        let e = f.find(&m).expect("found").clone();
        assert!(allowed(&e, "/api/members/alice/statement"));
        assert!(!allowed(&e, "/api/members/bob/statement"));
        assert!(!allowed(&e, "/api/members/alice/statement/x"));
        assert!(allowed(&e, "/api/members/alice/export"));
        assert!(!allowed(&e, "/api/members/bob/export"));
        assert!(allowed(&e, "/api/members/alice/invoices"));
        assert!(allowed(
            &e,
            "/api/members/alice/invoices/ATL-2026-000001.pdf"
        ));
        assert!(!allowed(&e, "/api/members/bob/invoices"));
        assert!(!allowed(
            &e,
            "/api/members/bob/invoices/ATL-2026-000001.pdf"
        ));
        assert!(!allowed(&e, "/api/members/alice/invoices/x/y.pdf"));
        assert!(!allowed(
            &e,
            "/api/members/bob/invoices/alice/invoices/x.pdf"
        ));
        assert!(!allowed(&e, "/api/machines"));
        let mon = f
            .create("prometheus", Role::Monitor, None, "2026-12-01T00:00:00Z")
            .expect("monitor");
        let e = f.find(&mon).expect("found").clone();
        assert!(allowed(&e, "/metrics") && !allowed(&e, "/api/sessions"));
        assert!(f.find("fm_not-a-token").is_none());
        assert!(f
            .create("prometheus", Role::Monitor, None, "x")
            .is_err_and(|e| e.contains("exists")));
        assert!(f.create("x", Role::Member, None, "x").is_err());
        assert!(f.revoke("prometheus") && f.find(&mon).is_none());
        let text = toml::to_string_pretty(&f).expect("toml");
        assert!(!text.contains(&m), "only hashes are stored");
    }
}
