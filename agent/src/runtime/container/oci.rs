//! The OCI runtime configuration (config.json) of a container instance, built
//! from its spec. A pure function, so it is unit-tested without runc.

use serde_json::{Value, json};

use crate::spec::InstanceSpec;

/// Docker's default capabilities: nothing more.
pub(super) const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// config.json for `spec`, with its root filesystem at `rootfs`, its network
/// namespace at `netns` and the user namespace that owns it at `userns` (its
/// ids 0..65536 are the host's `id_base..`, which never holds host root; see
/// `userns`).
/// `memsw` says whether the host accounts swap; `resolv_conf` is a file
/// bind-mounted read-only over /etc/resolv.conf. The container runs under
/// the default seccomp profile, with no new privileges and Docker's default
/// capabilities.
pub fn config(
    spec: &InstanceSpec,
    rootfs: &str,
    netns: &str,
    userns: &str,
    id_base: u32,
    memsw: bool,
    resolv_conf: Option<&str>,
) -> Value {
    // The user namespace exists already with this mapping; runc wants it
    // told as well.
    let ids = json!([{ "containerID": 0, "hostID": id_base, "size": crate::idmap::CONTAINER_IDS }]);
    let memory = spec.memory_mb * 1024 * 1024;
    let mut mem = json!({ "limit": memory });
    if memsw {
        mem["swap"] = json!(memory + spec.swap_mb * 1024 * 1024);
    }
    let mut resources = json!({
        "devices": [{ "allow": false, "access": "rwm" }],
        "memory": mem,
        "pids": { "limit": spec.pids_limit },
    });
    if spec.cpu_cap > 0 {
        resources["cpu"] = json!({ "quota": u64::from(spec.cpu_cap) * 1000, "period": 100_000 });
    }
    let mut config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["/sbin/init"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm", "container=nereid"],
            "cwd": "/",
            "capabilities": { "bounding": CAPS, "effective": CAPS, "permitted": CAPS },
            "noNewPrivileges": true
        },
        "root": { "path": rootfs, "readonly": false },
        "hostname": spec.hostname,
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"] }
        ],
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("/nereid/{}", spec.id),
            "namespaces": [
                { "type": "pid" },
                { "type": "network", "path": netns },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "mount" },
                { "type": "user", "path": userns }
            ],
            "uidMappings": ids,
            "gidMappings": ids,
            "seccomp": super::seccomp::profile(CAPS),
            "maskedPaths": ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                            "/sys/firmware", "/sys/devices/virtual/powercap"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    if let Some(src) = resolv_conf {
        bind_read_only(&mut config, src, "/etc/resolv.conf");
    }
    config
}

/// `runc update` flags that set a running container's limits to `spec`'s
/// (the same values `config` writes).
pub fn update_flags(spec: &InstanceSpec, memsw: bool) -> Vec<String> {
    let memory = spec.memory_mb * 1024 * 1024;
    let mut f = vec![
        "--memory".to_string(),
        memory.to_string(),
        "--pids-limit".into(),
        spec.pids_limit.to_string(),
        "--cpu-period".into(),
        "100000".into(),
        "--cpu-quota".into(),
        if spec.cpu_cap > 0 {
            (u64::from(spec.cpu_cap) * 1000).to_string()
        } else {
            "-1".into()
        },
    ];
    if memsw {
        f.push("--memory-swap".into());
        f.push((memory + spec.swap_mb * 1024 * 1024).to_string());
    }
    f
}

/// Adds a read-only bind mount of the host's `source` at `destination`.
pub fn bind_read_only(config: &mut Value, source: &str, destination: &str) {
    if let Some(mounts) = config["mounts"].as_array_mut() {
        mounts.push(
            json!({ "destination": destination, "type": "bind", "source": source,
                            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"] }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            id: "0e4f".into(),
            nics: vec![],
            ..crate::spec::tests::spec(nereid_api::Brand::Container)
        }
    }

    #[test]
    fn limits_hostname_root_and_netns_come_from_the_spec() {
        let c = config(
            &spec(),
            "/pool/instances/0e4f",
            "/run/netns/nrd-0e4f",
            "/run/nereid/userns/0e4f",
            1_000_000_000,
            true,
            None,
        );
        assert_eq!(c["hostname"], "web1");
        assert_eq!(c["root"]["path"], "/pool/instances/0e4f");
        let r = &c["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 128 * 1024 * 1024);
        assert_eq!(r["memory"]["swap"], 192 * 1024 * 1024);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["pids"]["limit"], 100);
        assert_eq!(c["linux"]["namespaces"][1]["path"], "/run/netns/nrd-0e4f");
        assert_eq!(c["linux"]["cgroupsPath"], "/nereid/0e4f");
    }

    #[test]
    fn no_swap_accounting_means_no_swap_limit_and_no_cap_means_no_cpu_quota() {
        let mut s = spec();
        s.cpu_cap = 0;
        let c = config(
            &s,
            "/r",
            "/n",
            "/u",
            1_000_000_000,
            false,
            Some("/b/resolv.conf"),
        );
        assert!(c["linux"]["resources"]["memory"].get("swap").is_none());
        assert!(c["linux"]["resources"].get("cpu").is_none());
        let last = c["mounts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["destination"], "/etc/resolv.conf");
        assert_eq!(last["source"], "/b/resolv.conf");
        assert!(last["options"].as_array().unwrap().contains(&json!("ro")));
    }

    #[test]
    fn containers_run_unprivileged_in_their_id_range_under_seccomp() {
        let c = config(
            &spec(),
            "/r",
            "/n",
            "/run/nereid/userns/x",
            1_000_065_536,
            true,
            None,
        );
        let l = &c["linux"];
        let ns = l["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "user", "path": "/run/nereid/userns/x"})));
        assert!(ns.contains(&json!({"type": "network", "path": "/n"})));
        for m in ["uidMappings", "gidMappings"] {
            assert_eq!(
                l[m],
                json!([{"containerID": 0, "hostID": 1_000_065_536u32, "size": 65536}])
            );
        }
        assert_eq!(l["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(c["process"]["noNewPrivileges"], true);
        let caps = c["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(!caps.contains(&json!("CAP_SYS_ADMIN")) && caps.len() == CAPS.len());
        assert!(
            l["readonlyPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/sys"))
        );
        assert!(
            l["maskedPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/kcore"))
        );
    }
}
