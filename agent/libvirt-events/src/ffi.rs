//! The only `unsafe` of the crate: registering the lifecycle and connection-close
//! callbacks with libvirt, the callbacks themselves, and their removal.
//!
//! Ownership, which is the whole point of this module:
//! - The lifecycle callback's opaque data is a `Box<Sink>` handed to libvirt. From a
//!   successful registration on, libvirt owns it and frees it through [`free_sink`]
//!   exactly once: at deregistration, or, when a callback is running at that moment,
//!   right after that callback returns (libvirt only marks the callback deleted and
//!   purges it when its dispatch ends). Rust's drop of the registration never frees it:
//!   that would race with a callback in flight. A failed registration leaves it ours.
//! - The close callback gets no opaque data at all: not every driver keeps it (the test
//!   driver accepts the registration, stores nothing and would never free it). The
//!   callback finds its sink in [`CLOSE_WATCHES`] by connection pointer instead, and the
//!   registration removes its entry on drop, so nothing leaks whatever the driver does.
//! - The registration holds its own reference to the connection, so the pointer libvirt
//!   knows stays valid until both callbacks are removed.
//!
//! The callbacks run on libvirt's event thread: they copy what they need into owned
//! values, `try_send` it, and return; they never block, never call into libvirt beyond
//! reading the domain's name and UUID (local, no RPC), and never let a panic cross into C.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use virt::connect::Connect;
use virt::error::Error;
use virt::sys;

use crate::event::{CloseReason, LifecycleEvent, LifecycleKind};
use crate::event_loop;
use crate::queue::{self, Counters, EventReceiver, EventStats, Sink};

/// Why [`register`] failed. Nothing stays registered after a failure.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(
        "the libvirt event loop is not running: call start_event_loop() once, before \
         opening the connection"
    )]
    EventLoopNotRunning,
    #[error("cannot {action}: {source}")]
    Libvirt {
        action: &'static str,
        #[source]
        source: Error,
    },
}

fn libvirt_error(action: &'static str) -> RegisterError {
    RegisterError::Libvirt {
        action,
        source: Error::last_error(),
    }
}

type LifecycleCallback =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void);
type GenericCallback = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

/// The lifecycle callback as `virConnectDomainEventRegisterAny` takes it. One value for
/// the whole process: libvirt refuses a second registration of the same function on the
/// same connection, which keeps it to one registration per connection.
static LIFECYCLE_CALLBACK: sys::virConnectDomainEventGenericCallback = Some(
    // SAFETY: for `VIR_DOMAIN_EVENT_ID_LIFECYCLE` libvirt calls the callback with the
    // arguments of `virConnectDomainEventCallback`, which `on_lifecycle` has; the generic
    // type only carries the pointer through the API (C code casts it with
    // `VIR_DOMAIN_EVENT_CALLBACK`). Both are `extern "C"` function pointers.
    unsafe { std::mem::transmute::<LifecycleCallback, GenericCallback>(on_lifecycle) },
);

/// The close callback; unregistering needs the very pointer that was registered.
static CLOSE_CALLBACK: sys::virConnectCloseFunc = Some(on_close);

/// The sinks to tell when a connection closes, by connection pointer.
static CLOSE_WATCHES: Mutex<Vec<CloseWatch>> = Mutex::new(Vec::new());

struct CloseWatch {
    connection: usize,
    sink: Sink,
}

fn close_watches() -> MutexGuard<'static, Vec<CloseWatch>> {
    // The list stays consistent whatever panicked while holding it.
    CLOSE_WATCHES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lifecycle events of every domain of `connection` (and its close, for drivers with a
/// persistent connection), from now until the returned [`Registration`] is dropped, into
/// a queue of `queue_capacity` events (at least 1, at most
/// [`crate::MAX_QUEUE_CAPACITY`]).
///
/// Needs [`crate::start_event_loop`] first. One registration per connection: a second
/// one fails. Blocks (one or two RPCs for a remote connection): run it off the async
/// runtime.
pub fn register(
    connection: &Connect,
    queue_capacity: usize,
) -> Result<(Registration, EventReceiver), RegisterError> {
    if !event_loop::is_running() {
        return Err(RegisterError::EventLoopNotRunning);
    }
    let connection = own_reference(connection)?;
    let (sink, receiver, counters) = queue::bounded(queue_capacity);
    let close_sink = sink.clone();
    let callback_id = register_lifecycle(&connection, sink)?;
    let mut registration = Registration {
        connection,
        callback_id,
        counters,
        close_watched: false,
    };
    // From here on, dropping `registration` undoes what was registered.
    registration.watch_close(close_sink)?;
    Ok((registration, receiver))
}

/// A connection's lifecycle-event registration. Dropping it deregisters: it blocks like
/// any libvirt call (an RPC for a remote connection), so drop it off the async runtime.
/// Events already queued can still be received; the receiver then ends.
///
/// It holds a reference to the connection, which stays open until both it and the
/// caller's `Connect` are dropped: on a reconnect, drop it with the old connection.
pub struct Registration {
    /// A reference of our own, so the pointer libvirt knows outlives the registration.
    connection: Connect,
    callback_id: c_int,
    counters: Arc<Counters>,
    close_watched: bool,
}

impl Registration {
    /// Events queued and dropped so far (the same figures as the receiver's).
    pub fn stats(&self) -> EventStats {
        self.counters.stats()
    }

    fn connection_key(&self) -> usize {
        // SAFETY: only the pointer's address is used, as a key; `self.connection` is alive.
        unsafe { self.connection.as_ptr() as usize }
    }

    fn watch_close(&mut self, sink: Sink) -> Result<(), RegisterError> {
        let key = self.connection_key();
        close_watches().push(CloseWatch {
            connection: key,
            sink,
        });
        // SAFETY: the connection pointer is valid (we hold a reference). The opaque data
        // is NULL and there is no free function: `on_close` reads nothing through it, so
        // a driver that keeps or drops the registration leaves nothing to free.
        let registered = unsafe {
            sys::virConnectRegisterCloseCallback(
                self.connection.as_ptr(),
                CLOSE_CALLBACK,
                ptr::null_mut(),
                None,
            )
        };
        if registered < 0 {
            let error = libvirt_error("register the connection-close callback");
            forget_close_watch(key);
            return Err(error);
        }
        self.close_watched = true;
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let key = self.connection_key();
        if self.close_watched {
            // SAFETY: the connection pointer is valid (we hold a reference) and
            // `CLOSE_CALLBACK` is the pointer that was registered.
            let unregistered = unsafe {
                sys::virConnectUnregisterCloseCallback(self.connection.as_ptr(), CLOSE_CALLBACK)
            };
            if unregistered < 0 {
                // Expected once the connection is closed; nothing of ours stays behind.
                tracing::debug!(
                    error = %Error::last_error(),
                    "cannot unregister the connection-close callback"
                );
            }
        }
        forget_close_watch(key);
        // SAFETY: the connection pointer is valid (we hold a reference) and the ID is the
        // one libvirt returned. libvirt frees the sink through `free_sink`, now or when a
        // callback running at this moment returns.
        let deregistered = unsafe {
            sys::virConnectDomainEventDeregisterAny(self.connection.as_ptr(), self.callback_id)
        };
        if deregistered < 0 {
            // The remote driver removes the callback locally before telling libvirtd, so a
            // dead connection fails here without leaking.
            tracing::warn!(
                error = %Error::last_error(),
                "cannot deregister the domain lifecycle callback"
            );
        }
    }
}

fn forget_close_watch(connection: usize) {
    close_watches().retain(|watch| watch.connection != connection);
}

fn own_reference(connection: &Connect) -> Result<Connect, RegisterError> {
    // SAFETY: the pointer is valid while `connection` is borrowed.
    let pointer = unsafe { connection.as_ptr() };
    // SAFETY: `pointer` is a valid connection.
    if unsafe { sys::virConnectRef(pointer) } < 0 {
        return Err(libvirt_error("take a reference to the connection"));
    }
    // SAFETY: the reference taken above now belongs to this `Connect`, which releases it
    // on drop.
    Ok(unsafe { Connect::from_ptr(pointer) })
}

fn register_lifecycle(connection: &Connect, sink: Sink) -> Result<c_int, RegisterError> {
    let opaque = Box::into_raw(Box::new(sink)).cast::<c_void>();
    let event_id = c_int::try_from(sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE).unwrap_or_default();
    // SAFETY: the connection pointer is valid while `connection` is borrowed; a NULL
    // domain asks for every domain's events; `opaque` is a `Box<Sink>` that on success
    // belongs to libvirt until it passes it to `free_sink`, exactly once.
    let callback_id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            connection.as_ptr(),
            ptr::null_mut(),
            event_id,
            LIFECYCLE_CALLBACK,
            opaque,
            Some(free_sink),
        )
    };
    if callback_id < 0 {
        let error = libvirt_error("register for domain lifecycle events");
        // SAFETY: a failed registration keeps nothing and never calls `free_sink` (its
        // error paths deregister without calling the free function), so `opaque` is
        // still the box made above, freed here once.
        drop(unsafe { Box::from_raw(opaque.cast::<Sink>()) });
        return Err(error);
    }
    Ok(callback_id)
}

/// # Safety
///
/// Only libvirt calls it, as the `VIR_DOMAIN_EVENT_ID_LIFECYCLE` callback registered by
/// [`register_lifecycle`]: `domain` is valid for the call and `opaque` is that
/// registration's `Box<Sink>`, not yet passed to [`free_sink`].
unsafe extern "C" fn on_lifecycle(
    _connection: sys::virConnectPtr,
    domain: sys::virDomainPtr,
    kind: c_int,
    detail: c_int,
    opaque: *mut c_void,
) {
    let received_at = Instant::now();
    // A panic must not unwind into libvirt; the panic hook has already reported it.
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `opaque` is the registration's live `Sink` (the caller's promise).
        let Some(sink) = (unsafe { opaque.cast::<Sink>().as_ref() }) else {
            return;
        };
        // SAFETY: `domain` is valid for the call (the caller's promise).
        let (uuid, name) = unsafe { domain_identity(domain) };
        sink.deliver(LifecycleEvent {
            uuid,
            name,
            kind: LifecycleKind::from_raw(kind),
            detail,
            received_at,
        });
    }));
}

/// The domain's UUID and name, copied; empty strings where libvirt has none.
///
/// # Safety
///
/// `domain` must be a valid domain pointer or NULL.
unsafe fn domain_identity(domain: sys::virDomainPtr) -> (String, String) {
    if domain.is_null() {
        return (String::new(), String::new());
    }
    let mut buffer: [c_char; sys::VIR_UUID_STRING_BUFLEN as usize] =
        [0; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `domain` is valid (the caller's promise) and the buffer holds the
    // VIR_UUID_STRING_BUFLEN bytes libvirt writes; both calls read only the local object.
    let (written, name) = unsafe {
        (
            sys::virDomainGetUUIDString(domain, buffer.as_mut_ptr()),
            sys::virDomainGetName(domain),
        )
    };
    let uuid = if written == 0 {
        c_string_in(&buffer)
    } else {
        String::new()
    };
    let name = if name.is_null() {
        String::new()
    } else {
        // SAFETY: a non-NULL name is the domain's NUL-terminated name, alive as long as
        // the domain, i.e. for the whole call.
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    };
    (uuid, name)
}

/// The NUL-terminated string at the start of a fixed-size buffer.
fn c_string_in(buffer: &[c_char]) -> String {
    let bytes: Vec<u8> = buffer
        .iter()
        .take_while(|&&byte| byte != 0)
        .map(|&byte| byte as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// # Safety
///
/// Only libvirt calls it, once, with the `Box<Sink>` that [`register_lifecycle`]
/// registered, when no callback with it is running any more.
unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        if !opaque.is_null() {
            // SAFETY: the caller's promise: the box is ours again, freed exactly once.
            drop(unsafe { Box::from_raw(opaque.cast::<Sink>()) });
        }
    }));
}

/// Needs no `unsafe`: it reads nothing through its arguments, it only compares the
/// connection pointer with the registered ones.
extern "C" fn on_close(connection: sys::virConnectPtr, reason: c_int, _opaque: *mut c_void) {
    let _ = panic::catch_unwind(|| {
        let reason = CloseReason::from_raw(reason);
        for watch in close_watches()
            .iter()
            .filter(|watch| watch.connection == connection as usize)
        {
            watch.sink.connection_closed(reason);
        }
    });
}
