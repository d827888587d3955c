//! Route table: longest path prefix wins. Built once per config, read by every request.
//!
//! Small tables (the common case) are scanned longest-first. Past `LINEAR_ROUTES_MAX` (16) routes
//! the prefixes are grouped by length in hash maps, and a lookup tries each distinct length,
//! longest first: a handful of hash probes however many routes there are (a 10,000-route
//! config costs about as much per request as a 20-route one).

use std::collections::HashMap;

use crate::config::RouteConfig;

/// Up to this many routes, a linear scan beats hashing.
const LINEAR_ROUTES_MAX: usize = 16;

#[derive(Debug, Clone)]
pub struct Routes {
    /// (prefix, route index), longest prefix first: the small-table form.
    entries: Vec<(String, usize)>,
    /// (prefix length, prefix → route index), longest first: the large-table form.
    by_len: Vec<(usize, HashMap<String, usize>)>,
}

impl Routes {
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut entries: Vec<(String, usize)> = routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.path_prefix.clone(), i))
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        if entries.len() <= LINEAR_ROUTES_MAX {
            return Self {
                entries,
                by_len: Vec::new(),
            };
        }
        let mut by_len: Vec<(usize, HashMap<String, usize>)> = Vec::new();
        for (prefix, i) in entries {
            let len = prefix.len();
            match by_len.last_mut() {
                Some((l, map)) if *l == len => {
                    map.insert(prefix, i);
                }
                _ => by_len.push((len, HashMap::from([(prefix, i)]))),
            }
        }
        Self {
            entries: Vec::new(),
            by_len,
        }
    }

    /// The index (in the config) of the route for `path` (query string included; prefixes
    /// never contain `?`).
    pub fn lookup(&self, path: &str) -> Option<usize> {
        if self.by_len.is_empty() {
            return self
                .entries
                .iter()
                .find(|(prefix, _)| path.starts_with(prefix.as_str()))
                .map(|e| e.1);
        }
        self.by_len
            .iter()
            .filter(|(len, _)| *len <= path.len())
            .find_map(|(len, map)| map.get(path.get(..*len)?).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str) -> RouteConfig {
        RouteConfig {
            path_prefix: prefix.into(),
            upstream: 0,
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let r = Routes::new(&[route("/"), route("/v1/embeddings"), route("/v1/")]);
        assert_eq!(r.lookup("/v1/chat/completions"), Some(2));
        assert_eq!(r.lookup("/v1/embeddings?x=1"), Some(1));
        assert_eq!(r.lookup("/health"), Some(0));
        let r = Routes::new(&[route("/v1/")]);
        assert_eq!(r.lookup("/v2/x"), None);
    }

    #[test]
    fn large_tables_agree_with_a_linear_scan() {
        let mut cfg: Vec<RouteConfig> = (0..2000).map(|i| route(&format!("/r{i}/"))).collect();
        cfg.extend(["/", "/r1", "/r12/x/", "/é/", "/r1999/deep/er/"].map(route));
        let big = Routes::new(&cfg);
        assert!(!big.by_len.is_empty());
        let linear = |path: &str| {
            cfg.iter()
                .enumerate()
                .filter(|(_, r)| path.starts_with(r.path_prefix.as_str()))
                .max_by_key(|(_, r)| r.path_prefix.len())
                .map(|(i, _)| i)
        };
        for path in [
            "/",
            "/r1",
            "/r1/",
            "/r12/x/y",
            "/r12/",
            "/r19",
            "/r1999/deep/er/x",
            "/zzz",
            "/é/a",
            "/éé",
            "/r5?q",
            "",
        ] {
            assert_eq!(big.lookup(path), linear(path), "{path}");
        }
    }
}
