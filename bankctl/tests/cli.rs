//! `bankctl`'s control-plane verbs and shell as a user runs them: the built binary
//! against a scripted stand-in of the event bus on port 0 (plain HTTP/1.1 answers
//! in order), so the printed JSON, the stderr lines and the exit codes are checked
//! without a database or a running bus.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A stand-in bus answering each request with the next `(status, body)`; the
/// requests it saw (`METHOD /path` and body), once all answers are given.
fn bus(answers: Vec<(&'static str, Value)>) -> (String, JoinHandle<Vec<(String, String)>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
    let base = format!("http://{}", listener.local_addr().expect("its address"));
    let served = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for (status, body) in answers {
            let (socket, _) = listener.accept().expect("a connection");
            let mut reader = BufReader::new(socket.try_clone().expect("a socket"));
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("a request line");
                if let Some(v) = line.to_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().expect("a length");
                }
                if head.is_empty() {
                    head = line.split(' ').take(2).collect::<Vec<_>>().join(" ");
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut request_body = vec![0; length];
            reader.read_exact(&mut request_body).expect("the body");
            seen.push((head, String::from_utf8_lossy(&request_body).into_owned()));
            let body = body.to_string();
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            (&socket).write_all(answer.as_bytes()).expect("the answer");
        }
        seen
    });
    (base, served)
}

/// `bankctl args…` with the bus at `base` and a token, stdin from `input`.
fn bankctl(base: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bankctl"))
        .args(args)
        .env("BANK_BUS_URL", base)
        .env("BANK_TOKEN", "tok")
        .env_remove("JWT_SECRET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bankctl starts");
    child.stdin.take().expect("its stdin").write_all(input.as_bytes()).expect("input written");
    child.wait_with_output().expect("bankctl ends")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn without_a_token_a_verb_says_what_to_set() -> TestResult {
    let out = Command::new(env!("CARGO_BIN_EXE_bankctl"))
        .arg("topics")
        .env_remove("BANK_TOKEN")
        .env_remove("JWT_SECRET")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(text(&out.stderr), "error: set BANK_TOKEN, or JWT_SECRET to mint a dev token\n");
    Ok(())
}

#[test]
fn an_unreachable_bus_is_one_line_and_a_failure() -> TestResult {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(); // closed once dropped
    let out = bankctl(&format!("http://127.0.0.1:{port}"), &["listsubs", "r1"], "");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with(&format!("error: cannot reach the event bus at http://127.0.0.1:{port}")), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    Ok(())
}

#[test]
fn send_posts_the_event_and_prints_the_stored_one() -> TestResult {
    let stored = json!({"event_id": "0190f0e4-7a1b-7cc3-8a5e-3f1d2b3c4d5f", "type": "ViewPage", "source": "TheSource",
        "stream_id": "0190f0e4-7a1b-7cc3-8a5e-3f1d2b3c4d60", "position": 42, "partition_key": "k",
        "timestamp": 1767323045123_i64, "tags": {"region": "local", "service": "event-bus"}});
    let (base, served) = bus(vec![("201 Created", stored.clone())]);
    let out = bankctl(&base, &["send", "ViewPage", "TheSource", r#"{"name":"Sally"}"#], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout)?, stored);
    let seen = served.join().map_err(|_| "the bus panicked")?;
    assert_eq!(seen[0].0, "POST /events");
    assert_eq!(
        serde_json::from_str::<Value>(&seen[0].1)?,
        json!({"type": "ViewPage", "source": "TheSource", "data": {"name": "Sally"}})
    );

    let out = bankctl(&base, &["send", "ViewPage", "TheSource", "{name: Sally}"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: data is not JSON"), "{}", text(&out.stderr));
    Ok(())
}

#[test]
fn topics_and_listsubs_print_arrays_of_names() -> TestResult {
    let (base, served) = bus(vec![
        (
            "200 OK",
            json!({"items": [
            {"name": "ViewPage", "description": "", "advertised_by": "bankctl", "advertised_at": "2026-01-02T03:04:05Z", "builtin": false},
            {"name": "account.opened", "description": "", "advertised_by": "bank", "advertised_at": null, "builtin": true}]}),
        ),
        ("200 OK", json!({"river": "r1", "managed": false, "topics": ["ViewPage"]})),
        ("200 OK", json!({"river": "r2", "managed": false, "topics": []})),
    ]);
    let out = bankctl(&base, &["topics"], "");
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout)?, json!(["ViewPage", "account.opened"]));
    let out = bankctl(&base, &["listsubs", "r1"], "");
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout)?, json!(["ViewPage"]));
    let out = bankctl(&base, &["listsubs", "r2"], "");
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout)?, json!([]));
    let seen: Vec<String> = served.join().map_err(|_| "the bus panicked")?.into_iter().map(|(h, _)| h).collect();
    assert_eq!(seen, ["GET /topics", "GET /rivers/r1/subscriptions", "GET /rivers/r2/subscriptions"]);
    Ok(())
}

#[test]
fn subscribe_prints_the_river_and_a_managed_river_refuses_with_the_bus_message() -> TestResult {
    let (base, served) = bus(vec![
        ("200 OK", json!({"river": "r1", "managed": false, "topics": ["ViewPage"]})),
        ("409 Conflict", json!({"error": {"code": "river_managed", "message": "river accounts is the bank's own"}})),
        (
            "201 Created",
            json!({"name": "ViewPage", "description": "", "advertised_by": "bankctl",
            "advertised_at": "2026-01-02T03:04:05Z", "builtin": false}),
        ),
    ]);
    let out = bankctl(&base, &["subscribe", "r1", "ViewPage"], "");
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout)?,
        json!({"river": "r1", "managed": false, "topics": ["ViewPage"]})
    );
    let out = bankctl(&base, &["unsubscribe", "accounts", "account.*"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(text(&out.stderr), "error: river accounts is the bank's own (river_managed, HTTP 409)\n");
    let out = bankctl(&base, &["advertise", "ViewPage"], "");
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout)?["name"], "ViewPage");
    let seen: Vec<String> = served.join().map_err(|_| "the bus panicked")?.into_iter().map(|(h, _)| h).collect();
    assert_eq!(
        seen,
        ["PUT /rivers/r1/subscriptions/ViewPage", "DELETE /rivers/accounts/subscriptions/account.*", "POST /topics"]
    );
    Ok(())
}

fn received() -> Value {
    json!({"messages": [{"receipt": "0190f0e4-7a1b-7cc3-8a5e-3f1d2b3c4d61", "receive_count": 1,
        "message": {"eventType": "ViewPage", "eventDomain": "TheSource", "payload": {"name": "Sally"},
                    "timestamp": "2026-01-02T03:04:05Z", "eventId": "0190f0e4-7a1b-7cc3-8a5e-3f1d2b3c4d5f"}}]})
}

#[test]
fn readfrom_prints_the_messages_then_acknowledges_them() -> TestResult {
    let (base, served) = bus(vec![("200 OK", received()), ("200 OK", json!({"acked": 1}))]);
    let out = bankctl(&base, &["readfrom", "r1", "--max", "5"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout)?, json!([received()["messages"][0]["message"]]));
    let seen = served.join().map_err(|_| "the bus panicked")?;
    assert_eq!(seen[0].0, "POST /rivers/r1/receive");
    assert_eq!(serde_json::from_str::<Value>(&seen[0].1)?, json!({"max_messages": 5, "wait_ms": 3000}));
    assert_eq!(seen[1].0, "POST /rivers/r1/ack");
    assert_eq!(
        serde_json::from_str::<Value>(&seen[1].1)?,
        json!({"receipts": ["0190f0e4-7a1b-7cc3-8a5e-3f1d2b3c4d61"]})
    );
    Ok(())
}

#[test]
fn readfrom_says_when_the_ack_fails_and_when_the_river_is_unknown() -> TestResult {
    let (base, served) = bus(vec![
        ("200 OK", received()),
        ("500 Internal Server Error", json!({"error": {"code": "internal", "message": "internal error"}})),
        ("404 Not Found", json!({"error": {"code": "river_not_found", "message": "no river r9"}})),
        ("200 OK", json!({"messages": []})),
    ]);
    let out = bankctl(&base, &["readfrom", "r1"], "");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout)?.as_array().map(Vec::len), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("error: printed 1 message(s) but could not acknowledge them"), "{stderr}");
    assert!(stderr.trim_end().ends_with("internal error (internal, HTTP 500)"), "{stderr}");

    let out = bankctl(&base, &["readfrom", "r9"], "");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "error: no river r9 (river_not_found, HTTP 404)\n");

    // nothing to read: an empty array, and no ack
    let out = bankctl(&base, &["readfrom", "r1", "--wait-ms", "0"], "");
    assert!(out.status.success());
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout)?, json!([]));
    assert_eq!(served.join().map_err(|_| "the bus panicked")?.len(), 4);
    Ok(())
}

#[test]
fn the_shell_takes_verbs_help_and_exit_and_goes_on_after_an_error() -> TestResult {
    let (base, served) = bus(vec![("200 OK", json!({"river": "r1", "managed": false, "topics": ["ViewPage"]}))]);
    let input = "help\nhelp send\nsubscribe r1\nfrobnicate\nlistsubs r1\nexit\nlistsubs r1\n";
    let out = bankctl(&base, &["shell"], input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    for verb in ["send", "subscribe", "unsubscribe", "listsubs", "topics", "advertise", "readfrom", "help", "exit"] {
        assert!(stdout.lines().any(|l| l.split_whitespace().next() == Some(verb)), "{verb}: {stdout}");
    }
    assert!(stdout.contains("usage: send <event> <source> [data]"), "{stdout}");
    assert!(stdout.contains("\"ViewPage\""), "{stdout}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error: ")).count(), 2, "{stderr}");
    // only the one listsubs before exit reached the bus
    assert_eq!(served.join().map_err(|_| "the bus panicked")?.len(), 1);

    // Ctrl-D (end of input) leaves too
    let out = bankctl(&base, &["shell"], "help\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    Ok(())
}
