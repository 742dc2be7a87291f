//! Privacy analysis on live traffic: real clients send personal data and secrets to a
//! third-party API in a network namespace, in plaintext and over TLS. The agent reports the
//! same findings as `apimon analyze` does for that traffic, and no raw value ever reaches its
//! events, metrics, log, data map or report.

use std::{fs, path::Path, process::Command};

use serde_json::Value;
use tests::{
    API_ADDR, API_HOST, Agent, ThirdParty, agent_config, can_run, output,
    pii::{CARD, EMAIL, PHONE, SSN, customer},
    run_client, scratch,
};

/// The secrets the clients send besides the personal data, and the forms a leak could take
/// (digits without separators, the JWT's parts).
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const RAW: &[&str] = &[
    EMAIL,
    "lucy.smith",
    CARD,
    "4111111111111111",
    SSN,
    "536225041",
    PHONE,
    "4155552671",
    JWT,
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    AWS_KEY,
];

fn curl(api: &ThirdParty, tls: bool, extra: &[&str]) -> Command {
    let (scheme, port) = if tls { ("https", 8443) } else { ("http", 8080) };
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "-o", "/dev/null", "--resolve"])
        .arg(format!("{API_HOST}:{port}:{API_ADDR}"))
        .arg("--cacert")
        .arg(api.ca())
        .args(extra)
        .arg(format!("{scheme}://{API_HOST}:{port}/v1/customers"));
    c
}

/// (kind, data type, field) of each finding of process `pid`.
fn findings_of(events: &[Value], pid: u32) -> Vec<(String, String, String)> {
    findings_where(events, "pid", pid.into())
}

/// (kind, data type, field) of each finding whose `key` is `value`, sorted.
fn findings_where(events: &[Value], key: &str, value: Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] != "call" && e[key] == value)
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_owned(),
                e["data_type"].as_str().unwrap_or_default().to_owned(),
                e["field"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn assert_no_raw_value(what: &str, text: &str) {
    for raw in RAW {
        assert!(!text.contains(raw), "{what} contains the raw value {raw:?}");
    }
}

#[test]
fn personal_data_in_plaintext_and_tls_is_found_and_never_leaked() {
    if !can_run("personal_data_in_plaintext_and_tls_is_found_and_never_leaked") {
        return;
    }
    let dir = scratch("privacy");
    let (map, report) = (dir.join("map.json"), dir.join("report.md"));
    let config = agent_config(&dir, "[privacy]\nhash_key = \"privacy-test-key\"");

    let api = ThirdParty::start();
    let agent = Agent::start_with(&[
        "--config",
        path(&config),
        "--data-map",
        path(&map),
        "--report",
        path(&report),
    ]);
    let body = customer(None);
    // Plaintext, no credential: personal data in the body, a secret in the query string.
    let plain = run_client(&mut curl(
        &api,
        false,
        &[
            "-H",
            "Content-Type: application/json",
            "--data",
            &body,
            "--url-query",
            &format!("aws={AWS_KEY}"),
        ],
    ));
    // TLS with a bearer token: the same personal data, the credential where it belongs.
    let tls = run_client(&mut curl(
        &api,
        true,
        &[
            "-H",
            "Content-Type: application/json",
            "-H",
            &format!("Authorization: Bearer {JWT}"),
            "--data",
            &body,
        ],
    ));
    // Findings are counted once the exchanges are analysed, a moment after the clients exit.
    agent.wait_metric(|l| l.starts_with("apimon_findings_total{"), 15);
    let metrics = agent.scrape();
    let log = agent.log();
    let events = agent.stop();

    let pii = |field: &str, t: &str| ("pii".to_owned(), t.to_owned(), field.to_owned());
    let mut expected_plain = vec![
        pii("$.customer.email", "email"),
        pii("$.customer.card_number", "credit_card"),
        pii("$.customer.ssn", "us_ssn"),
        pii("$.customer.phone", "phone"),
        (
            "secret".to_owned(),
            "aws_access_key".to_owned(),
            "aws".to_owned(),
        ),
        (
            "unauthenticated_call".to_owned(),
            String::new(),
            String::new(),
        ),
    ];
    expected_plain.sort();
    let got_plain = findings_of(&events, plain);
    for f in &expected_plain {
        assert!(
            got_plain.contains(f),
            "plaintext call: {f:?} missing from {got_plain:?}"
        );
    }
    let mut expected_tls = vec![
        pii("$.customer.email", "email"),
        pii("$.customer.card_number", "credit_card"),
        pii("$.customer.ssn", "us_ssn"),
        pii("$.customer.phone", "phone"),
    ];
    expected_tls.sort();
    assert_eq!(
        findings_of(&events, tls),
        expected_tls,
        "TLS call with a bearer token"
    );

    // Personal data in plaintext to a third party is of the highest severity; over TLS not.
    let severity = |pid: u32, t: &str| {
        events
            .iter()
            .find(|e| e["pid"] == pid && e["data_type"] == t)
            .and_then(|e| e["severity"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(severity(plain, "credit_card"), "critical");
    assert_ne!(severity(tls, "credit_card"), "critical");
    // Samples are masked, and the keyed hash correlates the same card across both calls (the
    // server's side sees it too, as ingress).
    let card_findings: Vec<&Value> = events
        .iter()
        .filter(|e| e["data_type"] == "credit_card" && (e["pid"] == plain || e["pid"] == tls))
        .collect();
    assert_eq!(card_findings.len(), 2);
    assert_eq!(card_findings[0]["sample"], "**** **** **** 1111");
    assert!(card_findings[0]["value_hash"].is_string());
    assert_eq!(
        card_findings[0]["value_hash"],
        card_findings[1]["value_hash"]
    );
    let auth = |pid: u32| {
        events
            .iter()
            .find(|e| e["kind"] == "call" && e["pid"] == pid)
            .map(|e| e["auth"].clone())
    };
    assert_eq!(auth(plain), Some(Value::from("none")));
    assert_eq!(auth(tls), Some(Value::from("bearer")));

    // The same traffic as a HAR file: `apimon analyze` finds the same.
    let har = dir.join("same.har");
    fs::write(&har, har_of(&body).to_string()).expect("HAR");
    let offline = output(Command::new(tests::agent_bin()).arg("analyze").arg(&har));
    let offline: Vec<Value> = String::from_utf8_lossy(&offline)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let by_entry = |entry: u64| findings_where(&offline, "entry", entry.into());
    assert_eq!(
        by_entry(0),
        got_plain,
        "live and offline findings, plaintext call"
    );
    assert_eq!(
        by_entry(1),
        expected_tls,
        "live and offline findings, TLS call"
    );
    assert!(
        metrics.contains(&format!(
            "apimon_findings_total{{data_type=\"credit_card\",host=\"{API_HOST}\",kind=\"pii\"}}"
        )),
        "{metrics}"
    );

    let map_text = fs::read_to_string(&map).expect("data map written at exit");
    let report_text = fs::read_to_string(&report).expect("report written at exit");
    let doc: Value = serde_json::from_str(&map_text).expect("data map is JSON");
    let flow = doc["flows"]
        .as_array()
        .and_then(|f| {
            f.iter()
                .find(|f| f["process"] == "curl" && f["host"] == API_HOST)
        })
        .unwrap_or_else(|| panic!("no curl -> {API_HOST} flow in {map_text}"));
    let sent: Vec<&str> = flow["sent"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for t in ["email", "credit_card", "us_ssn", "phone", "aws_access_key"] {
        assert!(sent.contains(&t), "data map flow lacks {t}: {flow}");
    }
    assert_eq!(flow["calls"], 2, "{flow}");
    assert_eq!(flow["plaintext_calls"], 1, "{flow}");
    assert!(report_text.contains(API_HOST), "{report_text}");

    let events_text = events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert_no_raw_value("events", &events_text);
    assert_no_raw_value("metrics", &metrics);
    assert_no_raw_value("log", &log);
    assert_no_raw_value("data map", &map_text);
    assert_no_raw_value("report", &report_text);
    let _ = fs::remove_dir_all(&dir);
}

/// The two calls as a browser or proxy would export them.
fn har_of(body: &str) -> Value {
    let entry = |url: String, auth: Option<String>| {
        let mut headers =
            vec![serde_json::json!({"name": "Content-Type", "value": "application/json"})];
        if let Some(a) = auth {
            headers.push(serde_json::json!({"name": "Authorization", "value": a}));
        }
        serde_json::json!({
            "startedDateTime": "2026-11-23T10:00:00.000Z",
            "time": 3.5,
            "request": {
                "method": "POST", "url": url, "httpVersion": "HTTP/1.1", "headers": headers,
                "queryString": [], "cookies": [], "headersSize": -1, "bodySize": body.len(),
                "postData": {"mimeType": "application/json", "text": body},
            },
            "response": {
                "status": 201, "statusText": "Created", "httpVersion": "HTTP/1.1", "headers": [],
                "cookies": [], "content": {"size": 15, "mimeType": "application/json", "text": "{\"received\": 1}"},
                "redirectURL": "", "headersSize": -1, "bodySize": 15,
            },
            "cache": {}, "timings": {"send": 0, "wait": 3, "receive": 0.5},
        })
    };
    serde_json::json!({"log": {"version": "1.2", "creator": {"name": "test", "version": "1"}, "entries": [
        entry(format!("http://{API_HOST}:8080/v1/customers?aws={AWS_KEY}"), None),
        entry(format!("https://{API_HOST}:8443/v1/customers"), Some(format!("Bearer {JWT}"))),
    ]}})
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}
