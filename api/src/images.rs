//! Images: a manifest plus one file, content-addressed in the headnode's store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AccountId, ImageId};

crate::named_enum! {
    pub enum ImageType {
        /// A root filesystem archive, run by runc.
        Container = "container",
        /// A disk or kernel+initramfs, run by QEMU/KVM.
        Vm = "vm",
    }
}

impl ImageType {
    /// The brand of instance this type of image runs as.
    pub fn brand(&self) -> crate::Brand {
        match self {
            ImageType::Container => crate::Brand::Container,
            ImageType::Vm => crate::Brand::Kvm,
        }
    }
}

crate::named_enum! {
    pub enum ImageState {
        /// Created; its file may be uploaded.
        Unactivated = "unactivated",
        /// Usable for new instances.
        Active = "active",
        /// Kept, but not for new instances.
        Disabled = "disabled",
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRequirements {
    /// The least memory an instance of this image needs, in MiB.
    #[schema(maximum = 4_194_304)]
    pub min_ram_mb: Option<u64>,
    /// The most memory it supports, in MiB.
    #[schema(maximum = 4_194_304)]
    pub max_ram_mb: Option<u64>,
    /// The brand it needs; when given it must match the image's type.
    pub brand: Option<crate::Brand>,
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
    /// The most its file unpacks to on a node, in bytes, as its manifest
    /// declares (null: the headnode's default bound).
    pub unpacked_size: Option<u64>,
    /// The image the instance it was made from ran (images made from an
    /// instance only).
    pub origin: Option<ImageId>,
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
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub name: String,
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub version: String,
    #[serde(rename = "type")]
    pub image_type: ImageType,
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub os: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
    #[serde(default)]
    pub requirements: ImageRequirements,
    /// Visible to every account (operators only).
    #[serde(default)]
    pub public: bool,
    /// Whose image; defaults to the caller (operators may name another account).
    pub owner: Option<AccountId>,
    /// The most the file unpacks to, in bytes: nodes refuse an archive that
    /// holds more (and bound the image's dataset by it). Default: the
    /// headnode's bound for images that declare none.
    #[schema(minimum = 1, maximum = 17_592_186_044_416_u64)]
    pub unpacked_size: Option<u64>,
}

/// `POST /v1/instances/{id}/images`: an image made from the instance. It
/// takes its type, OS and requirements from the image the instance runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageFromInstance {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub name: String,
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub version: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
}

/// The image being made (unactivated, without its file until the job ends)
/// and the job that makes it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageFromInstanceAccepted {
    pub image: Image,
    pub job_id: crate::JobId,
}
