//! The operators' side, for real: curl sends personal data unauthenticated, in plaintext, to a
//! third-party API in a network namespace; receivers on loopback stand in for Slack, a webhook
//! endpoint and Alertmanager. Alerts arrive as valid JSON with a verifiable signature, a flood
//! becomes one alert with a count, and a sink outage plus an agent SIGKILL loses and doubles
//! nothing. Configuration errors point at their line; SIGHUP reloads, and a bad file is refused.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use hmac::{Hmac, Mac as _};
use serde_json::Value;
use sha2::Sha256;
use tests::{
    API_ADDR, API_HOST, Agent, ThirdParty, agent_bin, can_run,
    pii::{CARD, EMAIL, PHONE, SSN, customer},
    receiver::{Received, Receiver},
    run_client, scratch,
};

const IBAN: &str = "GB82 WEST 1234 5698 7654 32";
const RAW: &[&str] = &[EMAIL, CARD, "4111111111111111", SSN, PHONE, IBAN];
const HMAC_KEY: &str = "hmac-test-key-5f1b9c";
const SLACK_TOKEN: &str = "XoXoSeCrEtToKeN42";
const FLOOD: usize = 40;

/// curl POSTing `body` to the API `times` times over one keep-alive connection, no credential.
fn post(body: &str, times: usize) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "--resolve"])
        .arg(format!("{API_HOST}:8080:{API_ADDR}"))
        .args(["-H", "content-type: application/json", "-d", body]);
    for _ in 0..times {
        c.args(["-o", "/dev/null"])
            .arg(format!("http://{API_HOST}:8080/v1/customers"));
    }
    c
}

fn write_config(dir: &Path, slack: &Receiver, hook: &Receiver, am: &Receiver) -> PathBuf {
    let url_file = dir.join("slack-url");
    fs::write(
        &url_file,
        slack.url(&format!("/services/T0001/B0001/{SLACK_TOKEN}\n")),
    )
    .expect("url file");
    let sink = |name: &str, kind: &str, url: &str| {
        format!(
            "[[alerts.sinks]]\nname = \"{name}\"\ntype = \"{kind}\"\n{url}\nmax_backoff = \"1s\"\nrate_per_minute = 600\nburst = 100\ntimeout = \"2s\"\n\n"
        )
    };
    let text = format!(
        "[alerts]\nstate_dir = \"{}\"\ngroup_wait = \"3s\"\ndashboard_url = \"https://grafana.example/d/apimon\"\n\n{}{}{}[anomaly]\nlearning_period = \"0s\"\ninterval = \"1s\"\n",
        dir.join("state").display(),
        sink(
            "slack",
            "slack",
            &format!("url_file = \"{}\"", url_file.display())
        ),
        sink(
            "webhook",
            "webhook",
            &format!(
                "url = \"{}\"\nsecret_env = \"APIMON_TEST_HMAC\"",
                hook.url("/hooks/apimon")
            )
        ),
        sink(
            "alertmanager",
            "alertmanager",
            &format!("url = \"{}\"", am.url(""))
        ),
    );
    let path = dir.join("apimon.toml");
    fs::write(&path, text).expect("config");
    path
}

fn start(config: &Path) -> Agent {
    Agent::start_env(
        &["--config", config.to_str().expect("utf-8 path")],
        &[("APIMON_TEST_HMAC", HMAC_KEY)],
    )
}

/// (kind, data_type) -> (count, id) of the webhook-schema alerts in `got`.
fn by_kind(alerts: &[Value]) -> BTreeMap<(String, String), Vec<u64>> {
    let mut out: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for a in alerts {
        out.entry((
            a["kind"].as_str().unwrap_or_default().to_owned(),
            a["data_type"].as_str().unwrap_or_default().to_owned(),
        ))
        .or_default()
        .push(a["count"].as_u64().unwrap_or(0));
    }
    out
}

fn ids(got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| r.header("idempotency-key").unwrap_or_default().to_owned())
        .collect()
}

fn assert_unique(what: &str, got: &[Received]) {
    let all = ids(got);
    let unique: BTreeSet<_> = all.iter().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "{what} got an alert twice: {all:?}"
    );
}

fn verify_signature(r: &Received) {
    let ts = r.header("x-apimon-timestamp").expect("timestamp header");
    let sig = r.header("x-apimon-signature").expect("signature header");
    let mut mac = Hmac::<Sha256>::new_from_slice(HMAC_KEY.as_bytes()).expect("key");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let want = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(sig, want, "signature does not verify");
}

#[test]
fn alerts_reach_every_sink_through_an_outage_and_a_sigkill() {
    if !can_run("alerts_reach_every_sink_through_an_outage_and_a_sigkill") {
        return;
    }
    let _api = ThirdParty::start();
    let dir = scratch("alerts");
    let (slack, hook, am) = (Receiver::start(), Receiver::start(), Receiver::start());
    hook.set_down(true);
    let config = write_config(&dir, &slack, &hook, &am);
    let agent = start(&config);

    run_client(&mut post(&customer(None), FLOOD));

    let slack_got = slack.wait_for(30, |g| g.len() >= 6);
    let am_got = am.wait_for(30, |g| g.len() >= 6);
    let slack_alerts: Vec<Value> = slack_got.iter().map(Received::json).collect();
    assert_eq!(
        slack_got.len(),
        6,
        "slack: {slack_alerts:#?}\n{}",
        agent.log()
    );
    assert_eq!(am_got.len(), 6, "alertmanager: {}", agent.log());
    for r in &slack_got {
        let v = r.json();
        assert!(v["text"].is_string() && v["blocks"].is_array(), "{v}");
        assert!(r.path.ends_with(SLACK_TOKEN), "{}", r.path);
    }
    let mut am_names = BTreeSet::new();
    for r in &am_got {
        assert_eq!(r.path, "/api/v2/alerts");
        let v = r.json();
        am_names.insert(
            v[0]["labels"]["alertname"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        assert!(v[0]["startsAt"].is_string() && v[0]["endsAt"].is_string());
    }
    assert!(
        am_names.contains("ApimonPii") && am_names.contains("ApimonUnauthenticatedCall"),
        "{am_names:?}"
    );

    // The webhook is down: its alerts wait in the spool.
    assert!(
        agent.wait_metric(|l| l == "apimon_alert_queue_depth{sink=\"webhook\"} 6", 30),
        "webhook queue:\n{}",
        agent.scrape()
    );
    assert!(hook.refused() >= 1);
    // Every later call of the flood was counted into its key's alert: 5 keys, 39 repeats each.
    let deduplicated = format!(
        "apimon_alerts_suppressed_total{{reason=\"deduplicated\"}} {}",
        (FLOOD - 1) * 5
    );
    let metrics = agent.scrape();
    assert!(
        metrics.contains(&deduplicated),
        "{deduplicated}:\n{metrics}"
    );
    let log = agent.kill();

    // Up again, and a new agent: the spooled alerts go out, each once.
    hook.set_down(false);
    let agent = start(&config);
    let hook_got = hook.wait_for(30, |g| g.len() >= 6);
    assert_eq!(hook_got.len(), 6, "webhook after restart:\n{}", agent.log());
    let hook_alerts: Vec<Value> = hook_got.iter().map(Received::json).collect();
    for (r, v) in hook_got.iter().zip(&hook_alerts) {
        verify_signature(r);
        assert_eq!(v["schema"], "apimon.alert/v1");
        assert_eq!(v["id"].as_str(), r.header("idempotency-key"));
        assert_eq!(v["process"], "curl");
        assert_eq!(v["host"], API_HOST);
        assert_eq!(v["dashboard_url"], "https://grafana.example/d/apimon");
    }
    let kinds = by_kind(&hook_alerts);
    let flood = vec![FLOOD as u64];
    for t in ["email", "credit_card", "us_ssn", "phone"] {
        assert_eq!(
            kinds.get(&("pii".into(), t.into())),
            Some(&flood),
            "{kinds:?}"
        );
    }
    assert_eq!(
        kinds.get(&("unauthenticated_call".into(), String::new())),
        Some(&flood)
    );
    assert_eq!(
        kinds.get(&("new_destination".into(), String::new())),
        Some(&vec![1])
    );
    let email = hook_alerts
        .iter()
        .find(|a| a["data_type"] == "email")
        .expect("email alert");
    assert_eq!(email["severity"], "critical");
    assert_eq!(email["tls"], false);
    assert_eq!(email["field"], "$.customer.email");
    assert!(email["sample"].as_str().is_some_and(|s| s.contains('*')));

    // What is known survived the kill: another call only raises what is new (the IBAN).
    run_client(&mut post(&customer(Some(("iban", IBAN))), 1));
    let _ = slack.wait_for(30, |g| {
        g.iter().any(|r| {
            r.json()["text"]
                .as_str()
                .is_some_and(|t| t.contains("New kind"))
        })
    });
    thread::sleep(Duration::from_secs(2));
    let slack_got = slack.received();
    let texts: Vec<String> = slack_got
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("New kind of personal data (iban)")),
        "{texts:#?}"
    );
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("called a new third party"))
            .count(),
        1,
        "the destination was announced again after the restart: {texts:#?}"
    );

    // Nothing doubled anywhere; nothing raw or secret leaked.
    assert_unique("slack", &slack_got);
    assert_unique("alertmanager", &am.received());
    assert_unique("webhook", &hook.received());
    for r in slack_got
        .iter()
        .chain(&am.received())
        .chain(&hook.received())
    {
        let body = String::from_utf8_lossy(&r.body);
        for raw in RAW {
            assert!(
                !body.contains(raw),
                "a receiver got the raw value {raw}: {body}"
            );
        }
    }
    let metrics = agent.scrape();
    let log2 = agent.log();
    for text in [&log, &log2, &metrics] {
        assert!(!text.contains(SLACK_TOKEN), "the Slack URL leaked:\n{text}");
        assert!(!text.contains(HMAC_KEY), "the HMAC key leaked:\n{text}");
    }
    // The new agent delivered the spooled alerts plus those of the second call, each once.
    // Polled, the receiver read after each scrape: the agent counts a delivery only after the
    // receiver has it, so a delivery in flight is not an error once it settles.
    let delivered = |n: usize| {
        format!("apimon_alert_deliveries_total{{outcome=\"delivered\",sink=\"webhook\"}} {n}")
    };
    assert!(
        agent.wait_metric(|l| l == delivered(hook.received().len()), 10),
        "{} missing:\n{}",
        delivered(hook.received().len()),
        agent.scrape()
    );

    // The shipped dashboard and rules only query metrics the agent exports.
    assert_deploy_metrics_exist(&metrics);
    let events = agent.stop();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "alert" && e["alert"]["kind"] == "new_data_type"),
        "alerts are written to the events output too"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Every `apimon_*` name in deploy/ appears as a sample in `/metrics`.
fn assert_deploy_metrics_exist(metrics: &str) {
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut missing = BTreeSet::new();
    let mut checked = 0;
    for file in [
        "grafana/apimon-dashboard.json",
        "prometheus/apimon-rules.yml",
    ] {
        let text = fs::read_to_string(root.join(file)).expect("deploy asset");
        let mut rest = text.as_str();
        while let Some(i) = rest.find("apimon_") {
            rest = &rest[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            checked += 1;
            if !exported.contains(name) {
                missing.insert(format!("{file}: {name}"));
            }
            rest = &rest[end..];
        }
    }
    assert!(
        checked > 30,
        "only {checked} metric references found in deploy/"
    );
    assert!(
        missing.is_empty(),
        "not exported by the agent: {missing:#?}"
    );
}

#[test]
fn config_errors_name_their_line_and_sighup_reloads() {
    let dir = scratch("config");
    let check = |text: &str| {
        let path = dir.join("c.toml");
        fs::write(&path, text).expect("write");
        let out = Command::new(agent_bin())
            .args(["config", "check"])
            .arg(&path)
            .env_remove("APIMON_NOT_SET")
            .output()
            .expect("apimon config check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = check("[alerts]\ngroup_wait = \"5s\"\n");
    assert!(ok, "{out}");
    let (ok, out) = check("[alerts]\n\ngroup_wait = \"2h\"\n");
    assert!(!ok && out.contains("c.toml:3: alerts.group_wait"), "{out}");
    let (ok, out) = check("[anomaly]\ntreshold = 3\n");
    assert!(
        !ok && out.contains("line 2") && out.contains("treshold"),
        "{out}"
    );
    let (ok, out) = check(
        "[alerts]\n[[alerts.sinks]]\nname = \"a\"\ntype = \"slack\"\nurl = \"http://x\"\n[[alerts.sinks]]\nname = \"b\"\ntype = \"webhook\"\nurl_env = \"APIMON_NOT_SET\"\n",
    );
    assert!(
        !ok && out.contains(":6: alerts.sinks[1]") && out.contains("APIMON_NOT_SET is not set"),
        "{out}"
    );
    let (ok, out) = check(
        "[[alerts.sinks]]\nname = \"s\"\ntype = \"slack\"\nurl = \"https://hooks.slack.com/services/T/B/SECRETPART\"\n[[alerts.sinks]]\nname = \"s\"\ntype = \"slack\"\nurl = \"not a url SECRETPART\"\n",
    );
    assert!(!ok && out.contains("used twice"), "{out}");
    let (ok, out) =
        check("[[alerts.sinks]]\nname = \"s\"\ntype = \"slack\"\nurl = \"not a url SECRETPART\"\n");
    assert!(
        !ok && !out.contains("SECRETPART"),
        "an error repeated the URL: {out}"
    );

    if !can_run("config_errors_name_their_line_and_sighup_reloads") {
        return;
    }
    let api = ThirdParty::start();
    let config = dir.join("apimon.toml");
    let base = format!(
        "[alerts]\nstate_dir = \"{}\"\ngroup_wait = \"1s\"\n[anomaly]\nlearning_period = \"0s\"\n",
        dir.join("state").display()
    );
    fs::write(&config, &base).expect("config");
    let mut agent = Agent::start_with(&["--config", config.to_str().expect("path")]);

    fs::write(&config, "[alerts\nbroken").expect("bad config");
    agent.signal(libc::SIGHUP);
    assert!(
        agent.wait_metric(|l| l == "apimon_config_last_reload_success 0", 10),
        "{}",
        agent.log()
    );
    assert!(agent.running(), "a bad reload stopped the agent");
    assert!(agent.log().contains("reload refused"), "{}", agent.log());

    let silenced = format!(
        "{base}[[alerts.silences]]\nkind = \"unauthenticated_call\"\nhost = \"{API_HOST}\"\ncomment = \"partner API is public\"\n"
    );
    fs::write(&config, silenced).expect("config");
    agent.signal(libc::SIGHUP);
    assert!(
        agent.wait_metric(|l| l == "apimon_config_reloads_total{result=\"ok\"} 1", 10),
        "{}",
        agent.log()
    );
    run_client(&mut post(&customer(None), 1));
    assert!(
        agent.wait_metric(
            |l| l.starts_with("apimon_alerts_suppressed_total{reason=\"silenced\"} ")
                && !l.ends_with(" 0"),
            15
        ),
        "{}",
        agent.scrape()
    );
    thread::sleep(Duration::from_secs(2));
    let events = agent.stop();
    let alerts: Vec<&Value> = events.iter().filter(|e| e["kind"] == "alert").collect();
    assert!(
        alerts.iter().any(|a| a["alert"]["kind"] == "pii"),
        "no alert at all: {alerts:#?}"
    );
    assert!(
        !alerts
            .iter()
            .any(|a| a["alert"]["kind"] == "unauthenticated_call"),
        "the silence did not apply: {alerts:#?}"
    );
    drop(api);
    let _ = fs::remove_dir_all(&dir);
}
