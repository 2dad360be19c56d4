//! The agent's own event metrics (its coordinator session and the commands it carried out),
//! through the `metrics` facade and rendered by `metrics-exporter-prometheus`.
//!
//! The recording functions are cheap and work whether or not a recorder is installed (tests
//! run without one): only `main` installs it, once per process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use vmm_proto::command::Action;
use vmm_proto::{Command, CommandResult, ErrorKind, command_result};

const COORDINATOR_CONNECTED: &str = "agent_coordinator_connected";
const COORDINATOR_RECONNECTS: &str = "agent_coordinator_reconnects_total";
const COMMANDS: &str = "agent_commands_total";
const COMMAND_DURATION: &str = "agent_command_duration_seconds";

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
    gauge!(COORDINATOR_CONNECTED).set(0.0);
    counter!(COORDINATOR_RECONNECTS).absolute(0);
    Ok(handle)
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

/// The label for a command's action.
pub fn command_kind(command: &Command) -> &'static str {
    match &command.action {
        Some(Action::Create(_)) => "create",
        Some(Action::Start(_)) => "start",
        Some(Action::Stop(_)) => "stop",
        Some(Action::ForceStop(_)) => "force_stop",
        Some(Action::Reboot(_)) => "reboot",
        Some(Action::Delete(_)) => "delete",
        Some(Action::CreateSnapshot(_)) => "create_snapshot",
        Some(Action::RestoreSnapshot(_)) => "restore_snapshot",
        Some(Action::DeleteSnapshot(_)) => "delete_snapshot",
        None => "none",
    }
}

/// A command of kind `kind` was answered with `result` after `elapsed`.
pub fn command_finished(kind: &'static str, result: &CommandResult, elapsed: Duration) {
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
        let command = Command {
            operation_id: "op".into(),
            vm_id: String::new(),
            action: Some(Action::ForceStop(vmm_proto::ForceStopVm {})),
        };
        assert_eq!(command_kind(&command), "force_stop");
        assert_eq!(error_kind_label(ErrorKind::NotFound), "not_found");
        // Without a recorder the calls are no-ops, never panics.
        session_registered();
        session_ended();
        command_finished("start", &CommandResult::default(), Duration::from_millis(3));
    }
}
