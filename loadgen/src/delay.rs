//! `loadgen delay-proxy`: a TCP proxy that holds every chunk a client sends for a
//! fixed delay before passing it on (answers pass at once): a Kinesis API server on
//! this machine as far away as an AWS region (`--delay-ms 25` adds 25 ms to each
//! request). Chunks keep their order and are not held behind each other: a chunk
//! that arrives while an earlier one waits leaves `delay` after its own arrival, so
//! requests in flight at once are each delayed once, as on a network.

use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Where to listen.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where to pass connections on (the Kinesis API server).
    #[arg(long)]
    pub upstream: SocketAddr,
    /// How long each chunk a client sends is held.
    #[arg(long, default_value_t = 25)]
    pub delay_ms: u64,
}

/// Serves until the process is stopped.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let listener = TcpListener::bind(args.listen).await?;
    let delay = Duration::from_millis(args.delay_ms);
    println!("delay proxy: {} -> {}, +{} ms per request", args.listen, args.upstream, args.delay_ms);
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = args.upstream;
        tokio::spawn(async move {
            if let Ok(server) = TcpStream::connect(upstream).await {
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                relay(client, server, delay).await;
            }
        });
    }
}

async fn relay(client: TcpStream, server: TcpStream, delay: Duration) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    // the client's chunks, each with the instant it may leave
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from_client.read(&mut buf).await {
            if n == 0 || tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to_server.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
    };
    let answers = async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    tokio::join!(reader, writer, answers);
}
