//! Capability probes: each one tries the real thing (runs the tool, creates a
//! link in a throwaway network namespace, boots a guest under KVM) rather
//! than trusting that a binary or a device file exists.
//!
//! Probes run in namespaces that die with the probe process, so they can
//! leave nothing behind on the host.

use std::time::Duration;

use nereid_proto::v1::{Capabilities, Capability};

use crate::cmd;

fn yes(detail: impl Into<String>) -> Option<Capability> {
    Some(Capability {
        available: true,
        detail: detail.into(),
    })
}

fn no(detail: impl Into<String>) -> Option<Capability> {
    Some(Capability {
        available: false,
        detail: detail.into(),
    })
}

const T: Duration = Duration::from_secs(15);

/// The host's capabilities, probed once per agent process (the KVM probe
/// boots a guest and takes seconds).
pub async fn capabilities() -> Capabilities {
    static PROBED: tokio::sync::OnceCell<Capabilities> = tokio::sync::OnceCell::const_new();
    PROBED.get_or_init(probe_all).await.clone()
}

async fn probe_all() -> Capabilities {
    let (zfs, runc, qemu, kvm, vxlan, vlan, nftables, zvol) = tokio::join!(
        zfs(),
        version("runc", &["--version"]),
        version("qemu-system-x86_64", &["--version"]),
        kvm(),
        vxlan(),
        vlan(),
        nftables(),
        zvol()
    );
    Capabilities {
        zfs,
        runc,
        qemu,
        kvm,
        vxlan,
        vlan,
        nftables,
        zvol,
    }
}

async fn version(program: &str, args: &[&str]) -> Option<Capability> {
    match cmd::run(program, args, T).await {
        Ok(out) => yes(out.lines().next().unwrap_or("").trim()),
        Err(e) if e.is_not_found() => no(format!("{program} is not installed")),
        Err(e) => no(e.to_string()),
    }
}

/// ZFS volumes come with OpenZFS's kernel module; zfs-fuse has none (its
/// `zfs create -V` fails). VM disks are files on a dataset without them.
async fn zvol() -> Option<Capability> {
    if std::path::Path::new("/var/run/zfs/zfs_socket").exists() {
        return no("zfs-fuse has no ZFS volumes; VM disks are files on their dataset");
    }
    if std::path::Path::new("/sys/module/zfs").exists() {
        yes("the OpenZFS kernel module provides ZFS volumes")
    } else {
        no("no OpenZFS kernel module")
    }
}

async fn zfs() -> Option<Capability> {
    match cmd::run("zpool", &["list", "-H", "-o", "name"], T).await {
        Ok(_) => yes(
            if std::path::Path::new("/var/run/zfs/zfs_socket").exists() {
                "zfs-fuse"
            } else {
                "zfs"
            },
        ),
        Err(e) if e.is_not_found() => no("zpool is not installed"),
        Err(e) => no(e.to_string()),
    }
}

/// Runs a shell snippet in a new, throwaway network namespace.
async fn in_throwaway_netns(script: &str) -> Result<String, cmd::CmdError> {
    cmd::run("unshare", &["--net", "sh", "-c", script], T).await
}

async fn vxlan() -> Option<Capability> {
    match in_throwaway_netns(
        "ip link add nrdprobe type vxlan id 42 dstport 4789 && ip link set nrdprobe up",
    )
    .await
    {
        Ok(_) => yes("vxlan links can be created"),
        Err(e) => no(e.to_string()),
    }
}

async fn vlan() -> Option<Capability> {
    match in_throwaway_netns("ip link add name nrdpa type veth peer name nrdpb && ip link add link nrdpa name nrdpa.5 type vlan id 5").await {
        Ok(_) => yes("802.1Q links can be created"),
        Err(e) => no(e.to_string()),
    }
}

async fn nftables() -> Option<Capability> {
    match in_throwaway_netns("nft add table inet nrdprobe && nft list tables").await {
        Ok(_) => yes("nft tables can be created"),
        Err(e) if e.is_not_found() => no("unshare is not installed"),
        Err(e) => no(e.to_string()),
    }
}

/// A 512-byte boot sector that writes 0x4b to QEMU's isa-debug-exit port, so
/// QEMU exits with status (0x4b << 1) | 1 = 151 once a guest really ran.
fn boot_sector() -> Vec<u8> {
    let mut s = vec![0xB0, 0x4B, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD];
    s.resize(510, 0);
    s.extend_from_slice(&[0x55, 0xAA]);
    s
}

/// KVM works when a guest actually runs under `-accel kvm` (a device file
/// alone is not enough: nested hosts can expose /dev/kvm that cannot run guests).
async fn kvm() -> Option<Capability> {
    if !std::path::Path::new("/dev/kvm").exists() {
        return no("/dev/kvm does not exist");
    }
    // The boot sector lives in a memfd the child inherits: nothing on disk,
    // so a probe killed half-way leaves nothing behind.
    let fd = match nix::sys::memfd::memfd_create(
        c"nereid-kvm-probe",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    ) {
        Ok(fd) => fd,
        Err(e) => return no(format!("memfd_create: {e}")),
    };
    let mut file = std::fs::File::from(fd);
    if let Err(e) = std::io::Write::write_all(&mut file, &boot_sector()) {
        return no(format!("cannot write the probe image: {e}"));
    }
    let drive = format!(
        "file=/proc/{}/fd/{},format=raw,if=ide",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&file)
    );
    let args = [
        "-accel",
        "kvm",
        "-machine",
        "pc",
        "-m",
        "16",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-drive",
        drive.as_str(),
    ];
    let result = cmd::run("qemu-system-x86_64", &args, Duration::from_secs(20)).await;
    drop(file);
    match result {
        // Nested hosts (PVM) run a real-mode boot sector but not stock Linux
        // guests; they give themselves away by not offering the baseline vCPU.
        Err(cmd::CmdError::Failed { status, stderr, .. })
            if status.contains("151") && stderr.contains("doesn't support requested feature") =>
        {
            no(format!(
                "a test guest ran, but this KVM cannot offer the baseline vCPU, so stock guests hang (use TCG): {}",
                stderr.lines().next().unwrap_or("")
            ))
        }
        Err(cmd::CmdError::Failed { status, .. }) if status.contains("151") => {
            yes("a test guest ran under -accel kvm")
        }
        Err(e) if e.is_not_found() => {
            no("/dev/kvm exists but qemu-system-x86_64 is not installed to try it")
        }
        Err(e) => no(format!("a test guest did not run under -accel kvm: {e}")),
        Ok(_) => no("the test guest under -accel kvm exited without reaching its exit port"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kvm_probe_boot_sector_is_a_valid_mbr() {
        let s = super::boot_sector();
        assert_eq!(s.len(), 512);
        assert_eq!(&s[510..], &[0x55, 0xAA]);
    }
}
