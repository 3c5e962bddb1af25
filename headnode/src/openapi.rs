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
        http::servers::server_certificate_rotate, http::servers::server_certificate_revoke,
        http::images::image_list, http::images::image_create, http::images::image_get, http::images::image_delete,
        http::images::image_file_put, http::images::image_file_get, http::images::image_activate,
        http::images::image_disable, http::images::image_enable, http::images::image_from_instance,
        http::packages::package_list, http::packages::package_create, http::packages::package_get,
        http::packages::package_update, http::packages::package_delete,
        http::networks::nic_tag_list, http::networks::nic_tag_create, http::networks::nic_tag_delete,
        http::networks::network_list, http::networks::network_create, http::networks::network_get,
        http::networks::network_delete, http::networks::network_ip_list, http::networks::network_ip_allocate,
        http::networks::network_ip_free,
        http::fabrics::vlan_list, http::fabrics::vlan_create, http::fabrics::vlan_get,
        http::fabrics::vlan_delete, http::fabrics::network_list, http::fabrics::network_create,
        http::fabrics::network_delete,
        http::pools::pool_list, http::pools::pool_create, http::pools::pool_get, http::pools::pool_delete,
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

/// The document served at /openapi.json.
pub fn spec() -> serde_json::Value {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut doc = serde_json::to_value(doc).expect("the document serializes");
    complete(&mut doc);
    doc
}

/// What every string the API takes may not hold: control characters other
/// than tab, newline and carriage return, C1 controls included (refused
/// with a 400).
const TEXT: &str = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$";

/// Adds what the annotations leave out but every operation can answer,
/// from the layers all requests pass (authentication, rate limits, the
/// extractors, timeouts, the database), and the text rule to every free
/// string of a body.
fn complete(doc: &mut serde_json::Value) {
    use serde_json::json;
    let error = |description: &str| {
        json!({"description": description,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
    };
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (_, op) in item.iter_mut() {
                let has_body = op.get("requestBody").is_some();
                let Some(responses) = op["responses"].as_object_mut() else {
                    continue;
                };
                let mut add = |code: &str, description: &str| {
                    responses
                        .entry(code.to_string())
                        .or_insert_with(|| error(description));
                };
                add(
                    "400",
                    "A path, query or body field is invalid; the message names it.",
                );
                add("401", "No bearer token, or an unknown or expired one.");
                add("408", "The request took longer than the headnode allows.");
                add(
                    "429",
                    "Too many requests from this token, or too many failed authentications from this address; `Retry-After` says when to try again.",
                );
                add(
                    "500",
                    "An internal error; the message and the request id say what.",
                );
                add("503", "The headnode's database is unavailable; try again.");
                if path.contains('{') || has_body {
                    add(
                        "404",
                        "Not found, or not the caller's: what the path or the body names.",
                    );
                }
                if has_body {
                    add("413", "The body is larger than the headnode accepts.");
                    add(
                        "415",
                        "The body is not of the content type the operation takes.",
                    );
                }
                if let Some(body) = op.get_mut("requestBody") {
                    text_rule(body);
                }
                if let Some(params) = op.get_mut("parameters") {
                    text_rule(params);
                }
            }
        }
    }
    refine(doc);
    // The schemas requests use (answers may quote what was refused, such as
    // an error's or an audit entry's message).
    let taken = schemas_requests_use(doc);
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        for (_, schema) in schemas
            .iter_mut()
            .filter(|(name, _)| taken.contains(name.as_str()))
        {
            text_rule(schema);
        }
    }
}

/// The component schemas a request body or parameter refers to, directly
/// or through other schemas.
fn schemas_requests_use(doc: &serde_json::Value) -> std::collections::BTreeSet<String> {
    use serde_json::Value;
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref")
                    && let Some(name) = r.strip_prefix("#/components/schemas/")
                {
                    out.push(name.to_string());
                }
                o.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut todo = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for op in paths
            .values()
            .filter_map(Value::as_object)
            .flat_map(|i| i.values())
        {
            refs(&op["requestBody"], &mut todo);
            refs(&op["parameters"], &mut todo);
        }
    }
    let mut taken = std::collections::BTreeSet::new();
    while let Some(name) = todo.pop() {
        if taken.insert(name.clone()) {
            refs(&doc["components"]["schemas"][&name], &mut todo);
        }
    }
    taken
}

/// What every key of a map the API takes may be (the text rule, 1-128 characters).
const KEY: &str = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]{1,128}$";
/// A metadata key: a `KEY` outside the read-only `sdc:` namespace.
const METADATA_KEY: &str =
    "^(?!sdc:)[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]{1,128}$";
/// A placement rule (`scheduler::Affinity::parse`).
const AFFINITY: &str = "^((instance|container)(==|!=)~?[^~\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F][^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]{0,127}|server(==|!=)~?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$";
/// A name: 1-64 of letters, digits, `-`, `_`, `.`, starting with a letter or digit.
const NAME: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$";

/// How a refinement changes the schema at its pointer.
enum Patch {
    /// Puts this schema in its place.
    Replace(serde_json::Value),
    /// Adds these keywords to it.
    Merge(serde_json::Value),
}

/// Schemas the annotations cannot state (maps with rules on their keys and
/// values, exclusions): named components, and patches by JSON pointer.
fn refinements() -> (serde_json::Value, Vec<(&'static str, Patch)>) {
    use serde_json::json;
    let components = json!({
        "Tags": {
            "type": "object",
            "description": "At most 64 tags; keys of 1-128 characters, values strings, numbers or booleans (what `tag k=v` filters and firewall rules match).",
            "maxProperties": crate::instances::MAX_TAGS,
            "propertyNames": {"pattern": KEY},
            "additionalProperties": {"type": ["string", "number", "boolean"], "pattern": TEXT},
        },
        "Metadata": {
            "type": "object",
            "description": "At most 128 keys of 1-128 characters outside the read-only `sdc:` namespace, string values, and at most 65,536 bytes of keys and values in all.",
            "maxProperties": crate::instances::MAX_METADATA_KEYS,
            "propertyNames": {"pattern": METADATA_KEY},
            "additionalProperties": {"type": "string", "pattern": TEXT},
        },
        "Traits": {
            "type": "object",
            "description": "Names to a string, number, boolean or list of strings; a server must hold every trait of the package and the image, with an equal value.",
            "propertyNames": {"pattern": NAME},
            "additionalProperties": {
                "type": ["string", "number", "boolean", "array"],
                "pattern": TEXT,
                "items": {"type": "string", "pattern": TEXT},
            },
        },
    });
    let to = |name: &str| Patch::Replace(json!({"$ref": format!("#/components/schemas/{name}")}));
    let resolvers = || Patch::Replace(json!({"type": "string", "format": "ipv4"}));
    let routes = || {
        Patch::Merge(json!({
            "maxProperties": 64,
            "propertyNames": {"format": "ipv4-cidr"},
            "additionalProperties": {"type": "string", "format": "ipv4"},
        }))
    };
    let patches = vec![
        (
            "/components/schemas/InstanceCreate/properties/tags",
            to("Tags"),
        ),
        (
            "/components/schemas/InstanceCreate/properties/metadata",
            to("Metadata"),
        ),
        (
            "/components/schemas/InstanceCreate/properties/affinity/items",
            Patch::Merge(json!({"pattern": AFFINITY})),
        ),
        (
            "/paths/~1v1~1instances~1{id}~1tags/put/requestBody/content/application~1json/schema",
            to("Tags"),
        ),
        (
            "/paths/~1v1~1instances~1{id}~1tags/post/requestBody/content/application~1json/schema",
            to("Tags"),
        ),
        (
            "/paths/~1v1~1instances~1{id}~1metadata/put/requestBody/content/application~1json/schema",
            to("Metadata"),
        ),
        (
            "/paths/~1v1~1instances~1{id}~1metadata/post/requestBody/content/application~1json/schema",
            to("Metadata"),
        ),
        (
            "/components/schemas/PackageCreate/properties/traits",
            to("Traits"),
        ),
        (
            "/components/schemas/PackageUpdate/properties/traits",
            Patch::Replace(json!(
            {"oneOf": [{"$ref": "#/components/schemas/Traits"}, {"type": "null"}]})),
        ),
        (
            "/components/schemas/ServerSetup/properties/traits",
            to("Traits"),
        ),
        (
            "/components/schemas/ServerSetup/properties/nic_tags",
            Patch::Merge(json!({
                "propertyNames": {"pattern": NAME},
                "additionalProperties": {"type": "string", "pattern": crate::validate::INTERFACE},
            })),
        ),
        (
            "/paths/~1v1~1images~1{id}~1file/put/requestBody/content/application~1octet-stream/schema",
            Patch::Replace(json!({"type": "string", "format": "binary"})),
        ),
        (
            "/components/schemas/NetworkCreate/properties/vlan_id",
            Patch::Merge(json!({"not": {"const": 1}})),
        ),
        // What a fabric network takes is checked as an operator's network's.
        (
            "/components/schemas/NetworkCreate/properties/resolvers/items",
            resolvers(),
        ),
        (
            "/components/schemas/FabricNetworkCreate/properties/resolvers/items",
            resolvers(),
        ),
        (
            "/components/schemas/NetworkCreate/properties/routes",
            routes(),
        ),
        (
            "/components/schemas/FabricNetworkCreate/properties/routes",
            routes(),
        ),
    ];
    (components, patches)
}

/// Applies `refinements`, and returns the pointers that led nowhere (the
/// unit test below fails on any).
fn refine(doc: &mut serde_json::Value) -> Vec<&'static str> {
    use serde_json::Value;
    let (components, patches) = refinements();
    if let (Some(schemas), Value::Object(new)) =
        (doc["components"]["schemas"].as_object_mut(), components)
    {
        schemas.extend(new);
    }
    let mut missed = Vec::new();
    for (pointer, patch) in patches {
        match (doc.pointer_mut(pointer), patch) {
            (Some(target), Patch::Replace(new)) => *target = new,
            (Some(Value::Object(target)), Patch::Merge(Value::Object(new))) => target.extend(new),
            _ => missed.push(pointer),
        }
    }
    missed
}

/// Puts the text rule on every string (and map key) of a schema that has
/// no enum, format or pattern of its own.
fn text_rule(schema: &mut serde_json::Value) {
    use serde_json::Value;
    let Value::Object(o) = schema else {
        if let Value::Array(items) = schema {
            items.iter_mut().for_each(text_rule);
        }
        return;
    };
    let is_string = match o.get("type") {
        Some(Value::String(t)) => t == "string",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
        _ => false,
    };
    if is_string
        && !["enum", "format", "pattern", "$ref"]
            .iter()
            .any(|k| o.contains_key(*k))
    {
        o.insert("pattern".into(), TEXT.into());
    }
    let is_object = match o.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
        _ => false,
    };
    // A free-form object (tags, metadata): its keys and string values.
    if is_object
        && !o.contains_key("properties")
        && !o.get("additionalProperties").is_some_and(Value::is_object)
    {
        o.insert(
            "additionalProperties".into(),
            serde_json::json!({"pattern": TEXT}),
        );
    }
    if o.get("additionalProperties").is_some_and(Value::is_object)
        && !o.contains_key("propertyNames")
    {
        o.insert("propertyNames".into(), serde_json::json!({"pattern": TEXT}));
    }
    for (k, v) in o.iter_mut() {
        if k != "enum" && k != "example" && k != "examples" && k != "default" {
            text_rule(v);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_refinement_finds_its_schema() {
        let mut doc = serde_json::to_value(<super::ApiDoc as utoipa::OpenApi>::openapi()).unwrap();
        assert_eq!(super::refine(&mut doc), Vec::<&str>::new());
    }

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
