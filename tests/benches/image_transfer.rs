//! Benchmark (prints, asserts nothing): upload and download a 1 GiB image
//! through the API against `cp` of the same file on the same disk, and the
//! headnode's peak resident memory above idle during the upload.
//!
//!   deploy/dev bench        (builds release binaries, then runs this)
//!
//! Size with NEREID_BENCH_MIB (default 1024).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nereid_tests::procs::{Headnode, HeadnodeOpts, rss_kib};
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

fn drop_caches() {
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

#[tokio::main]
async fn main() {
    let mib: u64 = nereid_tests::bench_setting("NEREID_BENCH_MIB", 1024);
    let size = mib * 1024 * 1024;
    let dir = tempfile::Builder::new()
        .prefix("nereid-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let src = dir.path().join("image.bin");

    // A file that does not compress: a counter run through sha256.
    let mut hasher = Sha256::new();
    {
        let mut f =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&src).unwrap());
        let mut block = [0u8; 32];
        let mut written = 0u64;
        let mut i = 0u64;
        while written < size {
            block = Sha256::digest([&block[..], &i.to_le_bytes()].concat()).into();
            let chunk = [block; 128].concat();
            f.write_all(&chunk).unwrap();
            hasher.update(&chunk);
            written += chunk.len() as u64;
            i += 1;
        }
        f.into_inner().unwrap().sync_all().unwrap();
    }
    let sha = hex::encode(hasher.finalize());
    println!("file: {mib} MiB in {}", dir.path().display());

    // The floor: cp on the same disk, made durable like the upload.
    drop_caches();
    let t = Instant::now();
    let copy = dir.path().join("copy.bin");
    let st = std::process::Command::new("cp")
        .arg(&src)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::File::open(&copy).unwrap().sync_all().unwrap();
    let cp = t.elapsed();
    std::fs::remove_file(&copy).unwrap();

    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = h.operator();
    let (_, img) = op
        .post(
            "/v1/images",
            &json!({"name": "bench", "version": "1", "type": "vm", "os": "linux"}),
        )
        .await;
    let id = img["id"].as_str().unwrap().to_string();
    let pid = h.proc.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(idle));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    drop_caches();
    let t = Instant::now();
    let f = tokio::fs::File::open(&src).await.unwrap();
    let body =
        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024));
    let resp = op
        .request(Method::PUT, &format!("/v1/images/{id}/file?sha256={sha}"))
        .header("content-type", "application/octet-stream")
        .header("content-length", size)
        .body(body)
        .send()
        .await
        .unwrap();
    let up = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );

    drop_caches();
    let t = Instant::now();
    let resp = op
        .request(Method::GET, &format!("/v1/images/{id}/file"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let dest = dir.path().join("download.bin");
    let mut out =
        tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::create(&dest).await.unwrap());
    let mut stream = resp.bytes_stream();
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        got += chunk.len() as u64;
        out.write_all(&chunk).await.unwrap();
    }
    out.flush().await.unwrap();
    out.get_ref().sync_all().await.unwrap();
    let down = t.elapsed();
    assert_eq!(got, size);

    let peak_kib = peak.load(Ordering::Relaxed);
    println!(
        "cp:        {:>8.1} MiB/s ({:.2} s)",
        mib_s(size, cp),
        cp.as_secs_f64()
    );
    println!(
        "upload:    {:>8.1} MiB/s ({:.2} s)  ratio to cp {:.2} (goal >= 0.8)",
        mib_s(size, up),
        up.as_secs_f64(),
        cp.as_secs_f64() / up.as_secs_f64()
    );
    println!(
        "download:  {:>8.1} MiB/s ({:.2} s)  ratio to cp {:.2} (goal >= 0.8)",
        mib_s(size, down),
        down.as_secs_f64(),
        cp.as_secs_f64() / down.as_secs_f64()
    );
    println!(
        "headnode RSS: idle {:.1} MiB, peak during upload {:.1} MiB, +{:.1} MiB (goal < 64 MiB)",
        idle as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        (peak_kib - idle) as f64 / 1024.0
    );
}
