//! Images: a manifest plus one file, content-addressed in the headnode's store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AccountId, ImageId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageType {
    /// A root filesystem archive, run by runc.
    Container,
    /// A disk or kernel+initramfs, run by QEMU/KVM.
    Vm,
}

impl ImageType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ImageType::Container => "container",
            ImageType::Vm => "vm",
        }
    }
    pub fn parse(s: &str) -> Option<ImageType> {
        match s {
            "container" => Some(ImageType::Container),
            "vm" => Some(ImageType::Vm),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageState {
    /// Created; its file may be uploaded.
    Unactivated,
    /// Usable for new instances.
    Active,
    /// Kept, but not for new instances.
    Disabled,
}

impl ImageState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ImageState::Unactivated => "unactivated",
            ImageState::Active => "active",
            ImageState::Disabled => "disabled",
        }
    }
    pub fn parse(s: &str) -> Option<ImageState> {
        match s {
            "unactivated" => Some(ImageState::Unactivated),
            "active" => Some(ImageState::Active),
            "disabled" => Some(ImageState::Disabled),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRequirements {
    /// The least memory an instance of this image needs, in MiB.
    pub min_ram_mb: Option<u64>,
    /// The most memory it supports, in MiB.
    pub max_ram_mb: Option<u64>,
    /// The brand it needs (`container` or `kvm`).
    pub brand: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub id: ImageId,
    pub owner: AccountId,
    pub name: String,
    pub version: String,
    #[serde(rename = "type")]
    pub image_type: ImageType,
    pub os: String,
    pub description: String,
    pub requirements: ImageRequirements,
    pub public: bool,
    pub state: ImageState,
    pub file: Option<ImageFile>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageFile {
    pub sha256: String,
    pub size: u64,
}

/// The manifest of a new image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageCreate {
    pub name: String,
    pub version: String,
    #[serde(rename = "type")]
    pub image_type: ImageType,
    pub os: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub requirements: ImageRequirements,
    /// Visible to every account (operators only).
    #[serde(default)]
    pub public: bool,
    /// Whose image; defaults to the caller (operators may name another account).
    pub owner: Option<AccountId>,
}
