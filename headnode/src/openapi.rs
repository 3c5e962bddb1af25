//! The OpenAPI document, generated from the handlers' annotations. It is also
//! committed at api/openapi.json; a test fails when the two drift apart
//! (regenerate with `NEREID_UPDATE_OPENAPI=1 cargo test -p nereid-headnode openapi`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http;

#[derive(OpenApi)]
#[openapi(
    info(title = "Nereid", description = "The Nereid datacenter orchestrator's REST API."),
    paths(
        http::accounts::account_list, http::accounts::account_create, http::accounts::account_get,
        http::accounts::quotas_get, http::accounts::quotas_set,
        http::tokens::token_list, http::tokens::token_create, http::tokens::token_delete,
        http::servers::server_list, http::servers::server_get, http::servers::server_setup,
        http::servers::server_reserve, http::servers::server_unreserve, http::servers::server_delete,
        http::servers::join_token_create, http::servers::server_orphans,
        http::servers::server_certificate_rotate,
        http::images::image_list, http::images::image_create, http::images::image_get, http::images::image_delete,
        http::images::image_file_put, http::images::image_file_get, http::images::image_activate,
        http::images::image_disable, http::images::image_enable, http::images::image_from_instance,
        http::packages::package_list, http::packages::package_create, http::packages::package_get,
        http::packages::package_update, http::packages::package_delete,
        http::networks::nic_tag_list, http::networks::nic_tag_create, http::networks::nic_tag_delete,
        http::networks::network_list, http::networks::network_create, http::networks::network_get,
        http::networks::network_delete, http::networks::network_ip_list, http::networks::network_ip_allocate,
        http::networks::network_ip_free,
        http::instances::instance_create, http::instances::instance_list, http::instances::instance_get,
        http::instances::instance_start, http::instances::instance_stop, http::instances::instance_reboot,
        http::instances::instance_delete, http::instances::instance_console,
        http::instances::instance_enable_firewall, http::instances::instance_disable_firewall,
        http::instances::job_list, http::instances::job_get,
        http::audit::audit_list, http::events::events,
        http::fwrules::fwrule_list, http::fwrules::fwrule_create, http::fwrules::fwrule_get,
        http::fwrules::fwrule_update, http::fwrules::fwrule_delete,
        http::keys::key_list, http::keys::key_create, http::keys::key_get, http::keys::key_delete,
        http::instance_meta::tags_get, http::instance_meta::tags_put, http::instance_meta::tags_post,
        http::instance_meta::tags_clear, http::instance_meta::tag_get, http::instance_meta::tag_delete,
        http::instance_meta::metadata_get, http::instance_meta::metadata_put,
        http::instance_meta::metadata_post, http::instance_meta::metadata_clear,
        http::instance_meta::metadata_key_get, http::instance_meta::metadata_key_delete,
        http::instance_meta::instance_rename, http::instance_meta::instance_resize, http::instances::instance_enable_deletion_protection,
        http::instances::instance_disable_deletion_protection,
        http::snapshots::snapshot_list, http::snapshots::snapshot_create, http::snapshots::snapshot_get,
        http::snapshots::snapshot_delete, http::snapshots::snapshot_rollback,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn spec() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_json_committed_in_api_matches_the_code() {
        let generated = serde_json::to_string_pretty(&super::spec()).unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/openapi.json");
        if std::env::var_os("NEREID_UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "api/openapi.json is out of date; run `NEREID_UPDATE_OPENAPI=1 cargo test -p nereid-headnode openapi` and commit it"
        );
    }
}
