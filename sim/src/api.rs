//! The coordinator's REST API as the simulator uses it: accounts and tokens, creates, and
//! the whole fleet as the API shows it (every page of `GET /api/vms` and `GET /api/hosts`).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

/// A client of the API, logged in as one user.
#[derive(Clone, Debug)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    pub token: String,
}

/// A VM as `GET /api/vms` shows it (the fields the audit reads).
#[derive(Clone, Debug, Deserialize)]
pub struct VmRecord {
    pub id: String,
    pub status: String,
    pub host: String,
}

/// A host as `GET /api/hosts` shows it.
#[derive(Clone, Debug, Deserialize)]
pub struct HostRecord {
    pub id: String,
    pub status: String,
    pub vms: u64,
}

/// The connection pool every simulated user shares, as the clients of one process would:
/// the connections open are about the requests in flight (32 while populating), never a
/// pool per user that together outgrow the coordinator's `HTTP_MAX_CONNECTIONS` (the
/// coordinator then closes the longest idle connection, which a pool per user may be
/// reusing at that moment). A connection idle for 30 s is dropped before the coordinator's
/// `HTTP_IDLE_TIMEOUT` (60 s) can close it under a request.
fn shared_http() -> Result<reqwest::Client> {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(http) = HTTP.get() {
        return Ok(http.clone());
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?;
    Ok(HTTP.get_or_init(|| http).clone())
}

impl Api {
    /// Logs in as `username`.
    pub async fn login(base: &str, username: &str, password: &str) -> Result<Api> {
        let http = shared_http()?;
        let answer = http
            .post(format!("{base}/api/auth/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await?;
        if !answer.status().is_success() {
            bail!("login as {username} answered {}", answer.status());
        }
        let body: Value = answer.json().await?;
        let token = body["token"]
            .as_str()
            .context("login answered no token")?
            .to_owned();
        Ok(Api {
            http,
            base: base.to_owned(),
            token,
        })
    }

    /// Registers `username` and logs in as them.
    pub async fn register(base: &str, username: &str, password: &str) -> Result<Api> {
        let answer = shared_http()?
            .post(format!("{base}/api/auth/register"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await?;
        if !answer.status().is_success() {
            bail!("registering {username} answered {}", answer.status());
        }
        Api::login(base, username, password).await
    }

    /// Creates a VM (1 vCPU, 64 MiB, 1 GB) and returns its ID once it runs.
    pub async fn create_vm(&self, name: &str) -> Result<String> {
        let answer = self
            .http
            .post(format!("{}/api/vms", self.base))
            .bearer_auth(&self.token)
            .json(&json!({ "name": name, "cpu": 1, "memory": 64, "disk_gb": 1 }))
            .send()
            .await?;
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        if status.as_u16() != 201 {
            bail!("create {name} answered {status}: {body}");
        }
        Ok(body["id"].as_str().context("no VM ID")?.to_owned())
    }

    /// One VM, as the API shows it now.
    pub async fn vm(&self, id: &str) -> Result<VmRecord> {
        let answer = self
            .http
            .get(format!("{}/api/vms/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !answer.status().is_success() {
            bail!("GET /api/vms/{id} answered {}", answer.status());
        }
        Ok(answer.json().await?)
    }

    /// Every item of a paginated list, following `X-Next-Cursor`.
    pub async fn every_page<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Vec<T>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let separator = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(cursor) => format!("{}{path}{separator}limit=1000&cursor={cursor}", self.base),
                None => format!("{}{path}{separator}limit=1000", self.base),
            };
            let answer = self.http.get(url).bearer_auth(&self.token).send().await?;
            if !answer.status().is_success() {
                bail!("GET {path} answered {}", answer.status());
            }
            cursor = answer
                .headers()
                .get("x-next-cursor")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let page: Vec<T> = answer.json().await?;
            items.extend(page);
            if cursor.is_none() {
                return Ok(items);
            }
        }
    }

    /// Every VM the caller may see, by ID.
    pub async fn all_vms(&self) -> Result<HashMap<String, VmRecord>> {
        let vms: Vec<VmRecord> = self.every_page("/api/vms").await?;
        Ok(vms.into_iter().map(|vm| (vm.id.clone(), vm)).collect())
    }

    /// Every host (admins only), by ID.
    pub async fn all_hosts(&self) -> Result<HashMap<String, HostRecord>> {
        let hosts: Vec<HostRecord> = self.every_page("/api/hosts").await?;
        Ok(hosts
            .into_iter()
            .map(|host| (host.id.clone(), host))
            .collect())
    }

    /// How many items `path` lists (up to `limit`): a cheap look at one page.
    pub async fn count(&self, path: &str) -> Result<usize> {
        let answer = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !answer.status().is_success() {
            bail!("GET {path} answered {}", answer.status());
        }
        let page: Vec<Value> = answer.json().await?;
        Ok(page.len())
    }
}
