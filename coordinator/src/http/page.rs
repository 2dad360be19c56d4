//! Pagination and filters of the list routes (`GET /api/vms`, snapshots, operations, users,
//! hosts, images, keys): `?limit=&cursor=` plus each route's filters, read by [`ApiQuery`] (an unknown or
//! malformed parameter answers 422 saying which).
//!
//! Lists are in keyset order: by (`created_at`, `id`), or by `id` alone for hosts. A page
//! holds at most `limit` items (1 to [`MAX_LIMIT`]); when more follow, the answer carries the
//! next page's cursor in `X-Next-Cursor` and a `Link: <…>; rel="next"` header naming the same
//! request with that cursor. A cursor is opaque to clients (the last item's key, encoded);
//! a page read with it starts right after that item, so items created or deleted meanwhile
//! never shift a page. Without `limit`, a route decides: a user's own VMs, their SSH keys
//! and a VM's snapshots come whole (as before pagination existed), every other list (and an admin's
//! VMs) is capped at [`DEFAULT_CAP`] items with a next cursor.
//!
//! It never reads the database: the stores take a [`Page`] and return one item more than
//! asked, which [`Paged::from_rows`] turns into the page and its cursor.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Most items one page may hold.
pub const MAX_LIMIT: u32 = 1000;
/// Items a capped list holds when the request gives no `limit`.
pub const DEFAULT_CAP: u32 = 1000;

/// The header that carries the next page's cursor.
pub const NEXT_CURSOR_HEADER: HeaderName = HeaderName::from_static("x-next-cursor");

/// A query string read into `T`; anything `T` does not accept answers 422.
#[derive(Debug, Clone, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| {
                let detail = rejection.body_text();
                let detail = detail
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&detail);
                ApiError::Unprocessable(format!("invalid query parameters: {detail}"))
            })
    }
}

/// Where a list resumes: the key of the last item of the previous page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The item's `created_at` (empty for lists ordered by ID alone).
    pub created_at: String,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("1\n{}\n{}", self.created_at, self.id))
    }

    pub fn decode(text: &str) -> Result<Self, ApiError> {
        let invalid = || {
            ApiError::Unprocessable(
                "cursor is not one this API gave out; use the X-Next-Cursor of a previous page"
                    .into(),
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.split('\n');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("1"), Some(created_at), Some(id), None) if !id.is_empty() => Ok(Cursor {
                created_at: created_at.to_owned(),
                id: id.to_owned(),
            }),
            _ => Err(invalid()),
        }
    }
}

/// What one request asks of a list: at most `limit` items, after `after`.
#[derive(Clone, Debug)]
pub struct Page {
    /// `None`: every item (only where the route allows it).
    pub limit: Option<u32>,
    pub after: Option<Cursor>,
}

impl Page {
    /// The page asked with `limit` and `cursor`; without a limit, `default` (a cap, or
    /// `None` for the whole list).
    pub fn new(
        limit: Option<u32>,
        cursor: Option<&str>,
        default: Option<u32>,
    ) -> Result<Self, ApiError> {
        if let Some(limit) = limit
            && !(1..=MAX_LIMIT).contains(&limit)
        {
            return Err(ApiError::Unprocessable(format!(
                "limit must be between 1 and {MAX_LIMIT}, not {limit}"
            )));
        }
        Ok(Page {
            limit: limit.or(default),
            after: cursor.map(Cursor::decode).transpose()?,
        })
    }

    /// How many rows a store reads: one more than the page holds, to know whether more follow.
    pub fn fetch(&self) -> Option<i64> {
        self.limit.map(|limit| i64::from(limit) + 1)
    }
}

/// One page of items and the cursor of the next, if more follow.
#[derive(Debug)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

impl<T> Paged<T> {
    /// The page from the rows a store read for `page` (up to one more than it holds).
    pub fn from_rows(mut rows: Vec<T>, page: &Page, key: impl Fn(&T) -> Cursor) -> Self {
        let next = match page.limit {
            Some(limit) if rows.len() > limit as usize => {
                rows.truncate(limit as usize);
                rows.last().map(key)
            }
            _ => None,
        };
        Paged { items: rows, next }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Paged<U> {
        Paged {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
        }
    }

    /// The items as a JSON array, with `X-Next-Cursor` and `Link` when more follow. `path`
    /// and `query` (already URL-safe `name=value` pairs, without cursor) make the next link.
    pub fn into_response(self, path: &str, query: &[(&str, String)]) -> Response
    where
        T: serde::Serialize,
    {
        let mut response = axum::Json(self.items).into_response();
        if let Some(next) = self.next {
            let cursor = next.encode();
            let mut link = format!("{path}?");
            for (name, value) in query {
                link.push_str(&format!("{name}={value}&"));
            }
            link.push_str(&format!("cursor={cursor}"));
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&cursor) {
                headers.insert(NEXT_CURSOR_HEADER, value);
            }
            if let Ok(value) = HeaderValue::from_str(&format!("<{link}>; rel=\"next\"")) {
                headers.insert(axum::http::header::LINK, value);
            }
        }
        response
    }
}

/// A filter parameter parsed as `T`; 422 naming the parameter and what it takes otherwise.
/// The parsed value is echoed into `echo` (for the next page's link).
pub fn filter<T: std::str::FromStr + std::fmt::Display>(
    name: &'static str,
    text: Option<&str>,
    takes: &str,
    echo: &mut Vec<(&'static str, String)>,
) -> Result<Option<T>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let value = text
        .parse::<T>()
        .map_err(|_| ApiError::Unprocessable(format!("{name} {text:?} is not {takes}")))?;
    echo.push((name, value.to_string()));
    Ok(Some(value))
}

/// Appends the keyset condition and order to `sql`: rows after `page.after` in
/// (`created_at`, `id`) order (with `prefix` naming the table), then the limit.
pub fn push_keyset(
    builder: &mut crate::db::SqlBuilder,
    page: &Page,
    prefix: &str,
    by_created: bool,
) {
    if let Some(after) = &page.after {
        if by_created {
            builder.push(format!(" AND ({prefix}created_at, {prefix}id) > ("));
            builder.push_value(after.created_at.as_str());
            builder.push(", ");
            builder.push_value(after.id.as_str());
            builder.push(")");
        } else {
            builder.push(format!(" AND {prefix}id > "));
            builder.push_value(after.id.as_str());
        }
    }
    if by_created {
        builder.push(format!(" ORDER BY {prefix}created_at, {prefix}id"));
    } else {
        builder.push(format!(" ORDER BY {prefix}id"));
    }
    if let Some(fetch) = page.fetch() {
        builder.push(" LIMIT ");
        builder.push_value(fetch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let cursor = Cursor {
            created_at: "2026-01-01T00:00:00.000Z".into(),
            id: "0b8a9c3e-7d1f-4c55-9a0e-2b5f6c7d8e9f".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        for bad in [
            "",
            "!!",
            "bm90IGEgY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("2\na\nb"),
        ] {
            let error = Cursor::decode(bad).unwrap_err();
            assert_eq!(error.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        }
    }

    #[test]
    fn limits_are_bounded_and_a_full_page_names_its_successor() {
        assert!(Page::new(Some(0), None, None).is_err());
        assert!(Page::new(Some(MAX_LIMIT + 1), None, None).is_err());
        let page = Page::new(Some(2), None, None).unwrap();
        assert_eq!(page.fetch(), Some(3));
        let key = |n: &u32| Cursor {
            created_at: String::new(),
            id: n.to_string(),
        };
        let paged = Paged::from_rows(vec![1, 2, 3], &page, key);
        assert_eq!(paged.items, [1, 2]);
        assert_eq!(paged.next.unwrap().id, "2");
        let last = Paged::from_rows(vec![1, 2], &page, key);
        assert!(last.next.is_none());
        let whole = Page::new(None, None, None).unwrap();
        assert_eq!(whole.fetch(), None);
        assert!(Paged::from_rows(vec![1; 5000], &whole, key).next.is_none());
    }
}
