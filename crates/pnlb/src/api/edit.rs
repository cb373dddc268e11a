//! API changes as edits of the config document. Bodies use the config
//! file's own keys (a service is a `[[service]]` table as JSON, with its
//! `backend` list). An edit touches one service's table, in place, and
//! says which with the table as it was ([`Change`]); the daemon validates
//! that service alone and the rules across services as a file would be
//! held to them, so the API accepts nothing a file would not, and a
//! rejected edit is undone.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use pnlb_core::config::{self, ConfigError, Daemon, Document, Service};
use serde_json::Value as Json;
use toml::Value;

use super::model::ApiError;

/// Names one backend of a service: its address, and its port where the
/// address alone is ambiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSelector {
    pub address: IpAddr,
    pub port: Option<u16>,
}

impl BackendSelector {
    /// `10.77.1.11`, `10.77.1.11:8080`, `fd77:1::11`, `[fd77:1::11]:80`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        if let Ok(socket) = text.parse::<SocketAddr>() {
            return Ok(Self {
                address: socket.ip(),
                port: Some(socket.port()),
            });
        }
        let bare = text.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>()
            .map(|address| Self {
                address,
                port: None,
            })
            .map_err(|_| {
                ApiError::new(400, format!("{text:?} is not a backend address"))
                    .with_fix("name the backend as 10.77.1.11, 10.77.1.11:8080 or [fd77:1::11]:80")
            })
    }
}

impl std::fmt::Display for BackendSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}", SocketAddr::new(self.address, port)),
            None => write!(f, "{}", self.address),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Edit {
    AddService(Json),
    ReplaceService(String, Json),
    RemoveService(String),
    AddBackend(String, Json),
    ReplaceBackend(String, BackendSelector, Json),
    RemoveBackend(String, BackendSelector),
}

/// One entry of a list changed at its index, with what it was: the undo
/// of an edit in the document's `[[service]]` list ([`Change`]) and in
/// the validated services ([`Swap`]).
#[derive(Clone, Debug, PartialEq)]
pub enum ListChange<T> {
    Added(usize),
    Replaced(usize, T),
    Removed(usize, T),
}

/// The one service an edit touched in the document, with its table as it was.
pub type Change = ListChange<Value>;

/// A change taken into the validated services, with the service as it was.
pub type Swap = ListChange<Service>;

impl<T> ListChange<T> {
    /// Puts `list` back as it was before the change.
    pub fn undo(self, list: &mut Vec<T>) {
        match self {
            ListChange::Added(index) => {
                if index < list.len() {
                    list.remove(index);
                }
            }
            ListChange::Replaced(index, before) => {
                if let Some(entry) = list.get_mut(index) {
                    *entry = before;
                }
            }
            ListChange::Removed(index, before) => list.insert(index.min(list.len()), before),
        }
    }

    pub fn index(&self) -> usize {
        match self {
            ListChange::Added(index)
            | ListChange::Replaced(index, _)
            | ListChange::Removed(index, _) => *index,
        }
    }
}

/// Puts `document` back as it was before the edit that made `change`.
pub fn undo(change: Change, document: &mut Document) {
    change.undo(services_mut(document));
}

/// Makes `services` (validated from the document before `change`, in its
/// order) hold the document's services after it: the touched service
/// validated on its own, then the rules across services over the result,
/// which is what validating the whole document would find (the fuzz test
/// `api_bodies` holds the two to the same verdicts). On an error
/// `services` is as it was.
pub fn revalidate(
    origin: &Path,
    document: &Document,
    change: &Change,
    daemon: &Daemon,
    services: &mut Vec<Service>,
) -> Result<Swap, ConfigError> {
    let index = change.index();
    let edited = || {
        let table = self::services(document)
            .get(index)
            .ok_or_else(|| disagree(origin, index))?;
        config::validate_service(origin, index, table)
    };
    let swap = match change {
        Change::Removed(..) if index < services.len() => {
            Swap::Removed(index, services.remove(index))
        }
        Change::Added(_) if index == services.len() => {
            services.push(edited()?);
            Swap::Added(index)
        }
        Change::Replaced(..) if index < services.len() => {
            let service = edited()?;
            Swap::Replaced(index, std::mem::replace(&mut services[index], service))
        }
        _ => return Err(disagree(origin, index)),
    };
    let checked = match swap {
        Swap::Removed(..) => usize::MAX,
        _ => index,
    };
    if let Err(err) = config::check_service_among(origin, daemon, services, checked) {
        swap.undo(services);
        return Err(err);
    }
    Ok(swap)
}

/// The document and the validated services out of step (not expected: both
/// change together).
fn disagree(origin: &Path, index: usize) -> ConfigError {
    ConfigError {
        file: origin.to_path_buf(),
        key: format!("service[{index}]"),
        reason: "the config document and the running config disagree on the services".into(),
        fix: "reload the config file".into(),
    }
}

/// An edit made: what it did, in words, and the service it touched.
#[derive(Debug)]
pub struct Applied {
    pub what: String,
    pub change: Change,
}

/// Applies `edit` to `document` in place, finding services by a search
/// (the tests' way; the daemon has an index).
#[cfg(test)]
pub fn apply(document: &mut Document, edit: &Edit) -> Result<Applied, ApiError> {
    let (what, change) = edit_document(document, edit, None)?;
    Ok(Applied { what, change })
}

/// [`apply`], finding services by `index` (name -> place in the document,
/// kept in step with it by the daemon): a search of 10,000 services was
/// half of an edit. A place the document does not confirm is searched for.
pub fn apply_indexed(
    document: &mut Document,
    edit: &Edit,
    index: &HashMap<String, usize>,
) -> Result<Applied, ApiError> {
    let (what, change) = edit_document(document, edit, Some(index))?;
    Ok(Applied { what, change })
}

fn edit_document(
    document: &mut Document,
    edit: &Edit,
    index: Option<&HashMap<String, usize>>,
) -> Result<(String, Change), ApiError> {
    match edit {
        Edit::AddService(body) => {
            let table = table_from(body)?;
            let name = table
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::new(400, "the service has no name").with_fix("add \"name\": \"web\"")
                })?
                .to_string();
            if find_service(document, &name, index).is_some() {
                return Err(ApiError::new(409, format!("service {name} exists"))
                    .with_fix(format!("change it with PUT /api/v1/services/{name}")));
            }
            let services = services_mut(document);
            services.push(Value::Table(table));
            Ok((
                format!("service {name} added"),
                Change::Added(services.len() - 1),
            ))
        }
        Edit::ReplaceService(name, body) => {
            let mut table = table_from(body)?;
            match table.get("name").and_then(Value::as_str) {
                Some(other) if other != name => {
                    return Err(ApiError::new(
                        400,
                        format!("the body names service {other:?}, the path {name:?}"),
                    )
                    .with_fix("leave \"name\" out of the body, or make it match the path"))
                }
                _ => {
                    table.insert("name".into(), Value::String(name.clone()));
                }
            }
            let index = service_index(document, name, index)?;
            let before = std::mem::replace(&mut services_mut(document)[index], Value::Table(table));
            Ok((
                format!("service {name} replaced"),
                Change::Replaced(index, before),
            ))
        }
        Edit::RemoveService(name) => {
            let index = service_index(document, name, index)?;
            let before = services_mut(document).remove(index);
            Ok((
                format!("service {name} removed"),
                Change::Removed(index, before),
            ))
        }
        Edit::AddBackend(name, body) => {
            let table = table_from(body)?;
            let index = service_index(document, name, index)?;
            let address = table
                .get("address")
                .and_then(Value::as_str)
                .and_then(|a| a.parse::<IpAddr>().ok());
            if let Some(address) = address {
                let port = table
                    .get("port")
                    .and_then(Value::as_integer)
                    .and_then(|p| u16::try_from(p).ok());
                let selector = BackendSelector { address, port };
                if backend_index(document, index, &selector).is_ok() {
                    return Err(ApiError::new(
                        409,
                        format!("service {name} already has backend {selector}"),
                    )
                    .with_fix("change it with PUT …/backends/ADDRESS"));
                }
            }
            let before = services(document)[index].clone();
            backends_mut(document, index).push(Value::Table(table));
            Ok((
                format!("service {name}: backend added"),
                Change::Replaced(index, before),
            ))
        }
        Edit::ReplaceBackend(name, selector, body) => {
            let table = table_from(body)?;
            let service = service_index(document, name, index)?;
            let backend = backend_index(document, service, selector)?;
            let before = services(document)[service].clone();
            backends_mut(document, service)[backend] = Value::Table(table);
            Ok((
                format!("service {name}: backend {selector} replaced"),
                Change::Replaced(service, before),
            ))
        }
        Edit::RemoveBackend(name, selector) => {
            let service = service_index(document, name, index)?;
            let backend = backend_index(document, service, selector)?;
            let before = services(document)[service].clone();
            backends_mut(document, service).remove(backend);
            Ok((
                format!("service {name}: backend {selector} removed"),
                Change::Replaced(service, before),
            ))
        }
    }
}

fn table_from(body: &Json) -> Result<toml::Table, ApiError> {
    if !body.is_object() {
        return Err(ApiError::new(400, "the body must be a JSON object")
            .with_fix("send the same keys as a [[service]] / [[service.backend]] table of the config file"));
    }
    match Value::try_from(body) {
        Ok(Value::Table(table)) => Ok(table),
        Ok(_) => Err(ApiError::new(400, "the body must be a JSON object")),
        Err(err) => Err(
            ApiError::new(400, format!("the body cannot be a config table: {err}"))
                .with_fix("leave out null values; use the config file's keys and types"),
        ),
    }
}

fn services(document: &Document) -> &[Value] {
    document
        .get("service")
        .and_then(Value::as_array)
        .map_or(&[], |a| a.as_slice())
}

fn services_mut(document: &mut Document) -> &mut Vec<Value> {
    array_at(document, "service")
}

/// The array under `key`, made one if it is missing or something else.
fn array_at<'a>(table: &'a mut toml::Table, key: &str) -> &'a mut Vec<Value> {
    let entry = table.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    match entry {
        Value::Array(list) => list,
        _ => unreachable!("made an array above"),
    }
}

fn find_service(
    document: &Document,
    name: &str,
    index: Option<&HashMap<String, usize>>,
) -> Option<usize> {
    let services = services(document);
    let named = |s: &Value| s.get("name").and_then(Value::as_str) == Some(name);
    match index.map(|index| index.get(name).copied()) {
        Some(Some(place)) if services.get(place).is_some_and(named) => Some(place),
        // Not indexed: not there (a duplicate name would also be refused
        // by the rules across services).
        Some(None) => None,
        _ => services.iter().position(named),
    }
}

fn service_index(
    document: &Document,
    name: &str,
    index: Option<&HashMap<String, usize>>,
) -> Result<usize, ApiError> {
    find_service(document, name, index).ok_or_else(|| {
        ApiError::new(404, format!("no service named {name:?}"))
            .with_fix("GET /api/v1/services lists them")
    })
}

fn backends_mut(document: &mut Document, service: usize) -> &mut Vec<Value> {
    let entry = &mut services_mut(document)[service];
    if !entry.is_table() {
        *entry = Value::Table(toml::Table::new());
    }
    match entry {
        Value::Table(table) => array_at(table, "backend"),
        _ => unreachable!("made a table above"),
    }
}

fn backend_index(
    document: &Document,
    service: usize,
    selector: &BackendSelector,
) -> Result<usize, ApiError> {
    let table = &services(document)[service];
    let service_port = table.get("port").and_then(Value::as_integer);
    let name = table.get("name").and_then(Value::as_str).unwrap_or("?");
    let backends = table
        .get("backend")
        .and_then(Value::as_array)
        .map_or(&[][..], |a| a.as_slice());
    let matches: Vec<usize> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| {
            let address = b
                .get("address")
                .and_then(Value::as_str)
                .and_then(|a| a.parse::<IpAddr>().ok());
            let port = b.get("port").and_then(Value::as_integer).or(service_port);
            address == Some(selector.address)
                && selector
                    .port
                    .is_none_or(|wanted| port == Some(i64::from(wanted)))
        })
        .map(|(i, _)| i)
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(
            ApiError::new(404, format!("service {name} has no backend {selector}"))
                .with_fix(format!("GET /api/v1/services/{name} lists its backends")),
        ),
        _ => Err(ApiError::new(
            409,
            format!("service {name} has several backends at {selector}"),
        )
        .with_fix("name the port too, e.g. 10.77.1.11:8080")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const FILE: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "10.77.100.1"
port = 80
[[service.backend]]
address = "10.77.1.11"
[[service.backend]]
address = "10.77.1.12"
"#;

    fn document() -> Document {
        FILE.parse().unwrap()
    }

    fn valid(document: &Document) -> pnlb_core::config::Config {
        pnlb_core::config::validate_document(Path::new("api"), document).unwrap()
    }

    #[test]
    fn an_index_finds_what_a_search_finds_and_a_stale_place_is_searched_for() {
        let index_of = |doc: &Document| -> HashMap<String, usize> {
            services(doc)
                .iter()
                .enumerate()
                .filter_map(|(i, s)| Some((s.get("name")?.as_str()?.to_string(), i)))
                .collect()
        };
        let mut doc = document();
        let body = serde_json::json!({
            "name": "dns", "vip": "10.77.100.1", "port": 53, "protocol": "udp",
            "backend": [{"address": "10.77.1.21"}]
        });
        let index = index_of(&doc);
        apply_indexed(&mut doc, &Edit::AddService(body.clone()), &index).unwrap();
        let index = index_of(&doc);
        let again = apply_indexed(&mut doc, &Edit::AddService(body), &index).unwrap_err();
        assert_eq!(again.status, 409);
        let mut stale = index.clone();
        stale.insert("dns".into(), 0);
        let removed = apply_indexed(&mut doc, &Edit::RemoveService("dns".into()), &stale).unwrap();
        assert!(
            matches!(removed.change, Change::Removed(1, _)),
            "{removed:?}"
        );
        let index = index_of(&doc);
        let gone = apply_indexed(&mut doc, &Edit::RemoveService("dns".into()), &index);
        assert_eq!(gone.unwrap_err().status, 404);
    }

    #[test]
    fn services_are_added_replaced_and_removed_by_name() {
        let mut doc = document();
        let body = serde_json::json!({
            "name": "dns", "vip": "10.77.100.1", "port": 53, "protocol": "udp",
            "backend": [{"address": "10.77.1.21"}]
        });
        apply(&mut doc, &Edit::AddService(body.clone())).unwrap();
        assert_eq!(valid(&doc).services.len(), 2);
        assert_eq!(
            apply(&mut doc, &Edit::AddService(body)).unwrap_err().status,
            409
        );

        let replaced = serde_json::json!({"vip": "10.77.100.2", "port": 53, "protocol": "udp"});
        apply(&mut doc, &Edit::ReplaceService("dns".into(), replaced)).unwrap();
        let config = valid(&doc);
        assert_eq!(config.services[1].vip.to_string(), "10.77.100.2");
        assert!(config.services[1].backends.is_empty());

        apply(&mut doc, &Edit::RemoveService("dns".into())).unwrap();
        assert_eq!(valid(&doc).services.len(), 1);
        let err = apply(&mut doc, &Edit::RemoveService("dns".into())).unwrap_err();
        assert_eq!(err.status, 404);
    }

    #[test]
    fn backends_are_found_by_address_or_address_and_port() {
        let mut doc = document();
        let add = serde_json::json!({"address": "10.77.1.11", "port": 8080});
        apply(&mut doc, &Edit::AddBackend("web".into(), add)).unwrap();
        // The edit is the first step; validating the result is the second:
        // dr cannot map ports, so this document would be refused whole.
        assert!(pnlb_core::config::validate_document(Path::new("api"), &doc).is_err());
        let ambiguous = BackendSelector::parse("10.77.1.11").unwrap();
        let err = apply(&mut doc, &Edit::RemoveBackend("web".into(), ambiguous)).unwrap_err();
        assert_eq!(err.status, 409, "{err:?}");
        let exact = BackendSelector::parse("10.77.1.11:8080").unwrap();
        apply(&mut doc, &Edit::RemoveBackend("web".into(), exact)).unwrap();
        let one = BackendSelector::parse("10.77.1.12").unwrap();
        let weight = serde_json::json!({"address": "10.77.1.12", "weight": 5});
        apply(&mut doc, &Edit::ReplaceBackend("web".into(), one, weight)).unwrap();
        assert_eq!(valid(&doc).services[0].backends[1].weight, 5);
    }

    #[test]
    fn every_edit_is_undone_to_the_document_it_was_made_on() {
        let original = document();
        let web = BackendSelector::parse("10.77.1.12").unwrap();
        let edits = [
            Edit::AddService(serde_json::json!({"name": "dns", "vip": "10.77.100.2", "port": 53})),
            Edit::ReplaceService(
                "web".into(),
                serde_json::json!({"vip": "10.77.100.3", "port": 80}),
            ),
            Edit::RemoveService("web".into()),
            Edit::AddBackend("web".into(), serde_json::json!({"address": "10.77.1.13"})),
            Edit::ReplaceBackend(
                "web".into(),
                web,
                serde_json::json!({"address": "10.77.1.12", "weight": 3}),
            ),
            Edit::RemoveBackend("web".into(), web),
        ];
        for edit in edits {
            let mut doc = original.clone();
            let applied = apply(&mut doc, &edit).unwrap();
            assert_ne!(doc, original, "{edit:?} changed something");
            undo(applied.change, &mut doc);
            assert_eq!(doc, original, "{edit:?} undone");
        }
    }

    #[test]
    fn one_service_checked_among_the_others_is_refused_where_the_whole_document_is() {
        let file = FILE.replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\nmax_services = 3\nmax_backends = 4",
        ) + r#"
[[service]]
name = "out"
vip = "10.77.100.9"
port = 80
method = "snat"
snat_addresses = ["10.77.1.2"]
[[service.backend]]
address = "10.77.1.21"
"#;
        let base_document: Document = file.parse().unwrap();
        let base = valid(&base_document);
        let service = |vip: &str, port: u16, extra: serde_json::Value| {
            let mut body = serde_json::json!({"name": "new", "vip": vip, "port": port,
                "backend": [{"address": "10.77.1.31"}]});
            if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
                body.extend(extra.clone());
            }
            body
        };
        let cases = [
            (
                "a free listener",
                Edit::AddService(service("10.77.100.2", 80, serde_json::json!({}))),
                true,
            ),
            (
                "web's listener",
                Edit::AddService(service("10.77.100.1", 80, serde_json::json!({}))),
                false,
            ),
            (
                "a VIP that is out's SNAT address",
                Edit::AddService(service("10.77.1.2", 80, serde_json::json!({}))),
                false,
            ),
            (
                "an SNAT address that is web's VIP",
                Edit::AddService(service(
                    "10.77.100.2",
                    80,
                    serde_json::json!({"method": "snat", "snat_addresses": ["10.77.100.1"]}),
                )),
                false,
            ),
            (
                "an SNAT address that is its own VIP",
                Edit::AddService(service(
                    "10.77.100.2",
                    80,
                    serde_json::json!({"method": "snat", "snat_addresses": ["10.77.100.2"]}),
                )),
                false,
            ),
            (
                "web moved onto out's listener",
                Edit::ReplaceService(
                    "web".into(),
                    serde_json::json!({"vip": "10.77.100.9", "port": 80}),
                ),
                false,
            ),
            (
                "web moved onto out's SNAT address",
                Edit::ReplaceService(
                    "web".into(),
                    serde_json::json!({"vip": "10.77.1.2", "port": 80}),
                ),
                false,
            ),
            (
                "a fifth backend (max_backends 4)",
                Edit::AddService(service(
                    "10.77.100.2",
                    80,
                    serde_json::json!({"backend": [{"address": "10.77.1.31"}, {"address": "10.77.1.32"}]}),
                )),
                false,
            ),
            ("a service removed", Edit::RemoveService("web".into()), true),
        ];
        for (case, edit, accepted) in cases {
            let mut document = base_document.clone();
            let applied = apply(&mut document, &edit).unwrap();
            let whole = pnlb_core::config::validate_document(Path::new("api"), &document);
            let mut services = base.services.clone();
            let one = revalidate(
                Path::new("api"),
                &document,
                &applied.change,
                &base.daemon,
                &mut services,
            );
            assert_eq!(
                whole.is_ok(),
                accepted,
                "{case}: the whole document: {whole:?}"
            );
            assert_eq!(one.is_ok(), accepted, "{case}: one service: {one:?}");
            match whole {
                Ok(config) => assert_eq!(config.services, services, "{case}"),
                Err(whole) => {
                    assert_eq!(services, base.services, "{case}: undone");
                    let one = one.unwrap_err();
                    assert_eq!(
                        (&one.key, &one.reason),
                        (&whole.key, &whole.reason),
                        "{case}"
                    );
                }
            }
        }
    }

    #[test]
    fn bodies_that_are_not_config_tables_are_refused() {
        let mut doc = document();
        for body in [
            serde_json::json!([1, 2]),
            serde_json::json!({"name": "x", "vip": null}),
        ] {
            let err = apply(&mut doc, &Edit::AddService(body)).unwrap_err();
            assert_eq!(err.status, 400);
        }
        assert_eq!(doc, document(), "nothing changed");
        assert!(BackendSelector::parse("not-an-address").is_err());
        assert_eq!(
            BackendSelector::parse("[fd77:1::11]:80").unwrap().port,
            Some(80)
        );
    }
}
