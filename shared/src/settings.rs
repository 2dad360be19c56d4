//! Settings from three places under one definition: a binary's clap `Parser` struct is the
//! only list of its settings, and a TOML file given with `--config <path>` (or the
//! `CONFIG_FILE` environment variable) fills in under the flags and environment variables.
//!
//! Precedence, highest first: flag, environment variable, config file, built-in default.
//! The loader gets that from clap itself: every key of the file is checked against the
//! command's arguments (keys are the struct's field names, i.e. the long flags with `_` for
//! `-`), every value's TOML type against what the argument expects, the value against the
//! argument's own parser, and then the value is installed as the argument's default before
//! the real parse. A file with an unknown key, a value of the wrong type or an unusable value
//! is refused with an error naming the setting, the file and why.
//!
//! Secrets can also come from files (`AGENT_TOKEN_FILE` and so on): [`resolve_secret`].
//!
//! This module reads the config file and secret files once, at start; nothing else here does
//! I/O.

use std::any::TypeId;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::num::{NonZeroU8, NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command, Parser};

/// The id of the argument naming the config file: a binary's settings struct has a field
/// `config: Option<PathBuf>` (`--config`, `CONFIG_FILE`).
pub const CONFIG_ARG: &str = "config";

/// For a binary's `--help` (`after_help`): where settings come from.
pub const PRECEDENCE_HELP: &str = "Every setting is a flag, an environment variable and a key of the \
TOML file given with --config (CONFIG_FILE): the key is the flag's name with '_' for '-', e.g. \
log_format = \"json\". Precedence: flag, then environment variable, then config file, \
then the default. Secrets can also be read from files (the *_FILE settings).";

/// Arguments that never come from a config file, whatever the binary.
const NEVER_IN_FILE: &[&str] = &[CONFIG_ARG, "help", "version"];

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A bad flag or environment variable, or `--help`/`--version`: clap's own message,
    /// printed (and the process ended) with [`clap::Error::exit`].
    #[error(transparent)]
    CommandLine(#[from] clap::Error),
    /// The config file is unreadable or wrong.
    #[error(transparent)]
    File(#[from] ConfigFileError),
}

/// What is wrong with a config file. Each names the file and, where there is one, the
/// setting (by its key, environment variable and flag).
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the config file {path} (--config / CONFIG_FILE)")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the config file {path} is not valid TOML:\n{message}")]
    Syntax { path: PathBuf, message: String },
    #[error("the config file {path} has an unknown setting `{key}`{hint}")]
    UnknownSetting {
        path: PathBuf,
        key: String,
        hint: String,
    },
    #[error("the config file {path} sets `{key}`, which is only a command-line option")]
    CommandLineOnly { path: PathBuf, key: String },
    #[error("the config file {path}: setting `{key}` ({names}) must be {expected}, not {found}")]
    WrongType {
        path: PathBuf,
        key: String,
        names: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("the config file {path}: setting `{key}` ({names}) is invalid: {reason}")]
    InvalidValue {
        path: PathBuf,
        key: String,
        names: String,
        reason: String,
    },
}

impl ConfigFileError {
    /// The key of the setting that is wrong, when the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Read { .. } | Self::Syntax { .. } => None,
            Self::UnknownSetting { key, .. }
            | Self::CommandLineOnly { key, .. }
            | Self::WrongType { key, .. }
            | Self::InvalidValue { key, .. } => Some(key),
        }
    }
}

/// An example config file with every commented-out setting (`#key = value`) switched on:
/// what a test loads to prove each example value is valid.
pub fn example_with_every_setting(example: &str) -> String {
    example
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What an example config file (already passed through [`example_with_every_setting`]) and
/// `--help` fail to document of `command`'s settings: a setting the file does not show, one
/// without an environment variable, or one whose help names no default. Empty when all is
/// documented.
pub fn undocumented_settings(
    command: &Command,
    example: &str,
    command_line_only: &[&str],
) -> Vec<String> {
    let mut problems = Vec::new();
    for arg in command.get_arguments() {
        let key = arg.get_id().as_str();
        if [CONFIG_ARG, "help", "version"].contains(&key) || command_line_only.contains(&key) {
            continue;
        }
        if !example
            .lines()
            .any(|line| line.starts_with(&format!("{key} = ")))
        {
            problems.push(format!("the example does not show `{key}`"));
        }
        if arg.get_env().is_none() {
            problems.push(format!("`{key}` has no environment variable"));
        }
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        let shows_default = !arg.get_default_values().is_empty()
            || help.contains("[default: ")
            || help.contains("Required");
        if !shows_default {
            problems.push(format!("--help shows no default for `{key}`: {help}"));
        }
    }
    problems
}

/// Parses the process's arguments, environment and config file into `T`. On an error,
/// prints it and ends the process: clap's errors (and `--help`) the way clap does, a config
/// file's error as `<program>: <error>` with exit code 2.
///
/// `command_line_only` names arguments that a config file may not set (actions such as
/// `check_config`), besides `config`, `help` and `version`.
pub fn parse_or_exit<T: Parser>(program: &str, command_line_only: &[&str]) -> T {
    match parse_from(std::env::args_os(), command_line_only) {
        Ok(settings) => settings,
        Err(LoadError::CommandLine(error)) => error.exit(),
        Err(LoadError::File(error)) => {
            eprintln!("{program}: {}", error_chain(&error));
            std::process::exit(2)
        }
    }
}

/// Parses `args` (the first is the program name), the environment and the config file the
/// arguments or the environment name into `T`.
pub fn parse_from<T, I, S>(args: I, command_line_only: &[&str]) -> Result<T, LoadError>
where
    T: Parser,
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut command = T::command();
    if let Some(path) = config_path(&command, &args) {
        let text = fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
            path: path.clone(),
            source,
        })?;
        command = apply_file(command, &path, &text, command_line_only)?;
    }
    let mut matches = command.try_get_matches_from_mut(args)?;
    T::from_arg_matches_mut(&mut matches)
        .map_err(|error| LoadError::CommandLine(error.format(&mut command)))
}

/// The config file named by `--config` or `CONFIG_FILE`, found by a lenient first parse
/// (a bad flag is reported by the real parse afterwards).
fn config_path(command: &Command, args: &[OsString]) -> Option<PathBuf> {
    command
        .get_arguments()
        .any(|arg| arg.get_id() == CONFIG_ARG)
        .then_some(())?;
    let matches = command
        .clone()
        .ignore_errors(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .try_get_matches_from(args)
        .ok()?;
    matches.get_one::<PathBuf>(CONFIG_ARG).cloned()
}

/// Checks the file's settings against `command` and installs them as the arguments'
/// defaults.
fn apply_file(
    mut command: Command,
    path: &Path,
    text: &str,
    command_line_only: &[&str],
) -> Result<Command, ConfigFileError> {
    let table: toml::Table =
        text.parse()
            .map_err(|error: toml::de::Error| ConfigFileError::Syntax {
                path: path.to_owned(),
                message: error.to_string().trim_end().to_owned(),
            })?;
    for (key, value) in &table {
        if NEVER_IN_FILE.contains(&key.as_str()) || command_line_only.contains(&key.as_str()) {
            return Err(ConfigFileError::CommandLineOnly {
                path: path.to_owned(),
                key: key.clone(),
            });
        }
        let Some(arg) = command
            .get_arguments()
            .find(|arg| arg.get_id() == key.as_str())
        else {
            return Err(ConfigFileError::UnknownSetting {
                path: path.to_owned(),
                key: key.clone(),
                hint: unknown_key_hint(&command, key, command_line_only),
            });
        };
        let texts = setting_texts(arg, key, value, path)?;
        check_with_parser(&command, arg, key, &texts, path)?;
        let hide = arg.is_hide_env_values_set();
        let list = expects_list(arg);
        command = command.mut_arg(key, move |arg| {
            let arg = if list {
                arg.default_values(texts)
            } else {
                arg.default_value(texts.into_iter().next().unwrap_or_default())
            };
            // `--help` shows defaults: never a secret that came from the file.
            if hide {
                arg.hide_default_value(true)
            } else {
                arg
            }
        });
    }
    Ok(command)
}

/// The TOML kind a setting's value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Integer,
    Float,
    Boolean,
    /// A [`crate::duration`]: an integer (in the setting's unit) or a string with a unit.
    Duration,
}

impl Kind {
    fn of(arg: &Arg) -> Self {
        if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            return Self::Boolean;
        }
        let parsed = arg.get_value_parser().type_id();
        let is = |id: TypeId| parsed == id;
        let integers = [
            TypeId::of::<u8>(),
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
            TypeId::of::<i8>(),
            TypeId::of::<i16>(),
            TypeId::of::<i32>(),
            TypeId::of::<i64>(),
            TypeId::of::<isize>(),
            TypeId::of::<NonZeroU8>(),
            TypeId::of::<NonZeroU16>(),
            TypeId::of::<NonZeroU32>(),
            TypeId::of::<NonZeroU64>(),
            TypeId::of::<NonZeroUsize>(),
        ];
        if is(TypeId::of::<std::time::Duration>()) {
            Self::Duration
        } else if integers.into_iter().any(is) {
            Self::Integer
        } else if is(TypeId::of::<f64>()) || is(TypeId::of::<f32>()) {
            Self::Float
        } else if is(TypeId::of::<bool>()) {
            Self::Boolean
        } else {
            Self::String
        }
    }

    fn expected(self, list: bool) -> &'static str {
        match (self, list) {
            (Self::String, false) => "a string",
            (Self::Integer, false) => "an integer",
            (Self::Float, false) => "a number",
            (Self::Boolean, false) => "true or false",
            (Self::Duration, false) => "a duration (an integer, or a string such as \"10s\")",
            (Self::String, true) => "an array of strings",
            (Self::Integer, true) => "an array of integers",
            (Self::Float, true) => "an array of numbers",
            (Self::Boolean, true) => "an array of booleans",
            (Self::Duration, true) => "an array of durations",
        }
    }
}

fn expects_list(arg: &Arg) -> bool {
    arg.get_value_delimiter().is_some()
        || matches!(arg.get_action(), ArgAction::Append)
        || arg
            .get_num_args()
            .is_some_and(|range| range.max_values() > 1)
}

fn found(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// The value as the text(s) clap would get on a command line, if its TOML type fits.
fn setting_texts(
    arg: &Arg,
    key: &str,
    value: &toml::Value,
    path: &Path,
) -> Result<Vec<String>, ConfigFileError> {
    let kind = Kind::of(arg);
    let list = expects_list(arg);
    let wrong_type = |found_kind: &'static str| ConfigFileError::WrongType {
        path: path.to_owned(),
        key: key.to_owned(),
        names: names(arg),
        expected: kind.expected(list),
        found: found_kind,
    };
    let scalar = |value: &toml::Value| -> Option<String> {
        match (kind, value) {
            (Kind::String, toml::Value::String(text)) => Some(text.clone()),
            (Kind::Integer | Kind::Float, toml::Value::Integer(number)) => Some(number.to_string()),
            (Kind::Float, toml::Value::Float(number)) => Some(number.to_string()),
            (Kind::Boolean, toml::Value::Boolean(flag)) => Some(flag.to_string()),
            (Kind::Duration, toml::Value::Integer(number)) => Some(number.to_string()),
            (Kind::Duration, toml::Value::String(text)) => Some(text.clone()),
            _ => None,
        }
    };
    match (list, value) {
        (true, toml::Value::Array(items)) => items
            .iter()
            .map(|item| scalar(item).ok_or_else(|| wrong_type(found(item))))
            .collect(),
        (true, other) => Err(wrong_type(found(other))),
        (false, other) => scalar(other)
            .map(|text| vec![text])
            .ok_or_else(|| wrong_type(found(other))),
    }
}

/// Runs the argument's own value parser on the file's value(s), so that a bad value is
/// reported as the file's, not as if it came from the command line.
fn check_with_parser(
    command: &Command,
    arg: &Arg,
    key: &str,
    texts: &[String],
    path: &Path,
) -> Result<(), ConfigFileError> {
    if !arg.get_action().takes_values() {
        return Ok(());
    }
    let Some(long) = arg.get_long() else {
        return Ok(());
    };
    let probe_arg = arg
        .clone()
        .env(None::<&str>)
        .required(false)
        .action(ArgAction::Append);
    let probe = Command::new(command.get_name().to_owned())
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(probe_arg);
    let mut argv = vec![command.get_name().to_owned()];
    for text in texts {
        argv.push(format!("--{long}={text}"));
    }
    match probe.try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(error) => Err(ConfigFileError::InvalidValue {
            path: path.to_owned(),
            key: key.to_owned(),
            names: names(arg),
            reason: if arg.is_hide_env_values_set() {
                // The value is a secret: never repeat it.
                "the value cannot be used".to_owned()
            } else {
                clap_reason(&error)
            },
        }),
    }
}

/// clap's message without its `error:` prefix and trailing hint, on one line.
fn clap_reason(error: &clap::Error) -> String {
    error
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_owned()
}

/// `HTTP_ADDR, --http-addr`: how the setting is named elsewhere.
fn names(arg: &Arg) -> String {
    let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
    let long = arg.get_long().map(|long| format!("--{long}"));
    [env, long]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_key_hint(command: &Command, key: &str, command_line_only: &[&str]) -> String {
    let settings: Vec<&Arg> = command
        .get_arguments()
        .filter(|arg| {
            let id = arg.get_id().as_str();
            !NEVER_IN_FILE.contains(&id) && !command_line_only.contains(&id)
        })
        .collect();
    let normalized = key.to_ascii_lowercase().replace('-', "_");
    // `http-addr` or `HTTP_ADDR`: the flag's or the environment variable's spelling.
    if let Some(arg) = settings.iter().find(|arg| {
        arg.get_id().as_str() == normalized
            || arg
                .get_env()
                .is_some_and(|env| env.eq_ignore_ascii_case(key))
    }) {
        return format!(
            " (keys are written like `{}`: lower case, `_` between words)",
            arg.get_id()
        );
    }
    if let Some(arg) = settings
        .iter()
        .filter(|arg| strsim::levenshtein(arg.get_id().as_str(), &normalized) <= 2)
        .min_by_key(|arg| strsim::levenshtein(arg.get_id().as_str(), &normalized))
    {
        return format!(" (did you mean `{}`?)", arg.get_id());
    }
    format!(
        "; known settings: {}",
        settings
            .iter()
            .map(|arg| arg.get_id().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{value_setting} and {file_setting} are both set: set only one of them")]
    BothSet {
        value_setting: &'static str,
        file_setting: &'static str,
    },
    #[error("{setting}: cannot read {path}")]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{setting}: {path} is empty")]
    Empty {
        setting: &'static str,
        path: PathBuf,
    },
}

impl SecretError {
    /// The setting to fix.
    pub fn setting(&self) -> &'static str {
        match self {
            Self::BothSet { file_setting, .. } => file_setting,
            Self::Unreadable { setting, .. } | Self::Empty { setting, .. } => setting,
        }
    }
}

/// A secret given either directly (`value`, from a flag, the environment or the config file;
/// its setting is `value_setting`) or as the path of a file holding it (`file`, setting
/// `file_setting`). The file's trailing line break is not part of the secret. Both given is
/// an error: which one was meant cannot be guessed.
pub fn resolve_secret(
    value_setting: &'static str,
    value: Option<String>,
    file_setting: &'static str,
    file: Option<&Path>,
) -> Result<Option<String>, SecretError> {
    let Some(path) = file else {
        return Ok(value);
    };
    if value.is_some() {
        return Err(SecretError::BothSet {
            value_setting,
            file_setting,
        });
    }
    let text = fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
        setting: file_setting,
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(SecretError::Empty {
            setting: file_setting,
            path: path.to_owned(),
        });
    }
    Ok(Some(secret.to_owned()))
}

/// `error: cause: cause's cause`, for messages printed before logging is set up.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use clap::{CommandFactory, ValueEnum};

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
    enum Mode {
        Fast,
        Slow,
    }

    /// A settings struct with one argument of each shape the binaries use.
    #[derive(Debug, Parser)]
    #[command(name = "demo")]
    struct Demo {
        #[arg(long, env = "CONFIG_FILE")]
        config: Option<PathBuf>,
        #[arg(long)]
        check_config: bool,
        #[arg(long, env = "VMM_TEST_DEMO_ADDR", default_value = "127.0.0.1:1")]
        addr: SocketAddr,
        #[arg(long, env = "VMM_TEST_DEMO_COUNT", default_value_t = 3)]
        count: u64,
        #[arg(long, env = "VMM_TEST_DEMO_LIMIT", default_value_t = NonZeroU32::new(5).unwrap())]
        limit: NonZeroU32,
        #[arg(long, env = "VMM_TEST_DEMO_COST", default_value_t = 12,
              value_parser = clap::value_parser!(u32).range(4..=31))]
        cost: u32,
        #[arg(long, env = "VMM_TEST_DEMO_RATIO", default_value_t = 4.0)]
        ratio: f64,
        #[arg(long, env = "VMM_TEST_DEMO_ENABLED", default_value_t = true, action = ArgAction::Set)]
        enabled: bool,
        #[arg(long, env = "VMM_TEST_DEMO_MODE", value_enum, default_value_t = Mode::Fast)]
        mode: Mode,
        #[arg(long, env = "VMM_TEST_DEMO_PROXIES", value_delimiter = ',')]
        proxies: Vec<String>,
        #[arg(long, env = "VMM_TEST_DEMO_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long, env = "VMM_TEST_DEMO_DIR", default_value = "./data")]
        dir: PathBuf,
        /// Reads `PATH`, which is always set: the one way to show "environment beats file"
        /// without changing this process's environment.
        #[arg(long, env = "PATH", default_value = "unset")]
        search_path: String,
        #[arg(long, env = "VMM_TEST_DEMO_WAIT_SECS", default_value = "10s",
              value_parser = crate::duration::seconds)]
        wait_secs: std::time::Duration,
    }

    struct File {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    fn file(text: &str) -> File {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.toml");
        fs::write(&path, text).unwrap();
        File { _dir: dir, path }
    }

    fn load(text: &str, extra: &[&str]) -> Result<Demo, LoadError> {
        let config = file(text);
        let mut args = vec![
            "demo".to_owned(),
            "--config".to_owned(),
            config.path.display().to_string(),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        parse_from(args, &["check_config"])
    }

    fn file_error(text: &str) -> ConfigFileError {
        match load(text, &[]) {
            Err(LoadError::File(error)) => error,
            other => panic!("expected a config file error, got {other:?}"),
        }
    }

    #[test]
    fn without_a_file_the_defaults_apply() {
        let demo: Demo = parse_from(["demo"], &[]).unwrap();
        assert_eq!(demo.count, 3);
        assert_eq!(demo.mode, Mode::Fast);
        assert!(demo.proxies.is_empty());
    }

    #[test]
    fn every_kind_of_value_is_taken_from_the_file() {
        let demo = load(
            r#"
            addr = "127.0.0.1:9000"
            count = 7
            limit = 9
            cost = 4
            ratio = 2       # an integer where a number goes is fine
            enabled = false
            mode = "slow"
            proxies = ["10.0.0.0/8", "192.168.1.1"]
            token = "from-the-file"
            dir = "/var/lib/demo"
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(demo.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(demo.count, 7);
        assert_eq!(demo.limit.get(), 9);
        assert_eq!(demo.cost, 4);
        assert_eq!(demo.ratio, 2.0);
        assert!(!demo.enabled);
        assert_eq!(demo.mode, Mode::Slow);
        assert_eq!(demo.proxies, ["10.0.0.0/8", "192.168.1.1"]);
        assert_eq!(demo.token.as_deref(), Some("from-the-file"));
        assert_eq!(demo.dir, Path::new("/var/lib/demo"));
        let demo = load("ratio = 0.5", &[]).unwrap();
        assert_eq!(demo.ratio, 0.5);
    }

    #[test]
    fn durations_come_from_the_file_as_numbers_or_with_units() {
        use std::time::Duration;
        assert_eq!(load("", &[]).unwrap().wait_secs, Duration::from_secs(10));
        assert_eq!(
            load("wait_secs = 5", &[]).unwrap().wait_secs,
            Duration::from_secs(5)
        );
        assert_eq!(
            load("wait_secs = \"500ms\"", &[]).unwrap().wait_secs,
            Duration::from_millis(500)
        );
        assert_eq!(
            load("wait_secs = \"2m\"", &["--wait-secs", "3s"])
                .unwrap()
                .wait_secs,
            Duration::from_secs(3)
        );
        let text = file_error("wait_secs = true").to_string();
        assert!(text.contains("must be a duration"), "{text}");
        let text = file_error("wait_secs = \"soon\"").to_string();
        assert!(
            text.contains("`wait_secs`") && text.contains("soon"),
            "{text}"
        );
    }

    #[test]
    fn a_flag_beats_the_file_and_the_environment_beats_the_file() {
        let demo = load("count = 7\nproxies = [\"a\"]", &["--count", "8"]).unwrap();
        assert_eq!(demo.count, 8);
        assert_eq!(demo.proxies, ["a"]);
        let demo = load("count = 7", &["--count=9", "--proxies", "b,c"]).unwrap();
        assert_eq!((demo.count, demo.proxies.len()), (9, 2));
        let demo = load("search_path = \"from-the-file\"", &[]).unwrap();
        assert_eq!(demo.search_path, std::env::var("PATH").unwrap());
    }

    #[test]
    fn the_file_can_be_named_with_an_equals_sign() {
        let config = file("count = 11");
        let demo: Demo = parse_from(
            [
                "demo".to_owned(),
                format!("--config={}", config.path.display()),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(demo.count, 11);
    }

    #[test]
    fn a_string_where_a_number_goes_is_refused_and_named() {
        let error = file_error("count = \"7\"");
        assert_eq!(error.key(), Some("count"));
        let text = error.to_string();
        assert!(text.contains("`count`"), "{text}");
        assert!(text.contains("VMM_TEST_DEMO_COUNT"), "{text}");
        assert!(text.contains("must be an integer, not a string"), "{text}");
        assert!(
            file_error("enabled = \"yes\"")
                .to_string()
                .contains("true or false")
        );
        assert!(
            file_error("proxies = \"a,b\"")
                .to_string()
                .contains("an array of strings")
        );
        assert!(
            file_error("proxies = [1]")
                .to_string()
                .contains("an array of strings, not an integer")
        );
        assert!(
            file_error("ratio = true")
                .to_string()
                .contains("a number, not a boolean")
        );
    }

    #[test]
    fn an_unusable_value_is_refused_as_the_files() {
        let text = file_error("mode = \"medium\"").to_string();
        assert!(text.contains("`mode`"), "{text}");
        assert!(text.contains("medium"), "{text}");
        assert!(text.contains("fast"), "names the possible values: {text}");
        let text = file_error("cost = 50").to_string();
        assert!(text.contains("`cost`") && text.contains("4..=31"), "{text}");
        let text = file_error("count = -1").to_string();
        assert!(text.contains("`count`"), "{text}");
        let text = file_error("addr = \"nowhere\"").to_string();
        assert!(
            text.contains("`addr`") && text.contains("nowhere"),
            "{text}"
        );
        let text = file_error("limit = 0").to_string();
        assert!(text.contains("`limit`"), "{text}");
    }

    #[test]
    fn unknown_keys_are_refused_with_a_hint() {
        let error = file_error("cuont = 1");
        assert_eq!(error.key(), Some("cuont"));
        assert!(
            error.to_string().contains("did you mean `count`"),
            "{error}"
        );
        let error = file_error("search-path = \"x\"");
        assert!(error.to_string().contains("`search_path`"), "{error}");
        let error = file_error("VMM_TEST_DEMO_COUNT = 1");
        assert!(error.to_string().contains("`count`"), "{error}");
        let error = file_error("nothing_like_it = 1");
        assert!(
            error.to_string().contains("known settings: addr, count"),
            "{error}"
        );
        let error = file_error("[section]\ncount = 1");
        assert!(error.to_string().contains("`section`"), "{error}");
    }

    #[test]
    fn command_line_options_cannot_come_from_the_file() {
        for text in [
            "config = \"other.toml\"",
            "check_config = true",
            "help = true",
        ] {
            let error = file_error(text);
            assert!(
                matches!(error, ConfigFileError::CommandLineOnly { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn a_secret_is_never_repeated_or_shown_as_a_default() {
        let text = file_error("token = 5").to_string();
        assert!(text.contains("`token`") && text.contains("not an integer"));
        let config = file("token = \"very-secret-value\"");
        let mut command = apply_file(
            Demo::command(),
            &config.path,
            "token = \"very-secret-value\"",
            &[],
        )
        .unwrap();
        let help = command.render_long_help().to_string();
        assert!(!help.contains("very-secret-value"), "{help}");
        // Not a secret: the file's value shows as the default.
        let mut command = apply_file(Demo::command(), &config.path, "count = 42", &[]).unwrap();
        assert!(
            command
                .render_long_help()
                .to_string()
                .contains("[default: 42]")
        );
    }

    #[test]
    fn syntax_errors_and_missing_files_name_the_file() {
        let error = file_error("count = ");
        assert!(matches!(error, ConfigFileError::Syntax { .. }), "{error}");
        assert!(error.to_string().contains("demo.toml"), "{error}");
        let missing = parse_from::<Demo, _, _>(["demo", "--config", "/nonexistent/demo.toml"], &[]);
        match missing {
            Err(LoadError::File(error @ ConfigFileError::Read { .. })) => {
                assert!(error.to_string().contains("/nonexistent/demo.toml"));
            }
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn bad_flags_are_still_clap_errors() {
        let result = load("count = 1", &["--count", "many"]);
        assert!(
            matches!(result, Err(LoadError::CommandLine(_))),
            "{result:?}"
        );
        let result = load("count = 1", &["--help"]);
        match result {
            Err(LoadError::CommandLine(error)) => {
                assert_eq!(error.kind(), clap::error::ErrorKind::DisplayHelp)
            }
            other => panic!("expected help, got {other:?}"),
        }
    }

    #[test]
    fn secrets_come_from_a_value_or_a_file_but_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "s3cret\n").unwrap();
        let resolve = |value: Option<&str>, file: Option<&Path>| {
            resolve_secret("TOKEN", value.map(str::to_owned), "TOKEN_FILE", file)
        };
        assert_eq!(
            resolve(None, Some(&path)).unwrap().as_deref(),
            Some("s3cret")
        );
        assert_eq!(resolve(Some("v"), None).unwrap().as_deref(), Some("v"));
        assert_eq!(resolve(None, None).unwrap(), None);

        let both = resolve(Some("v"), Some(&path)).unwrap_err();
        assert!(both.to_string().contains("TOKEN and TOKEN_FILE"), "{both}");

        let missing = dir.path().join("absent");
        let error = resolve(None, Some(&missing)).unwrap_err();
        assert_eq!(error.setting(), "TOKEN_FILE");
        let text = error_chain(&error);
        assert!(
            text.contains("TOKEN_FILE") && text.contains("absent"),
            "{text}"
        );
        assert!(text.contains("No such file"), "{text}");

        fs::write(&path, "\r\n").unwrap();
        let error = resolve(None, Some(&path)).unwrap_err();
        assert!(matches!(error, SecretError::Empty { .. }), "{error}");
    }
}
