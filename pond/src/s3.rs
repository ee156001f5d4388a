//! The archive's bucket on S3 (the AWS SDK for S3).
//!
//! With `S3_ENDPOINT` set (dev and tests: a local S3 API server) the client uses that
//! endpoint with path-style addresses and, unless AWS credentials are in the
//! environment, fixed dummy ones, as the rapids do with a local Kinesis. Without it,
//! AWS's S3 with the default credential chain.

use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use std::time::Duration;

/// Where the archive is.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// The bucket of the archive and the statements.
    #[arg(long, env = "ARCHIVE_BUCKET", default_value_t = S3Args::default().archive_bucket)]
    pub archive_bucket: String,
    /// An S3 API server (a local one in dev and tests, path-style); unset: AWS's S3.
    #[arg(long, env = "S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// The bucket's region; unset: the SDK's (`AWS_REGION`, the profile, the instance's),
    /// else us-east-1.
    #[arg(long, env = "S3_REGION")]
    pub s3_region: Option<String>,
}

impl Default for S3Args {
    fn default() -> Self {
        S3Args { archive_bucket: "bank-archive".into(), s3_endpoint: None, s3_region: None }
    }
}

/// Why a call to S3 failed (the SDK's error, described without credentials).
#[derive(Debug, thiserror::Error)]
#[error("S3: {0}")]
pub struct S3Error(pub String);

fn s3_error<E: std::error::Error + 'static>(e: &aws_sdk_s3::error::SdkError<E>) -> S3Error {
    use std::fmt::Write;
    // the SDK's Display says only "service error": its sources say which
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    S3Error(text)
}

/// One object's key and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: i64,
}

/// The archive's bucket.
#[derive(Clone, Debug)]
pub struct Bucket {
    client: aws_sdk_s3::Client,
    name: String,
}

impl Bucket {
    pub async fn connect(args: &S3Args) -> Self {
        let http =
            aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(30))
            .operation_timeout(Duration::from_secs(90))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .http_client(http)
            .region(Self::region(args));
        if let Some(endpoint) = &args.s3_endpoint {
            loader = loader.endpoint_url(endpoint);
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                loader = loader.credentials_provider(Credentials::new("local", "local", None, None, "local"));
            }
        }
        let sdk = loader.load().await;
        let config = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(args.s3_endpoint.is_some()).build();
        Bucket { client: aws_sdk_s3::Client::from_conf(config), name: args.archive_bucket.clone() }
    }

    /// `S3_REGION`; else, at a local server, `AWS_REGION` or us-east-1 (no instance
    /// metadata to wait for); else the SDK's chain (environment, profile, instance), or
    /// us-east-1.
    fn region(args: &S3Args) -> aws_config::meta::region::RegionProviderChain {
        use aws_config::meta::region::RegionProviderChain;
        let given = args.s3_region.clone().map(aws_config::Region::new);
        if args.s3_endpoint.is_some() {
            let from_env = std::env::var("AWS_REGION").ok().map(aws_config::Region::new);
            RegionProviderChain::first_try(given.or(from_env)).or_else("us-east-1")
        } else {
            RegionProviderChain::first_try(given).or_default_provider().or_else("us-east-1")
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the bucket when it is not there (404; a dev server starts empty). On AWS
    /// it is made with the deployment, and this only finds it; any other answer (403,
    /// a timeout) is an error, not a reason to create it.
    pub async fn ensure(&self) -> Result<(), S3Error> {
        match self.client.head_bucket().bucket(&self.name).send().await {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {}
            Err(e) => return Err(s3_error(&e)),
        }
        let mut create = self.client.create_bucket().bucket(&self.name);
        let region = self.client.config().region().map(|r| r.as_ref().to_owned()).unwrap_or_default();
        if region != "us-east-1" && !region.is_empty() {
            use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
            let place = CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region.as_str()))
                .build();
            create = create.create_bucket_configuration(place);
        }
        match create.send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.name, "created the archive's bucket");
                Ok(())
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_bucket_already_owned_by_you()) => Ok(()),
            Err(e) => Err(s3_error(&e)),
        }
    }

    /// Whether the bucket answers (readiness).
    pub async fn reachable(&self) -> Result<(), S3Error> {
        self.client.head_bucket().bucket(&self.name).send().await.map(|_| ()).map_err(|e| s3_error(&e))
    }

    /// Writes `body` at `key` (whole or not at all: S3 has no partial objects).
    pub async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), S3Error> {
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3_error(&e))
    }

    /// The object at `key`; `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, S3Error> {
        match self.client.get_object().bucket(&self.name).key(key).send().await {
            Ok(out) => {
                let body = out.body.collect().await.map_err(|e| S3Error(e.to_string()))?;
                Ok(Some(body.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(e) => Err(s3_error(&e)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.client.delete_object().bucket(&self.name).key(key).send().await.map(|_| ()).map_err(|e| s3_error(&e))
    }

    /// The objects under `prefix` whose keys come after `start_after`, in key order,
    /// until `more` says stop (it sees each key; at most every key under the prefix).
    pub async fn list_while(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        mut more: impl FnMut(&str) -> bool,
    ) -> Result<Vec<Object>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut request = self.client.list_objects_v2().bucket(&self.name).prefix(prefix);
            if let Some(after) = start_after {
                request = request.start_after(after);
            }
            if let Some(t) = &token {
                request = request.continuation_token(t);
            }
            let page = match request.send().await {
                Ok(page) => page,
                // no bucket yet: nothing was written
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_bucket()) => return Ok(out),
                Err(e) => return Err(s3_error(&e)),
            };
            for object in page.contents() {
                let key = object.key().unwrap_or_default();
                if !more(key) {
                    return Ok(out);
                }
                out.push(Object { key: key.to_owned(), size: object.size().unwrap_or(0) });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// Every object under `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Object>, S3Error> {
        self.list_while(prefix, None, |_| true).await
    }
}
