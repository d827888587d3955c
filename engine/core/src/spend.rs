//! Spend: what tenants' requests cost, for `shardgate-ctl spend` and `GET /admin/v1/spend`.
//!
//! Two sources, both summed here without I/O of their own:
//! - the shards' counters (`control::stats`): per tenant, since the instance started, exact
//!   (nanodollars);
//! - the access log (`[server] access_log`): one line per request with its `tenant`, `key`
//!   (id), `model` and `cost_usd`, so spend can be cut by time (`--since`), by key and by
//!   model, and outlives a restart. Lines without a tenant are not spend; a line with usage but
//!   `cost_usd: null` is an unpriced request.

use std::collections::BTreeMap;
use std::io::BufRead;

use serde::Serialize;

use crate::control::stats::Totals;

/// Longest access-log line read, bytes (longer lines are skipped and counted).
pub const SPEND_LINE_BYTES_MAX: usize = 64 * 1024;

/// Spend of one tenant (and, from the access log, one key and model).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpendRow {
    pub tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Nanodollars.
    #[serde(skip)]
    pub spend_nusd: u64,
    /// Dollars, as text (exact: `0.000006063`).
    pub spend_usd: String,
    /// Requests with usage whose model has no price.
    pub unpriced: u64,
}

/// A tenant's counters as the fleet's usage counters hold them (`fleet::USAGE_COUNTERS`).
pub fn usage_of(s: &crate::control::stats::SlotTotals) -> crate::fleet::Usage {
    [
        s.requests,
        s.tokens_in,
        s.tokens_out,
        s.spend_nusd,
        s.unpriced,
    ]
}

/// A tenant's row from its usage counters.
fn row(tenant: &str, u: &crate::fleet::Usage) -> SpendRow {
    let [requests, tokens_in, tokens_out, spend_nusd, unpriced] = *u;
    SpendRow {
        tenant: tenant.to_owned(),
        requests,
        tokens_in,
        tokens_out,
        spend_nusd,
        spend_usd: crate::prices::usd(spend_nusd).to_string(),
        unpriced,
        ..SpendRow::default()
    }
}

/// Per tenant from the counters (`tenant`: only that one).
pub fn from_counters(totals: &Totals, tenant: Option<&str>) -> Vec<SpendRow> {
    totals
        .tenants
        .iter()
        .filter(|(name, _)| tenant.is_none_or(|t| t == name.as_str()))
        .map(|(name, s)| row(name, &usage_of(s)))
        .collect()
}

/// Which access-log lines count.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Lines at or after this time.
    pub since_unix_ms: u64,
    pub tenant: Option<String>,
    /// A key id (`key_...`).
    pub key: Option<String>,
}

/// What reading an access log found.
#[derive(Debug, Default)]
pub struct FromLog {
    /// By tenant, key and model.
    pub rows: Vec<SpendRow>,
    /// Lines that were not JSON objects of the access log's shape (or too long).
    pub skipped: u64,
}

/// Sum the lines of an access log that `f` selects, by tenant, key and model.
pub fn from_access_log(mut log: impl BufRead, f: &LogFilter) -> std::io::Result<FromLog> {
    let mut by: BTreeMap<(String, Option<String>, Option<String>), SpendRow> = BTreeMap::new();
    let mut skipped = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a line is read at most SPEND_LINE_BYTES_MAX + 1 bytes at a time.
        let n = std::io::Read::take(log.by_ref(), SPEND_LINE_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') && n > SPEND_LINE_BYTES_MAX {
            skipped += 1;
            // Skip the rest of the overlong line.
            let mut rest = Vec::new();
            log.read_until(b'\n', &mut rest)?;
            continue;
        }
        match read_line(&line, f) {
            Line::Counted(key, add) => {
                let row = by.entry(key.clone()).or_insert_with(|| SpendRow {
                    tenant: key.0,
                    key: key.1,
                    model: key.2,
                    ..SpendRow::default()
                });
                row.requests += 1;
                row.tokens_in += add.tokens_in;
                row.tokens_out += add.tokens_out;
                row.spend_nusd = row.spend_nusd.saturating_add(add.spend_nusd);
                row.unpriced += add.unpriced;
            }
            Line::Other => {}
            Line::Bad => skipped += 1,
        }
    }
    let mut rows: Vec<SpendRow> = by.into_values().collect();
    for r in &mut rows {
        r.spend_usd = crate::prices::usd(r.spend_nusd).to_string();
    }
    Ok(FromLog { rows, skipped })
}

type RowKey = (String, Option<String>, Option<String>);

enum Line {
    Counted(RowKey, Box<SpendRow>),
    /// Not a tenant's request, or filtered out.
    Other,
    Bad,
}

fn read_line(line: &[u8], f: &LogFilter) -> Line {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
        return Line::Bad;
    };
    let Some(time) = v.get("time").and_then(|t| t.as_str()) else {
        return Line::Bad;
    };
    let Ok(at) = humantime::parse_rfc3339(time) else {
        return Line::Bad;
    };
    let at_ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if at_ms < f.since_unix_ms {
        return Line::Other;
    }
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let Some(tenant) = text("tenant") else {
        return Line::Other;
    };
    let key = text("key");
    if f.tenant.as_ref().is_some_and(|t| *t != tenant) || f.key.is_some() && f.key != key {
        return Line::Other;
    }
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
    let tokens_in = num("tokens_in");
    let cost = v.get("cost_usd").and_then(serde_json::Value::as_f64);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a per-request cost, far below 2^64 nanodollars; negatives clamp to 0"
    )]
    let spend_nusd = cost.map_or(0, |c| (c * 1e9).round().max(0.0) as u64);
    let add = SpendRow {
        tokens_in: tokens_in.unwrap_or(0),
        tokens_out: num("tokens_out").unwrap_or(0),
        spend_nusd,
        unpriced: u64::from(tokens_in.is_some() && cost.is_none()),
        ..SpendRow::default()
    };
    Line::Counted((tenant, key, text("model")), Box::new(add))
}

/// What `shardgate-ctl spend` and `GET /admin/v1/spend` ask.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub tenant: Option<String>,
    pub key: Option<String>,
    /// Only the last this long (read from the access log).
    pub since: Option<std::time::Duration>,
    /// Over the whole fleet (`[fleet]`): the fleet's usage counters in Redis, by tenant.
    pub fleet: bool,
}

/// Per tenant from the fleet's usage counters (`tenant`: only that one).
pub fn from_fleet(
    usage: &BTreeMap<String, crate::fleet::Usage>,
    tenant: Option<&str>,
) -> Vec<SpendRow> {
    usage
        .iter()
        .filter(|(name, _)| tenant.is_none_or(|t| t == name.as_str()))
        .map(|(name, u)| row(name, u))
        .collect()
}

/// A spend report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `counters` (since the instance started, by tenant), `access_log` (by tenant, key
    /// and model) or `fleet` (every instance's, since the fleet's Redis started, by tenant).
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_unix_ms: Option<u64>,
    pub rows: Vec<SpendRow>,
    /// Dollars over all rows.
    pub total_usd: String,
    /// Access-log lines that could not be read.
    pub skipped_lines: u64,
}

/// Answer `q` for the running instance: from the counters, or from the access log the running
/// config names when `q` asks by time or by key (blocking file I/O: ctl and the admin thread).
pub fn report(
    region: &crate::control::shm::Region,
    running: &crate::config::Config,
    q: &Query,
    now_unix_ms: u64,
) -> Result<Report, String> {
    let (source, since_unix_ms, rows, skipped) = if q.fleet {
        let Some(fleet) = &running.fleet else {
            return Err(
                "spend over the fleet is read from the fleet's Redis, and the running config \
                 has no [fleet]"
                    .into(),
            );
        };
        if q.since.is_some() || q.key.is_some() {
            return Err(
                "spend over the fleet is by tenant, since the fleet's Redis last started: \
                 without --since or --key (those read this instance's access log)"
                    .into(),
            );
        }
        let mut conn = crate::fleet::connect(fleet)?;
        let usage = crate::fleet::usage(&mut conn)
            .map_err(|e| format!("fleet.redis {}: {e}", fleet.url))?;
        ("fleet", None, from_fleet(&usage, q.tenant.as_deref()), 0)
    } else if q.since.is_none() && q.key.is_none() {
        let totals = crate::control::stats::read(region);
        (
            "counters",
            None,
            from_counters(&totals, q.tenant.as_deref()),
            0,
        )
    } else {
        let Some(path) = &running.server.access_log else {
            return Err(
                "spend by time or by key is read from the access log, and the running config \
                 names none: set [server] access_log (spend since the instance started, by \
                 tenant, needs no --since or --key)"
                    .into(),
            );
        };
        let since = q.since.map_or(0, |d| {
            now_unix_ms.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        });
        let file = std::fs::File::open(path)
            .map_err(|e| format!("{}: cannot read the access log: {e}", path.display()))?;
        let f = LogFilter {
            since_unix_ms: since,
            tenant: q.tenant.clone(),
            key: q.key.clone(),
        };
        let got = from_access_log(std::io::BufReader::new(file), &f)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        ("access_log", Some(since), got.rows, got.skipped)
    };
    let total = rows
        .iter()
        .fold(0u64, |a, r| a.saturating_add(r.spend_nusd));
    Ok(Report {
        source,
        since_unix_ms,
        rows,
        total_usd: crate::prices::usd(total).to_string(),
        skipped_lines: skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = concat!(
        r#"{"time":"2026-12-01T00:00:00.000Z","shard":0,"client":"127.0.0.1:1","method":"POST","path":"/v1/chat/completions","status":200,"bytes_in":1,"bytes_out":1,"duration_ms":1.000,"upstream":null,"tenant":"a","key":"key_000000000001","model":"gpt-4o","tokens_in":10,"tokens_out":5,"cost_usd":0.000075}"#,
        "\n",
        r#"{"time":"2026-12-03T00:00:00.000Z","shard":1,"client":"127.0.0.1:1","method":"POST","path":"/v1/chat/completions","status":200,"bytes_in":1,"bytes_out":1,"duration_ms":1.000,"upstream":null,"tenant":"a","key":"key_000000000001","model":"gpt-4o","tokens_in":20,"tokens_out":10,"cost_usd":0.00015}"#,
        "\n",
        r#"{"time":"2026-12-03T00:00:01.000Z","shard":1,"client":"127.0.0.1:1","method":"POST","path":"/v1/chat/completions","status":200,"bytes_in":1,"bytes_out":1,"duration_ms":1.000,"upstream":null,"tenant":"a","key":"key_000000000002","model":"own","tokens_in":3,"tokens_out":1,"cost_usd":null}"#,
        "\n",
        r#"{"time":"2026-12-03T00:00:02.000Z","shard":0,"client":"127.0.0.1:1","method":"GET","path":"/health","status":200,"bytes_in":1,"bytes_out":1,"duration_ms":1.000,"upstream":null}"#,
        "\n",
        "not json\n",
        r#"{"time":"2026-12-03T00:00:03.000Z","shard":0,"client":"127.0.0.1:1","method":"POST","path":"/v1/chat/completions","status":200,"bytes_in":1,"bytes_out":1,"duration_ms":1.000,"upstream":null,"tenant":"b","key":"key_000000000003","model":"gpt-4o","tokens_in":1,"tokens_out":1,"cost_usd":0.0000125}"#,
        "\n",
    );

    fn read(f: &LogFilter) -> FromLog {
        from_access_log(LOG.as_bytes(), f).expect("read")
    }

    #[test]
    fn sums_by_tenant_key_and_model() {
        let all = read(&LogFilter::default());
        assert_eq!(all.skipped, 1);
        let a1 = &all.rows[0];
        assert_eq!(
            (a1.tenant.as_str(), a1.key.as_deref(), a1.requests),
            ("a", Some("key_000000000001"), 2)
        );
        assert_eq!(
            (a1.tokens_in, a1.tokens_out, a1.spend_nusd),
            (30, 15, 225_000)
        );
        assert_eq!(a1.spend_usd, "0.000225");
        let a2 = &all.rows[1];
        assert_eq!((a2.unpriced, a2.spend_nusd), (1, 0));
        assert_eq!(all.rows[2].spend_usd, "0.0000125");
        assert_eq!(all.rows.len(), 3);
    }

    #[test]
    fn filters_by_time_tenant_and_key() {
        let since = humantime::parse_rfc3339("2026-12-02T00:00:00Z").expect("time");
        let since_unix_ms = u64::try_from(
            since
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis(),
        )
        .expect("fits");
        let f = LogFilter {
            since_unix_ms,
            tenant: Some("a".into()),
            key: Some("key_000000000001".into()),
        };
        let r = read(&f);
        assert_eq!(r.rows.len(), 1);
        assert_eq!((r.rows[0].requests, r.rows[0].spend_nusd), (1, 150_000));
    }

    #[test]
    fn an_overlong_line_is_skipped_whole() {
        let mut log = "x".repeat(SPEND_LINE_BYTES_MAX + 10);
        log.push('\n');
        log.push_str(LOG);
        let r = from_access_log(log.as_bytes(), &LogFilter::default()).expect("read");
        assert_eq!(r.skipped, 2);
        assert_eq!(r.rows.len(), 3);
    }
}
