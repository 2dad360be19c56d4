//! A registration before the event loop runs is refused with an error that says what to
//! do. A test binary of its own: every other test starts the loop, which is once per
//! process and cannot be undone.
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

use virt::connect::Connect;
use vmm_libvirt_events::{RegisterError, event_loop_running, register};

#[test]
fn registering_without_the_event_loop_is_refused_clearly() {
    virt::error::clear_error_callback();
    let connection = Connect::open(Some("test:///default")).unwrap();
    assert!(!event_loop_running());
    let error = register(&connection, 16).err().unwrap();
    assert!(matches!(error, RegisterError::EventLoopNotRunning));
    assert!(error.to_string().contains("start_event_loop()"), "{error}");
}
