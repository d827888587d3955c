//! Prices: what a model's tokens cost, in US dollars, for spend and USD budgets.
//!
//! A price is given in USD per million tokens for input, cached input (cache reads), cache
//! writes (Anthropic's `cache_creation_input_tokens`), output and reasoning tokens. The table is
//! shardgate's default ([`DEFAULT_TABLE`], common OpenAI, Anthropic and Gemini models, with the
//! date and source it was taken from) with the config's `[[prices]]` entries over it (an entry
//! of the same model replaces the default's), unless `[pricing] default_table = false`.
//!
//! Held as integers: picodollars (10^-12 USD) per token, so $0.075 per million is exactly 75,000
//! and a cost is summed without rounding; a request's cost is then kept in nanodollars
//! (10^-9 USD, u64: 18 billion dollars of range) and a budget in microdollars. I/O-free.

use std::collections::HashMap;

use serde::Deserialize;

/// The default price table, in the `[[prices]]` format (USD per million tokens).
pub const DEFAULT_TABLE: &str = include_str!("prices-default.toml");
/// Most `[[prices]]` entries in one config.
pub const PRICES_MAX: usize = 4096;
/// The highest price a config may give, USD per million tokens.
pub const PRICE_USD_PER_MTOK_MAX: f64 = 100_000.0;
/// Longest model name a price is given for, bytes.
pub const PRICE_MODEL_BYTES_MAX: usize = 256;

/// Picodollars per token in one USD per million tokens.
const PUSD_PER_TOKEN_PER_USD_PER_MTOK: f64 = 1_000_000.0;
/// Picodollars in a nanodollar, and in a microdollar.
const PUSD_PER_NUSD: u128 = 1_000;
const PUSD_PER_UUSD: u128 = 1_000_000;

/// A `[[prices]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// A model group's name, or a deployment's (the upstream's) model name.
    pub model: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    /// Default: the input price.
    pub cached_input_usd_per_mtok: Option<f64>,
    /// Default: the input price.
    pub cache_write_usd_per_mtok: Option<f64>,
    /// Default: the output price.
    pub reasoning_usd_per_mtok: Option<f64>,
}

/// `[pricing]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPricing {
    /// Start from shardgate's default table (default: true).
    pub default_table: Option<bool>,
}

/// The default table's file: where it was taken from, and its entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultFile {
    taken: String,
    source: String,
    prices: Vec<RawPrice>,
}

/// One model's prices, picodollars per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub output: u64,
    pub reasoning: u64,
}

/// The tokens one request used, as the upstream reported them. `cached` and `cache_write` are
/// part of `prompt`, `reasoning` part of `completion` (OpenAI's counting; the engine's usage
/// scanner brings Anthropic's to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tokens {
    pub prompt: u64,
    pub cached: u64,
    pub cache_write: u64,
    pub completion: u64,
    pub reasoning: u64,
}

impl Price {
    /// What `t` cost, nanodollars (rounded to the nearest).
    pub fn cost_nusd(&self, t: &Tokens) -> u64 {
        let cached = t.cached.min(t.prompt);
        let cache_write = t.cache_write.min(t.prompt - cached);
        let plain_in = t.prompt - cached - cache_write;
        let reasoning = t.reasoning.min(t.completion);
        let plain_out = t.completion - reasoning;
        let p = |n: u64, price: u64| u128::from(n) * u128::from(price);
        let pusd = p(plain_in, self.input)
            + p(cached, self.cached_input)
            + p(cache_write, self.cache_write)
            + p(plain_out, self.output)
            + p(reasoning, self.reasoning);
        u64::try_from((pusd + PUSD_PER_NUSD / 2) / PUSD_PER_NUSD).unwrap_or(u64::MAX)
    }

    /// The most a request can cost with `prompt` tokens in and at most `max_tokens` out (all at
    /// the dearer of the output and reasoning prices), microdollars rounded up: what a USD
    /// budget reserves at admission.
    pub fn estimate_uusd(&self, prompt: u64, max_tokens: u64) -> u64 {
        let pusd = u128::from(prompt) * u128::from(self.input)
            + u128::from(max_tokens) * u128::from(self.output.max(self.reasoning));
        u64::try_from(pusd.div_ceil(PUSD_PER_UUSD)).unwrap_or(u64::MAX)
    }

    /// How many output tokens `uusd` microdollars buy (`u64::MAX` when output is free).
    pub fn output_tokens_for_uusd(&self, uusd: u64) -> u64 {
        let per = self.output.max(self.reasoning);
        if per == 0 {
            return u64::MAX;
        }
        u64::try_from(u128::from(uusd) * PUSD_PER_UUSD / u128::from(per)).unwrap_or(u64::MAX)
    }
}

/// Nanodollars to microdollars, rounded up (a budget is never charged less than the cost).
pub fn nusd_to_uusd(nusd: u64) -> u64 {
    nusd.div_ceil(1_000)
}

/// A fixed-point number written exactly in decimal: `value / 10^decimals`, no exponent,
/// trailing zeros cut (`2.5`, `0.000001`, `60`). The one writer of such numbers: the metrics'
/// seconds and dollars, the access log's and ctl's dollars.
#[derive(Debug, Clone, Copy)]
pub struct Fixed {
    pub value: u64,
    pub decimals: u32,
}

impl Fixed {
    /// The number's text into `buf` (at most 20 digits, a point and 19 more); its length.
    /// Without the formatting machinery: the access log writes a cost per request with it.
    pub fn digits(&self, buf: &mut [u8; 41]) -> usize {
        let decimals = self.decimals.min(19);
        let scale = 10u64.pow(decimals);
        let mut n = 0;
        let mut whole = self.value / scale;
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (whole % 10) as u8;
            whole /= 10;
            if whole == 0 {
                break;
            }
        }
        buf[..tmp.len() - i].copy_from_slice(&tmp[i..]);
        n += tmp.len() - i;
        let mut frac = self.value % scale;
        if frac == 0 {
            return n;
        }
        let mut width = decimals as usize;
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        buf[n] = b'.';
        n += 1;
        for k in (0..width).rev() {
            buf[n + k] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        n + width
    }

    /// Append the number's text to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut buf = [0u8; 41];
        let n = self.digits(&mut buf);
        out.extend_from_slice(&buf[..n]);
    }
}

impl std::fmt::Display for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = [0u8; 41];
        let n = self.digits(&mut buf);
        // ASCII digits and a point only.
        f.write_str(std::str::from_utf8(&buf[..n]).unwrap_or("0"))
    }
}

/// Nanodollars as dollars: `0.000006063`.
pub fn usd(nusd: u64) -> Fixed {
    Fixed {
        value: nusd,
        decimals: 9,
    }
}

/// A price in USD per million tokens, checked, as picodollars per token.
fn pusd_per_token(v: f64) -> Result<u64, String> {
    if !v.is_finite() || !(0.0..=PRICE_USD_PER_MTOK_MAX).contains(&v) {
        return Err(format!(
            "must be a number of USD per million tokens between 0 and {PRICE_USD_PER_MTOK_MAX}, \
             got {v}"
        ));
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked above: finite, 0 to 10^5, so at most 10^11 after scaling"
    )]
    Ok((v * PUSD_PER_TOKEN_PER_USD_PER_MTOK).round() as u64)
}

/// USD as microdollars (a budget), checked: `None` with the reason.
pub fn uusd_of(usd: f64, max_usd: f64) -> Result<u64, String> {
    if !usd.is_finite() || usd <= 0.0 || usd > max_usd {
        return Err(format!(
            "must be a number of US dollars above 0 and at most {max_usd}, got {usd}"
        ));
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked above: finite, above 0 and at most max_usd, far below 2^64 µ$"
    )]
    Ok((usd * 1_000_000.0).round().max(1.0) as u64)
}

/// The prices in force: by model name.
#[derive(Clone, Default, PartialEq)]
pub struct PriceTable {
    by_model: HashMap<String, Price>,
    /// When and where the default table was taken (`None`: it is not used).
    pub default_taken: Option<(String, String)>,
}

/// Sorted by model (two tables with the same prices print the same).
impl std::fmt::Debug for PriceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut entries: Vec<_> = self.by_model.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        f.debug_struct("PriceTable")
            .field("by_model", &entries)
            .field("default_taken", &self.default_taken)
            .finish()
    }
}

impl PriceTable {
    /// The price of `model`, if the table has one.
    pub fn get(&self, model: &str) -> Option<Price> {
        self.by_model.get(model).copied()
    }

    pub fn len(&self) -> usize {
        self.by_model.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }

    /// The table from the default (when `default_table`) and the config's entries over it;
    /// each problem goes to `error(field, reason)`.
    pub fn build(
        pricing: Option<&RawPricing>,
        raw: Vec<RawPrice>,
        mut error: impl FnMut(String, String),
    ) -> PriceTable {
        let mut table = PriceTable::default();
        if pricing.and_then(|p| p.default_table).unwrap_or(true) {
            // The embedded table is checked by a test; a failure here would be a build's bug,
            // reported as a config error rather than a panic.
            match toml::from_str::<DefaultFile>(DEFAULT_TABLE) {
                Ok(d) => {
                    for p in d.prices {
                        if let Ok(price) = price_of(&p) {
                            table.by_model.insert(p.model, price);
                        }
                    }
                    table.default_taken = Some((d.taken, d.source));
                }
                Err(e) => error("pricing.default_table".into(), e.to_string()),
            }
        }
        if raw.len() > PRICES_MAX {
            error(
                "prices".into(),
                format!("{} entries; at most {PRICES_MAX}", raw.len()),
            );
            return table;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in raw.into_iter().enumerate() {
            if p.model.is_empty() || p.model.len() > PRICE_MODEL_BYTES_MAX {
                error(
                    format!("prices[{i}].model"),
                    format!("must be 1 to {PRICE_MODEL_BYTES_MAX} bytes"),
                );
                continue;
            }
            if !seen.insert(p.model.clone()) {
                error(
                    format!("prices[{i}].model"),
                    format!("{:?} has a price already", p.model),
                );
                continue;
            }
            match price_of(&p) {
                Ok(price) => {
                    table.by_model.insert(p.model, price);
                }
                Err((field, reason)) => error(format!("prices[{i}].{field}"), reason),
            }
        }
        table
    }
}

fn price_of(p: &RawPrice) -> Result<Price, (&'static str, String)> {
    let get = |field: &'static str, v: f64| pusd_per_token(v).map_err(|r| (field, r));
    let input = get("input_usd_per_mtok", p.input_usd_per_mtok)?;
    let output = get("output_usd_per_mtok", p.output_usd_per_mtok)?;
    Ok(Price {
        input,
        output,
        cached_input: p
            .cached_input_usd_per_mtok
            .map_or(Ok(input), |v| get("cached_input_usd_per_mtok", v))?,
        cache_write: p
            .cache_write_usd_per_mtok
            .map_or(Ok(input), |v| get("cache_write_usd_per_mtok", v))?,
        reasoning: p
            .reasoning_usd_per_mtok
            .map_or(Ok(output), |v| get("reasoning_usd_per_mtok", v))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &str, default: bool) -> (PriceTable, Vec<(String, String)>) {
        #[derive(Deserialize)]
        struct F {
            #[serde(default)]
            prices: Vec<RawPrice>,
        }
        let f: F = toml::from_str(entries).expect("toml");
        let mut errors = Vec::new();
        let t = PriceTable::build(
            Some(&RawPricing {
                default_table: Some(default),
            }),
            f.prices,
            |a, b| errors.push((a, b)),
        );
        (t, errors)
    }

    #[test]
    fn the_default_table_reads_whole_and_names_its_date() {
        let d: DefaultFile = toml::from_str(DEFAULT_TABLE).expect("default table");
        assert!(d.prices.len() >= 30, "{}", d.prices.len());
        for p in &d.prices {
            price_of(p).unwrap_or_else(|e| panic!("{}: {e:?}", p.model));
        }
        let (t, errors) = table("", true);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(t.len(), d.prices.len());
        assert_eq!(
            t.default_taken.as_ref().map(|x| x.0.as_str()),
            Some("2026-12-06")
        );
        // gpt-4o: $2.50 in, $1.25 cached, $10 out per million.
        let p = t.get("gpt-4o").expect("gpt-4o");
        assert_eq!(
            (p.input, p.cached_input, p.output),
            (2_500_000, 1_250_000, 10_000_000)
        );
        assert!(t.get("claude-sonnet-4-5").is_some());
        assert!(t.get("gemini-2.5-flash").is_some());
    }

    #[test]
    fn config_entries_replace_the_defaults_and_defaults_can_be_left_out() {
        let (t, errors) = table(
            "[[prices]]\nmodel = \"gpt-4o\"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n\
             [[prices]]\nmodel = \"mine\"\ninput_usd_per_mtok = 0.075\noutput_usd_per_mtok = 0.3\n\
             reasoning_usd_per_mtok = 1.2\n",
            true,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let p = t.get("gpt-4o").expect("gpt-4o");
        assert_eq!(
            (p.input, p.cached_input, p.output),
            (1_000_000, 1_000_000, 2_000_000)
        );
        let m = t.get("mine").expect("mine");
        assert_eq!(
            (m.input, m.output, m.reasoning),
            (75_000, 300_000, 1_200_000)
        );
        let (t, _) = table("", false);
        assert!(t.is_empty() && t.default_taken.is_none());
    }

    #[test]
    fn bad_prices_are_refused_by_field() {
        let (_, errors) = table(
            "[[prices]]\nmodel = \"a\"\ninput_usd_per_mtok = -1\noutput_usd_per_mtok = 2\n\
             [[prices]]\nmodel = \"b\"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1e9\n\
             [[prices]]\nmodel = \"b\"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\n\
             [[prices]]\nmodel = \"\"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\n\
             [[prices]]\nmodel = \"c\"\ninput_usd_per_mtok = nan\noutput_usd_per_mtok = 1\n",
            false,
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            fields,
            [
                "prices[0].input_usd_per_mtok",
                "prices[1].output_usd_per_mtok",
                "prices[2].model",
                "prices[3].model",
                "prices[4].input_usd_per_mtok"
            ]
        );
    }

    #[test]
    fn cost_splits_cached_and_reasoning_tokens() {
        let p = Price {
            input: 2_500_000,
            cached_input: 1_250_000,
            cache_write: 3_125_000,
            output: 10_000_000,
            reasoning: 20_000_000,
        };
        let t = Tokens {
            prompt: 1000,
            cached: 400,
            cache_write: 100,
            completion: 300,
            reasoning: 100,
        };
        // Per token, picodollars: 500 × 2.5 M + 400 × 1.25 M + 100 × 3.125 M + 200 × 10 M +
        // 100 × 20 M = 6,062,500,000 pUSD = 6,062,500 nUSD ($0.0060625).
        assert_eq!(p.cost_nusd(&t), 6_062_500);
        // Rounded to the nearest nanodollar: one plain input token at $0.0015 per million is
        // 1,500 pUSD, 1.5 nUSD → 2.
        let tiny = Price { input: 1_500, ..p };
        let one = Tokens {
            prompt: 1,
            ..Tokens::default()
        };
        assert_eq!(tiny.cost_nusd(&one), 2);
        // Counts that claim more cached than prompt tokens are capped, never underflow.
        let odd = Tokens {
            prompt: 10,
            cached: 50,
            cache_write: 50,
            completion: 1,
            reasoning: 9,
        };
        assert_eq!(
            p.cost_nusd(&odd),
            (10 * 1_250_000 + 20_000_000u64).div_ceil(1000)
        );
        let huge = Tokens {
            prompt: u64::MAX,
            completion: u64::MAX,
            ..Tokens::default()
        };
        assert_eq!(p.cost_nusd(&huge), u64::MAX);
        // The estimate: prompt at input, max_tokens at the dearer output price, rounded up.
        assert_eq!(
            p.estimate_uusd(1000, 100),
            (2_500_000_000u64 + 2_000_000_000).div_ceil(1_000_000)
        );
        assert_eq!(p.output_tokens_for_uusd(20), 1);
        assert_eq!(nusd_to_uusd(1), 1);
        assert_eq!(nusd_to_uusd(1000), 1);
        assert_eq!(nusd_to_uusd(1001), 2);
    }

    #[test]
    fn dollars_are_written_without_exponent_or_trailing_zeros() {
        for (n, s) in [
            (0, "0"),
            (1, "0.000000001"),
            (6_063, "0.000006063"),
            (1_500_000_000, "1.5"),
            (12_000_000_000, "12"),
            (u64::MAX, "18446744073.709551615"),
        ] {
            assert_eq!(usd(n).to_string(), s);
            let mut v = Vec::new();
            usd(n).write_to(&mut v);
            assert_eq!(v, s.as_bytes());
        }
        let odd = Fixed {
            value: u64::MAX,
            decimals: 40,
        };
        assert_eq!(odd.to_string(), "1.8446744073709551615");
        assert_eq!(
            Fixed {
                value: 2_500,
                decimals: 3
            }
            .to_string(),
            "2.5"
        );
        assert_eq!(
            Fixed {
                value: 7,
                decimals: 0
            }
            .to_string(),
            "7"
        );
        assert_eq!(uusd_of(12.5, 1e9), Ok(12_500_000));
        assert!(uusd_of(0.0, 1e9).is_err());
        assert!(uusd_of(f64::INFINITY, 1e9).is_err());
    }
}
