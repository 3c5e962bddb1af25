//! Serving the REST API over TLS from configured files: a listener for
//! axum whose connections are handshaken (each in its own task, so a slow
//! client holds up nobody) by the same acceptor the agents' registry uses.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;

use anyhow::Context;
use futures::{Stream, StreamExt};

pub struct TlsListener {
    incoming: Pin<Box<dyn Stream<Item = std::io::Result<nereid_tls::TlsConn>> + Send>>,
    local: SocketAddr,
}

impl TlsListener {
    /// Reads the certificate chain and key (PEM) and listens on `listener`.
    pub fn new(
        listener: tokio::net::TcpListener,
        cert: &Path,
        key: &Path,
    ) -> anyhow::Result<TlsListener> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let config = nereid_tls::https_config(&read(cert)?, &read(key)?).with_context(|| {
            format!(
                "the REST API's certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })?;
        Ok(TlsListener {
            local: listener.local_addr()?,
            incoming: Box::pin(nereid_tls::incoming(listener, config)),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = nereid_tls::TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(conn)) => {
                    let remote = conn.peer().remote;
                    return (conn, remote);
                }
                Some(Err(_)) => continue,
                // The acceptor ended: no more connections, ever.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
