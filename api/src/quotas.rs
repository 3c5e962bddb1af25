//! Per-account quotas: how much of the cloud one account may hold. A limit
//! not set on the account is the headnode's default; usage is counted from
//! the account's rows (live instances, images and their files).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AccountId;

crate::named_enum! {
    /// What a quota limits.
    pub enum QuotaKind {
        /// Live (not deleted) instances.
        Instances = "instances",
        /// Memory of live instances, MiB.
        MemoryMb = "memory_mb",
        /// Disk of live instances, MiB.
        DiskMb = "disk_mb",
        /// vCPUs held by live VMs.
        Vcpus = "vcpus",
        /// Images owned, in any state.
        Images = "images",
        /// Bytes of the files of the images owned.
        ImageBytes = "image_bytes",
    }
}

impl QuotaKind {
    /// The largest limit that may be set (larger is a 400).
    pub fn largest(&self) -> u64 {
        match self {
            QuotaKind::Instances => 1_000_000,
            QuotaKind::MemoryMb | QuotaKind::DiskMb => 1 << 40,
            QuotaKind::Vcpus => 1_000_000,
            QuotaKind::Images => 1_000_000,
            QuotaKind::ImageBytes => 1 << 60,
        }
    }
}

/// A value per quota. In a `PUT`, a missing or null field means "the
/// headnode's default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaValues {
    #[schema(maximum = 1_000_000)]
    pub instances: Option<u64>,
    #[schema(maximum = 1_099_511_627_776_u64)]
    pub memory_mb: Option<u64>,
    #[schema(maximum = 1_099_511_627_776_u64)]
    pub disk_mb: Option<u64>,
    #[schema(maximum = 1_000_000)]
    pub vcpus: Option<u64>,
    #[schema(maximum = 1_000_000)]
    pub images: Option<u64>,
    #[schema(maximum = 1_152_921_504_606_846_976_u64)]
    pub image_bytes: Option<u64>,
}

impl QuotaValues {
    pub fn get(&self, k: QuotaKind) -> Option<u64> {
        match k {
            QuotaKind::Instances => self.instances,
            QuotaKind::MemoryMb => self.memory_mb,
            QuotaKind::DiskMb => self.disk_mb,
            QuotaKind::Vcpus => self.vcpus,
            QuotaKind::Images => self.images,
            QuotaKind::ImageBytes => self.image_bytes,
        }
    }

    pub fn set(&mut self, k: QuotaKind, v: Option<u64>) {
        let f = match k {
            QuotaKind::Instances => &mut self.instances,
            QuotaKind::MemoryMb => &mut self.memory_mb,
            QuotaKind::DiskMb => &mut self.disk_mb,
            QuotaKind::Vcpus => &mut self.vcpus,
            QuotaKind::Images => &mut self.images,
            QuotaKind::ImageBytes => &mut self.image_bytes,
        };
        *f = v;
    }
}

/// `GET|PUT /v1/accounts/{id}/quotas`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Quotas {
    pub account_id: AccountId,
    /// The limits in force (the account's own, else the defaults).
    pub limits: QuotaValues,
    /// The limits set on the account itself (null: the default applies).
    pub overrides: QuotaValues,
    /// What the account holds now. It may be above a limit lowered since:
    /// then nothing new is allowed until it is under it again.
    pub usage: QuotaValues,
}
