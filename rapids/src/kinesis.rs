//! The Kinesis stream ("the rapids"): client construction shared by services and tools.
//!
//! With an endpoint configured (the dev and test default, a local Kinesis API server)
//! the client uses that endpoint over plain HTTP and, unless AWS credentials are in
//! the environment, fixed dummy credentials (the emulators check the shape of the
//! signature, not its value). Without one it talks to AWS with the default chain.

use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_sdk_kinesis::types::StreamStatus;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use std::time::Duration;

/// Where the rapids are.
#[derive(Debug, Clone)]
pub struct RapidsConfig {
    /// `http://host:port` of a Kinesis API server; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub stream: String,
    pub region: String,
    /// Where enhanced fan-out subscribes (SubscribeToShard needs HTTP/2, which the
    /// SDK negotiates over TLS only): a local server's TLS endpoint; `None`: the
    /// endpoint above (AWS's own is TLS).
    pub efo_endpoint: Option<String>,
    /// A PEM file of certificates to trust beside the system's (a local server's CA).
    pub ca_file: Option<std::path::PathBuf>,
}

impl RapidsConfig {
    /// A stream at a Kinesis API server (no enhanced fan-out endpoint, no extra CA).
    pub fn local(endpoint: &str, stream: &str) -> Self {
        RapidsConfig {
            endpoint: Some(endpoint.to_owned()),
            stream: stream.to_owned(),
            region: "us-east-1".into(),
            efo_endpoint: None,
            ca_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RapidsError {
    #[error("kinesis request failed: {0}")]
    Request(String),
    #[error("stream {0} did not become active in time")]
    NotActive(String),
}

fn request_error<E: std::error::Error>(e: E) -> RapidsError {
    RapidsError::Request(describe(&e))
}

/// An SDK error with its source chain (its own Display is terse).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A Kinesis client bound to one stream.
#[derive(Debug, Clone)]
pub struct Rapids {
    client: aws_sdk_kinesis::Client,
    /// The client of enhanced fan-out (HTTP/2 over TLS); the main one when unset.
    efo: Option<aws_sdk_kinesis::Client>,
    stream: String,
    region: String,
}

impl Rapids {
    /// A readiness probe for a service's `/ready`: `true` while the stream answers. An
    /// answer is kept for 5 s: load balancers and the gateway ask often, and AWS limits
    /// DescribeStreamSummary per account.
    pub fn readiness(&self) -> impl Fn() -> futures::future::BoxFuture<'static, bool> + Send + Sync + 'static {
        let rapids = self.clone();
        let last: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, bool)>>> = Default::default();
        move || {
            let (rapids, last) = (rapids.clone(), last.clone());
            Box::pin(async move {
                let kept = *last.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((at, ok)) = kept.filter(|(at, _)| at.elapsed() < std::time::Duration::from_secs(5)) {
                    let _ = at;
                    return ok;
                }
                let ok = rapids.probe().await.is_ok();
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), ok));
                ok
            })
        }
    }

    pub async fn connect(config: &RapidsConfig) -> Self {
        let client = Self::sdk_client(config, config.endpoint.as_deref()).await;
        let efo = match (&config.efo_endpoint, &config.ca_file) {
            (None, None) => None,
            (endpoint, _) => Some(Self::sdk_client(config, endpoint.as_deref().or(config.endpoint.as_deref())).await),
        };
        Rapids { client, efo, stream: config.stream.clone(), region: config.region.clone() }
    }

    async fn sdk_client(config: &RapidsConfig, endpoint: Option<&str>) -> aws_sdk_kinesis::Client {
        let mut http = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring));
        if let Some(pem) = config.ca_file.as_ref().and_then(|f| std::fs::read(f).ok()) {
            let trust = aws_smithy_http_client::tls::TrustStore::default().with_pem_certificate(pem);
            if let Ok(context) = aws_smithy_http_client::tls::TlsContext::builder().with_trust_store(trust).build() {
                http = http.tls_context(context);
            }
        }
        let http = http.build_https();
        // a stuck call must fail and be retried, never hold the tailer (and its lock) forever
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(30))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .http_client(http)
            .region(aws_config::Region::new(config.region.clone()));
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                loader = loader.credentials_provider(Credentials::new("local", "local", None, None, "local"));
            }
        }
        let sdk = loader.load().await;
        aws_sdk_kinesis::Client::new(&sdk)
    }

    /// The client that subscribes to shards (enhanced fan-out).
    pub fn efo_client(&self) -> &aws_sdk_kinesis::Client {
        self.efo.as_ref().unwrap_or(&self.client)
    }

    /// Registers `name` as a consumer of the stream (enhanced fan-out), or finds it
    /// registered, and waits until it is active; its ARN.
    pub async fn register_consumer(&self, name: &str, wait: Duration) -> Result<String, RapidsError> {
        let summary =
            self.client.describe_stream_summary().stream_name(&self.stream).send().await.map_err(request_error)?;
        let stream_arn = summary
            .stream_description_summary()
            .map(|s| s.stream_arn().to_owned())
            .ok_or_else(|| RapidsError::Request("DescribeStreamSummary gave no stream ARN".into()))?;
        let registered =
            self.client.register_stream_consumer().stream_arn(&stream_arn).consumer_name(name).send().await;
        if let Err(e) = registered
            && !e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception())
        {
            return Err(request_error(e));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let described = self
                .client
                .describe_stream_consumer()
                .stream_arn(&stream_arn)
                .consumer_name(name)
                .send()
                .await
                .map_err(request_error)?;
            if let Some(consumer) = described.consumer_description()
                && consumer.consumer_status() == &aws_sdk_kinesis::types::ConsumerStatus::Active
            {
                return Ok(consumer.consumer_arn().to_owned());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RapidsError::NotActive(format!("consumer {name} of {}", self.stream)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn client(&self) -> &aws_sdk_kinesis::Client {
        &self.client
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The AWS region of the stream (envelopes are tagged with it).
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Succeeds when the stream exists and answers (readiness).
    pub async fn probe(&self) -> Result<(), RapidsError> {
        self.client.describe_stream_summary().stream_name(&self.stream).send().await.map_err(request_error)?;
        Ok(())
    }

    /// Creates the stream with `shards` shards unless it exists, then waits until it is active.
    pub async fn ensure_stream(&self, shards: i32, wait: Duration) -> Result<(), RapidsError> {
        let exists = self.client.describe_stream_summary().stream_name(&self.stream).send().await;
        if let Err(e) = exists {
            let not_found = e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception());
            if !not_found {
                return Err(request_error(e));
            }
            let created = self.client.create_stream().stream_name(&self.stream).shard_count(shards).send().await;
            if let Err(e) = created {
                // another process created it in between
                if !e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) {
                    return Err(request_error(e));
                }
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let summary =
                self.client.describe_stream_summary().stream_name(&self.stream).send().await.map_err(request_error)?;
            let active = summary.stream_description_summary().map(|s| s.stream_status() == &StreamStatus::Active);
            if active == Some(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RapidsError::NotActive(self.stream.clone()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The stream's retention period, in hours.
    pub async fn retention_hours(&self) -> Result<i32, RapidsError> {
        let summary =
            self.client.describe_stream_summary().stream_name(&self.stream).send().await.map_err(request_error)?;
        Ok(summary.stream_description_summary().map(|s| s.retention_period_hours()).unwrap_or(24))
    }

    /// Sets the stream's retention period (24 to 8,760 hours on AWS), raising or
    /// lowering it as needed; waits until the stream is active again.
    pub async fn set_retention(&self, hours: i32, wait: Duration) -> Result<(), RapidsError> {
        let current = self.retention_hours().await?;
        if hours > current {
            self.client
                .increase_stream_retention_period()
                .stream_name(&self.stream)
                .retention_period_hours(hours)
                .send()
                .await
                .map_err(request_error)?;
        } else if hours < current {
            self.client
                .decrease_stream_retention_period()
                .stream_name(&self.stream)
                .retention_period_hours(hours)
                .send()
                .await
                .map_err(request_error)?;
        } else {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + wait;
        while self.retention_hours().await? != hours {
            if tokio::time::Instant::now() >= deadline {
                return Err(RapidsError::NotActive(self.stream.clone()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}
