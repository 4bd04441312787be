//! Live reload's decisions: what a new configuration may change without a
//! restart, the hash that names a configuration, what `/config_dump` shows
//! and what `sockwarden reload` is told. `run` does the reload itself (the
//! new kernel generation, then the proxy's policies, then the watchers).

use axum::http::StatusCode;
use sha2::{Digest, Sha256};

use crate::metrics::ReloadResult;

/// The parts of a configuration a reload puts in force: the policies and
/// the upstream defaults their rules inherit. The rest is fixed at start
/// (listeners, pins, TLS material, timeouts, engines).
pub const RELOADABLE: [&str; 2] = ["policies", "upstream"];

/// The top-level sections of `new` that differ from `old` and that only a
/// restart can change, in order.
pub fn restart_only_changes(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return vec!["(the whole configuration)".to_string()];
    };
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !RELOADABLE.contains(&k.as_str()) && old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// The hash of a configuration as it is in force (its serialized form, so
/// comments, spacing and key order in the file do not change it).
pub fn config_hash(config: &serde_json::Value) -> String {
    let digest = Sha256::digest(config.to_string().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// What `/config_dump` serves: the configuration in force (as configured:
/// `auto`, or null for what was left to be found), `resolved` (what those
/// turned out to be on this node), with its hash,
/// its generation (1 at start, one more for each reload put in force) and
/// each policy's kernel id (`policy_ids`, by name: ids are kept across
/// reloads, so they are not always the configuration's order).
pub fn dump(
    config: &serde_json::Value,
    generation: u64,
    ids: &[(&str, crate::policy::PolicyId)],
    resolved: &serde_json::Value,
) -> serde_json::Value {
    let mut out = config.clone();
    if let Some(map) = out.as_object_mut() {
        map.insert("resolved".into(), resolved.clone());
        map.insert("config_hash".into(), config_hash(config).into());
        map.insert("generation".into(), generation.into());
        let ids: serde_json::Map<String, serde_json::Value> = ids
            .iter()
            .map(|(n, id)| (n.to_string(), (*id).into()))
            .collect();
        map.insert("policy_ids".into(), ids.into());
    }
    out
}

/// Each policy's name by kernel id (`names[id]`), from a `/config_dump`.
pub fn names_by_id(dump: &serde_json::Value) -> Option<Vec<String>> {
    let ids = dump["policy_ids"].as_object()?;
    let len = ids
        .values()
        .filter_map(|v| v.as_u64())
        .max()
        .map_or(0, |m| m as usize + 1);
    let mut names = vec![String::new(); len];
    for (name, id) in ids {
        names[id.as_u64()? as usize] = name.clone();
    }
    Some(names)
}

/// A reload that did not put a new configuration in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadError {
    pub result: ReloadResult,
    pub message: String,
}

impl ReloadError {
    pub fn new(result: ReloadResult, message: impl Into<String>) -> ReloadError {
        ReloadError {
            result,
            message: message.into(),
        }
    }

    /// The status `POST /reload` answers with.
    pub fn status(&self) -> StatusCode {
        match self.result {
            ReloadResult::Invalid => StatusCode::BAD_REQUEST,
            ReloadResult::Rejected => StatusCode::CONFLICT,
            ReloadResult::Ok | ReloadResult::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What `sockwarden reload` prints.
    pub fn text(&self) -> String {
        format!(
            "reload {}: {}\nthe configuration in force is unchanged\n",
            self.result.label(),
            self.message
        )
    }
}

/// The refusal of a reload that changes restart-only sections.
pub fn rejection(changed: &[String]) -> Option<ReloadError> {
    (!changed.is_empty()).then(|| {
        ReloadError::new(
            ReloadResult::Rejected,
            format!(
                "{} cannot change without a restart (a reload puts in force {} only)",
                changed.join(", "),
                RELOADABLE.join(" and ")
            ),
        )
    })
}

/// Where `sockwarden reload` finds the running instance: `admin.listen` of
/// the configuration text, read leniently (the running instance judges the
/// file and says what is wrong with it, with file:line:column; here only
/// that one field matters), or the default admin address.
pub fn admin_address(text: &str) -> std::net::SocketAddr {
    #[derive(serde::Deserialize)]
    struct Admin {
        listen: Option<std::net::SocketAddr>,
    }
    #[derive(serde::Deserialize)]
    struct Only {
        admin: Option<Admin>,
    }
    serde_saphyr::from_str::<Only>(text)
        .ok()
        .and_then(|o| o.admin?.listen)
        .unwrap_or_else(crate::config::default_admin_listen)
}

/// How long `sockwarden reload` waits for the running instance's answer
/// (a reload loads and verifies every program).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `POST /reload` to the admin listener at `admin`: (status, body).
pub fn request(admin: std::net::SocketAddr) -> std::io::Result<(u16, String)> {
    call(admin, "POST", "/reload")
}

/// One request to the admin listener at `admin` (`sockwarden reload`,
/// `sockwarden status`): (status, body).
pub fn call(
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, std::time::Duration::from_secs(5))?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: sockwarden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    s.take(16 << 20).read_to_end(&mut raw)?;
    parse_reply(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the admin listener's answer is not an HTTP response",
        )
    })
}

/// The status and body of the admin listener's answer (read to its close).
fn parse_reply(raw: &[u8]) -> Option<(u16, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = resp.parse(raw).ok()? else {
        return None;
    };
    Some((
        resp.code?,
        String::from_utf8_lossy(&raw[head..]).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_policies_and_upstream_change_on_reload() {
        let base = json!({"proxy": {"listen": "10.0.0.1:15001"}, "upstream": {"connect_timeout": "2s"}, "policies": [{"name": "a"}]});
        let cases = [
            (
                json!({"proxy": {"listen": "10.0.0.1:15001"}, "upstream": {"connect_timeout": "5s"}, "policies": [{"name": "b"}]}),
                vec![],
            ),
            (
                json!({"proxy": {"listen": "10.0.0.2:15001"}, "upstream": {"connect_timeout": "2s"}, "policies": []}),
                vec!["proxy"],
            ),
            (
                json!({"proxy": {"listen": "10.0.0.1:15001"}, "upstream": {"connect_timeout": "2s"}, "policies": [], "tls": {}}),
                vec!["tls"],
            ),
            (json!({"upstream": {}, "policies": []}), vec!["proxy"]),
        ];
        for (new, want) in cases {
            assert_eq!(restart_only_changes(&base, &new), want, "{new}");
        }
        let rejected = rejection(&["proxy".into(), "tls".into()]).expect("rejected");
        assert_eq!(rejected.status(), StatusCode::CONFLICT);
        assert_eq!(
            rejected.text(),
            "reload rejected: proxy, tls cannot change without a restart (a reload puts in force policies and upstream only)\nthe configuration in force is unchanged\n"
        );
        assert_eq!(rejection(&[]), None);
    }

    #[test]
    fn the_hash_names_the_configuration_not_its_spelling() {
        let a = json!({"a": 1, "b": [1, 2]});
        let b: serde_json::Value = serde_json::from_str("{ \"b\": [1,2], \"a\": 1 }").unwrap();
        assert_eq!(config_hash(&a), config_hash(&b));
        assert_ne!(config_hash(&a), config_hash(&json!({"a": 2, "b": [1, 2]})));
        assert!(config_hash(&a).starts_with("sha256:") && config_hash(&a).len() == 7 + 64);
        let d = dump(
            &a,
            3,
            &[("web", 2), ("db", 0)],
            &json!({"engine": "splice"}),
        );
        assert_eq!(d["a"], 1);
        assert_eq!(d["generation"], 3);
        assert_eq!(d["config_hash"], config_hash(&a));
        assert_eq!(d["policy_ids"], json!({"web": 2, "db": 0}));
        assert_eq!(d["resolved"]["engine"], "splice");
        assert_eq!(
            names_by_id(&d),
            Some(vec!["db".to_string(), String::new(), "web".to_string()])
        );
        assert_eq!(names_by_id(&a), None);
    }

    #[test]
    fn the_answer_is_read_whole_or_not_at_all() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nreloaded\n";
        assert_eq!(parse_reply(ok), Some((200, "reloaded\n".to_string())));
        assert_eq!(parse_reply(b"HTTP/1.1 409 Conf"), None);
        assert_eq!(parse_reply(b"not http\r\n\r\n"), None);
    }

    #[test]
    fn reload_finds_the_admin_listener_even_in_a_broken_file() {
        let cases = [
            (
                "admin: { listen: \"10.0.0.1:9999\" }\npolicies: []\n",
                "10.0.0.1:9999",
            ),
            // A mistake elsewhere: the running instance will name it.
            (
                "admin:\n  listen: 127.0.0.1:9100\npolicies:\n  - egress: [{ ports: [eighty] }]\n",
                "127.0.0.1:9100",
            ),
            ("policies: []\n", "127.0.0.1:9901"),
            ("::: not yaml", "127.0.0.1:9901"),
        ];
        for (text, want) in cases {
            assert_eq!(admin_address(text).to_string(), want, "{text}");
        }
    }

    #[test]
    fn each_failure_has_its_status() {
        let cases = [
            (ReloadResult::Invalid, StatusCode::BAD_REQUEST),
            (ReloadResult::Rejected, StatusCode::CONFLICT),
            (ReloadResult::Failed, StatusCode::INTERNAL_SERVER_ERROR),
        ];
        for (result, status) in cases {
            assert_eq!(ReloadError::new(result, "x").status(), status, "{result:?}");
        }
    }
}
