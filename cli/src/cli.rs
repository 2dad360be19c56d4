//! The commands and their flags. Wherever a VM, image, key, snapshot, user or token is
//! named, its name or its ID will do.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::output::Format;

const EXAMPLES: &str = "\
Examples:
  vmmctl login --url http://127.0.0.1:8080 --username alice
  vmmctl vm create web-1 --cpu 1 --memory 512 --disk-gb 5
  vmmctl vm list
  vmmctl vm stop web-1
  vmmctl snapshot create web-1 before-upgrade
  vmmctl snapshot restore web-1 before-upgrade
  vmmctl vm list --output json | jq -r '.[].name'
  VMM_TOKEN=vmm_pat_... vmmctl vm list

Exit codes:
  0 done; 1 the API refused or failed, or another error; 2 usage; 3 not found;
  4 not logged in, or not allowed (401/403); 5 conflict (409); 6 timed out;
  7 the coordinator cannot be reached

Environment:
  VMM_URL    the coordinator's URL (default: the one `login` stored, else http://127.0.0.1:8080)
  VMM_TOKEN  a token (e.g. an API token, vmm_pat_...) to use instead of the stored one";

/// The command-line client of the vmm coordinator.
#[derive(Debug, Parser)]
#[command(name = "vmmctl", version, after_help = EXAMPLES)]
pub struct Cli {
    /// The coordinator's URL.
    #[arg(long, global = true, env = "VMM_URL", value_name = "URL")]
    pub url: Option<String>,
    /// How to print results.
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value_t = Format::Table
    )]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in and keep the token (0600) in $XDG_CONFIG_HOME/vmmctl/ (or ~/.config/vmmctl/).
    #[command(after_help = "\
Examples:
  vmmctl login --url http://127.0.0.1:8080 --username alice      (asks for the password)
  echo \"$PASSWORD\" | vmmctl login --username alice --password-stdin
  echo \"$TOKEN\" | vmmctl login --with-token                         (an API token, vmm_pat_...)")]
    Login(LoginArgs),
    /// Forget the stored token.
    Logout,
    /// Who the token belongs to, and where the API is.
    Whoami,
    /// Virtual machines.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Snapshots of a VM.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Images VMs boot from.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Your SSH public keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Quotas and usage.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// User accounts (administrators).
    #[command(subcommand)]
    User(UserCommand),
    /// Hypervisor hosts (administrators).
    #[command(subcommand)]
    Host(HostCommand),
    /// API tokens for scripts and automation.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Attach to a VM's serial console (Ctrl-] to leave).
    #[command(after_help = "\
Examples:
  vmmctl console web-1
  vmmctl console web-1 --force    (take the console over from another session)")]
    Console(ConsoleArgs),
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  vmmctl completions bash > ~/.local/share/bash-completion/completions/vmmctl
  vmmctl completions zsh > ~/.zfunc/_vmmctl")]
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The username (asked for when not given).
    #[arg(long, short = 'u')]
    pub username: Option<String>,
    /// Read the password from the first line of stdin instead of asking.
    #[arg(long, conflicts_with = "with_token")]
    pub password_stdin: bool,
    /// Store an API token read from stdin instead of logging in with a password.
    #[arg(long, conflicts_with = "username")]
    pub with_token: bool,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Your VMs (an administrator: everyone's).
    #[command(visible_alias = "ls")]
    List {
        /// Only VMs of this status (running, stopped, ...).
        #[arg(long)]
        status: Option<String>,
    },
    /// One VM.
    Show { vm: String },
    /// Create a VM; the answer comes once it runs.
    #[command(after_help = "\
Examples:
  vmmctl vm create web-1 --cpu 1 --memory 512 --disk-gb 5
  vmmctl vm create web-2 --cpu 2 --memory 2048 --image debian-12 --key laptop
  vmmctl vm create web-3 --cpu 1 --memory 1024 --image debian-12 --user-data cloud-config.yaml")]
    Create(CreateVm),
    /// Start a stopped VM.
    Start { vm: String },
    /// Shut a VM down (ACPI, then power-off after the host's timeout).
    Stop { vm: String },
    /// Power a VM off at once.
    ForceStop { vm: String },
    /// Reboot a VM.
    Reboot { vm: String },
    /// Delete a VM, its disk and its snapshots.
    #[command(visible_alias = "rm")]
    Delete { vm: String },
    /// Wait until a VM has a status (default: running).
    #[command(after_help = "\
Examples:
  vmmctl vm wait web-1
  vmmctl vm wait web-1 --status stopped --timeout 5m")]
    Wait {
        vm: String,
        /// The status to wait for.
        #[arg(long, default_value = "running")]
        status: String,
        /// How long to wait (e.g. 30s, 5m).
        #[arg(long, default_value = "2m", value_parser = vmm_shared::duration::seconds)]
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Args)]
pub struct CreateVm {
    pub name: String,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpu: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u64,
    /// Disk size in GB.
    #[arg(long)]
    pub disk_gb: Option<u64>,
    /// The image (name or ID) the disk starts from.
    #[arg(long)]
    pub image: Option<String>,
    /// A stored SSH key (name or ID) to put in the VM; repeat for more (default: all).
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,
    /// A file of cloud-init user data (cloud-config or a script).
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// A VM's snapshots.
    #[command(visible_alias = "ls")]
    List { vm: String },
    /// Take a snapshot (of a running VM: its memory too).
    #[command(
        after_help = "Example:\n  vmmctl snapshot create web-1 before-upgrade --description \"before apt upgrade\""
    )]
    Create {
        vm: String,
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Bring a VM back to a snapshot (running or stopped, as it was then).
    Restore { vm: String, snapshot: String },
    /// Delete a snapshot.
    #[command(visible_alias = "rm")]
    Delete { vm: String, snapshot: String },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// The image catalogue.
    #[command(visible_alias = "ls")]
    List,
    /// Import an image from a URL; the coordinator downloads it (administrators).
    #[command(after_help = "\
Example:
  vmmctl image import debian-12 --os debian --default-user debian \\
      --source-url https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2")]
    Import {
        name: String,
        #[arg(long)]
        source_url: String,
        #[command(flatten)]
        details: ImageDetails,
    },
    /// Upload an image file, with a progress bar (administrators).
    #[command(
        after_help = "Example:\n  vmmctl image upload alpine ./alpine.qcow2 --os alpine --default-user alpine"
    )]
    Upload {
        name: String,
        file: PathBuf,
        #[command(flatten)]
        details: ImageDetails,
    },
    /// Delete an image (administrators).
    #[command(visible_alias = "rm")]
    Delete { image: String },
}

#[derive(Debug, Args)]
pub struct ImageDetails {
    /// The operating system, e.g. debian.
    #[arg(long)]
    pub os: Option<String>,
    /// The image's login user (default: root).
    #[arg(long)]
    pub default_user: Option<String>,
    /// The smallest disk a VM from it may have, in GB.
    #[arg(long)]
    pub min_disk_gb: Option<u64>,
    /// The expected SHA-256 of the file (64 hex digits), checked after the transfer.
    #[arg(long)]
    pub sha256: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Store an SSH public key.
    #[command(after_help = "Example:\n  vmmctl key add laptop ~/.ssh/id_ed25519.pub")]
    Add {
        name: String,
        /// The public key file (`-`: stdin).
        file: PathBuf,
    },
    /// Your keys.
    #[command(visible_alias = "ls")]
    List,
    /// Delete one of your keys.
    #[command(visible_alias = "rm")]
    Remove { key: String },
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Your quota and usage, or a user's (administrators).
    Show {
        #[arg(long)]
        user: Option<String>,
    },
    /// Change a user's limits (administrators); the others stay.
    #[command(after_help = "Example:\n  vmmctl quota set alice --vms 20 --cpu 40 --memory 65536")]
    Set {
        user: String,
        #[arg(long)]
        vms: Option<u64>,
        #[arg(long)]
        cpu: Option<u64>,
        /// MiB.
        #[arg(long)]
        memory: Option<u64>,
        #[arg(long)]
        disk_gb: Option<u64>,
        #[arg(long)]
        snapshots: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Admin,
    User,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Every user with their usage.
    #[command(visible_alias = "ls")]
    List,
    /// Make a user an administrator, or not.
    #[command(after_help = "Example:\n  vmmctl user role alice admin")]
    Role { user: String, role: RoleArg },
    /// Delete a user (who owns no VMs).
    #[command(visible_alias = "rm")]
    Delete { user: String },
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Every host, its capacity and what is placed on it.
    #[command(visible_alias = "ls")]
    List,
    /// Place no new VMs on a host.
    Drain { host: String },
    /// Place VMs on a drained host again.
    Undrain { host: String },
    /// Forget a host (one with no VMs).
    #[command(visible_alias = "rm")]
    Delete { host: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScopeArg {
    /// GET requests only.
    Read,
    /// Everything you may do, but create tokens.
    Write,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; it is shown once.
    #[command(after_help = "\
Examples:
  vmmctl token create ci --scope read --expires-in 30d
  export VMM_TOKEN=$(vmmctl token create deploy --scope write -o json | jq -r .token)")]
    Create {
        name: String,
        #[arg(long, value_enum)]
        scope: ScopeArg,
        /// Lifetime (e.g. 3600, 12h, 30d); without it, until revoked.
        #[arg(long, value_parser = parse_lifetime)]
        expires_in: Option<u64>,
    },
    /// Your API tokens (administrators: a user's, or everyone's).
    #[command(visible_alias = "ls")]
    List {
        #[arg(long, conflicts_with = "all")]
        user: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Revoke an API token (by name, or by ID).
    #[command(visible_alias = "rm")]
    Revoke { token: String },
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    pub vm: String,
    /// Take the console over from the session that holds it.
    #[arg(long)]
    pub force: bool,
}

/// A lifetime in seconds: a bare number of seconds, or a number with s, m, h or d.
pub fn parse_lifetime(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let multiplier = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: write seconds, or a number with s, m, h or d (30d)"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(multiplier))
        .filter(|secs| *secs > 0)
        .ok_or_else(|| format!("{text:?} is not a lifetime: write e.g. 3600, 12h or 30d"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn lifetimes_take_units() {
        assert_eq!(parse_lifetime("3600"), Ok(3600));
        assert_eq!(parse_lifetime("12h"), Ok(43_200));
        assert_eq!(parse_lifetime("30d"), Ok(2_592_000));
        assert!(parse_lifetime("0").is_err());
        assert!(parse_lifetime("1w").is_err());
        assert!(parse_lifetime("").is_err());
    }
}
