//! What the agent last told the coordinator about each domain, and the generations that
//! order those reports.
//!
//! A generation only grows, for every domain, also across agent restarts: the clock is
//! seeded from the wall clock in microseconds and each new generation is
//! `max(previous + 1, now)`. Every observed change of a domain and every operation result
//! gets a fresh generation, so the coordinator can drop stale or duplicate reports by
//! comparing generations.
//!
//! Reports are the wire's `DomainReport`s: this is where the hypervisor's observations
//! become the protocol's terms ([`wire_power_state`]).
//!
//! Polls and operations race: a poll may list a domain, then an operation changes it and
//! records its result, then the poll's (now stale) observation arrives. A poll therefore
//! takes a [`PollTicket`] before listing and leaves alone every domain recorded after it.
//! The same rule holds for the refresh of one domain after a hint
//! ([`StateTracker::apply_refresh`]): it takes a ticket before reading the domain, and what
//! it records has a newer generation than any poll or refresh that began before it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use vmm_proto::{DomainReport, SnapshotReport};

use crate::hypervisor::{ObservedDomain, ObservedSnapshot, PowerState};

/// Issues generations: strictly increasing, and never below the wall clock in microseconds.
#[derive(Debug)]
pub struct GenerationClock {
    last: u64,
}

impl GenerationClock {
    /// A clock seeded from the current time, so generations stay above those of an earlier
    /// run of the agent (as long as the host's clock does not jump back).
    pub fn from_wall_clock() -> Self {
        Self { last: now_micros() }
    }

    pub fn next_generation(&mut self) -> u64 {
        self.next_at(now_micros())
    }

    fn next_at(&mut self, now_micros: u64) -> u64 {
        self.last = now_micros.max(self.last.saturating_add(1));
        self.last
    }

    /// The latest generation handed out.
    pub fn last(&self) -> u64 {
        self.last
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Marks the start of a poll; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct PollTicket {
    generation_at_start: u64,
}

/// The last report sent (or due) for every domain the agent knows, keyed by domain UUID.
#[derive(Debug)]
pub struct StateTracker {
    inner: Mutex<TrackerInner>,
}

#[derive(Debug)]
struct TrackerInner {
    clock: GenerationClock,
    reports: HashMap<String, DomainReport>,
}

impl Default for StateTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl StateTracker {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(TrackerInner {
                clock: GenerationClock::from_wall_clock(),
                reports: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerInner> {
        // The tracker's data stays consistent even if a holder panicked: every update is a
        // single map operation.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn begin_poll(&self) -> PollTicket {
        PollTicket {
            generation_at_start: self.lock().clock.last(),
        }
    }

    /// Applies a full listing of the host's domains and returns the reports that changed:
    /// new or changed domains, and (once) domains that disappeared, as `ABSENT`.
    pub fn apply_poll(&self, ticket: PollTicket, observed: &[ObservedDomain]) -> Vec<DomainReport> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let recorded_since_ticket =
            |report: &DomainReport| report.generation > ticket.generation_at_start;
        let mut changes = Vec::new();

        for domain in observed {
            let unchanged_or_newer = inner.reports.get(&domain.uuid).is_some_and(|known| {
                recorded_since_ticket(known) || same_observation(known, domain)
            });
            if !unchanged_or_newer {
                let report = report_of(domain, inner.clock.next_generation());
                inner.reports.insert(domain.uuid.clone(), report.clone());
                changes.push(report);
            }
        }

        let vanished: Vec<String> = inner
            .reports
            .iter()
            .filter(|(uuid, report)| {
                !recorded_since_ticket(report)
                    && !observed.iter().any(|domain| &domain.uuid == *uuid)
            })
            .map(|(uuid, _)| uuid.clone())
            .collect();
        for uuid in vanished {
            if let Some(last) = inner.reports.remove(&uuid) {
                changes.push(absent_report(
                    &last.vm_id,
                    &last.domain_name,
                    inner.clock.next_generation(),
                ));
            }
        }
        changes
    }

    /// Applies what one domain looks like now (`observed`; `None`: there is no domain with
    /// `uuid` any more), read after `ticket` was taken, and returns the report if it
    /// changed. Leaves the domain alone if it was recorded after the ticket.
    pub fn apply_refresh(
        &self,
        ticket: PollTicket,
        uuid: &str,
        observed: Option<&ObservedDomain>,
    ) -> Option<DomainReport> {
        let mut inner = self.lock();
        let known = inner.reports.get(uuid);
        if known.is_some_and(|report| report.generation > ticket.generation_at_start) {
            return None;
        }
        match observed {
            Some(domain) => {
                if known.is_some_and(|report| same_observation(report, domain)) {
                    return None;
                }
                let report = report_of(domain, inner.clock.next_generation());
                inner.reports.insert(uuid.to_owned(), report.clone());
                Some(report)
            }
            None => {
                let last = inner.reports.remove(uuid)?;
                let generation = inner.clock.next_generation();
                Some(absent_report(&last.vm_id, &last.domain_name, generation))
            }
        }
    }

    /// The running product VMs whose guests have reported no address yet.
    pub fn running_without_addresses(&self) -> Vec<vmm_shared::VmId> {
        self.lock()
            .reports
            .values()
            .filter(|report| {
                report.state() == vmm_proto::PowerState::Running && report.addresses.is_empty()
            })
            .filter_map(|report| report.vm_id.parse().ok())
            .collect()
    }

    /// Records the state an operation left a domain in; always a fresh generation.
    pub fn record_result(&self, domain: &ObservedDomain) -> DomainReport {
        let mut inner = self.lock();
        let report = report_of(domain, inner.clock.next_generation());
        inner.reports.insert(domain.uuid.clone(), report.clone());
        report
    }

    /// Records that a domain is gone (deleted by an operation) and forgets it.
    pub fn record_absent(&self, uuid: &str, vm_id: &str, domain_name: &str) -> DomainReport {
        let mut inner = self.lock();
        inner.reports.remove(uuid);
        absent_report(vm_id, domain_name, inner.clock.next_generation())
    }

    /// The latest report of every known domain.
    pub fn reports(&self) -> Vec<DomainReport> {
        self.lock().reports.values().cloned().collect()
    }
}

fn same_observation(known: &DomainReport, domain: &ObservedDomain) -> bool {
    let fresh = report_of(domain, known.generation);
    *known == fresh
}

fn report_of(domain: &ObservedDomain, generation: u64) -> DomainReport {
    DomainReport {
        vm_id: domain.vm_id.map(|id| id.to_string()).unwrap_or_default(),
        domain_name: domain.name.clone(),
        state: wire_power_state(domain.state).into(),
        generation,
        cpu: domain.cpu,
        memory_mib: domain.memory_mib,
        detail: domain.detail.clone(),
        // Only inventories carry snapshots (see `StatePoller::inventory`).
        snapshots: Vec::new(),
        addresses: domain.addresses.clone(),
        ssh: domain.ssh.as_ref().map(|ssh| vmm_proto::SshEndpoint {
            host: ssh.address.clone(),
            port: u32::from(ssh.port),
        }),
    }
}

/// How a snapshot is described to the coordinator.
pub fn snapshot_report(snapshot: &ObservedSnapshot) -> SnapshotReport {
    SnapshotReport {
        snapshot_id: snapshot.snapshot_id.to_string(),
        taken_in_state: wire_power_state(snapshot.taken_in_state).into(),
        created_at_unix: snapshot.created_at_unix,
    }
}

/// The protocol's name for a power state.
pub fn wire_power_state(state: PowerState) -> vmm_proto::PowerState {
    match state {
        PowerState::Running => vmm_proto::PowerState::Running,
        PowerState::Paused => vmm_proto::PowerState::Paused,
        PowerState::Stopped => vmm_proto::PowerState::Stopped,
        PowerState::Crashed => vmm_proto::PowerState::Crashed,
        PowerState::Unknown => vmm_proto::PowerState::Unspecified,
    }
}

fn absent_report(vm_id: &str, domain_name: &str, generation: u64) -> DomainReport {
    DomainReport {
        vm_id: vm_id.to_owned(),
        domain_name: domain_name.to_owned(),
        state: vmm_proto::PowerState::Absent.into(),
        generation,
        ..DomainReport::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(uuid: &str, state: PowerState) -> ObservedDomain {
        ObservedDomain {
            uuid: uuid.to_owned(),
            name: format!("vmm-{uuid}"),
            vm_id: None,
            state,
            cpu: 1,
            memory_mib: 128,
            detail: String::new(),
            addresses: Vec::new(),
            ssh: None,
        }
    }

    #[test]
    fn every_power_state_has_its_wire_name() {
        use vmm_proto::PowerState as Wire;
        for (state, wire) in [
            (PowerState::Running, Wire::Running),
            (PowerState::Paused, Wire::Paused),
            (PowerState::Stopped, Wire::Stopped),
            (PowerState::Crashed, Wire::Crashed),
            (PowerState::Unknown, Wire::Unspecified),
        ] {
            assert_eq!(wire_power_state(state), wire);
            assert_eq!(report_of(&domain("a", state), 7).state(), wire);
        }
    }

    #[test]
    fn generations_strictly_increase_even_when_the_clock_goes_back() {
        let mut clock = GenerationClock { last: 1_000 };
        assert_eq!(clock.next_at(500), 1_001);
        assert_eq!(clock.next_at(500), 1_002);
        assert_eq!(clock.next_at(5_000), 5_000);
        assert_eq!(clock.next_at(5_000), 5_001);
        let mut previous = clock.next_generation();
        for _ in 0..1_000 {
            let next = clock.next_generation();
            assert!(next > previous);
            previous = next;
        }
    }

    #[test]
    fn a_new_clock_starts_above_an_earlier_one() {
        let mut earlier = GenerationClock::from_wall_clock();
        let issued = (0..10)
            .map(|_| earlier.next_generation())
            .max()
            .unwrap_or_default();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(GenerationClock::from_wall_clock().next_generation() > issued);
    }

    #[test]
    fn polls_report_only_changes_and_disappearances_once() {
        let tracker = StateTracker::new();
        let first = tracker.apply_poll(tracker.begin_poll(), &[domain("a", PowerState::Running)]);
        assert_eq!(first.len(), 1);

        let same = tracker.apply_poll(tracker.begin_poll(), &[domain("a", PowerState::Running)]);
        assert!(same.is_empty());

        let changed = tracker.apply_poll(tracker.begin_poll(), &[domain("a", PowerState::Stopped)]);
        assert_eq!(changed.len(), 1);
        assert!(changed[0].generation > first[0].generation);

        let gone = tracker.apply_poll(tracker.begin_poll(), &[]);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].state(), vmm_proto::PowerState::Absent);
        assert!(tracker.apply_poll(tracker.begin_poll(), &[]).is_empty());
    }

    #[test]
    fn a_poll_does_not_override_a_result_recorded_after_it_began() {
        let tracker = StateTracker::new();
        tracker.apply_poll(tracker.begin_poll(), &[domain("a", PowerState::Running)]);

        let ticket = tracker.begin_poll();
        let result = tracker.record_result(&domain("a", PowerState::Stopped));
        // The poll listed the domain before the operation stopped it.
        let stale = tracker.apply_poll(ticket, &[domain("a", PowerState::Running)]);
        assert!(stale.is_empty());

        // A create that finished after a poll's listing is not reported absent by it.
        let ticket = tracker.begin_poll();
        tracker.record_result(&domain("b", PowerState::Running));
        assert!(
            tracker
                .apply_poll(ticket, &[domain("a", PowerState::Stopped)])
                .is_empty()
        );

        let next = tracker.apply_poll(tracker.begin_poll(), &[domain("a", PowerState::Running)]);
        assert_eq!(next.len(), 2, "a changed back and b is gone: {next:?}");
        assert!(
            next.iter()
                .all(|report| report.generation > result.generation)
        );
    }

    #[test]
    fn a_refresh_reports_one_domains_change_or_its_absence_once() {
        let tracker = StateTracker::new();
        let first = tracker.apply_poll(
            tracker.begin_poll(),
            &[
                domain("a", PowerState::Running),
                domain("b", PowerState::Running),
            ],
        );
        let refresh = |uuid: &str, observed: Option<ObservedDomain>| {
            tracker.apply_refresh(tracker.begin_poll(), uuid, observed.as_ref())
        };
        assert_eq!(refresh("a", Some(domain("a", PowerState::Running))), None);
        let stopped = refresh("a", Some(domain("a", PowerState::Stopped))).unwrap();
        assert_eq!(stopped.state(), vmm_proto::PowerState::Stopped);
        assert!(
            first
                .iter()
                .all(|report| stopped.generation > report.generation)
        );
        assert_eq!(refresh("a", Some(domain("a", PowerState::Stopped))), None);

        // Gone: reported absent once; an unknown domain that is gone says nothing.
        let gone = refresh("b", None).unwrap();
        assert_eq!(gone.state(), vmm_proto::PowerState::Absent);
        assert_eq!(gone.domain_name, "vmm-b");
        assert_eq!(refresh("b", None), None);
        assert_eq!(refresh("never-seen", None), None);

        // A new domain.
        let new = refresh("c", Some(domain("c", PowerState::Paused))).unwrap();
        assert_eq!(new.state(), vmm_proto::PowerState::Paused);
        assert_eq!(tracker.reports().len(), 2, "a and c");
    }

    #[test]
    fn an_older_poll_or_refresh_never_overwrites_a_refresh() {
        let tracker = StateTracker::new();
        tracker.apply_poll(tracker.begin_poll(), &[domain("a", PowerState::Running)]);

        // A poll lists the domain running; meanwhile a hint's refresh reads it stopped.
        let poll_ticket = tracker.begin_poll();
        let stale_refresh_ticket = tracker.begin_poll();
        let refreshed = tracker
            .apply_refresh(
                tracker.begin_poll(),
                "a",
                Some(&domain("a", PowerState::Stopped)),
            )
            .unwrap();
        assert!(
            tracker
                .apply_poll(poll_ticket, &[domain("a", PowerState::Running)])
                .is_empty()
        );
        assert_eq!(
            tracker.apply_refresh(
                stale_refresh_ticket,
                "a",
                Some(&domain("a", PowerState::Running))
            ),
            None
        );
        // Nor does an older read that found it gone.
        assert_eq!(tracker.apply_refresh(poll_ticket, "a", None), None);
        let now = tracker.reports();
        assert_eq!(now, vec![refreshed.clone()]);

        // A command's result recorded after the refresh began wins over it too.
        let ticket = tracker.begin_poll();
        tracker.record_result(&domain("a", PowerState::Running));
        assert_eq!(
            tracker.apply_refresh(ticket, "a", Some(&domain("a", PowerState::Stopped))),
            None
        );
    }
}
