//! `access ...`: the operators' side of the approval workflow. Tenants file requests for
//! models with their own key (`POST /v1/access-requests` on the data port); `access list` shows
//! them, `access approve` grants the model (and, if given, sets the tenant's rpm/tpm), `access
//! deny` refuses it with a reason the tenant sees. Each decision is a change to the tenant store
//! (`shardgate_core::manage`): audited, and in force on every shard when the command returns.

use std::time::{Duration, UNIX_EPOCH};

use clap::Subcommand;
use shardgate_core::manage;
use shardgate_core::store::AccessStatus;
use shardgate_core::store_op::StoreOp;

use crate::table::{render, Align};
use crate::tenants::{self, refused};
use crate::Failure;

/// Characters of a reason shown in `access list` (longer ones end in `…`).
const REASON_SHOWN_CHARS: usize = 60;

#[derive(Debug, Subcommand)]
pub enum AccessOp {
    /// Tenants' access requests: ID TENANT MODEL STATUS CREATED REASON.
    List {
        /// Only the requests waiting for a decision.
        #[arg(long)]
        pending: bool,
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Grant the model of request ID to its tenant, at once.
    Approve {
        id: String,
        /// Set the tenant's requests per minute (limits are per tenant, not per model).
        #[arg(long)]
        rpm: Option<i64>,
        /// Set the tenant's tokens per minute.
        #[arg(long)]
        tpm: Option<i64>,
    },
    /// Refuse request ID; the tenant sees the reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

/// Run `op` on `instance`.
pub fn run(instance: &str, op: AccessOp, timeout: Duration) -> Result<(), Failure> {
    let (op, said): (StoreOp, tenants::Said) = match op {
        AccessOp::List { pending, tenant } => return list(instance, pending, tenant.as_deref()),
        AccessOp::Approve { id, rpm, tpm } => (
            StoreOp::AccessApprove {
                id: id.clone(),
                rpm,
                tpm,
            },
            Box::new(move |r| {
                format!(
                    "approved {id}: tenant {} may use model {} now",
                    r["tenant"].as_str().unwrap_or("?"),
                    r["model"].as_str().unwrap_or("?")
                )
            }),
        ),
        AccessOp::Deny { id, reason } => (
            StoreOp::AccessDeny {
                id: id.clone(),
                reason,
            },
            Box::new(move |_| format!("denied {id}")),
        ),
    };
    tenants::change(instance, timeout, op, said)
}

fn list(instance: &str, pending: bool, tenant: Option<&str>) -> Result<(), Failure> {
    let region = crate::open_running(instance)?;
    let (store, _) = manage::running_store(&region).map_err(refused)?;
    let rows: Vec<Vec<String>> = store
        .access_requests
        .iter()
        .filter(|(_, r)| !pending || r.status == AccessStatus::Pending)
        .filter(|(_, r)| tenant.is_none_or(|t| t == r.tenant))
        .map(|(id, r)| {
            vec![
                id.clone(),
                r.tenant.clone(),
                r.model.clone(),
                r.status.as_str().to_owned(),
                created(r.created_unix_ms),
                shown(&r.reason),
            ]
        })
        .collect();
    let l = Align::Left;
    let header = [
        ("ID", l),
        ("TENANT", l),
        ("MODEL", l),
        ("STATUS", l),
        ("CREATED", l),
        ("REASON", l),
    ];
    print!("{}", render(&header, &rows));
    Ok(())
}

/// A moment as UTC, to the second (`2026-12-06T10:00:00Z`).
fn created(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// A reason cut to [`REASON_SHOWN_CHARS`] for the table.
fn shown(reason: &str) -> String {
    if reason.chars().count() <= REASON_SHOWN_CHARS {
        return reason.to_owned();
    }
    let mut s: String = reason.chars().take(REASON_SHOWN_CHARS - 1).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_reasons_as_the_table_shows_them() {
        assert_eq!(created(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(shown("short"), "short");
        let long = shown(&"é".repeat(100));
        assert_eq!(long.chars().count(), REASON_SHOWN_CHARS);
        assert!(long.ends_with('…'));
    }
}
