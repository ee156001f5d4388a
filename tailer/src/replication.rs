//! The streaming replication protocol, for the `wal` source: one long-lived logical
//! decoding session (`START_REPLICATION … LOGICAL`) instead of a new one per SQL call.
//!
//! A connection opened with `replication=database` speaks the ordinary
//! frontend/backend protocol plus the replication commands (PostgreSQL docs,
//! "Streaming Replication Protocol"). After `START_REPLICATION` the server streams
//! `XLogData` messages, each carrying one pgoutput message, as soon as the WAL that
//! holds them is flushed; the client reports the position it has made durable
//! elsewhere in standby status updates, and the slot's `confirmed_flush_lsn` follows
//! that report. A task of its own reads the socket, assembles whole committed
//! transactions and answers the server's keepalives, so the connection stays alive
//! while the tailer waits on Kinesis.
//!
//! Only what the tailer needs: TCP with TLS as `sslmode` asks (rustls, like sqlx's
//! pools: see [`tls`]) or a Unix socket (never TLS, as with libpq), password
//! authentication by cleartext, MD5 or SCRAM-SHA-256 (the last two through
//! `postgres-protocol`'s helpers). The start-up packet pins `DateStyle=ISO`,
//! `TimeZone=UTC` and `client_encoding=UTF8`, whatever the role's or server's defaults.

use crate::wal::Transactions;
use bytes::{Buf, BufMut, BytesMut};
use eventstore::envelope::RecordedEvent;
use eventstore::store::StoreError;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Where and as whom the replication connection logs in, and how it protects itself.
#[derive(Clone)]
pub struct ReplicationTarget {
    host: String,
    port: u16,
    socket: Option<PathBuf>,
    user: String,
    password: Option<String>,
    database: String,
    ssl_mode: PgSslMode,
    root_cert: Option<RootCert>,
}

/// The CA of `sslrootcert`: a PEM file, or PEM text given inline.
#[derive(Clone, Debug)]
pub enum RootCert {
    File(PathBuf),
    Pem(Vec<u8>),
}

impl fmt::Debug for ReplicationTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .finish_non_exhaustive()
    }
}

impl ReplicationTarget {
    /// The server, user, password, database, `sslmode` and `sslrootcert` of `options`,
    /// the pool's own, so both connections log in and protect themselves alike. The
    /// password is whatever sqlx settled on: the URL's, else the password file's
    /// (`passfile`, `PGPASSFILE`, `~/.pgpass`; see `service_kit::startup`).
    ///
    /// sqlx 0.8 has getters for neither the password nor the root certificate; its
    /// `to_url_lossy` writes both (the unit test below pins that format).
    pub fn new(options: &PgConnectOptions) -> Self {
        let socket = match options.get_socket() {
            Some(dir) => Some(dir.join(format!(".s.PGSQL.{}", options.get_port()))),
            None if options.get_host().starts_with('/') => {
                Some(PathBuf::from(format!("{}/.s.PGSQL.{}", options.get_host(), options.get_port())))
            }
            None => None,
        };
        let url = options.to_url_lossy();
        let password = url.password().map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned());
        let root_cert = url.query_pairs().find(|(key, _)| key == "sslrootcert").map(|(_, value)| {
            match value.strip_prefix("file: ") {
                Some(path) => RootCert::File(PathBuf::from(path)),
                None => RootCert::Pem(value.as_bytes().to_vec()),
            }
        });
        ReplicationTarget {
            host: options.get_host().to_owned(),
            port: options.get_port(),
            socket,
            user: options.get_username().to_owned(),
            password,
            database: options.get_database().unwrap_or(options.get_username()).to_owned(),
            ssl_mode: options.get_ssl_mode(),
            root_cert,
        }
    }

    /// Another password than the options' (e.g. one the pool does not use).
    pub fn with_password(mut self, password: Option<String>) -> Self {
        self.password = password;
        self
    }

    /// Connects and logs in, then says goodbye: the connection works (start-up
    /// checks, tests).
    pub async fn probe(&self) -> Result<(), ReplicationError> {
        let attempt = async {
            let (io, channel) = connect(self).await?;
            let (mut reader, mut writer) = tokio::io::split(io);
            let mut buf = BytesMut::new();
            log_in(&mut reader, &mut writer, &mut buf, self, channel).await?;
            writer.write_all(&frame(b'X', |_| {})).await?;
            writer.shutdown().await?;
            Ok(())
        };
        tokio::time::timeout(START_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(ReplicationError::new("logging in timed out")))
    }

    /// The `sslmode` the connection honours.
    pub fn ssl_mode(&self) -> PgSslMode {
        self.ssl_mode
    }
}

/// A failure of the replication connection.
#[derive(Debug, thiserror::Error)]
#[error("replication connection: {message}")]
pub struct ReplicationError {
    /// The server's SQLSTATE, when the server refused something.
    pub code: Option<String>,
    pub message: String,
}

impl ReplicationError {
    fn new(message: impl Into<String>) -> Self {
        ReplicationError { code: None, message: message.into() }
    }

    /// The slot is in use by another connection (SQLSTATE 55006), e.g. the walsender
    /// of a connection that is still closing.
    pub fn slot_in_use(&self) -> bool {
        self.code.as_deref() == Some(crate::wal::SLOT_IN_USE)
    }
}

impl From<std::io::Error> for ReplicationError {
    fn from(e: std::io::Error) -> Self {
        ReplicationError::new(e.to_string())
    }
}

impl From<ReplicationError> for StoreError {
    fn from(e: ReplicationError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// One committed transaction of the publication: its events (none for a heartbeat)
/// and the WAL position just after its commit record, which acknowledges it.
#[derive(Debug)]
pub(crate) struct Committed {
    pub events: Vec<RecordedEvent>,
    pub end_lsn: u64,
}

/// Transactions handed over ahead of the tailer (a batch can take this many).
const HANDED_AHEAD: usize = 2048;

/// Transactions the reading task decodes ahead of handing them over.
const READ_AHEAD: usize = 64;

/// How long logging in and starting to stream may take.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest backend message accepted (an event is at most 1 MiB to Kinesis).
const MAX_MESSAGE: usize = 256 << 20;

/// How often the client reports its position without being asked (the server drops
/// a client silent for `wal_sender_timeout`, 60 s by default) and asks for an answer:
/// a server not heard from for three of these is taken for gone (a half-open
/// connection would otherwise go unnoticed until TCP gives up, after many minutes).
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Microseconds from the Unix epoch to the Postgres epoch (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A running `START_REPLICATION`: committed transactions in commit order, and the
/// position the client confirms.
pub(crate) struct ReplicationStream {
    transactions: mpsc::Receiver<Result<Committed, String>>,
    confirmed: watch::Sender<u64>,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl ReplicationStream {
    /// Logs in, starts streaming slot `slot` from its confirmed position with
    /// pgoutput over `publication`, and leaves the socket to a task of its own. The
    /// task ends when the stream is dropped (after reporting the last confirmed
    /// position) or when the connection fails (the next read returns the error).
    pub async fn start(target: &ReplicationTarget, slot: &str, publication: &str) -> Result<Self, ReplicationError> {
        for name in [slot, publication] {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
                return Err(ReplicationError::new(format!(
                    "{name:?} is not a valid slot or publication name (lower-case letters, digits, _)"
                )));
            }
        }
        let started = tokio::time::timeout(START_TIMEOUT, async {
            let (io, channel) = connect(target).await?;
            let (mut reader, mut writer) = tokio::io::split(io);
            let mut buf = BytesMut::with_capacity(64 * 1024);
            log_in(&mut reader, &mut writer, &mut buf, target, channel).await?;
            let command = format!(
                "START_REPLICATION SLOT {slot} LOGICAL 0/0 (proto_version '1', publication_names '{publication}')"
            );
            writer.write_all(&frame(b'Q', |b| put_cstr(b, &command))).await?;
            loop {
                match next_message(&mut reader, &mut buf).await? {
                    (b'W', _) => return Ok((reader, writer, buf)),
                    (b'E', body) => return Err(server_error(&body)),
                    (b'N' | b'S', _) => {}
                    (tag, _) => return Err(ReplicationError::new(format!("unexpected message {:?}", tag as char))),
                }
            }
        })
        .await;
        let (reader, writer, buf) = match started {
            Ok(started) => started?,
            Err(_) => return Err(ReplicationError::new("starting the stream timed out")),
        };
        let (sender, transactions) = mpsc::channel(HANDED_AHEAD);
        let (confirmed, confirmed_rx) = watch::channel(0);
        tokio::spawn(async move {
            if let Err(error) = follow(reader, writer, buf, &sender, confirmed_rx).await {
                let _ = sender.send(Err(error.message)).await;
            }
        });
        Ok(ReplicationStream { transactions, confirmed })
    }

    /// The next committed transaction, when one is already here.
    pub fn try_next(&mut self) -> Result<Option<Committed>, StoreError> {
        match self.transactions.try_recv() {
            Ok(next) => next.map(Some).map_err(lost),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(lost("the reading task ended".into())),
        }
    }

    /// Waits for the next committed transaction (cancel-safe).
    pub async fn next(&mut self) -> Result<Committed, StoreError> {
        match self.transactions.recv().await {
            Some(next) => next.map_err(lost),
            None => Err(lost("the reading task ended".into())),
        }
    }

    /// Reports everything up to `lsn` as durable elsewhere; the slot moves there.
    pub fn confirm(&self, lsn: u64) {
        self.confirmed.send_if_modified(|confirmed| {
            let moved = lsn > *confirmed;
            *confirmed = (*confirmed).max(lsn);
            moved
        });
    }
}

fn lost(reason: String) -> StoreError {
    StoreError::Unavailable(format!("replication stream lost: {reason}"))
}

/// How the start-up packet travels: whether a password in clear text could be read on
/// the way (plain TCP), or not (TLS, or a local Unix socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Private,
    PlainTcp,
}

async fn connect(target: &ReplicationTarget) -> Result<(Box<dyn Io>, Channel), ReplicationError> {
    if let Some(path) = &target.socket {
        // like libpq: a Unix socket is local, never encrypted, whatever sslmode says
        #[cfg(unix)]
        return Ok((Box::new(tokio::net::UnixStream::connect(path).await?), Channel::Private));
        #[cfg(not(unix))]
        return Err(ReplicationError::new(format!("no Unix sockets here ({})", path.display())));
    }
    let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await?;
    stream.set_nodelay(true)?;
    tls::negotiate(stream, target).await
}
/// The start-up exchange, up to the first ReadyForQuery.
async fn log_in<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut R,
    writer: &mut W,
    buf: &mut BytesMut,
    target: &ReplicationTarget,
    channel: Channel,
) -> Result<(), ReplicationError> {
    let mut startup = BytesMut::new();
    startup.put_i32(196_608); // protocol 3.0
    for (key, value) in [
        ("user", target.user.as_str()),
        ("database", target.database.as_str()),
        ("replication", "database"),
        ("application_name", "rapids tailer"),
        // the walsender formats nothing by these today, but the session is pinned
        // so that a role's or server's settings cannot change what it sends
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("client_encoding", "UTF8"),
    ] {
        put_cstr(&mut startup, key);
        put_cstr(&mut startup, value);
    }
    startup.put_u8(0);
    let mut message = BytesMut::new();
    message.put_i32(i32::try_from(startup.len() + 4).unwrap_or(i32::MAX));
    message.extend_from_slice(&startup);
    writer.write_all(&message).await?;

    let password = || {
        target.password.as_deref().ok_or_else(|| ReplicationError::new("the server asks for a password; none is set"))
    };
    let mut scram: Option<ScramSha256> = None;
    loop {
        let (tag, mut body) = next_message(reader, buf).await?;
        match tag {
            b'R' => {
                if body.len() < 4 {
                    return Err(ReplicationError::new("truncated authentication request"));
                }
                match body.get_u32() {
                    0 => {}
                    3 => {
                        // anyone on the path would read it: refused (MD5 and SCRAM send
                        // no password, TLS and a local socket hide it)
                        if channel == Channel::PlainTcp {
                            return Err(ReplicationError::new(
                                "the server asks for the password in clear text over an unencrypted \
                                 connection: refused (use sslmode=verify-full, or md5/scram-sha-256)",
                            ));
                        }
                        let password = password()?;
                        let answer = frame(b'p', |b| put_cstr(b, password));
                        writer.write_all(&answer).await?;
                    }
                    5 => {
                        let salt: [u8; 4] = body
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| ReplicationError::new("truncated MD5 salt"))?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            target.user.as_bytes(),
                            password()?.as_bytes(),
                            salt,
                        );
                        writer.write_all(&frame(b'p', |b| put_cstr(b, &hash))).await?;
                    }
                    10 => {
                        let offered = body[..].split(|b| *b == 0).any(|m| m == SCRAM_SHA_256.as_bytes());
                        if !offered {
                            return Err(ReplicationError::new(
                                "the server offers no SASL mechanism this client speaks",
                            ));
                        }
                        let exchange = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                        let answer = frame(b'p', |b| {
                            put_cstr(b, SCRAM_SHA_256);
                            b.put_i32(i32::try_from(exchange.message().len()).unwrap_or(i32::MAX));
                            b.extend_from_slice(exchange.message());
                        });
                        writer.write_all(&answer).await?;
                        scram = Some(exchange);
                    }
                    11 => {
                        let exchange = scram.as_mut().ok_or_else(|| ReplicationError::new("SASL out of order"))?;
                        exchange.update(&body)?;
                        writer.write_all(&frame(b'p', |b| b.extend_from_slice(exchange.message()))).await?;
                    }
                    12 => {
                        let exchange = scram.as_mut().ok_or_else(|| ReplicationError::new("SASL out of order"))?;
                        exchange.finish(&body)?;
                    }
                    other => {
                        return Err(ReplicationError::new(format!("authentication method {other} is not supported")));
                    }
                }
            }
            b'E' => return Err(server_error(&body)),
            b'Z' => return Ok(()),
            _ => {} // ParameterStatus, BackendKeyData, notices
        }
    }
}

/// TLS for the replication connection, as libpq and sqlx do it: an `SSLRequest`
/// before the start-up packet; the server answers `S` (a TLS handshake follows) or
/// `N` (no TLS here).
///
/// | sslmode           | asks for TLS | plain when refused | checks the certificate       |
/// |-------------------|--------------|--------------------|------------------------------|
/// | disable           | no           | -                  | -                            |
/// | allow, prefer     | yes          | yes                | no                           |
/// | require           | yes          | no                 | no                           |
/// | verify-ca         | yes          | no                 | chain to sslrootcert         |
/// | verify-full       | yes          | no                 | chain and host name          |
///
/// `allow` (plain first in libpq) is taken as `prefer`. `prefer` and `require`
/// encrypt without checking who answers, as libpq and sqlx do: they stop a passive
/// eavesdropper, not a man in the middle (that is what the verify modes are for).
/// Their verifier still checks the handshake's signatures, so the peer holds the key
/// of the certificate it shows; it just does not ask who signed it. The verify modes
/// need `sslrootcert` (libpq would fall back to `~/.postgresql/root.crt`; this client
/// says so instead).
pub mod tls {
    use super::{Channel, Io, ReplicationError, ReplicationTarget, RootCert};
    use sqlx::postgres::PgSslMode;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::client::WebPkiServerVerifier;
    use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use tokio_rustls::rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::rustls::{
        CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
    };

    /// The protocol's SSLRequest: length 8, code 80877103.
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

    /// The stream the start-up packet goes over: TLS, or plain where `sslmode` allows.
    pub(super) async fn negotiate(
        mut stream: TcpStream,
        target: &ReplicationTarget,
    ) -> Result<(Box<dyn Io>, Channel), ReplicationError> {
        let mode = target.ssl_mode;
        if matches!(mode, PgSslMode::Disable) {
            return Ok((Box::new(stream), Channel::PlainTcp));
        }
        // the configuration first: a bad sslrootcert is an error before any byte is sent
        let config = client_config(target)?;
        stream.write_all(&SSL_REQUEST).await?;
        // exactly one byte: anything the server (or a man in the middle) sent after it
        // must go through the handshake, not be taken as the server's (CVE-2021-23222)
        let answer = stream.read_u8().await?;
        match answer {
            b'S' => {
                let name = ServerName::try_from(target.host.clone()).map_err(|_| {
                    ReplicationError::new(format!("{:?} is not a host name TLS can check", target.host))
                })?;
                let tls = TlsConnector::from(Arc::new(config))
                    .connect(name, stream)
                    .await
                    .map_err(|e| handshake_error(&e, target))?;
                Ok((Box::new(tls), Channel::Private))
            }
            b'N' if matches!(mode, PgSslMode::Allow | PgSslMode::Prefer) => Ok((Box::new(stream), Channel::PlainTcp)),
            b'N' => {
                Err(ReplicationError::new(format!("the server does not accept SSL but sslmode={}", mode_name(mode))))
            }
            b'E' => Err(ReplicationError::new("the server answered the SSL request with an error")),
            other => Err(ReplicationError::new(format!("unexpected answer {other:#04x} to the SSL request"))),
        }
    }

    fn mode_name(mode: PgSslMode) -> &'static str {
        match mode {
            PgSslMode::Disable => "disable",
            PgSslMode::Allow => "allow",
            PgSslMode::Prefer => "prefer",
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            PgSslMode::VerifyFull => "verify-full",
        }
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
    }

    /// The rustls configuration `sslmode` asks for.
    fn client_config(target: &ReplicationTarget) -> Result<ClientConfig, ReplicationError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ReplicationError::new(format!("TLS: {e}")))?;
        let config = match target.ssl_mode {
            PgSslMode::VerifyFull => builder.with_root_certificates(roots(target)?).with_no_client_auth(),
            PgSslMode::VerifyCa => {
                let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(target)?), provider)
                    .build()
                    .map_err(|e| ReplicationError::new(format!("sslrootcert: {e}")))?;
                builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(chain))).with_no_client_auth()
            }
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
        };
        Ok(config)
    }

    /// The CA certificates of `sslrootcert`.
    fn roots(target: &ReplicationTarget) -> Result<RootCertStore, ReplicationError> {
        let mode = mode_name(target.ssl_mode);
        let (pem, origin) = match &target.root_cert {
            None => {
                return Err(ReplicationError::new(format!(
                    "sslmode={mode} needs sslrootcert (the PEM file of the CA that signed the server's certificate)"
                )));
            }
            Some(RootCert::File(path)) => (
                std::fs::read(path)
                    .map_err(|e| ReplicationError::new(format!("sslrootcert {}: {e}", path.display())))?,
                path.display().to_string(),
            ),
            Some(RootCert::Pem(pem)) => (pem.clone(), "(inline PEM)".to_owned()),
        };
        let mut store = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ReplicationError::new(format!("sslrootcert {origin}: {e}")))?;
            store.add(cert).map_err(|e| ReplicationError::new(format!("sslrootcert {origin}: {e}")))?;
        }
        if store.is_empty() {
            return Err(ReplicationError::new(format!("sslrootcert {origin} holds no certificate")));
        }
        Ok(store)
    }

    /// A failed handshake, said plainly.
    fn handshake_error(error: &std::io::Error, target: &ReplicationTarget) -> ReplicationError {
        let cause = error.get_ref().and_then(|inner| inner.downcast_ref::<TlsError>());
        let message = match cause {
            Some(TlsError::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)) => {
                "the server's certificate is not signed by the CA in sslrootcert".to_owned()
            }
            Some(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => format!("the server's certificate is not valid for the host name {:?}", target.host),
            Some(TlsError::InvalidCertificate(other)) => format!("the server's certificate is refused: {other:?}"),
            Some(other) => format!("the TLS handshake failed: {other}"),
            None => format!("the TLS handshake failed: {error}"),
        };
        ReplicationError::new(message)
    }

    /// verify-ca: the chain to sslrootcert, whatever host name the certificate names.
    #[derive(Debug)]
    struct ChainOnly(Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, TlsError> {
            // webpki checks the chain (and validity dates) before the name: a name
            // error means everything else held
            match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Err(TlsError::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                outcome => outcome,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }

    /// prefer and require: any certificate (see the module's notes); the handshake's
    /// signatures are still checked against it.
    #[derive(Debug)]
    struct Unverified(Arc<CryptoProvider>);

    impl ServerCertVerifier for Unverified {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, TlsError> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

/// The reading task: decodes the stream into committed transactions, hands them over
/// (at most [`READ_AHEAD`] ahead) and reports the confirmed position: at once when it
/// moves, when the server asks, and every [`STATUS_EVERY`].
async fn follow<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut reader: R,
    mut writer: W,
    mut buf: BytesMut,
    out: &mpsc::Sender<Result<Committed, String>>,
    mut confirmed: watch::Receiver<u64>,
) -> Result<(), ReplicationError> {
    let mut transactions = Transactions::default();
    let mut ready: VecDeque<Committed> = VecDeque::new();
    let mut received = 0u64;
    let mut ticker = tokio::time::interval(STATUS_EVERY);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        if ready.len() >= READ_AHEAD {
            // not reading: the server's silence says nothing
            last_heard = tokio::time::Instant::now();
        }
        while ready.len() < READ_AHEAD {
            let Some((tag, mut body)) = take_message(&mut buf)? else { break };
            match tag {
                b'd' if body.first() == Some(&b'w') => {
                    if body.len() < 25 {
                        return Err(ReplicationError::new("truncated XLogData"));
                    }
                    body.advance(1);
                    let _start = body.get_u64();
                    received = received.max(body.get_u64());
                    let _sent_at = body.get_i64();
                    if let Some(committed) =
                        transactions.feed(&body).map_err(|e| ReplicationError::new(e.to_string()))?
                    {
                        ready.push_back(committed);
                    }
                }
                b'd' if body.first() == Some(&b'k') => {
                    if body.len() < 18 {
                        return Err(ReplicationError::new("truncated keepalive"));
                    }
                    if body[17] == 1 {
                        let flushed = *confirmed.borrow();
                        writer.write_all(&status(received, flushed, false)).await?;
                    }
                }
                b'E' => return Err(server_error(&body)),
                b'c' => return Err(ReplicationError::new("the server ended the stream")),
                _ => {}
            }
        }
        tokio::select! {
            biased;
            changed = confirmed.changed() => {
                let flushed = *confirmed.borrow_and_update();
                writer.write_all(&status(received, flushed, false)).await?;
                if changed.is_err() {
                    // the stream was dropped: its last position is reported; say goodbye
                    let _ = writer.write_all(&frame(b'c', |_| {})).await;
                    return Ok(());
                }
            }
            permit = out.reserve(), if !ready.is_empty() => {
                let Ok(permit) = permit else { return Ok(()) };
                if let Some(committed) = ready.pop_front() {
                    permit.send(Ok(committed));
                }
            }
            read = reader.read_buf(&mut buf), if ready.len() < READ_AHEAD => {
                if read? == 0 {
                    return Err(ReplicationError::new("the server closed the connection"));
                }
                last_heard = tokio::time::Instant::now();
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > 3 * STATUS_EVERY {
                    return Err(ReplicationError::new("the server has not answered for 30 s"));
                }
                let flushed = *confirmed.borrow();
                writer.write_all(&status(received, flushed, true)).await?;
            }
        }
    }
}

/// A standby status update: written up to `received`, flushed and applied up to
/// `flushed` (0, "nothing yet", is ignored by the server); `answer`: the server is to
/// reply at once (with a keepalive).
fn status(received: u64, flushed: u64, answer: bool) -> BytesMut {
    let now = chrono::Utc::now().timestamp_micros() - PG_EPOCH_MICROS;
    let written = received.max(flushed);
    frame(b'd', |b| {
        b.put_u8(b'r');
        b.put_u64(written);
        b.put_u64(flushed);
        b.put_u64(flushed);
        b.put_i64(now);
        b.put_u8(u8::from(answer));
    })
}

/// A frontend message: tag, length, body.
fn frame(tag: u8, body: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut content = BytesMut::new();
    body(&mut content);
    let mut message = BytesMut::with_capacity(content.len() + 5);
    message.put_u8(tag);
    message.put_i32(i32::try_from(content.len() + 4).unwrap_or(i32::MAX));
    message.extend_from_slice(&content);
    message
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.put_u8(0);
}

/// The next whole backend message in `buf`, if one is there.
fn take_message(buf: &mut BytesMut) -> Result<Option<(u8, BytesMut)>, ReplicationError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(ReplicationError::new(format!("a message of {len} bytes")));
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    let tag = buf[0];
    buf.advance(5);
    Ok(Some((tag, buf.split_to(len - 4))))
}

/// The next whole backend message, reading as needed.
async fn next_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<(u8, BytesMut), ReplicationError> {
    loop {
        if let Some(message) = take_message(buf)? {
            return Ok(message);
        }
        if reader.read_buf(buf).await? == 0 {
            return Err(ReplicationError::new("the server closed the connection"));
        }
    }
}

/// The SQLSTATE and message of an ErrorResponse.
fn server_error(body: &[u8]) -> ReplicationError {
    let mut error = ReplicationError::new("the server reported an error");
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'C', code)) => error.code = Some(String::from_utf8_lossy(code).into_owned()),
            Some((b'M', message)) => error.message = String::from_utf8_lossy(message).into_owned(),
            _ => {}
        }
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_backend_messages_only_when_whole() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I', b'd', 0, 0]);
        let (tag, body) = take_message(&mut buf).expect("well formed").expect("whole");
        assert_eq!((tag, &body[..]), (b'Z', &b"I"[..]));
        assert!(take_message(&mut buf).expect("well formed").is_none(), "a partial message waits for more bytes");
        buf.extend_from_slice(&[0, 6, b'x', b'y']);
        let (tag, body) = take_message(&mut buf).expect("well formed").expect("whole");
        assert_eq!((tag, &body[..]), (b'd', &b"xy"[..]));
        assert!(buf.is_empty());
        buf.extend_from_slice(&[b'd', 0, 0, 0, 3]);
        assert!(take_message(&mut buf).is_err(), "a length below 4 is refused");
        let mut huge = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(take_message(&mut huge).is_err(), "a length above the cap is refused, not reserved");
    }

    #[test]
    fn the_target_takes_the_password_and_tls_settings_of_the_options() {
        let options: PgConnectOptions =
            "postgres://tailer:s%40cret@db.example:5433/bank?sslmode=verify-full&sslrootcert=/etc/ca%20dir/root.pem"
                .parse()
                .expect("a valid URL");
        let target = ReplicationTarget::new(&options);
        assert_eq!(target.password.as_deref(), Some("s@cret"));
        assert!(matches!(target.ssl_mode, PgSslMode::VerifyFull));
        assert!(
            matches!(&target.root_cert, Some(RootCert::File(p)) if p == std::path::Path::new("/etc/ca dir/root.pem")),
            "{:?}",
            target.root_cert
        );
        let where_to = (target.host.as_str(), target.port, target.user.as_str(), target.database.as_str());
        assert_eq!(where_to, ("db.example", 5433, "tailer", "bank"));
        let plain: PgConnectOptions = "postgres://tailer@db/bank?sslmode=disable".parse().expect("a valid URL");
        let target = ReplicationTarget::new(&plain);
        assert!(target.root_cert.is_none() && matches!(target.ssl_mode, PgSslMode::Disable));
    }

    /// What the client writes to a fake server that asks for the password in clear
    /// text, over a channel of the kind given: the start-up message, then (allowed)
    /// the password message; and log_in's outcome.
    async fn cleartext_asked(channel: Channel) -> (Result<(), ReplicationError>, Vec<u8>) {
        let options: PgConnectOptions = "postgres://tailer:hunter2-secret@db/bank".parse().expect("a valid URL");
        let target = ReplicationTarget::new(&options);
        let (client, server) = tokio::io::duplex(1 << 16);
        let (mut reader, mut writer) = tokio::io::split(client);
        let (mut from_client, mut to_client) = tokio::io::split(server);
        let ask = frame(b'R', |b| b.put_u32(3));
        to_client.write_all(&ask).await.expect("written");
        // then the server hangs up: allowed, the client answers and meets the end
        to_client.shutdown().await.expect("closed");
        let outcome = log_in(&mut reader, &mut writer, &mut BytesMut::new(), &target, channel).await;
        writer.shutdown().await.expect("closed");
        let mut written = Vec::new();
        from_client.read_to_end(&mut written).await.expect("read");
        (outcome, written)
    }

    #[tokio::test]
    async fn a_cleartext_password_is_never_sent_over_plain_tcp() {
        let (outcome, written) = cleartext_asked(Channel::PlainTcp).await;
        let error = outcome.expect_err("refused");
        assert!(error.message.contains("clear text"), "{}", error.message);
        let leaked = written.windows(b"hunter2-secret".len()).any(|w| w == b"hunter2-secret");
        assert!(!leaked, "the password went out over plain TCP");
        // over TLS (or a local socket) the same request is answered, and the log-in goes
        // on until the server hangs up
        let (outcome, written) = cleartext_asked(Channel::Private).await;
        assert!(written.windows(b"hunter2-secret".len()).any(|w| w == b"hunter2-secret"));
        let error = outcome.expect_err("the server hung up");
        assert!(!error.message.contains("clear text"), "{}", error.message);
    }

    /// A server that answers the SSL request with `N`.
    async fn refusing_ssl() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let port = listener.local_addr().expect("an address").port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0u8; 8];
                if socket.read_exact(&mut request).await.is_ok() {
                    let _ = socket.write_all(b"N").await;
                }
            }
        });
        port
    }

    #[tokio::test]
    async fn a_server_without_ssl_is_refused_unless_sslmode_allows_plain() {
        let port = refusing_ssl().await;
        for mode in ["require", "verify-ca", "verify-full"] {
            let options: PgConnectOptions = format!("postgres://u@127.0.0.1:{port}/db?sslmode={mode}&sslrootcert=-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----")
                .parse()
                .expect("a valid URL");
            let target = ReplicationTarget::new(&options);
            let error = connect(&target).await.err().expect("refused");
            if mode == "require" {
                assert_eq!(error.message, "the server does not accept SSL but sslmode=require");
            } else {
                // the verify modes check their CA first: this one is no certificate
                assert!(error.message.contains("sslrootcert"), "{mode}: {}", error.message);
            }
        }
        let prefer: PgConnectOptions =
            format!("postgres://u@127.0.0.1:{port}/db?sslmode=prefer").parse().expect("valid");
        assert!(connect(&ReplicationTarget::new(&prefer)).await.is_ok(), "prefer goes on in plain text");
        let verify: PgConnectOptions =
            format!("postgres://u@127.0.0.1:{port}/db?sslmode=verify-full").parse().expect("valid");
        let error = connect(&ReplicationTarget::new(&verify)).await.err().expect("refused");
        assert!(error.message.contains("needs sslrootcert"), "{}", error.message);
    }

    #[test]
    fn reads_the_code_and_message_of_an_error() {
        let body = b"SERROR\0C55006\0Mreplication slot \"s\" is active for PID 7\0\0";
        let error = server_error(body);
        assert!(error.slot_in_use());
        assert_eq!(error.message, "replication slot \"s\" is active for PID 7");
    }

    #[test]
    fn a_status_update_reports_the_confirmed_position() {
        let update = status(0x30, 0x20, true);
        assert_eq!(update.len(), 1 + 4 + 34);
        assert_eq!(&update[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(u64::from_be_bytes(update[6..14].try_into().expect("8 bytes")), 0x30);
        assert_eq!(u64::from_be_bytes(update[14..22].try_into().expect("8 bytes")), 0x20);
        assert_eq!(u64::from_be_bytes(update[22..30].try_into().expect("8 bytes")), 0x20);
        assert_eq!(update[38], 1, "asks for an answer");
        assert_eq!(status(0x30, 0x20, false)[38], 0);
    }

    /// XLogData carrying one pgoutput message.
    fn xlog(message: &[u8]) -> BytesMut {
        frame(b'd', |b| {
            b.put_u8(b'w');
            b.put_u64(0x10);
            b.put_u64(0x10);
            b.put_i64(0);
            b.extend_from_slice(message);
        })
    }

    /// A transaction that inserts one row into `rapids.heartbeat` (no event).
    fn heartbeat_transaction(end_lsn: u64) -> Vec<BytesMut> {
        let mut begin = BytesMut::new();
        begin.put_u8(b'B');
        begin.put_u64(end_lsn - 8);
        begin.put_i64(0);
        begin.put_u32(740);
        let mut relation = BytesMut::new();
        relation.put_u8(b'R');
        relation.put_u32(7);
        put_cstr(&mut relation, "rapids");
        put_cstr(&mut relation, "heartbeat");
        relation.put_u8(b'd');
        relation.put_u16(0);
        let mut insert = BytesMut::new();
        insert.put_u8(b'I');
        insert.put_u32(7);
        insert.put_u8(b'N');
        insert.put_u16(0);
        let mut commit = BytesMut::new();
        commit.put_u8(b'C');
        commit.put_u8(0);
        commit.put_u64(end_lsn - 8);
        commit.put_u64(end_lsn);
        commit.put_i64(0);
        [begin, relation, insert, commit].iter().map(|m| xlog(m)).collect()
    }

    /// The next standby status update the client sent: (flush, answer requested).
    async fn next_status<R: AsyncRead + Unpin>(server: &mut R, buf: &mut BytesMut) -> (u64, bool) {
        let (tag, body) = next_message(server, buf).await.expect("a message");
        assert_eq!((tag, body[0]), (b'd', b'r'), "a standby status update");
        (u64::from_be_bytes(body[9..17].try_into().expect("8 bytes")), body[33] == 1)
    }

    #[tokio::test]
    async fn hands_over_committed_transactions_and_reports_what_is_confirmed() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (reader, writer) = tokio::io::split(client);
        let (mut from_client, mut to_client) = tokio::io::split(server);
        let (sender, mut transactions) = mpsc::channel(4);
        let (confirmed, confirmed_rx) = watch::channel(0);
        let task = tokio::spawn(async move { follow(reader, writer, BytesMut::new(), &sender, confirmed_rx).await });

        for message in heartbeat_transaction(0x100) {
            to_client.write_all(&message).await.expect("written");
        }
        let committed = transactions.recv().await.expect("a transaction").expect("no error");
        assert_eq!((committed.events.len(), committed.end_lsn), (0, 0x100));

        // the first status (at start) confirms nothing; confirming sends one at once
        let mut buf = BytesMut::new();
        assert_eq!(next_status(&mut from_client, &mut buf).await, (0, true));
        let confirm = ReplicationStream { transactions, confirmed };
        confirm.confirm(0x100);
        assert_eq!(next_status(&mut from_client, &mut buf).await, (0x100, false));
        confirm.confirm(0x80);
        // a keepalive asking for an answer gets one, still at 0x100 (never backwards)
        let keepalive = frame(b'd', |b| {
            b.put_u8(b'k');
            b.put_u64(0x200);
            b.put_i64(0);
            b.put_u8(1);
        });
        to_client.write_all(&keepalive).await.expect("written");
        assert_eq!(next_status(&mut from_client, &mut buf).await, (0x100, false));

        // dropping the stream reports the position once more and ends the copy
        drop(confirm);
        assert_eq!(next_status(&mut from_client, &mut buf).await, (0x100, false));
        let (tag, _) = next_message(&mut from_client, &mut buf).await.expect("a message");
        assert_eq!(tag, b'c', "CopyDone");
        assert!(task.await.expect("joined").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_silent_for_30_s_is_taken_for_gone() {
        let (client, _server) = tokio::io::duplex(1 << 16);
        let (reader, writer) = tokio::io::split(client);
        let (sender, _transactions) = mpsc::channel(4);
        let (_confirmed, confirmed_rx) = watch::channel(0);
        let started = tokio::time::Instant::now();
        let outcome = follow(reader, writer, BytesMut::new(), &sender, confirmed_rx).await;
        let error = outcome.expect_err("a silent server is an error");
        assert!(error.message.contains("not answered"), "{}", error.message);
        assert!(started.elapsed() > 3 * STATUS_EVERY, "not before 30 s of silence");
    }

    #[tokio::test]
    async fn a_server_error_ends_the_stream_with_its_message() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (reader, writer) = tokio::io::split(client);
        let (_from_client, mut to_client) = tokio::io::split(server);
        let (sender, _transactions) = mpsc::channel(4);
        let (_confirmed, confirmed_rx) = watch::channel(0);
        let error = frame(b'E', |b| b.extend_from_slice(b"SFATAL\0C57P01\0Mterminating connection\0\0"));
        to_client.write_all(&error).await.expect("written");
        let outcome = follow(reader, writer, BytesMut::new(), &sender, confirmed_rx).await;
        let error = outcome.expect_err("the server's error");
        assert_eq!((error.code.as_deref(), error.message.as_str()), (Some("57P01"), "terminating connection"));
    }
}
