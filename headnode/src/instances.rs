//! The app logic of instances: turning a create request into a placed
//! instance with its provision job (resolving image, package and networks by
//! id or name, validating, scheduling), and queueing the jobs of actions.
//!
//! It must never call an agent: jobs do that. Races (capacity, aliases,
//! idempotency keys, one job per instance) are decided by the database.

use crate::authz::Action;
use std::collections::BTreeSet;

use nereid_api::{
    AccountId, Image, ImageState, InstanceAccepted, InstanceCreate, InstanceId, InstanceState,
    JobKind, NetworkId, Package,
};

use crate::AppState;
use crate::authz::OpContext;
use crate::db::{Created, ImageFilter, NewInstance, PackageFilter};
use crate::error::{Error, Result};
use crate::scheduler::{self, Affinity};

const MAX_NICS: usize = 8;
pub const MAX_TAGS: usize = 64;
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
pub const MAX_METADATA_KEYS: usize = 128;

/// Tags: at most `MAX_TAGS`, keys of 1-128 characters, values strings,
/// numbers or booleans (what `tag k=v` filters and firewall rules match).
pub fn check_tags<'a>(
    tags: impl ExactSizeIterator<Item = (&'a String, &'a serde_json::Value)>,
) -> Result<()> {
    let n = tags.len();
    if n > MAX_TAGS {
        return Err(Error::invalid(
            "tags",
            format!("at most {MAX_TAGS} tags, got {n}"),
        ));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(Error::invalid("tags", "tag keys are 1-128 characters"));
        }
        if v.is_object() || v.is_array() || v.is_null() {
            return Err(Error::invalid(
                "tags",
                format!(
                    "tag {:?} must be a string, number or boolean",
                    crate::validate::truncate(k)
                ),
            ));
        }
    }
    Ok(())
}

/// Metadata: keys of 1-128 characters outside the read-only `sdc:`
/// namespace, at most `MAX_METADATA_KEYS` of them and `MAX_METADATA_BYTES`
/// of keys and values in all.
pub fn check_metadata<'a>(
    metadata: impl ExactSizeIterator<Item = (&'a String, &'a str)>,
) -> Result<()> {
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(Error::invalid(
            "metadata",
            format!("at most {MAX_METADATA_KEYS} keys, got {}", metadata.len()),
        ));
    }
    let mut bytes = 0;
    for (k, v) in metadata {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(Error::invalid("metadata", "keys are 1-128 characters"));
        }
        if k.starts_with("sdc:") {
            return Err(Error::invalid(
                "metadata",
                format!(
                    "{:?}: the sdc: namespace is read-only",
                    crate::validate::truncate(k)
                ),
            ));
        }
        bytes += k.len() + v.len();
    }
    if bytes > MAX_METADATA_BYTES {
        return Err(Error::invalid(
            "metadata",
            format!("at most {MAX_METADATA_BYTES} bytes of keys and values in all, got {bytes}"),
        ));
    }
    Ok(())
}

/// An alias is also the host name: 1-63 of [a-zA-Z0-9-], not starting with '-'.
pub fn check_alias(alias: &str) -> Result<()> {
    let ok = !alias.is_empty()
        && alias.len() <= 63
        && !alias.starts_with('-')
        && alias.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "alias",
            format!(
                "{:?} must be 1-63 letters, digits or '-' (it is the host name), not starting with '-'",
                crate::validate::truncate(alias)
            ),
        ))
    }
}

fn check_idempotency_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            "Idempotency-Key",
            "must be 1-128 printable ASCII characters",
        ));
    }
    Ok(())
}

/// An image by id or name (the newest active version), visible to `owner`.
async fn resolve_image(s: &AppState, owner: AccountId, r: &str) -> Result<Image> {
    let image = match r.parse() {
        Ok(id) => s.db.image_get(id, Some(owner)).await?,
        Err(_) => {
            let f = ImageFilter {
                name: Some(r.to_string()),
                state: Some(ImageState::Active),
                visible_to: Some(owner),
                ..Default::default()
            };
            s.db.image_list(&f, None, 1000)
                .await?
                .items
                .pop()
                .ok_or_else(|| Error::not_found("active image named", format!("{r:?}")))?
        }
    };
    if image.state != ImageState::Active {
        return Err(Error::invalid(
            "image",
            format!(
                "image {} is {:?}; only active images can be used",
                image.id, image.state
            ),
        ));
    }
    Ok(image)
}

/// A package by id or name (the newest active version), usable by `owner`.
async fn resolve_package(s: &AppState, owner: AccountId, r: &str) -> Result<Package> {
    let package = match r.parse() {
        Ok(id) => s.db.package_get(id, Some(owner)).await?,
        Err(_) => {
            let f = PackageFilter {
                name: Some(r.to_string()),
                active: Some(true),
                usable_by: Some(owner),
                ..Default::default()
            };
            s.db.package_list(&f, None, 1000)
                .await?
                .items
                .pop()
                .ok_or_else(|| Error::not_found("active package named", format!("{r:?}")))?
        }
    };
    if !package.active {
        return Err(Error::invalid(
            "package",
            format!("package {} is not active", package.id),
        ));
    }
    Ok(package)
}

/// Validates and places a create request, then records it with its job.
pub async fn create(
    s: &AppState,
    p: OpContext,
    req: InstanceCreate,
    idempotency_key: Option<String>,
) -> Result<(InstanceAccepted, bool)> {
    let owner = match req.owner {
        Some(o) if o != p.account_id => {
            p.authorize(Action::InstanceForOthers)?;
            s.db.accounts_exist(&[o]).await?;
            o
        }
        _ => p.account_id,
    };
    if let Some(k) = &idempotency_key {
        check_idempotency_key(k)?;
    }
    if req.nic_options.iter().any(|o| *o != Default::default()) {
        p.authorize(Action::NicSpoofing)?;
    }
    if req.nic_options.len() > req.networks.len() {
        return Err(Error::invalid(
            "nic_options",
            format!(
                "{} entries for {} networks: one per NIC, in the order of networks",
                req.nic_options.len(),
                req.networks.len()
            ),
        ));
    }
    let id = InstanceId::new();
    let alias = req
        .alias
        .clone()
        .unwrap_or_else(|| id.to_string()[..8].to_string());
    check_alias(&alias)?;
    if req.networks.len() > MAX_NICS {
        return Err(Error::invalid(
            "networks",
            format!("at most {MAX_NICS} networks"),
        ));
    }
    check_tags(req.tags.iter())?;
    check_metadata(req.metadata.iter().map(|(k, v)| (k, v.as_str())))?;
    let affinity = req
        .affinity
        .iter()
        .map(|a| Affinity::parse(a).map_err(|e| Error::invalid("affinity", e)))
        .collect::<Result<Vec<_>>>()?;

    let image = resolve_image(s, owner, &req.image).await?;
    let package = resolve_package(s, owner, &req.package).await?;
    let brand = package.brand;
    if req.isolated_ids && brand != nereid_api::Brand::Container {
        return Err(Error::invalid(
            "isolated_ids",
            "only containers run in host id ranges; a VM is isolated by its hypervisor",
        ));
    }
    if image.image_type.brand() != brand || image.requirements.brand.is_some_and(|b| b != brand) {
        return Err(Error::invalid(
            "package",
            format!(
                "image {} ({}) is a {} image, which runs as brand {}; package {} has brand {}: choose a {} package",
                image.name,
                image.id,
                image.image_type,
                image.image_type.brand(),
                package.name,
                brand,
                image.image_type.brand()
            ),
        ));
    }
    if let Some(min) = image.requirements.min_ram_mb
        && package.memory_mb < min
    {
        return Err(Error::invalid(
            "package",
            format!(
                "image {} needs at least {min} MiB of memory; package {} has {}",
                image.id, package.name, package.memory_mb
            ),
        ));
    }
    let mut networks: Vec<NetworkId> = Vec::new();
    let mut nic_tags = BTreeSet::new();
    let mut capabilities = BTreeSet::from([brand.capability().to_string()]);
    for r in &req.networks {
        let net = match r.parse::<NetworkId>() {
            Ok(nid) => s.db.network_get(nid, Some(owner)).await,
            Err(_) => s.db.network_get_by_name(r, Some(owner)).await,
        };
        // Not a network: a pool's first network with a free address.
        let net = match net {
            Err(Error::NotFound { .. }) => pick_from_pool(s, r, owner).await?,
            other => other?,
        };
        if networks.contains(&net.id) {
            return Err(Error::invalid(
                "networks",
                format!("network {r:?} is listed twice"),
            ));
        }
        // An overlay network (a fabric's) is untagged VXLAN on its nic tag.
        if net.vlan_id != 0 && net.vni.is_none() {
            capabilities.insert("vlan".to_string());
        }
        nic_tags.insert(net.nic_tag.clone());
        networks.push(net.id);
    }

    // Containers share the CPUs under their cpu_cap; only VMs hold vCPUs.
    let vcpus = if brand.holds_vcpus() {
        package.vcpus
    } else {
        0
    };
    let request = scheduler::Request {
        ram_mb: package.memory_mb,
        disk_mb: package.disk_mb,
        vcpus,
        capabilities,
        nic_tags,
        traits: package.traits.clone(),
        affinity,
    };
    let new = NewInstance {
        id,
        owner,
        alias,
        brand,
        image_id: image.id,
        package_id: package.id,
        ram_mb: package.memory_mb,
        disk_mb: package.disk_mb,
        vcpus,
        networks,
        tags: req.tags,
        metadata: req.metadata,
        firewall_enabled: req.firewall_enabled,
        deletion_protection: req.deletion_protection,
        isolated_ids: req.isolated_ids,
        nic_options: req.nic_options.clone(),
        idempotency_key,
        package_used: package.used,
    };
    let job = crate::jobs::new_job(
        JobKind::Provision,
        id,
        owner,
        crate::jobs::PROVISION_STEPS_DONE_AT_CREATE,
    );
    // Rank on a snapshot; the database's conditional update decides. When
    // concurrent placements took every ranked server, rank again on fresh
    // numbers: the 409 then says what each server lacks now.
    let instance_rules = request
        .affinity
        .iter()
        .any(|a| matches!(a.target, scheduler::AffinityTarget::Instance(_)));
    let mut attempt = 0;
    let created = loop {
        attempt += 1;
        // The first try may use the shared read of the last 200 ms; a
        // retry, and any "no room" answer, is decided on a fresh one.
        let fresh = attempt > 1;
        let all = s.db.scheduler_candidates(fresh).await?;
        let no_room = |r: scheduler::Rejection| Error::InsufficientCapacity(r.to_string());
        let pool = if instance_rules {
            // Rules about the owner's instances are checked on every server.
            let mut all = all;
            s.db.fill_owner_aliases(owner, &mut all, false).await?;
            all
        } else {
            let picked = match scheduler::sample_feasible(
                &request,
                &all,
                scheduler::SAMPLE,
                rand::random::<u64>,
            ) {
                Ok(p) => p,
                Err(_) if !fresh => continue,
                Err(r) => return Err(no_room(r)),
            };
            let mut pool: Vec<_> = picked.into_iter().map(|i| all[i].clone()).collect();
            s.db.fill_owner_aliases(owner, &mut pool, true).await?;
            pool
        };
        let ranked_ids = match scheduler::rank(&request, &pool, rand::random::<u64>) {
            Ok(r) => r,
            Err(_) if !fresh => continue,
            Err(r) => return Err(no_room(r)),
        };
        let by_id: std::collections::HashMap<_, _> = pool.iter().map(|c| (c.id, c)).collect();
        let ranked: Vec<_> = ranked_ids
            .iter()
            .filter_map(|id| by_id.get(id).map(|c| (*c).clone()))
            .collect();
        match s.db.instance_create(&new, &ranked, &job).await {
            Err(Error::InsufficientCapacity(_)) if attempt < 5 => continue,
            other => break other?,
        }
    };
    match created {
        Created::New(instance, job_id) => {
            s.jobs.wake();
            Ok((InstanceAccepted { instance, job_id }, true))
        }
        Created::Replayed(instance, job_id) => Ok((InstanceAccepted { instance, job_id }, false)),
    }
}

/// Queues start, stop, reboot or destroy.
pub async fn act(
    s: &AppState,
    p: OpContext,
    id: InstanceId,
    kind: JobKind,
) -> Result<InstanceAccepted> {
    use InstanceState::*;
    let inst =
        s.db.instance_get(id, p.authorize(Action::InstanceWrite)?)
            .await?;
    if kind == JobKind::Destroy {
        refuse_if_protected(&inst)?;
    }
    let (from, to): (&[InstanceState], InstanceState) = match kind {
        // A VM whose QEMU died (failed) can be started again.
        JobKind::Start => (&[Stopped, Running, Failed], inst.state),
        JobKind::Stop => (&[Running, Stopped], Stopping),
        JobKind::Reboot => (&[Running], Running),
        JobKind::Destroy => (&[Running, Stopped, Failed, Unknown], Deleting),
        JobKind::Provision | JobKind::Resize | JobKind::CreateImage => {
            return Err(Error::Internal(format!("{kind} is not an action")));
        }
    };
    let job = crate::jobs::new_job(kind, id, inst.owner, 0);
    s.db.job_queue_action(&job, from, to).await?;
    s.jobs.wake();
    Ok(InstanceAccepted {
        instance: s.db.instance_get(id, None).await?,
        job_id: job.id,
    })
}

/// Resizes an instance to another package of its brand on the same server:
/// the new size is reserved now (a 409 when its server or the account's
/// quota has no room for it), the node applies it in a job.
pub async fn resize(
    s: &AppState,
    p: OpContext,
    id: InstanceId,
    package: &str,
) -> Result<InstanceAccepted> {
    let inst =
        s.db.instance_get(id, p.authorize(Action::InstanceWrite)?)
            .await?;
    let package = resolve_package(s, inst.owner, package).await?;
    if package.brand != inst.brand {
        return Err(Error::invalid(
            "package",
            format!(
                "{} is a {} package; instance {id} is a {}",
                package.name, package.brand, inst.brand
            ),
        ));
    }
    if package.brand == nereid_api::Brand::Kvm && package.disk_mb < inst.disk_mb {
        return Err(Error::invalid(
            "package",
            format!(
                "{} has a {} MiB disk, less than the {} MiB of VM {id}: a VM's disk does not shrink",
                package.name, package.disk_mb, inst.disk_mb
            ),
        ));
    }
    if package.id == inst.package_id {
        return Err(Error::invalid(
            "package",
            format!("instance {id} already has package {}", package.name),
        ));
    }
    let server = inst.server_id.ok_or_else(|| {
        Error::Conflict(format!("instance {id} is {} and on no server", inst.state))
    })?;
    let room = s.db.candidate(server, inst.owner).await?;
    let job = crate::jobs::new_job(
        JobKind::Resize,
        id,
        inst.owner,
        crate::jobs::RESIZE_STEPS_DONE_AT_REQUEST,
    );
    let job_id = job.id;
    s.db.instance_resize(
        id,
        p.authorize(Action::InstanceWrite)?,
        &package,
        &room,
        job,
    )
    .await?;
    s.jobs.wake();
    Ok(InstanceAccepted {
        instance: s.db.instance_get(id, None).await?,
        job_id,
    })
}

/// Deletion protection: DELETE (forced or not) waits until it is turned off.
pub fn refuse_if_protected(inst: &nereid_api::Instance) -> Result<()> {
    if inst.deletion_protection {
        return Err(Error::Conflict(format!(
            "instance {} has deletion protection: turn it off first (disable-deletion-protection)",
            inst.id
        )));
    }
    Ok(())
}

/// The end of an instance's console log, from its node.
pub async fn console(
    s: &AppState,
    p: OpContext,
    id: InstanceId,
    tail: Option<u32>,
) -> Result<nereid_api::InstanceConsole> {
    let tail = tail.unwrap_or(100);
    if !(1..=10_000).contains(&tail) {
        return Err(Error::invalid("tail", "must be within 1..=10000"));
    }
    // Owner scope first: another tenant's instance is NotFound.
    let inst =
        s.db.instance_get(id, p.authorize(Action::InstanceRead)?)
            .await?;
    let t = s.db.instance_placement(id).await?.ok_or_else(|| {
        Error::Conflict(format!(
            "instance {id} is {} and on no server: it has no console",
            inst.state
        ))
    })?;
    let (text, truncated) = s.agents.console(&t, id, tail).await.map_err(|e| match e {
        // The node does not have it (yet or any more).
        Error::AgentRefused(m) | Error::ImageMissingOnNode(m) => Error::Conflict(m),
        other => other,
    })?;
    Ok(nereid_api::InstanceConsole { text, truncated })
}

/// The first network with a free address of the pool `r` (an id or a name)
/// that `owner` may use; 404 when there is no such network or pool, 409
/// `Exhausted` when every network of the pool is full.
async fn pick_from_pool(s: &AppState, r: &str, owner: AccountId) -> Result<nereid_api::Network> {
    let missing = || Error::not_found("network", format!("{r:?}"));
    let pool = match r.parse::<nereid_api::NetworkPoolId>() {
        Ok(id) => s.db.pool_get(id, Some(owner)).await.ok(),
        Err(_) => s.db.pool_get_by_name(r, Some(owner)).await?,
    }
    .ok_or_else(missing)?;
    let picked = s.db.pool_pick(pool.id).await?.ok_or_else(|| {
        Error::Exhausted(format!(
            "every network of pool {:?} is out of free addresses",
            pool.name
        ))
    })?;
    s.db.network_get(picked, None).await
}
