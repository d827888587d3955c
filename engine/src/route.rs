//! Route table: longest path prefix wins. Built once per config, read by every request.

use crate::config::RouteConfig;

#[derive(Debug, Clone)]
pub struct Routes {
    /// (prefix, route index), longest prefix first.
    entries: Vec<(String, usize)>,
}

impl Routes {
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut entries: Vec<(String, usize)> = routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.path_prefix.clone(), i))
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        Self { entries }
    }

    /// The index (in the config) of the route for `path` (query string included; prefixes
    /// never contain `?`).
    pub fn lookup(&self, path: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|e| e.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let r = Routes::new(&[
            RouteConfig {
                path_prefix: "/".into(),
                upstream: 0,
            },
            RouteConfig {
                path_prefix: "/v1/embeddings".into(),
                upstream: 2,
            },
            RouteConfig {
                path_prefix: "/v1/".into(),
                upstream: 1,
            },
        ]);
        assert_eq!(r.lookup("/v1/chat/completions"), Some(2));
        assert_eq!(r.lookup("/v1/embeddings?x=1"), Some(1));
        assert_eq!(r.lookup("/health"), Some(0));
        let r = Routes::new(&[RouteConfig {
            path_prefix: "/v1/".into(),
            upstream: 0,
        }]);
        assert_eq!(r.lookup("/v2/x"), None);
    }
}
