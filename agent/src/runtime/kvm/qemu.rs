//! The `qemu-system-x86_64` command line of a VM, and the guest-facing
//! configuration it carries (kernel command line, NoCloud seed files). Pure
//! functions of the spec and the node's choices, so they are unit-tested
//! without QEMU.

use std::path::{Path, PathBuf};

use nereid_api::Accelerator;

use crate::spec::{InstanceSpec, Nic};

pub const QEMU: &str = "qemu-system-x86_64";

/// How the VM boots, read from its image's files.
#[derive(Debug, Clone, PartialEq)]
pub enum Boot {
    /// A kernel and initramfs; the image's `cmdline` file is the base of the
    /// kernel command line.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// A bootable disk, booted by the firmware.
    Disk { path: PathBuf, format: DiskFormat },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    /// The image file that holds a disk of this format.
    pub fn file_name(&self) -> &'static str {
        match self {
            DiskFormat::Raw => "disk.raw",
            DiskFormat::Qcow2 => "disk.qcow2",
        }
    }
}

/// The files of a VM image (whatever else its dataset holds, the console
/// logs and the seed, is the node's).
pub const IMAGE_FILES: &[&str] = &[
    "disk.raw",
    "disk.qcow2",
    "vmlinuz",
    "initramfs.gz",
    "cmdline",
];

/// Where a VM image's boot files are, relative to its root.
pub fn boot_of(root: &Path) -> Option<Boot> {
    for f in [DiskFormat::Raw, DiskFormat::Qcow2] {
        let path = root.join(f.file_name());
        if path.is_file() {
            return Some(Boot::Disk { path, format: f });
        }
    }
    let kernel = root.join("vmlinuz");
    if kernel.is_file() {
        let initrd = root.join("initramfs.gz");
        let cmdline = std::fs::read_to_string(root.join("cmdline")).unwrap_or_default();
        return Some(Boot::Kernel {
            kernel,
            initrd: initrd.is_file().then_some(initrd),
            cmdline: cmdline.trim().to_string(),
        });
    }
    None
}

/// Everything a launch needs besides the spec.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub spec: &'a InstanceSpec,
    pub accelerator: Accelerator,
    pub boot: &'a Boot,
    /// Holds the QMP socket and QEMU's pid file.
    pub run_dir: &'a Path,
    /// A directory served to the guest as a read-only FAT disk labelled
    /// `cidata` (cloud-init's NoCloud seed); disk images only.
    pub seed: Option<&'a Path>,
    /// The tap device of each NIC, in order.
    pub taps: &'a [String],
    /// The node's metadata socket for this VM: QEMU connects to it (and
    /// again after an agent restart) and carries it to the guest as the
    /// virtio-serial port `org.smartos.metadata`.
    pub metadata_socket: &'a Path,
}

/// The name of the guest's metadata port (as SmartOS names it).
pub const METADATA_PORT: &str = "org.smartos.metadata";

pub fn qmp_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("qmp.sock")
}

pub fn pid_file(run_dir: &Path) -> PathBuf {
    run_dir.join("qemu.pid")
}

/// The guest's network configuration on the kernel command line, read by
/// the tiny-vm image's init: `nereid.nic=<mac>,<addr>/<prefix>` per NIC,
/// `nereid.gw=`, `nereid.dns=a,b`, `nereid.hostname=`.
pub fn kernel_net_args(spec: &InstanceSpec) -> String {
    let mut args = vec![format!("nereid.hostname={}", spec.hostname)];
    for n in &spec.nics {
        args.push(format!("nereid.nic={},{}/{}", n.mac, n.ip, n.prefix_len));
    }
    if let Some(primary) = spec.nics.first() {
        if let Some(gw) = primary.gateway {
            args.push(format!("nereid.gw={gw}"));
        }
        if !primary.resolvers.is_empty() {
            let dns: Vec<String> = primary.resolvers.iter().map(|r| r.to_string()).collect();
            args.push(format!("nereid.dns={}", dns.join(",")));
        }
    }
    args.join(" ")
}

/// A path inside a QEMU option list, where `,` separates options (`,,` is a comma).
fn esc(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The arguments of `qemu-system-x86_64` (without the program).
pub fn args(l: &Launch) -> Vec<String> {
    let s = l.spec;
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|i| i.to_string()));
    push(&["-name", &s.hostname]);
    push(&["-uuid", &s.id]);
    push(&["-machine", "pc"]);
    match l.accelerator {
        Accelerator::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accelerator::Tcg => push(&["-accel", "tcg"]),
    }
    push(&["-smp", &s.vcpus.max(1).to_string()]);
    push(&["-m", &format!("{}M", s.memory_mb)]);
    // Nothing the spec does not name: no default NIC, display or drives.
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    // QEMU may not spawn, chroot to escape or change privileges.
    push(&[
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    // The serial console is QEMU's stdout, which the monitor logs.
    push(&[
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
    ]);
    let qmp = qmp_socket(l.run_dir);
    push(&["-qmp", &format!("unix:{},server=on,wait=off", esc(&qmp))]);
    push(&["-pidfile", &pid_file(l.run_dir).display().to_string()]);
    match l.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            push(&["-kernel", &kernel.display().to_string()]);
            if let Some(i) = initrd {
                push(&["-initrd", &i.display().to_string()]);
            }
            let mut line = cmdline.clone();
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&kernel_net_args(s));
            push(&["-append", &line]);
        }
        Boot::Disk { path, format } => {
            // The format is always named: QEMU must never guess it from the
            // guest's bytes.
            push(&[
                "-drive",
                &format!(
                    "file={},format={},if=virtio,cache=writeback,discard=unmap",
                    esc(path),
                    format.as_str()
                ),
            ]);
        }
    }
    if let Some(seed) = l.seed {
        push(&[
            "-drive",
            &format!(
                "file.driver=vvfat,file.dir={},file.label=cidata,file.floppy=off,format=raw,if=virtio,readonly=on",
                esc(seed)
            ),
        ]);
    }
    push(&[
        "-chardev",
        &format!(
            "socket,id=mdata,path={},reconnect=1",
            esc(l.metadata_socket)
        ),
        "-device",
        "virtio-serial-pci,id=mdser",
        "-device",
        &format!("virtserialport,bus=mdser.0,chardev=mdata,name={METADATA_PORT}"),
    ]);
    for (i, (nic, tap)) in s.nics.iter().zip(l.taps).enumerate() {
        push(&[
            "-netdev",
            &format!("tap,id=net{i},ifname={tap},script=no,downscript=no"),
        ]);
        push(&[
            "-device",
            &format!("virtio-net-pci,netdev=net{i},mac={}", nic.mac),
        ]);
    }
    a
}

/// The files of a NoCloud seed (cloud-init's convention): `meta-data` (with
/// `public-keys` from the instance's `root_authorized_keys`), `user-data`
/// (its metadata's `user-data`, else its `user-script`, else an empty
/// cloud-config) and `network-config` (version 1, static addresses; each
/// NIC matched by its MAC).
pub fn nocloud_seed(
    spec: &InstanceSpec,
    customer: &std::collections::BTreeMap<String, String>,
) -> Vec<(&'static str, String)> {
    let mut meta = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        spec.id, spec.hostname
    );
    let keys: Vec<&str> = customer
        .get("root_authorized_keys")
        .map(|k| k.lines().filter(|l| !l.trim().is_empty()).collect())
        .unwrap_or_default();
    if !keys.is_empty() {
        meta.push_str("public-keys:\n");
        for k in keys {
            // A JSON string is a YAML scalar that needs no further quoting.
            meta.push_str(&format!("  - {}\n", serde_json::Value::from(k)));
        }
    }
    let user = customer
        .get("user-data")
        .or_else(|| customer.get("user-script"))
        .cloned()
        .unwrap_or_else(|| "#cloud-config\n{}\n".to_string());
    let mut net = String::from("version: 1\nconfig:\n");
    for (i, n) in spec.nics.iter().enumerate() {
        net.push_str(&nic_config(i, n, i == 0));
    }
    vec![
        ("meta-data", meta),
        ("user-data", user),
        ("network-config", net),
    ]
}

fn nic_config(idx: usize, n: &Nic, primary: bool) -> String {
    let mut s = format!(
        "  - type: physical\n    name: eth{idx}\n    mac_address: \"{}\"\n    mtu: {}\n    subnets:\n      - type: static\n        address: {}/{}\n",
        n.mac, n.mtu, n.ip, n.prefix_len
    );
    if primary {
        if let Some(gw) = n.gateway {
            s.push_str(&format!("        gateway: {gw}\n"));
        }
        if !n.resolvers.is_empty() {
            let dns: Vec<String> = n.resolvers.iter().map(|r| r.to_string()).collect();
            s.push_str(&format!("        dns_nameservers: [{}]\n", dns.join(", ")));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_api::Brand;

    fn joined(a: &[String]) -> String {
        a.join(" ")
    }

    #[test]
    fn a_kernel_vm_gets_its_sizes_accelerator_nics_and_network_on_the_command_line() {
        let spec = crate::spec::tests::spec(Brand::Kvm);
        let boot = Boot::Kernel {
            kernel: "/d/vmlinuz".into(),
            initrd: Some("/d/initramfs.gz".into()),
            cmdline: "console=ttyS0".into(),
        };
        let taps = vec!["nt1a2b3c4d5e6f0".to_string()];
        let a = args(&Launch {
            spec: &spec,
            accelerator: Accelerator::Tcg,
            boot: &boot,
            run_dir: Path::new("/run/vm"),
            seed: None,
            taps: &taps,
            metadata_socket: Path::new("/s/md.sock"),
        });
        let line = joined(&a);
        assert!(line.contains("-chardev socket,id=mdata,path=/s/md.sock,reconnect=1"));
        assert!(
            line.contains("virtserialport,bus=mdser.0,chardev=mdata,name=org.smartos.metadata")
        );
        assert!(line.contains("-accel tcg"), "{line}");
        assert!(!line.contains("-cpu host"));
        assert!(line.contains("-smp 2 -m 128M"));
        assert!(line.contains("-qmp unix:/run/vm/qmp.sock,server=on,wait=off"));
        assert!(line.contains("-pidfile /run/vm/qemu.pid"));
        assert!(line.contains("-kernel /d/vmlinuz -initrd /d/initramfs.gz"));
        let append = &a[a.iter().position(|x| x == "-append").unwrap() + 1];
        assert_eq!(
            append,
            "console=ttyS0 nereid.hostname=web1 nereid.nic=92:00:00:00:00:01,10.0.0.5/24 nereid.gw=10.0.0.1 nereid.dns=10.0.0.53"
        );
        assert!(
            line.contains("-netdev tap,id=net0,ifname=nt1a2b3c4d5e6f0,script=no,downscript=no")
        );
        assert!(line.contains("-device virtio-net-pci,netdev=net0,mac=92:00:00:00:00:01"));
        assert!(line.contains("-nodefaults"));
        assert!(!line.contains("vvfat"));
        assert_eq!(esc(Path::new("/a,b/c")), "/a,,b/c");
    }

    #[test]
    fn a_disk_vm_names_its_format_and_gets_a_cidata_seed_under_kvm() {
        let spec = crate::spec::tests::spec(Brand::Kvm);
        let boot = Boot::Disk {
            path: "/d/disk.qcow2".into(),
            format: DiskFormat::Qcow2,
        };
        let a = args(&Launch {
            spec: &spec,
            accelerator: Accelerator::Kvm,
            boot: &boot,
            run_dir: Path::new("/r"),
            seed: Some(Path::new("/d/seed")),
            taps: &["t0".to_string()],
            metadata_socket: Path::new("/s/md.sock"),
        });
        let line = joined(&a);
        assert!(line.contains("-accel kvm -cpu host"));
        assert!(line.contains("-drive file=/d/disk.qcow2,format=qcow2,if=virtio"));
        assert!(line.contains("file.driver=vvfat,file.dir=/d/seed,file.label=cidata"));
        assert!(!line.contains("-kernel"));
    }

    #[test]
    fn the_nocloud_seed_names_the_instance_and_its_static_addresses() {
        let spec = crate::spec::tests::spec(Brand::Kvm);
        let files = nocloud_seed(&spec, &Default::default());
        let get = |n: &str| files.iter().find(|(f, _)| *f == n).unwrap().1.clone();
        assert!(get("meta-data").contains(&format!("instance-id: {}", spec.id)));
        assert!(get("meta-data").contains("local-hostname: web1"));
        let net = get("network-config");
        assert!(net.starts_with("version: 1\n"));
        assert!(net.contains("mac_address: \"92:00:00:00:00:01\""));
        assert!(net.contains("address: 10.0.0.5/24"));
        assert!(net.contains("gateway: 10.0.0.1"));
        assert!(net.contains("dns_nameservers: [10.0.0.53]"));
        assert!(get("user-data").starts_with("#cloud-config"));
        assert!(!get("meta-data").contains("public-keys"));

        // The instance's metadata: its keys, and its user-data over its user-script.
        let mut md = std::collections::BTreeMap::new();
        md.insert(
            "root_authorized_keys".to_string(),
            "ssh-ed25519 AAAA a@b\nssh-rsa BBBB c\"d".to_string(),
        );
        md.insert(
            "user-script".to_string(),
            "#!/bin/sh\necho hi\n".to_string(),
        );
        let files = nocloud_seed(&spec, &md);
        let get = |n: &str| files.iter().find(|(f, _)| *f == n).unwrap().1.clone();
        assert!(
            get("meta-data").ends_with(
                "public-keys:\n  - \"ssh-ed25519 AAAA a@b\"\n  - \"ssh-rsa BBBB c\\\"d\"\n"
            ),
            "{}",
            get("meta-data")
        );
        assert_eq!(get("user-data"), "#!/bin/sh\necho hi\n");
        md.insert(
            "user-data".to_string(),
            "#cloud-config\nruncmd: [true]\n".to_string(),
        );
        let files = nocloud_seed(&spec, &md);
        assert_eq!(
            files.iter().find(|(f, _)| *f == "user-data").unwrap().1,
            "#cloud-config\nruncmd: [true]\n"
        );
    }

    #[test]
    fn boot_files_are_found_by_name_disks_first() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(boot_of(d.path()), None);
        std::fs::write(d.path().join("vmlinuz"), b"k").unwrap();
        std::fs::write(d.path().join("cmdline"), b"console=ttyS0\n").unwrap();
        match boot_of(d.path()).unwrap() {
            Boot::Kernel {
                initrd, cmdline, ..
            } => {
                assert_eq!(initrd, None);
                assert_eq!(cmdline, "console=ttyS0");
            }
            b => panic!("{b:?}"),
        }
        std::fs::write(d.path().join("disk.raw"), b"").unwrap();
        assert!(matches!(
            boot_of(d.path()),
            Some(Boot::Disk {
                format: DiskFormat::Raw,
                ..
            })
        ));
    }
}
