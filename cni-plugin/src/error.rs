//! Every way the plugin can fail, each with its CNI error code.
//!
//! Errors carry their context ("add route 10.244.1.5/32 dev pal0a1b: File exists"). They turn
//! into the spec's error JSON in exactly one place, `main`, through [`CniError::code`],
//! [`CniError::msg`] and [`CniError::details`]. Codes 0–99 are the spec's well-known codes
//! (SPEC.md "Error"), 100+ are ours and documented in `README.md`.

use crate::hostport::{ErrorKind as HostPortKind, HostPortError};
use std::io;

pub type Result<T, E = CniError> = std::result::Result<T, E>;

/// Well-known codes from the CNI spec.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    // Plugin-specific codes (100+).
    pub const LINK: u32 = 100;
    pub const IPAM_EXHAUSTED: u32 = 101;
    pub const IPAM_STORE: u32 = 102;
    pub const HOSTPORT: u32 = 103;
    pub const AGENT: u32 = 104;
    pub const NETNS: u32 = 105;
    pub const SYSCTL: u32 = 106;
    pub const DELEGATE: u32 = 107;
    pub const CHECK_FAILED: u32 = 108;
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("incompatible CNI version: {0}")]
    IncompatibleVersion(String),
    #[error("unsupported field {field}: {reason}")]
    UnsupportedField { field: &'static str, reason: String },
    #[error("container unknown: network namespace {path} does not exist")]
    ContainerUnknown { path: String },
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnv { var: &'static str, reason: String },
    #[error("I/O failure: {context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("failed to decode network configuration: {0}")]
    Decode(String),
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    #[error("try again later: {0}")]
    TryAgain(String),
    #[error("plugin not available: {0}")]
    NotAvailable(String),
    /// STATUS: something on the node breaks the pods that already run (code 51). `reasons`
    /// lists every such finding; `details` says what to do about them.
    #[error("plugin not available, existing pods may have limited connectivity: {}", reasons.join("; "))]
    LimitedConnectivity {
        reasons: Vec<String>,
        details: String,
    },
    /// A netlink request failed; its context names the object ("add route 10.244.1.5/32
    /// via 169.254.1.1"), and the kernel's extended-ack text follows when it sent one.
    #[error(transparent)]
    Netlink(#[from] palisade_kernel::Error),
    /// The kernel state is not what ADD can work with (e.g. `CNI_IFNAME` taken by a link that
    /// is not ours).
    #[error("{0}")]
    LinkConflict(String),
    #[error("no free address in range set {set} ({ranges})")]
    IpamExhausted { set: usize, ranges: String },
    #[error("IPAM store {path}: {reason}")]
    IpamStore { path: String, reason: String },
    #[error("hostPort: {context}: {source}")]
    HostPort {
        context: &'static str,
        source: HostPortError,
    },
    #[error("agent: {0}")]
    Agent(String),
    #[error("network namespace {path}: {source}")]
    Netns { path: String, source: io::Error },
    #[error("sysctl {path}: {source}")]
    Sysctl { path: String, source: io::Error },
    #[error("delegated IPAM plugin {plugin}: {reason}")]
    Delegate { plugin: String, reason: String },
    /// The delegated IPAM plugin answered with an error JSON: passed through with its code.
    #[error("delegated IPAM plugin {plugin}: {msg}")]
    DelegateFailed {
        plugin: String,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("CHECK: {} difference(s) from prevResult", diffs.len())]
    CheckFailed { diffs: Vec<String> },
}

/// Work that could not run inside a network namespace (opening or entering it failed).
impl From<palisade_kernel::NetnsError> for CniError {
    fn from(e: palisade_kernel::NetnsError) -> CniError {
        use palisade_kernel::NetnsError::*;
        let (path, source) = match e {
            Open { path, source } | Enter { path, source } => (path, source),
            Panicked { path } => (path, io::Error::other("the thread inside it panicked")),
        };
        CniError::Netns { path, source }
    }
}

impl CniError {
    /// The CNI error code of this error.
    pub fn code(&self) -> u32 {
        use CniError::*;
        match self {
            IncompatibleVersion(_) => code::INCOMPATIBLE_VERSION,
            UnsupportedField { .. } => code::UNSUPPORTED_FIELD,
            ContainerUnknown { .. } => code::CONTAINER_UNKNOWN,
            InvalidEnv { .. } => code::INVALID_ENV,
            Io { .. } => code::IO_FAILURE,
            Decode(_) => code::DECODE,
            InvalidConfig(_) => code::INVALID_CONFIG,
            TryAgain(_) => code::TRY_AGAIN,
            NotAvailable(_) => code::NOT_AVAILABLE,
            LimitedConnectivity { .. } => code::LIMITED_CONNECTIVITY,
            Netlink(_) | LinkConflict(_) => code::LINK,
            IpamExhausted { .. } => code::IPAM_EXHAUSTED,
            IpamStore { .. } => code::IPAM_STORE,
            // A malformed or self-colliding portMappings is the runtime's configuration
            // being wrong (7); a lock held too long, try again (11); unreadable or
            // unwritable records, the spec's I/O failure (5); a port another pod holds, or
            // nftables refusing, is ours (103).
            HostPort { source, .. } => match source.kind {
                HostPortKind::Invalid => code::INVALID_CONFIG,
                HostPortKind::Busy => code::TRY_AGAIN,
                HostPortKind::Store => code::IO_FAILURE,
                HostPortKind::InUse | HostPortKind::Nftables => code::HOSTPORT,
            },
            Agent(_) => code::AGENT,
            Netns { .. } => code::NETNS,
            Sysctl { .. } => code::SYSCTL,
            Delegate { .. } => code::DELEGATE,
            DelegateFailed { code, .. } => *code,
            CheckFailed { .. } => code::CHECK_FAILED,
        }
    }

    /// The short message (`msg`): the error with its context.
    pub fn msg(&self) -> String {
        self.to_string()
    }

    /// The long message (`details`): what a person needs beyond `msg` to act on it.
    pub fn details(&self) -> String {
        use CniError::*;
        match self {
            CheckFailed { diffs } => diffs.join("; "),
            DelegateFailed { details, .. } => details.clone(),
            HostPort { source, .. } => source.details.clone(),
            LimitedConnectivity { details, .. } => details.clone(),
            Netlink(palisade_kernel::Error { source, .. })
            | Io { source, .. }
            | Netns { source, .. }
            | Sysctl { source, .. } => match source.raw_os_error() {
                Some(errno) => format!("errno {errno}"),
                None => String::new(),
            },
            _ => String::new(),
        }
    }

    /// The spec's error object for the given CNI version.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.msg(),
            "details": self.details(),
        })
    }

    pub fn store(path: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        CniError::IpamStore {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn config(reason: impl Into<String>) -> Self {
        CniError::InvalidConfig(reason.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_shape_and_code() {
        let e = CniError::InvalidEnv {
            var: "CNI_IFNAME",
            reason: "empty".into(),
        };
        let j = e.to_json("1.0.0");
        assert_eq!(j["cniVersion"], "1.0.0");
        assert_eq!(j["code"], 4);
        assert_eq!(j["msg"], "invalid environment variable CNI_IFNAME: empty");
        assert!(j["details"].is_string());
    }

    #[test]
    fn codes_follow_the_spec_and_the_readme() {
        let cases: Vec<(CniError, u32)> = vec![
            (CniError::IncompatibleVersion("0.2.0".into()), 1),
            (
                CniError::UnsupportedField {
                    field: "ipMasq",
                    reason: "x".into(),
                },
                2,
            ),
            (CniError::ContainerUnknown { path: "/x".into() }, 3),
            (CniError::Decode("x".into()), 6),
            (CniError::config("x"), 7),
            (CniError::TryAgain("x".into()), 11),
            (CniError::NotAvailable("x".into()), 50),
            (
                CniError::LimitedConnectivity {
                    reasons: vec!["x".into()],
                    details: String::new(),
                },
                51,
            ),
            (
                CniError::Netlink(palisade_kernel::Error::new(
                    "add link",
                    io::Error::from_raw_os_error(libc::EEXIST),
                )),
                100,
            ),
            (
                CniError::IpamExhausted {
                    set: 0,
                    ranges: "10.0.0.0/30".into(),
                },
                101,
            ),
            (CniError::store("/x", "corrupt"), 102),
            (CniError::Agent("x".into()), 104),
            (
                CniError::CheckFailed {
                    diffs: vec!["a".into(), "b".into()],
                },
                108,
            ),
            (
                CniError::DelegateFailed {
                    plugin: "host-local".into(),
                    code: 11,
                    msg: "busy".into(),
                    details: String::new(),
                },
                11,
            ),
        ];
        for (e, c) in cases {
            assert_eq!(e.code(), c, "{e}");
        }
    }

    #[test]
    fn netlink_errors_carry_context_and_kernel_message() {
        let e = CniError::Netlink(palisade_kernel::Error {
            context: "add route 10.244.1.5/32 dev pal0".into(),
            source: io::Error::from_raw_os_error(libc::EEXIST),
            kernel_msg: Some("Nexthop device is not up".into()),
        });
        let m = e.msg();
        assert!(m.starts_with("add route 10.244.1.5/32 dev pal0: "), "{m}");
        assert!(m.contains("Nexthop device is not up"), "{m}");
        assert_eq!(e.details(), format!("errno {}", libc::EEXIST));
    }

    #[test]
    fn limited_connectivity_lists_every_reason_and_says_what_to_do() {
        let e = CniError::LimitedConnectivity {
            reasons: vec!["IPv4 forwarding is off".into(), "table missing".into()],
            details: "turn it back on".into(),
        };
        let j = e.to_json("1.1.0");
        assert_eq!(j["code"], 51);
        assert_eq!(
            j["msg"],
            "plugin not available, existing pods may have limited connectivity: \
             IPv4 forwarding is off; table missing"
        );
        assert_eq!(j["details"], "turn it back on");
    }

    #[test]
    fn check_failures_list_every_difference_in_details() {
        let e = CniError::CheckFailed {
            diffs: vec!["no route".into(), "wrong mac".into()],
        };
        assert_eq!(e.details(), "no route; wrong mac");
        assert_eq!(e.msg(), "CHECK: 2 difference(s) from prevResult");
    }
}
