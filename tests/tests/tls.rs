//! TLS both ways: certificates chosen by SNI, a plain listener beside TLS, curl and the openai
//! SDK over HTTPS with a CA made at test time, certificate rotation by `apply` under load,
//! upstreams over TLS (trusted through `ca_file`, refused with a 502 naming the problem when
//! the certificate is not trusted), bad certificate files refused by `check` and `apply`, and a
//! stalled handshake timed out without holding the shard.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_tests::python::{python, sdk_path};
use shardgate_tests::tls::{self_signed, TempDir, TestCa};
use shardgate_tests::{json_ok, run_ctl, Client, Gateway, MockUpstream, Request};

const ANSWER: &str = r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"over tls"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;

fn chat_body() -> &'static str {
    r#"{"model":"demo","messages":[{"role":"user","content":"hi"}]}"#
}

fn post(c: &mut Client) -> shardgate_tests::Response {
    let body = chat_body();
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    c.read_response()
}

/// A gateway config serving TLS with `certs` (cert, key paths), in front of `upstream`.
fn tls_config(certs: &[(&Path, &Path)], upstream: SocketAddr, extra_server: &str) -> String {
    let mut s =
        format!("[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\nauth = \"none\"\n{extra_server}\n");
    for (cert, key) in certs {
        s.push_str(&format!(
            "[[server.tls]]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    s.push_str(&format!(
        "[[upstreams]]\nname = \"up\"\nendpoints = [\"http://{upstream}\"]\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\n"
    ));
    s
}

#[test]
fn sni_picks_the_certificate_and_requests_are_served_over_tls() {
    let dir = TempDir::new("tls-sni");
    let ca = TestCa::new("sni ca");
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["*.b.test", "localhost"]);
    let (a_cert, a_key) = a.write(dir.path(), "a");
    let (b_cert, b_key) = b.write(dir.path(), "b");
    let up = MockUpstream::start(shardgate_tests::echo());
    let gw = Gateway::start(&tls_config(
        &[(&a_cert, &a_key), (&b_cert, &b_key)],
        up.addr(),
        "listen_plain = \"127.0.0.1:0\"",
    ));
    let ca_pem = ca.cert_pem();

    let mut c = Client::connect_tls(gw.addr(), "a.test", &ca_pem);
    assert_eq!(c.peer_certificate(), Some(a.cert_der.clone()));
    assert_eq!(c.alpn().as_deref(), Some(&b"http/1.1"[..]));
    let r = post(&mut c);
    assert_eq!(r.status, 200, "{}", r.summary());
    // The upstream hears that the client came over TLS.
    assert_eq!(
        r.json()["headers"].as_array().map(|h| h
            .iter()
            .any(|kv| kv[0] == "x-forwarded-proto" && kv[1] == "https")),
        Some(true),
        "{}",
        r.body_str()
    );
    // Keep-alive over TLS.
    assert_eq!(post(&mut c).status, 200);

    for sni in ["api.b.test", "API.B.TEST", "localhost"] {
        let mut c = Client::connect_tls(gw.addr(), sni, &ca_pem);
        assert_eq!(c.peer_certificate(), Some(b.cert_der.clone()), "SNI {sni}");
        assert_eq!(post(&mut c).status, 200);
    }
    // A name no certificate has gets the first one, which the client then refuses.
    let err = Client::try_connect_tls(gw.addr(), "c.test", &ca_pem).err();
    assert!(err.is_some_and(|e| e.contains("not valid for name") || e.contains("NotValidForName")));

    // Plain HTTP beside TLS.
    let mut p = Client::connect(gw.plain_addr());
    let r = post(&mut p);
    assert_eq!(r.status, 200, "{}", r.summary());
    // And plain HTTP on the TLS port is not served.
    let mut wrong = Client::connect(gw.addr());
    wrong.send("GET /health/liveness HTTP/1.1\r\nHost: gw\r\n\r\n");
    assert!(
        wrong.try_read_response().is_err(),
        "plain HTTP answered on the TLS port"
    );
}

#[test]
fn curl_and_the_openai_sdk_reach_the_gateway_over_https() {
    let dir = TempDir::new("tls-clients");
    let ca = TestCa::new("clients ca");
    let leaf = ca.leaf(&["localhost"]);
    let (cert, key) = leaf.write(dir.path(), "gw");
    let ca_file = ca.write_cert(dir.path(), "ca");
    let up = MockUpstream::start(json_ok(ANSWER));
    let gw = Gateway::start(&tls_config(&[(&cert, &key)], up.addr(), ""));
    let url = format!("https://localhost:{}/v1/chat/completions", gw.addr().port());

    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca_file)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", gw.addr().port()),
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            chat_body(),
            &url,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("over tls"), "{text}");

    let sdk_dir = match sdk_path() {
        Ok(dir) => dir,
        Err(None) => return,
        Err(Some(why)) => panic!("{why}"),
    };
    let script = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=10,
                       http_client=openai.DefaultHttpxClient(verify=sys.argv[2]))
r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
assert r.choices[0].message.content == "over tls", r
print("ok")
"#;
    let mut cmd = Command::new(python());
    if let Some(d) = &sdk_dir {
        cmd.env("PYTHONPATH", d);
    }
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .args(["-c", script])
        .arg(format!("https://localhost:{}/v1", gw.addr().port()))
        .arg(&ca_file)
        .stdin(Stdio::null())
        .output()
        .expect("python runs");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "openai SDK over https: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn certificates_rotate_by_apply_under_load_with_no_failed_request() {
    let dir = TempDir::new("tls-rotate");
    let ca = TestCa::new("rotation ca");
    let old = ca.leaf(&["localhost"]);
    let (cert, key) = old.write(dir.path(), "gw");
    let up = MockUpstream::start(json_ok(ANSWER));
    let text = tls_config(&[(&cert, &key)], up.addr(), "");
    let gw = Gateway::start(&text);
    let ca_pem = Arc::new(ca.cert_pem());

    // Load: keep-alive clients, and clients that open a new connection (a new handshake) for
    // every request.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (stop, failures, done, ca_pem) =
                (stop.clone(), failures.clone(), done.clone(), ca_pem.clone());
            let addr = gw.addr();
            std::thread::spawn(move || {
                let mut keep: Option<Client> = None;
                while !stop.load(Ordering::Relaxed) {
                    let fresh = i % 2 == 1 || keep.is_none();
                    if fresh {
                        match Client::try_connect_tls(addr, "localhost", &ca_pem) {
                            Ok(c) => keep = Some(c),
                            Err(e) => {
                                eprintln!("handshake failed: {e}");
                                failures.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                    }
                    let Some(c) = keep.as_mut() else { continue };
                    let body = chat_body();
                    c.send(format!(
                        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    ));
                    match c.try_read_response() {
                        Ok(r) if r.status == 200 => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            eprintln!("request failed: {other:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                            keep = None;
                        }
                    }
                }
            })
        })
        .collect();
    shardgate_tests::sleep(Duration::from_millis(300));

    // New certificate, same files, then apply.
    let new = ca.leaf(&["localhost"]);
    new.write(dir.path(), "gw");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, &text).expect("write config");
    let out = run_ctl(
        gw.instance(),
        &["apply", config.to_str().expect("utf-8 path")],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{}", out.text());
    shardgate_tests::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("load thread");
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests during rotation"
    );
    assert!(
        done.load(Ordering::Relaxed) > 50,
        "too little load to mean anything"
    );
    // Every handshake from now on gets the new certificate.
    let c = Client::connect_tls(gw.addr(), "localhost", &ca_pem);
    assert_eq!(c.peer_certificate(), Some(new.cert_der.clone()));
    assert_ne!(new.cert_der, old.cert_der);
}

#[test]
fn upstreams_over_tls_are_verified_pooled_and_refused_when_not_trusted() {
    let dir = TempDir::new("tls-upstream");
    let ca = TestCa::new("upstream ca");
    let good = MockUpstream::start_tls(&ca.leaf(&["localhost"]), json_ok(ANSWER));
    let bad = MockUpstream::start_tls(&self_signed(&["localhost"]), json_ok(ANSWER));
    let ca_file = ca.write_cert(dir.path(), "ca");
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\nauth = \"none\"\n\
         [[upstreams]]\nname = \"good\"\nendpoints = [\"https://localhost:{}\"]\nca_file = \"{}\"\n\
         [[upstreams]]\nname = \"bad\"\nendpoints = [\"https://localhost:{}\"]\nca_file = \"{}\"\n\
         [[routes]]\npath_prefix = \"/good/\"\nupstream = \"good\"\n\
         [[routes]]\npath_prefix = \"/bad/\"\nupstream = \"bad\"\n",
        good.addr().port(),
        ca_file.display(),
        bad.addr().port(),
        ca_file.display(),
    );
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    for _ in 0..5 {
        let r = c.get("/good/v1/models");
        assert_eq!(r.status, 200, "{}", r.summary());
        assert!(r.body_str().contains("over tls"));
    }
    // One TLS connection, kept in the shard's pool, served all five.
    let handshakes = good.tls_handshakes();
    assert_eq!(handshakes.len(), 1, "{handshakes:?}");
    let good_reqs: Vec<Request> = good.requests();
    assert_eq!(good_reqs.len(), 5);
    assert_eq!(
        good_reqs[0].header("host"),
        Some(format!("localhost:{}", good.addr().port()).as_str())
    );

    let r = c.get("/bad/v1/models");
    shardgate_tests::assert_error(&r, 502, "upstream_tls_error");
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        msg.contains("issuer") || msg.contains("trusted"),
        "the 502 names the certificate problem: {msg}"
    );
    assert!(
        bad.requests().is_empty(),
        "no request reached an untrusted upstream"
    );
}

#[test]
fn new_connections_to_a_tls_upstream_resume_the_session() {
    let dir = TempDir::new("tls-resume");
    let ca = TestCa::new("resume ca");
    // The upstream closes after every answer: each request needs a new TLS connection.
    let up = MockUpstream::start_tls(
        &ca.leaf(&["localhost"]),
        |_req: &Request, s: &mut shardgate_tests::TlsServerStream| {
            shardgate_tests::write_response(s, 200, "application/json", ANSWER.as_bytes())?;
            Ok(shardgate_tests::Action::Close)
        },
    );
    let ca_file = ca.write_cert(dir.path(), "ca");
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\nauth = \"none\"\n\
         [[upstreams]]\nname = \"up\"\nendpoints = [\"https://localhost:{}\"]\nca_file = \"{}\"\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\n",
        up.addr().port(),
        ca_file.display(),
    );
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    for _ in 0..4 {
        let r = c.get("/v1/models");
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    let hs = up.tls_handshakes();
    assert_eq!(hs.len(), 4, "{hs:?}");
    assert!(!hs[0].resumed, "the first handshake is a full one");
    assert!(
        hs[1..].iter().all(|h| h.resumed),
        "later connections resume the shard's cached session: {hs:?}"
    );
}

#[test]
fn bad_certificate_files_are_refused_by_check_and_apply_naming_the_file() {
    let dir = TempDir::new("tls-bad-files");
    let ca = TestCa::new("files ca");
    let one = ca.leaf(&["localhost"]);
    let other = ca.leaf(&["localhost"]);
    let (cert, key) = one.write(dir.path(), "one");
    let (_, other_key) = other.write(dir.path(), "other");
    let up = MockUpstream::start(json_ok(ANSWER));

    // The engine refuses to start on a key that is not the certificate's.
    let bad = tls_config(&[(&cert, &other_key)], up.addr(), "");
    let err = match Gateway::try_start_full(&bad, &[], &[]) {
        Ok(_) => panic!("started with a key that is not its certificate's"),
        Err(e) => e,
    };
    assert!(
        err.contains("server.tls[0]") && err.contains("other.key"),
        "{err}"
    );

    let gw = Gateway::start(&tls_config(&[(&cert, &key)], up.addr(), ""));
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, &bad).expect("write");
    let path = path.to_str().expect("utf-8");
    let out = run_ctl(
        gw.instance(),
        &["check", path],
        &[],
        Duration::from_secs(10),
    );
    assert_ne!(out.code, Some(0), "{}", out.text());
    assert!(
        out.text().contains("other.key") && out.text().contains("does not match"),
        "{}",
        out.text()
    );
    let out = run_ctl(
        gw.instance(),
        &["apply", path],
        &[],
        Duration::from_secs(10),
    );
    assert_ne!(out.code, Some(0), "{}", out.text());
    // A file that is not there.
    let missing = tls_config(&[(&dir.path().join("nope.crt"), &key)], up.addr(), "");
    std::fs::write(dir.path().join("missing.toml"), &missing).expect("write");
    let out = run_ctl(
        gw.instance(),
        &[
            "check",
            dir.path().join("missing.toml").to_str().expect("utf-8"),
        ],
        &[],
        Duration::from_secs(10),
    );
    assert!(out.text().contains("nope.crt"), "{}", out.text());
    // The engine still serves its certificate.
    let mut c = Client::connect_tls(gw.addr(), "localhost", &ca.cert_pem());
    assert_eq!(c.peer_certificate(), Some(one.cert_der.clone()));
    assert_eq!(post(&mut c).status, 200);
}

#[test]
fn a_stalled_handshake_times_out_and_does_not_hold_the_shard() {
    let dir = TempDir::new("tls-stall");
    let ca = TestCa::new("stall ca");
    let (cert, key) = ca.leaf(&["localhost"]).write(dir.path(), "gw");
    let up = MockUpstream::start(json_ok(ANSWER));
    let gw = Gateway::start(&tls_config(
        &[(&cert, &key)],
        up.addr(),
        "handshake_timeout_ms = 400",
    ));
    // Connections that never send a ClientHello (one) or stop in the middle (half of one).
    let mut silent = TcpStream::connect(gw.addr()).expect("connect");
    let mut partial = TcpStream::connect(gw.addr()).expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01])
        .expect("write");
    let started = Instant::now();
    // Meanwhile the one shard serves others.
    let mut c = Client::connect_tls(gw.addr(), "localhost", &ca.cert_pem());
    assert_eq!(post(&mut c).status, 200);
    assert!(started.elapsed() < Duration::from_millis(400));
    // Both stalled connections are closed by the gateway after the timeout.
    for s in [&mut silent, &mut partial] {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut b = [0u8; 64];
        let n = std::io::Read::read(s, &mut b).unwrap_or(0);
        assert_eq!(n, 0, "the gateway closed the stalled connection");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
}
