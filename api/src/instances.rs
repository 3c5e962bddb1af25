//! Instances: containers (and later VMs) of a tenant, placed on a server.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AccountId, ImageId, InstanceId, JobId, NetworkId, PackageId, ServerId};

crate::named_enum! {
    /// What runs an instance: a container (runc) or a virtual machine (QEMU).
    pub enum Brand {
        Container = "container",
        Kvm = "kvm",
    }
}

impl Brand {
    /// The type of image an instance of this brand boots.
    pub fn image_type(&self) -> crate::ImageType {
        match self {
            Brand::Container => crate::ImageType::Container,
            Brand::Kvm => crate::ImageType::Vm,
        }
    }

    /// The host capability (as a node's sysinfo names it) the brand runs on.
    pub fn capability(&self) -> &'static str {
        match self {
            Brand::Container => "runc",
            Brand::Kvm => "qemu",
        }
    }

    /// Whether instances hold vCPUs against the server's CPUs (VMs do;
    /// containers share the CPUs under their cpu_cap).
    pub fn holds_vcpus(&self) -> bool {
        matches!(self, Brand::Kvm)
    }
}

crate::named_enum! {
    /// How a VM's CPUs are run: hardware virtualization, or QEMU's emulator
    /// where the host cannot run guests under KVM.
    pub enum Accelerator {
        Kvm = "kvm",
        Tcg = "tcg",
    }
}

crate::named_enum! {
    /// Where an instance is in its life.
    pub enum InstanceState {
        Provisioning = "provisioning",
        Running = "running",
        Stopping = "stopping",
        Stopped = "stopped",
        Failed = "failed",
        Deleting = "deleting",
        Deleted = "deleted",
        /// Its server stopped reporting, or stopped reporting this instance.
        Unknown = "unknown",
    }
}

/// An address of a network held by an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InstanceNic {
    pub network_id: NetworkId,
    pub ip: String,
    /// The prefix length of the network's subnet.
    pub prefix_len: u8,
    pub gateway: Option<String>,
    pub mac: String,
    pub primary: bool,
    /// Set by an operator at create.
    #[serde(default)]
    pub options: NicOptions,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: InstanceId,
    pub owner: AccountId,
    pub alias: String,
    pub brand: Brand,
    /// VMs: the accelerator the node runs it under (null until it first ran,
    /// and for containers).
    pub accelerator: Option<Accelerator>,
    /// Null only for a deleted instance whose image was deleted since.
    pub image_id: Option<ImageId>,
    pub package_id: PackageId,
    /// Null until the scheduler placed it (or once its server was deleted).
    pub server_id: Option<ServerId>,
    pub state: InstanceState,
    pub memory_mb: u64,
    pub disk_mb: u64,
    /// The virtual CPUs it holds on its server (VMs); containers share the
    /// server's CPUs under their package's cpu_cap and hold none.
    pub vcpus: u32,
    /// The networks asked for, in order; `nics` fills in as they are allocated.
    pub networks: Vec<NetworkId>,
    pub nics: Vec<InstanceNic>,
    #[schema(value_type = Object)]
    pub tags: BTreeMap<String, serde_json::Value>,
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<String, String>,
    pub firewall_enabled: bool,
    /// DELETE is refused (409) while it is set.
    pub deletion_protection: bool,
    /// A container in a host uid/gid range of its own.
    pub isolated_ids: bool,
    /// Why the instance failed, when it did.
    pub error: Option<String>,
    /// The job working on it now, or the last one.
    pub job_id: Option<JobId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/instances`. `image` and `package` take an id or a name
/// (a package name picks its newest active version).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceCreate {
    /// 1-63 of [a-zA-Z0-9-], unique among the owner's instances; also the
    /// host name. Default: the first 8 characters of the id.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")]
    pub alias: Option<String>,
    pub image: String,
    pub package: String,
    /// Network ids or names; the first is the primary NIC.
    #[serde(default)]
    #[schema(max_items = 8)]
    pub networks: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub tags: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub firewall_enabled: bool,
    /// Refuse DELETE until it is turned off (`disable-deletion-protection`).
    #[serde(default)]
    pub deletion_protection: bool,
    /// Containers: run in a host uid/gid range of its own rather than the
    /// node's range shared by containers (its files are shifted into it).
    #[serde(default)]
    pub isolated_ids: bool,
    /// Placement rules: `instance==web*` / `instance!=db1` (hard) or
    /// `instance==~web*` / `instance!=~db*` (soft), matched against the
    /// aliases of the owner's instances; `server==<id>` pins a server.
    #[serde(default)]
    pub affinity: Vec<String>,
    /// Operators only: create the instance for this account.
    pub owner: Option<AccountId>,
    /// Operators only: what each NIC (in the order of `networks`) may send
    /// that anti-spoofing drops otherwise.
    #[serde(default)]
    #[schema(max_items = 8)]
    pub nic_options: Vec<NicOptions>,
}

/// What a NIC may send beyond its own MAC and addresses (Triton's NIC
/// properties of the same names); all off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicOptions {
    /// IPv4 and ARP from any address.
    #[serde(default)]
    pub allow_ip_spoofing: bool,
    /// Frames from any MAC.
    #[serde(default)]
    pub allow_mac_spoofing: bool,
    /// DHCP server replies (udp source port 67).
    #[serde(default)]
    pub allow_dhcp_spoofing: bool,
}

/// `POST /v1/instances/{id}/resize`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceResize {
    /// A package id or name (its newest active version), of the instance's brand.
    pub package: String,
}

/// `POST /v1/instances/{id}/rename`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceRename {
    /// 1-63 of [a-zA-Z0-9-], unique among the owner's instances.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")]
    pub alias: String,
}

/// What `POST /v1/instances` and the actions answer (202): the instance and
/// the job that works on it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceAccepted {
    pub instance: Instance,
    pub job_id: JobId,
}

/// `GET /v1/instances/{id}/console`: the end of the instance's console log
/// (a VM's serial console; a container's stdout and stderr).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceConsole {
    pub text: String,
    /// Older output exists that is not shown (rotated away or beyond `tail`).
    pub truncated: bool,
}
