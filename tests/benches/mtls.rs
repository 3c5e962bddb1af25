//! What mutual TLS costs the control traffic, against plaintext gRPC in the
//! same run: the same tonic service (a Registry answering heartbeats at
//! once) served over plain TCP and over nereid-tls (the acceptor, verifiers
//! and connector the headnode and agents use), called on a warm connection
//! (a call's added latency) and on a new connection each time (the handshake).
//!
//! `cargo bench -p nereid-tests --bench mtls`; prints medians and p99s.

use std::time::{Duration, Instant};

use nereid_proto::v1 as pb;
use nereid_proto::v1::registry_client::RegistryClient;
use nereid_proto::v1::registry_server::{Registry, RegistryServer};
use tonic::{Request, Response, Status};

struct Echo;

#[tonic::async_trait]
impl Registry for Echo {
    async fn register(
        &self,
        _: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        Err(Status::unimplemented("bench"))
    }
    async fn heartbeat(
        &self,
        _: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Ok(Response::new(pb::HeartbeatResponse {
            heartbeat_interval_ms: 5000,
        }))
    }
    type FetchImageStream = futures::stream::BoxStream<'static, Result<pb::ImageData, Status>>;
    async fn fetch_image(
        &self,
        _: Request<pb::FetchImageRequest>,
    ) -> Result<Response<Self::FetchImageStream>, Status> {
        Err(Status::unimplemented("bench"))
    }
}

fn beat() -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        server_id: uuid::Uuid::new_v4().to_string(),
        usage: Some(pb::Usage {
            memory_total_bytes: 1 << 34,
            memory_available_bytes: 1 << 33,
            load1: 0.5,
            uptime_seconds: 1000,
            zpools: vec![],
        }),
        agent_address: "127.0.0.1:8442".into(),
        agent_version: "bench".into(),
        sysinfo: None,
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

type Connect = Box<dyn Fn() -> tonic::transport::Channel>;

/// (warm call latencies, new-connection call latencies)
async fn measure(connect: &Connect, warm: usize, cold: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut c = RegistryClient::new(connect());
    for _ in 0..50 {
        c.heartbeat(beat()).await.unwrap();
    }
    let mut w = Vec::new();
    for _ in 0..warm {
        let t = Instant::now();
        c.heartbeat(beat()).await.unwrap();
        w.push(t.elapsed());
    }
    let mut n = Vec::new();
    for _ in 0..cold {
        let t = Instant::now();
        RegistryClient::new(connect())
            .heartbeat(beat())
            .await
            .unwrap();
        n.push(t.elapsed());
    }
    (w, n)
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let ca = nereid_tls::Ca::load_or_create(dir.path()).unwrap();
    let server_id = ca.identity(nereid_tls::HEADNODE_NAME).unwrap();
    let node = ca.identity(&nereid_tls::node_name("bench")).unwrap();

    // Plaintext.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistryServer::new(Echo))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(plain).with_nodelay(Some(true)),
            ),
    );
    // Mutual TLS, as the headnode serves its registry.
    let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls.local_addr().unwrap();
    let config = nereid_tls::server_config(server_id, &ca.cert_der, nereid_tls::Clients::AnyOrNone);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistryServer::new(Echo))
            .serve_with_incoming(nereid_tls::incoming(tls, config)),
    );

    let plain_connect: Connect = Box::new(move || {
        tonic::transport::Endpoint::from_shared(format!("http://{plain_addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect_lazy()
    });
    let client = nereid_tls::client_config(Some(node), nereid_tls::Trust::Ca(ca.cert_der.clone()));
    let tls_connect: Connect = Box::new(move || {
        nereid_tls::Connector::new(client.clone(), nereid_tls::HEADNODE_NAME)
            .unwrap()
            .channel(&tls_addr.to_string(), |e| e)
            .unwrap()
    });
    let (warm, cold) = (3000, 300);
    // Interleaved halves, so drift on this noisy machine hits both alike.
    let mut results: Vec<(Vec<Duration>, Vec<Duration>)> = vec![Default::default(); 2];
    for _ in 0..2 {
        for (i, connect) in [&plain_connect, &tls_connect].into_iter().enumerate() {
            let (w, n) = measure(connect, warm / 2, cold / 2).await;
            results[i].0.extend(w);
            results[i].1.extend(n);
        }
    }
    let [(mut pw, mut pn), (mut tw, mut tn)]: [(Vec<Duration>, Vec<Duration>); 2] =
        results.try_into().unwrap();
    let (pw50, tw50) = (pct(&mut pw, 0.5), pct(&mut tw, 0.5));
    let (pw99, tw99) = (pct(&mut pw, 0.99), pct(&mut tw, 0.99));
    let (pn50, tn50) = (pct(&mut pn, 0.5), pct(&mut tn, 0.5));
    println!(
        "mutual TLS vs plaintext gRPC, one process, loopback ({warm} warm calls, {cold} new connections each)"
    );
    println!(
        "  warm call      p50 {:.3} ms vs {:.3} ms (+{:.3} ms)   p99 {:.3} ms vs {:.3} ms",
        ms(tw50),
        ms(pw50),
        ms(tw50.saturating_sub(pw50)),
        ms(tw99),
        ms(pw99)
    );
    println!(
        "  new connection p50 {:.3} ms vs {:.3} ms (+{:.3} ms: TCP + TLS 1.3 handshake with P-256 certificates both ways)",
        ms(tn50),
        ms(pn50),
        ms(tn50.saturating_sub(pn50))
    );
    println!(
        "  a provision makes ~5 agent calls on a warm connection: ~{:.2} ms of TLS per provision",
        5.0 * ms(tw50.saturating_sub(pw50))
    );
}
