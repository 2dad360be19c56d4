//! What a VM (or any user-named resource) may be called and how big it may be. The
//! coordinator checks these before anything is recorded; the agent checks them again
//! before anything reaches libvirt.

use thiserror::Error;

/// Longest user-chosen name of a VM or snapshot, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a user-chosen resource name: 1-64 characters of ASCII letters, digits, `_`, `.`
/// and `-`. Such a name cannot carry markup, whitespace or path separators.
pub fn validate_resource_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!(
            "name is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.chars().count()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "name contains {bad:?}; only letters, digits, '_', '.' and '-' are allowed"
        ));
    }
    Ok(())
}

/// The resources of one VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSize {
    pub cpu: u32,
    pub memory_mib: u64,
    pub disk_gb: u64,
}

impl VmSize {
    pub const CPU_RANGE: (u32, u32) = (1, 64);
    pub const MEMORY_MIB_RANGE: (u64, u64) = (64, 1024 * 1024);
    pub const DISK_GB_RANGE: (u64, u64) = (1, 4096);
    pub const DEFAULT_DISK_GB: u64 = 10;

    /// Checks every field against its range and names the first one out of it.
    pub fn validate(&self) -> Result<(), VmSizeError> {
        check("cpu", u64::from(self.cpu), widen(Self::CPU_RANGE), "vCPUs")?;
        check("memory", self.memory_mib, Self::MEMORY_MIB_RANGE, "MiB")?;
        check("disk_gb", self.disk_gb, Self::DISK_GB_RANGE, "GB")?;
        Ok(())
    }
}

fn widen((lo, hi): (u32, u32)) -> (u64, u64) {
    (u64::from(lo), u64::from(hi))
}

fn check(
    field: &'static str,
    value: u64,
    (min, max): (u64, u64),
    unit: &str,
) -> Result<(), VmSizeError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(VmSizeError {
            field,
            value,
            min,
            max,
            unit: unit.to_owned(),
        })
    }
}

/// A VM size field outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field} is {value}; it must be between {min} and {max} {unit}")]
pub struct VmSizeError {
    pub field: &'static str,
    pub value: u64,
    pub min: u64,
    pub max: u64,
    pub unit: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_allow_only_a_safe_alphabet() {
        assert!(validate_resource_name("web-01.prod_a").is_ok());
        assert!(validate_resource_name("").is_err());
        assert!(validate_resource_name(&"a".repeat(65)).is_err());
        assert!(validate_resource_name(&"a".repeat(64)).is_ok());
        for bad in ["<x/>", "a'b", "a\"b", "a&b", "a b", "a/b", "é"] {
            assert!(validate_resource_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn sizes_name_the_field_out_of_range() {
        let ok = VmSize {
            cpu: 1,
            memory_mib: 512,
            disk_gb: 10,
        };
        assert!(ok.validate().is_ok());
        let err = VmSize { cpu: 0, ..ok }.validate().unwrap_err();
        assert_eq!(err.field, "cpu");
        let err = VmSize {
            memory_mib: 1,
            ..ok
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.field, "memory");
        assert!(err.to_string().contains("between 64"));
    }
}
