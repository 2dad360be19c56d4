//! A small client for the coordinator's REST API: typed helpers for the happy paths
//! (`register`, `login`, `create_vm`, …) that fail with the status and body when the answer
//! is not the expected one, and raw helpers that return whatever came back, for tests of
//! error paths.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Longer than the coordinator's default operation timeout (120 s), so that a slow VM
/// operation is reported by the coordinator, not cut off by the client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(150);

/// `GET /api/health`.
#[derive(Debug, Clone, Deserialize)]
pub struct Health {
    pub status: String,
    pub database: String,
    pub agents_connected: u64,
}

/// A user as `POST /api/auth/register` returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct RegisteredUser {
    pub id: String,
    pub username: String,
}

/// The user part of `POST /api/auth/login`.
#[derive(Debug, Clone, Deserialize)]
pub struct LoggedInUser {
    pub id: String,
    pub username: String,
    pub role: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoginResponse {
    pub token: String,
    pub expires_at: Value,
    pub user: LoggedInUser,
}

/// A VM as the API shows it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub status: String,
    pub cpu: u32,
    pub memory: u64,
    pub disk_gb: u64,
    pub host: Option<String>,
    pub owner_id: String,
    pub created_at: String,
    /// The image the VM was made from.
    #[serde(default)]
    pub image: Option<String>,
    /// The guest's addresses, as its host reports them.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Where SSH reaches the guest through its host, when the host forwards it.
    #[serde(default)]
    pub ssh: Option<SshEndpoint>,
}

/// A VM's `ssh` object.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct SshEndpoint {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
}

/// An image as the API shows it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub os: Option<String>,
    pub status: String,
    pub error: Option<String>,
    pub size_bytes: Option<u64>,
    pub virtual_size_bytes: Option<u64>,
    pub format: Option<String>,
    pub sha256: Option<String>,
    pub min_disk_gb: Option<u64>,
    pub default_user: String,
    pub created_at: String,
}

/// A stored SSH key as the API shows it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SshKey {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: String,
    pub fingerprint: String,
    pub public_key: String,
    pub created_at: String,
}

/// A host as `GET /api/hosts` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Host {
    pub id: String,
    pub status: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_gb: u64,
    pub kvm_usable: bool,
    pub hypervisor: String,
    pub libvirt_version: String,
    pub allocated: Allocated,
    pub vms: u64,
    /// The epoch of the host's agent's latest registration.
    #[serde(default)]
    pub session: u64,
}

/// What the coordinator has reserved on a host for its VMs.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct Allocated {
    pub cpu: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
}

/// A user's limits, as `GET /api/quota` shows them (`max_memory` in MiB).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct QuotaLimits {
    pub max_vms: u64,
    pub max_cpu: u64,
    pub max_memory: u64,
    pub max_disk_gb: u64,
    pub max_snapshots: u64,
}

/// What a user's resources take (`memory` in MiB).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub struct QuotaUsage {
    pub vms: u64,
    pub cpu: u64,
    pub memory: u64,
    pub disk_gb: u64,
    pub snapshots: u64,
}

/// `GET /api/quota`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct QuotaView {
    pub quota: QuotaLimits,
    pub usage: QuotaUsage,
}

/// Any answer: status, headers, and the body parsed as JSON (`Value::Null` when empty,
/// `Value::String` with the raw text when it is not JSON).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Response {
    /// This response when its status is `status`, otherwise an error showing what came back.
    pub fn expect_status(self, status: u16) -> Result<Self> {
        if self.status == status {
            Ok(self)
        } else {
            bail!(
                "expected HTTP {status}, got {} with body {}",
                self.status,
                self.body
            )
        }
    }

    /// Checks that this is an error response with `status` and the documented body
    /// `{"code": <status>, "message": "<non-empty>"}`, and returns the message.
    pub fn expect_error(&self, status: u16) -> Result<String> {
        self.expect_error_in(&[status])
    }

    /// As [`Response::expect_error`], accepting any of `statuses`.
    pub fn expect_error_in(&self, statuses: &[u16]) -> Result<String> {
        if !statuses.contains(&self.status) {
            bail!(
                "expected HTTP {statuses:?}, got {} with body {}",
                self.status,
                self.body
            );
        }
        let code = self.body.get("code").and_then(Value::as_u64);
        if code != Some(u64::from(self.status)) {
            bail!(
                "error body must carry \"code\": {}; got body {}",
                self.status,
                self.body
            );
        }
        match self.body.get("message").and_then(Value::as_str) {
            Some(message) if !message.trim().is_empty() => Ok(message.to_owned()),
            _ => bail!(
                "error body must carry a non-empty \"message\"; got body {}",
                self.body
            ),
        }
    }

    /// The body deserialized as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.body.clone()).with_context(|| {
            format!(
                "unexpected body shape (HTTP {}): {}",
                self.status, self.body
            )
        })
    }

    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// A client of one coordinator, optionally logged in.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    user: Option<LoggedInUser>,
}

impl Api {
    /// A client without a token for the coordinator at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("building an HTTP client without TLS cannot fail");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: None,
            user: None,
        }
    }

    /// A client without a token whose connections come from `local` (any 127.0.0.0/8
    /// address works on loopback): another client, as the coordinator sees it.
    pub fn from_address(base: &str, local: std::net::IpAddr) -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .local_address(local)
            .build()
            .expect("building an HTTP client without TLS cannot fail");
        Self {
            http,
            ..Self::new(base)
        }
    }

    /// The same client sending `Authorization: Bearer <token>`.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            user: None,
            ..self.clone()
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The logged-in user (after [`Api::login`]).
    pub fn user(&self) -> &LoggedInUser {
        self.user.as_ref().expect("this client did not log in")
    }

    // ---- raw requests ------------------------------------------------------------------

    /// Sends a request with this client's token (if any) and an optional JSON body.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Response> {
        let authorization = self.token.as_ref().map(|token| format!("Bearer {token}"));
        let bytes = body.map(|body| serde_json::to_vec(body).expect("a Value always serializes"));
        self.send_raw(method, path, authorization.as_deref(), bytes)
            .await
    }

    /// Sends a request with exactly the given `Authorization` header (or none) and raw body
    /// bytes labelled `application/json`: for malformed bodies and bad tokens.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Response> {
        self.send_raw_with_headers(method, path, authorization, body, &[])
            .await
    }

    /// Sends a request with this client's token (if any), an optional JSON body and extra
    /// headers (e.g. `X-Forwarded-For`).
    pub async fn send_with_headers(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        let authorization = self.token.as_ref().map(|token| format!("Bearer {token}"));
        let bytes = body.map(|body| serde_json::to_vec(body).expect("a Value always serializes"));
        self.send_raw_with_headers(method, path, authorization.as_deref(), bytes, headers)
            .await
    }

    /// As [`Api::send_raw`], with extra headers.
    pub async fn send_raw_with_headers(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading {method} {url}"))?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Response> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Response> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Response> {
        self.send(Method::DELETE, path, None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Response> {
        self.send(Method::PUT, path, Some(body)).await
    }

    /// `PUT <path>` with raw bytes as `application/octet-stream` (an image file).
    pub async fn put_bytes(&self, path: &str, bytes: Vec<u8>) -> Result<Response> {
        let authorization = self.token.as_ref().map(|token| format!("Bearer {token}"));
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .put(&url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(bytes);
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        let response = request.send().await.with_context(|| format!("PUT {url}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading PUT {url}"))?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// `GET <path>` and the body as text, whatever its type (e.g. Prometheus metrics);
    /// fails unless the answer is 200.
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading GET {url}"))?;
        if !status.is_success() {
            bail!("GET {url} answered {status}: {text}");
        }
        Ok(text)
    }

    // ---- typed happy paths ---------------------------------------------------------------

    pub async fn health(&self) -> Result<Health> {
        self.get("/api/health").await?.expect_status(200)?.json()
    }

    pub async fn try_register(&self, username: &str, password: &str) -> Result<Response> {
        self.post(
            "/api/auth/register",
            &json!({"username": username, "password": password}),
        )
        .await
    }

    /// Registers a user; expects 201.
    pub async fn register(&self, username: &str, password: &str) -> Result<RegisteredUser> {
        self.try_register(username, password)
            .await?
            .expect_status(201)
            .with_context(|| format!("registering {username:?}"))?
            .json()
    }

    pub async fn try_login(&self, username: &str, password: &str) -> Result<Response> {
        self.post(
            "/api/auth/login",
            &json!({"username": username, "password": password}),
        )
        .await
    }

    /// Logs in (expects 200) and returns a client that sends the new token.
    pub async fn login(&self, username: &str, password: &str) -> Result<Api> {
        let login: LoginResponse = self
            .try_login(username, password)
            .await?
            .expect_status(200)
            .with_context(|| format!("logging in as {username:?}"))?
            .json()?;
        Ok(Self {
            token: Some(login.token),
            user: Some(login.user),
            ..self.clone()
        })
    }

    pub async fn try_create_vm(&self, body: &Value) -> Result<Response> {
        self.post("/api/vms", body).await
    }

    /// Creates a VM (expects 201) and returns it.
    pub async fn create_vm(
        &self,
        name: &str,
        cpu: u32,
        memory_mib: u64,
        disk_gb: Option<u64>,
    ) -> Result<Vm> {
        let mut body = json!({"name": name, "cpu": cpu, "memory": memory_mib});
        if let Some(disk_gb) = disk_gb {
            body["disk_gb"] = json!(disk_gb);
        }
        self.try_create_vm(&body)
            .await?
            .expect_status(201)
            .with_context(|| format!("creating VM {name:?}"))?
            .json()
    }

    pub async fn list_vms(&self) -> Result<Vec<Vm>> {
        self.get("/api/vms").await?.expect_status(200)?.json()
    }

    pub async fn get_vm(&self, id: &str) -> Result<Vm> {
        self.get(&format!("/api/vms/{id}"))
            .await?
            .expect_status(200)
            .with_context(|| format!("getting VM {id}"))?
            .json()
    }

    pub async fn try_action(&self, id: &str, action: &str) -> Result<Response> {
        self.post(&format!("/api/vms/{id}/action"), &json!({"action": action}))
            .await
    }

    /// Runs an action on a VM (expects 200) and returns the VM as it is afterwards.
    pub async fn action(&self, id: &str, action: &str) -> Result<Vm> {
        self.try_action(id, action)
            .await?
            .expect_status(200)
            .with_context(|| format!("action {action:?} on VM {id}"))?
            .json()
    }

    pub async fn try_delete_vm(&self, id: &str) -> Result<Response> {
        self.delete(&format!("/api/vms/{id}")).await
    }

    /// Deletes a VM; expects 204.
    pub async fn delete_vm(&self, id: &str) -> Result<()> {
        self.try_delete_vm(id)
            .await?
            .expect_status(204)
            .with_context(|| format!("deleting VM {id}"))?;
        Ok(())
    }

    /// `GET /api/hosts` (admin only).
    pub async fn hosts(&self) -> Result<Vec<Host>> {
        self.get("/api/hosts").await?.expect_status(200)?.json()
    }

    /// `POST /api/images` (admin only); expects 201 and returns the image.
    pub async fn create_image(&self, body: &Value) -> Result<Image> {
        self.post("/api/images", body)
            .await?
            .expect_status(201)
            .with_context(|| format!("creating image {body}"))?
            .json()
    }

    pub async fn get_image(&self, id: &str) -> Result<Image> {
        self.get(&format!("/api/images/{id}"))
            .await?
            .expect_status(200)
            .with_context(|| format!("getting image {id}"))?
            .json()
    }

    pub async fn list_images(&self) -> Result<Vec<Image>> {
        self.get("/api/images").await?.expect_status(200)?.json()
    }

    /// `PUT /api/images/{id}/file` with the file's bytes, whatever the answer.
    pub async fn try_upload_image(&self, id: &str, bytes: Vec<u8>) -> Result<Response> {
        self.put_bytes(&format!("/api/images/{id}/file"), bytes)
            .await
    }

    /// Uploads an image's file; expects 200 and returns the image (then `ready`).
    pub async fn upload_image(&self, id: &str, bytes: Vec<u8>) -> Result<Image> {
        self.try_upload_image(id, bytes)
            .await?
            .expect_status(200)
            .with_context(|| format!("uploading the file of image {id}"))?
            .json()
    }

    /// Waits until the image is no longer `downloading` and returns it.
    pub async fn wait_for_download(&self, id: &str) -> Result<Image> {
        crate::wait_until(
            &format!("image {id} to finish downloading"),
            Duration::from_secs(60),
            || async {
                let image = self.get_image(id).await?;
                Ok((image.status != "downloading").then_some(image))
            },
        )
        .await
    }

    /// `POST /api/keys`; expects 201 and returns the stored key.
    pub async fn add_key(&self, name: &str, public_key: &str) -> Result<SshKey> {
        self.post(
            "/api/keys",
            &json!({"name": name, "public_key": public_key}),
        )
        .await?
        .expect_status(201)
        .with_context(|| format!("adding key {name:?}"))?
        .json()
    }

    pub async fn list_keys(&self) -> Result<Vec<SshKey>> {
        self.get("/api/keys").await?.expect_status(200)?.json()
    }

    /// `GET /api/quota`: the caller's quota and usage.
    pub async fn quota(&self) -> Result<QuotaView> {
        self.get("/api/quota").await?.expect_status(200)?.json()
    }

    /// `GET /api/quota/{user_id}` (admin only).
    pub async fn quota_of(&self, user_id: &str) -> Result<QuotaView> {
        self.get(&format!("/api/quota/{user_id}"))
            .await?
            .expect_status(200)
            .with_context(|| format!("getting the quota of user {user_id}"))?
            .json()
    }

    /// `PUT /api/quota/{user_id}` with any subset of the limits (admin only); expects 200
    /// and returns the new limits.
    pub async fn set_quota(&self, user_id: &str, changes: &Value) -> Result<QuotaLimits> {
        self.put(&format!("/api/quota/{user_id}"), changes)
            .await?
            .expect_status(200)
            .with_context(|| format!("setting the quota of user {user_id} to {changes}"))?
            .json()
    }
}
