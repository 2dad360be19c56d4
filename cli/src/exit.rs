//! Exit codes, for scripts:
//!
//! | Code | Meaning |
//! | --- | --- |
//! | 0 | done |
//! | 1 | the API refused or failed (any other 4xx/5xx), or something else went wrong |
//! | 2 | usage: an unknown command or flag, a bad value (clap's own code) |
//! | 3 | not found (404, or no VM/image/key/... of that name) |
//! | 4 | not logged in, token invalid or expired (401), or not allowed (403) |
//! | 5 | conflict (409): the name is taken, the action is not possible in the VM's state |
//! | 6 | timed out: `vm wait` gave up, or the coordinator answered 504/408 |
//! | 7 | the coordinator cannot be reached |

use std::fmt::Display;

/// Why a command failed: the message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub const GENERAL: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const AUTH: u8 = 4;
    pub const CONFLICT: u8 = 5;
    pub const TIMEOUT: u8 = 6;
    pub const UNREACHABLE: u8 = 7;

    pub fn new(code: u8, message: impl Display) -> Self {
        Self {
            code,
            message: message.to_string(),
        }
    }

    pub fn general(message: impl Display) -> Self {
        Self::new(Self::GENERAL, message)
    }

    pub fn usage(message: impl Display) -> Self {
        Self::new(Self::USAGE, message)
    }

    pub fn not_found(message: impl Display) -> Self {
        Self::new(Self::NOT_FOUND, message)
    }

    /// The exit code of an API answer with this HTTP status.
    pub fn code_for_status(status: u16) -> u8 {
        match status {
            404 => Self::NOT_FOUND,
            401 | 403 => Self::AUTH,
            409 => Self::CONFLICT,
            408 | 504 => Self::TIMEOUT,
            _ => Self::GENERAL,
        }
    }
}

impl From<Failure> for std::process::ExitCode {
    fn from(failure: Failure) -> Self {
        std::process::ExitCode::from(failure.code)
    }
}

impl From<std::io::Error> for Failure {
    fn from(err: std::io::Error) -> Self {
        Failure::general(err)
    }
}

impl From<serde_json::Error> for Failure {
    fn from(err: serde_json::Error) -> Self {
        Failure::general(err)
    }
}

pub type Result<T> = std::result::Result<T, Failure>;
