//! The key admin API over HTTP: master key only, create → use → restrict to models → update
//! limits → revoke, each change seen by the request path within the key cache TTL; the
//! listing never shows a key or its hash; bad bodies get OpenAI-shaped errors.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failures should say where

use std::net::SocketAddr;
use std::time::Duration;

use gateway::{Application, Config};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const MASTER: &str = "sk-admin-test-master";
const TTL: Duration = Duration::from_millis(50);

struct Gateway {
    addr: SocketAddr,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start() -> Self {
        // SAFETY: set once, before the gateway (the only reader) starts; nextest runs each
        // test in its own process.
        unsafe { std::env::set_var("SWITCHYARD_ADMIN_TEST_MASTER", MASTER) };
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::from_toml(&format!(
            r#"
[server]
master_key_env = "SWITCHYARD_ADMIN_TEST_MASTER"

[auth]
key_cache_ttl_ms = {ttl}

[database]
url = "sqlite://{db}"

[providers.mock]
kind = "mock"

[models.m1]
provider = "mock"

[models.m2]
provider = "mock"

[routes.auto]
candidates = ["m1", "m2"]
default = "m1"
"#,
            ttl = TTL.as_millis(),
            db = dir.path().join("log.db").display(),
        ))
        .expect("config");
        let app = Application::build(&config, Some(SocketAddr::from(([127, 0, 0, 1], 0)))).await.expect("gateway builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let gateway = Self { addr: app.addr(), client: reqwest::Client::new(), _stop: stop, _dir: dir };
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        gateway
    }

    async fn call(&self, method: reqwest::Method, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("http://{}{path}", self.addr)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("reachable");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn chat(&self, key: &str, model: &str) -> (u16, Value) {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        self.call(reqwest::Method::POST, "/v1/chat/completions", key, Some(body)).await
    }
}

/// Waits out the key cache so the next request sees the database.
async fn cache_expires() {
    tokio::time::sleep(TTL * 3).await;
}

#[tokio::test]
async fn keys_are_managed_over_http_by_the_master_key_only() {
    let gw = Gateway::start().await;
    use reqwest::Method;

    // Create, restricted to m1 and the route.
    let (status, created) = gw
        .call(Method::POST, "/admin/keys", MASTER, Some(json!({"tenant": "acme", "name": "ci", "models": ["m1", "auto"], "rpm": 100})))
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().expect("key shown once").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with("sk-sy-"));
    assert_eq!(created["models"], json!(["m1", "auto"]));

    // A virtual key is not an admin, nor is a caller without a key.
    let (status, refused) = gw.call(Method::GET, "/admin/keys", &key, None).await;
    assert_eq!(status, 401, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_api_key");
    assert_eq!(gw.call(Method::POST, "/admin/keys", &key, Some(json!({"tenant": "evil"}))).await.0, 401);
    assert_eq!(gw.call(Method::POST, &format!("/admin/keys/{id}/revoke"), &key, None).await.0, 401);

    // The allow-list holds on the request path: 403 with an OpenAI error naming the model.
    assert_eq!(gw.chat(&key, "m1").await.0, 200);
    assert_eq!(gw.chat(&key, "auto").await.0, 200);
    let (status, denied) = gw.chat(&key, "m2").await;
    assert_eq!(status, 403, "{denied}");
    assert_eq!(denied["error"]["code"], "model_not_allowed");
    assert_eq!(denied["error"]["param"], "model");

    // The listing shows the record, never the key or its hash.
    let (status, listed) = gw.call(Method::GET, "/admin/keys", MASTER, None).await;
    assert_eq!(status, 200, "{listed}");
    let records = listed["data"].as_array().expect("data");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["id"], id.as_str());
    assert_eq!(records[0]["rpm"], 100);
    let text = listed.to_string();
    assert!(!text.contains(&key) && !text.contains("key_hash"), "{text}");

    // Lift the allow-list and set a token limit: m2 is served once the cache expires.
    let (status, updated) = gw.call(Method::PATCH, &format!("/admin/keys/{id}"), MASTER, Some(json!({"models": null, "tpm": 5000}))).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!((updated["models"].clone(), updated["tpm"].clone(), updated["rpm"].clone()), (Value::Null, json!(5000), json!(100)));
    cache_expires().await;
    assert_eq!(gw.chat(&key, "m2").await.0, 200);

    // Bad bodies and unknown ids.
    for (body, param) in [
        (json!({"rpm": 0}), Some("rpm")),
        (json!({"budget_usd": -1}), Some("budget_usd")),
        (json!({}), None),
        (json!({"colour": "red"}), None),
    ] {
        let (status, error) = gw.call(Method::PATCH, &format!("/admin/keys/{id}"), MASTER, Some(body.clone())).await;
        assert_eq!(status, 400, "{body} -> {error}");
        assert_eq!(error["error"]["param"].as_str(), param, "{body} -> {error}");
    }
    let (status, error) = gw.call(Method::POST, "/admin/keys", MASTER, Some(json!({"tenant": " "}))).await;
    assert_eq!((status, error["error"]["param"].as_str()), (400, Some("tenant")), "{error}");
    let unknown = uuid::Uuid::now_v7();
    assert_eq!(gw.call(Method::PATCH, &format!("/admin/keys/{unknown}"), MASTER, Some(json!({"rpm": 5}))).await.0, 404);
    assert_eq!(gw.call(Method::POST, &format!("/admin/keys/{unknown}/revoke"), MASTER, None).await.0, 404);
    assert_eq!(gw.call(Method::POST, "/admin/keys/not-a-uuid/revoke", MASTER, None).await.0, 400);

    // Revoke: the key stops working once the cache expires.
    let (status, revoked) = gw.call(Method::POST, &format!("/admin/keys/{id}/revoke"), MASTER, None).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["enabled"], false);
    cache_expires().await;
    assert_eq!(gw.chat(&key, "m1").await.0, 401);
}
