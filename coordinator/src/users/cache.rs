//! The accounts that authenticated requests were made as, kept in memory for a second.
//!
//! Every request with a login token names its user by ID, and the user is looked up to
//! check they still exist and to read their role. A client polling the API (a dashboard, a
//! script listing its VMs in a loop) would otherwise cost one database read per request
//! beside the one it asked for. An entry is used for at most [`USER_CACHE_TTL`]; a role
//! change or deletion through this coordinator drops the entry at once, so here it takes
//! effect on the next request, and on the other coordinators of a shared database within
//! [`USER_CACHE_TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vmm_shared::UserId;

use super::Role;

/// How long a looked-up account is used without reading it again.
pub const USER_CACHE_TTL: Duration = Duration::from_secs(1);
/// Most accounts kept; past it, the entries are dropped all at once.
const MOST_USERS: usize = 10_000;

/// What a request needs of its user's account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub username: String,
    pub role: Role,
}

#[derive(Default)]
pub struct UserCache {
    entries: Mutex<HashMap<UserId, (Instant, Account)>>,
}

impl UserCache {
    /// The account of `user` if it was read less than [`USER_CACHE_TTL`] before `now`.
    pub fn get(&self, user: UserId, now: Instant) -> Option<Account> {
        let entries = self.lock();
        let (read_at, account) = entries.get(&user)?;
        (now.duration_since(*read_at) < USER_CACHE_TTL).then(|| account.clone())
    }

    /// Keeps `account` as read at `read_at`.
    pub fn put(&self, user: UserId, account: Account, read_at: Instant) {
        let mut entries = self.lock();
        if entries.len() >= MOST_USERS {
            entries.clear();
        }
        entries.insert(user, (read_at, account));
    }

    /// Drops what is kept of `user` (their role changed, or they were deleted).
    pub fn forget(&self, user: UserId) {
        self.lock().remove(&user);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, (Instant, Account)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
