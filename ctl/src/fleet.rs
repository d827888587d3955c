//! `fleet status`: this instance's fleet agent (Redis reachable, its round trip, the instances
//! it sees, its last sync), the instances Redis knows and when each last synced, the credit
//! this instance holds of each limit, and its share of each tenant's `max_concurrency`
//! (`[fleet]`, decision 0013).

use std::sync::atomic::Ordering;

use shardgate_core::control::publish;
use shardgate_core::control::shm::{CreditCells, Region};
use shardgate_core::control::unix_ms;
use shardgate_core::fleet::Kind;

use crate::table::{render, Align};
use crate::Failure;

/// One limit's credit on this instance, as the region holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditRow {
    pub name: String,
    pub kind: &'static str,
    pub credit: u64,
    pub debt: u64,
    pub overdraft_max: u64,
    pub used: u64,
}

fn row(name: &str, kind: &'static str, c: &CreditCells) -> CreditRow {
    CreditRow {
        name: name.to_owned(),
        kind,
        credit: c.credit.load(Ordering::Relaxed),
        debt: c.debt.load(Ordering::Relaxed),
        overdraft_max: c.overdraft_max.load(Ordering::Relaxed),
        used: c.used.load(Ordering::Relaxed),
    }
}

/// The limits this instance traded with the fleet (credit held or units used), by name; a
/// key's own limits show as `key:` and its lineage.
pub fn credits(region: &Region) -> Vec<CreditRow> {
    let mut out = Vec::new();
    for (slot, name, _) in region.tenant_slots() {
        let Some(f) = region.fleet(slot) else {
            continue;
        };
        let shown = match name.strip_prefix("\u{1}key/") {
            Some(lineage) => format!("key:{lineage}"),
            None if name.starts_with('\u{1}') => continue,
            None => name,
        };
        for kind in Kind::ALL {
            let r = row(&shown, kind.as_str(), kind.cells(f));
            if r.used > 0 || r.credit > 0 || r.debt > 0 {
                out.push(r);
            }
        }
    }
    out.sort_by(|a, b| (&a.name, a.kind).cmp(&(&b.name, b.kind)));
    out
}

/// One tenant's share of its `max_concurrency` on this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRow {
    pub name: String,
    /// Requests this instance may have in flight for the tenant.
    pub slots: u64,
    pub in_flight: u64,
}

/// The tenants whose share of `max_concurrency` the fleet agent has set, by name.
pub fn slot_rows(region: &Region) -> Vec<SlotRow> {
    let mut out: Vec<SlotRow> = region
        .tenant_slots()
        .filter(|(_, name, _)| !name.starts_with('\u{1}'))
        .filter_map(|(slot, name, cells)| {
            let cap = region.fleet(slot)?.concurrency.cap.load(Ordering::Relaxed);
            (cap > 0).then(|| SlotRow {
                name,
                slots: cap - 1,
                in_flight: cells.inflight.load(Ordering::Relaxed),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Print the fleet's status as this instance sees it.
pub fn status(instance: &str) -> Result<(), Failure> {
    let region = crate::open_running(instance)?;
    let (_, _, running) = publish::running_text_without_store(&region).map_err(Failure::failed)?;
    let Some(fleet) = running.fleet else {
        return Err(Failure::failed(format!(
            "instance {instance} is not in a fleet: its config has no [fleet] section"
        )));
    };
    let h = region.header();
    let up = h.fleet_redis_up.load(Ordering::Relaxed) == 1;
    let synced = h.fleet_synced_unix_ms.load(Ordering::Relaxed);
    println!(
        "fleet: Redis {} {} from the engine (round trip {} us); {} instance(s) seen; last sync {} ms ago",
        fleet.url,
        if up { "reachable" } else { "UNREACHABLE" },
        h.fleet_redis_rtt_us.load(Ordering::Relaxed),
        h.fleet_instances.load(Ordering::Relaxed),
        unix_ms().saturating_sub(synced)
    );
    match shardgate_core::fleet::connect(&fleet)
        .and_then(|mut c| shardgate_core::fleet::instances(&mut c))
    {
        Ok(list) => {
            let now = unix_ms();
            let rows: Vec<Vec<String>> = list
                .into_iter()
                .map(|(id, at)| vec![id, format!("{} ms ago", now.saturating_sub(at))])
                .collect();
            print!(
                "{}",
                render(
                    &[("INSTANCE", Align::Left), ("LAST SYNC", Align::Right)],
                    &rows
                )
            );
        }
        Err(why) => println!("instances: Redis cannot be read from here: {why}"),
    }
    let rows: Vec<Vec<String>> = credits(&region)
        .into_iter()
        .map(|r| {
            vec![
                r.name,
                r.kind.to_owned(),
                r.credit.to_string(),
                r.debt.to_string(),
                r.overdraft_max.to_string(),
                r.used.to_string(),
            ]
        })
        .collect();
    let r = Align::Right;
    print!(
        "{}",
        render(
            &[
                ("LIMIT", Align::Left),
                ("KIND", Align::Left),
                ("CREDIT", r),
                ("DEBT", r),
                ("OVERDRAFT", r),
                ("USED", r),
            ],
            &rows
        )
    );
    let slots: Vec<Vec<String>> = slot_rows(&region)
        .into_iter()
        .map(|r| vec![r.name, r.slots.to_string(), r.in_flight.to_string()])
        .collect();
    if !slots.is_empty() {
        print!(
            "{}",
            render(
                &[
                    ("TENANT", Align::Left),
                    ("CONCURRENCY SHARE", r),
                    ("IN FLIGHT", r),
                ],
                &slots
            )
        );
    }
    Ok(())
}
