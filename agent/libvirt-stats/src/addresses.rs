//! Safe access to `virDomainInterfaceAddresses`: a domain's interfaces and their IP
//! addresses as libvirt learns them from a libvirt network's DHCP leases or from the QEMU
//! guest agent.
//!
//! Why here: `virt` 0.5 exposes the call (`Domain::interface_addresses`) but frees only the
//! outer array, leaking every interface record and its address array on every call; an
//! agent that asks on every poll would grow without bound. This copies what libvirt
//! returned into owned values and frees each record with `virDomainInterfaceFree` and the
//! array with `free`, on every path.

use std::ffi::{CStr, c_char};
use std::ptr;

use virt::domain::Domain;
use virt::error::Error;
use virt::sys;

/// Where libvirt learns a guest's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSource {
    /// The DHCP leases of the libvirt network the interface is on.
    Lease,
    /// The QEMU guest agent inside the guest.
    Agent,
}

/// One interface of the guest and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInterface {
    /// The interface's name (the guest's, for the agent; the host's tap for leases).
    pub name: String,
    pub mac: Option<String>,
    pub addresses: Vec<GuestAddress>,
}

/// One IP address, without its prefix length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAddress {
    pub address: String,
    pub prefix: u32,
    pub ipv6: bool,
}

/// Calls `virDomainInterfaceAddresses` once.
pub fn interface_addresses(
    domain: &Domain,
    source: AddressSource,
) -> Result<Vec<GuestInterface>, Error> {
    let source = match source {
        AddressSource::Lease => sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
        AddressSource::Agent => sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
    };
    let mut interfaces: *mut sys::virDomainInterfacePtr = ptr::null_mut();
    // SAFETY: the domain pointer is valid while `domain` is borrowed, and `interfaces` is a
    // valid out-parameter; on success libvirt stores there an array of `count` records it
    // allocated, which `InterfaceList` frees.
    let count =
        unsafe { sys::virDomainInterfaceAddresses(domain.as_ptr(), &mut interfaces, source, 0) };
    if count < 0 {
        return Err(Error::last_error());
    }
    let list = InterfaceList {
        array: interfaces,
        count: usize::try_from(count).unwrap_or(0),
    };
    let mut all = Vec::with_capacity(list.count);
    for index in 0..list.count {
        // SAFETY: libvirt returned `count` records, each a valid pointer, alive until `list`
        // is dropped at the end of this function.
        let record = unsafe { &**list.array.add(index) };
        // SAFETY: as above; the record's fields are what libvirt filled in.
        all.push(unsafe { copy_interface(record) });
    }
    Ok(all)
}

/// Frees libvirt's records and their array when dropped.
struct InterfaceList {
    array: *mut sys::virDomainInterfacePtr,
    count: usize,
}

impl Drop for InterfaceList {
    fn drop(&mut self) {
        if self.array.is_null() {
            return;
        }
        for index in 0..self.count {
            // SAFETY: each of the `count` records is freed exactly once, here.
            unsafe { sys::virDomainInterfaceFree(*self.array.add(index)) };
        }
        // SAFETY: the array was allocated by libvirt with malloc and is freed once, here
        // (libvirt documents freeing it with free()).
        unsafe { libc_free(self.array.cast()) };
    }
}

unsafe extern "C" {
    /// The C library's `free`, which libvirt's allocations are released with.
    #[link_name = "free"]
    fn libc_free(pointer: *mut std::ffi::c_void);
}

/// # Safety
///
/// `record` must be a record returned by `virDomainInterfaceAddresses` that has not been
/// freed: `name` a valid C string, `hwaddr` NULL or a valid C string, and `addrs` an array
/// of `naddrs` addresses.
unsafe fn copy_interface(record: &sys::virDomainInterface) -> GuestInterface {
    // SAFETY: the caller's promise.
    let name = unsafe { owned_string(record.name) }.unwrap_or_default();
    // SAFETY: the caller's promise.
    let mac = unsafe { owned_string(record.hwaddr) };
    let addresses: &[sys::virDomainIPAddress] = match usize::try_from(record.naddrs) {
        Ok(len) if len > 0 && !record.addrs.is_null() => {
            // SAFETY: libvirt allocated `naddrs` addresses at `addrs` (the caller's
            // promise), alive as long as the record.
            unsafe { std::slice::from_raw_parts(record.addrs, len) }
        }
        _ => &[],
    };
    let addresses = addresses
        .iter()
        .filter_map(|address| {
            // SAFETY: each address's `addr` is NULL or a valid C string (the caller's
            // promise).
            let text = unsafe { owned_string(address.addr) }?;
            Some(GuestAddress {
                address: text,
                prefix: address.prefix,
                ipv6: u32::try_from(address.type_).ok() == Some(sys::VIR_IP_ADDR_TYPE_IPV6),
            })
        })
        .collect();
    GuestInterface {
        name,
        mac,
        addresses,
    }
}

/// # Safety
///
/// `text` must be NULL or a valid NUL-terminated C string.
unsafe fn owned_string(text: *const c_char) -> Option<String> {
    if text.is_null() {
        return None;
    }
    // SAFETY: non-NULL and valid (the caller's promise).
    Some(
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use virt::connect::Connect;

    use super::*;

    #[test]
    fn the_test_driver_reports_addresses_of_its_sample_domain() {
        virt::error::clear_error_callback();
        let connection = Connect::open(Some("test:///default")).unwrap();
        let domain = connection.lookup_domain_by_name("test").unwrap();
        let interfaces = interface_addresses(&domain, AddressSource::Lease).unwrap();
        assert!(!interfaces.is_empty(), "the sample domain has a NIC");
        for interface in &interfaces {
            assert!(!interface.name.is_empty());
            for address in &interface.addresses {
                assert!(
                    address.address.parse::<std::net::IpAddr>().is_ok(),
                    "{address:?}"
                );
            }
        }
        // Every call copies and frees what it got, and answers the same (tests/no_leak.rs
        // shows the memory stays flat).
        for _ in 0..100 {
            assert_eq!(
                interface_addresses(&domain, AddressSource::Lease).unwrap(),
                interfaces
            );
        }
    }
}
