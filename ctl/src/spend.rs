//! `spend`: what tenants' requests cost, from the shards' counters (since the instance
//! started) or, with `--since` or `--key`, from the access log (`shardgate_core::spend`).

use std::time::Duration;

use shardgate_core::control::{publish, unix_ms};
use shardgate_core::spend::{self, Query};

use crate::table::{render, Align};
use crate::Failure;

/// Print the spend `q` asks for, as a table or as JSON.
pub fn run(instance: &str, q: &Query, json: bool) -> Result<(), Failure> {
    let region = crate::open_running(instance)?;
    let (_, _, running) = publish::running_text_without_store(&region).map_err(Failure::failed)?;
    let report = spend::report(&region, &running, q, unix_ms()).map_err(Failure::failed)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Failure::failed(e.to_string()))?
        );
        return Ok(());
    }
    match report.since_unix_ms {
        None if q.fleet => println!(
            "spend over the fleet (every instance's counters, since its Redis started), by tenant"
        ),
        None => println!("spend since the instance started (the shards' counters), by tenant"),
        Some(_) => println!(
            "spend from the access log{}, by tenant, key and model",
            q.since.map_or_else(String::new, |d| format!(
                " over the last {}",
                humantime::format_duration(Duration::from_secs(d.as_secs()))
            ))
        ),
    }
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            vec![
                r.tenant.clone(),
                r.key.clone().unwrap_or_else(|| "-".into()),
                r.model.clone().unwrap_or_else(|| "-".into()),
                r.requests.to_string(),
                r.tokens_in.to_string(),
                r.tokens_out.to_string(),
                format!("${}", r.spend_usd),
                r.unpriced.to_string(),
            ]
        })
        .collect();
    let (l, rt) = (Align::Left, Align::Right);
    let header = [
        ("TENANT", l),
        ("KEY", l),
        ("MODEL", l),
        ("REQUESTS", rt),
        ("TOKENS_IN", rt),
        ("TOKENS_OUT", rt),
        ("SPEND_USD", rt),
        ("UNPRICED", rt),
    ];
    print!("{}", render(&header, &rows));
    println!("total ${}", report.total_usd);
    if report.skipped_lines > 0 {
        println!(
            "({} access-log lines could not be read and were skipped)",
            report.skipped_lines
        );
    }
    Ok(())
}
