//! The HTTP side: requests with the bearer token, answers read as the API's types, errors
//! turned into the API's message and an exit code, whole lists read page by page, and the
//! names users type (VMs, images, keys, snapshots, users, tokens) turned into IDs.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use vmm_shared::api::ErrorBody;
use vmm_shared::api::images::ImageView;
use vmm_shared::api::keys::SshKeyView;
use vmm_shared::api::page::NEXT_CURSOR_HEADER;
use vmm_shared::api::snapshots::SnapshotView;
use vmm_shared::api::tokens::ApiTokenView;
use vmm_shared::api::users::AdminUserView;
use vmm_shared::api::vms::VmView;

use crate::exit::{Failure, Result};

/// Longer than the coordinator's default operation timeout (120 s): a slow VM operation is
/// reported by the coordinator, not cut off here.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(150);

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(base: String, token: Option<String>) -> Result<Self> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::usage(format!(
                "the API URL {base:?} must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("vmmctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Failure::general)?;
        Ok(Self { http, base, token })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `path` (e.g. `/api/vms`), with the token when there is one.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT);
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Fails when no token is known, before asking the API.
    pub fn require_token(&self) -> Result<()> {
        if self.token.is_some() {
            Ok(())
        } else {
            Err(Failure::new(
                Failure::AUTH,
                "not logged in: run `vmmctl login` or set VMM_TOKEN",
            ))
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.require_token()?;
        read_json(self.send(self.request(Method::GET, path)).await?).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.require_token()?;
        read_json(
            self.send(self.request(Method::POST, path).json(body))
                .await?,
        )
        .await
    }

    /// A POST without a body.
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.require_token()?;
        read_json(self.send(self.request(Method::POST, path)).await?).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.require_token()?;
        read_json(
            self.send(self.request(Method::PUT, path).json(body))
                .await?,
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.require_token()?;
        self.send(self.request(Method::DELETE, path)).await?;
        Ok(())
    }

    /// A whole list: every page, following `X-Next-Cursor`.
    pub async fn list<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>> {
        self.require_token()?;
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                None => path.to_owned(),
                Some(cursor) => {
                    let join = if path.contains('?') { '&' } else { '?' };
                    format!("{path}{join}cursor={cursor}")
                }
            };
            let response = self.send(self.request(Method::GET, &url)).await?;
            let next = response
                .headers()
                .get(NEXT_CURSOR_HEADER)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let page: Vec<T> = read_json(response).await?;
            items.extend(page);
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(items),
            }
        }
    }

    /// Sends a request; an answer other than 2xx becomes a [`Failure`] with the API's message.
    pub async fn send(&self, builder: RequestBuilder) -> Result<Response> {
        let response = builder.send().await.map_err(|err| self.transport(err))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(api_failure(response).await)
        }
    }

    /// A request that never got an answer.
    pub fn transport(&self, err: reqwest::Error) -> Failure {
        if err.is_timeout() {
            Failure::new(
                Failure::TIMEOUT,
                format!("the coordinator at {} did not answer in time", self.base),
            )
        } else if err.is_connect() {
            Failure::new(
                Failure::UNREACHABLE,
                format!(
                    "cannot reach the coordinator at {} ({}); is it running? (set --url or VMM_URL)",
                    self.base,
                    root_cause(&err)
                ),
            )
        } else {
            Failure::general(format!(
                "request to {} failed: {}",
                self.base,
                root_cause(&err)
            ))
        }
    }

    // ---- names to IDs ----------------------------------------------------------------

    /// A VM by ID or name.
    pub async fn vm(&self, name_or_id: &str) -> Result<VmView> {
        if is_uuid(name_or_id) {
            return self.get(&format!("/api/vms/{name_or_id}")).await;
        }
        let vms: Vec<VmView> = self.list("/api/vms").await?;
        one(
            "VM",
            name_or_id,
            vms.into_iter().filter(|vm| vm.name == name_or_id),
        )
    }

    /// An image by ID or name.
    pub async fn image(&self, name_or_id: &str) -> Result<ImageView> {
        if is_uuid(name_or_id) {
            return self.get(&format!("/api/images/{name_or_id}")).await;
        }
        let images: Vec<ImageView> = self.list("/api/images").await?;
        one(
            "image",
            name_or_id,
            images.into_iter().filter(|image| image.name == name_or_id),
        )
    }

    /// One of the caller's keys by ID or name.
    pub async fn key(&self, name_or_id: &str) -> Result<SshKeyView> {
        let keys: Vec<SshKeyView> = self.list("/api/keys").await?;
        one(
            "key",
            name_or_id,
            keys.into_iter()
                .filter(|key| key.name == name_or_id || key.id.to_string() == name_or_id),
        )
    }

    /// A snapshot of `vm` by ID or name.
    pub async fn snapshot(&self, vm: &VmView, name_or_id: &str) -> Result<SnapshotView> {
        let snapshots: Vec<SnapshotView> =
            self.list(&format!("/api/vms/{}/snapshots", vm.id)).await?;
        one(
            "snapshot",
            name_or_id,
            snapshots.into_iter().filter(|snapshot| {
                snapshot.name == name_or_id || snapshot.id.to_string() == name_or_id
            }),
        )
        .map_err(|failure| Failure {
            message: format!("{} (of VM {})", failure.message, vm.name),
            ..failure
        })
    }

    /// A user by ID or username (administrators only).
    pub async fn user(&self, name_or_id: &str) -> Result<AdminUserView> {
        let users: Vec<AdminUserView> = self.list("/api/admin/users").await?;
        one(
            "user",
            name_or_id,
            users.into_iter().filter(|user| {
                user.username.eq_ignore_ascii_case(name_or_id) || user.id.to_string() == name_or_id
            }),
        )
    }

    /// One of the caller's API tokens by name.
    pub async fn token(&self, name: &str) -> Result<ApiTokenView> {
        let tokens: Vec<ApiTokenView> = self.list("/api/tokens").await?;
        one(
            "API token",
            name,
            tokens.into_iter().filter(|token| token.name == name),
        )
    }
}

/// The one item of `matches`: none is "not found", several ask for the ID.
fn one<T>(what: &str, name: &str, matches: impl Iterator<Item = T>) -> Result<T> {
    let mut matches: Vec<T> = matches.collect();
    match matches.len() {
        0 => Err(Failure::not_found(format!("no {what} named {name:?}"))),
        1 => Ok(matches.remove(0)),
        n => Err(Failure::usage(format!(
            "{n} {what}s are named {name:?} (an administrator sees every user's); give the ID"
        ))),
    }
}

pub fn is_uuid(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok()
}

/// The body of a 2xx answer as `T`.
pub async fn read_json<T: DeserializeOwned>(response: Response) -> Result<T> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|err| Failure::general(format!("cannot read the answer: {err}")))?;
    let bytes = if status == StatusCode::NO_CONTENT || bytes.is_empty() {
        &b"null"[..]
    } else {
        &bytes[..]
    };
    serde_json::from_slice(bytes).map_err(|err| {
        Failure::general(format!(
            "unexpected answer from the API (HTTP {status}): {err}; is vmmctl the coordinator's \
             version?"
        ))
    })
}

/// An error answer: the API's `{"code","message"}`, else the status and the body's start.
pub async fn api_failure(response: Response) -> Failure {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let message = match serde_json::from_str::<ErrorBody>(&body) {
        Ok(error) => error.message,
        Err(_) if body.trim().is_empty() => {
            status.canonical_reason().unwrap_or("no message").to_owned()
        }
        Err(_) => body.chars().take(300).collect(),
    };
    Failure::new(
        Failure::code_for_status(status.as_u16()),
        format!("{message} (HTTP {})", status.as_u16()),
    )
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
