//! The agent's own event metrics (its coordinator session, the commands it carried out, and
//! the libvirt lifecycle events it received), through the `metrics` facade and rendered by
//! `metrics-exporter-prometheus`.
//!
//! The recording functions are cheap and work whether or not a recorder is installed (tests
//! run without one): only `main` installs it, once per process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use vmm_proto::{CommandResult, ErrorKind, command_result};
use vmm_shared::OperationKind;

const COORDINATOR_CONNECTED: &str = "agent_coordinator_connected";
const COORDINATOR_RECONNECTS: &str = "agent_coordinator_reconnects_total";
const COMMANDS: &str = "agent_commands_total";
const COMMAND_DURATION: &str = "agent_command_duration_seconds";
const DOMAIN_EVENTS: &str = "agent_domain_events_total";
const DOMAIN_EVENTS_DROPPED: &str = "agent_domain_events_dropped_total";
const EVENT_LOOP_FAILURES: &str = "agent_libvirt_event_loop_failures_total";

/// From a quick start to a stop that waits for a guest's full shutdown timeout.
const COMMAND_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Whether a session was registered before, so the next one counts as a reconnect.
static REGISTERED_BEFORE: AtomicBool = AtomicBool::new(false);

/// Installs the process-wide recorder and returns the handle that renders it. Series that
/// exist from the start are created at zero, so they are there before the first event.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(COMMAND_DURATION.into()), COMMAND_BUCKETS)?
        .install_recorder()?;
    describe_gauge!(
        COORDINATOR_CONNECTED,
        "Whether the agent has a registered session with the coordinator (1) or not (0)."
    );
    describe_counter!(
        COORDINATOR_RECONNECTS,
        "Sessions with the coordinator registered after the first one."
    );
    describe_counter!(
        COMMANDS,
        "Coordinator commands handled, by kind and outcome (ok or the error kind)."
    );
    describe_histogram!(
        COMMAND_DURATION,
        metrics::Unit::Seconds,
        "Time to carry out a coordinator command, by kind."
    );
    describe_counter!(
        DOMAIN_EVENTS,
        "Domain lifecycle events (hints that a domain changed) the agent received from libvirt."
    );
    describe_counter!(
        DOMAIN_EVENTS_DROPPED,
        "Domain lifecycle events dropped because the agent fell a whole queue behind (each \
         drop made it poll every domain)."
    );
    describe_counter!(
        EVENT_LOOP_FAILURES,
        "Failed iterations of libvirt's event loop in the agent (each is logged)."
    );
    gauge!(COORDINATOR_CONNECTED).set(0.0);
    counter!(COORDINATOR_RECONNECTS).absolute(0);
    counter!(DOMAIN_EVENTS).absolute(0);
    counter!(DOMAIN_EVENTS_DROPPED).absolute(0);
    update_event_loop_failures();
    Ok(handle)
}

/// `count` lifecycle events reached the agent.
pub fn domain_events_received(count: u64) {
    counter!(DOMAIN_EVENTS).increment(count);
}

/// `count` lifecycle events were dropped before they reached the agent.
pub fn domain_events_dropped(count: u64) {
    counter!(DOMAIN_EVENTS_DROPPED).increment(count);
}

/// Brings the event-loop failure count up to date; the loop counts them itself, so a
/// scrape calls this before rendering.
pub fn update_event_loop_failures() {
    counter!(EVENT_LOOP_FAILURES).absolute(vmm_libvirt_events::event_loop_failures());
}

/// The coordinator accepted a registration.
pub fn session_registered() {
    gauge!(COORDINATOR_CONNECTED).set(1.0);
    if REGISTERED_BEFORE.swap(true, Ordering::Relaxed) {
        counter!(COORDINATOR_RECONNECTS).increment(1);
    }
}

/// A registered session ended.
pub fn session_ended() {
    gauge!(COORDINATOR_CONNECTED).set(0.0);
}

/// A command of kind `kind` (`None`: it named no action) was answered with `result` after
/// `elapsed`. The `kind` label is the operation kind's one name ([`OperationKind::as_str`]),
/// as on the coordinator.
pub fn command_finished(kind: Option<OperationKind>, result: &CommandResult, elapsed: Duration) {
    let kind = kind.map_or("none", OperationKind::as_str);
    let outcome = match &result.outcome {
        Some(command_result::Outcome::Error(error)) => error_kind_label(error.kind()),
        Some(command_result::Outcome::Domain(_)) | None => "ok",
    };
    counter!(COMMANDS, "kind" => kind, "outcome" => outcome).increment(1);
    histogram!(COMMAND_DURATION, "kind" => kind).record(elapsed.as_secs_f64());
}

fn error_kind_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unspecified => "unspecified",
        ErrorKind::Conflict => "conflict",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Invalid => "invalid",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Internal => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_outcomes_get_stable_labels() {
        assert_eq!(error_kind_label(ErrorKind::NotFound), "not_found");
        // Without a recorder the calls are no-ops, never panics.
        session_registered();
        session_ended();
        command_finished(
            Some(OperationKind::SnapshotCreate),
            &CommandResult::default(),
            Duration::from_millis(3),
        );
        command_finished(None, &CommandResult::default(), Duration::from_millis(3));
    }

    /// With a recorder, the series carry the shared operation kind names.
    #[test]
    fn the_kind_label_is_the_operation_kinds_name() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            command_finished(
                Some(OperationKind::SnapshotCreate),
                &CommandResult::default(),
                Duration::from_millis(3),
            );
        });
        let text = handle.render();
        assert!(
            text.contains(r#"agent_commands_total{kind="snapshot_create",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(!text.contains("create_snapshot"), "{text}");
    }

    #[test]
    fn lifecycle_events_received_and_dropped_are_counted() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            domain_events_received(1);
            domain_events_received(2);
            domain_events_dropped(5);
            update_event_loop_failures();
        });
        let text = handle.render();
        assert!(text.contains("agent_domain_events_total 3"), "{text}");
        assert!(
            text.contains("agent_domain_events_dropped_total 5"),
            "{text}"
        );
        assert!(
            text.contains("agent_libvirt_event_loop_failures_total 0"),
            "{text}"
        );
    }
}
