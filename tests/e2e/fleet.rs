//! The fleet simulator's smoke run, against the real `coordinator` binary: a dozen
//! in-memory agents with VMs created through the API, out-of-band changes, a silent
//! partition, two reconnect storms and a coordinator restart, each followed by an audit that
//! the API shows every host and VM as the hosts have them. No time is judged here (the
//! benchmark does that, `scripts/bench.sh`); a wrong host or VM fails the test.

use vmm_e2e::process::binary_path;
use vmm_sim::run::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_survives_storms_partitions_and_a_restart_with_nothing_wrong() {
    let options = Options::smoke(binary_path("coordinator").unwrap());
    let report = run(&options).await.unwrap();
    println!("{}", vmm_sim::run::table(&report));
    assert_eq!(report.wrong, 0, "hosts or VMs wrong; see the audits above");
    assert_eq!(report.storms_failed, 0);
    assert_eq!(report.storms.len(), options.storms);
    assert!(report.audits >= 7);
    assert!(
        report.coordinator_errors.is_empty(),
        "errors in the coordinator's log: {:#?}",
        report.coordinator_errors
    );
}
