//! The sample images build offline from Debian packages and do what their
//! manifests promise: the busybox rootfs has an init, the tiny-vm boots under
//! QEMU, configures its NIC from the kernel command line, says NEREID-READY
//! on the serial console and powers off on an ACPI shutdown (QMP).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds an image with its script into a cache under target/ (the kernel
/// package is downloaded once per clone).
fn build(name: &str) -> PathBuf {
    let out = repo().join("target/nereid-images").join(name);
    let st = Command::new(repo().join(format!("images/{name}/build.sh")))
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "images/{name}/build.sh failed");
    out
}

#[test]
fn the_busybox_image_holds_a_static_busybox_with_an_init_that_reaps() {
    let out = build("busybox");
    let list = Command::new("tar")
        .arg("-tzvf")
        .arg(out.join("busybox.tar.gz"))
        .output()
        .unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    for needed in [
        "./bin/busybox",
        "./sbin/init -> /bin/busybox",
        "./etc/inittab",
        "./bin/sh -> /bin/busybox",
    ] {
        assert!(list.contains(needed), "{needed} missing from the archive");
    }
    let names = Command::new("tar")
        .arg("-tzf")
        .arg(out.join("busybox.tar.gz"))
        .output()
        .unwrap();
    for name in String::from_utf8(names.stdout).unwrap().lines() {
        assert!(
            name.starts_with("./") && !name.split('/').any(|c| c == ".."),
            "unsafe entry {name}"
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["type"], "container");
}

async fn qmp(sock: &Path, command: &str) {
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let greeting = lines.next_line().await.unwrap().unwrap();
    assert!(greeting.contains("QMP"), "{greeting}");
    for cmd in ["qmp_capabilities", command] {
        w.write_all(format!("{{\"execute\": \"{cmd}\"}}\n").as_bytes())
            .await
            .unwrap();
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.contains("\"return\"") {
                break;
            }
            assert!(!line.contains("\"error\""), "{cmd}: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tiny_vm_boots_configures_its_nic_and_powers_off_on_acpi_shutdown() {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !nereid_tests::must_not_skip(),
            "qemu-system-x86_64 is missing and CI must not skip"
        );
        eprintln!("skipped: qemu-system-x86_64 is not installed");
        return;
    }
    let out = build("tiny-vm");
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(out.join("tiny-vm.tar.gz"))
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let cmdline = std::fs::read_to_string(dir.path().join("cmdline")).unwrap();
    let serial = dir.path().join("serial.log");
    let sock = dir.path().join("qmp.sock");
    let mut qemu = tokio::process::Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-M",
            "pc",
            "-m",
            "128",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(dir.path().join("vmlinuz"))
        .arg("-initrd")
        .arg(dir.path().join("initramfs.gz"))
        .arg("-append")
        .arg(format!(
            "{} nereid.nic=52:54:00:12:34:56,10.9.9.5/24 nereid.gw=10.9.9.1 nereid.dns=10.9.9.53 nereid.hostname=tvm1",
            cmdline.trim()
        ))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        // User-mode networking with restrict=on: the guest has a NIC but can reach nothing.
        .args([
            "-nic",
            "user,model=virtio-net-pci,restrict=on,mac=52:54:00:12:34:56",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = nereid_tests::wait_for(
        "NEREID-READY on the serial console",
        Duration::from_secs(120),
        || {
            let serial = serial.clone();
            async move {
                std::fs::read_to_string(&serial)
                    .ok()
                    .filter(|s| s.contains("NEREID-READY"))
            }
        },
    )
    .await;
    assert!(log.contains("NEREID-READY tvm1"), "{log}");
    assert!(
        log.contains("NEREID-NET eth0 10.9.9.5/24 52:54:00:12:34:56"),
        "{log}"
    );
    assert!(!log.contains("NEREID-WARN"), "{log}");

    qmp(&sock, "system_powerdown").await;
    let status = tokio::time::timeout(Duration::from_secs(60), qemu.wait())
        .await
        .expect("the guest powers off")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        std::fs::read_to_string(&serial)
            .unwrap()
            .contains("Power down")
    );
}
