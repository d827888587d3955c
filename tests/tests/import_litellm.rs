//! `shardgate-ctl import litellm` (issue 23) on published LiteLLM configs
//! (`tests/fixtures/litellm/`, their sources in `SOURCES.md`): each imported, the result
//! checked, every setting of the config accounted for in the report (mapped, not imported, or
//! invalid: nothing dropped silently), no secret printed or reported; and an imported config
//! and key export served: an old LiteLLM key calls the same models through shardgate.

use std::collections::BTreeSet;
use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use shardgate_tests::{
    chat_keyed as chat, ctl_bin, sha256_hex, write_response, Action, Client, Gateway, MockUpstream,
    Request,
};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/litellm");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    // A config whose deployments all come from the file it includes.
    v.push(dir.join("include/parent_config.yaml"));
    v
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    toml: String,
    report: serde_json::Value,
    /// The literal secrets' file beside `--out`.
    secrets: PathBuf,
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sg-import-{}-{name}", std::process::id()))
}

fn import(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    // Each import its own files: the tests run at once and import the same fixtures (the
    // secrets file is never written over, so a shared name would make one of them fail).
    static IMPORTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = IMPORTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stem = config
        .file_stem()
        .and_then(|s| s.to_str())
        .map_or_else(|| format!("x-{n}"), |s| format!("{s}-{n}"));
    let (out, report) = (tmp(&format!("{stem}.toml")), tmp(&format!("{stem}.json")));
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&report);
    // The literal secrets' file beside `--out` (the import never writes over one).
    let secrets = tmp(&format!("{stem}.toml.env"));
    let _ = std::fs::remove_file(&secrets);
    let mut cmd = Command::new(ctl_bin());
    cmd.args(["import", "litellm"])
        .arg(config)
        .arg("--out")
        .arg(&out)
        .arg("--report")
        .arg(&report)
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("runs shardgate-ctl");
    Run {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        toml: std::fs::read_to_string(&out).unwrap_or_default(),
        report: std::fs::read_to_string(&report)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        secrets,
    }
}

/// The settings of a LiteLLM config by key path, at the depth the importer accounts for:
/// top-level keys, each deployment's keys (and those of its `litellm_params` and
/// `model_info`), each key of the three settings sections.
fn setting_paths(text: &str) -> BTreeSet<String> {
    use yaml_rust2::{Yaml, YamlLoader};
    let docs = YamlLoader::load_from_str(text).expect("yaml");
    let mut out = BTreeSet::new();
    let Some(Yaml::Hash(top)) = docs.first() else {
        return out;
    };
    for (k, v) in top {
        let Some(k) = k.as_str() else { continue };
        match (k, v) {
            ("model_list", Yaml::Array(list)) => {
                for (i, e) in list.iter().enumerate() {
                    let Yaml::Hash(entry) = e else { continue };
                    for (ek, ev) in entry {
                        let Some(ek) = ek.as_str() else { continue };
                        match (ek, ev) {
                            ("model_name", _) => {}
                            ("litellm_params" | "model_info", Yaml::Hash(h)) => {
                                for pk in h.keys().filter_map(Yaml::as_str) {
                                    out.insert(format!("model_list[{i}].{ek}.{pk}"));
                                }
                            }
                            _ => {
                                out.insert(format!("model_list[{i}].{ek}"));
                            }
                        }
                    }
                }
            }
            ("router_settings" | "litellm_settings" | "general_settings", Yaml::Hash(h)) => {
                for sk in h.keys().filter_map(Yaml::as_str) {
                    out.insert(format!("{k}.{sk}"));
                }
            }
            _ => {
                out.insert(k.to_owned());
            }
        }
    }
    out
}

/// Every path the report names.
fn reported(report: &serde_json::Value) -> Vec<String> {
    ["mapped", "not_imported", "invalid"]
        .iter()
        .flat_map(|k| report[k].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .collect()
}

/// Literal secrets a config holds (keys, passwords), to check none is printed or reported.
fn literal_secrets(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let k = k.trim().trim_start_matches('-').trim();
            // Without a trailing comment.
            let v = v.split(" #").next().unwrap_or(v);
            let v = v.trim().trim_matches(['"', '\'']);
            let secret = matches!(
                k,
                "api_key" | "master_key" | "redis_password" | "aws_secret_access_key"
            );
            (secret && v.len() >= 6 && !v.starts_with("os.environ/")).then(|| v.to_owned())
        })
        .collect()
}

#[test]
fn every_published_config_is_imported_accounted_for_and_keeps_its_secrets() {
    let files = fixtures();
    assert!(files.len() >= 8, "fixtures: {files:?}");
    let mut imported = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let run = import(f, &[], &[]);
        let all = format!("{}{}{}{}", run.stdout, run.stderr, run.toml, run.report);
        for s in literal_secrets(&text) {
            assert!(
                !all.contains(&s),
                "{name}: a secret was printed or reported"
            );
        }
        if name.starts_with("invalid_") {
            // Not valid YAML: PyYAML refuses it too.
            assert_eq!(run.code, Some(2), "{name}: {}", run.stderr);
            assert!(
                run.stderr.contains("not valid YAML"),
                "{name}: {}",
                run.stderr
            );
            continue;
        }
        // Written or refused, the report accounts for every setting: an included file's too
        // (the parent includes no list of its own, so the merged paths are the file's).
        let paths = reported(&run.report);
        let mut settings = setting_paths(&text);
        if name == "parent_config.yaml" {
            let dir = f.parent().expect("its directory");
            let included = std::fs::read_to_string(dir.join("model_config.yaml")).expect("read");
            let merged = setting_paths(&included);
            assert!(merged.contains("model_list[1].litellm_params.model"));
            settings.extend(merged);
            assert!(paths.iter().any(|p| p == "include"), "{:#}", run.report);
        }
        for p in settings {
            // Named itself, within an entry the report names (a deployment left out), or
            // element by element.
            let within = |a: &str, b: &str| {
                a.starts_with(&format!("{b}.")) || a.starts_with(&format!("{b}["))
            };
            let covered = paths
                .iter()
                .any(|r| *r == p || within(&p, r) || within(r, &p));
            assert!(
                covered,
                "{name}: {p} is in no line of the report:\n{:#}",
                run.report
            );
        }
        match run.code {
            Some(0) => {
                imported += 1;
                // The result is a config shardgate accepts.
                let cfg: toml::Table = run.toml.parse().expect("toml");
                assert!(cfg.contains_key("models"), "{name}: {}", run.toml);
            }
            _ => {
                // Refused only when nothing could be served: it says why.
                assert!(
                    run.stderr.contains("imported config:"),
                    "{name}: {}",
                    run.stderr
                );
                assert!(
                    run.report["mapped"].as_array().is_none_or(|m| !m
                        .iter()
                        .any(|e| e["to"].as_str().is_some_and(|t| t.starts_with("provider")))),
                    "{name}: a deployment mapped, yet refused: {}",
                    run.stderr
                );
            }
        }
    }
    assert!(imported >= 8, "only {imported} of {} imported", files.len());
}

/// An OpenAI-compatible deployment answering with its name and the model it was asked for.
fn deployment(name: &'static str) -> MockUpstream {
    MockUpstream::start(
        move |req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let answer = serde_json::json!({
                "served_by": name, "model": body["model"],
                "authorization": req.header("authorization"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}
            });
            write_response(
                stream,
                200,
                "application/json",
                answer.to_string().as_bytes(),
            )?;
            Ok(Action::KeepAlive)
        },
    )
}

/// `NAME=value` lines of an environment file.
fn env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn an_imported_config_and_its_keys_serve_old_litellm_keys() {
    let a = deployment("vllm-a");
    let b = deployment("vllm-b");
    // `small` is priced (shardgate's default table), so its budgets count; its key is literal.
    let litellm = format!(
        "model_list:\n\
         \x20 - model_name: llama\n    litellm_params:\n      model: hosted_vllm/meta-llama/Llama-3.1-8B\n      api_base: http://{}/v1\n      api_key: os.environ/VLLM_KEY\n      rpm: 1_000\n\
         \x20 - model_name: small\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: http://{}\n      api_key: sk-upstream-literal-9\n\
         \x20 - model_name: llama\n    litellm_params:\n      model: hosted_vllm/meta-llama/Llama-3.1-8B\n      api_base: http://{}/v1\n      api_key: os.environ/VLLM_KEY\n\
         router_settings:\n  routing_strategy: least-busy\n  num_retries: 2\n\
         general_settings:\n  master_key: sk-master-0001\n",
        a.addr(),
        b.addr(),
        b.addr()
    );
    let config = tmp("serve.yaml");
    std::fs::write(&config, litellm).expect("write");
    // LiteLLM's keys: a team allowed `llama` only, one of its keys, and a blocked key; a second
    // team allowed both groups, with a key narrowed to `llama`, a key whose budget its spend
    // so far has used up (until LiteLLM's reset, a day away) and one with room left.
    let team_key = "sk-litellm-team-key-1";
    let blocked_key = "sk-litellm-blocked-2";
    let narrow_key = "sk-litellm-narrow-3";
    let spent_key = "sk-litellm-spent-4";
    let room_key = "sk-litellm-room-5";
    let reset = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(86_400),
    )
    .to_string();
    let export = serde_json::json!({
        "teams": [
            {"team_id": "t1", "team_alias": "research", "models": ["llama"], "rpm_limit": 100},
            {"team_id": "t2", "team_alias": "apps", "models": ["llama", "small"]}
        ],
        "keys": [
            {"token": sha256_hex(team_key), "key_alias": "r-key", "team_id": "t1", "spend": 2.5},
            {"token": sha256_hex(blocked_key), "key_alias": "gone", "team_id": "t1", "blocked": true},
            {"token": sha256_hex(narrow_key), "team_id": "t2", "models": ["llama"]},
            {"token": sha256_hex(spent_key), "team_id": "t2", "max_budget": 1.0, "spend": 1.0,
             "budget_reset_at": reset},
            {"token": sha256_hex(room_key), "team_id": "t2", "max_budget": 1.0, "spend": 0.25,
             "budget_reset_at": reset}
        ]
    });
    let keys = tmp("keys.json");
    std::fs::write(&keys, export.to_string()).expect("write");
    let store = tmp("store.json");
    let _ = std::fs::remove_file(&store);
    let run = import(
        &config,
        &[
            "--keys",
            keys.to_str().unwrap_or_default(),
            "--store",
            store.to_str().unwrap_or_default(),
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for secret in ["sk-master-0001", "sk-upstream-literal-9"] {
        assert!(
            !run.toml.contains(secret)
                && !run.stderr.contains(secret)
                && !run.stdout.contains(secret)
                && !run.report.to_string().contains(secret),
            "{secret} printed"
        );
    }
    // The literal upstream key: in a file of its own beside the config, the owner's only.
    let secrets_file = &run.secrets;
    let secrets = env_file(secrets_file);
    assert_eq!(
        secrets,
        [(
            "LITELLM_MODEL_1_API_KEY".to_owned(),
            "sk-upstream-literal-9".to_owned()
        )]
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(secrets_file)
            .expect("secrets file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The imported config listens where LiteLLM did; this test needs free ports.
    let toml = run.toml.replace(
        "listen = \"0.0.0.0:4000\"",
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ncores = 1",
    );
    let mut env: Vec<(&str, &str)> = vec![("VLLM_KEY", "vllm-secret")];
    env.extend(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let gw = Gateway::start_with_env(&toml, &env);
    let mut c = Client::connect(gw.addr());
    // The team's old key calls its model: both deployments of the group, the model rewritten,
    // the upstream's own key sent.
    let mut served = BTreeSet::new();
    for _ in 0..6 {
        let r = chat(&mut c, team_key, "llama");
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.json()["model"], "meta-llama/Llama-3.1-8B");
        served.insert(
            r.json()["served_by"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(
        served.len(),
        2,
        "both deployments serve the group: {served:?}"
    );
    let up = a.requests();
    assert_eq!(up[0].header("authorization"), Some("Bearer vllm-secret"));
    // Its team may not use `small`; the master key may (and `small`'s upstream gets the
    // literal key the config had); the blocked key is refused.
    assert_eq!(chat(&mut c, team_key, "small").status, 403);
    let mut c2 = Client::connect(gw.addr());
    assert_eq!(chat(&mut c2, "sk-master-0001", "small").status, 200);
    let small = b.requests();
    assert_eq!(
        small.last().and_then(|r| r.header("authorization")),
        Some("Bearer sk-upstream-literal-9")
    );
    let mut c3 = Client::connect(gw.addr());
    assert_eq!(chat(&mut c3, blocked_key, "llama").status, 401);
    // A key's own models narrow its team's.
    let mut c4 = Client::connect(gw.addr());
    assert_eq!(chat(&mut c4, narrow_key, "llama").status, 200);
    let r = chat(&mut c4, narrow_key, "small");
    assert_eq!(r.status, 403, "{}", r.summary());
    // ... and the models it is shown are those it may call.
    c4.send(format!(
        "GET {} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {narrow_key}\r\n\r\n",
        ["", "v1", "models"].join("/")
    ));
    let listed: Vec<String> = c4.read_response().json()["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(listed, ["llama"]);
    // Spend so far counts: the key whose budget it used up is refused where LiteLLM refuses
    // it; the one with room is served.
    let mut c5 = Client::connect(gw.addr());
    let r = chat(&mut c5, spent_key, "small");
    assert_eq!(r.status, 429, "{}", r.summary());
    assert!(r.body_str().contains("budget"), "{}", r.summary());
    assert_eq!(chat(&mut c5, room_key, "small").status, 200);
    // The team key's spend without a budget is reported as such.
    assert!(run.report["mapped"]
        .as_array()
        .is_some_and(|a| a.iter().any(|e| e["path"] == "keys-file.keys[0].spend")));
    // The master key is an admin token too, as in LiteLLM; a team key is not.
    let (status, keys) =
        shardgate_tests::admin_request(&gw, "GET", "/admin/v1/keys", Some("sk-master-0001"), None);
    assert_eq!(status, 200);
    // ... and it shows the imported keys' own models and spend carried in.
    let data = keys["data"].as_array().cloned().unwrap_or_default();
    assert!(
        data.iter()
            .any(|k| k["models"] == serde_json::json!(["llama"])),
        "{keys}"
    );
    assert!(
        data.iter()
            .any(|k| k["spent_usd"] == 1.0 && k["budget_usd"] == 1.0),
        "{keys}"
    );
    let (status, _) =
        shardgate_tests::admin_request(&gw, "GET", "/admin/v1/keys", Some(team_key), None);
    assert_eq!(status, 401);
}

/// An upstream answering each provider's API in its own shape (the bench rig's answers): a
/// Messages answer on `/v1/messages`, Gemini's on `/v1beta/models/...`, Bedrock's Converse on
/// `/model/...`, an OpenAI chat completion on anything else (Azure's deployment paths too).
fn any_provider() -> MockUpstream {
    MockUpstream::start(
        |req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            let body = if req.path.starts_with("/v1/messages") {
                r#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}"#
            } else if req.path.starts_with("/v1beta/models/") {
                r#"{"candidates":[{"content":{"parts":[{"text":"Hello"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1,"totalTokenCount":4},"modelVersion":"m"}"#
            } else if req.path.starts_with("/model/") {
                r#"{"output":{"message":{"role":"assistant","content":[{"text":"Hello"}]}},"stopReason":"end_turn","usage":{"inputTokens":3,"outputTokens":1,"totalTokens":4}}"#
            } else {
                r#"{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#
            };
            write_response(stream, 200, "application/json", body.as_bytes())?;
            Ok(Action::KeepAlive)
        },
    )
}

#[test]
fn every_imported_published_config_serves_each_of_its_groups() {
    // The bench's mock upstream answers the providers it speaks (OpenAI-compatible, Azure's
    // paths, Anthropic's Messages); the test's own answers Gemini's and Bedrock's.
    let bench = shardgate_tests::BenchUpstream::start(&[]);
    let mock = any_provider();
    let mut served_configs = 0;
    for f in fixtures() {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let run = import(&f, &[], &[]);
        if run.code != Some(0) {
            continue; // refused: checked by the test above
        }
        // Every upstream pointed at the mock, its key variable set, a free port.
        let mut cfg: toml::Table = run.toml.parse().expect("toml");
        let mut env: Vec<(String, String)> = vec![
            ("AWS_ACCESS_KEY_ID".into(), "AKIDTEST".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test-secret".into()),
        ];
        if let Some(ups) = cfg.get_mut("upstreams").and_then(toml::Value::as_array_mut) {
            for u in ups.iter_mut().filter_map(toml::Value::as_table_mut) {
                let provider = u.get("provider").and_then(toml::Value::as_str);
                let at = match provider {
                    Some("gemini" | "bedrock") => mock.addr(),
                    _ => bench.addr(),
                };
                u.insert(
                    "endpoints".into(),
                    toml::Value::Array(vec![format!("http://{at}").into()]),
                );
                if let Some(var) = u.get("api_key_env").and_then(toml::Value::as_str) {
                    env.push((var.to_owned(), "test-upstream-key".to_owned()));
                }
            }
        }
        if let Some(s) = cfg.get_mut("server").and_then(toml::Value::as_table_mut) {
            s.insert("listen".into(), "127.0.0.1:0".into());
            s.insert("cores".into(), 1.into());
        }
        let toml_text = toml::to_string(&cfg).expect("toml");
        let env_ref: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let gw = Gateway::try_start_with_env(&toml_text, &env_ref).unwrap_or_else(|e| {
            panic!("{name}: the imported config does not start: {e}\n{toml_text}")
        });
        // The master key, when the config had a literal one, is how callers come in.
        let text = std::fs::read_to_string(&f).expect("read");
        let master = yaml_rust2::YamlLoader::load_from_str(&text)
            .ok()
            .and_then(|d| {
                d.first()?["general_settings"]["master_key"]
                    .as_str()
                    .map(str::to_owned)
            })
            .filter(|k| !k.starts_with("os.environ/"))
            .unwrap_or_else(|| "none".to_owned());
        let groups: Vec<String> = cfg["models"]
            .as_array()
            .map(|g| {
                g.iter()
                    .filter_map(|x| x["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        assert!(!groups.is_empty(), "{name}");
        for g in &groups {
            let mut c = Client::connect(gw.addr());
            let r = chat(&mut c, &master, g);
            assert_eq!(r.status, 200, "{name}: group {g:?}: {}", r.summary());
        }
        served_configs += 1;
    }
    assert!(served_configs >= 8, "only {served_configs} configs served");
}
