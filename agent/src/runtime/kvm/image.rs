//! VM image files: what EnsureImage checks before an image can boot (a Linux
//! kernel with its boot header, or a raw/qcow2 disk that `qemu-img` reads as
//! that format, with no backing file), and the disk sizing of an instance.
//!
//! It must never let QEMU guess a disk's format, and never accept a qcow2
//! that points at another file (a backing file could name any host path).

use std::path::Path;
use std::time::Duration;

use super::qemu::{self, Boot, DiskFormat};
use crate::cmd;

const T: Duration = Duration::from_secs(60);

/// Checks the boot files unpacked at `root`; the error says what is wrong.
pub async fn check(root: &Path) -> Result<(), String> {
    match qemu::boot_of(root) {
        None => Err(format!(
            "a VM image needs {} or {} (a bootable disk) or vmlinuz (a kernel, with initramfs.gz) at its root",
            DiskFormat::Raw.file_name(),
            DiskFormat::Qcow2.file_name()
        )),
        Some(Boot::Kernel { kernel, .. }) => check_kernel(&kernel),
        // Any bytes are a raw disk; it must at least boot.
        Some(Boot::Disk {
            path,
            format: DiskFormat::Raw,
        }) => check_boot_sector(&path),
        Some(Boot::Disk { path, format }) => check_info(&info(&path, format).await?, format),
    }
}

/// A bzImage of any kernel since 2.6.22: `HdrS` at 0x202, boot protocol
/// 2.06 or later at 0x206, loaded high (bit 0 of the load flags at 0x211).
fn check_kernel(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut head = [0u8; 0x212];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    if read.is_err() || &head[0x202..0x206] != b"HdrS" {
        return Err("vmlinuz is not a Linux kernel image (no HdrS boot header at 0x202)".into());
    }
    let version = u16::from_le_bytes([head[0x206], head[0x207]]);
    if version < 0x0206 || head[0x211] & 1 == 0 {
        return Err(format!(
            "vmlinuz is not a bzImage of boot protocol 2.06 or later (it says {}.{:02}): a kernel older than 2.6.22 or not a kernel",
            version >> 8,
            version & 0xff
        ));
    }
    Ok(())
}

/// A raw disk boots from its first sector, which ends in 0x55 0xAA.
fn check_boot_sector(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut sector = [0u8; 512];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut sector))
        .map_err(|e| format!("disk.raw has no boot sector: {e}"))?;
    if sector[510..] == [0x55, 0xAA] {
        Ok(())
    } else {
        Err("disk.raw is not a bootable disk (its first sector does not end in 0x55AA)".into())
    }
}

async fn info(path: &Path, format: DiskFormat) -> Result<serde_json::Value, String> {
    let p = path.display().to_string();
    let out = cmd::run(
        "qemu-img",
        &["info", "--output=json", "-f", format.as_str(), &p],
        T,
    )
    .await
    .map_err(|e| match e {
        cmd::CmdError::Failed { stderr, .. } => format!(
            "{} is not a valid {} image: {}",
            format.file_name(),
            format.as_str(),
            stderr.trim()
        ),
        other => other.to_string(),
    })?;
    serde_json::from_str(&out)
        .map_err(|e| format!("qemu-img info printed something unexpected: {e}"))
}

/// What `qemu-img info` must say of an image's disk.
fn check_info(info: &serde_json::Value, format: DiskFormat) -> Result<(), String> {
    if info["format"].as_str() != Some(format.as_str()) {
        return Err(format!(
            "{} is read as {:?}, not {}",
            format.file_name(),
            info["format"],
            format.as_str()
        ));
    }
    if info.get("backing-filename").is_some() || info.get("full-backing-filename").is_some() {
        return Err(format!(
            "{} has a backing file; images must be self-contained",
            format.file_name()
        ));
    }
    match info["virtual-size"].as_u64() {
        Some(n) if n > 0 => Ok(()),
        _ => Err(format!("{} has no size", format.file_name())),
    }
}

/// The size the guest sees.
pub async fn virtual_size(path: &Path, format: DiskFormat) -> Result<u64, String> {
    match format {
        DiskFormat::Raw => std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| format!("{}: {e}", path.display())),
        DiskFormat::Qcow2 => info(path, format).await?["virtual-size"]
            .as_u64()
            .ok_or_else(|| "qemu-img info gave no virtual-size".to_string()),
    }
}

/// Grows the disk to `bytes` (sparse: nothing is written).
pub async fn grow(path: &Path, format: DiskFormat, bytes: u64) -> Result<(), String> {
    match format {
        DiskFormat::Raw => std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| format!("growing {}: {e}", path.display())),
        DiskFormat::Qcow2 => {
            let p = path.display().to_string();
            cmd::run(
                "qemu-img",
                &["resize", "-f", "qcow2", &p, &bytes.to_string()],
                T,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn qemu_img_info_must_name_the_format_and_no_backing_file() {
        let ok = json!({"format": "qcow2", "virtual-size": 1048576});
        assert!(check_info(&ok, DiskFormat::Qcow2).is_ok());
        let wrong = json!({"format": "raw", "virtual-size": 1});
        assert!(
            check_info(&wrong, DiskFormat::Qcow2)
                .unwrap_err()
                .contains("not qcow2")
        );
        let backed =
            json!({"format": "qcow2", "virtual-size": 1, "backing-filename": "/etc/shadow"});
        assert!(
            check_info(&backed, DiskFormat::Qcow2)
                .unwrap_err()
                .contains("backing file")
        );
    }

    #[test]
    fn kernels_need_their_boot_header_and_raw_disks_their_boot_signature() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("vmlinuz");
        let mut bytes = vec![0u8; 0x300];
        std::fs::write(&k, &bytes).unwrap();
        assert!(check_kernel(&k).unwrap_err().contains("HdrS"));
        bytes[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&k, &bytes).unwrap();
        assert!(check_kernel(&k).unwrap_err().contains("2.06"));
        bytes[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        bytes[0x211] = 1;
        std::fs::write(&k, &bytes).unwrap();
        assert!(check_kernel(&k).is_ok());
        let disk = d.path().join("disk.raw");
        std::fs::write(&disk, vec![0u8; 512]).unwrap();
        assert!(check_boot_sector(&disk).unwrap_err().contains("0x55AA"));
        let mut mbr = vec![0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        std::fs::write(&disk, &mbr).unwrap();
        assert!(check_boot_sector(&disk).is_ok());
    }
}
