//! Pagination of the list routes: `?limit=&cursor=`. A list answers a JSON array; when more
//! items follow, the next page's cursor comes in the `X-Next-Cursor` header (and a
//! `Link: <…>; rel="next"` header naming the same request with that cursor).

/// The header that carries the next page's cursor.
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";

/// Most items one page may hold (`limit` is 1 to this).
pub const MAX_LIMIT: u32 = 1000;
