//! The port mappings a runtime asks for (`runtimeConfig.portMappings`, capability
//! `portMappings`), parsed and checked. A malformed entry is the runtime's configuration
//! being wrong: [`super::ErrorKind::Invalid`], CNI code 7.

use super::HostPortError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// IANA protocol number; used in nft input and read back with `nft -p`, so nothing
    /// depends on `/etc/protocols` being present on the node.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    pub(super) fn parse(s: &str) -> Option<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Proto,
    pub host_ip: Option<IpAddr>,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}/{} -> {}",
            self.host_port, self.protocol, self.container_port
        )
    }
}

/// Parse `runtimeConfig.portMappings` (libcni's lower-case keys or CRI's capitalised ones).
///
/// `null` or a missing array means no mappings. Entries with `hostPort` 0 are skipped: the
/// runtime has nothing to publish on the host for them (containerd filters them the same way).
/// Identical entries are merged; two entries that claim the same host port, protocol and host
/// IP for different container ports are an error.
pub fn parse_port_mappings(v: &Value) -> Result<Vec<PortMapping>, HostPortError> {
    let bad =
        |details: String| HostPortError::invalid("invalid runtimeConfig.portMappings", details);
    let entries = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        other => return Err(bad(format!("expected an array, got {other}"))),
    };
    let mut out: Vec<PortMapping> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let Value::Object(obj) = e else {
            return Err(bad(format!("entry {i}: expected an object, got {e}")));
        };
        // libcni passes the capability args verbatim; containerd's CRI marshals its Go struct
        // with capitalised field names. Accept both, first match wins.
        let field = |lower: &str, upper: &str| obj.get(lower).or_else(|| obj.get(upper));
        let port = |lower: &str, upper: &str| -> Result<Option<u16>, HostPortError> {
            match field(lower, upper) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => n
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| bad(format!("entry {i}: {lower} {n} is not a port number"))),
                Some(Value::String(s)) => s
                    .trim()
                    .parse::<u16>()
                    .map(Some)
                    .map_err(|_| bad(format!("entry {i}: {lower} {s:?} is not a port number"))),
                Some(other) => Err(bad(format!(
                    "entry {i}: {lower} {other} is not a port number"
                ))),
            }
        };
        let host_port = port("hostPort", "HostPort")?.unwrap_or(0);
        if host_port == 0 {
            continue;
        }
        let container_port = match port("containerPort", "ContainerPort")? {
            Some(p) if p != 0 => p,
            _ => return Err(bad(format!("entry {i}: containerPort missing or 0"))),
        };
        let protocol = match field("protocol", "Protocol") {
            None | Some(Value::Null) => Proto::Tcp,
            Some(Value::String(s)) if s.is_empty() => Proto::Tcp,
            Some(Value::String(s)) => Proto::parse(s)
                .ok_or_else(|| bad(format!("entry {i}: protocol {s:?} is not tcp, udp or sctp")))?,
            Some(other) => return Err(bad(format!("entry {i}: protocol {other} is not a string"))),
        };
        let host_ip = match field("hostIP", "HostIP").or_else(|| obj.get("hostIp")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(
                s.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| bad(format!("entry {i}: hostIP {s:?} is not an IP address")))?,
            ),
            Some(other) => return Err(bad(format!("entry {i}: hostIP {other} is not a string"))),
        };
        let m = PortMapping {
            host_port,
            container_port,
            protocol,
            host_ip,
        };
        if let Some(prev) = out.iter().find(|p| {
            p.host_port == m.host_port && p.protocol == m.protocol && p.host_ip == m.host_ip
        }) {
            if prev.container_port != m.container_port {
                return Err(bad(format!("host port {prev} and {m} collide")));
            }
            continue;
        }
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::json;

    /// Test shorthands, also for the other hostport modules' tests.
    pub fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    pub fn tcp(host_port: u16, container_port: u16) -> PortMapping {
        PortMapping {
            host_port,
            container_port,
            protocol: Proto::Tcp,
            host_ip: None,
        }
    }

    #[test]
    fn parses_libcni_lower_case_keys() {
        let v = json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "UDP", "hostIP": ""},
            {"hostPort": 9999, "containerPort": 9, "protocol": "Sctp", "hostIP": "192.0.2.1"},
            {"hostPort": 8443, "containerPort": 443, "hostIP": "2001:db8::1"}
        ]);
        let m = parse_port_mappings(&v).unwrap();
        assert_eq!(
            m,
            vec![
                tcp(8080, 80),
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: Proto::Udp,
                    host_ip: None
                },
                PortMapping {
                    host_port: 9999,
                    container_port: 9,
                    protocol: Proto::Sctp,
                    host_ip: Some(ip("192.0.2.1"))
                },
                PortMapping {
                    host_port: 8443,
                    container_port: 443,
                    protocol: Proto::Tcp,
                    host_ip: Some(ip("2001:db8::1"))
                },
            ]
        );
    }

    #[test]
    fn parses_containerd_cri_capitalised_keys() {
        // As containerd 1.6's CRI plugin marshals its PortMapping struct.
        let v = json!([{"HostPort": 30080, "ContainerPort": 80, "Protocol": "TCP", "HostIP": ""}]);
        assert_eq!(parse_port_mappings(&v).unwrap(), vec![tcp(30080, 80)]);
    }

    #[test]
    fn skips_host_port_zero_merges_duplicates_and_defaults_to_tcp() {
        let v = json!([
            {"hostPort": 0, "containerPort": 80},
            {"hostPort": 8080, "containerPort": 80},
            {"hostPort": "8080", "containerPort": "80", "protocol": "TCP"},
        ]);
        assert_eq!(parse_port_mappings(&v).unwrap(), vec![tcp(8080, 80)]);
        assert_eq!(parse_port_mappings(&Value::Null).unwrap(), vec![]);
    }

    #[test]
    fn rejects_bad_entries_with_context() {
        for (v, needle) in [
            (json!({"hostPort": 1}), "expected an array"),
            (
                json!([{"hostPort": 70000, "containerPort": 80}]),
                "not a port number",
            ),
            (json!([{"hostPort": 80}]), "containerPort missing"),
            (
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]),
                "icmp",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80, "hostIP": "node-1"}]),
                "not an IP address",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81}]),
                "collide",
            ),
        ] {
            let e = parse_port_mappings(&v).unwrap_err();
            assert!(e.to_string().contains(needle), "{v}: {e}");
        }
    }
}
