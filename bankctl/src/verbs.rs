//! The control-plane verbs of the event bus (`send`, `subscribe`, `unsubscribe`,
//! `listsubs`, `topics`, `advertise`, `readfrom`, and the operator's `stuck`): their arguments, the token and
//! bus URL they call with, and what each prints. The HTTP calls are
//! [`bank_client::bus::BusClient`]'s; this module only shapes the output.
//!
//! Every verb prints one JSON document on stdout; a failure is one line, returned
//! as the error (the caller prints it on stderr and exits non-zero, or the shell
//! prints it and goes on).

use anyhow::{Context, anyhow, bail};
use bank_client::ClientError;
use bank_client::bus::{self, Advertise, BusClient, PostEvent, Receive, UnsettledQuery};
use clap::Subcommand;
use serde_json::{Map, Value};
use service_kit::auth::{Role, issue_hs256};
use uuid::Uuid;

/// The event bus's base URL: `BANK_BUS_URL`, default the development port.
pub const BUS_URL_VAR: &str = "BANK_BUS_URL";
/// A bearer token to call with.
pub const TOKEN_VAR: &str = "BANK_TOKEN";
/// A PEM file of CA certificates to trust for `https://` URLs, beside the system's roots.
pub const CA_FILE_VAR: &str = "BANK_CA_FILE";
/// Without a token, a secret to mint one with.
pub const SECRET_VAR: &str = "JWT_SECRET";

/// The subject of a minted token.
pub const MINTED_SUBJECT: &str = "bankctl";
/// A minted token's lifetime: short, since one is minted for every command.
pub const MINTED_TTL_SECS: i64 = 300;

/// The verbs, as subcommands of `bankctl` and commands of `bankctl shell`.
#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum Verb {
    /// Post an event to the bus and print the stored event.
    #[command(long_about = "Post an event to the bus and print the stored event (event_id, type, source, stream_id, \
                      position, partition_key, timestamp, tags).\n\nExample: send ViewPage TheSource \
                      '{\"name\":\"Sally\"}'")]
    Send {
        /// The event type: a topic (ViewPage), an event (page.viewed) or a task.
        #[arg(value_name = "event")]
        event: String,
        /// The emitting domain.
        #[arg(value_name = "source")]
        source: String,
        /// The payload, a JSON object (default {}); quote it.
        #[arg(value_name = "data")]
        data: Option<String>,
        /// Events with one key keep their order (default: a random key).
        #[arg(long, value_name = "key")]
        partition_key: Option<String>,
        /// The event's id: posting it again answers the first answer.
        #[arg(long, value_name = "uuid")]
        event_id: Option<Uuid>,
        /// A tag: `vip` (tagged `vip: "true"`) or `segment=road-warrior`; repeatable.
        #[arg(long = "tag", value_name = "tag")]
        tags: Vec<String>,
    },
    /// Subscribe a river to a topic (an event type, `entity.*` or `*`); print its subscriptions.
    #[command(long_about = "Subscribe a river to a topic: an event type (ViewPage), a prefix (account.*) or \
                            every event (*), and with --tag only to events carrying every tag given (`vip`: \
                            the tag is there; `segment=road-warrior`: it has that value). The first \
                            subscription creates a generic river. Prints {river, managed, topics, \
                            subscriptions}. The built-in rivers (accounts, transfers, views) \
                            refuse.\n\nExample: subscribe r1 ViewPage --tag vip")]
    Subscribe {
        #[arg(value_name = "river")]
        river: String,
        #[arg(value_name = "topic")]
        topic: String,
        /// Only events with this tag (`key` or `key=value`); repeatable: all of them.
        #[arg(long = "tag", value_name = "tag")]
        tags: Vec<String>,
    },
    /// Remove a river's subscription to a topic; print its subscriptions.
    #[command(long_about = "Remove a river's subscriptions to a topic: with --tag the one selecting exactly \
                            those tags, without every one of the topic. Prints {river, managed, topics, \
                            subscriptions}. The built-in rivers (accounts, transfers, views) \
                            refuse.\n\nExample: unsubscribe r1 ViewPage")]
    Unsubscribe {
        #[arg(value_name = "river")]
        river: String,
        #[arg(value_name = "topic")]
        topic: String,
        /// The tags of the subscription to remove; repeatable.
        #[arg(long = "tag", value_name = "tag")]
        tags: Vec<String>,
    },
    /// Print the topics a river is subscribed to, as a JSON array.
    #[command(long_about = "Print the topics a river is subscribed to, as a JSON array (empty for a river \
                            the bus does not know).\n\nExample: listsubs r1")]
    Listsubs {
        #[arg(value_name = "river")]
        river: String,
    },
    /// Print the names of the topics, advertised first, then the bank's own.
    #[command(long_about = "Print the names of the topics as a JSON array: those advertised first (by \
                            name), then the bank's own event types.\n\nExample: topics")]
    Topics,
    /// Advertise a topic; print it.
    #[command(long_about = "Advertise a topic so that others can find it with `topics`; advertising it \
                            again changes nothing. Prints the topic {name, description, advertised_by, \
                            advertised_at, builtin}.\n\nExample: advertise ViewPage")]
    Advertise {
        #[arg(value_name = "topic")]
        topic: String,
        /// What the topic's events mean.
        #[arg(long, value_name = "text")]
        description: Option<String>,
    },
    /// Receive a river's messages, print them as a JSON array, then acknowledge them.
    #[command(long_about = "Receive up to --max messages of a generic river, waiting up to --wait-ms for a \
                            first one (the answer comes as soon as one arrives), print them as a JSON array \
                            of {eventType, eventDomain, payload, timestamp, eventId}, then acknowledge \
                            them so that they do not come back.\n\nExample: readfrom r1 --max 5")]
    Readfrom {
        #[arg(value_name = "river")]
        river: String,
        /// At most this many messages.
        #[arg(long, value_name = "n", default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=100))]
        max: i64,
        /// Wait up to this long for a first message, in ms (the bus caps it).
        #[arg(long, value_name = "ms", default_value_t = 3000, value_parser = clap::value_parser!(i64).range(0..))]
        wait_ms: i64,
        /// How long the received messages stay invisible to others, in ms (bus default 30000).
        #[arg(long, value_name = "ms", value_parser = clap::value_parser!(i64).range(1..=43_200_000))]
        visibility_ms: Option<i64>,
    },
    /// List the transfers not settled after a while, with where each stopped.
    #[command(long_about = "List the transfers neither completed nor failed --older-than seconds after their \
                            creation, oldest first, as {older_than_s, items: [{id, state, version, age_s, \
                            from_account, to_account, amount, currency, initiated_by, created_at, updated_at}]}. \
                            `state` is where each stopped (initiated, debited or refunding); a parked saga \
                            event is the usual cause (see dead-letters). Needs a teller or admin \
                            token.\n\nExample: stuck --older-than 300")]
    Stuck {
        /// Only transfers created more than this many seconds ago.
        #[arg(long, value_name = "secs", default_value_t = 60, value_parser = clap::value_parser!(i64).range(0..=31_536_000))]
        older_than: i64,
    },
}

/// Why no token could be had.
pub const NO_TOKEN: &str = "set BANK_TOKEN, or JWT_SECRET to mint a dev token";

/// The token to call with: `BANK_TOKEN` as it is, or else one minted from
/// `JWT_SECRET` (HS256, subject `bankctl`, role admin, five minutes). An empty
/// variable counts as unset.
pub fn select_token(bank_token: Option<String>, jwt_secret: Option<String>) -> anyhow::Result<String> {
    let set = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    if let Some(token) = set(bank_token) {
        return Ok(token.trim().to_owned());
    }
    if let Some(secret) = set(jwt_secret) {
        return issue_hs256(&secret, MINTED_SUBJECT, Role::Admin, MINTED_TTL_SECS)
            .map_err(|e| anyhow!("cannot mint a token from JWT_SECRET: {e}"));
    }
    bail!(NO_TOKEN)
}

/// `BANK_BUS_URL`, or the development address when unset or empty.
pub fn select_bus_url(bus_url: Option<String>) -> String {
    bus_url.filter(|u| !u.trim().is_empty()).map(|u| u.trim().to_owned()).unwrap_or_else(|| bus::DEV_URL.to_owned())
}

/// A client of the bus named by the environment, with its token. A token is minted
/// for every command, so a long shell session never calls with an expired one.
pub fn client_from_env() -> anyhow::Result<BusClient> {
    let var = |name| std::env::var(name).ok();
    let token = select_token(var(TOKEN_VAR), var(SECRET_VAR))?;
    // No idle connections: the shell may sit at its prompt for hours, and a
    // connection the bus closed meanwhile would fail the next command.
    let http = reqwest_client()?;
    Ok(BusClient::new(select_bus_url(var(BUS_URL_VAR)), token).with_http(http))
}

/// The HTTP client of every call: `https://` URLs verified against the system's roots
/// and `BANK_CA_FILE`'s CAs; no idle connections.
pub fn reqwest_client() -> anyhow::Result<reqwest::Client> {
    let ca_file = std::env::var_os(CA_FILE_VAR).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    bank_client::http_builder(ca_file.as_deref())?
        .pool_max_idle_per_host(0)
        .build()
        .context("cannot set up the HTTP client")
}

/// `data` as the event's payload: a JSON object, `{}` when absent.
pub fn parse_data(data: Option<&str>) -> anyhow::Result<Value> {
    let Some(text) = data else { return Ok(Value::Object(Map::new())) };
    let value: Value = serde_json::from_str(text)
        .map_err(|e| anyhow!("data is not JSON ({e}): give an object, e.g. '{{\"name\":\"Sally\"}}'"))?;
    if !value.is_object() {
        bail!("data must be a JSON object, e.g. '{{\"name\":\"Sally\"}}', not {value}");
    }
    Ok(value)
}

/// The error of a call, in one line: the bus's own message when it answered.
fn failed(bus: &BusClient, error: ClientError) -> anyhow::Error {
    match error {
        ClientError::Http { status, code, message, .. } if !code.is_empty() => {
            anyhow!("{message} ({code}, HTTP {status})")
        }
        ClientError::Http { status, message, .. } => {
            anyhow!("the event bus at {} answered HTTP {status}: {message}", bus.base())
        }
        ClientError::Transport(_) => anyhow!("cannot reach the event bus at {}: {error}", bus.base()),
        ClientError::Decode(_) => anyhow!("the event bus at {} gave {error}", bus.base()),
    }
}

/// Prints one JSON document on stdout.
fn print(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs a verb against the bus and prints its answer.
pub async fn run(bus: &BusClient, verb: Verb) -> anyhow::Result<()> {
    let fail = |e| failed(bus, e);
    match verb {
        Verb::Send { event, source, data, partition_key, event_id, tags } => {
            let data = parse_data(data.as_deref())?;
            let tags = (!tags.is_empty()).then(|| event_tags(&tags));
            let event = PostEvent { event_type: event, source, data, partition_key, event_id, tags };
            print(&bus.post_event(&event).await.map_err(fail)?)
        }
        Verb::Subscribe { river, topic, tags } => print(&bus.subscribe(&river, &topic, &tags).await.map_err(fail)?),
        Verb::Unsubscribe { river, topic, tags } => {
            let tags = (!tags.is_empty()).then_some(tags.as_slice());
            print(&bus.unsubscribe(&river, &topic, tags).await.map_err(fail)?)
        }
        Verb::Listsubs { river } => print(&subscription_lines(&bus.subscriptions(&river).await.map_err(fail)?)),
        Verb::Topics => print(&topic_names(bus.topics().await.map_err(fail)?)),
        Verb::Advertise { topic, description } => {
            print(&bus.advertise(&Advertise { name: topic, description }).await.map_err(fail)?)
        }
        Verb::Readfrom { river, max, wait_ms, visibility_ms } => {
            let request = Receive { max_messages: Some(max), wait_ms: Some(wait_ms), visibility_ms };
            let received = bus.receive(&river, &request).await.map_err(fail)?;
            let messages: Vec<&Value> = received.messages.iter().map(|m| &m.message).collect();
            print(&messages)?;
            // Acknowledged only once printed: a message is never lost, at worst shown twice.
            let receipts: Vec<Uuid> = received.messages.iter().map(|m| m.receipt).collect();
            if !receipts.is_empty() {
                bus.ack(&river, &receipts).await.map_err(|e| {
                    anyhow!(
                        "printed {} message(s) but could not acknowledge them; they come back after their \
                         visibility timeout: {}",
                        receipts.len(),
                        failed(bus, e)
                    )
                })?;
            }
            Ok(())
        }
        Verb::Stuck { older_than } => {
            print(&bus.unsettled(&UnsettledQuery { older_than_s: Some(older_than) }).await.map_err(fail)?)
        }
    }
}

/// An event's tags from `--tag` words: `vip` is `vip: "true"`, `k=v` is `k: "v"`.
pub fn event_tags(words: &[String]) -> Map<String, Value> {
    words
        .iter()
        .map(|word| match word.split_once('=') {
            Some((key, value)) => (key.to_owned(), Value::String(value.to_owned())),
            None => (word.clone(), Value::String("true".into())),
        })
        .collect()
}

/// A river's subscriptions as `listsubs` prints them: the topic, then `--tag …` for
/// each selector (the words that subscribe it); of a bus older than tags, the topics.
pub fn subscription_lines(subscriptions: &bus::RiverSubscriptions) -> Vec<String> {
    if subscriptions.subscriptions.is_empty() {
        return subscriptions.topics.clone();
    }
    subscriptions
        .subscriptions
        .iter()
        .map(|s| s.tags.iter().fold(s.topic.clone(), |line, tag| format!("{line} --tag {tag}")))
        .collect()
}

/// The topics' names: advertised first, then the bank's own (the bus's order
/// within each).
pub fn topic_names(topics: bus::Topics) -> Vec<String> {
    let (builtin, advertised): (Vec<_>, Vec<_>) = topics.items.into_iter().partition(|t| t.builtin);
    advertised.into_iter().chain(builtin).map(|t| t.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::auth::JwtVerifier;
    use service_kit::config::AuthArgs;

    #[test]
    fn bank_token_wins_then_a_minted_admin_token_then_a_clear_error() -> anyhow::Result<()> {
        let secret = &format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        assert_eq!(select_token(Some("tok".into()), Some(secret.into()))?, "tok");

        let minted = select_token(None, Some(secret.into()))?;
        let verifier = JwtVerifier::from_args(&AuthArgs::hs256(secret.as_str()))?;
        let caller = verifier.verify(&minted).map_err(|e| anyhow!("{e:?}"))?;
        assert_eq!((caller.subject.as_str(), caller.role), (MINTED_SUBJECT, Role::Admin));
        // an empty BANK_TOKEN does not hide the secret
        let minted = select_token(Some(String::new()), Some(secret.into()))?;
        assert!(verifier.verify(&minted).is_ok());

        for (token, secret) in [(None, None), (Some(" ".to_owned()), Some(String::new()))] {
            let error = select_token(token, secret).err().ok_or(anyhow!("a token out of nothing"))?;
            assert_eq!(error.to_string(), NO_TOKEN);
        }
        Ok(())
    }

    #[test]
    fn the_bus_url_defaults_to_the_dev_port() {
        assert_eq!(select_bus_url(None), "http://127.0.0.1:8086");
        assert_eq!(select_bus_url(Some(String::new())), "http://127.0.0.1:8086");
        assert_eq!(select_bus_url(Some("http://bus:9".into())), "http://bus:9");
    }

    #[test]
    fn data_is_an_object_or_a_clear_error() -> anyhow::Result<()> {
        assert_eq!(parse_data(None)?, serde_json::json!({}));
        assert_eq!(parse_data(Some(r#"{"name":"Sally"}"#))?, serde_json::json!({"name": "Sally"}));
        let not_json = parse_data(Some("{name: Sally}")).err().ok_or(anyhow!("took non-JSON"))?;
        assert!(not_json.to_string().starts_with("data is not JSON"), "{not_json}");
        let not_object = parse_data(Some("[1]")).err().ok_or(anyhow!("took an array"))?;
        assert!(not_object.to_string().starts_with("data must be a JSON object"), "{not_object}");
        Ok(())
    }

    #[test]
    fn tags_are_words_and_subscriptions_print_as_their_words() -> serde_json::Result<()> {
        let words = ["vip".to_owned(), "segment=road-warrior".to_owned()];
        assert_eq!(Value::Object(event_tags(&words)), serde_json::json!({"vip": "true", "segment": "road-warrior"}));
        let subscriptions: bus::RiverSubscriptions = serde_json::from_value(serde_json::json!({
            "river": "r1", "managed": false, "topics": ["ViewPage", "offers.assembled"],
            "subscriptions": [
                {"topic": "ViewPage", "tags": []},
                {"topic": "offers.assembled", "tags": ["segment=road-warrior", "vip"]}]}))?;
        assert_eq!(
            subscription_lines(&subscriptions),
            ["ViewPage", "offers.assembled --tag segment=road-warrior --tag vip"]
        );
        Ok(())
    }

    #[test]
    fn topics_list_advertised_names_first() -> serde_json::Result<()> {
        let topics: bus::Topics = serde_json::from_value(serde_json::json!({"items": [
            {"name": "account.opened", "builtin": true},
            {"name": "ViewPage", "builtin": false},
            {"name": "account.closed", "builtin": true},
            {"name": "Zed", "builtin": false}]}))?;
        assert_eq!(topic_names(topics), ["ViewPage", "Zed", "account.opened", "account.closed"]);
        Ok(())
    }

    #[test]
    fn a_bus_refusal_reads_as_its_message() {
        let bus = BusClient::new("http://127.0.0.1:1", "t");
        let body = br#"{"error":{"code":"river_managed","message":"river accounts is managed by the bank"}}"#;
        let error = failed(&bus, ClientError::from_answer(409, body));
        assert_eq!(error.to_string(), "river accounts is managed by the bank (river_managed, HTTP 409)");
        let error = failed(&bus, ClientError::from_answer(502, b"bad gateway"));
        assert_eq!(error.to_string(), "the event bus at http://127.0.0.1:1 answered HTTP 502: bad gateway");
    }
}
