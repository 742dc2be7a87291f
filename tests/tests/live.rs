//! Live capture on the real kernel: real clients call a third-party API in a network
//! namespace; every call must be reported once, with the right method, host, path, status,
//! direction and TLS flag, on both the client's and the server's side.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
};

use serde_json::Value;
use tests::{
    API_ADDR, API_ADDR6, API_HOST, Agent, ThirdParty, agent_config, calls_of, can_run, expect,
    fixture, run_client, scratch, shape,
};

fn curl(api: &ThirdParty, url_path: &str, tls: bool) -> Command {
    let (scheme, port) = if tls { ("https", 8443) } else { ("http", 8080) };
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--fail",
        "-o",
        "/dev/null",
        "--resolve",
        &format!("{API_HOST}:{port}:{API_ADDR}"),
    ])
    .arg("--cacert")
    .arg(api.ca())
    .arg(format!("{scheme}://{API_HOST}:{port}{url_path}"));
    c
}

fn python(api: &ThirdParty, mode: &str, args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(fixture("client.py"))
        .args([mode, API_ADDR, API_HOST])
        .arg(api.ca())
        .args(args);
    c
}

fn shapes(calls: &[&Value]) -> Vec<(String, String, String, Option<u64>, String, bool)> {
    calls.iter().map(|c| shape(c)).collect()
}

#[test]
fn curl_over_plain_http_and_openssl_tls() {
    if !can_run("curl_over_plain_http_and_openssl_tls") {
        return;
    }
    let api = ThirdParty::start();
    // The API server only answers inbound calls: by default its TLS is not probed (see
    // third_party_mode_probes_the_caller_not_the_inbound_server); named here, it is.
    let config = agent_config(
        &scratch("curl-openssl"),
        "[capture]\ntls_processes = [\"python3\"]",
    );
    let agent = Agent::start_with(&["--config", config.to_str().expect("utf-8 path")]);
    let plain = run_client(&mut curl(&api, "/v1/plain?token=abc", false));
    let tls = run_client(&mut curl(&api, "/v1/secure", true));
    let events = agent.stop();

    assert_eq!(
        shapes(&calls_of(&events, plain)),
        vec![expect("GET", "/v1/plain", 200, "egress", false)]
    );
    let tls_calls = calls_of(&events, tls);
    assert_eq!(
        shapes(&tls_calls),
        vec![expect("GET", "/v1/secure", 200, "egress", true)]
    );
    assert_eq!(tls_calls[0]["tls_library"], "openssl");
    assert_eq!(tls_calls[0]["comm"], "curl");
    assert_eq!(tls_calls[0]["remote_addr"], format!("{API_ADDR}:8443"));
    assert_eq!(tls_calls[0]["third_party"], true);
    assert!(
        tls_calls[0]["duration_ms"]
            .as_f64()
            .is_some_and(|d| d > 0.0)
    );

    // The API server (python, OpenSSL, configured for probes) sees the same calls as ingress.
    let served = shapes(&calls_of(&events, api.server_pid()));
    assert_eq!(
        served,
        vec![
            expect("GET", "/v1/plain", 200, "ingress", false),
            expect("GET", "/v1/secure", 200, "ingress", true)
        ]
    );
}

#[test]
fn python_http_client_uses_the_ex_functions() {
    if !can_run("python_http_client_uses_the_ex_functions") {
        return;
    }
    let api = ThirdParty::start();
    let agent = Agent::start();
    let tls = run_client(&mut python(&api, "post", &["tls"]));
    let plain = run_client(&mut python(&api, "post", &["plain"]));
    let events = agent.stop();
    for (pid, is_tls) in [(tls, true), (plain, false)] {
        let calls = calls_of(&events, pid);
        assert_eq!(
            shapes(&calls),
            vec![
                expect("POST", "/v1/items", 201, "egress", is_tls),
                expect("GET", "/v1/items/7", 200, "egress", is_tls)
            ],
            "pid {pid} tls {is_tls}"
        );
        assert_eq!(calls[0]["request_bytes"], 17);
        assert_eq!(calls[1]["route"], "/v1/items/{id}");
    }
}

#[test]
fn node_https_with_static_openssl() {
    if !can_run("node_https_with_static_openssl") {
        return;
    }
    let api = ThirdParty::start();
    let agent = Agent::start();
    let script = format!(
        "const https = require('https'); const fs = require('fs');
         const ca = fs.readFileSync('{ca}');
         const agent = new https.Agent({{ keepAlive: true, ca }});
         let n = 0;
         function next() {{
           const req = https.request({{ host: '{addr}', port: 8443, servername: '{host}', path: '/node/' + n,
             method: n % 2 ? 'POST' : 'GET', agent, headers: {{ host: '{host}', 'content-type': 'application/json' }} }},
             res => {{ res.resume(); res.on('end', () => {{ if (++n < 4) next(); else agent.destroy(); }}); }});
           req.on('error', e => {{ console.error(e); process.exit(1); }});
           req.end(n % 2 ? JSON.stringify({{ n }}) : undefined);
         }}
         next();",
        ca = api.ca().display(),
        addr = API_ADDR,
        host = API_HOST
    );
    let node = run_client(Command::new("node").arg("-e").arg(script));
    let events = agent.stop();
    let calls = calls_of(&events, node);
    assert_eq!(
        shapes(&calls),
        vec![
            expect("GET", "/node/0", 200, "egress", true),
            expect("POST", "/node/1", 201, "egress", true),
            expect("GET", "/node/2", 200, "egress", true),
            expect("POST", "/node/3", 201, "egress", true),
        ]
    );
    assert!(
        calls
            .iter()
            .all(|c| c["comm"] == "node" && c["tls_library"] == "openssl")
    );
}

#[test]
fn hundred_keep_alive_requests_on_one_connection() {
    if !can_run("hundred_keep_alive_requests_on_one_connection") {
        return;
    }
    let api = ThirdParty::start();
    let agent = Agent::start();
    let tls = run_client(&mut python(&api, "keepalive", &["tls", "100"]));
    let plain = run_client(&mut python(&api, "keepalive", &["plain", "100"]));
    let events = agent.stop();
    for (pid, is_tls) in [(tls, true), (plain, false)] {
        let calls = calls_of(&events, pid);
        let want: Vec<_> = (0..100)
            .map(|i| expect("GET", &format!("/seq/{i}"), 200, "egress", is_tls))
            .collect();
        assert_eq!(shapes(&calls), want, "tls {is_tls}");
        let remotes: std::collections::HashSet<_> =
            calls.iter().map(|c| c["remote_addr"].to_string()).collect();
        assert_eq!(remotes.len(), 1);
    }
}

#[test]
fn pipelined_requests_pair_in_order() {
    if !can_run("pipelined_requests_pair_in_order") {
        return;
    }
    let api = ThirdParty::start();
    let agent = Agent::start();
    let pid = run_client(&mut python(&api, "pipeline", &[]));
    let events = agent.stop();
    let want: Vec<_> = (0..3)
        .map(|i| expect("GET", &format!("/pipe/{i}"), 200, "egress", false))
        .collect();
    assert_eq!(shapes(&calls_of(&events, pid)), want);
}

#[test]
fn chunked_response_and_one_mebibyte_bodies() {
    if !can_run("chunked_response_and_one_mebibyte_bodies") {
        return;
    }
    let api = ThirdParty::start();
    let upload = api.dir.join("upload.bin");
    std::fs::write(&upload, vec![b'u'; 1 << 20]).expect("upload file");
    let agent = Agent::start();
    let chunked = run_client(&mut curl(&api, "/chunked", true));
    let big_tls = run_client(&mut curl(&api, "/big?size=1048576", true));
    let big_plain = run_client(&mut curl(&api, "/big?size=1048576", false));
    let mut up = curl(&api, "/upload", true);
    up.arg("--data-binary")
        .arg(format!("@{}", upload.display()));
    let upload_tls = run_client(&mut up);
    let events = agent.stop();

    let c = calls_of(&events, chunked);
    assert_eq!(
        shapes(&c),
        vec![expect("GET", "/chunked", 200, "egress", true)]
    );
    // 5 chunks of "chunk i " repeated i+1 times: 8 * (1+2+3+4+5) bytes.
    assert_eq!(c[0]["response_bytes"], 120);
    for (pid, tls) in [(big_tls, true), (big_plain, false)] {
        let c = calls_of(&events, pid);
        assert_eq!(shapes(&c), vec![expect("GET", "/big", 200, "egress", tls)]);
        assert_eq!(c[0]["response_bytes"], 1_048_576, "tls {tls}");
        assert!(c[0].get("error").is_none(), "{}", c[0]);
    }
    let c = calls_of(&events, upload_tls);
    assert_eq!(
        shapes(&c),
        vec![expect("POST", "/upload", 201, "egress", true)]
    );
    assert_eq!(c[0]["request_bytes"], 1_048_576);
}

#[test]
fn connection_opened_before_the_agent_started() {
    if !can_run("connection_opened_before_the_agent_started") {
        return;
    }
    let api = ThirdParty::start();
    let mut client = python(&api, "preexisting", &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start client");
    let mut line = String::new();
    BufReader::new(client.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("client output");
    assert_eq!(line.trim(), "connected");
    let pid = client.id();

    let agent = Agent::start();
    client
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("tell client to go on");
    assert!(client.wait().expect("client").success());
    let events = agent.stop();

    let calls = calls_of(&events, pid);
    assert_eq!(
        shapes(&calls),
        vec![
            expect("GET", "/after/plain/1", 200, "egress", false),
            expect("POST", "/after/plain/2", 201, "egress", false),
            expect("GET", "/after/tls/1", 200, "egress", true),
            expect("POST", "/after/tls/2", 201, "egress", true),
        ]
    );
}

#[test]
fn ipv6_plain_and_tls() {
    if !can_run("ipv6_plain_and_tls") {
        return;
    }
    let api = ThirdParty::start();
    let agent = Agent::start();
    let mut plain = Command::new("curl");
    plain.args([
        "-sS",
        "--fail",
        "-o",
        "/dev/null",
        &format!("http://[{API_ADDR6}]:8080/v6/plain"),
        "-H",
        &format!("Host: {API_HOST}"),
    ]);
    let plain = run_client(&mut plain);
    let mut tls = Command::new("curl");
    tls.args([
        "-sS",
        "--fail",
        "-o",
        "/dev/null",
        "--resolve",
        &format!("{API_HOST}:8443:[{API_ADDR6}]"),
    ])
    .arg("--cacert")
    .arg(api.ca())
    .arg(format!("https://{API_HOST}:8443/v6/secure"));
    let tls = run_client(&mut tls);
    let events = agent.stop();
    let p = calls_of(&events, plain);
    assert_eq!(
        shapes(&p),
        vec![expect("GET", "/v6/plain", 200, "egress", false)]
    );
    assert_eq!(p[0]["remote_addr"], format!("[{API_ADDR6}]:8080"));
    let t = calls_of(&events, tls);
    assert_eq!(
        shapes(&t),
        vec![expect("GET", "/v6/secure", 200, "egress", true)]
    );
    assert_eq!(t[0]["remote_addr"], format!("[{API_ADDR6}]:8443"));
}

#[test]
fn a_response_that_never_comes_is_reported_without_status() {
    if !can_run("a_response_that_never_comes_is_reported_without_status") {
        return;
    }
    let api = ThirdParty::start();
    let agent = Agent::start();
    let mut hang = curl(&api, "/hang", true);
    hang.args(["--max-time", "1"]);
    // curl gives up (exit 28): what matters is what the agent reports.
    let child = hang
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl");
    let pid = child.id();
    let _ = child.wait_with_output();
    let counted = |m: &str| {
        m.lines().any(|l| {
            l.starts_with("apimon_http_requests_total{")
                && l.contains("host=\"api.partner.test\"")
                && l.contains("status_class=\"none\"")
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut metrics = agent.scrape();
    while !counted(&metrics) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        metrics = agent.scrape();
    }
    let events = agent.stop();
    let calls = calls_of(&events, pid);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["path"], "/hang");
    assert!(calls[0]["status"].is_null());
    assert_eq!(calls[0]["error"], "no_response");
    assert!(calls[0]["duration_ms"].is_null());
    // Metrics count the calls by destination.
    assert!(counted(&metrics), "{metrics}");
}

#[test]
fn a_libssl_loaded_while_running_is_probed() {
    if !can_run("a_libssl_loaded_while_running_is_probed") {
        return;
    }
    let api = ThirdParty::start();
    // A private copy of OpenSSL: a file (inode) the agent has never seen, mapped by a process
    // started after the agent, as a container's or a virtualenv's own libssl would be.
    let libs = api.dir.join("private-openssl");
    std::fs::create_dir_all(&libs).expect("lib dir");
    for lib in ["libssl.so.3", "libcrypto.so.3"] {
        let from = [
            "/usr/lib/x86_64-linux-gnu",
            "/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
        ]
        .iter()
        .map(|d| std::path::Path::new(d).join(lib))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{lib} not found"));
        std::fs::copy(&from, libs.join(lib)).expect("copy OpenSSL");
    }
    let agent = Agent::start();
    let mut client = python(&api, "post-after-import", &[]);
    client.env("LD_LIBRARY_PATH", &libs);
    let pid = run_client(&mut client);
    let log = agent.log();
    let events = agent.stop();
    assert!(
        log.contains("private-openssl/libssl.so.3"),
        "the copy was not probed:\n{log}"
    );
    assert_eq!(
        shapes(&calls_of(&events, pid)),
        vec![
            expect("POST", "/v1/items", 201, "egress", true),
            expect("GET", "/v1/items/7", 200, "egress", true)
        ]
    );
}

#[test]
fn third_party_mode_probes_the_caller_not_the_inbound_server() {
    if !can_run("third_party_mode_probes_the_caller_not_the_inbound_server") {
        return;
    }
    let api = ThirdParty::start();
    let config = agent_config(
        &scratch("third-party-mode"),
        "[capture]\ntls_probe = \"third_party\"",
    );
    let agent = Agent::start_with(&["--config", config.to_str().expect("utf-8 path")]);
    // python starts slowly enough for its probes to be in before its first call.
    let pid = run_client(&mut python(&api, "post", &["tls"]));
    let events = agent.stop();

    assert_eq!(
        shapes(&calls_of(&events, pid)),
        vec![
            expect("POST", "/v1/items", 201, "egress", true),
            expect("GET", "/v1/items/7", 200, "egress", true)
        ]
    );
    // The API server only answers inbound calls: it is never probed, so its TLS side is not
    // decrypted (its plaintext side would still be seen).
    assert!(
        calls_of(&events, api.server_pid()).is_empty(),
        "the inbound-only server was probed"
    );
}

/// A server that accepts without asking for the peer's address (libuv: `accept4(fd, NULL,
/// NULL)`), so the kernel cannot say where its connections come from: the agent asks each
/// socket, holding the calls it parses meanwhile, and every call it serves is reported with
/// its client's address. The connection stays open (keep-alive, 300 ms between calls):
/// one closed before the agent could ask has its calls reported without an address.
#[test]
fn a_server_that_accepts_without_the_peer_address() {
    if !can_run("a_server_that_accepts_without_the_peer_address") {
        return;
    }
    let agent = Agent::start();
    let script = "const s = require('http').createServer((q, r) => r.end('ok'));\
        s.listen(0, '127.0.0.1', () => console.log(s.address().port));";
    /// Kills the server however the test ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Server(
        Command::new("node")
            .arg("-e")
            .arg(script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start node"),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("node's port");
    let port: u16 = line.trim().parse().expect("a port");
    // One keep-alive connection, three calls, 300 ms apart.
    let client = format!(
        "import http.client, time\n\
         c = http.client.HTTPConnection('127.0.0.1', {port})\n\
         for n in range(3):\n    \
             c.request('GET', '/in/%d' % n)\n    \
             assert c.getresponse().read() == b'ok'\n    \
             time.sleep(0.3)\n"
    );
    run_client(Command::new("python3").arg("-c").arg(client));
    let node = server.0.id();
    drop(server);
    let events = agent.stop();
    let calls = calls_of(&events, node);
    let got: Vec<_> = calls
        .iter()
        .map(|c| {
            (
                c["method"].as_str().unwrap_or_default().to_owned(),
                c["path"].as_str().unwrap_or_default().to_owned(),
                c["status"].as_u64(),
                c["direction"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want: Vec<_> = (0..3)
        .map(|n| {
            (
                "GET".to_owned(),
                format!("/in/{n}"),
                Some(200),
                "ingress".to_owned(),
            )
        })
        .collect();
    assert_eq!(got, want);
    let remotes: Vec<_> = calls.iter().map(|c| c["remote_addr"].clone()).collect();
    assert!(remotes.iter().all(|r| *r == remotes[0]), "{remotes:?}");
    let remote: std::net::SocketAddr = remotes[0]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no client address: {remotes:?}"));
    assert!(
        remote.ip().is_loopback() && remote.port() != port,
        "{remote}"
    );
}
