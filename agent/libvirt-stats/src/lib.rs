//! Safe access to libvirt's bulk domain statistics, `virConnectGetAllDomainStats`: one call
//! returns the chosen statistics groups of every domain as flat `name=value` parameters
//! (`state.state`, `cpu.time`, `block.0.rd.bytes`, ...; see libvirt's documentation of the
//! call for the full list).
//!
//! Why a crate of its own: `virt` 0.5 exposes the call (`Connect::all_domain_stats`) but its
//! records are raw pointers without accessors, and it frees only the array, leaking every
//! record (its domain reference and its parameters) on every call. Reading them needs
//! `unsafe`, which the rest of the workspace forbids; it is confined here, behind a safe
//! function that copies what libvirt returned into owned Rust values and frees libvirt's
//! memory with `virDomainStatsRecordListFree` on every path.
//!
//! The call blocks like every libvirt call: run it off the async runtime.
//!
//! [`addresses`] does the same for `virDomainInterfaceAddresses` (a guest's IP addresses
//! from DHCP leases or the guest agent), which `virt` leaks the same way.

pub mod addresses;

use std::ffi::{CStr, c_char};
use std::ptr;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::Error;
use virt::sys;

/// Which statistics groups to ask for (`VIR_DOMAIN_STATS_*`), combined with `|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatGroups(u32);

impl StatGroups {
    /// `state.state`, `state.reason`.
    pub const STATE: Self = Self(sys::VIR_DOMAIN_STATS_STATE);
    /// `cpu.time`, `cpu.user`, `cpu.system` (nanoseconds).
    pub const CPU_TOTAL: Self = Self(sys::VIR_DOMAIN_STATS_CPU_TOTAL);
    /// `balloon.current`, `balloon.maximum`, ... (KiB).
    pub const BALLOON: Self = Self(sys::VIR_DOMAIN_STATS_BALLOON);
    /// `vcpu.current`, `vcpu.maximum`, `vcpu.<n>.*`.
    pub const VCPU: Self = Self(sys::VIR_DOMAIN_STATS_VCPU);
    /// `net.count`, `net.<n>.name`, `net.<n>.rx.bytes`, ...
    pub const INTERFACE: Self = Self(sys::VIR_DOMAIN_STATS_INTERFACE);
    /// `block.count`, `block.<n>.name`, `block.<n>.path`, `block.<n>.rd.bytes`, ...
    pub const BLOCK: Self = Self(sys::VIR_DOMAIN_STATS_BLOCK);

    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for StatGroups {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// Flags of the call (`VIR_CONNECT_GET_ALL_DOMAINS_STATS_*`); `0` means every domain.
pub mod flags {
    use virt::sys;

    /// Only running, paused, ... domains; not the ones that are merely defined.
    pub const ACTIVE: u32 = sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE;
    /// Skip a domain whose statistics would need a job that is busy (e.g. a long
    /// migration or snapshot) instead of waiting for it; only what needs no job is returned.
    pub const NOWAIT: u32 = sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT;
}

/// One typed parameter value, as libvirt typed it.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Int(i32),
    UInt(u32),
    LLong(i64),
    ULLong(u64),
    Double(f64),
    Boolean(bool),
    String(String),
}

impl ParamValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::Int(value) => u64::try_from(value).ok(),
            Self::UInt(value) => Some(u64::from(value)),
            Self::LLong(value) => u64::try_from(value).ok(),
            Self::ULLong(value) => Some(value),
            Self::Boolean(value) => Some(u64::from(value)),
            Self::Double(_) | Self::String(_) => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(value) => Some(value),
            _ => None,
        }
    }
}

/// One domain's statistics: the domain and its parameters, in libvirt's order.
pub struct DomainStats {
    /// A reference of its own to the domain, valid after the call's memory is freed.
    pub domain: Domain,
    pub params: Vec<(String, ParamValue)>,
}

impl DomainStats {
    /// The parameter named `name`, if libvirt returned it.
    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        self.params
            .iter()
            .find(|(param, _)| param == name)
            .map(|(_, value)| value)
    }
}

/// Calls `virConnectGetAllDomainStats` once: the `groups` statistics of every domain the
/// `flags` select (see [`flags`]), copied into owned values.
pub fn all_domain_stats(
    connection: &Connect,
    groups: StatGroups,
    flags: u32,
) -> Result<Vec<DomainStats>, Error> {
    let mut records: *mut sys::virDomainStatsRecordPtr = ptr::null_mut();
    // SAFETY: the connection pointer is valid while `connection` is borrowed, and `records`
    // is a valid out-parameter; on success libvirt stores a NULL-terminated array it
    // allocated there, which `RecordList` frees.
    let count = unsafe {
        sys::virConnectGetAllDomainStats(connection.as_ptr(), groups.0, &mut records, flags)
    };
    if count < 0 {
        return Err(Error::last_error());
    }
    let list = RecordList(records);
    let count = usize::try_from(count).unwrap_or(0);
    let mut all = Vec::with_capacity(count);
    for index in 0..count {
        // SAFETY: libvirt returned `count` records, each a valid pointer, and they stay
        // alive until `list` is dropped at the end of this function.
        let record = unsafe { &**list.0.add(index) };
        // SAFETY: as above; the record's fields are what libvirt filled in.
        all.push(unsafe { copy_record(record) }?);
    }
    Ok(all)
}

/// Frees libvirt's array of records (each record's domain reference and parameters
/// included) when dropped, whatever happens between the call and the end of the copy.
struct RecordList(*mut sys::virDomainStatsRecordPtr);

impl Drop for RecordList {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer is the array `virConnectGetAllDomainStats` returned, freed
            // exactly once, here.
            unsafe { sys::virDomainStatsRecordListFree(self.0) };
        }
    }
}

/// # Safety
///
/// `record` must be a record returned by `virConnectGetAllDomainStats` that has not been
/// freed: `dom` a valid domain and `params` an array of `nparams` typed parameters.
unsafe fn copy_record(record: &sys::virDomainStatsRecord) -> Result<DomainStats, Error> {
    // The record's own domain reference goes away with the record: take one for the caller.
    // SAFETY: `record.dom` is valid (the caller's promise).
    if unsafe { sys::virDomainRef(record.dom) } < 0 {
        return Err(Error::last_error());
    }
    // SAFETY: the reference taken above now belongs to the `Domain`, which frees it on drop.
    let domain = unsafe { Domain::from_ptr(record.dom) };
    let params: &[sys::virTypedParameter] = match usize::try_from(record.nparams) {
        Ok(len) if len > 0 && !record.params.is_null() => {
            // SAFETY: libvirt allocated `nparams` parameters at `params` (the caller's
            // promise), alive as long as the record.
            unsafe { std::slice::from_raw_parts(record.params, len) }
        }
        _ => &[],
    };
    let params = params
        .iter()
        .filter_map(|param| {
            // SAFETY: the parameter comes from libvirt, which sets `type_` to match the
            // union member it wrote and `s` to a valid C string (or NULL).
            let value = unsafe { param_value(param) }?;
            Some((field_name(&param.field), value))
        })
        .collect();
    Ok(DomainStats { domain, params })
}

/// The parameter's name: a NUL-terminated string inside a fixed-size array.
fn field_name(field: &[c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|&&byte| byte != 0)
        .map(|&byte| byte as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// # Safety
///
/// `param.type_` must name the union member that holds the value, and a string value must
/// be NULL or point to a valid NUL-terminated C string.
unsafe fn param_value(param: &sys::virTypedParameter) -> Option<ParamValue> {
    let value = &param.value;
    let kind = u32::try_from(param.type_).ok()?;
    // SAFETY: `type_` says which member libvirt wrote, and a non-NULL string member is a
    // valid C string (the caller's promise).
    let typed = unsafe {
        match kind {
            sys::VIR_TYPED_PARAM_INT => ParamValue::Int(value.i),
            sys::VIR_TYPED_PARAM_UINT => ParamValue::UInt(value.ui),
            sys::VIR_TYPED_PARAM_LLONG => ParamValue::LLong(value.l),
            sys::VIR_TYPED_PARAM_ULLONG => ParamValue::ULLong(value.ul),
            sys::VIR_TYPED_PARAM_DOUBLE => ParamValue::Double(value.d),
            sys::VIR_TYPED_PARAM_BOOLEAN => ParamValue::Boolean(value.b != 0),
            sys::VIR_TYPED_PARAM_STRING if !value.s.is_null() => {
                ParamValue::String(CStr::from_ptr(value.s).to_string_lossy().into_owned())
            }
            _ => return None,
        }
    };
    Some(typed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: StatGroups = StatGroups(
        StatGroups::STATE.0
            | StatGroups::CPU_TOTAL.0
            | StatGroups::BALLOON.0
            | StatGroups::VCPU.0
            | StatGroups::INTERFACE.0
            | StatGroups::BLOCK.0,
    );

    #[test]
    fn the_test_driver_reports_its_sample_domain() {
        virt::error::clear_error_callback();
        let connection = Connect::open(Some("test:///default")).unwrap();
        let stats = all_domain_stats(&connection, ALL, 0).unwrap();
        assert_eq!(stats.len(), 1);
        let test = &stats[0];
        assert_eq!(test.domain.name().unwrap(), "test");
        // VIR_DOMAIN_RUNNING. The test driver implements only the `state` group; the
        // other groups are asked for and silently left out, as libvirt documents.
        assert_eq!(
            test.get("state.state").and_then(ParamValue::as_u64),
            Some(1)
        );
        // The domain outlives libvirt's records.
        drop(connection);
        assert!(test.domain.uuid_string().is_ok());
    }

    #[test]
    fn groups_select_what_is_returned() {
        virt::error::clear_error_callback();
        let connection = Connect::open(Some("test:///default")).unwrap();
        let stats = all_domain_stats(&connection, StatGroups::STATE, flags::ACTIVE).unwrap();
        assert_eq!(stats.len(), 1);
        assert!(
            stats[0]
                .params
                .iter()
                .all(|(name, _)| name.starts_with("state."))
        );
    }
}
