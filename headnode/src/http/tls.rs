//! Serving the REST API over TLS from configured files: a listener for
//! axum whose connections are handshaken (each in its own task, so a slow
//! client holds up nobody) by the same acceptor the agents' registry uses.
//! The files are read again on SIGHUP: a renewed certificate is served
//! without a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use futures::{Stream, StreamExt};

pub struct TlsListener {
    incoming: Pin<Box<dyn Stream<Item = std::io::Result<nereid_tls::TlsConn>> + Send>>,
    local: SocketAddr,
}

/// The REST API's certificate and key files, and what is served from them.
pub struct RestCertificate {
    cert: PathBuf,
    key: PathBuf,
    identity: Arc<nereid_tls::Identity>,
}

impl RestCertificate {
    /// Reads the certificate chain and key (PEM).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<RestCertificate>> {
        let (chain, key_pem) = read_pair(cert, key)?;
        let identity = nereid_tls::Identity::from_pem(&chain, &key_pem)
            .with_context(|| describe(cert, key))?;
        Ok(Arc::new(RestCertificate {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            identity,
        }))
    }

    /// Reads the files again and serves what they hold from the next
    /// connection on; on any error the current certificate stays.
    pub fn reload(&self) -> anyhow::Result<String> {
        let (chain, key_pem) = read_pair(&self.cert, &self.key)?;
        self.identity
            .replace(&chain, &key_pem)
            .with_context(|| describe(&self.cert, &self.key))?;
        Ok(self.identity.fingerprint())
    }

    /// Reloads on every SIGHUP (as nginx does), logging what happened.
    pub fn reload_on_sighup(self: Arc<Self>) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match self.reload() {
                    Ok(sha256) => {
                        tracing::info!(cert = %self.cert.display(), %sha256, "the REST API's certificate was reloaded")
                    }
                    Err(e) => {
                        tracing::error!(cert = %self.cert.display(), "the REST API's certificate was not reloaded (the current one stays): {e:#}")
                    }
                }
            }
        });
        Ok(())
    }
}

fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<(String, String)> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    Ok((read(cert)?, read(key)?))
}

fn describe(cert: &Path, key: &Path) -> String {
    format!(
        "the REST API's certificate {} and key {}",
        cert.display(),
        key.display()
    )
}

impl TlsListener {
    /// Listens on `listener`, serving `certificate`.
    pub fn new(
        listener: tokio::net::TcpListener,
        certificate: &RestCertificate,
    ) -> anyhow::Result<TlsListener> {
        let config = nereid_tls::https_config(certificate.identity.clone());
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
