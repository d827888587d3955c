//! The semantic diff `apply` shows: what a new config changes in the running one, one line per
//! change, named as in the file. Pure: two validated configs in, lines out.
//!
//! ```text
//! ~ server.idle_timeout_ms: 60000 -> 1000
//! + upstream b (2 endpoints)
//! ~ upstream a: endpoints [127.0.0.1:9] -> [127.0.0.1:9, 127.0.0.1:10]
//! ~ upstream a: connect_timeout_ms 3000 -> 500
//! - upstream old
//! + route /v2/ -> b
//! ~ route /v1/: a -> b
//! - route /old/
//! ```

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use shardgate_core::config::{
    Config, Cores, DriverChoice, Endpoint, Provider, RouteConfig, ServerConfig, UpstreamConfig,
};

/// Most diff lines `apply` prints; the rest are counted.
pub const DIFF_LINES_MAX: usize = 20;

/// What `new` changes in `old`: server fields, then upstreams, routes, tenants, model groups
/// and templates. Within each, added and changed entries in `new`'s order, then removed ones in
/// `old`'s order. Empty when the two configs are the same.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    server(&old.server, &new.server, &mut out);
    upstreams(old, new, &mut out);
    routes(old, new, &mut out);
    named("tenant", &old.tenants, &new.tenants, |t| &t.name, &mut out);
    named("model", &old.models, &new.models, |m| &m.name, &mut out);
    named(
        "template",
        &old.templates,
        &new.templates,
        |t| &t.name,
        &mut out,
    );
    out
}

/// Entries known by name (tenants, model groups, templates): added, changed (any field; a
/// tenant's keys are never printed), removed.
fn named<T: PartialEq>(
    kind: &str,
    old: &[T],
    new: &[T],
    name: fn(&T) -> &str,
    out: &mut Vec<String>,
) {
    for b in new {
        match old.iter().find(|a| name(a) == name(b)) {
            None => out.push(format!("+ {kind} {}", name(b))),
            Some(a) if a != b => out.push(format!("~ {kind} {}", name(b))),
            Some(_) => {}
        }
    }
    for a in old {
        if !new.iter().any(|b| name(b) == name(a)) {
            out.push(format!("- {kind} {}", name(a)));
        }
    }
}

/// The first `max` lines, and `... and N more changes` when there were more.
pub fn cap(mut lines: Vec<String>, max: usize) -> Vec<String> {
    if lines.len() > max {
        let more = lines.len() - max;
        lines.truncate(max);
        lines.push(format!("... and {more} more changes"));
    }
    lines
}

fn server(a: &ServerConfig, b: &ServerConfig, out: &mut Vec<String>) {
    let mut field = |name: &str, x: String, y: String| {
        if x != y {
            out.push(format!("~ server.{name}: {x} -> {y}"));
        }
    };
    field("listen", a.listen.to_string(), b.listen.to_string());
    field("cores", cores(a.cores), cores(b.cores));
    field("driver", driver(a.driver).into(), driver(b.driver).into());
    field(
        "header_bytes_max",
        a.header_bytes_max.to_string(),
        b.header_bytes_max.to_string(),
    );
    field(
        "headers_count_max",
        a.headers_count_max.to_string(),
        b.headers_count_max.to_string(),
    );
    field(
        "body_bytes_max",
        a.body_bytes_max.to_string(),
        b.body_bytes_max.to_string(),
    );
    field(
        "header_timeout_ms",
        ms(a.header_timeout),
        ms(b.header_timeout),
    );
    field("body_timeout_ms", ms(a.body_timeout), ms(b.body_timeout));
    field("idle_timeout_ms", ms(a.idle_timeout), ms(b.idle_timeout));
    field("send_timeout_ms", ms(a.send_timeout), ms(b.send_timeout));
    field("drain_timeout_ms", ms(a.drain_timeout), ms(b.drain_timeout));
    field(
        "connections_max",
        a.connections_max.to_string(),
        b.connections_max.to_string(),
    );
    field("instance", a.instance.clone(), b.instance.clone());
    field(
        "admin_listen",
        a.admin_listen
            .map_or_else(|| "off".into(), |x| x.to_string()),
        b.admin_listen
            .map_or_else(|| "off".into(), |x| x.to_string()),
    );
    field(
        "access_log",
        a.access_log
            .as_ref()
            .map_or_else(|| "none".into(), |p| p.display().to_string()),
        b.access_log
            .as_ref()
            .map_or_else(|| "none".into(), |p| p.display().to_string()),
    );
}

fn upstreams(old: &Config, new: &Config, out: &mut Vec<String>) {
    for b in &new.upstreams {
        match old.upstreams.iter().find(|a| a.name == b.name) {
            None => out.push(format!("+ upstream {} ({})", b.name, shape(b))),
            Some(a) => upstream(a, b, out),
        }
    }
    for a in &old.upstreams {
        if !new.upstreams.iter().any(|b| b.name == a.name) {
            out.push(format!("- upstream {}", a.name));
        }
    }
}

/// What an added upstream is: `mock`, or how many endpoints it has.
fn shape(u: &UpstreamConfig) -> String {
    match (u.provider, u.endpoints.len()) {
        (Provider::Mock, _) => "mock".into(),
        (_, 1) => "1 endpoint".into(),
        (_, n) => format!("{n} endpoints"),
    }
}

fn upstream(a: &UpstreamConfig, b: &UpstreamConfig, out: &mut Vec<String>) {
    let name = &a.name;
    let mut field = |field: &str, x: String, y: String| {
        if x != y {
            out.push(format!("~ upstream {name}: {field} {x} -> {y}"));
        }
    };
    field(
        "provider",
        provider(a.provider).into(),
        provider(b.provider).into(),
    );
    if a.endpoints != b.endpoints {
        // The same names resolving elsewhere is a change too: show the addresses then.
        let same_names = a
            .endpoints
            .iter()
            .map(|e| &e.authority)
            .eq(b.endpoints.iter().map(|e| &e.authority));
        field(
            "endpoints",
            endpoints(&a.endpoints, same_names),
            endpoints(&b.endpoints, same_names),
        );
    }
    field(
        "connect_timeout_ms",
        ms(a.connect_timeout),
        ms(b.connect_timeout),
    );
    field("ttfb_timeout_ms", ms(a.ttfb_timeout), ms(b.ttfb_timeout));
    field("read_timeout_ms", ms(a.read_timeout), ms(b.read_timeout));
    field(
        "pool_idle_timeout_ms",
        ms(a.pool_idle_timeout),
        ms(b.pool_idle_timeout),
    );
    field(
        "pool_idle_max",
        a.pool_idle_max.to_string(),
        b.pool_idle_max.to_string(),
    );
    let version = |u: &UpstreamConfig| u.api_version.clone().unwrap_or_else(|| "none".into());
    field("api_version", version(a), version(b));
    let region = |u: &UpstreamConfig| u.region.clone().unwrap_or_else(|| "none".into());
    field("region", region(a), region(b));
}

fn routes(old: &Config, new: &Config, out: &mut Vec<String>) {
    // Hashed by prefix: configs may hold tens of thousands of routes.
    let old_by_prefix: HashMap<&str, &RouteConfig> = old
        .routes
        .iter()
        .map(|r| (r.path_prefix.as_str(), r))
        .collect();
    let new_prefixes: HashSet<&str> = new.routes.iter().map(|r| r.path_prefix.as_str()).collect();
    for r in &new.routes {
        let to = target(new, r.upstream);
        match old_by_prefix.get(r.path_prefix.as_str()) {
            None => out.push(format!("+ route {} -> {to}", r.path_prefix)),
            Some(o) => {
                let from = target(old, o.upstream);
                if from != to {
                    out.push(format!("~ route {}: {from} -> {to}", r.path_prefix));
                }
            }
        }
    }
    for o in &old.routes {
        if !new_prefixes.contains(o.path_prefix.as_str()) {
            out.push(format!("- route {}", o.path_prefix));
        }
    }
}

/// The name of upstream `i` of `c` (validated configs always have it).
fn target(c: &Config, i: usize) -> &str {
    c.upstreams.get(i).map_or("?", |u| u.name.as_str())
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

fn cores(c: Cores) -> String {
    match c {
        Cores::Auto => "auto".into(),
        Cores::Count(n) => n.to_string(),
        Cores::Tuned => "tuned".into(),
    }
}

fn driver(d: DriverChoice) -> &'static str {
    match d {
        DriverChoice::Auto => "auto",
        DriverChoice::IoUring => "io_uring",
        DriverChoice::Epoll => "epoll",
    }
}

fn provider(p: Provider) -> &'static str {
    match p {
        // As earlier diffs named it.
        Provider::Http => "http",
        p => p.name(),
    }
}

fn endpoints(list: &[Endpoint], with_addr: bool) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|e| {
            if with_addr {
                format!("{} ({})", e.authority, e.addr)
            } else {
                e.authority.clone()
            }
        })
        .collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use shardgate_core::control::message::ConfigMessage;

    fn config(text: &str) -> Config {
        match Config::from_toml(text) {
            Ok(c) => c,
            Err(e) => panic!("invalid test config: {e}\n{text}"),
        }
    }

    const BASE: &str = r#"
[server]
auth = "none"
listen = "127.0.0.1:8080"
cores = 2
[[upstreams]]
name = "a"
endpoints = ["http://127.0.0.1:9"]
[[upstreams]]
name = "old"
provider = "mock"
[[routes]]
path_prefix = "/v1/"
upstream = "a"
[[routes]]
path_prefix = "/old/"
upstream = "old"
"#;

    #[test]
    fn identical_configs_have_no_changes() {
        assert_eq!(diff(&config(BASE), &config(BASE)), Vec::<String>::new());
    }

    #[test]
    fn route_order_does_not_matter() {
        // Longest prefix wins whatever the order, so the same routes reordered are no change.
        let swapped = BASE.replace(
            "[[routes]]\npath_prefix = \"/v1/\"\nupstream = \"a\"\n\
             [[routes]]\npath_prefix = \"/old/\"\nupstream = \"old\"\n",
            "[[routes]]\npath_prefix = \"/old/\"\nupstream = \"old\"\n\
             [[routes]]\npath_prefix = \"/v1/\"\nupstream = \"a\"\n",
        );
        assert_ne!(swapped, BASE);
        assert_eq!(diff(&config(BASE), &config(&swapped)), Vec::<String>::new());
    }

    #[test]
    fn routes_upstreams_and_server_fields() {
        let new = r#"
[server]
auth = "none"
listen = "127.0.0.1:8080"
cores = 2
idle_timeout_ms = 1000
[[upstreams]]
name = "a"
endpoints = ["http://127.0.0.1:9", "http://127.0.0.1:10"]
connect_timeout_ms = 500
[[upstreams]]
name = "b"
endpoints = ["http://127.0.0.1:11", "http://127.0.0.1:12"]
[[routes]]
path_prefix = "/v1/"
upstream = "b"
[[routes]]
path_prefix = "/v2/"
upstream = "b"
"#;
        assert_eq!(
            diff(&config(BASE), &config(new)),
            vec![
                "~ server.idle_timeout_ms: 60000 -> 1000",
                "~ upstream a: endpoints [127.0.0.1:9] -> [127.0.0.1:9, 127.0.0.1:10]",
                "~ upstream a: connect_timeout_ms 3000 -> 500",
                "+ upstream b (2 endpoints)",
                "- upstream old",
                "~ route /v1/: a -> b",
                "+ route /v2/ -> b",
                "- route /old/",
            ]
        );
    }

    #[test]
    fn restart_only_fields_and_optional_ones_read_plainly() {
        let new = BASE.replace(
            "cores = 2",
            "cores = \"auto\"\ndriver = \"epoll\"\nadmin_listen = \"off\"\naccess_log = \"/tmp/a.log\"",
        );
        assert_eq!(
            diff(&config(BASE), &config(&new)),
            vec![
                "~ server.cores: 2 -> auto",
                "~ server.driver: auto -> epoll",
                "~ server.admin_listen: 127.0.0.1:9901 -> off",
                "~ server.access_log: none -> /tmp/a.log",
            ]
        );
    }

    #[test]
    fn mock_upstreams_and_provider_changes() {
        let new = r#"
[server]
auth = "none"
listen = "127.0.0.1:8080"
cores = 2
[[upstreams]]
name = "a"
endpoints = ["http://127.0.0.1:9"]
[[upstreams]]
name = "old"
endpoints = ["http://127.0.0.1:1"]
[[upstreams]]
name = "m"
provider = "mock"
[[routes]]
path_prefix = "/v1/"
upstream = "a"
[[routes]]
path_prefix = "/old/"
upstream = "old"
"#;
        assert_eq!(
            diff(&config(BASE), &config(new)),
            vec![
                "~ upstream old: provider mock -> http",
                "~ upstream old: endpoints [] -> [127.0.0.1:1]",
                "+ upstream m (mock)",
            ]
        );
    }

    #[test]
    fn a_name_resolving_elsewhere_shows_the_addresses() {
        let text = "[server]\nauth = \"none\"\n[[upstreams]]\nname = \"a\"\nendpoints = [\"http://api.internal:80\"]\n\
                    [[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n";
        let at = |addr: [u8; 4]| {
            let resolved: HashMap<String, SocketAddr> =
                [("api.internal:80".to_owned(), SocketAddr::from((addr, 80)))].into();
            let m = ConfigMessage {
                toml: text.to_owned(),
                resolved,
                files: HashMap::new(),
                op: None,
            };
            match Config::from_message(&m) {
                Ok(c) => c,
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(
            diff(&at([10, 0, 0, 1]), &at([10, 0, 0, 2])),
            vec![
                "~ upstream a: endpoints [api.internal:80 (10.0.0.1:80)] -> \
                 [api.internal:80 (10.0.0.2:80)]"
            ]
        );
    }

    #[test]
    fn tenants_models_and_templates_are_named_when_they_change() {
        let base = "[server]\nauth = \"none\"\n[[upstreams]]\nname = \"a\"\nendpoints = [\"http://127.0.0.1:1\"]\n\
                    [[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n";
        let m = |name: &str, hedge: &str| {
            format!(
                "[[models]]\nname = \"{name}\"\n{hedge}deployments = [{{ upstream = \"a\" }}]\n"
            )
        };
        let old = config(&format!("{base}{}{}", m("x", ""), m("y", "")));
        let new = config(&format!(
            "{base}{}{}",
            m("x", "hedge_after_ms = 500\n"),
            m("z", "")
        ));
        assert_eq!(
            diff(&old, &new),
            vec!["~ model x", "+ model z", "- model y"]
        );
    }

    #[test]
    fn long_diffs_are_cut() {
        let lines: Vec<String> = (0..25).map(|i| format!("+ route /r{i}/ -> a")).collect();
        let cut = cap(lines.clone(), DIFF_LINES_MAX);
        assert_eq!(cut.len(), DIFF_LINES_MAX + 1);
        assert_eq!(cut[19], "+ route /r19/ -> a");
        assert_eq!(cut[20], "... and 5 more changes");
        assert_eq!(cap(lines[..20].to_vec(), DIFF_LINES_MAX).len(), 20);
    }
}
