//! Alerts over several channels (issue 10 point 1; A5.2, F5): a local SMTP sink and a webhook
//! receiver, both in this test on loopback, get an alert when a node is killed and a resolve
//! message when it returns; a slow-response rule fires when the test delays a node's responses
//! (feature `fault-injection`); the history shows both transitions with their deliveries.
//!
//! The time from the kill to each message is printed (`alert latency`); with `ALERTS_ROUNDS=N`
//! the node-loss round is repeated N times and p50/max are printed (docs/benchmarks.md).

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use dtm_tests::TestCluster;
use dtm_tests::eventually;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::TcpListener;

const WEBHOOK_SECRET: &str = "test-webhook-signing-secret";

/// What a sink received, and when.
#[derive(Clone, Debug)]
struct Received {
    at: Instant,
    /// Mail: the message (headers and body). Webhook: the JSON body.
    text: String,
    /// Webhook: the `x-dtm-signature` header.
    signature: Option<String>,
}

type Inbox = Arc<Mutex<Vec<Received>>>;

fn inbox_items(inbox: &Inbox) -> Vec<Received> {
    inbox.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A minimal SMTP server (RFC 5321 without extensions): accepts every message and keeps it.
async fn smtp_sink() -> anyhow::Result<(u16, Inbox)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let inbox: Inbox = Arc::default();
    let store = inbox.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 sink ESMTP\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                        "DATA" => {
                            let _ = w.write_all(b"354 go ahead\r\n").await;
                            let mut text = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                text.push_str(&l);
                                text.push('\n');
                            }
                            store.lock().unwrap_or_else(|p| p.into_inner()).push(Received {
                                at: Instant::now(),
                                text,
                                signature: None,
                            });
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 OK\r\n",
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((port, inbox))
}

/// An SMTP server that requires STARTTLS (RFC 3207) with `cert`/`key` (a node certificate of the
/// test cluster's CA, valid for 127.0.0.1) before it accepts a message. Blocking threads, rustls.
fn starttls_sink(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<(u16, Inbox)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)?;
    let cfg = Arc::new(rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key)?);
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let inbox: Inbox = Arc::default();
    let store = inbox.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (cfg, store) = (cfg.clone(), store.clone());
            std::thread::spawn(move || {
                let _ = tls_session(stream, cfg, &store);
            });
        }
    });
    Ok((port, inbox))
}

fn tls_session(stream: std::net::TcpStream, cfg: Arc<rustls::ServerConfig>, store: &Inbox) -> std::io::Result<()> {
    use std::io::BufRead;
    use std::io::Write;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = stream.try_clone()?;
    // Unbuffered reads before STARTTLS: nothing of the handshake may end up in a buffer.
    let read_line = |s: &mut std::net::TcpStream| -> std::io::Result<String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while std::io::Read::read(s, &mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&line).trim_end().to_string())
    };
    let mut r = stream;
    w.write_all(b"220 sink ESMTP\r\n")?;
    loop {
        let line = read_line(&mut r)?;
        match line.split_whitespace().next().unwrap_or("").to_ascii_uppercase().as_str() {
            "EHLO" => w.write_all(b"250-sink\r\n250 STARTTLS\r\n")?,
            "STARTTLS" => {
                w.write_all(b"220 go ahead\r\n")?;
                break;
            }
            "QUIT" | "" => return Ok(()),
            _ => w.write_all(b"530 must issue a STARTTLS command first\r\n")?,
        }
    }
    let conn = rustls::ServerConnection::new(cfg).map_err(std::io::Error::other)?;
    let mut tls = std::io::BufReader::new(rustls::StreamOwned::new(conn, r));
    let reply = |tls: &mut std::io::BufReader<rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>>,
                 text: &[u8]| {
        let s = tls.get_mut();
        s.write_all(text).and_then(|_| s.flush())
    };
    let mut line = String::new();
    loop {
        line.clear();
        if tls.read_line(&mut line)? == 0 {
            return Ok(());
        }
        match line.split_whitespace().next().unwrap_or("").to_ascii_uppercase().as_str() {
            "EHLO" => reply(&mut tls, b"250-sink\r\n250 8BITMIME\r\n")?,
            "DATA" => {
                reply(&mut tls, b"354 go ahead\r\n")?;
                let mut text = String::new();
                loop {
                    line.clear();
                    if tls.read_line(&mut line)? == 0 || line.trim_end() == "." {
                        break;
                    }
                    text.push_str(line.trim_end());
                    text.push('\n');
                }
                store.lock().unwrap_or_else(|p| p.into_inner()).push(Received {
                    at: Instant::now(),
                    text,
                    signature: None,
                });
                reply(&mut tls, b"250 queued\r\n")?;
            }
            "QUIT" => return reply(&mut tls, b"221 bye\r\n"),
            _ => reply(&mut tls, b"250 OK\r\n")?,
        }
    }
}

/// A minimal HTTP/1.1 server that keeps every POST body and answers 200.
async fn webhook_receiver() -> anyhow::Result<(u16, Inbox)> {
    let (port, inbox, _) = webhook_receiver_hanging_first(false).await?;
    Ok((port, inbox))
}

/// Like `webhook_receiver`; with `hang_first`, the first connection is accepted and then never
/// read nor answered (a delivery that never completes); the returned flag is set when it came.
async fn webhook_receiver_hanging_first(
    hang_first: bool,
) -> anyhow::Result<(u16, Inbox, Arc<std::sync::atomic::AtomicBool>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let inbox: Inbox = Arc::default();
    let store = inbox.clone();
    let hung = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hung_flag = hung.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            if hang_first && !hung_flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
                held.push(stream);
                continue;
            }
            let store = store.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head, then as much body as Content-Length says (bounded).
                let head_end = loop {
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 || buf.len() > 1 << 20 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                };
                let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0).min(1 << 20);
                while buf.len() < head_end + len {
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[head_end..(head_end + len).min(buf.len())]).to_string();
                store.lock().unwrap_or_else(|p| p.into_inner()).push(Received {
                    at: Instant::now(),
                    text: body,
                    signature: header("x-dtm-signature"),
                });
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            });
        }
    });
    Ok((port, inbox, hung))
}

async fn admin_ok(
    c: &TestCluster,
    method: Method,
    node: u64,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let (status, v) = c.admin(method.clone(), node, path, body).await?;
    anyhow::ensure!((200..300).contains(&status), "{method} {path}: {status} {v}");
    Ok(v)
}

/// Registers an e-mail channel to the sink and a signed webhook channel to the receiver.
async fn add_channels(c: &TestCluster, smtp_port: u16, hook_port: u16) -> anyhow::Result<()> {
    let email = json!({"kind": "email", "email": {"host": "127.0.0.1", "port": smtp_port, "security": "plain",
        "from": "dtm-alerts@example.test", "to": ["ops@example.test", "oncall@example.test"]}});
    admin_ok(c, Method::PUT, 1, "/api/v1/alerts/channels/ops-mail", Some(email)).await?;
    let hook = json!({"kind": "webhook", "webhook": {"url": format!("http://127.0.0.1:{hook_port}/hook"), "secret_ref": "hook"}});
    let v = admin_ok(c, Method::PUT, 1, "/api/v1/alerts/channels/ops-hook", Some(hook)).await?;
    anyhow::ensure!(
        v["channel"]["webhook"]["secret_set_here"] == true,
        "the node does not see the webhook secret: {v}"
    );
    Ok(())
}

/// A webhook channel to a port nobody listens on: its deliveries fail (after bounded retries)
/// without delaying the other channels.
async fn add_dead_channel(c: &TestCluster) -> anyhow::Result<()> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let hook = json!({"kind": "webhook", "webhook": {"url": format!("http://127.0.0.1:{closed}/nobody")}});
    admin_ok(c, Method::PUT, 1, "/api/v1/alerts/channels/dead-hook", Some(hook)).await?;
    Ok(())
}

/// The webhook bodies for `rule` on `subject` with `status`, signature checked.
fn hooks(inbox: &Inbox, rule: &str, subject: &str, status: &str) -> Vec<(Instant, Value)> {
    inbox_items(inbox)
        .into_iter()
        .filter_map(|r| {
            let v: Value = serde_json::from_str(&r.text).ok()?;
            let matches = v["rule"]["id"] == rule && v["subject"] == subject && v["status"] == status;
            if !matches {
                return None;
            }
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
            let expected = format!("sha256={}", hex::encode(ring::hmac::sign(&key, r.text.as_bytes()).as_ref()));
            assert_eq!(r.signature.as_deref(), Some(expected.as_str()), "webhook signature");
            Some((r.at, v))
        })
        .collect()
}

fn mails(inbox: &Inbox, rule: &str, subject: &str, status: &str) -> Vec<(Instant, String)> {
    let word = if status == "firing" { "FIRING" } else { "RESOLVED" };
    inbox_items(inbox)
        .into_iter()
        .filter(|r| {
            r.text.lines().any(|l| {
                l.starts_with("Subject:") && l.contains(word) && l.contains(rule) && l.contains(&format!(" {subject}"))
            })
        })
        .map(|r| (r.at, r.text))
        .collect()
}

async fn wait_both(
    what: &str,
    mail: &Inbox,
    hook: &Inbox,
    rule: &str,
    subject: &str,
    status: &str,
    timeout: Duration,
) -> anyhow::Result<(Instant, Instant)> {
    eventually(what, timeout, || async {
        let m = mails(mail, rule, subject, status);
        let h = hooks(hook, rule, subject, status);
        Some((m.first()?.0, h.first()?.0))
    })
    .await
}

fn set_webhook_secret() {
    // SAFETY: set before any node is spawned and before other threads read the environment; the
    // nodes inherit it (each node reads DTM_ALERT_SECRET_HOOK from its own environment).
    unsafe { std::env::set_var("DTM_ALERT_SECRET_HOOK", WEBHOOK_SECRET) };
}

fn percentile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

/// A5.2, F5: a killed node is notified by e-mail and webhook within 10 s, once per channel, and
/// its return is notified as resolved; history keeps both transitions with their deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a5_2_node_loss_alerts_by_email_and_webhook_and_resolves() -> anyhow::Result<()> {
    set_webhook_secret();
    let (smtp_port, mail) = smtp_sink().await?;
    let (hook_port, hook) = webhook_receiver().await?;
    let c = TestCluster::start(3, &[]).await?;
    let result = node_loss_rounds(&c, smtp_port, hook_port, &mail, &hook).await;
    if result.is_err() {
        c.dump_logs();
    }
    result
}

async fn node_loss_rounds(
    c: &TestCluster,
    smtp_port: u16,
    hook_port: u16,
    mail: &Inbox,
    hook: &Inbox,
) -> anyhow::Result<()> {
    add_channels(c, smtp_port, hook_port).await?;
    add_dead_channel(c).await?;
    // The built-in rules are seeded by the leader.
    eventually("built-in alert rules", Duration::from_secs(30), || async {
        let v = c.admin(Method::GET, 1, "/api/v1/alerts/rules/node-down", None).await.ok()?;
        (v.0 == 200 && v.1["builtin"] == true).then_some(())
    })
    .await?;
    let rounds: usize = std::env::var("ALERTS_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let kill_leader = std::env::var("ALERTS_KILL_LEADER").is_ok_and(|v| v == "1");
    let (mut to_mail, mut to_hook) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let leader = c.leader().await?;
        // ALERTS_KILL_LEADER=1 (benchmark): the leader itself dies, so a new leader must first be
        // elected and then see the member missing.
        let victim = if kill_leader {
            leader
        } else {
            c.nodes.keys().copied().find(|id| *id != leader).context("a follower")?
        };
        let reader = c.nodes.keys().copied().find(|id| *id != victim).context("another node")?;
        let subject = format!("node/{victim}");
        let fired_before = hooks(hook, "node-down", &subject, "firing").len();
        let mails_before = mails(mail, "node-down", &subject, "firing").len();
        let resolved_before = hooks(hook, "node-down", &subject, "resolved").len();
        let resolved_mails_before = mails(mail, "node-down", &subject, "resolved").len();

        let killed_at = Instant::now();
        c.kill(victim);
        eventually("node-down alert by e-mail and webhook", Duration::from_secs(30), || async {
            (mails(mail, "node-down", &subject, "firing").len() > mails_before
                && hooks(hook, "node-down", &subject, "firing").len() > fired_before)
                .then_some(())
        })
        .await?;
        let m = mails(mail, "node-down", &subject, "firing")[mails_before].0.duration_since(killed_at);
        let h = hooks(hook, "node-down", &subject, "firing")[fired_before].0.duration_since(killed_at);
        let role = if victim == leader { "leader" } else { "follower" };
        eprintln!("alert latency round {round}: kill of {role} node {victim} -> e-mail {m:?}, webhook {h:?}");
        to_mail.push(m);
        to_hook.push(h);
        assert!(m <= Duration::from_secs(10) && h <= Duration::from_secs(10), "alert later than 10 s: {m:?} {h:?}");

        // The dashboard channel: the alert is active on every running node.
        for id in c.running() {
            let v = admin_ok(c, Method::GET, id, "/api/v1/alerts", None).await?;
            let active = v["alerts"].as_array().cloned().unwrap_or_default();
            assert!(
                active.iter().any(|a| a["rule_id"] == "node-down" && a["subject"] == subject.as_str()),
                "node {id} does not show the alert: {v}"
            );
        }

        c.restart(victim)?;
        eventually("the resolve message on both channels", Duration::from_secs(30), || async {
            (mails(mail, "node-down", &subject, "resolved").len() > resolved_mails_before
                && hooks(hook, "node-down", &subject, "resolved").len() > resolved_before)
                .then_some(())
        })
        .await?;
        // Exactly one firing message per channel for this transition (de-duplicated).
        assert_eq!(hooks(hook, "node-down", &subject, "firing").len(), fired_before + 1, "duplicate webhook");
        assert_eq!(mails(mail, "node-down", &subject, "firing").len(), mails_before + 1, "duplicate e-mail");
        let firing = hooks(hook, "node-down", &subject, "firing");
        let payload = &firing[fired_before].1;
        assert_eq!(payload["severity"], "critical");
        assert!(payload["event_id"].as_str().is_some_and(|s| !s.is_empty()));

        // History: the firing and the resolution, each delivered to both channels.
        let path = format!("/api/v1/alerts/history?rule=node-down&subject={subject}");
        let events = eventually("history with deliveries", Duration::from_secs(30), || async {
            let v = c.admin(Method::GET, reader, &path, None).await.ok()?.1;
            let events = v["events"].as_array()?.clone();
            let tail: Vec<Value> = events.iter().rev().take(2).rev().cloned().collect();
            let result_of = |e: &Value, ch: &str| {
                e["notifications"].as_array().and_then(|n| n.iter().find(|x| x["channel_id"] == ch).cloned())
            };
            let delivered = |e: &Value| {
                ["ops-mail", "ops-hook"].iter().all(|ch| result_of(e, ch).is_some_and(|x| x["result"] == "sent"))
                    && result_of(e, "dead-hook").is_some_and(|x| x["result"] == "failed" && x["attempts"] == 4)
            };
            (tail.len() == 2 && tail.iter().all(delivered)).then_some(tail)
        })
        .await?;
        // Attempts are visible as a metric too (A5.2), on the node that notified.
        let notifier = events[0]["node_id"].as_u64().context("node_id")?;
        let metrics = c.http.get(format!("{}/metrics", c.url(notifier))).send().await?.text().await?;
        for series in [
            r#"channel="webhook",result="sent""#,
            r#"channel="webhook",result="failed""#,
            r#"channel="email",result="sent""#,
        ] {
            assert!(
                metrics.lines().any(|l| l.starts_with("dtm_alert_notifications_total") && l.contains(series)),
                "dtm_alert_notifications_total{{{series}}} missing on node {notifier}"
            );
        }
        assert_eq!(events[0]["status"], "firing");
        assert_eq!(events[1]["status"], "resolved");
        assert!(events[0]["at_ms"].as_u64() <= events[1]["at_ms"].as_u64());
        // Back among the members before the next round.
        eventually("the node back", Duration::from_secs(30), || async {
            let v = admin_ok(c, Method::GET, reader, "/api/v1/alerts", None).await.ok()?;
            let active = v["alerts"].as_array()?.clone();
            (!active.iter().any(|a| a["subject"] == subject.as_str())).then_some(())
        })
        .await?;
    }
    if rounds > 1 {
        eprintln!(
            "alert latency over {rounds} rounds: e-mail p50 {:?} max {:?}; webhook p50 {:?} max {:?}",
            percentile(to_mail.clone(), 0.5),
            percentile(to_mail, 1.0),
            percentile(to_hook.clone(), 0.5),
            percentile(to_hook, 1.0)
        );
    }
    Ok(())
}

/// F5, P4: a response-time rule (the built-in one, overridden to a short window) fires when the
/// test delays a node's API responses past 0.6 s, and resolves when they are fast again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f5_slow_responses_fire_the_p95_rule_and_resolve() -> anyhow::Result<()> {
    set_webhook_secret();
    let (smtp_port, mail) = smtp_sink().await?;
    let (hook_port, hook) = webhook_receiver().await?;
    let c = TestCluster::start(1, &[]).await?;
    // A second e-mail channel that requires STARTTLS, with a certificate of the cluster CA.
    let (tls_port, tls_mail) = starttls_sink(
        &std::fs::read(c.tls_dir.join("node-1.pem"))?,
        &std::fs::read(c.tls_dir.join("node-1-key.pem"))?,
    )?;
    let channel = json!({"kind": "email", "email": {"host": "127.0.0.1", "port": tls_port, "security": "starttls",
        "from": "dtm-alerts@example.test", "to": ["tls@example.test"]}});
    admin_ok(&c, Method::PUT, 1, "/api/v1/alerts/channels/tls-mail", Some(channel)).await?;
    let result = slow_responses(&c, smtp_port, hook_port, &mail, &hook).await;
    let result = result.and_then(|()| {
        let got = mails(&tls_mail, "p95-response-time", "node/1", "firing");
        anyhow::ensure!(!got.is_empty(), "no alert over STARTTLS");
        Ok(())
    });
    if result.is_err() {
        c.dump_logs();
    }
    result
}

async fn slow_responses(
    c: &TestCluster,
    smtp_port: u16,
    hook_port: u16,
    mail: &Inbox,
    hook: &Inbox,
) -> anyhow::Result<()> {
    add_channels(c, smtp_port, hook_port).await?;
    // An operator checks the channels with a test message (sent once, recorded nowhere).
    for ch in ["ops-mail", "ops-hook"] {
        let v = admin_ok(c, Method::POST, 1, &format!("/api/v1/alerts/channels/{ch}/test"), None).await?;
        assert_eq!(v["result"], "sent", "{ch}: {v}");
    }
    let test_hooks: Vec<Value> =
        inbox_items(hook).iter().filter_map(|r| serde_json::from_str::<Value>(&r.text).ok()).collect();
    assert!(test_hooks.iter().any(|v| v["rule"]["id"] == "test"), "no test webhook: {test_hooks:?}");
    assert!(inbox_items(mail).iter().any(|m| m.text.contains("a test notification")), "no test e-mail");
    eventually("built-in alert rules", Duration::from_secs(30), || async {
        let v = c.admin(Method::GET, 1, "/api/v1/alerts/rules/p95-response-time", None).await.ok()?;
        (v.0 == 200).then_some(())
    })
    .await?;
    // Bad rules are refused with a JSON error.
    let (s, v) = c
        .admin(Method::PUT, 1, "/api/v1/alerts/rules/bad", Some(json!({"metric": "no_such_metric", "threshold": 1})))
        .await?;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")), "{v}");
    let rule = json!({"metric": "http_request_p95_seconds", "op": ">", "threshold": 0.6, "for_ms": 2000,
                      "window_ms": 10000, "severity": "warning", "description": "P4 in a short window"});
    let v = admin_ok(c, Method::PUT, 1, "/api/v1/alerts/rules/p95-response-time", Some(rule)).await?;
    assert_eq!(v["rule"]["builtin"], true, "an overridden built-in rule stays built-in: {v}");

    admin_ok(c, Method::PUT, 1, "/api/v1/alerts/fault/delay", Some(json!({"ms": 700}))).await?;
    let slow_from = Instant::now();
    // Requests keep coming while the rule's `for` runs (each waits 0.7 s).
    let traffic = async {
        for _ in 0..20 {
            let reqs = (0..4).map(|_| c.admin(Method::GET, 1, "/api/v1/cluster", None));
            futures::future::join_all(reqs).await;
            if !hooks(hook, "p95-response-time", "node/1", "firing").is_empty() {
                break;
            }
        }
    };
    traffic.await;
    let (m, h) =
        wait_both("slow-response alert", mail, hook, "p95-response-time", "node/1", "firing", Duration::from_secs(30))
            .await?;
    eprintln!("slow-response alert after {:?} (e-mail) / {:?} (webhook)", m - slow_from, h - slow_from);
    let payload = &hooks(hook, "p95-response-time", "node/1", "firing")[0].1;
    assert!(payload["value"].as_f64().is_some_and(|v| v > 0.6), "p95 above the limit: {payload}");

    admin_ok(c, Method::PUT, 1, "/api/v1/alerts/fault/delay", Some(json!({"ms": 0}))).await?;
    // Fast requests; the slow ones leave the 10 s window.
    wait_both("slow-response resolved", mail, hook, "p95-response-time", "node/1", "resolved", Duration::from_secs(40))
        .await?;
    let v =
        admin_ok(c, Method::GET, 1, "/api/v1/alerts/history?rule=p95-response-time&from=2020-01-01T00:00:00Z", None)
            .await?;
    let statuses: Vec<&str> =
        v["events"].as_array().context("events")?.iter().filter_map(|e| e["status"].as_str()).collect();
    assert_eq!(statuses, ["firing", "resolved"], "{v}");
    Ok(())
}

/// A5.2 (guarantee): a transition whose notifier dies before delivering is notified by the leader
/// (`TAKEOVER_AFTER`, 60 s). A follower's own slow-response alert is recorded, its webhook delivery
/// hangs, the follower is killed; the leader delivers it and records the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a5_2_a_transition_whose_notifier_dies_is_notified_by_the_leader() -> anyhow::Result<()> {
    set_webhook_secret();
    let (hook_port, hook, hung) = webhook_receiver_hanging_first(true).await?;
    let c = TestCluster::start(3, &[]).await?;
    let result = notifier_dies(&c, hook_port, &hook, &hung).await;
    if result.is_err() {
        c.dump_logs();
    }
    result
}

async fn notifier_dies(
    c: &TestCluster,
    hook_port: u16,
    hook: &Inbox,
    hung: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let leader = c.leader().await?;
    let victim = c.nodes.keys().copied().find(|id| *id != leader).context("a follower")?;
    let subject = format!("node/{victim}");
    let channel = json!({"kind": "webhook",
        "webhook": {"url": format!("http://127.0.0.1:{hook_port}/hook"), "secret_ref": "hook"}});
    admin_ok(c, Method::PUT, leader, "/api/v1/alerts/channels/slow-hook", Some(channel)).await?;
    let rule = json!({"metric": "http_request_p95_seconds", "op": ">", "threshold": 0.6, "for_ms": 1000,
        "window_ms": 10000, "labels": {"node": victim.to_string()}, "channels": ["slow-hook"]});
    admin_ok(c, Method::PUT, leader, "/api/v1/alerts/rules/slow-victim", Some(rule)).await?;
    admin_ok(c, Method::PUT, victim, "/api/v1/alerts/fault/delay", Some(json!({"ms": 700}))).await?;
    for _ in 0..30 {
        let reqs = (0..4).map(|_| c.admin(Method::GET, victim, "/api/v1/cluster", None));
        futures::future::join_all(reqs).await;
        if hung.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
    }
    anyhow::ensure!(hung.load(std::sync::atomic::Ordering::SeqCst), "the victim never tried to notify");
    // The victim's delivery is hanging; it dies before it can finish or record anything.
    c.kill(victim);
    let killed_at = Instant::now();
    let delivered = eventually("the leader's takeover delivery", Duration::from_secs(120), || async {
        hooks(hook, "slow-victim", &subject, "firing").into_iter().next()
    })
    .await?;
    eprintln!("takeover delivery {:?} after the notifier died", delivered.0.duration_since(killed_at));
    assert_eq!(delivered.1["node_id"], victim, "the transition is the victim's own");
    let path = format!("/api/v1/alerts/history?rule=slow-victim&subject={subject}");
    let event = eventually("the takeover recorded", Duration::from_secs(30), || async {
        let v = c.admin(Method::GET, leader, &path, None).await.ok()?.1;
        let e = v["events"].as_array()?.first()?.clone();
        let sent =
            e["notifications"].as_array()?.iter().any(|n| n["channel_id"] == "slow-hook" && n["result"] == "sent");
        sent.then_some(e)
    })
    .await?;
    let by = event["notifications"][0]["node_id"].as_u64();
    assert!(by.is_some_and(|n| n != victim), "delivered by a surviving node: {event}");
    assert_eq!(hooks(hook, "slow-victim", &subject, "firing").len(), 1, "delivered once");
    Ok(())
}

/// F5: an anomaly rule (request rate more than 3 σ from its trailing mean) fires on a burst of
/// requests and resolves after it; a source-silence rule fires for a source that sends nothing
/// past its expected interval and resolves when it sends; a security-events rule fires on refused
/// credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f5_anomaly_and_silent_source_rules_fire_and_resolve() -> anyhow::Result<()> {
    set_webhook_secret();
    let (smtp_port, mail) = smtp_sink().await?;
    let (hook_port, hook) = webhook_receiver().await?;
    let c = TestCluster::start(1, &[]).await?;
    let result = anomaly_and_silence(&c, smtp_port, hook_port, &mail, &hook).await;
    if result.is_err() {
        c.dump_logs();
    }
    result
}

async fn anomaly_and_silence(
    c: &TestCluster,
    smtp_port: u16,
    hook_port: u16,
    mail: &Inbox,
    hook: &Inbox,
) -> anyhow::Result<()> {
    add_channels(c, smtp_port, hook_port).await?;
    // Anomaly rules need a baseline of at least 5 windows.
    let (s, v) = c
        .admin(
            Method::PUT,
            1,
            "/api/v1/alerts/rules/spike",
            Some(json!({"kind": "anomaly", "metric": "http_requests_per_second", "k_sigma": 3.0, "window_ms": 2000, "baseline_ms": 2000})),
        )
        .await?;
    assert_eq!(s, 400, "{v}");
    let rule = json!({"kind": "anomaly", "metric": "http_requests_per_second", "k_sigma": 3.0, "threshold": 5.0,
        "window_ms": 1000, "baseline_ms": 5000, "severity": "info"});
    admin_ok(c, Method::PUT, 1, "/api/v1/alerts/rules/spike", Some(rule)).await?;
    // The rule needs a quiet baseline of five 1 s windows of the node's request history (and the
    // window being filled) before a burst can stand out from it.
    eventually("six seconds of request history on node 1", Duration::from_secs(30), || async {
        let (s, v) = c.admin(Method::GET, 1, "/api/v1/alerts/metrics", None).await.ok()?;
        (s == 200 && v["request_history_seconds"].as_u64().is_some_and(|n| n >= 7)).then_some(())
    })
    .await?;
    let burst_from = Instant::now();
    for _ in 0..100 {
        let reqs = (0..20).map(|_| c.admin(Method::GET, 1, "/api/v1/cluster", None));
        futures::future::join_all(reqs).await;
        if !hooks(hook, "spike", "node/1", "firing").is_empty() {
            break;
        }
    }
    let (_, fired) =
        wait_both("anomaly alert", mail, hook, "spike", "node/1", "firing", Duration::from_secs(20)).await?;
    eprintln!("anomaly alert {:?} after the burst began", fired - burst_from);
    let payload = &hooks(hook, "spike", "node/1", "firing")[0].1;
    assert!(payload["value"].as_f64().is_some_and(|v| v > 5.0), "{payload}");
    wait_both("anomaly resolved", mail, hook, "spike", "node/1", "resolved", Duration::from_secs(30)).await?;

    // A source expected to send every 3 s (a rule narrowed to it).
    let rule = json!({"metric": "source_silent_seconds", "op": ">", "threshold": 3.0,
        "labels": {"source": "quiet-agency"}, "severity": "warning"});
    admin_ok(c, Method::PUT, 1, "/api/v1/alerts/rules/quiet", Some(rule)).await?;
    c.create_dataset(1, "ds-quiet").await?;
    let key = c.create_source(1, "quiet-agency").await?;
    wait_both("silent source alert", mail, hook, "quiet", "source/quiet-agency", "firing", Duration::from_secs(30))
        .await?;
    let (status, v, _) = c.post(1, "ds-quiet", &key, &json!([{"n": 1}]), None).await?;
    anyhow::ensure!(status == 201, "post: {status} {v}");
    wait_both(
        "silent source resolved",
        mail,
        hook,
        "quiet",
        "source/quiet-agency",
        "resolved",
        Duration::from_secs(30),
    )
    .await?;

    // Security events: refused credentials are replicated events the leader counts.
    let rule = json!({"metric": "security_events", "op": ">", "threshold": 3.0, "window_ms": 60000});
    admin_ok(c, Method::PUT, 1, "/api/v1/alerts/rules/refusals", Some(rule)).await?;
    for _ in 0..6 {
        let resp =
            c.http.get(format!("{}/api/v1/cluster", c.url(1))).bearer_auth("dtma.0000.not-a-token").send().await?;
        assert_eq!(resp.status().as_u16(), 401);
    }
    wait_both("security events alert", mail, hook, "refusals", "cluster", "firing", Duration::from_secs(30)).await?;
    Ok(())
}

/// A5.2 (access): alert endpoints refuse callers without the admin, operator or auditor role — a
/// data-entry user (401/403 in the JSON error shape), a source's key, an anonymous caller — for
/// reading and changing alike; and the settings a client could abuse are refused with 400: a
/// webhook URL that carries credentials (it would be replicated and shown), a window and baseline
/// whose sum overflows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a5_2_alert_endpoints_by_role_and_refused_settings() -> anyhow::Result<()> {
    let c = TestCluster::start(1, &[]).await?;
    let result = access_and_refusals(&c).await;
    if result.is_err() {
        c.dump_logs();
    }
    result
}

async fn access_and_refusals(c: &TestCluster) -> anyhow::Result<()> {
    let body = json!({"username": "alert-entry", "role": "data-entry", "agency": "ubnd-dn", "password": "paper kite orange river"});
    let (s, v) = c.admin(Method::POST, 1, "/api/v1/users", Some(body)).await?;
    anyhow::ensure!(s == 201, "user: {s} {v}");
    let (cookie, csrf) = c.sign_in_with_csrf(1, "alert-entry", "paper kite orange river").await?;
    let key = c.create_source(1, "alert-probe").await?;
    let rule = json!({"metric": "http_error_ratio", "op": ">", "threshold": 0.5});
    let calls: [(Method, &str, Option<Value>); 4] = [
        (Method::GET, "/api/v1/alerts", None),
        (Method::GET, "/api/v1/alerts/channels", None),
        (Method::PUT, "/api/v1/alerts/rules/r1", Some(rule.clone())),
        (Method::POST, "/api/v1/alerts/channels/none/test", None),
    ];
    for (method, path, body) in calls {
        let url = format!("{}{path}", c.url(1));
        let callers = [
            (
                "data-entry",
                c.http.request(method.clone(), &url).header("cookie", &cookie).header("x-csrf-token", &csrf),
            ),
            ("source key", c.http.request(method.clone(), &url).header("x-api-key", &key)),
            ("anonymous", c.http.request(method.clone(), &url)),
        ];
        for (who, mut req) in callers {
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            let expected: &[u16] = if who == "anonymous" { &[401] } else { &[403] };
            anyhow::ensure!(expected.contains(&status), "{method} {path} as {who}: {status} {v}");
            anyhow::ensure!(v["error"]["code"].is_string() && v["error"]["message"].is_string(), "error shape: {v}");
        }
    }
    let (s, v) = c.admin(Method::GET, 1, "/api/v1/alerts/rules/r1", None).await?;
    anyhow::ensure!(s == 404, "nothing was stored by the refused callers: {s} {v}");

    let refused = [
        (
            "/api/v1/alerts/channels/creds",
            json!({"kind": "webhook", "webhook": {"url": "https://user:pw@127.0.0.1:9/x"}}),
        ),
        (
            "/api/v1/alerts/rules/huge",
            json!({"kind": "anomaly", "metric": "http_requests_per_second", "k_sigma": 3.0, "window_ms": 1000,
                   "baseline_ms": u64::MAX}),
        ),
        // A rule naming a channel that does not exist would notify nobody.
        (
            "/api/v1/alerts/rules/typo",
            json!({"metric": "node_down", "op": ">=", "threshold": 1.0, "channels": ["no-such"]}),
        ),
    ];
    for (path, body) in refused {
        let (s, v) = c.admin(Method::PUT, 1, path, Some(body)).await?;
        anyhow::ensure!(s == 400 && v["error"]["code"].is_string(), "{path}: {s} {v}");
    }
    Ok(())
}
