//! hostPort: DNAT from the node to pods, in the plugin's own nftables table
//! `inet palisade-hostport` (see DESIGN.md "hostPort").
//!
//! # What is programmed
//!
//! ```text
//! table inet palisade-hostport {
//!   set layout_v1      { type mark }   exists only in a table of layout 1 (guards the fast path)
//!   map ports4         { type inet_proto . inet_service : ipv4_addr . inet_service }
//!   map addr_ports4    { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }
//!   map ports6 / addr_ports6   the same for IPv6
//!   set hairpin4       { type ipv4_addr . ipv4_addr }   podIP . podIP
//!   set hairpin6       { type ipv6_addr . ipv6_addr }
//!   chain hostports    host-IP-specific map first, then the any-address map, per family
//!   chain prerouting   nat hook, `fib daddr type local jump hostports` (from other nodes and pods)
//!   chain output       nat hook, same for the node's own connections (loopback excluded)
//!   chain postrouting  nat hook, `ct status dnat ip saddr . ip daddr @hairpin4 masquerade`
//! }
//! ```
//!
//! Chains are static; a pod coming or going only adds or removes map elements. That matters
//! for speed as much as for clarity: on this kernel any transaction that touches a chain or a
//! rule costs about 10 ms more than one that only touches elements (the commit waits for an
//! RCU grace period), so ADD and DEL touch elements only ("fast path") and the whole table is
//! rebuilt only when it is missing or of another layout version ("resync").
//!
//! # State and crash safety
//!
//! Per attachment (container ID, ifname) a JSON file under `<data_dir>/hostport/` records the
//! exact elements the plugin added. It is written (atomically, by rename) BEFORE the nft
//! transaction, so a crash in between leaves a record of everything that may be in the
//! kernel, and DEL or GC can remove it. Removal uses "add, then delete" of the recorded
//! element in one transaction: nft 1.0.6 has no `destroy`, and a plain `delete` of an element
//! that is not there would abort the whole transaction. Every operation runs under an
//! exclusive `flock` on `<data_dir>/hostport/lock`, so concurrent plugin processes serialise
//! their read-modify-write; each nft transaction is atomic in the kernel.
//!
//! Records carry the kernel boot ID: nftables state does not survive a reboot, so records of
//! an earlier boot are treated as not programmed (DEL and GC just remove them).
//!
//! The table belongs to the node's network namespace, the records to `data_dir`: every
//! network using hostPort on one node must use the same `data_dir` (the resync rebuilds the
//! table from the records it finds there). With several such networks, callers name the
//! network ([`HostPorts::for_network`]) so that GC of one keeps the others' records.
//!
//! Two attachments cannot publish the same (protocol, host port, host IP): ADD refuses it,
//! naming the holder. After ADD of a UDP mapping, conntrack entries of earlier UDP flows to
//! that port are deleted (see `forget_udp_flows`).
//!
//! ADD and DEL change elements with one in-process nf_tables netlink batch (`nft` only when
//! netlink cannot be used or the table must be rebuilt), plus, for UDP mappings, one
//! in-process ctnetlink dump; DEL of the last attachment removes the table with one netlink
//! batch too, and DEL of an attachment without a record touches nothing (one `stat`). DEL
//! hands the netlink socket back ([`Pending`]) so closing it, which waits for an RCU grace
//! period after deletions, can wait until the caller's own kernel work is done. CHECK reads
//! the table with `nft -j -p list table`; GC rebuilds it in one transaction; STATUS asks
//! netlink whether the table exists ([`HostPorts::lost_mappings`]).
//!
//! # What is supported
//!
//! - TCP, UDP and SCTP; IPv4 and IPv6. A mapping applies to the first pod IP of each family;
//!   a mapping with a host IP applies only to the pod IP of that family, and an unspecified
//!   host IP (`0.0.0.0`, `::`) means "any address of that family" (as the portmap plugin).
//! - Reached from other nodes and pods (prerouting), from the node itself (output) and from
//!   the pod itself through a node address (hairpin, masqueraded to a node address).
//! - NOT supported: `127.0.0.1:hostPort` / `[::1]:hostPort` from the node. The kernel refuses
//!   to route a packet with a loopback source out of a veth unless `route_localnet` is set,
//!   and IPv6 never does it. Loopback destinations are excluded from the output DNAT so a
//!   node-local service bound to 127.0.0.1 on the same port keeps working.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::fs;
use std::io::{ErrorKind, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use palisade_common::HOSTPORT_TABLE;

/// Bump when the table layout (maps, chains, rules) changes: an older table is then rebuilt.
const LAYOUT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

    fn parse(s: &str) -> Option<Proto> {
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPortError {
    pub msg: String,
    pub details: String,
}

impl HostPortError {
    fn new(msg: impl Into<String>, details: impl Into<String>) -> HostPortError {
        HostPortError {
            msg: msg.into(),
            details: details.into(),
        }
    }
}

impl fmt::Display for HostPortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.msg, self.details)
    }
}

impl std::error::Error for HostPortError {}

/// What a removal of elements or of the table leaves to finish: the nf_tables netlink socket
/// that did it. The removal itself is complete (committed) already; closing the socket waits
/// until the kernel has freed what was removed, one RCU grace period after the commit (about
/// 10 ms here; `palisade_common::nfnetlink::socket`), and it waits holding the namespace's
/// nf_tables commit mutex, which deleting a network device needs too. Dropped after the
/// caller's own slow kernel work (DEL: the veth), the wait has passed and closing is free.
#[derive(Debug, Default)]
pub struct Pending {
    /// Held for its `Drop` (the close), or handed to [`crate::teardown`].
    socket: Option<std::os::fd::OwnedFd>,
}

impl Pending {
    fn socket(s: std::os::fd::OwnedFd) -> Pending {
        Pending { socket: Some(s) }
    }

    /// The socket, for a process that takes over the wait (DEL's background teardown).
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.socket.as_ref().map(|s| s.as_raw_fd())
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing runtimeConfig.portMappings
// ---------------------------------------------------------------------------------------------

/// Parse `runtimeConfig.portMappings` (libcni's lower-case keys or CRI's capitalised ones).
///
/// `null` or a missing array means no mappings. Entries with `hostPort` 0 are skipped: the
/// runtime has nothing to publish on the host for them (containerd filters them the same way).
/// Identical entries are merged; two entries that claim the same host port, protocol and host
/// IP for different container ports are an error.
pub fn parse_port_mappings(v: &Value) -> Result<Vec<PortMapping>, HostPortError> {
    let bad = |details: String| HostPortError::new("invalid runtimeConfig.portMappings", details);
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

// ---------------------------------------------------------------------------------------------
// The table's elements
// ---------------------------------------------------------------------------------------------

/// One element of one of the table's maps or sets, in nft's own text syntax (`key` and, for
/// maps, `value`). The same text is produced from our model and from `nft -j -p` listings, so
/// the two compare directly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Element {
    set: String,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

impl Element {
    /// Two map elements collide when they share a key (the kernel refuses a second value for
    /// a key). Hairpin set entries are per pod IP and never collide.
    fn same_key(&self, other: &Element) -> bool {
        self.value.is_some() && self.set == other.set && self.key == other.key
    }

    fn add_cmd(&self) -> String {
        match &self.value {
            Some(v) => format!(
                "add element inet {HOSTPORT_TABLE} {} {{ {} : {v} }}\n",
                self.set, self.key
            ),
            None => format!(
                "add element inet {HOSTPORT_TABLE} {} {{ {} }}\n",
                self.set, self.key
            ),
        }
    }

    /// Remove the element whether or not it is there: add it (a no-op when present with the
    /// same value), then delete it, in the same transaction.
    fn remove_cmds(&self) -> String {
        format!(
            "{}delete element inet {HOSTPORT_TABLE} {} {{ {} }}\n",
            self.add_cmd(),
            self.set,
            self.key
        )
    }

    /// What a user reads in an error message.
    fn describe(&self) -> String {
        match &self.value {
            Some(v) => format!("{} {{ {} : {v} }}", self.set, self.key),
            None => format!("{} {{ {} }}", self.set, self.key),
        }
    }
}

/// The elements that publish `mappings` for a pod with `pod_ips`. A mapping applies to the
/// first pod IP of each family; a host IP restricts it to its own family.
fn elements_for(
    pod_ips: &[IpAddr],
    mappings: &[PortMapping],
) -> Result<Vec<Element>, HostPortError> {
    let v4 = pod_ips.iter().find(|ip| ip.is_ipv4());
    let v6 = pod_ips.iter().find(|ip| ip.is_ipv6());
    let mut out: BTreeSet<Element> = BTreeSet::new();
    for pod_ip in [v4, v6].into_iter().flatten() {
        let fam = if pod_ip.is_ipv4() { "4" } else { "6" };
        let mut any = false;
        for m in mappings {
            if m.host_ip.is_some_and(|h| h.is_ipv4() != pod_ip.is_ipv4()) {
                continue;
            }
            let proto_port = format!("{} . {}", m.protocol.number(), m.host_port);
            let (set, key) = match m.host_ip {
                Some(h) if !h.is_unspecified() => {
                    (format!("addr_ports{fam}"), format!("{h} . {proto_port}"))
                }
                _ => (format!("ports{fam}"), proto_port),
            };
            out.insert(Element {
                set,
                key,
                value: Some(format!("{pod_ip} . {}", m.container_port)),
            });
            any = true;
        }
        if any {
            out.insert(Element {
                set: format!("hairpin{fam}"),
                key: format!("{pod_ip} . {pod_ip}"),
                value: None,
            });
        }
    }
    let out: Vec<Element> = out.into_iter().collect();
    for (i, a) in out.iter().enumerate() {
        if let Some(b) = out[i + 1..].iter().find(|b| a.same_key(b)) {
            return Err(HostPortError::new(
                "conflicting port mappings",
                format!(
                    "{} and {} publish the same host port",
                    a.describe(),
                    b.describe()
                ),
            ));
        }
    }
    Ok(out)
}

/// The whole table, built from scratch: layout plus the given elements. Starts with
/// "add table; delete table" so that whatever was there (an older layout, elements nobody
/// owns) is replaced atomically.
fn full_table_script(elements: &[Element]) -> String {
    let t = format!("inet {HOSTPORT_TABLE}");
    let mut s = String::new();
    let _ = write!(
        s,
        "add table {t}\n\
         delete table {t}\n\
         add table {t} {{ comment \"hostPort DNAT of the palisade CNI plugin\"; }}\n\
         add set {t} layout_v{LAYOUT_VERSION} {{ type mark; }}\n\
         add element {t} layout_v{LAYOUT_VERSION} {{ 1 }}\n\
         add map {t} ports4 {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
         add map {t} addr_ports4 {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
         add map {t} ports6 {{ type inet_proto . inet_service : ipv6_addr . inet_service; }}\n\
         add map {t} addr_ports6 {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }}\n\
         add set {t} hairpin4 {{ type ipv4_addr . ipv4_addr; }}\n\
         add set {t} hairpin6 {{ type ipv6_addr . ipv6_addr; }}\n\
         add chain {t} hostports\n\
         add rule {t} hostports meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @addr_ports4\n\
         add rule {t} hostports meta nfproto ipv4 dnat ip to meta l4proto . th dport map @ports4\n\
         add rule {t} hostports meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @addr_ports6\n\
         add rule {t} hostports meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @ports6\n\
         add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         add rule {t} prerouting fib daddr type local jump hostports\n\
         add chain {t} output {{ type nat hook output priority -100; policy accept; }}\n\
         add rule {t} output meta nfproto ipv4 ip daddr != 127.0.0.0/8 fib daddr type local jump hostports\n\
         add rule {t} output meta nfproto ipv6 ip6 daddr != ::1 fib daddr type local jump hostports\n\
         add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         add rule {t} postrouting ct status dnat ip saddr . ip daddr @hairpin4 masquerade\n\
         add rule {t} postrouting ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade\n"
    );
    for e in elements {
        s.push_str(&e.add_cmd());
    }
    s
}

/// Chains and their rule counts that [`full_table_script`] creates (checked by CHECK).
const CHAINS: [(&str, usize); 4] = [
    ("hostports", 4),
    ("prerouting", 1),
    ("output", 2),
    ("postrouting", 2),
];

fn delete_table_script() -> String {
    format!("add table inet {HOSTPORT_TABLE}\ndelete table inet {HOSTPORT_TABLE}\n")
}

/// Element changes only. Fails (and changes nothing) when the table is missing or has another
/// layout: the set `layout_v<N>` exists only in a table of layout N. (A guard by deleting and
/// re-adding a version element would work too, but any element deletion makes the commit
/// about 8 ms slower here, so ADD of a new attachment adds only.)
fn fast_path_script(remove: &[Element], add: &[Element]) -> String {
    let mut s = format!("add element inet {HOSTPORT_TABLE} layout_v{LAYOUT_VERSION} {{ 1 }}\n");
    for e in remove {
        s.push_str(&e.remove_cmds());
    }
    for e in add {
        s.push_str(&e.add_cmd());
    }
    s
}

/// What `nft -j -p list table` shows of our table.
#[derive(Debug, Default, PartialEq, Eq)]
struct Listing {
    elements: BTreeSet<Element>,
    /// chain name -> number of rules
    chains: BTreeMap<String, usize>,
}

impl Listing {
    fn parse(json: &str) -> Result<Listing, HostPortError> {
        let v: Value = serde_json::from_str(json)
            .map_err(|e| HostPortError::new("cannot parse nft -j output", e.to_string()))?;
        let items = v.get("nftables").and_then(Value::as_array).ok_or_else(|| {
            HostPortError::new("cannot parse nft -j output", "no \"nftables\" array")
        })?;
        let mut out = Listing::default();
        for item in items {
            if let Some(c) = item.get("chain") {
                if let Some(name) = c.get("name").and_then(Value::as_str) {
                    out.chains.entry(name.to_string()).or_insert(0);
                }
            } else if let Some(r) = item.get("rule") {
                if let Some(chain) = r.get("chain").and_then(Value::as_str) {
                    *out.chains.entry(chain.to_string()).or_insert(0) += 1;
                }
            } else if let Some(set) = item.get("map").or_else(|| item.get("set")) {
                let name = set.get("name").and_then(Value::as_str).unwrap_or_default();
                let is_map = item.get("map").is_some();
                for e in set
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let (key, value) = match (is_map, e) {
                        (true, Value::Array(kv)) if kv.len() == 2 => {
                            (expr_text(&kv[0]), Some(expr_text(&kv[1])))
                        }
                        _ => (expr_text(e), None),
                    };
                    out.elements.insert(Element {
                        set: name.to_string(),
                        key,
                        value,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// nft JSON expression → nft text, for the shapes our maps produce.
fn expr_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) if o.contains_key("concat") => o["concat"]
            .as_array()
            .map(|a| a.iter().map(expr_text).collect::<Vec<_>>().join(" . "))
            .unwrap_or_default(),
        // Elements with attributes (timeout, comment) are wrapped: {"elem": {"val": ...}}.
        Value::Object(o) if o.contains_key("elem") => {
            expr_text(o["elem"].get("val").unwrap_or(&Value::Null))
        }
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Running nft
// ---------------------------------------------------------------------------------------------

/// Runs the `nft` binary, optionally inside another network namespace (tests: the plugin runs
/// in the node's namespace, the test process does not; `nsenter` keeps that off the test's
/// threads). nft is run directly with stderr captured, not through the `nftables` crate,
/// which loses nft's error text.
#[derive(Debug, Clone)]
pub struct NftRunner {
    program: PathBuf,
    netns: Option<PathBuf>,
}

impl Default for NftRunner {
    fn default() -> Self {
        NftRunner {
            program: find_nft(),
            netns: None,
        }
    }
}

/// Runtimes exec plugins with their own, sometimes minimal, PATH: fall back to the usual
/// places of the nft binary.
fn find_nft() -> PathBuf {
    find_program(
        "nft",
        &["/usr/sbin", "/sbin", "/usr/bin", "/usr/local/sbin"],
    )
    .unwrap_or_else(|| PathBuf::from("nft"))
}

/// `program` in PATH or else in one of `fallback_dirs`.
fn find_program(program: &str, fallback_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(fallback_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

impl NftRunner {
    /// Run nft inside the network namespace at `netns` (a `/run/netns/NAME` path).
    #[allow(dead_code)] // the kernel tests (tests/hostport.rs) use it; the plugin runs in place
    pub fn in_netns(netns: &Path) -> NftRunner {
        NftRunner {
            program: find_nft(),
            netns: Some(netns.to_path_buf()),
        }
    }

    fn command(&self) -> Command {
        self.command_for(&self.program)
    }

    /// `program`, in the runner's network namespace.
    fn command_for(&self, program: &Path) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(program);
                c
            }
        }
    }

    /// Forget the conntrack entries of UDP flows to a newly published host port.
    ///
    /// A client that sent to the port before the mapping existed created an entry without
    /// DNAT (the packet went to the node itself); as long as it keeps sending from the same
    /// source port that entry is refreshed and its packets never reach the pod. TCP does not
    /// need this (a new connection is a new entry). The portmap plugin does the same.
    /// Done over ctnetlink in-process (one dump for every family and port, then one delete
    /// per match): the `conntrack` tool costs a process and a full table walk per port and
    /// family. Best effort: on failure the mapping still works for new flows.
    fn forget_udp_flows(&self, flows: &[(&'static str, u16, Option<IpAddr>)]) {
        if flows.is_empty() {
            return;
        }
        let flows: Vec<(bool, u16, Option<IpAddr>)> = flows
            .iter()
            .map(|(f, p, ip)| (*f == "ipv6", *p, *ip))
            .collect();
        let _ = self.run_in_netns(move || {
            conntrack::forget_udp_flows(&flows).map_err(element_batch::BatchError::Netlink)
        });
    }

    /// The fast path: element changes only, as one transaction (see [`fast_path_script`]).
    ///
    /// Sent as one nf_tables netlink batch from this process: that is the whole cost of an
    /// ADD's hostPorts, where an `nft` process spends most of its time starting and filling
    /// its cache (about 3 ms here, 10-20 ms on a loaded node). Exactly the messages `nft -f`
    /// sends for the same script. When netlink itself cannot be used, falls back to `nft`;
    /// when the kernel refuses the batch (table missing, another layout, a key held by an
    /// element nobody recorded), the error goes to the caller, which rebuilds the table.
    ///
    /// The netlink socket comes back in the [`Pending`]: see there.
    fn apply_elements(
        &self,
        remove: &[Element],
        add: &[Element],
    ) -> Result<Pending, HostPortError> {
        let (remove_owned, add_owned) = (remove.to_vec(), add.to_vec());
        match self.run_in_netns(move || element_batch::apply(&remove_owned, &add_owned)) {
            Ok(sock) => Ok(Pending::socket(sock)),
            Err(element_batch::BatchError::Refused(e)) => Err(HostPortError::new(
                format!("nf_tables element update on table inet {HOSTPORT_TABLE} refused"),
                e.to_string(),
            )),
            Err(element_batch::BatchError::Netlink(netlink_err)) => self
                .apply(&fast_path_script(remove, add))
                .map(|()| Pending::default())
                .map_err(|e| HostPortError {
                    details: format!("{} (netlink was not usable: {netlink_err})", e.details),
                    ..e
                }),
        }
    }

    /// Remove the whole table (idempotent): one nf_tables netlink batch (`delete table`),
    /// or `nft` when netlink cannot be used or the kernel refuses for another reason than
    /// "no such table" (nft then says why). The socket comes back in the [`Pending`].
    fn delete_table(&self) -> Result<Pending, HostPortError> {
        match self.run_in_netns(element_batch::delete_table) {
            Ok(sock) => Ok(Pending::socket(sock)),
            Err(element_batch::BatchError::Refused(e))
                if e.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(Pending::default())
            }
            Err(_) => self
                .apply(&delete_table_script())
                .map(|()| Pending::default()),
        }
    }

    /// Run `f` in the runner's network namespace: here, or on a thread of its own that
    /// entered the namespace with `setns` and ends right after (setns affects only the calling
    /// thread; machine.md, "Rust pitfalls").
    fn run_in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, element_batch::BatchError> + Send + 'static,
    ) -> Result<T, element_batch::BatchError> {
        let Some(ns) = self.netns.clone() else {
            return f();
        };
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = fs::File::open(&ns).map_err(element_batch::BatchError::Netlink)?;
            // SAFETY: setns with a valid namespace fd, on this short-lived thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(element_batch::BatchError::Netlink(
                    std::io::Error::last_os_error(),
                ));
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(element_batch::BatchError::Netlink(std::io::Error::other(
                "netlink thread panicked",
            )))
        })
    }

    /// Apply a script as one transaction (`nft -f -`).
    fn apply(&self, script: &str) -> Result<(), HostPortError> {
        let mut child = self
            .command()
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                HostPortError::new("cannot run nft", format!("{}: {e}", self.program.display()))
            })?;
        // nft reads all of stdin before it writes anything, so writing first cannot deadlock.
        let write = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(script.as_bytes()));
        let out = child
            .wait_with_output()
            .map_err(|e| HostPortError::new("cannot run nft", e.to_string()))?;
        if let Some(Err(e)) = write {
            return Err(HostPortError::new("cannot write to nft", e.to_string()));
        }
        if !out.status.success() {
            return Err(HostPortError::new(
                format!("nft transaction on table inet {HOSTPORT_TABLE} failed"),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }

    /// `nft -j -p list table inet palisade-hostport`; `None` when the table does not exist.
    fn list_table(&self) -> Result<Option<Listing>, HostPortError> {
        let out = self
            .command()
            .args(["-j", "-p", "list", "table", "inet", HOSTPORT_TABLE])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                HostPortError::new("cannot run nft", format!("{}: {e}", self.program.display()))
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(HostPortError::new(
                format!("nft list table inet {HOSTPORT_TABLE} failed"),
                err.trim(),
            ));
        }
        Listing::parse(&String::from_utf8_lossy(&out.stdout)).map(Some)
    }

    /// Whether our table exists: one netlink question, or `nft list table` when netlink
    /// cannot be used.
    fn table_exists(&self) -> Result<bool, HostPortError> {
        let asked = self.run_in_netns(|| {
            nft_query::inet_table_exists(HOSTPORT_TABLE).map_err(element_batch::BatchError::Netlink)
        });
        match asked {
            Ok(exists) => Ok(exists),
            Err(_) => self.list_table().map(|l| l.is_some()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-attachment records
// ---------------------------------------------------------------------------------------------

/// What the plugin programmed for one attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachmentRecord {
    container_id: String,
    ifname: String,
    /// Kernel boot ID when written: nft state does not outlive a boot, records do.
    boot_id: String,
    /// Every element that may be in the kernel for this attachment.
    elements: Vec<Element>,
    /// The CNI network the attachment belongs to, when the caller said
    /// ([`HostPorts::for_network`]): GC of one network leaves the others' records alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<String>,
}

impl AttachmentRecord {
    fn owner(&self) -> String {
        format!("{}/{}", self.container_id, self.ifname)
    }
}

/// `<data_dir>/hostport/`: the lock file and one record per attachment.
struct RecordDir {
    dir: PathBuf,
    boot_id: String,
}

/// The exclusive lock on the record directory, released on drop (closing the file).
struct DirLock {
    _file: fs::File,
}

impl RecordDir {
    fn open(data_dir: &Path) -> Result<RecordDir, HostPortError> {
        let dir = data_dir.join("hostport");
        fs::create_dir_all(&dir).map_err(|e| {
            HostPortError::new(
                "cannot create hostPort state directory",
                format!("{}: {e}", dir.display()),
            )
        })?;
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Ok(RecordDir { dir, boot_id })
    }

    fn lock(&self) -> Result<DirLock, HostPortError> {
        let path = self.dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| {
                HostPortError::new(
                    "cannot open hostPort lock file",
                    format!("{}: {e}", path.display()),
                )
            })?;
        file.lock().map_err(|e| {
            HostPortError::new(
                "cannot lock hostPort state",
                format!("{}: {e}", path.display()),
            )
        })?;
        Ok(DirLock { _file: file })
    }

    fn path_of(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(record_file_name(container_id, ifname))
    }

    fn read(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<AttachmentRecord>, HostPortError> {
        read_record(&self.path_of(container_id, ifname))
    }

    /// Every record in the directory.
    fn read_all(&self) -> Result<Vec<AttachmentRecord>, HostPortError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| {
            HostPortError::new(
                "cannot list hostPort state",
                format!("{}: {e}", self.dir.display()),
            )
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "json") {
                if let Some(r) = read_record(&path)? {
                    out.push(r);
                }
            }
        }
        out.sort_by_key(AttachmentRecord::owner);
        Ok(out)
    }

    fn is_current(&self, r: &AttachmentRecord) -> bool {
        r.boot_id == self.boot_id
    }

    /// Write atomically (temp file + rename): a reader sees the old or the new record, never
    /// half of one. No fsync: the nft state the record describes does not survive a crash of
    /// the machine either, and stale records of an earlier boot are recognised by boot ID.
    fn write(&self, r: &AttachmentRecord) -> Result<(), HostPortError> {
        let path = self.path_of(&r.container_id, &r.ifname);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(r)
            .map_err(|e| HostPortError::new("cannot encode hostPort record", e.to_string()))?;
        fs::write(&tmp, body)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| {
                HostPortError::new(
                    "cannot write hostPort record",
                    format!("{}: {e}", path.display()),
                )
            })
    }

    fn remove(&self, container_id: &str, ifname: &str) -> Result<(), HostPortError> {
        let path = self.path_of(container_id, ifname);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HostPortError::new(
                "cannot remove hostPort record",
                format!("{}: {e}", path.display()),
            )),
        }
    }
}

/// The record file of one attachment, in `<data_dir>/hostport/`.
fn record_file_name(container_id: &str, ifname: &str) -> String {
    format!("{}@{}.json", escape(container_id), escape(ifname))
}

fn read_record(path: &Path) -> Result<Option<AttachmentRecord>, HostPortError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            HostPortError::new(
                "corrupt hostPort record",
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HostPortError::new(
            "cannot read hostPort record",
            format!("{}: {e}", path.display()),
        )),
    }
}

/// File-name-safe, injective encoding of a container ID or ifname (the spec allows almost any
/// character in both).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02x}");
        }
    }
    if out.starts_with('.') {
        out.replace_range(0..1, "%2e");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// hostPort operations on one node: the record directory under `data_dir` and the nft runner.
#[derive(Debug, Clone)]
pub struct HostPorts {
    data_dir: PathBuf,
    nft: NftRunner,
    network: Option<String>,
}

impl HostPorts {
    pub fn new(data_dir: &Path) -> HostPorts {
        HostPorts {
            data_dir: data_dir.to_path_buf(),
            nft: NftRunner::default(),
            network: None,
        }
    }

    /// Record attachments as belonging to CNI network `name`, and scope GC to that network.
    /// The table (and `data_dir`) are node-wide: several networks with hostPorts on one node
    /// need this, or GC of one would drop the records of the others.
    pub fn for_network(mut self, name: &str) -> HostPorts {
        self.network = Some(name.to_string());
        self
    }

    /// Use this runner (e.g. [`NftRunner::in_netns`]) instead of plain `nft`.
    #[allow(dead_code)] // the kernel tests (tests/hostport.rs) use it
    pub fn with_nft(mut self, nft: NftRunner) -> HostPorts {
        self.nft = nft;
        self
    }

    /// Program the mappings of one attachment, replacing what it had before.
    pub fn add(
        &self,
        container_id: &str,
        ifname: &str,
        pod_ips: &[IpAddr],
        mappings: &[PortMapping],
    ) -> Result<(), HostPortError> {
        let wanted = elements_for(pod_ips, mappings)?;
        if wanted.is_empty() {
            return self.del(container_id, ifname);
        }
        let records = RecordDir::open(&self.data_dir)?;
        let _lock = records.lock()?;
        let all = records.read_all()?;
        let (mine, others): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|r| r.container_id == container_id && r.ifname == ifname);
        let others: Vec<AttachmentRecord> = others
            .into_iter()
            .filter(|r| records.is_current(r))
            .collect();
        let previous: Vec<Element> = mine
            .into_iter()
            .find(|r| records.is_current(r))
            .map(|r| r.elements)
            .unwrap_or_default();

        // Refuse a host port that another attachment holds, naming the holder: the kernel
        // would refuse it too, with a far less helpful message.
        for r in &others {
            if let Some((e, _)) = wanted
                .iter()
                .flat_map(|w| r.elements.iter().map(move |e| (w, e)))
                .find(|(w, e)| w.same_key(e))
            {
                return Err(HostPortError::new(
                    "host port already in use",
                    format!("{} is held by attachment {}", e.describe(), r.owner()),
                ));
            }
        }

        // Record first: everything that may be in the kernel after the transaction, old and
        // new, so a crash before the rewrite below still lets DEL remove all of it.
        let mut record = AttachmentRecord {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            boot_id: records.boot_id.clone(),
            elements: union(&previous, &wanted),
            network: self.network.clone(),
        };
        records.write(&record)?;

        let stale: Vec<Element> = previous
            .iter()
            .filter(|e| !wanted.contains(e) && !others.iter().any(|r| r.elements.contains(e)))
            .cloned()
            .collect();
        let result = self
            .nft
            .apply_elements(&stale, &wanted)
            .map(drop)
            .or_else(|fast_err| {
                let mut everything: Vec<Element> = others
                    .iter()
                    .flat_map(|r| r.elements.iter().cloned())
                    .collect();
                everything.extend(wanted.iter().cloned());
                self.nft
                    .apply(&full_table_script(&everything))
                    .map_err(|full_err| HostPortError {
                        msg: full_err.msg,
                        details: format!(
                            "{} (the element-only update had failed first: {})",
                            full_err.details, fast_err.details
                        ),
                    })
            });
        match result {
            Ok(()) => {
                let newly_published: Vec<&Element> =
                    wanted.iter().filter(|e| !previous.contains(e)).collect();
                self.nft.forget_udp_flows(&udp_flows(&newly_published));
                if record.elements != wanted {
                    record.elements = wanted;
                    records.write(&record)?;
                }
                Ok(())
            }
            Err(e) => {
                // Nothing changed in the kernel (transactions are atomic): restore the record.
                record.elements = previous;
                if record.elements.is_empty() {
                    records.remove(container_id, ifname)?;
                } else {
                    records.write(&record)?;
                }
                Err(e)
            }
        }
    }

    /// Remove every mapping of one attachment (idempotent; removes the table with the last).
    pub fn del(&self, container_id: &str, ifname: &str) -> Result<(), HostPortError> {
        self.del_pending(container_id, ifname).map(drop)
    }

    /// [`HostPorts::del`], leaving the netlink socket that did it to the caller ([`Pending`]).
    pub fn del_pending(&self, container_id: &str, ifname: &str) -> Result<Pending, HostPortError> {
        // Most attachments have no mappings: then there is nothing to lock, create or ask
        // nftables. Looking without the lock is safe: a record is written before its elements
        // reach the kernel and removed only after they left it, so "no record now" means "no
        // element now", exactly what a DEL ordered before a concurrent ADD would find.
        let path = self
            .data_dir
            .join("hostport")
            .join(record_file_name(container_id, ifname));
        if matches!(fs::symlink_metadata(&path), Err(e) if e.kind() == ErrorKind::NotFound) {
            return Ok(Pending::default());
        }
        let records = RecordDir::open(&self.data_dir)?;
        let _lock = records.lock()?;
        let Some(mine) = records.read(container_id, ifname)? else {
            return Ok(Pending::default());
        };
        let mut pending = Pending::default();
        if records.is_current(&mine) {
            let others: Vec<AttachmentRecord> = records
                .read_all()?
                .into_iter()
                .filter(|r| records.is_current(r) && r.owner() != mine.owner())
                .collect();
            pending = self.remove_elements(&mine.elements, &others)?;
        }
        records.remove(container_id, ifname)?;
        Ok(pending)
    }

    /// Remove `elements`; `remaining` are the records that stay programmed. An element that a
    /// remaining record also holds (a hairpin entry of a pod IP that a stale record still
    /// names) stays.
    fn remove_elements(
        &self,
        elements: &[Element],
        remaining: &[AttachmentRecord],
    ) -> Result<Pending, HostPortError> {
        if remaining.iter().all(|r| r.elements.is_empty()) {
            return self.nft.delete_table();
        }
        let held = |e: &&Element| remaining.iter().any(|r| r.elements.contains(e));
        let removable: Vec<Element> = elements.iter().filter(|e| !held(e)).cloned().collect();
        self.nft.apply_elements(&removable, &[]).or_else(|_| {
            let everything: Vec<Element> = remaining
                .iter()
                .flat_map(|r| r.elements.iter().cloned())
                .collect();
            self.nft
                .apply(&full_table_script(&everything))
                .map(|()| Pending::default())
        })
    }

    /// Verify the mappings of one attachment are recorded and programmed as given.
    pub fn check(
        &self,
        container_id: &str,
        ifname: &str,
        pod_ips: &[IpAddr],
        mappings: &[PortMapping],
    ) -> Result<(), HostPortError> {
        let wanted = elements_for(pod_ips, mappings)?;
        let records = RecordDir::open(&self.data_dir)?;
        let _lock = records.lock()?;
        let recorded = records
            .read(container_id, ifname)?
            .filter(|r| records.is_current(r))
            .map(|r| r.elements)
            .unwrap_or_default();
        if wanted.is_empty() && recorded.is_empty() {
            return Ok(());
        }
        if recorded != wanted {
            return Err(HostPortError::new(
                "hostPort mappings differ from what was added",
                format!(
                    "attachment {container_id}/{ifname}: recorded [{}], expected [{}]",
                    recorded
                        .iter()
                        .map(Element::describe)
                        .collect::<Vec<_>>()
                        .join(", "),
                    wanted
                        .iter()
                        .map(Element::describe)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let Some(listing) = self.nft.list_table()? else {
            return Err(HostPortError::new(
                "hostPort table missing",
                format!("table inet {HOSTPORT_TABLE} does not exist"),
            ));
        };
        let version = Element {
            set: format!("layout_v{LAYOUT_VERSION}"),
            key: "1".into(),
            value: None,
        };
        if !listing.elements.contains(&version) {
            return Err(HostPortError::new(
                "hostPort table has an unexpected layout",
                format!("table inet {HOSTPORT_TABLE} lacks layout version {LAYOUT_VERSION}"),
            ));
        }
        for (chain, rules) in CHAINS {
            if listing.chains.get(chain) != Some(&rules) {
                return Err(HostPortError::new(
                    "hostPort table has an unexpected layout",
                    format!(
                        "chain {chain} should hold {rules} rules, found {:?}",
                        listing.chains.get(chain)
                    ),
                ));
            }
        }
        let missing: Vec<String> = wanted
            .iter()
            .filter(|e| !listing.elements.contains(e))
            .map(Element::describe)
            .collect();
        if !missing.is_empty() {
            return Err(HostPortError::new(
                "hostPort mappings missing from the kernel",
                format!("attachment {container_id}/{ifname}: {}", missing.join(", ")),
            ));
        }
        Ok(())
    }

    /// STATUS: the attachments (container ID/ifname) whose mappings are recorded as
    /// programmed in this boot while the table is gone (someone flushed the ruleset, e.g. a
    /// firewall reload): their host ports do not reach the pods until the table is rebuilt
    /// (by the next ADD with port mappings, or GC). Empty when the table exists or nothing is
    /// recorded. With [`HostPorts::for_network`], records of other networks are not counted.
    /// Changes nothing (at most it creates the lock file of an existing record directory).
    pub fn lost_mappings(&self) -> Result<Vec<String>, HostPortError> {
        if !self.data_dir.join("hostport").is_dir() {
            return Ok(Vec::new());
        }
        let records = RecordDir::open(&self.data_dir)?;
        // Under the lock: an ADD between its record write and its table creation, or a DEL
        // between its table removal and its record removal, is not mistaken for a loss.
        let _lock = records.lock()?;
        let held: Vec<String> = records
            .read_all()?
            .into_iter()
            .filter(|r| {
                records.is_current(r)
                    && !r.elements.is_empty()
                    && (self.network.is_none() || r.network.is_none() || r.network == self.network)
            })
            .map(|r| r.owner())
            .collect();
        if held.is_empty() || self.nft.table_exists()? {
            return Ok(Vec::new());
        }
        Ok(held)
    }

    /// Remove the mappings of every attachment not in `valid` ((container ID, ifname) pairs),
    /// and every element no record owns: the table is rebuilt from the remaining records in
    /// one transaction (or removed when none remain). With [`HostPorts::for_network`], records
    /// of other networks are kept whatever `valid` says.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<(), HostPortError> {
        let records = RecordDir::open(&self.data_dir)?;
        let _lock = records.lock()?;
        let (keep, drop): (Vec<_>, Vec<_>) = records.read_all()?.into_iter().partition(|r| {
            let other_network =
                self.network.is_some() && r.network.is_some() && r.network != self.network;
            records.is_current(r)
                && (other_network
                    || valid
                        .iter()
                        .any(|(c, i)| *c == r.container_id && *i == r.ifname))
        });
        let everything: Vec<Element> = keep
            .iter()
            .flat_map(|r| r.elements.iter().cloned())
            .collect();
        if everything.is_empty() {
            self.nft.apply(&delete_table_script())?;
        } else {
            self.nft.apply(&full_table_script(&everything))?;
        }
        for r in drop {
            records.remove(&r.container_id, &r.ifname)?;
        }
        Ok(())
    }
}

/// (conntrack family, host port, host IP) of the UDP map elements among `elements`.
fn udp_flows(elements: &[&Element]) -> Vec<(&'static str, u16, Option<IpAddr>)> {
    let udp = Proto::Udp.number().to_string();
    let mut out = Vec::new();
    for e in elements.iter().filter(|e| e.value.is_some()) {
        let family = if e.set.ends_with('4') { "ipv4" } else { "ipv6" };
        let parts: Vec<&str> = e.key.split(" . ").collect();
        let (host_ip, proto, port) = match parts.as_slice() {
            [proto, port] => (None, *proto, *port),
            [ip, proto, port] => (ip.parse().ok(), *proto, *port),
            _ => continue,
        };
        if proto == udp {
            if let Ok(port) = port.parse() {
                out.push((family, port, host_ip));
            }
        }
    }
    out
}

/// Element additions and deletions as one nf_tables netlink batch, byte for byte what
/// `nft -f` sends for [`fast_path_script`] (built and sent by `palisade_common::nfnetlink`,
/// which the agent's dataplane uses too); this module encodes our elements' keys and values.
mod element_batch {
    use super::{Element, HOSTPORT_TABLE, LAYOUT_VERSION};
    use palisade_common::nfnetlink::{self, ElementBatch, ElementData, SendError};
    use std::io;
    use std::net::IpAddr;
    use std::os::fd::OwnedFd;

    #[derive(Debug)]
    pub enum BatchError {
        /// Netlink could not be used at all (socket, send): try another way.
        Netlink(io::Error),
        /// The kernel refused the batch; nothing was changed.
        Refused(io::Error),
    }

    /// nft's register layout of a concatenation: each field padded to 4 bytes. Addresses and
    /// ports in network order, a protocol as one byte, the `mark` of `layout_v<N>` in host
    /// order.
    fn encode(set: &str, text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for field in text.split(" . ") {
            if let Ok(ip) = field.parse::<IpAddr>() {
                match ip {
                    IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                    IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                }
                continue;
            }
            let n: u32 = field.parse().ok()?;
            let start = out.len();
            if set.starts_with("layout_v") {
                out.extend_from_slice(&n.to_ne_bytes());
            } else if out.len() % 4 == 0 && is_proto_position(set, text, field, start) {
                out.push(u8::try_from(n).ok()?);
            } else {
                out.extend_from_slice(&u16::try_from(n).ok()?.to_be_bytes());
            }
            out.resize((out.len() + 3) & !3, 0);
        }
        Some(out)
    }

    /// In our keys a protocol comes right before the last field (`proto . port` or
    /// `ip . proto . port`); map values are `ip . port` and have none.
    fn is_proto_position(set: &str, text: &str, _field: &str, offset: usize) -> bool {
        let fields: Vec<&str> = text.split(" . ").collect();
        let ip_len = if set.ends_with('6') { 16 } else { 4 };
        match (
            set.starts_with("addr_ports"),
            set.starts_with("ports"),
            fields.len(),
        ) {
            (true, _, 3) => offset == ip_len,
            (false, true, 2) => offset == 0 && fields[0].parse::<IpAddr>().is_err(),
            _ => false,
        }
    }

    /// Adds (`add`) or deletes one element.
    fn push(b: &mut ElementBatch, add: bool, e: &Element) -> Option<()> {
        let key = encode(&e.set, &e.key)?;
        if add {
            // A map value is `ip . port`: encode as a value of the same family.
            let data = match &e.value {
                Some(v) => Some(ElementData::Value(encode("value", v)?)),
                None => None,
            };
            b.add(&e.set, &[(key, data)]);
        } else {
            b.delete(&e.set, &[key]);
        }
        Some(())
    }

    /// The batch for `fast_path_script(remove, add)`; `None` if an element cannot be encoded.
    pub fn batch(remove: &[Element], add: &[Element]) -> Option<Vec<u8>> {
        let mut b = ElementBatch::new(HOSTPORT_TABLE);
        let guard = Element {
            set: format!("layout_v{LAYOUT_VERSION}"),
            key: "1".into(),
            value: None,
        };
        push(&mut b, true, &guard)?;
        for e in remove {
            push(&mut b, true, e)?;
            push(&mut b, false, e)?;
        }
        for e in add {
            push(&mut b, true, e)?;
        }
        Some(b.finish_batch())
    }

    /// Sends the batch; the socket that sent it comes back open (see `Pending`).
    pub fn apply(remove: &[Element], add: &[Element]) -> Result<OwnedFd, BatchError> {
        let msg = batch(remove, add)
            .ok_or_else(|| BatchError::Netlink(io::Error::other("element not encodable")))?;
        send(&msg)
    }

    fn send(msg: &[u8]) -> Result<OwnedFd, BatchError> {
        let sock = nfnetlink::socket().map_err(BatchError::Netlink)?;
        nfnetlink::send_on(&sock, msg).map_err(|e| match e {
            SendError::Unavailable(e) => BatchError::Netlink(e),
            SendError::Refused(e) => BatchError::Refused(e),
        })?;
        Ok(sock)
    }

    /// `delete table inet <HOSTPORT_TABLE>` as nft sends it: one NFT_MSG_DELTABLE in a batch
    /// (everything in the table goes with it).
    pub fn delete_table_batch() -> Vec<u8> {
        const NLM_F_REQUEST: u16 = 0x1;
        const NFNL_SUBSYS_NFTABLES: u16 = 10;
        const NFT_MSG_DELTABLE: u16 = 2;
        const NFTA_TABLE_NAME: u16 = 1;
        const NFPROTO_INET: u8 = 1;
        let mut name = Vec::new();
        let payload = HOSTPORT_TABLE.len() + 1;
        name.extend_from_slice(&((4 + payload) as u16).to_ne_bytes());
        name.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
        name.extend_from_slice(HOSTPORT_TABLE.as_bytes());
        name.push(0);
        name.resize((name.len() + 3) & !3, 0);
        let mut out = Vec::new();
        // (type, family, res_id, attributes) of BATCH_BEGIN, DELTABLE, BATCH_END.
        let msgs: [(u16, u8, u16, &[u8]); 3] = [
            (0x10, 0, NFNL_SUBSYS_NFTABLES, &[]),
            (
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE,
                NFPROTO_INET,
                0,
                &name,
            ),
            (0x11, 0, NFNL_SUBSYS_NFTABLES, &[]),
        ];
        for (seq, (kind, family, res_id, attrs)) in msgs.into_iter().enumerate() {
            out.extend_from_slice(&((20 + attrs.len()) as u32).to_ne_bytes());
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
            out.extend_from_slice(&(seq as u32).to_ne_bytes());
            out.extend_from_slice(&0u32.to_ne_bytes());
            out.extend_from_slice(&[family, 0]);
            out.extend_from_slice(&res_id.to_be_bytes());
            out.extend_from_slice(attrs);
        }
        out
    }

    /// Sends [`delete_table_batch`]; the socket comes back open (see `Pending`).
    pub fn delete_table() -> Result<OwnedFd, BatchError> {
        send(&delete_table_batch())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn encodes_like_nft() {
            // From `strace nft -f` of `add element inet palisade-hostport ports4
            // { 6 . 20002 : 10.50.0.2 . 80 }`.
            assert_eq!(
                encode("ports4", "6 . 20002"),
                Some(vec![6, 0, 0, 0, 0x4e, 0x22, 0, 0])
            );
            assert_eq!(
                encode("value", "10.50.0.2 . 80"),
                Some(vec![10, 50, 0, 2, 0, 80, 0, 0])
            );
            assert_eq!(
                encode("hairpin4", "10.50.0.2 . 10.50.0.2"),
                Some(vec![10, 50, 0, 2, 10, 50, 0, 2])
            );
            assert_eq!(
                encode("addr_ports4", "192.0.2.1 . 17 . 53"),
                Some(vec![192, 0, 2, 1, 17, 0, 0, 0, 0, 53, 0, 0])
            );
            let v6 = encode("addr_ports6", "fd00::1 . 132 . 9").unwrap();
            assert_eq!(v6.len(), 24);
            assert_eq!(&v6[16..], &[132, 0, 0, 0, 0, 9, 0, 0]);
            assert_eq!(
                encode("ports6", "17 . 53"),
                Some(vec![17, 0, 0, 0, 0, 53, 0, 0])
            );
            assert_eq!(encode("layout_v1", "1"), Some(1u32.to_ne_bytes().to_vec()));
        }

        #[test]
        fn delete_table_is_one_deltable_in_a_batch() {
            let b = delete_table_batch();
            assert_eq!(
                nfnetlink::message_kinds(&b),
                Some(vec![0x10, (10 << 8) | 2, 0x11])
            );
            let name = format!("{HOSTPORT_TABLE}\0");
            assert!(b.windows(name.len()).any(|w| w == name.as_bytes()));
        }
    }
}

/// Just enough ctnetlink (linux/netfilter/nfnetlink_conntrack.h) to delete the conntrack
/// entries of UDP flows to given ports: dump the table, keep the original tuples that match,
/// delete them by tuple.
mod conntrack {
    use std::io;
    use std::net::IpAddr;
    use std::os::fd::{AsRawFd, OwnedFd};

    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_ACK: u16 = 0x4;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    /// (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET / _DELETE
    const CT_GET: u16 = 0x0101;
    const CT_DELETE: u16 = 0x0102;
    const CTA_TUPLE_ORIG: u16 = 1;
    const CTA_TUPLE_IP: u16 = 1;
    const CTA_TUPLE_PROTO: u16 = 2;
    const CTA_IP_V4_DST: u16 = 2;
    const CTA_IP_V6_DST: u16 = 4;
    const CTA_PROTO_NUM: u16 = 1;
    const CTA_PROTO_DST_PORT: u16 = 3;
    const IPPROTO_UDP: u8 = 17;

    /// A NETLINK_NETFILTER socket ([`palisade_common::nfnetlink::socket`]) with a receive
    /// timeout.
    pub(super) struct Socket(OwnedFd);

    impl Socket {
        pub(super) fn open() -> io::Result<Socket> {
            let s = Socket(palisade_common::nfnetlink::socket()?);
            let fd = s.0.as_raw_fd();
            let tv = libc::timeval {
                tv_sec: 2,
                tv_usec: 0,
            };
            // SAFETY: valid fd and option of the stated size.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            Ok(s)
        }

        pub(super) fn send(&self, msg: &[u8]) -> io::Result<()> {
            // SAFETY: sockaddr_nl is plain data; zeroed (pid 0 = the kernel) is valid.
            let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            // SAFETY: valid fd, buffer and address of the stated sizes.
            let n = unsafe {
                libc::sendto(
                    self.0.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&kernel as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        pub(super) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            // SAFETY: valid fd and buffer.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(n as usize)
        }
    }

    pub(super) fn message(
        msg_type: u16,
        flags: u16,
        family: u8,
        seq: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        let len = 16 + 4 + payload.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&msg_type.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, NFNETLINK_V0, res_id 0
        m.extend_from_slice(payload);
        m
    }

    /// (type without flag bits, payload, whole attribute) of each attribute in `buf`.
    fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
        let mut rest = buf;
        std::iter::from_fn(move || {
            if rest.len() < 4 {
                return None;
            }
            let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
            let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
            if len < 4 || len > rest.len() {
                return None;
            }
            let whole = &rest[..len];
            let payload = &rest[4..len];
            rest = &rest[((len + 3) & !3).min(rest.len())..];
            Some((kind, payload, whole))
        })
    }

    fn find(buf: &[u8], kind: u16) -> Option<&[u8]> {
        attrs(buf).find(|(k, _, _)| *k == kind).map(|(_, p, _)| p)
    }

    /// Whether an original tuple is UDP to one of `flows` ((is IPv6, port, host IP)).
    fn matches(tuple: &[u8], flows: &[(bool, u16, Option<IpAddr>)]) -> Option<bool> {
        let ip = find(tuple, CTA_TUPLE_IP)?;
        let proto = find(tuple, CTA_TUPLE_PROTO)?;
        if *find(proto, CTA_PROTO_NUM)?.first()? != IPPROTO_UDP {
            return Some(false);
        }
        let port = find(proto, CTA_PROTO_DST_PORT)?;
        let port = u16::from_be_bytes([*port.first()?, *port.get(1)?]);
        let dst: IpAddr = if let Some(a) = find(ip, CTA_IP_V4_DST) {
            <[u8; 4]>::try_from(a).ok()?.into()
        } else {
            <[u8; 16]>::try_from(find(ip, CTA_IP_V6_DST)?).ok()?.into()
        };
        Some(flows.iter().any(|(v6, p, host_ip)| {
            *p == port && *v6 == dst.is_ipv6() && host_ip.is_none_or(|h| h == dst)
        }))
    }

    /// Delete the entries of UDP flows to `flows`; returns how many were deleted.
    pub fn forget_udp_flows(flows: &[(bool, u16, Option<IpAddr>)]) -> io::Result<usize> {
        let sock = Socket::open()?;
        // AF_UNSPEC: one walk of the table returns the entries of every family.
        sock.send(&message(CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 0, 1, &[]))?;
        let mut stale: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        'dump: loop {
            let n = sock.recv(&mut buf)?;
            let mut msgs = &buf[..n];
            while msgs.len() >= 16 {
                let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap_or_default()) as usize;
                let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
                if len < 16 || len > msgs.len() {
                    break 'dump;
                }
                match kind {
                    NLMSG_DONE => break 'dump,
                    NLMSG_ERROR => {
                        let code = msgs
                            .get(16..20)
                            .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap_or_default()));
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    _ if len > 20 => {
                        let family = msgs[16];
                        if let Some((_, tuple, whole)) =
                            attrs(&msgs[20..len]).find(|(k, _, _)| *k == CTA_TUPLE_ORIG)
                        {
                            if matches(tuple, flows) == Some(true) {
                                stale.push((family, whole.to_vec()));
                            }
                        }
                    }
                    _ => {}
                }
                msgs = &msgs[((len + 3) & !3).min(msgs.len())..];
            }
        }
        let mut deleted = 0;
        for (i, (family, tuple)) in stale.iter().enumerate() {
            let seq = 2 + i as u32;
            sock.send(&message(
                CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                *family,
                seq,
                tuple,
            ))?;
            // The ack: an error message whose code is 0 (deleted) or ENOENT (already gone).
            let n = sock.recv(&mut buf)?;
            let code = buf
                .get(16..20)
                .filter(|_| n >= 20)
                .map_or(-1, |b| i32::from_ne_bytes(b.try_into().unwrap_or_default()));
            if code == 0 {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
            let mut a = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
            a.extend_from_slice(&kind.to_ne_bytes());
            a.extend_from_slice(payload);
            a.resize((a.len() + 3) & !3, 0);
            a
        }

        /// An original tuple as ctnetlink dumps it: nested IP and proto attributes.
        fn tuple(dst: [u8; 4], proto: u8, dport: u16) -> Vec<u8> {
            let ip = [attr(1, &[192, 0, 2, 9]), attr(CTA_IP_V4_DST, &dst)].concat();
            let l4 = [
                attr(CTA_PROTO_NUM, &[proto]),
                attr(2, &40000u16.to_be_bytes()),
                attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
            ]
            .concat();
            // The kernel marks nested attributes with NLA_F_NESTED (0x8000).
            [
                attr(CTA_TUPLE_IP | 0x8000, &ip),
                attr(CTA_TUPLE_PROTO | 0x8000, &l4),
            ]
            .concat()
        }

        #[test]
        fn matches_udp_tuples_by_port_family_and_host_ip() {
            let any = [(false, 53, None)];
            let on = [(false, 53, Some(IpAddr::from([10, 0, 0, 1])))];
            let v6 = [(true, 53, None)];
            assert_eq!(matches(&tuple([10, 0, 0, 1], 17, 53), &any), Some(true));
            assert_eq!(matches(&tuple([10, 0, 0, 1], 17, 54), &any), Some(false));
            assert_eq!(matches(&tuple([10, 0, 0, 1], 6, 53), &any), Some(false));
            assert_eq!(matches(&tuple([10, 0, 0, 1], 17, 53), &on), Some(true));
            assert_eq!(matches(&tuple([10, 0, 0, 2], 17, 53), &on), Some(false));
            assert_eq!(matches(&tuple([10, 0, 0, 1], 17, 53), &v6), Some(false));
            assert_eq!(matches(&[1, 2], &any), None);
        }
    }
}

/// A read-only nf_tables question over netlink: does a table exist? (`NFT_MSG_GETTABLE` for
/// one table: the kernel answers with the table, or with ENOENT.) STATUS asks it; an `nft`
/// process would cost its start-up and a fetch of the whole ruleset.
mod nft_query {
    use super::conntrack::{message, Socket};
    use std::io;

    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_ACK: u16 = 0x4;
    const NLMSG_ERROR: u16 = 2;
    /// (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE
    const GET_TABLE: u16 = (10 << 8) | 1;
    const NFTA_TABLE_NAME: u16 = 1;
    const NFPROTO_INET: u8 = 1;

    /// Whether table `inet <name>` exists in the calling thread's network namespace.
    pub fn inet_table_exists(name: &str) -> io::Result<bool> {
        let mut attr = Vec::new();
        let payload_len = name.len() + 1;
        attr.extend_from_slice(&((4 + payload_len) as u16).to_ne_bytes());
        attr.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
        attr.extend_from_slice(name.as_bytes());
        attr.push(0);
        attr.resize((attr.len() + 3) & !3, 0);
        let sock = Socket::open()?;
        sock.send(&message(
            GET_TABLE,
            NLM_F_REQUEST | NLM_F_ACK,
            NFPROTO_INET,
            1,
            &attr,
        ))?;
        // The table (NFT_MSG_NEWTABLE) and then the ack, or only an error.
        let mut buf = vec![0u8; 1 << 14];
        loop {
            let n = sock.recv(&mut buf)?;
            let mut msgs = &buf[..n];
            while msgs.len() >= 16 {
                let len = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
                let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
                if kind == NLMSG_ERROR && msgs.len() >= 20 {
                    let code = i32::from_ne_bytes([msgs[16], msgs[17], msgs[18], msgs[19]]);
                    return match -code {
                        0 => Ok(true),
                        libc::ENOENT => Ok(false),
                        errno => Err(io::Error::from_raw_os_error(errno)),
                    };
                }
                if len < 16 || len > msgs.len() {
                    break;
                }
                msgs = &msgs[((len + 3) & !3).min(msgs.len())..];
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "no answer from nf_tables",
                ));
            }
        }
    }
}

fn union(a: &[Element], b: &[Element]) -> Vec<Element> {
    a.iter()
        .chain(b)
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Remove every mapping of one attachment (idempotent).
pub fn del(data_dir: &Path, container_id: &str, ifname: &str) -> Result<(), HostPortError> {
    HostPorts::new(data_dir).del(container_id, ifname)
}

/// [`del`], leaving the netlink socket that did it to the caller ([`Pending`]).
pub fn del_pending(
    data_dir: &Path,
    container_id: &str,
    ifname: &str,
) -> Result<Pending, HostPortError> {
    HostPorts::new(data_dir).del_pending(container_id, ifname)
}

/// Verify the mappings of one attachment are programmed as given.
pub fn check(
    data_dir: &Path,
    container_id: &str,
    ifname: &str,
    pod_ips: &[IpAddr],
    mappings: &[PortMapping],
) -> Result<(), HostPortError> {
    HostPorts::new(data_dir).check(container_id, ifname, pod_ips, mappings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tcp(host_port: u16, container_port: u16) -> PortMapping {
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

    #[test]
    fn elements_cover_each_family_and_respect_host_ip_family() {
        let pod = [ip("10.244.1.5"), ip("fd00:10:244:1::5")];
        let m = [
            tcp(8080, 80),
            PortMapping {
                host_port: 53,
                container_port: 5353,
                protocol: Proto::Udp,
                host_ip: Some(ip("192.0.2.1")),
            },
            PortMapping {
                host_port: 9,
                container_port: 9,
                protocol: Proto::Sctp,
                host_ip: Some(ip("::")),
            },
        ];
        let got: Vec<String> = elements_for(&pod, &m)
            .unwrap()
            .iter()
            .map(Element::describe)
            .collect();
        assert_eq!(
            got,
            vec![
                "addr_ports4 { 192.0.2.1 . 17 . 53 : 10.244.1.5 . 5353 }",
                "hairpin4 { 10.244.1.5 . 10.244.1.5 }",
                "hairpin6 { fd00:10:244:1::5 . fd00:10:244:1::5 }",
                "ports4 { 6 . 8080 : 10.244.1.5 . 80 }",
                "ports6 { 132 . 9 : fd00:10:244:1::5 . 9 }",
                "ports6 { 6 . 8080 : fd00:10:244:1::5 . 80 }",
            ]
        );
        // A v6 host IP on a v4-only pod publishes nothing (and no hairpin entry).
        let v6_only = [PortMapping {
            host_ip: Some(ip("2001:db8::1")),
            ..tcp(1, 1)
        }];
        assert!(elements_for(&[ip("10.0.0.1")], &v6_only)
            .unwrap()
            .is_empty());
        // Only the first IP of a family is published.
        let two = elements_for(&[ip("10.0.0.1"), ip("10.0.0.2")], &[tcp(1, 1)]).unwrap();
        assert_eq!(two.len(), 2);
    }

    #[test]
    fn unspecified_host_ip_and_no_host_ip_collide_on_the_same_port() {
        let m = [
            tcp(80, 80),
            PortMapping {
                host_ip: Some(ip("0.0.0.0")),
                ..tcp(80, 81)
            },
        ];
        let e = elements_for(&[ip("10.0.0.1")], &m).unwrap_err();
        assert!(e.details.contains("same host port"), "{e}");
    }

    #[test]
    fn fast_path_guards_the_layout_and_removes_by_add_then_delete() {
        let old = elements_for(&[ip("10.0.0.1")], &[tcp(80, 80)]).unwrap();
        let script = fast_path_script(&old[..1], &[]);
        assert_eq!(
            script,
            "add element inet palisade-hostport layout_v1 { 1 }\n\
             add element inet palisade-hostport hairpin4 { 10.0.0.1 . 10.0.0.1 }\n\
             delete element inet palisade-hostport hairpin4 { 10.0.0.1 . 10.0.0.1 }\n"
        );
    }

    #[test]
    fn full_table_replaces_whatever_was_there_and_declares_every_chain() {
        let s = full_table_script(&[]);
        assert!(s.starts_with(
            "add table inet palisade-hostport\ndelete table inet palisade-hostport\n"
        ));
        for (chain, rules) in CHAINS {
            assert!(
                s.contains(&format!("add chain inet palisade-hostport {chain}")),
                "{chain}"
            );
            let n = s
                .lines()
                .filter(|l| l.starts_with(&format!("add rule inet palisade-hostport {chain} ")))
                .count();
            assert_eq!(n, rules, "{chain}");
        }
    }

    #[test]
    fn listing_parses_nft_json_into_the_same_element_text() {
        // Trimmed `nft -j -p list table inet palisade-hostport` output from nft 1.0.6.
        let json = r#"{"nftables":[{"metainfo":{"version":"1.0.6","json_schema_version":1}},
          {"table":{"family":"inet","name":"palisade-hostport","handle":3}},
          {"set":{"family":"inet","name":"layout_v1","table":"palisade-hostport","type":"mark","handle":1,"elem":[1]}},
          {"map":{"family":"inet","name":"ports4","table":"palisade-hostport","type":["inet_proto","inet_service"],"handle":2,"map":"ipv4_addr . inet_service",
             "elem":[[{"concat":[6,8080]},{"concat":["10.244.1.5",80]}]]}},
          {"map":{"family":"inet","name":"ports6","table":"palisade-hostport","type":["inet_proto","inet_service"],"handle":4,"map":"ipv6_addr . inet_service"}},
          {"set":{"family":"inet","name":"hairpin4","table":"palisade-hostport","type":["ipv4_addr","ipv4_addr"],"handle":6,
             "elem":[{"concat":["10.244.1.5","10.244.1.5"]}]}},
          {"chain":{"family":"inet","table":"palisade-hostport","name":"hostports","handle":7}},
          {"chain":{"family":"inet","table":"palisade-hostport","name":"output","handle":9,"type":"nat","hook":"output","prio":-100,"policy":"accept"}},
          {"rule":{"family":"inet","table":"palisade-hostport","chain":"hostports","handle":10,"expr":[]}}]}"#;
        let l = Listing::parse(json).unwrap();
        let mut want: BTreeSet<Element> = elements_for(&[ip("10.244.1.5")], &[tcp(8080, 80)])
            .unwrap()
            .into_iter()
            .collect();
        want.insert(Element {
            set: "layout_v1".into(),
            key: "1".into(),
            value: None,
        });
        assert_eq!(l.elements, want);
        assert_eq!(
            l.chains,
            BTreeMap::from([("hostports".to_string(), 1), ("output".to_string(), 0)])
        );
    }

    #[test]
    fn udp_flows_to_forget_are_the_udp_map_elements() {
        let dns = PortMapping {
            host_port: 53,
            container_port: 53,
            protocol: Proto::Udp,
            host_ip: None,
        };
        let m = [
            tcp(80, 80),
            dns.clone(),
            PortMapping {
                host_port: 54,
                host_ip: Some(ip("192.0.2.1")),
                ..dns
            },
        ];
        let e = elements_for(&[ip("10.0.0.1"), ip("fd00::1")], &m).unwrap();
        let refs: Vec<&Element> = e.iter().collect();
        assert_eq!(
            udp_flows(&refs),
            vec![
                ("ipv4", 54, Some(ip("192.0.2.1"))),
                ("ipv4", 53, None),
                ("ipv6", 53, None)
            ]
        );
    }

    #[test]
    fn record_file_names_are_safe_and_distinct() {
        assert_eq!(escape("abc-123_x.y"), "abc-123_x.y");
        assert_eq!(escape("../etc"), "%2e.%2fetc");
        assert_ne!(escape("a/b"), escape("a%2fb"));
        let d = RecordDir {
            dir: PathBuf::from("/x"),
            boot_id: String::new(),
        };
        assert_ne!(d.path_of("a@b", "c"), d.path_of("a", "b@c"));
    }

    #[test]
    fn records_round_trip_and_survive_concurrent_writers_atomically() {
        let dir =
            std::env::temp_dir().join(format!("palisade-hostport-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let records = RecordDir::open(&dir).unwrap();
        let r = AttachmentRecord {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            boot_id: records.boot_id.clone(),
            elements: elements_for(&[ip("10.0.0.1")], &[tcp(80, 80)]).unwrap(),
            network: Some("net-a".into()),
        };
        {
            let _l = records.lock().unwrap();
            records.write(&r).unwrap();
        }
        assert_eq!(records.read("c1", "eth0").unwrap(), Some(r.clone()));
        assert_eq!(records.read_all().unwrap(), vec![r]);
        records.remove("c1", "eth0").unwrap();
        records.remove("c1", "eth0").unwrap();
        assert_eq!(records.read_all().unwrap(), vec![]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
