//! The floor of a Rust gateway: hyper on both legs on one thread, requests sent round-robin with
//! their bytes unchanged and answers streamed back as they come; nothing parsed, tokenized, routed
//! or counted. Beside Node's floor it says what the HTTP stack alone costs per request in each.
//!
//!   rust-floor PORT WORKER_URL...

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port: u16 = args
        .first()
        .and_then(|p| p.parse().ok())
        .expect("usage: rust-floor PORT WORKER_URL...");
    let workers: Arc<Vec<String>> = Arc::new(args[1..].to_vec());
    assert!(!workers.is_empty(), "usage: rust-floor PORT WORKER_URL...");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let next = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    println!("rust-floor: ready");
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let _ = socket.set_nodelay(true);
        let (client, workers, next) = (client.clone(), workers.clone(), next.clone());
        tokio::spawn(async move {
            let forward = service_fn(move |mut req: Request<Incoming>| {
                let (client, workers, next) = (client.clone(), workers.clone(), next.clone());
                async move {
                    let worker = &workers[next.fetch_add(1, Ordering::Relaxed) % workers.len()];
                    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    *req.uri_mut() = format!("{worker}{path}")
                        .parse::<Uri>()
                        .expect("worker URL");
                    client.request(req).await
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(socket), forward)
                .await;
        });
    }
}
