//! The image catalog through the API: streamed, verified, content-addressed
//! uploads; Range downloads; states; visibility; nothing partial kept.

use std::io::Write;
use std::time::Duration;

use nereid_tests::api::{Api, assert_error};
use nereid_tests::procs::{Agent, Headnode, HeadnodeOpts};
use reqwest::Method;
use serde_json::{Value, json};

fn manifest(name: &str) -> Value {
    json!({"name": name, "version": "1.0.0", "type": "container", "os": "linux", "description": "test image",
           "requirements": {"min_ram_mb": 64}})
}

async fn create(api: &Api, m: &Value) -> String {
    let (st, img) = api.post("/v1/images", m).await;
    assert_eq!(st, 201, "{img}");
    assert_eq!(img["state"], "unactivated");
    img["id"].as_str().unwrap().to_string()
}

async fn upload(api: &Api, id: &str, data: Vec<u8>, sha: Option<&str>) -> (u16, Value) {
    let path = match sha {
        Some(s) => format!("/v1/images/{id}/file?sha256={s}"),
        None => format!("/v1/images/{id}/file"),
    };
    api.send(
        api.request(Method::PUT, &path)
            .header("content-type", "application/octet-stream")
            .body(data),
    )
    .await
}

fn sha256_hex(data: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    out.stdin.as_ref().unwrap().write_all(data).unwrap();
    let o = out.wait_with_output().unwrap();
    String::from_utf8(o.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn store_files(h: &Headnode) -> usize {
    let files = h.state.path().join("images/files");
    std::fs::read_dir(files)
        .map(|d| {
            d.flatten()
                .map(|sub| std::fs::read_dir(sub.path()).unwrap().count())
                .sum()
        })
        .unwrap_or(0)
}

fn temp_files(h: &Headnode) -> usize {
    std::fs::read_dir(h.state.path().join("images/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_is_uploaded_verified_activated_and_downloaded_with_ranges() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = h.operator();
    let id = create(&op, &manifest("busy")).await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let sha = sha256_hex(&data);

    // A wrong expected sha256 is a 400 and nothing is kept.
    let wrong = "0".repeat(64);
    let r = upload(&op, &id, data.clone(), Some(&wrong)).await;
    assert_error(&r, 400, "InvalidArgument");
    assert!(r.1["error"]["message"].as_str().unwrap().contains(&sha));
    let (_, img) = op.get(&format!("/v1/images/{id}")).await;
    assert!(img["file"].is_null());
    assert_eq!((store_files(&h), temp_files(&h)), (0, 0));
    assert_error(
        &op.post(&format!("/v1/images/{id}/activate"), &json!({}))
            .await,
        409,
        "Conflict",
    );

    let (st, img) = upload(&op, &id, data.clone(), Some(&sha)).await;
    assert_eq!(st, 200, "{img}");
    assert_eq!(img["file"]["sha256"], sha.as_str());
    assert_eq!(img["file"]["size"], data.len() as u64);
    let (st, img) = op
        .post(&format!("/v1/images/{id}/activate"), &json!({}))
        .await;
    assert_eq!((st, img["state"].as_str()), (200, Some("active")));
    assert_error(
        &upload(&op, &id, b"other".to_vec(), None).await,
        409,
        "Conflict",
    );

    // Full download, then ranges.
    let resp = op
        .request(Method::GET, &format!("/v1/images/{id}/file"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["accept-ranges"], "bytes");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), data.as_slice());
    let resp = op
        .request(Method::GET, &format!("/v1/images/{id}/file"))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 1000-1999/{}", data.len())
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[1000..2000]);
    let resp = op
        .request(Method::GET, &format!("/v1/images/{id}/file"))
        .header("range", "bytes=2999000-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[2_999_000..]);
    let r = op
        .send(
            op.request(Method::GET, &format!("/v1/images/{id}/file"))
                .header("range", "bytes=5000000-"),
        )
        .await;
    assert_error(&r, 416, "RangeNotSatisfiable");

    // Disable and enable.
    let (_, img) = op
        .post(&format!("/v1/images/{id}/disable"), &json!({}))
        .await;
    assert_eq!(img["state"], "disabled");
    let (_, img) = op
        .post(&format!("/v1/images/{id}/enable"), &json!({}))
        .await;
    assert_eq!(img["state"], "active");

    // Identical content is stored once; the file goes with its last image.
    let twin = create(
        &op,
        &json!({"name": "twin", "version": "1", "type": "container", "os": "linux"}),
    )
    .await;
    assert_eq!(upload(&op, &twin, data.clone(), None).await.0, 200);
    assert_eq!(store_files(&h), 1);
    assert_eq!(op.delete(&format!("/v1/images/{id}")).await.0, 204);
    assert_eq!(store_files(&h), 1);
    assert_eq!(op.delete(&format!("/v1/images/{twin}")).await.0, 204);
    assert_eq!(store_files(&h), 0);
    assert_error(
        &op.get(&format!("/v1/images/{twin}")).await,
        404,
        "NotFound",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn image_visibility_follows_owner_public_and_nodes_fetch_only_granted_images() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = h.operator();
    let (_, alice) = op
        .post("/v1/accounts", &json!({"name": "alice", "role": "tenant"}))
        .await;
    let (_, tok) = op
        .post(
            "/v1/tokens",
            &json!({"account_id": alice["id"], "name": "t"}),
        )
        .await;
    let alice = Api::new(&h.rest_url, tok["secret"].as_str().unwrap());

    let private = create(&op, &manifest("private")).await;
    let mut public_m = manifest("public");
    public_m["public"] = json!(true);
    let public = create(&op, &public_m).await;
    assert_eq!(
        upload(&op, &public, b"public bits".to_vec(), None).await.0,
        200
    );
    assert_eq!(
        upload(&op, &private, b"private bits".to_vec(), None)
            .await
            .0,
        200
    );

    let (_, list) = alice.get("/v1/images").await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["public"]);
    assert_error(
        &alice.get(&format!("/v1/images/{private}")).await,
        404,
        "NotFound",
    );
    assert_error(
        &alice.get(&format!("/v1/images/{private}/file")).await,
        404,
        "NotFound",
    );
    assert_eq!(
        alice.get(&format!("/v1/images/{public}/file")).await.1,
        json!("public bits")
    );
    assert_error(
        &alice.delete(&format!("/v1/images/{public}")).await,
        403,
        "Forbidden",
    );
    assert_error(&alice.post("/v1/images", &public_m).await, 403, "Forbidden");
    // Her own image is hers.
    let mine = create(&alice, &manifest("mine")).await;
    assert_eq!(op.get(&format!("/v1/images/{mine}")).await.0, 200);

    // A node fetches over mutual TLS, and only what it was asked to ensure.
    let agent = Agent::start(&h.grpc_url, &h.join_token().await);
    let server = agent.server_id().await;
    let pem = std::fs::read_to_string(agent.state.path().join("node.pem")).unwrap();
    let node = nereid_tls::Identity::from_pem(&pem, &pem).unwrap();
    let ca = h.ca();
    let fetch =
        |identity: Option<std::sync::Arc<nereid_tls::Identity>>, ca: Vec<u8>, image: String| {
            let url = h.grpc_url.clone();
            async move {
                let config = nereid_tls::client_config(identity, nereid_tls::Trust::Ca(ca.into()));
                let ch = nereid_tls::Connector::new(config, nereid_tls::HEADNODE_NAME)
                    .unwrap()
                    .channel(&url, |e| e)
                    .unwrap();
                let mut stream = nereid_proto::v1::registry_client::RegistryClient::new(ch)
                    .fetch_image(nereid_proto::v1::FetchImageRequest {
                        image_id: image,
                        offset: 0,
                    })
                    .await?
                    .into_inner();
                let mut bytes = Vec::new();
                while let Some(m) = stream.message().await? {
                    bytes.extend(m.data);
                }
                Ok::<_, tonic::Status>(bytes)
            }
        };
    let ca_der = ca.cert_der.to_vec();
    for image in [&private, &public] {
        let err = fetch(Some(node.clone()), ca_der.clone(), image.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    }
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&h.database_url)
        .await
        .unwrap();
    sqlx::query("INSERT INTO image_grants (server_id, image_id) VALUES ($1::uuid, $2::uuid)")
        .bind(&server)
        .bind(&private)
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(
        fetch(Some(node.clone()), ca_der.clone(), private.clone())
            .await
            .unwrap(),
        b"private bits"
    );
    // Without a certificate: refused.
    let err = fetch(None, ca_der.clone(), private.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // A certificate (and CA) of another datacenter: the handshake fails.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = nereid_tls::Ca::load_or_create(elsewhere.path()).unwrap();
    let stranger = other.identity(&format!("{server}.node.nereid")).unwrap();
    let err = fetch(Some(stranger), ca_der.clone(), private.clone())
        .await
        .unwrap_err();
    // (TLS 1.3: the client learns of it as a broken connection.)
    assert!(nereid_tests::connection_failed(&err), "{err:?}");
    // The headnode refused the handshake.
    nereid_tests::wait_for_log(&h.proc, "TLS handshake refused", 1).await;
    // The REST API has no node credentials any more.
    assert_error(
        &Api::new(&h.rest_url, "nrdnode_bogus")
            .get(&format!("/v1/images/{private}/file"))
            .await,
        401,
        "Unauthorized",
    );
}

/// Sends the head of a PUT with a larger Content-Length than what follows.
fn partial_put(
    rest_url: &str,
    path: &str,
    token: &str,
    declared: usize,
    sent: usize,
) -> std::net::TcpStream {
    let addr = rest_url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n").unwrap();
    s.write_all(&vec![7u8; sent]).unwrap();
    s.flush().unwrap();
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_and_killed_uploads_leave_nothing_visible() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = h.operator();
    let id = create(&op, &manifest("cut")).await;
    let path = format!("/v1/images/{id}/file");

    // The client goes away halfway.
    let s = partial_put(
        &h.rest_url,
        &path,
        &h.operator_token(),
        10_000_000,
        1_000_000,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    nereid_tests::wait_for("the temp file to go", Duration::from_secs(10), || async {
        (temp_files(&h) == 0).then_some(())
    })
    .await;
    let (_, img) = op.get(&format!("/v1/images/{id}")).await;
    assert!(img["file"].is_null(), "{img}");
    assert_eq!(store_files(&h), 0);

    // The headnode is killed mid-upload: the restart removes the temp file.
    let s = partial_put(
        &h.rest_url,
        &path,
        &h.operator_token(),
        10_000_000,
        2_000_000,
    );
    nereid_tests::wait_for(
        "the upload to reach disk",
        Duration::from_secs(10),
        || async { (temp_files(&h) == 1).then_some(()) },
    )
    .await;
    let h = h.restart().await;
    drop(s);
    assert_eq!(temp_files(&h), 0);
    let (_, img) = h.operator().get(&format!("/v1/images/{id}")).await;
    assert!(img["file"].is_null(), "{img}");
    assert_eq!(img["state"], "unactivated");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_image_manifests_get_4xx_naming_the_field() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = h.operator();
    let cases = [
        (
            json!({"name": "x", "version": "1", "type": "floppy", "os": "linux"}),
            "type",
        ),
        (
            json!({"name": "a".repeat(10_000), "version": "1", "type": "vm", "os": "linux"}),
            "name",
        ),
        (
            json!({"name": "x", "version": "1", "type": "vm", "os": "linux", "flavour": 1}),
            "flavour",
        ),
        (
            json!({"name": "x", "version": "1", "type": "vm", "os": "linux", "requirements": {"min_ram_mb": 512, "max_ram_mb": 256}}),
            "requirements.min_ram_mb",
        ),
        (
            json!({"name": "x", "version": "1", "type": "vm", "os": "linux", "requirements": {"brand": "container"}}),
            "requirements.brand",
        ),
        (json!({"name": "x", "type": "vm", "os": "linux"}), "version"),
    ];
    for (body, field) in cases {
        let r = op.post("/v1/images", &body).await;
        assert_error(&r, 400, "InvalidArgument");
        assert!(
            r.1["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {}",
            r.1
        );
    }
    let id = create(&op, &manifest("dup")).await;
    assert_error(
        &op.post("/v1/images", &manifest("dup")).await,
        409,
        "Conflict",
    );
    assert_error(
        &upload(&op, &id, b"x".to_vec(), Some("nothex")).await,
        400,
        "InvalidArgument",
    );
}
