//! The XML documents the agent hands to libvirt (domains, volumes, the storage pool) and the
//! few facts it reads back out of libvirt's XML (guest capabilities, our instance metadata,
//! MAC addresses in use).
//!
//! Every document is built from typed values, and every interpolated string goes through
//! [`escape`], even values that were validated before: escaping is what makes markup in a
//! value harmless, validation is only a second line of defence. libvirt's XML is read with
//! one XML parser (`roxmltree`), never by splitting strings: a document that does not parse
//! yields nothing. Nothing here talks to libvirt, so all of it is unit-testable.

use std::fmt::Write as _;

use roxmltree::{Document, Node};
use vmm_shared::VmId;

use crate::hypervisor::{ImageFormat, SshForward, domain_name};

/// The XML namespace of the metadata element the agent puts into every domain it creates.
/// A domain carrying it is managed by the product; its `vm-id` names the coordinator's VM.
pub const INSTANCE_METADATA_NAMESPACE: &str = "https://vmm.dev/xmlns/instance/1";

/// Escapes a string for use in XML text and in attribute values (quoted with `'` or `"`).
pub fn escape(raw: &str) -> String {
    let mut escaped = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Everything needed to write the domain XML of one product VM.
#[derive(Debug, Clone)]
pub struct DomainDefinition<'a> {
    pub vm_id: VmId,
    /// The user's name for the VM: shown as the domain title and kept in the metadata.
    pub display_name: &'a str,
    /// libvirt domain type: `kvm`, `qemu`, or whatever the driver offers (`test`).
    pub domain_type: &'a str,
    pub arch: &'a str,
    pub cpu: u32,
    pub memory_mib: u64,
    pub disk: DiskDefinition<'a>,
    /// The cloud-init seed volume, attached as a read-only virtio disk.
    pub seed_path: Option<&'a str>,
    pub nic: NicDefinition<'a>,
    pub mac_address: &'a str,
    /// The UNIX socket the first serial port listens on (the agent's console relay
    /// connects to it; libvirt's own `virsh console` goes through it too).
    pub serial_socket: &'a str,
    /// Who owns that socket once libvirt made it, as a libvirt DAC label
    /// (`+uid:+gid`): the agent's user, so that it may connect.
    pub serial_socket_owner: &'a str,
}

/// The VM's disk: a qcow2 file, on its own or an overlay of a cached image.
#[derive(Debug, Clone, Copy)]
pub struct DiskDefinition<'a> {
    pub path: &'a str,
    pub backing: Option<BackingFile<'a>>,
}

/// The cached image a disk is an overlay of.
#[derive(Debug, Clone, Copy)]
pub struct BackingFile<'a> {
    pub path: &'a str,
    pub format: ImageFormat,
}

/// The VM's one NIC, per network mode.
#[derive(Debug, Clone, Copy)]
pub enum NicDefinition<'a> {
    /// passt, with a TCP forward from `forward_address:port` on the host to the guest's 22.
    User { forward_address: &'a str, port: u16 },
    /// A libvirt network.
    Network(&'a str),
    /// A host bridge.
    Bridge(&'a str),
}

/// The name of the virtio-serial port the QEMU guest agent listens on.
pub const GUEST_AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

impl DomainDefinition<'_> {
    pub fn to_xml(&self) -> String {
        let vm_id = escape(&self.vm_id.to_string());
        let name = escape(&domain_name(self.vm_id));
        let display_name = escape(self.display_name);
        let domain_type = escape(self.domain_type);
        let arch = escape(self.arch);
        let namespace = escape(INSTANCE_METADATA_NAMESPACE);
        let (cpu, memory) = (self.cpu, self.memory_mib);
        let disk = disk_xml(&self.disk);
        let seed = self.seed_path.map(seed_xml).unwrap_or_default();
        let nic = nic_xml(&self.nic, self.mac_address);
        let guest_agent = escape(GUEST_AGENT_CHANNEL);
        let consoles = consoles_xml(self.serial_socket, self.serial_socket_owner);
        format!(
            "<domain type='{domain_type}'>
  <name>{name}</name>
  <uuid>{vm_id}</uuid>
  <title>{display_name}</title>
  <metadata>
    <vmm:instance xmlns:vmm='{namespace}'>
      <vmm:vm-id>{vm_id}</vmm:vm-id>
      <vmm:name>{display_name}</vmm:name>
    </vmm:instance>
  </metadata>
  <memory unit='MiB'>{memory}</memory>
  <currentMemory unit='MiB'>{memory}</currentMemory>
  <vcpu>{cpu}</vcpu>
  <os>
    <type arch='{arch}'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
{disk}{seed}{nic}    <channel type='unix'>
      <target type='virtio' name='{guest_agent}'/>
    </channel>
{consoles}  </devices>
</domain>
"
        )
    }
}

/// The screen and the serial console, neither on the network: the VNC server listens
/// nowhere (the agent hands QEMU one end of a socket pair per session, through libvirt's
/// `virDomainOpenGraphics`), and the serial port listens on a UNIX socket that libvirt
/// creates and gives to `owner`. `<console>` names the same port, so that libvirt's own
/// console (`virsh console`) reaches it too.
fn consoles_xml(serial_socket: &str, owner: &str) -> String {
    let path = escape(serial_socket);
    let owner = escape(owner);
    format!(
        "    <graphics type='vnc'>
      <listen type='none'/>
    </graphics>
    <serial type='unix'>
      <source mode='bind' path='{path}'>
        <seclabel model='dac' relabel='yes'>
          <label>{owner}</label>
        </seclabel>
      </source>
      <target port='0'/>
    </serial>
    <console type='unix'>
      <source mode='bind' path='{path}'/>
      <target type='serial' port='0'/>
    </console>
"
    )
}

/// The UNIX socket a domain's first serial port listens on (`<serial type='unix'>` with a
/// `bind` source), read from its XML. `None` for a domain whose serial port is anything
/// else (a pty, in domains defined before consoles were relayed) or has no such port.
pub fn serial_socket(domain_xml: &str) -> Option<String> {
    let document = Document::parse(domain_xml).ok()?;
    let devices = child(document.root_element(), "devices")?;
    let serial = children(devices, "serial").find(|serial| {
        child(*serial, "target").is_none_or(|target| target.attribute("port").unwrap_or("0") == "0")
    })?;
    if serial.attribute("type") != Some("unix") {
        return None;
    }
    let source = child(serial, "source")?;
    if source.attribute("mode") != Some("bind") {
        return None;
    }
    source
        .attribute("path")
        .filter(|path| !path.is_empty())
        .map(str::to_owned)
}

/// The disk on the virtio bus. An overlay names its backing file with `relabel='no'`:
/// libvirt would otherwise chown the shared base to the QEMU user when a VM starts and
/// never give it back; the base is world-readable instead. The empty `<backingStore/>`
/// inside says the base has no backing file of its own.
fn disk_xml(disk: &DiskDefinition<'_>) -> String {
    let path = escape(disk.path);
    let backing = disk
        .backing
        .map(|backing| {
            format!(
                "      <backingStore type='file'>
        <format type='{}'/>
        <source file='{}'>
          <seclabel model='dac' relabel='no'/>
        </source>
        <backingStore/>
      </backingStore>
",
                escape(backing.format.as_str()),
                escape(backing.path)
            )
        })
        .unwrap_or_default();
    format!(
        "    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{path}'/>
{backing}      <target dev='vda' bus='virtio'/>
    </disk>
"
    )
}

/// The seed: a read-only virtio disk (every machine type has virtio; Debian's cloud kernel
/// has no AHCI driver, so a SATA CD-ROM would be invisible to it on q35).
fn seed_xml(path: &str) -> String {
    format!(
        "    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{}'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
",
        escape(path)
    )
}

fn nic_xml(nic: &NicDefinition<'_>, mac_address: &str) -> String {
    let mac = escape(mac_address);
    match *nic {
        NicDefinition::User {
            forward_address,
            port,
        } => format!(
            "    <interface type='user'>
      <mac address='{mac}'/>
      <backend type='passt'/>
      <model type='virtio'/>
      <portForward proto='tcp' address='{}'>
        <range start='{port}' to='22'/>
      </portForward>
    </interface>
",
            escape(forward_address)
        ),
        NicDefinition::Network(network) => format!(
            "    <interface type='network'>
      <mac address='{mac}'/>
      <source network='{}'/>
      <model type='virtio'/>
    </interface>
",
            escape(network)
        ),
        NicDefinition::Bridge(bridge) => format!(
            "    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='{}'/>
      <model type='virtio'/>
    </interface>
",
            escape(bridge)
        ),
    }
}

/// A transient, device-less domain used once at start to find out whether KVM really works.
pub fn kvm_probe_xml(name: &str, arch: &str) -> String {
    format!(
        "<domain type='kvm'>
  <name>{}</name>
  <memory unit='MiB'>16</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='{}'>hvm</type>
  </os>
</domain>
",
        escape(name),
        escape(arch)
    )
}

/// A qcow2 volume of `capacity_bytes`.
pub fn volume_xml(name: &str, capacity_bytes: u64) -> String {
    format!(
        "<volume>
  <name>{}</name>
  <capacity unit='bytes'>{capacity_bytes}</capacity>
  <target>
    <format type='qcow2'/>
  </target>
</volume>
",
        escape(name)
    )
}

/// A qcow2 volume of `capacity_bytes` that is a copy-on-write overlay of `backing_path`
/// (whose format is given, never probed).
pub fn overlay_volume_xml(
    name: &str,
    capacity_bytes: u64,
    backing_path: &str,
    backing_format: ImageFormat,
) -> String {
    format!(
        "<volume>
  <name>{}</name>
  <capacity unit='bytes'>{capacity_bytes}</capacity>
  <target>
    <format type='qcow2'/>
  </target>
  <backingStore>
    <path>{}</path>
    <format type='{}'/>
  </backingStore>
</volume>
",
        escape(name),
        escape(backing_path),
        escape(backing_format.as_str())
    )
}

/// A raw volume of exactly `capacity_bytes`, for the seed.
pub fn raw_volume_xml(name: &str, capacity_bytes: u64) -> String {
    format!(
        "<volume>
  <name>{}</name>
  <capacity unit='bytes'>{capacity_bytes}</capacity>
  <allocation unit='bytes'>{capacity_bytes}</allocation>
  <target>
    <format type='raw'/>
  </target>
</volume>
",
        escape(name)
    )
}

/// A directory storage pool rooted at `target_path`.
pub fn dir_pool_xml(name: &str, target_path: &str) -> String {
    format!(
        "<pool type='dir'>
  <name>{}</name>
  <target>
    <path>{}</path>
  </target>
</pool>
",
        escape(name),
        escape(target_path)
    )
}

/// The hardware-virtualised guest a host offers, read from its capabilities XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCapability {
    pub arch: String,
    /// Domain types offered for that arch, in the order libvirt lists them.
    pub domain_types: Vec<String>,
}

/// Finds the `<guest>` with `<os_type>hvm</os_type>` for the host's own arch (the
/// `<host><cpu><arch>` of a capabilities document), or else the first hvm guest. QEMU lists
/// `i686` before `x86_64`, so taking the first one would give 32-bit guests.
pub fn parse_hvm_guest(capabilities_xml: &str) -> Option<GuestCapability> {
    let document = Document::parse(capabilities_xml).ok()?;
    let capabilities = document.root_element();
    let hvm_guests: Vec<GuestCapability> = children(capabilities, "guest")
        .filter(|guest| child(*guest, "os_type").is_some_and(|os_type| text(os_type) == "hvm"))
        .filter_map(|guest| {
            let arch = child(guest, "arch")?;
            let domain_types = children(arch, "domain")
                .filter_map(|domain| domain.attribute("type"))
                .map(str::to_owned)
                .collect();
            Some(GuestCapability {
                arch: arch.attribute("name")?.to_owned(),
                domain_types,
            })
        })
        .collect();
    let host_arch = child(capabilities, "host")
        .and_then(|host| child(host, "cpu"))
        .and_then(|cpu| child(cpu, "arch"))
        .map(text);
    let preferred =
        host_arch.and_then(|host_arch| hvm_guests.iter().position(|guest| guest.arch == host_arch));
    let index = preferred.unwrap_or(0);
    hvm_guests.into_iter().nth(index)
}

/// Reads the VM ID out of the instance metadata the agent wrote: the `vm-id` of an
/// `instance` element in [`INSTANCE_METADATA_NAMESPACE`]. libvirt hands the element back
/// without its namespace (`<instance><vm-id>…`) when asked for it by namespace, so an
/// element without a namespace counts too; one of another namespace does not. `None` if
/// there is none or it is not a UUID.
pub fn parse_instance_vm_id(metadata_xml: &str) -> Option<VmId> {
    let document = Document::parse(metadata_xml).ok()?;
    let ours = |node: &Node<'_, '_>, name: &str| {
        node.tag_name().name() == name
            && node
                .tag_name()
                .namespace()
                .is_none_or(|namespace| namespace == INSTANCE_METADATA_NAMESPACE)
    };
    let vm_id = document.descendants().find(|node| {
        ours(node, "vm-id")
            && node
                .parent_element()
                .is_some_and(|parent| ours(&parent, "instance"))
    })?;
    text(vm_id).parse().ok()
}

/// All MAC addresses of a domain's interfaces, lowercased.
pub fn mac_addresses(domain_xml: &str) -> Vec<String> {
    let Ok(document) = Document::parse(domain_xml) else {
        return Vec::new();
    };
    document
        .descendants()
        .filter(|node| node.has_tag_name("mac"))
        .filter_map(|mac| mac.attribute("address"))
        .map(str::to_ascii_lowercase)
        .collect()
}

/// What the agent needs to know of a domain's networking, read from its XML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainNetworking {
    /// A TCP forward from the host to the guest's port 22 (a user-mode NIC's).
    pub ssh: Option<SshForward>,
    /// Every host port a port forward of the domain takes.
    pub forwarded_ports: Vec<u16>,
    /// Whether a NIC is on a libvirt network (whose DHCP leases then name its addresses).
    pub on_libvirt_network: bool,
    /// Whether the domain has the QEMU guest agent's channel.
    pub guest_agent_channel: bool,
    /// Whether a guest agent is connected to that channel (live XML of a running domain).
    pub guest_agent_connected: bool,
}

/// Reads [`DomainNetworking`] out of a domain's XML; a document that does not parse has
/// none of it.
pub fn domain_networking(domain_xml: &str) -> DomainNetworking {
    let Ok(document) = Document::parse(domain_xml) else {
        return DomainNetworking::default();
    };
    let Some(devices) = child(document.root_element(), "devices") else {
        return DomainNetworking::default();
    };
    let mut networking = DomainNetworking::default();
    for interface in children(devices, "interface") {
        let kind = interface.attribute("type").unwrap_or_default();
        if kind == "network" {
            networking.on_libvirt_network = true;
        }
        for forward in children(interface, "portForward") {
            let tcp = forward
                .attribute("proto")
                .is_none_or(|proto| proto == "tcp");
            let address = forward.attribute("address").unwrap_or("0.0.0.0");
            for range in children(forward, "range") {
                let Some(start) = range.attribute("start").and_then(|p| p.parse::<u16>().ok())
                else {
                    continue;
                };
                let end = range
                    .attribute("end")
                    .and_then(|p| p.parse::<u16>().ok())
                    .unwrap_or(start)
                    .max(start);
                networking.forwarded_ports.extend(start..=end);
                let to_ssh = range.attribute("to").and_then(|p| p.parse::<u16>().ok()) == Some(22);
                if tcp && to_ssh && start == end && networking.ssh.is_none() {
                    networking.ssh = Some(SshForward {
                        address: address.to_owned(),
                        port: start,
                    });
                }
            }
        }
    }
    let agent_target = children(devices, "channel")
        .filter_map(|channel| child(channel, "target"))
        .find(|target| target.attribute("name") == Some(GUEST_AGENT_CHANNEL));
    networking.guest_agent_channel = agent_target.is_some();
    networking.guest_agent_connected =
        agent_target.is_some_and(|target| target.attribute("state") == Some("connected"));
    networking
}

/// The backing file a volume's XML names (`<backingStore><path>`), if any.
pub fn volume_backing_path(volume_xml: &str) -> Option<String> {
    let document = Document::parse(volume_xml).ok()?;
    let backing = child(document.root_element(), "backingStore")?;
    Some(text(child(backing, "path")?).to_owned()).filter(|path| !path.is_empty())
}

/// The directory of a directory pool (`<target><path>`), if its XML names one.
pub fn pool_target_path(pool_xml: &str) -> Option<String> {
    let document = Document::parse(pool_xml).ok()?;
    let target = child(document.root_element(), "target")?;
    Some(text(child(target, "path")?).to_owned()).filter(|path| !path.is_empty())
}

/// The child elements of `node` named `tag` (no namespace).
fn children<'a, 'input: 'a>(
    node: Node<'a, 'input>,
    tag: &'a str,
) -> impl Iterator<Item = Node<'a, 'input>> + 'a {
    node.children().filter(move |child| child.has_tag_name(tag))
}

fn child<'a, 'input: 'a>(node: Node<'a, 'input>, tag: &'a str) -> Option<Node<'a, 'input>> {
    children(node, tag).next()
}

/// The trimmed text of an element.
fn text<'a>(node: Node<'a, '_>) -> &'a str {
    node.text().unwrap_or_default().trim()
}

/// A locally administered MAC in QEMU's `52:54:00` range from three random bytes.
pub fn qemu_mac_address(random: [u8; 3]) -> String {
    let mut mac = String::from("52:54:00");
    for byte in random {
        // Writing to a String cannot fail.
        let _ = write!(mac, ":{byte:02x}");
    }
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(display_name: &str) -> String {
        example_definition(display_name).to_xml()
    }

    fn example_definition(display_name: &str) -> DomainDefinition<'_> {
        DomainDefinition {
            vm_id: "6f1c2a4e-8d7b-4c1e-9f3a-2b5d7e9a1c3f".parse().unwrap(),
            display_name,
            domain_type: "qemu",
            arch: "x86_64",
            cpu: 2,
            memory_mib: 512,
            disk: DiskDefinition {
                path: "/var/lib/vmm/images/vmm-x.qcow2",
                backing: None,
            },
            seed_path: None,
            nic: NicDefinition::User {
                forward_address: "127.0.0.1",
                port: 22001,
            },
            mac_address: "52:54:00:12:34:56",
            serial_socket: "/var/lib/vmm-agent/consoles/6f1c2a4e.serial",
            serial_socket_owner: "+990:+990",
        }
    }

    #[test]
    fn escape_replaces_every_markup_character() {
        assert_eq!(escape(r#"a'><x/>&"b"#), "a&apos;&gt;&lt;x/&gt;&amp;&quot;b");
        assert_eq!(escape("plain-name_1.0"), "plain-name_1.0");
    }

    #[test]
    fn a_hostile_name_cannot_break_out_of_the_domain_xml() {
        let xml = definition("a'><x/>&");
        assert!(!xml.contains("<x/>"), "raw markup leaked into:\n{xml}");
        assert!(!xml.contains("a'>"));
        assert!(xml.contains("<title>a&apos;&gt;&lt;x/&gt;&amp;</title>"));
        assert!(xml.contains("<vmm:name>a&apos;&gt;&lt;x/&gt;&amp;</vmm:name>"));
    }

    #[test]
    fn domain_xml_names_the_vm_by_its_id_and_carries_the_metadata() {
        let xml = definition("web-01");
        assert!(xml.contains("<name>vmm-6f1c2a4e-8d7b-4c1e-9f3a-2b5d7e9a1c3f</name>"));
        assert!(xml.contains("<uuid>6f1c2a4e-8d7b-4c1e-9f3a-2b5d7e9a1c3f</uuid>"));
        assert!(xml.contains("<memory unit='MiB'>512</memory>"));
        assert!(xml.contains("<vcpu>2</vcpu>"));
        assert_eq!(
            parse_instance_vm_id(&xml)
                .map(|id| id.to_string())
                .as_deref(),
            Some("6f1c2a4e-8d7b-4c1e-9f3a-2b5d7e9a1c3f")
        );
        assert_eq!(mac_addresses(&xml), vec!["52:54:00:12:34:56".to_owned()]);
    }

    /// Neither console listens on the network; the serial socket is found again in the
    /// XML, and a domain of the old shape (pty serial, VNC on loopback) has none.
    #[test]
    fn consoles_listen_nowhere_but_on_the_serial_socket() {
        let xml = definition("web-01");
        assert!(xml.contains("<listen type='none'/>"), "{xml}");
        assert!(!xml.contains("127.0.0.1'/>\n    </graphics>"), "{xml}");
        assert!(!xml.contains("autoport"), "{xml}");
        assert!(xml.contains("<label>+990:+990</label>"), "{xml}");
        assert_eq!(
            serial_socket(&xml).as_deref(),
            Some("/var/lib/vmm-agent/consoles/6f1c2a4e.serial")
        );
        let old = "<domain><devices><graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\
            <serial type='pty'><source path='/dev/pts/3'/><target port='0'/></serial>\
            <console type='pty'><target type='serial' port='0'/></console></devices></domain>";
        assert_eq!(serial_socket(old), None);
        let connect = "<domain><devices><serial type='unix'><source mode='connect' \
            path='/x'/><target port='0'/></serial></devices></domain>";
        assert_eq!(serial_socket(connect), None);
        let hostile = DomainDefinition {
            serial_socket: "/x'/><y/>",
            ..example_definition("h")
        }
        .to_xml();
        assert!(!hostile.contains("<y/>"), "{hostile}");
    }

    #[test]
    fn hvm_guest_is_found_in_capabilities() {
        let caps = "<capabilities><guest><os_type>xen</os_type><arch name='x86_64'>\
            <domain type='xen'/></arch></guest>\
            <guest><os_type>hvm</os_type><arch name='x86_64'><wordsize>64</wordsize>\
            <domain type='qemu'/><domain type='kvm'>\n</domain></arch></guest></capabilities>";
        assert_eq!(
            parse_hvm_guest(caps),
            Some(GuestCapability {
                arch: "x86_64".into(),
                domain_types: vec!["qemu".into(), "kvm".into()],
            })
        );
        assert_eq!(parse_hvm_guest("<capabilities/>"), None);
    }

    #[test]
    fn the_hosts_own_arch_is_preferred() {
        let caps = "<capabilities><host><cpu><arch>x86_64</arch></cpu></host>\
            <guest><os_type>hvm</os_type><arch name='i686'><domain type='qemu'/></arch></guest>\
            <guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/>\
            <domain type='kvm'/></arch></guest></capabilities>";
        let guest = parse_hvm_guest(caps).unwrap();
        assert_eq!(guest.arch, "x86_64");
        assert_eq!(guest.domain_types, ["qemu", "kvm"]);
    }

    #[test]
    fn instance_metadata_without_a_uuid_is_unmanaged() {
        assert_eq!(parse_instance_vm_id("<vmm:vm-id>nope</vmm:vm-id>"), None);
        assert_eq!(parse_instance_vm_id(""), None);
        // As libvirt returns it when asked by namespace.
        let vm_id = VmId::new_random();
        assert_eq!(
            parse_instance_vm_id(&format!(
                "<instance>\n  <vm-id>{vm_id}</vm-id>\n  <name>a&amp;</name>\n</instance>"
            )),
            Some(vm_id)
        );
        // Another namespace's vm-id is not ours.
        assert_eq!(
            parse_instance_vm_id(&format!(
                "<x:instance xmlns:x='urn:other'><x:vm-id>{vm_id}</x:vm-id></x:instance>"
            )),
            None
        );
        assert_eq!(
            parse_instance_vm_id(&format!(
                "<i:instance xmlns:i='{INSTANCE_METADATA_NAMESPACE}'>\
                 <i:vm-id> {vm_id} </i:vm-id></i:instance>"
            )),
            Some(vm_id)
        );
    }

    #[test]
    fn qemu_macs_are_well_formed() {
        assert_eq!(qemu_mac_address([0, 0xab, 0x0f]), "52:54:00:00:ab:0f");
    }

    fn image_definition(nic: NicDefinition<'_>) -> String {
        DomainDefinition {
            vm_id: VmId::new_random(),
            display_name: "from-image",
            domain_type: "qemu",
            arch: "x86_64",
            cpu: 1,
            memory_mib: 256,
            disk: DiskDefinition {
                path: "/pool/vmm-x.qcow2",
                backing: Some(BackingFile {
                    path: "/pool/vmm-image-x",
                    format: ImageFormat::Raw,
                }),
            },
            seed_path: Some("/pool/vmm-x-seed.img"),
            nic,
            mac_address: "52:54:00:00:00:01",
            serial_socket: "/agent/consoles/x.serial",
            serial_socket_owner: "+0:+0",
        }
        .to_xml()
    }

    #[test]
    fn an_overlay_names_its_base_without_relabelling_it_and_the_seed_is_read_only() {
        let xml = image_definition(NicDefinition::Network("default"));
        let document = Document::parse(&xml).unwrap();
        let disks: Vec<Node<'_, '_>> = document
            .descendants()
            .filter(|node| node.has_tag_name("disk"))
            .collect();
        assert_eq!(disks.len(), 2, "{xml}");
        let backing = child(disks[0], "backingStore").expect("the overlay's backing store");
        assert_eq!(
            child(backing, "format").and_then(|f| f.attribute("type")),
            Some("raw")
        );
        let source = child(backing, "source").unwrap();
        assert_eq!(source.attribute("file"), Some("/pool/vmm-image-x"));
        let seclabel = child(source, "seclabel").unwrap();
        assert_eq!(
            (seclabel.attribute("model"), seclabel.attribute("relabel")),
            (Some("dac"), Some("no"))
        );
        let seed = disks[1];
        assert!(child(seed, "readonly").is_some(), "{xml}");
        assert_eq!(
            child(seed, "target").and_then(|t| t.attribute("bus")),
            Some("virtio")
        );
        let networking = domain_networking(&xml);
        assert!(networking.on_libvirt_network && networking.guest_agent_channel);
        assert_eq!(networking.ssh, None);
    }

    #[test]
    fn each_network_mode_gets_its_nic_and_hostile_names_stay_inert() {
        let user = image_definition(NicDefinition::User {
            forward_address: "127.0.0.1",
            port: 22007,
        });
        assert!(user.contains("<backend type='passt'/>"), "{user}");
        let networking = domain_networking(&user);
        assert_eq!(
            networking.ssh,
            Some(SshForward {
                address: "127.0.0.1".into(),
                port: 22007
            })
        );
        assert_eq!(networking.forwarded_ports, [22007]);
        assert!(!networking.on_libvirt_network);

        let bridge = image_definition(NicDefinition::Bridge("br0'/><x/>"));
        assert!(!bridge.contains("<x/>"), "{bridge}");
        assert!(bridge.contains("<source bridge='br0&apos;/&gt;&lt;x/&gt;'/>"));
        let network = image_definition(NicDefinition::Network("nat"));
        assert!(network.contains("<interface type='network'>"));
        assert!(network.contains("<source network='nat'/>"));
    }

    #[test]
    fn forwarded_ports_of_any_domain_are_read() {
        let xml = "<domain><devices><interface type='user'><portForward proto='udp' \
            address='0.0.0.0'><range start='5000' end='5002'/></portForward>\
            <portForward proto='tcp'><range start='2222' to='22'/></portForward>\
            </interface></devices></domain>";
        let networking = domain_networking(xml);
        assert_eq!(networking.forwarded_ports, [5000, 5001, 5002, 2222]);
        assert_eq!(
            networking.ssh,
            Some(SshForward {
                address: "0.0.0.0".into(),
                port: 2222
            })
        );
        assert_eq!(domain_networking("not xml"), DomainNetworking::default());
        let live = "<domain><devices><channel type='unix'><target type='virtio' \
            name='org.qemu.guest_agent.0' state='connected'/></channel></devices></domain>";
        let networking = domain_networking(live);
        assert!(networking.guest_agent_channel && networking.guest_agent_connected);
        assert!(
            !domain_networking(&live.replace("connected", "disconnected")).guest_agent_connected
        );
    }

    #[test]
    fn volume_and_pool_paths_are_read() {
        let overlay = overlay_volume_xml("o", 1 << 30, "/pool/vmm-image-a&b", ImageFormat::Qcow2);
        assert_eq!(
            volume_backing_path(&overlay).as_deref(),
            Some("/pool/vmm-image-a&b")
        );
        assert_eq!(volume_backing_path(&volume_xml("v", 1)), None);
        assert_eq!(
            pool_target_path(&dir_pool_xml("p", "/var/lib/vmm/images")).as_deref(),
            Some("/var/lib/vmm/images")
        );
        assert_eq!(pool_target_path("<pool/>"), None);
    }
}
