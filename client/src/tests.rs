//! The client's unit tests: error bodies decoded, query strings, and whole calls
//! against a one-answer HTTP server on port 0 (no service, no database).

use super::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[test]
fn an_error_body_becomes_its_code_message_and_details() {
    let body = json!({"error": {"code": "view_out_of_date", "message": "retry later",
        "current_version": 3, "wanted_version": 5}});
    let error = ClientError::from_answer(409, body.to_string().as_bytes());
    let ClientError::Http { status, code, message, details } = &error else { panic!("{error:?}") };
    assert_eq!((*status, code.as_str(), message.as_str()), (409, "view_out_of_date", "retry later"));
    assert_eq!(details.get("wanted_version"), Some(&json!(5)));
    assert_eq!(details.len(), 2);
    assert_eq!((error.status(), error.code()), (Some(409), Some("view_out_of_date")));
    assert_eq!(error.to_string(), "HTTP 409 view_out_of_date: retry later");
}

#[test]
fn an_answer_without_an_error_body_keeps_its_status_and_text() {
    for body in [&b"<html>bad gateway</html>"[..], b"", br#"{"unexpected": true}"#] {
        let error = ClientError::from_answer(502, body);
        let ClientError::Http { status, code, message, details } = &error else { panic!("{error:?}") };
        assert_eq!((*status, code.as_str()), (502, ""));
        assert_eq!(message.as_bytes(), body);
        assert!(details.is_empty());
        assert_eq!(error.code(), None);
    }
    let long = "x".repeat(1000);
    let ClientError::Http { message, .. } = ClientError::from_answer(500, long.as_bytes()) else { panic!() };
    assert_eq!(message.len(), 200);
}

#[test]
fn a_wait_sends_only_what_is_set() -> Result<(), reqwest::Error> {
    let http = reqwest::Client::new();
    let none = http.get("http://h/transfers/1").query(&views::WaitQuery::default()).build()?;
    assert_eq!(none.url().as_str(), "http://h/transfers/1");
    let wait = views::WaitQuery { min_version: Some(3), wait_ms: Some(5000) };
    let some = http.get("http://h/transfers/1").query(&wait).build()?;
    assert_eq!(some.url().query(), Some("min_version=3&wait_ms=5000"));
    assert_eq!(url("http://h:1/", "/ready"), "http://h:1/ready");
    Ok(())
}

/// Serves one request with `status` and `body`; the request as text.
pub(crate) async fn answer_once(status: &str, body: &str) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let base = format!("http://{}", listener.local_addr().expect("its address"));
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let served = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("a connection");
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // the head, then as much body as it announces
        loop {
            let n = socket.read(&mut buf).await.expect("a request");
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).to_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if request.len() >= end + 4 + length || n == 0 {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        socket.write_all(response.as_bytes()).await.expect("the answer");
        String::from_utf8_lossy(&request).into_owned()
    });
    (base, served)
}

fn at(base: &str) -> Urls {
    Urls { accounts: base.into(), transfers: base.into(), queries: base.into() }
}

#[tokio::test]
async fn a_created_transfer_is_decoded_and_the_request_carries_token_and_key() -> anyhow_free::Result {
    let id = Uuid::now_v7();
    let reply = json!({"id": id, "version": 1, "from": Uuid::now_v7(), "to": Uuid::now_v7(), "amount": 5,
        "currency": "EUR", "state": "initiated", "initiated_by": "alice", "failure_reason": null});
    let (base, served) = answer_once("201 Created", &reply.to_string()).await;
    let bank = BankClient::new(at(&base), "tok");
    let request = CreateTransferRequest {
        from: "a".into(),
        to: "b".into(),
        amount: 5.into(),
        currency: "EUR".into(),
        memo: None,
    };
    let transfer = bank.create_transfer(&request, Some("key-1")).await?;
    assert_eq!((transfer.id, transfer.state.as_str()), (id, "initiated"));
    let seen = served.await?.to_lowercase();
    assert!(seen.starts_with("post /transfers http/1.1"), "{seen}");
    assert!(seen.contains("authorization: bearer tok"), "{seen}");
    assert!(seen.contains("idempotency-key: key-1"), "{seen}");
    assert!(seen.contains(r#"{"from":"a","to":"b","amount":5,"currency":"eur"}"#), "{seen}");
    Ok(())
}

#[tokio::test]
async fn a_refusal_is_an_http_error_with_the_services_code() -> anyhow_free::Result {
    let body = json!({"error": {"code": "insufficient_funds", "message": "not enough money"}});
    let (base, served) = answer_once("422 Unprocessable Entity", &body.to_string()).await;
    let bank = BankClient::new(at(&base), "tok");
    let request = AmountRequest { amount: 1.into(), currency: "EUR".into(), expected_version: None };
    let error = bank.withdraw(Uuid::nil(), &request).await.err().ok_or("a withdrawal beyond the balance passed")?;
    assert_eq!((error.status(), error.code()), (Some(422), Some("insufficient_funds")));
    served.await?;
    Ok(())
}

#[tokio::test]
async fn a_2xx_body_that_is_not_the_type_is_a_decode_error() -> anyhow_free::Result {
    let (base, served) = answer_once("200 OK", r#"{"id": "not a uuid"}"#).await;
    let error = BankClient::new(at(&base), "tok").account(Uuid::nil()).await.err().ok_or("decoded")?;
    assert!(matches!(error, ClientError::Decode(_)), "{error:?}");
    served.await?;
    Ok(())
}

#[tokio::test]
async fn ready_answers_whatever_the_status_and_no_service_is_a_transport_error() -> anyhow_free::Result {
    let body = json!({"error": {"code": "not_ready", "message": "the database does not answer"}});
    let (base, served) = answer_once("503 Service Unavailable", &body.to_string()).await;
    let bank = BankClient::anonymous(at(&base));
    let ready = bank.ready(&base).await?;
    assert_eq!((ready.status, ready.is_ready()), (503, false));
    assert_eq!(ready.body["error"]["code"], "not_ready");
    served.await?;
    // nothing listens there any more
    let error = bank.ready(&base).await.err().ok_or("an answer from a closed port")?;
    assert!(matches!(error, ClientError::Transport(_)), "{error:?}");
    Ok(())
}

/// Test results without anyhow (not a dependency of this crate).
pub(crate) mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}
