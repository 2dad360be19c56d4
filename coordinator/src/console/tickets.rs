//! Console tickets: the credential of a console's WebSocket, since a browser cannot put a
//! bearer token on one. A ticket is 256 random bits (hex), issued to one user for one VM
//! and one console type, redeemed at most once, and only before it expires. Tickets live in
//! this process's memory: a restart forgets them (a client asks again), and they are
//! redeemed at the coordinator that issued them. With several coordinators, a ticket for a
//! console whose host another coordinator holds is written to the database instead (only
//! its SHA-256, [`issue_routed`]) and redeemed there by deleting its row
//! ([`redeem_routed`]), so it is used once whichever coordinator it reaches.
//!
//! What this module must never do: hand out a ticket twice, accept an expired one, or let
//! tickets pile up without bound (expired ones are dropped on every issue; past
//! [`MAX_TICKETS`] waiting, issuing refuses).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use vmm_shared::{UserId, VmId};

use super::ConsoleKind;
use crate::db::{self, Db};

/// Most tickets waiting to be redeemed at once.
pub const MAX_TICKETS: usize = 10_000;

/// What a ticket grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub user: UserId,
    pub vm: VmId,
    pub kind: ConsoleKind,
    /// Take the console over from a session that holds it.
    pub force: bool,
    expires: Instant,
}

/// A ticket as handed to its user.
#[derive(Clone, Debug)]
pub struct Issued {
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

/// Why a ticket was not issued.
#[derive(Debug, thiserror::Error)]
#[error("too many console tickets are waiting to be used; try again in a few seconds")]
pub struct TooManyTickets;

#[derive(Debug)]
pub struct Tickets {
    ttl: Duration,
    waiting: Mutex<HashMap<String, Ticket>>,
}

impl Tickets {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new ticket for `user` to open the `kind` console of `vm`.
    pub fn issue(
        &self,
        user: UserId,
        vm: VmId,
        kind: ConsoleKind,
        force: bool,
    ) -> Result<Issued, TooManyTickets> {
        let now = Instant::now();
        let ticket = new_ticket();
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.retain(|_, ticket| ticket.expires > now);
        if waiting.len() >= MAX_TICKETS {
            return Err(TooManyTickets);
        }
        waiting.insert(
            ticket.clone(),
            Ticket {
                user,
                vm,
                kind,
                force,
                expires: now + self.ttl,
            },
        );
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or_default();
        Ok(Issued {
            ticket,
            expires_at: Utc::now() + ttl,
        })
    }

    /// Takes the ticket: whatever follows, it can never be presented again. `None` when it
    /// was never issued, was redeemed already, or has expired.
    pub fn redeem(&self, ticket: &str) -> Option<Ticket> {
        let taken = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(ticket)?;
        (taken.expires > Instant::now()).then_some(taken)
    }

    /// Tickets waiting now, expired ones included until the next issue drops them.
    pub fn waiting(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// 256 random bits, in hex.
fn new_ticket() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A ticket for a console whose host's session another coordinator holds: recorded (its
/// SHA-256) in the database, for that coordinator to redeem. Expired rows of any
/// coordinator go in the same transaction.
pub async fn issue_routed(
    db: &Db,
    ttl: Duration,
    user: UserId,
    vm: VmId,
    kind: ConsoleKind,
    force: bool,
) -> Result<Issued, sqlx::Error> {
    let ticket = new_ticket();
    let expires_at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM console_tickets WHERE expires_at < $1")
        .bind(db::now())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO console_tickets (ticket_sha256, user_id, vm_id, kind, take_over, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(crate::api_tokens::digest(&ticket))
    .bind(user)
    .bind(vm)
    .bind(kind)
    .bind(i64::from(force))
    .bind(db::timestamp(expires_at.into()))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Issued { ticket, expires_at })
}

#[derive(sqlx::FromRow)]
struct RoutedTicket {
    user_id: UserId,
    vm_id: VmId,
    kind: ConsoleKind,
    #[sqlx(try_from = "crate::db::Flag")]
    take_over: bool,
}

/// Takes a ticket [`issue_routed`] recorded: its row is deleted, so it can never be
/// presented again anywhere. `None` when there is no such ticket, or it has expired.
pub async fn redeem_routed(db: &Db, ticket: &str) -> Result<Option<Ticket>, sqlx::Error> {
    let taken: Option<RoutedTicket> = sqlx::query_as(
        "DELETE FROM console_tickets WHERE ticket_sha256 = $1 AND expires_at >= $2
         RETURNING user_id, vm_id, kind, take_over",
    )
    .bind(crate::api_tokens::digest(ticket))
    .bind(db::now())
    .fetch_optional(db)
    .await?;
    Ok(taken.map(|row| Ticket {
        user: row.user_id,
        vm: row.vm_id,
        kind: row.kind,
        force: row.take_over,
        expires: Instant::now(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_redeemed_once_and_says_what_it_grants() {
        let tickets = Tickets::new(Duration::from_secs(30));
        let (user, vm) = (UserId::new_random(), VmId::new_random());
        let issued = tickets.issue(user, vm, ConsoleKind::Vnc, true).unwrap();
        assert_eq!(issued.ticket.len(), 64);
        assert!(issued.expires_at > Utc::now());
        let other = tickets.issue(user, vm, ConsoleKind::Vnc, true).unwrap();
        assert_ne!(issued.ticket, other.ticket);
        let ticket = tickets.redeem(&issued.ticket).unwrap();
        assert_eq!(
            (ticket.user, ticket.vm, ticket.kind, ticket.force),
            (user, vm, ConsoleKind::Vnc, true)
        );
        assert!(tickets.redeem(&issued.ticket).is_none(), "single use");
        assert!(tickets.redeem("").is_none());
        assert!(tickets.redeem(&"0".repeat(64)).is_none());
    }

    #[test]
    fn an_expired_ticket_is_refused_and_dropped() {
        let tickets = Tickets::new(Duration::from_millis(20));
        let (user, vm) = (UserId::new_random(), VmId::new_random());
        let expired = tickets.issue(user, vm, ConsoleKind::Serial, false).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert!(tickets.redeem(&expired.ticket).is_none());
        let _stale = tickets.issue(user, vm, ConsoleKind::Serial, false).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        tickets.issue(user, vm, ConsoleKind::Serial, false).unwrap();
        assert_eq!(tickets.waiting(), 1, "expired tickets are dropped on issue");
    }

    #[tokio::test]
    async fn a_routed_ticket_is_redeemed_once_before_it_expires() {
        let t = crate::test_support::TestDb::new().await;
        let vm = VmId::new_random();
        let issued = issue_routed(
            &t.db,
            Duration::from_secs(30),
            t.user,
            vm,
            ConsoleKind::Serial,
            true,
        )
        .await
        .unwrap();
        assert_eq!(issued.ticket.len(), 64);
        let stored: Vec<String> = sqlx::query_scalar("SELECT ticket_sha256 FROM console_tickets")
            .fetch_all(&t.db)
            .await
            .unwrap();
        assert_eq!(
            stored,
            [crate::api_tokens::digest(&issued.ticket)],
            "only the hash"
        );
        let ticket = redeem_routed(&t.db, &issued.ticket).await.unwrap().unwrap();
        assert_eq!(
            (ticket.user, ticket.vm, ticket.kind, ticket.force),
            (t.user, vm, ConsoleKind::Serial, true)
        );
        assert!(
            redeem_routed(&t.db, &issued.ticket)
                .await
                .unwrap()
                .is_none()
        );
        assert!(redeem_routed(&t.db, "").await.unwrap().is_none());

        let short = issue_routed(&t.db, Duration::ZERO, t.user, vm, ConsoleKind::Vnc, false)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(redeem_routed(&t.db, &short.ticket).await.unwrap().is_none());
    }

    #[test]
    fn tickets_waiting_are_bounded() {
        let tickets = Tickets::new(Duration::from_secs(30));
        let (user, vm) = (UserId::new_random(), VmId::new_random());
        for _ in 0..MAX_TICKETS {
            tickets.issue(user, vm, ConsoleKind::Serial, false).unwrap();
        }
        assert!(tickets.issue(user, vm, ConsoleKind::Serial, false).is_err());
    }
}
