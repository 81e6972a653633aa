//! What an invocation is given: the `CNI_*` environment and the network configuration on
//! stdin, parsed and validated before anything touches the kernel or the disk.
//!
//! Every key is documented in `README.md`; keep the two in step.

use crate::error::{CniError, Result};
use crate::hostport::{self, PortMapping};
use crate::log::{Level, LogConf};
use crate::types::{CniResult, Dns};
use crate::version::{self, CniVersion};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_DATA_DIR: &str = palisade_common::DEFAULT_IPAM_DATA_DIR;
pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_AGENT_TIMEOUT_MS: u64 = 2000;
/// The one network name that would collide with hostPort's directory under `dataDir`.
const RESERVED_NAME: &str = "hostport";
/// The `ipam.type` of the built-in IPAM.
pub const BUILTIN_IPAM: &str = "palisade";

// ---------------------------------------------------------------------------------------------
// Environment

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// One pod interface: the spec's key for everything the plugin keeps
/// (SPEC.md: "(network name, CNI_CONTAINERID, CNI_IFNAME)").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl Attachment {
    /// The node-side veth of this attachment (deterministic, so DEL finds it without state).
    pub fn host_ifname(&self) -> String {
        palisade_common::host_veth_name(&self.container_id, &self.ifname)
    }
}

/// The `CNI_*` environment of one invocation, validated for its command.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    /// Present for ADD, DEL, CHECK.
    pub attachment: Option<Attachment>,
    /// ADD/CHECK: a path; DEL: possibly `None` (empty `CNI_NETNS` is allowed there).
    pub netns: Option<String>,
    pub args: CniArgs,
    /// `CNI_PATH` directories (only needed to find a delegated IPAM plugin).
    pub cni_path: Vec<PathBuf>,
}

impl Env {
    /// Read and validate the environment through `get` (so tests need no process env).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let command_s = get("CNI_COMMAND").unwrap_or_default();
        let command = Command::parse(&command_s).ok_or_else(|| CniError::InvalidEnv {
            var: "CNI_COMMAND",
            reason: if command_s.is_empty() {
                "missing".into()
            } else {
                format!("unknown command {command_s:?} (ADD, DEL, CHECK, GC, STATUS, VERSION)")
            },
        })?;
        let cni_path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        let mut env = Env {
            command,
            attachment: None,
            netns: None,
            args: CniArgs::default(),
            cni_path,
        };
        if matches!(command, Command::Version | Command::Gc | Command::Status) {
            return Ok(env);
        }
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        validate_container_id(&container_id)?;
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        validate_ifname(&ifname)?;
        env.attachment = Some(Attachment {
            container_id,
            ifname,
        });
        let netns = get("CNI_NETNS").unwrap_or_default();
        if netns.is_empty() {
            if command != Command::Del {
                return Err(CniError::InvalidEnv {
                    var: "CNI_NETNS",
                    reason: "missing".into(),
                });
            }
        } else {
            if !netns.starts_with('/') {
                return Err(CniError::InvalidEnv {
                    var: "CNI_NETNS",
                    reason: format!("{netns:?} is not an absolute path"),
                });
            }
            env.netns = Some(netns);
        }
        env.args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(env)
    }

    pub fn attachment(&self) -> &Attachment {
        self.attachment
            .as_ref()
            .expect("validated for ADD/DEL/CHECK")
    }
}

/// The spec's rule for container IDs (and network names): a non-empty string starting with an
/// alphanumeric character, then alphanumerics, `_`, `.`, `-`. Also what makes both safe as
/// path components (no `/`, never `.` or `..`).
fn is_spec_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub fn validate_container_id(id: &str) -> Result<()> {
    if is_spec_identifier(id) {
        return Ok(());
    }
    Err(CniError::InvalidEnv {
        var: "CNI_CONTAINERID",
        reason: if id.is_empty() {
            "missing".into()
        } else {
            format!("{id:?} must start with an alphanumeric and contain only alphanumerics, '_', '.', '-'")
        },
    })
}

/// Linux interface name rules as the spec states them: 1–15 bytes, not `.`/`..`, no `/`,
/// `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("missing".to_string())
    } else if name.len() > 15 {
        Some(format!("{name:?} is longer than 15 bytes"))
    } else if name == "." || name == ".." {
        Some(format!("{name:?} is not a valid interface name"))
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        Some(format!("{name:?} contains '/', ':' or whitespace"))
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(CniError::InvalidEnv {
            var: "CNI_IFNAME",
            reason,
        }),
    }
}

/// `CNI_ARGS`: `K=V;K=V` (SPEC.md "Parameters", CONVENTIONS.md "CNI_ARGS").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_infra_container_id: Option<String>,
    pub pod_uid: Option<String>,
}

impl CniArgs {
    /// Unknown keys are an error unless `IgnoreUnknown` is `1`/`true`, as libcni's `LoadArgs`
    /// does: a runtime that sends keys a plugin may not know says so explicitly.
    pub fn parse(s: &str) -> Result<Self> {
        let mut args = CniArgs::default();
        let mut unknown = Vec::new();
        let mut ignore_unknown = false;
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| CniError::InvalidEnv {
                var: "CNI_ARGS",
                reason: format!("{pair:?} is not KEY=VALUE"),
            })?;
            let v = Some(v.to_string()).filter(|v| !v.is_empty());
            match k {
                "IgnoreUnknown" => {
                    ignore_unknown = matches!(
                        v.as_deref().map(str::to_ascii_lowercase).as_deref(),
                        Some("1" | "true")
                    )
                }
                "K8S_POD_NAMESPACE" => args.pod_namespace = v,
                "K8S_POD_NAME" => args.pod_name = v,
                "K8S_POD_INFRA_CONTAINER_ID" => args.pod_infra_container_id = v,
                "K8S_POD_UID" => args.pod_uid = v,
                other => unknown.push(other.to_string()),
            }
        }
        if !unknown.is_empty() && !ignore_unknown {
            return Err(CniError::InvalidEnv {
                var: "CNI_ARGS",
                reason: format!("unknown keys {unknown:?} (add IgnoreUnknown=1 to pass them)"),
            });
        }
        Ok(args)
    }
}

// ---------------------------------------------------------------------------------------------
// Network configuration

/// One allocation range: `[start, end]` inside `subnet`, never handing out `gateway`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

/// One IP is taken from each range set; its ranges are tried in order.
pub type RangeSet = Vec<Range>;

#[derive(Debug, Clone, PartialEq)]
pub enum Ipam {
    Builtin {
        range_sets: Vec<RangeSet>,
    },
    /// Any other `ipam.type`, executed from `CNI_PATH`.
    Delegated {
        plugin: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConf {
    pub socket: PathBuf,
    pub timeout: Duration,
    pub required: bool,
}

impl Default for AgentConf {
    fn default() -> Self {
        AgentConf {
            socket: PathBuf::from(palisade_common::DEFAULT_AGENT_SOCKET),
            timeout: Duration::from_millis(DEFAULT_AGENT_TIMEOUT_MS),
            required: false,
        }
    }
}

/// The validated network configuration of one invocation.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: CniVersion,
    pub name: String,
    pub mtu: u32,
    /// `deleteVethInBackground`: DEL leaves the kernel's freeing of the (already down) veth
    /// pair to a detached process ([`crate::teardown`]) instead of waiting for it.
    pub delete_veth_in_background: bool,
    pub ipam: Ipam,
    /// `ipam.dataDir`: shared by every network on the node.
    pub data_dir: PathBuf,
    /// `<ipam.dataDir>/<name>`: this network's IPAM state.
    pub state_dir: PathBuf,
    pub dns: Dns,
    pub agent: AgentConf,
    /// `logFile` and `logLevel`: the optional log file ([`crate::log`]).
    pub log: Option<LogConf>,
    /// `runtimeConfig.portMappings` (unless a `capabilities` left in the request leaves
    /// portMappings out); parsed only by the commands that program or check them, so a bad
    /// entry never blocks DEL.
    port_mappings_raw: Option<Value>,
    pub prev_result: Option<CniResult>,
    /// GC only: `cni.dev/valid-attachments`.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The stdin bytes as given, passed unchanged to a delegated IPAM plugin.
    pub raw: Vec<u8>,
}

impl NetConf {
    /// The port mappings to program (empty when the capability is off or none were given).
    pub fn port_mappings(&self) -> Result<Vec<PortMapping>> {
        match &self.port_mappings_raw {
            None => Ok(Vec::new()),
            Some(v) => hostport::parse_port_mappings(v).map_err(|source| CniError::HostPort {
                context: "runtimeConfig.portMappings",
                source,
            }),
        }
    }

    /// The `data_dir` handed to `hostport`: the node-wide `ipam.dataDir`, because the
    /// hostPort table is node-wide and rebuilt from every record under it (it keeps them in
    /// `<dataDir>/hostport/`, hence the reserved network name).
    pub fn hostport_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    mtu: Option<u32>,
    delete_veth_in_background: Option<bool>,
    ipam: Option<RawIpam>,
    dns: Option<Dns>,
    agent: Option<RawAgent>,
    log_file: Option<PathBuf>,
    log_level: Option<String>,
    /// `None`: the runtime removed it (SPEC.md), or the config has none.
    capabilities: Option<Map<String, Value>>,
    #[serde(default)]
    runtime_config: Map<String, Value>,
    prev_result: Option<Value>,
    ip_masq: Option<bool>,
    /// Our state directory when `ipam` belongs to a delegated plugin.
    data_dir: Option<PathBuf>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<RawGcAttachment>>,
    /// The name libcni also sends (a spec typo kept for compatibility, CNI issue #1101).
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<RawGcAttachment>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    ipam_type: Option<String>,
    ranges: Option<Vec<Vec<RawRange>>>,
    data_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: Option<String>,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAgent {
    socket: Option<PathBuf>,
    timeout_ms: Option<u64>,
    required: Option<bool>,
}

#[derive(Deserialize)]
struct RawGcAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// Parse the stdin of any command but VERSION.
pub fn parse_netconf(raw: &[u8]) -> Result<NetConf> {
    let value = parse_json_object(raw)?;
    let version = negotiate_from(&value)?;
    let conf: RawConf =
        serde_json::from_value(value).map_err(|e| CniError::config(format!("{e}")))?;

    let name = conf
        .name
        .ok_or_else(|| CniError::config("missing \"name\""))?;
    if !is_spec_identifier(&name) {
        return Err(CniError::config(format!(
            "name {name:?} must start with an alphanumeric and contain only alphanumerics, '_', '.', '-'"
        )));
    }
    if name == RESERVED_NAME {
        return Err(CniError::config(format!(
            "name {name:?} is reserved (hostPort keeps its records in <dataDir>/{name}/)"
        )));
    }
    if conf.plugin_type.as_deref().is_none_or(str::is_empty) {
        return Err(CniError::config("missing \"type\""));
    }
    if conf.ip_masq == Some(true) {
        return Err(CniError::UnsupportedField {
            field: "ipMasq",
            reason: "true is not supported: pod traffic is routed, not masqueraded".into(),
        });
    }
    let mtu = conf.mtu.unwrap_or(DEFAULT_MTU);
    if !(68..=65535).contains(&mtu) {
        return Err(CniError::config(format!("mtu {mtu} is outside 68..=65535")));
    }

    let raw_ipam = conf
        .ipam
        .ok_or_else(|| CniError::config("missing \"ipam\""))?;
    // `ipam.dataDir` is ours only with the built-in IPAM: a delegate (host-local) has its own
    // meaning for it and keeps files (and a `lock`) in `<dataDir>/<name>/` too.
    let own_dir = if raw_ipam.ipam_type.as_deref() == Some(BUILTIN_IPAM) {
        raw_ipam.data_dir.clone()
    } else {
        conf.data_dir.clone()
    };
    let data_dir = own_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if !data_dir.is_absolute() {
        return Err(CniError::config(format!(
            "dataDir {} is not an absolute path",
            data_dir.display()
        )));
    }
    let ipam = parse_ipam(raw_ipam)?;

    let level = match conf.log_level.as_deref() {
        None => Level::Info,
        Some(l) => Level::parse(l).ok_or_else(|| {
            CniError::config(format!("logLevel {l:?}: expected error, info or debug"))
        })?,
    };
    let log = match conf.log_file.filter(|f| !f.as_os_str().is_empty()) {
        None => None,
        Some(file) if file.is_absolute() => Some(LogConf { file, level }),
        Some(file) => {
            return Err(CniError::config(format!(
                "logFile {} is not an absolute path",
                file.display()
            )))
        }
    };

    let agent = match conf.agent {
        None => AgentConf::default(),
        Some(a) => {
            let d = AgentConf::default();
            AgentConf {
                socket: a.socket.unwrap_or(d.socket),
                timeout: a.timeout_ms.map(Duration::from_millis).unwrap_or(d.timeout),
                required: a.required.unwrap_or(false),
            }
        }
    };

    // SPEC.md ("Deriving runtimeConfig"): the runtime puts a capability's data into
    // runtimeConfig only for capabilities the config enables, and removes `capabilities` from
    // the request it sends. libcni keeps the key, other runtimes drop it: so the mappings are
    // honoured when present, unless the request still carries `capabilities` and it does
    // not enable portMappings (data the runtime should not have sent).
    let capability_refused = conf
        .capabilities
        .as_ref()
        .is_some_and(|c| c.get("portMappings") != Some(&Value::Bool(true)));
    let port_mappings_raw = if !capability_refused {
        conf.runtime_config
            .get("portMappings")
            .filter(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
            .cloned()
    } else {
        None
    };

    let prev_result = match conf.prev_result {
        Some(v) if !v.is_null() => Some(
            CniResult::from_value(&v).map_err(|e| CniError::config(format!("prevResult: {e}")))?,
        ),
        _ => None,
    };

    let valid_attachments = conf.valid_attachments.or(conf.attachments).map(|list| {
        list.into_iter()
            .map(|a| Attachment {
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect()
    });

    Ok(NetConf {
        version,
        state_dir: data_dir.join(&name),
        data_dir,
        name,
        mtu,
        delete_veth_in_background: conf.delete_veth_in_background.unwrap_or(true),
        ipam,
        dns: conf.dns.unwrap_or_default(),
        agent,
        log,
        port_mappings_raw,
        prev_result,
        valid_attachments,
        raw: raw.to_vec(),
    })
}

fn parse_json_object(raw: &[u8]) -> Result<Value> {
    let value: Value = serde_json::from_slice(raw)
        .map_err(|e| CniError::Decode(format!("stdin is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(CniError::Decode("stdin is not a JSON object".into()));
    }
    Ok(value)
}

fn negotiate_from(value: &Value) -> Result<CniVersion> {
    let cni_version = match value.get("cniVersion") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            return Err(CniError::IncompatibleVersion(format!(
                "cniVersion {other} is not a string"
            )))
        }
    };
    let cni_versions: Option<Vec<String>> = match value.get("cniVersions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value(v.clone())
                .map_err(|e| CniError::config(format!("cniVersions: {e}")))?,
        ),
    };
    version::negotiate(cni_version, cni_versions.as_deref())
}

/// The version a failing invocation should answer in: the negotiated one if the stdin gets
/// that far, else the latest.
pub fn best_effort_version(raw: &[u8]) -> CniVersion {
    serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| negotiate_from(&v).ok())
        .unwrap_or_else(CniVersion::latest)
}

/// The `cniVersion` on a VERSION command's stdin, if any.
pub fn requested_version(raw: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(raw)
        .ok()?
        .get("cniVersion")?
        .as_str()
        .map(String::from)
}

fn parse_ipam(raw: RawIpam) -> Result<Ipam> {
    let ipam_type = raw
        .ipam_type
        .filter(|t| !t.is_empty())
        .ok_or_else(|| CniError::config("missing \"ipam.type\""))?;
    if ipam_type != BUILTIN_IPAM {
        if ipam_type.contains('/') || ipam_type == "." || ipam_type == ".." {
            return Err(CniError::config(format!(
                "ipam.type {ipam_type:?} is not a plugin name"
            )));
        }
        return Ok(Ipam::Delegated { plugin: ipam_type });
    }
    let raw_sets = raw
        .ranges
        .filter(|r| !r.is_empty())
        .ok_or_else(|| CniError::config("ipam.ranges must list at least one range set"))?;
    let mut range_sets = Vec::with_capacity(raw_sets.len());
    for (i, raw_set) in raw_sets.into_iter().enumerate() {
        if raw_set.is_empty() {
            return Err(CniError::config(format!("ipam.ranges[{i}] is empty")));
        }
        let mut set: RangeSet = Vec::with_capacity(raw_set.len());
        for (j, r) in raw_set.into_iter().enumerate() {
            let range = parse_range(r)
                .map_err(|e| CniError::config(format!("ipam.ranges[{i}][{j}]: {e}")))?;
            if let Some(first) = set.first() {
                if first.subnet.addr().is_ipv4() != range.subnet.addr().is_ipv4() {
                    return Err(CniError::config(format!(
                        "ipam.ranges[{i}] mixes IPv4 and IPv6"
                    )));
                }
            }
            if let Some(other) = set.iter().find(|o| ranges_overlap(o, &range)) {
                return Err(CniError::config(format!(
                    "ipam.ranges[{i}][{j}] overlaps {}-{}",
                    other.start, other.end
                )));
            }
            set.push(range);
        }
        range_sets.push(set);
    }
    Ok(Ipam::Builtin { range_sets })
}

fn parse_range(r: RawRange) -> std::result::Result<Range, String> {
    let subnet_s = r.subnet.ok_or("missing \"subnet\"")?;
    let subnet: IpNet = subnet_s
        .parse()
        .map_err(|_| format!("subnet {subnet_s:?} is not a CIDR"))?;
    if subnet.trunc() != subnet {
        return Err(format!(
            "subnet {subnet_s} has host bits set (did you mean {}?)",
            subnet.trunc()
        ));
    }
    let (first, last) =
        usable_bounds(&subnet).ok_or(format!("subnet {subnet} is too small to allocate from"))?;
    let start = r.range_start.unwrap_or(first);
    let end = r.range_end.unwrap_or(last);
    for (what, ip) in [("rangeStart", start), ("rangeEnd", end)] {
        if !subnet.contains(&ip) {
            return Err(format!("{what} {ip} is outside {subnet}"));
        }
    }
    if ip_to_u128(start) > ip_to_u128(end) {
        return Err(format!("rangeStart {start} is after rangeEnd {end}"));
    }
    if let Some(gw) = r.gateway {
        if !subnet.contains(&gw) {
            return Err(format!("gateway {gw} is outside {subnet}"));
        }
    }
    Ok(Range {
        subnet,
        start,
        end,
        gateway: r.gateway,
    })
}

fn ranges_overlap(a: &Range, b: &Range) -> bool {
    ip_to_u128(a.start) <= ip_to_u128(b.end) && ip_to_u128(b.start) <= ip_to_u128(a.end)
}

/// First and last address that may ever be handed out in `subnet`: never the network address
/// (and, for IPv4, never the broadcast address).
pub fn usable_bounds(subnet: &IpNet) -> Option<(IpAddr, IpAddr)> {
    let net = ip_to_u128(subnet.network());
    let last = ip_to_u128(subnet.broadcast());
    let (first, last) = match subnet {
        IpNet::V4(_) => (net + 1, last.checked_sub(1)?),
        IpNet::V6(_) => (net + 1, last),
    };
    (first <= last).then(|| {
        (
            u128_to_ip(first, subnet.addr().is_ipv4()),
            u128_to_ip(last, subnet.addr().is_ipv4()),
        )
    })
}

pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

pub fn u128_to_ip(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((n as u32).into())
    } else {
        IpAddr::V6(n.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// runtimeConfig.portMappings without `capabilities` (the runtime removed it, as the
    /// spec says) is honoured; with `capabilities` it takes portMappings: true.
    #[test]
    fn port_mappings_with_and_without_the_capabilities_key() {
        let mappings = |capabilities: Option<serde_json::Value>| {
            let mut c = serde_json::json!({
                "cniVersion": "1.1.0", "name": "n", "type": "palisade",
                "ipam": {"type": "palisade", "ranges": [[{"subnet": "10.0.0.0/24"}]]},
                "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
            });
            if let Some(cap) = capabilities {
                c["capabilities"] = cap;
            }
            parse_netconf(c.to_string().as_bytes())
                .unwrap()
                .port_mappings()
                .unwrap()
                .len()
        };
        assert_eq!(mappings(None), 1, "the runtime removed capabilities");
        assert_eq!(
            mappings(Some(serde_json::json!({"portMappings": true}))),
            1,
            "libcni keeps it"
        );
        assert_eq!(
            mappings(Some(serde_json::json!({"portMappings": false}))),
            0
        );
        assert_eq!(mappings(Some(serde_json::json!({"bandwidth": true}))), 0);
    }

    fn env(vars: &[(&str, &str)]) -> Result<Env> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    const GOOD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    fn with(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = GOOD
            .iter()
            .copied()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .collect();
        v.extend(over.iter().copied().filter(|(_, val)| *val != "<unset>"));
        v
    }

    #[test]
    fn a_good_environment_parses() {
        let e = env(GOOD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.attachment().container_id, "abc123");
        assert_eq!(e.netns.as_deref(), Some("/run/netns/x"));
        assert_eq!(e.cni_path.len(), 2);
    }

    #[test]
    fn bad_environments_are_code_4() {
        let bad: &[&[(&str, &str)]] = &[
            &[("CNI_COMMAND", "<unset>")],
            &[("CNI_COMMAND", "FROB")],
            &[("CNI_CONTAINERID", "<unset>")],
            &[("CNI_CONTAINERID", "../../etc")],
            &[("CNI_CONTAINERID", "-abc")],
            &[("CNI_CONTAINERID", "a b")],
            &[("CNI_IFNAME", "<unset>")],
            &[("CNI_IFNAME", "sixteen-chars-xx")],
            &[("CNI_IFNAME", "..")],
            &[("CNI_IFNAME", "a/b")],
            &[("CNI_IFNAME", "a b")],
            &[("CNI_IFNAME", "a:b")],
            &[("CNI_NETNS", "<unset>")],
            &[("CNI_NETNS", "relative/path")],
            &[("CNI_ARGS", "novalue")],
            &[("CNI_ARGS", "FOO=bar")],
        ];
        for over in bad {
            let e = env(&with(over)).unwrap_err();
            assert_eq!(e.code(), 4, "{over:?}: {e}");
        }
    }

    #[test]
    fn del_accepts_an_empty_netns_and_gc_needs_no_attachment() {
        let e = env(&with(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")])).unwrap();
        assert_eq!(e.netns, None);
        let e = env(&[("CNI_COMMAND", "GC")]).unwrap();
        assert!(e.attachment.is_none());
        let e = env(&[("CNI_COMMAND", "VERSION")]).unwrap();
        assert_eq!(e.command, Command::Version);
    }

    #[test]
    fn ifname_limits() {
        assert!(validate_ifname("fifteen-chars-x").is_ok());
        assert!(validate_ifname("net1").is_ok());
        assert!(validate_ifname(".").is_err());
        assert!(validate_ifname("a\tb").is_err());
    }

    #[test]
    fn cni_args_parse_with_ignore_unknown() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u;FOO=bar").unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("ns"));
        assert_eq!(a.pod_name.as_deref(), Some("web-0"));
        assert_eq!(a.pod_uid.as_deref(), Some("u"));
        assert!(CniArgs::parse("IgnoreUnknown=true;X=1").is_ok());
        assert_eq!(CniArgs::parse("IgnoreUnknown=0;X=1").unwrap_err().code(), 4);
        assert_eq!(
            CniArgs::parse("K8S_POD_NAME=a;")
                .unwrap()
                .pod_name
                .as_deref(),
            Some("a")
        );
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        // Values may contain '=' (only the first one splits).
        assert_eq!(
            CniArgs::parse("K8S_POD_NAME=a=b")
                .unwrap()
                .pod_name
                .as_deref(),
            Some("a=b")
        );
    }

    fn conf(json: serde_json::Value) -> Result<NetConf> {
        parse_netconf(json.to_string().as_bytes())
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0", "name": "pnet", "type": "palisade",
            "ipam": {"type": "palisade", "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]}
        })
    }

    #[test]
    fn a_dual_stack_config_parses_with_defaults() {
        let c = conf(base()).unwrap();
        assert_eq!(c.version.as_str(), "1.0.0");
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/cni/palisade/pnet"));
        assert_eq!(c.agent, AgentConf::default());
        let Ipam::Builtin { range_sets } = &c.ipam else {
            panic!()
        };
        assert_eq!(range_sets.len(), 2);
        assert_eq!(
            range_sets[0][0].start,
            "10.244.1.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            range_sets[0][0].end,
            "10.244.1.254".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            range_sets[1][0].start,
            "fd00:10:244:1::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            range_sets[1][0].end,
            "fd00:10:244:1:ffff:ffff:ffff:ffff"
                .parse::<IpAddr>()
                .unwrap()
        );
    }

    #[test]
    fn every_documented_key_is_read() {
        let mut j = base();
        j["mtu"] = 9000.into();
        j["deleteVethInBackground"] = false.into();
        j["ipam"]["dataDir"] = "/tmp/x".into();
        j["ipam"]["ranges"][0][0] = serde_json::json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20", "gateway": "10.0.0.1"});
        j["agent"] =
            serde_json::json!({"socket": "/tmp/a.sock", "timeoutMs": 50, "required": true});
        j["dns"] = serde_json::json!({"nameservers": ["10.96.0.10"]});
        let c = conf(j).unwrap();
        assert_eq!(c.mtu, 9000);
        assert!(!c.delete_veth_in_background);
        assert!(conf(base()).unwrap().delete_veth_in_background, "default");
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x/pnet"));
        assert_eq!(c.agent.timeout, Duration::from_millis(50));
        assert!(c.agent.required);
        assert_eq!(c.dns.nameservers, vec!["10.96.0.10"]);
        let Ipam::Builtin { range_sets } = &c.ipam else {
            panic!()
        };
        assert_eq!(range_sets[0][0].gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(range_sets[0][0].end, "10.0.0.20".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn other_ipam_types_are_delegated() {
        let mut j = base();
        j["ipam"] =
            serde_json::json!({"type": "host-local", "subnet": "10.1.0.0/24", "dataDir": "/hl"});
        let c = conf(j.clone()).unwrap();
        assert_eq!(
            c.ipam,
            Ipam::Delegated {
                plugin: "host-local".into()
            }
        );
        // The delegate's ipam.dataDir is not ours: the default, or the top-level dataDir.
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/cni/palisade/pnet"));
        j["dataDir"] = "/srv/pal".into();
        assert_eq!(conf(j).unwrap().state_dir, PathBuf::from("/srv/pal/pnet"));
    }

    #[test]
    fn bad_configs_are_rejected_with_the_right_code() {
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Mutation, u32)> = vec![
            (Box::new(|j| j["cniVersion"] = "0.2.0".into()), 1),
            (
                Box::new(|j| {
                    j.as_object_mut().unwrap().remove("cniVersion");
                }),
                1,
            ),
            (Box::new(|j| j["ipMasq"] = true.into()), 2),
            (
                Box::new(|j| {
                    j.as_object_mut().unwrap().remove("name");
                }),
                7,
            ),
            (Box::new(|j| j["name"] = "../etc".into()), 7),
            (Box::new(|j| j["name"] = "hostport".into()), 7),
            (Box::new(|j| j["mtu"] = "big".into()), 7),
            (Box::new(|j| j["mtu"] = 10.into()), 7),
            (Box::new(|j| j["deleteVethInBackground"] = "yes".into()), 7),
            (
                Box::new(|j| {
                    j.as_object_mut().unwrap().remove("ipam");
                }),
                7,
            ),
            (Box::new(|j| j["ipam"]["ranges"] = serde_json::json!([])), 7),
            (
                Box::new(|j| j["ipam"]["ranges"][0] = serde_json::json!([])),
                7,
            ),
            (
                Box::new(|j| j["ipam"]["ranges"][0][0]["subnet"] = "10.244.1.5/24".into()),
                7,
            ),
            (
                Box::new(|j| j["ipam"]["ranges"][0][0]["subnet"] = "nonsense".into()),
                7,
            ),
            (
                Box::new(|j| j["ipam"]["ranges"][0][0]["subnet"] = "10.0.0.0/31".into()),
                7,
            ),
            (
                Box::new(|j| j["ipam"]["ranges"][0][0]["rangeStart"] = "10.9.9.9".into()),
                7,
            ),
            (
                Box::new(|j| {
                    j["ipam"]["ranges"][0][0]["rangeStart"] = "10.244.1.9".into();
                    j["ipam"]["ranges"][0][0]["rangeEnd"] = "10.244.1.8".into();
                }),
                7,
            ),
            (
                Box::new(|j| {
                    j["ipam"]["ranges"][0] =
                        serde_json::json!([{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}])
                }),
                7,
            ),
            (
                Box::new(|j| {
                    j["ipam"]["ranges"][0] =
                        serde_json::json!([{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}])
                }),
                7,
            ),
            (Box::new(|j| j["ipam"]["dataDir"] = "relative".into()), 7),
            (Box::new(|j| j["ipam"]["type"] = "../x".into()), 7),
            (
                Box::new(|j| j["prevResult"] = serde_json::json!({"ips": [{"address": "x"}]})),
                7,
            ),
        ];
        for (i, (mutate, code)) in cases.iter().enumerate() {
            let mut j = base();
            mutate(&mut j);
            let e = conf(j.clone()).unwrap_err();
            assert_eq!(e.code(), *code, "case {i}: {j} -> {e}");
        }
        assert_eq!(parse_netconf(b"not json").unwrap_err().code(), 6);
        assert_eq!(parse_netconf(b"[1]").unwrap_err().code(), 6);
    }

    #[test]
    fn cni_versions_list_is_negotiated() {
        let mut j = base();
        j.as_object_mut().unwrap().remove("cniVersion");
        j["cniVersions"] = serde_json::json!(["0.4.0", "1.1.0", "5.0.0"]);
        assert_eq!(conf(j).unwrap().version.as_str(), "1.1.0");
    }

    #[test]
    fn gc_attachments_and_prev_result_are_read() {
        let mut j = base();
        j["cni.dev/valid-attachments"] =
            serde_json::json!([{"containerID": "c1", "ifname": "eth0"}]);
        j["prevResult"] =
            serde_json::json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.2/32"}]});
        let c = conf(j).unwrap();
        assert_eq!(
            c.valid_attachments.unwrap()[0],
            Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }
        );
        assert_eq!(c.prev_result.unwrap().ips.len(), 1);
    }

    #[test]
    fn usable_bounds_skip_network_and_broadcast() {
        let b = |s: &str| {
            usable_bounds(&s.parse().unwrap()).map(|(a, b)| (a.to_string(), b.to_string()))
        };
        assert_eq!(
            b("10.0.0.0/30"),
            Some(("10.0.0.1".into(), "10.0.0.2".into()))
        );
        assert_eq!(b("10.0.0.0/31"), None);
        assert_eq!(b("fd00::/127"), Some(("fd00::1".into(), "fd00::1".into())));
        assert_eq!(b("fd00::/128"), None);
    }
}
