//! The accounts that authenticated requests were made as, kept in memory for a second.
//!
//! Every request with a login token names its user by ID, and the user is looked up to
//! check they still exist and to read their role. A client polling the API (a dashboard, a
//! script listing its VMs in a loop) would otherwise cost one database read per request
//! beside the one it asked for. An entry is used for at most [`USER_CACHE_TTL`]; a role
//! change or deletion through this coordinator drops the entry at once, so here it takes
//! effect on the next request, and on the other coordinators of a shared database within
//! [`USER_CACHE_TTL`].

use std::time::{Duration, Instant};

use vmm_shared::UserId;

use super::Role;
use crate::auth::BoundedMap;

/// How long a looked-up account is used without reading it again.
pub const USER_CACHE_TTL: Duration = Duration::from_secs(1);
/// Most accounts kept ([`BoundedMap`]).
const MOST_USERS: usize = 10_000;

/// What a request needs of its user's account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub username: String,
    pub role: Role,
}

pub struct UserCache {
    entries: BoundedMap<UserId, (Instant, Account)>,
}

impl Default for UserCache {
    fn default() -> Self {
        Self {
            entries: BoundedMap::new(MOST_USERS),
        }
    }
}

impl UserCache {
    /// The account of `user` if it was read less than [`USER_CACHE_TTL`] before `now`.
    pub fn get(&self, user: UserId, now: Instant) -> Option<Account> {
        let (read_at, account) = self.entries.get(&user)?;
        (now.duration_since(read_at) < USER_CACHE_TTL).then_some(account)
    }

    /// Keeps `account` as read at `read_at`.
    pub fn put(&self, user: UserId, account: Account, read_at: Instant) {
        self.entries.insert(user, (read_at, account));
    }

    /// Drops what is kept of `user` (their role changed, or they were deleted).
    pub fn forget(&self, user: UserId) {
        self.entries.remove(&user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_kept_for_the_ttl_and_forgotten_on_demand() {
        let cache = UserCache::default();
        let user = UserId::new_random();
        let start = Instant::now();
        let account = Account {
            username: "ann".into(),
            role: Role::Admin,
        };
        assert_eq!(cache.get(user, start), None);
        cache.put(user, account.clone(), start);
        assert_eq!(
            cache.get(user, start + USER_CACHE_TTL / 2),
            Some(account.clone())
        );
        assert_eq!(cache.get(user, start + USER_CACHE_TTL), None);
        cache.put(user, account, start);
        cache.forget(user);
        assert_eq!(cache.get(user, start), None);
    }
}
