//! Property tests of what the coordinator accepts from an agent's stream: arbitrary bytes
//! decoded as an `AgentMessage` never panic, and a registration is accepted only with a
//! valid host ID and a plausible capacity, its free-text fields cut to size.

use proptest::prelude::*;
use prost::Message as _;
use vmm_proto::{AgentMessage, HostCapacity, Register, agent_message};

use super::{MAX_HOST_CPUS, MAX_HOST_DISK_GB, MAX_HOST_MEMORY_MIB, validate_registration};

fn any_capacity() -> impl Strategy<Value = Option<HostCapacity>> {
    proptest::option::of(prop_oneof![
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(cpus, memory_mib, disk_gb)| {
            HostCapacity {
                cpus,
                memory_mib,
                disk_gb,
            }
        }),
        (0u32..200, 0u64..1_000_000, 0u64..100_000).prop_map(|(cpus, memory_mib, disk_gb)| {
            HostCapacity {
                cpus,
                memory_mib,
                disk_gb,
            }
        }),
    ])
}

fn any_register() -> impl Strategy<Value = Register> {
    (
        prop_oneof![any::<String>(), "[a-z0-9][a-z0-9.-]{0,40}"],
        any_capacity(),
        any::<String>(),
        any::<String>(),
        ".{0,400}",
    )
        .prop_map(
            |(host_id, capacity, libvirt_version, agent_version, hypervisor)| Register {
                host_id,
                capacity,
                libvirt_version,
                agent_version,
                hypervisor,
                ..Register::default()
            },
        )
}

fn check(register: &Register) -> Result<(), TestCaseError> {
    match validate_registration(register) {
        Ok(accepted) => {
            prop_assert!(register.host_id.parse::<vmm_shared::HostId>().is_ok());
            // Host IDs ignore case: the registration's spelling, in lower case.
            prop_assert_eq!(accepted.id.as_str(), register.host_id.to_ascii_lowercase());
            prop_assert!((1..=MAX_HOST_CPUS).contains(&accepted.cpus));
            prop_assert!(accepted.memory_mib <= MAX_HOST_MEMORY_MIB);
            prop_assert!(accepted.disk_gb <= MAX_HOST_DISK_GB);
            for text in [
                &accepted.libvirt_version,
                &accepted.hypervisor,
                &accepted.agent_version,
            ] {
                prop_assert!(text.chars().count() <= 128);
            }
        }
        Err(status) => {
            prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let capacity_ok = register.capacity.is_some_and(|c| {
                c.cpus > 0
                    && u64::from(c.cpus) <= MAX_HOST_CPUS
                    && c.memory_mib <= MAX_HOST_MEMORY_MIB
                    && c.disk_gb <= MAX_HOST_DISK_GB
            });
            prop_assert!(
                register.host_id.parse::<vmm_shared::HostId>().is_err() || !capacity_ok,
                "a valid registration was refused: {register:?}: {status:?}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_agent_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(AgentMessage { body: Some(agent_message::Body::Register(register)) }) =
            AgentMessage::decode(bytes.as_slice())
        {
            check(&register)?;
        }
    }

    #[test]
    fn registrations_are_accepted_only_when_plausible(register in any_register()) {
        check(&register)?;
        // The same through the wire encoding.
        let bytes = AgentMessage { body: Some(agent_message::Body::Register(register)) }.encode_to_vec();
        let decoded = AgentMessage::decode(bytes.as_slice()).unwrap();
        let Some(agent_message::Body::Register(register)) = decoded.body else {
            return Err(TestCaseError::fail("Register did not survive its encoding"));
        };
        check(&register)?;
    }
}
