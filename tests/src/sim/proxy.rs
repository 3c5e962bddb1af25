//! One address in front of several headnodes, as a load balancer in front
//! of stateless headnodes: a TCP proxy that hands each new connection to
//! the next backend that accepts it (round robin). A backend that refuses
//! is skipped; the connections of a backend that dies break, and clients
//! connect again (to a live one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on a free loopback port in front of `backends`.
pub async fn start(backends: Vec<SocketAddr>) -> std::io::Result<Proxy> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let backends = Arc::new(backends);
    let next = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let _ = client.set_nodelay(true);
            let (backends, next) = (backends.clone(), next.clone());
            tokio::spawn(async move {
                for _ in 0..backends.len() {
                    let b = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
                    let Ok(Ok(mut upstream)) =
                        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(b)).await
                    else {
                        continue;
                    };
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
            });
        }
    });
    Ok(Proxy { addr, task })
}

/// The `host:port` of a URL such as `http://127.0.0.1:8080`.
pub fn socket_of(url: &str) -> SocketAddr {
    url.split("://")
        .last()
        .unwrap_or(url)
        .trim_end_matches('/')
        .parse()
        .expect("a URL with an IP address and a port")
}
