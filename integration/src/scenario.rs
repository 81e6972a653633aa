//! Scenario files (`/work/shared/scenario-format.md`, format_version 1): parsing, template
//! substitution in policies, and the expected reachability matrices.
//!
//! Pure on purpose: the only I/O is [`Scenario::from_file`] reading one file. The netns
//! runner, `palisadectl` tests and the offline reference evaluator all read scenarios through
//! this module, so they agree on what a file means.
//!
//! Unknown top-level and per-step fields are ignored (files carry provenance notes), but a
//! step with an unknown `action`, or with both or neither of `action` and `probe`, is an error:
//! a typo there would silently drop a check.

use crate::matrix::Matrix;
pub use palisade_policy::model::policy::PolicyKind;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Labels of a pod or namespace, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// The label every namespace carries and that cannot be removed.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A parsed scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub id: String,
    pub title: String,
    pub kind: ScenarioKind,
    /// Cells pod → itself are reported but never fail.
    pub ignore_loopback: bool,
    pub model: Model,
    pub steps: Vec<Step>,
    /// Per-scenario settings of the cluster (`cluster:`).
    pub cluster: ClusterSettings,
    /// The file it was read from, for messages.
    pub source: Option<PathBuf>,
}

/// The `cluster:` section: how the cluster the scenario runs on is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Pod traffic leaving the pod CIDRs is masqueraded to the node's address (default).
    pub masquerade: bool,
}

impl Default for ClusterSettings {
    fn default() -> ClusterSettings {
        ClusterSettings { masquerade: true }
    }
}

/// How a probe matrix names the external host (a destination only).
pub const EXTERNAL: &str = "external";

/// Where a probe goes: a pod, or the cluster's external host (a namespace on the nodes'
/// network that is not a node, with no route to any pod CIDR).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    Pod(PodRef),
    External,
}

impl Destination {
    pub fn parse(s: &str) -> Result<Destination, ScenarioError> {
        if s == EXTERNAL {
            Ok(Destination::External)
        } else {
            PodRef::parse(s).map(Destination::Pod)
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Pod(p) => p.fmt(f),
            Destination::External => f.write_str(EXTERNAL),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScenarioKind {
    #[default]
    Reachability,
    /// Only `apply_policy` steps with `expect`: which objects the API accepts.
    ApiValidation,
}

/// The cluster the scenario starts from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Model {
    pub namespaces: Vec<NamespaceSpec>,
    pub pods: Vec<PodSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceSpec {
    pub name: String,
    /// Labels as written; [`NamespaceSpec::effective_labels`] adds the name label.
    pub labels: Labels,
}

impl NamespaceSpec {
    /// The labels the API server stores: always including `kubernetes.io/metadata.name`.
    pub fn effective_labels(&self) -> Labels {
        let mut labels = self.labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), self.name.clone());
        labels
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    /// 1-based node number; `None` = spread round-robin by the runner.
    pub node: Option<usize>,
    pub labels: Labels,
    pub ports: Vec<PortSpec>,
}

impl PodSpec {
    pub fn key(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// One listener of a pod, declared on its main container or on a sidecar init container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    pub container: ContainerKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainerKind {
    #[default]
    Main,
    /// An init container with `restartPolicy: Always` (a sidecar): its named ports count.
    InitSidecar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `namespace/name` of a pod, as scenario files write it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn parse(s: &str) -> Result<PodRef, ScenarioError> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(PodRef {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(ScenarioError::Invalid(format!(
                "pod reference {s:?} is not namespace/name"
            ))),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How `apply_policy` writes: both upsert by namespace/name; `Update` replaces the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApplyMode {
    #[default]
    Create,
    Update,
}

/// What the API must answer to an `apply_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Accepted,
    Rejected,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    ApplyPolicy {
        mode: ApplyMode,
        /// `None`: the policy must be accepted (the scenario cannot go on otherwise), but the
        /// file did not say so explicitly.
        expect: Option<Expect>,
        /// The NetworkPolicy or ClusterNetworkPolicy as written, templates not yet
        /// substituted ([`policy_kind`] tells which).
        policy: Value,
        note: Option<String>,
    },
    DeletePolicy {
        kind: PolicyKind,
        /// Empty for a ClusterNetworkPolicy (cluster-scoped).
        namespace: String,
        name: String,
    },
    UpdatePodLabels {
        pod: PodRef,
        change: LabelChange,
    },
    UpdateNamespaceLabels {
        namespace: String,
        change: LabelChange,
    },
    CreatePod {
        pod: PodSpec,
    },
    DeletePod {
        pod: PodRef,
    },
    Probe(Probe),
}

impl Step {
    /// A short description for progress lines and error messages.
    pub fn describe(&self) -> String {
        match self {
            Step::ApplyPolicy {
                mode,
                expect,
                policy,
                ..
            } => {
                let meta = &policy["metadata"];
                let name = meta["name"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| meta["generateName"].as_str().map(|g| format!("{g}*")))
                    .unwrap_or_else(|| "?".into());
                let ns = match policy_kind(policy) {
                    PolicyKind::NetworkPolicy => meta["namespace"].as_str().unwrap_or("?"),
                    PolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
                };
                let mode = match mode {
                    ApplyMode::Create => "create",
                    ApplyMode::Update => "update",
                };
                let expect = match expect {
                    Some(Expect::Rejected) => " (expect rejected)",
                    Some(Expect::Accepted) => " (expect accepted)",
                    None => "",
                };
                format!("apply_policy {mode} {ns}/{name}{expect}")
            }
            Step::DeletePolicy {
                kind: PolicyKind::NetworkPolicy,
                namespace,
                name,
            } => format!("delete_policy {namespace}/{name}"),
            Step::DeletePolicy { name, .. } => {
                format!("delete_policy ClusterNetworkPolicy/{name}")
            }
            Step::UpdatePodLabels { pod, change } => {
                format!("update_pod_labels {pod} {}", change.describe())
            }
            Step::UpdateNamespaceLabels { namespace, change } => {
                format!("update_namespace_labels {namespace} {}", change.describe())
            }
            Step::CreatePod { pod } => format!("create_pod {}", pod.key()),
            Step::DeletePod { pod } => format!("delete_pod {pod}"),
            Step::Probe(p) => format!("probe {}/{}", p.protocol, p.port),
        }
    }
}

/// Which kind an `apply_policy` object is: its `kind` (absent: NetworkPolicy, as the format
/// had only that kind at first).
pub fn policy_kind(policy: &Value) -> PolicyKind {
    match policy["kind"].as_str() {
        Some("ClusterNetworkPolicy") => PolicyKind::ClusterNetworkPolicy,
        _ => PolicyKind::NetworkPolicy,
    }
}

/// A label change: `replace` (if given) sets the whole set first, then `merge` adds or
/// overwrites keys, then `remove` deletes keys.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabelChange {
    pub replace: Option<Labels>,
    pub merge: Labels,
    pub remove: Vec<String>,
}

impl LabelChange {
    /// The labels after the change.
    pub fn apply_to(&self, current: &Labels) -> Labels {
        let mut labels = self.replace.clone().unwrap_or_else(|| current.clone());
        for (k, v) in &self.merge {
            labels.insert(k.clone(), v.clone());
        }
        for k in &self.remove {
            labels.remove(k);
        }
        labels
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.replace {
            parts.push(format!("replace {}", fmt_labels(r)));
        }
        if !self.merge.is_empty() {
            parts.push(format!("merge {}", fmt_labels(&self.merge)));
        }
        if !self.remove.is_empty() {
            parts.push(format!("remove [{}]", self.remove.join(",")));
        }
        parts.join(" ")
    }
}

/// `{a: 1, b: 2}` → `{a=1,b=2}`.
pub fn fmt_labels(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// A probe step: the expected reachability on one port and protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub protocol: Protocol,
    pub port: u16,
    /// Only the listed cells are compared.
    pub expected: Matrix,
}

#[derive(Debug)]
pub enum ScenarioError {
    Read(PathBuf, std::io::Error),
    Yaml(String),
    Invalid(String),
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScenarioError::Read(p, e) => write!(f, "read {}: {e}", p.display()),
            ScenarioError::Yaml(e) => write!(f, "YAML: {e}"),
            ScenarioError::Invalid(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ScenarioError {}

impl Scenario {
    /// Read and parse one scenario file.
    pub fn from_file(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError::Read(path.to_path_buf(), e))?;
        let mut s = Scenario::parse(&text)
            .map_err(|e| ScenarioError::Invalid(format!("{}: {e}", path.display())))?;
        s.source = Some(path.to_path_buf());
        Ok(s)
    }

    /// Parse a scenario from YAML text.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        // YAML 1.2 booleans only: under YAML 1.1 rules the namespace `y` or `n` of a policy
        // (parsed schemaless, as JSON) would turn into `true`/`false`.
        let mut options = serde_saphyr::Options::default();
        options.strict_booleans = true;
        let raw: RawScenario = serde_saphyr::from_str_with_options(text, options)
            .map_err(|e| ScenarioError::Yaml(e.to_string()))?;
        raw.into_scenario()
    }

    /// Whether a probe goes to the external host or a policy names its address.
    pub fn uses_external_host(&self) -> bool {
        self.steps.iter().any(|s| match s {
            Step::Probe(p) => p.expected.destinations().iter().any(|d| d == EXTERNAL),
            Step::ApplyPolicy { policy, .. } => policy.to_string().contains("externalCIDR"),
            _ => false,
        })
    }

    /// Every port (and protocol) some pod of the scenario serves, each once: what the
    /// external host listens on.
    pub fn served_ports(&self) -> Vec<(u16, Protocol)> {
        let created = self.steps.iter().filter_map(|s| match s {
            Step::CreatePod { pod } => Some(pod),
            _ => None,
        });
        let mut out: Vec<(u16, Protocol)> = self
            .model
            .pods
            .iter()
            .chain(created)
            .flat_map(|p| p.ports.iter().map(|q| (q.port, q.protocol)))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every pod that exists at some point (model pods, then created pods), in order of
    /// first appearance: the rows and columns a full matrix would have.
    pub fn all_pods(&self) -> Vec<PodRef> {
        let mut out: Vec<PodRef> = self.model.pods.iter().map(PodSpec::key).collect();
        for s in &self.steps {
            if let Step::CreatePod { pod } = s {
                if !out.contains(&pod.key()) {
                    out.push(pod.key());
                }
            }
        }
        out
    }
}

// ---- templates -------------------------------------------------------------------------

/// The address family a run probes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "v4" | "ipv4" | "4" => Some(Family::V4),
            "v6" | "ipv6" | "6" => Some(Family::V6),
            _ => None,
        }
    }

    pub fn matches(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }

    pub fn max_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        })
    }
}

/// What templates are filled in from: the running pods' IPs and the external host's address,
/// both in the probed family.
pub struct Addresses<'a> {
    pub pod_ip: &'a dyn Fn(&PodRef) -> Option<IpAddr>,
    /// `None`: this run has no external host.
    pub external: Option<IpAddr>,
}

/// Substitute `{{ podIP ns/pod }}`, `{{ podHostCIDR ns/pod }}`, `{{ podCIDR ns/pod N }}` and
/// `{{ externalCIDR }}` in every string of `value` (object keys are left alone).
pub fn substitute_templates(value: &Value, addrs: &Addresses<'_>) -> Result<Value, ScenarioError> {
    Ok(match value {
        Value::String(s) => Value::String(substitute_in_str(s, addrs)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute_templates(v, addrs))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                out.insert(k.clone(), substitute_templates(v, addrs)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// Substitute the templates in one string.
pub fn substitute_in_str(s: &str, addrs: &Addresses<'_>) -> Result<String, ScenarioError> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| ScenarioError::Invalid(format!("unterminated template in {s:?}")))?;
        out.push_str(&expand_template(after[..end].trim(), addrs)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn expand_template(body: &str, addrs: &Addresses<'_>) -> Result<String, ScenarioError> {
    let words: Vec<&str> = body.split_whitespace().collect();
    let ip_of = |r: &str| -> Result<IpAddr, ScenarioError> {
        let pod = PodRef::parse(r)?;
        (addrs.pod_ip)(&pod).ok_or_else(|| {
            ScenarioError::Invalid(format!("template {{{{ {body} }}}}: pod {pod} has no IP"))
        })
    };
    let host_cidr = |ip: IpAddr| format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 });
    match words.as_slice() {
        ["podIP", pod] => Ok(ip_of(pod)?.to_string()),
        ["podHostCIDR", pod] => Ok(host_cidr(ip_of(pod)?)),
        ["externalCIDR"] => addrs.external.map(host_cidr).ok_or_else(|| {
            ScenarioError::Invalid(format!(
                "template {{{{ {body} }}}}: this run has no external host"
            ))
        }),
        ["podCIDR", pod, len] => {
            let ip = ip_of(pod)?;
            let len: u8 = len.parse().map_err(|_| {
                ScenarioError::Invalid(format!("template {{{{ {body} }}}}: bad prefix length"))
            })?;
            let net = network_of(ip, len).ok_or_else(|| {
                ScenarioError::Invalid(format!(
                    "template {{{{ {body} }}}}: prefix length {len} too long for {ip}"
                ))
            })?;
            Ok(format!("{net}/{len}"))
        }
        _ => Err(ScenarioError::Invalid(format!(
            "unknown template {{{{ {body} }}}}"
        ))),
    }
}

/// The network address of the prefix of length `len` that contains `ip`.
pub fn network_of(ip: IpAddr, len: u8) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            Some(IpAddr::V4((u32::from(v4) & mask).into()))
        }
        IpAddr::V6(v6) if len <= 128 => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            Some(IpAddr::V6((u128::from(v6) & mask).into()))
        }
        _ => None,
    }
}

// ---- raw YAML shapes ---------------------------------------------------------------------

#[derive(Deserialize)]
struct RawScenario {
    id: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    ignore_loopback: Option<bool>,
    #[serde(default)]
    model: Option<RawModel>,
    #[serde(default)]
    steps: Option<Vec<RawStep>>,
    #[serde(default)]
    cluster: Option<RawCluster>,
}

#[derive(Deserialize)]
struct RawCluster {
    #[serde(default)]
    masquerade: Option<bool>,
}

#[derive(Deserialize, Default)]
struct RawModel {
    #[serde(default)]
    namespaces: Option<Vec<RawNamespace>>,
    #[serde(default)]
    pods: Option<Vec<RawPod>>,
}

#[derive(Deserialize)]
struct RawNamespace {
    name: String,
    #[serde(default, deserialize_with = "labels_opt")]
    labels: Option<Labels>,
}

#[derive(Deserialize)]
struct RawPod {
    namespace: String,
    name: String,
    #[serde(default)]
    node: Option<usize>,
    #[serde(default, deserialize_with = "labels_opt")]
    labels: Option<Labels>,
    #[serde(default)]
    ports: Option<Vec<RawPort>>,
}

#[derive(Deserialize)]
struct RawPort {
    #[serde(default)]
    name: Option<String>,
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    container: Option<String>,
}

#[derive(Deserialize)]
struct RawStep {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    probe: Option<RawProbe>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    expect: Option<String>,
    #[serde(default)]
    policy: Option<Value>,
    #[serde(default)]
    note: Option<String>,
    /// `delete_policy`: `ClusterNetworkPolicy`, or absent for a NetworkPolicy.
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// `ns/name` for update_pod_labels / delete_pod, an object for create_pod.
    #[serde(default)]
    pod: Option<Value>,
    #[serde(default, deserialize_with = "labels_opt")]
    merge: Option<Labels>,
    #[serde(default)]
    remove: Option<Vec<String>>,
    #[serde(default, deserialize_with = "labels_opt")]
    replace: Option<Labels>,
}

#[derive(Deserialize)]
struct RawProbe {
    #[serde(default)]
    protocol: Option<String>,
    port: u16,
    matrix: OrderedMap<OrderedMap<bool>>,
}

/// A YAML mapping with its key order kept (matrices print in the order they were written).
struct OrderedMap<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

/// Labels whose values may be written unquoted (`version: 2`, `canary: true`): a label value
/// is always a string in the API, so scalars are turned into their YAML spelling.
fn labels_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Labels>, D::Error> {
    let v: Option<Value> = Option::deserialize(d)?;
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => labels_from_value(&v).map(Some).map_err(de::Error::custom),
    }
}

fn labels_from_value(v: &Value) -> Result<Labels, String> {
    let Value::Object(map) = v else {
        return Err(format!("labels must be a mapping, got {v}"));
    };
    map.iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                other => return Err(format!("label {k}: value {other} is not a scalar")),
            };
            Ok((k.clone(), s))
        })
        .collect()
}

fn invalid(msg: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid(msg.into())
}

impl RawScenario {
    fn into_scenario(self) -> Result<Scenario, ScenarioError> {
        let id = self.id.ok_or_else(|| invalid("missing `id`"))?;
        let kind = match self.kind.as_deref() {
            None | Some("reachability") => ScenarioKind::Reachability,
            Some("api-validation") => ScenarioKind::ApiValidation,
            Some(other) => return Err(invalid(format!("unknown kind {other:?}"))),
        };
        let raw_model = self.model.unwrap_or_default();
        let mut model = Model::default();
        for ns in raw_model.namespaces.unwrap_or_default() {
            if model.namespaces.iter().any(|n| n.name == ns.name) {
                return Err(invalid(format!("namespace {} declared twice", ns.name)));
            }
            model.namespaces.push(NamespaceSpec {
                name: ns.name,
                labels: ns.labels.unwrap_or_default(),
            });
        }
        for p in raw_model.pods.unwrap_or_default() {
            let pod = p.into_pod()?;
            if model.pods.iter().any(|q| q.key() == pod.key()) {
                return Err(invalid(format!("pod {} declared twice", pod.key())));
            }
            model.pods.push(pod);
        }
        let mut steps = Vec::new();
        for (i, s) in self.steps.unwrap_or_default().into_iter().enumerate() {
            steps.push(
                s.into_step()
                    .map_err(|e| invalid(format!("step {}: {e}", i + 1)))?,
            );
        }
        if kind == ScenarioKind::ApiValidation {
            for (i, s) in steps.iter().enumerate() {
                if !matches!(
                    s,
                    Step::ApplyPolicy {
                        expect: Some(_),
                        ..
                    }
                ) {
                    return Err(invalid(format!(
                        "step {}: api-validation scenarios have only apply_policy steps with expect",
                        i + 1
                    )));
                }
            }
        }
        Ok(Scenario {
            title: self.title.unwrap_or_else(|| id.clone()),
            id,
            kind,
            ignore_loopback: self.ignore_loopback.unwrap_or(false),
            model,
            steps,
            cluster: ClusterSettings {
                masquerade: self
                    .cluster
                    .and_then(|c| c.masquerade)
                    .unwrap_or(ClusterSettings::default().masquerade),
            },
            source: None,
        })
    }
}

impl RawPod {
    fn into_pod(self) -> Result<PodSpec, ScenarioError> {
        let mut ports = Vec::new();
        for p in self.ports.unwrap_or_default() {
            let protocol = match p.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(s) => Protocol::parse(s).ok_or_else(|| {
                    invalid(format!(
                        "pod {}/{}: protocol {s:?}",
                        self.namespace, self.name
                    ))
                })?,
            };
            let container = match p.container.as_deref() {
                None | Some("main") => ContainerKind::Main,
                Some("init-sidecar") => ContainerKind::InitSidecar,
                Some(other) => {
                    return Err(invalid(format!(
                        "pod {}/{}: unknown container {other:?} (main or init-sidecar)",
                        self.namespace, self.name
                    )))
                }
            };
            if p.port == 0 {
                return Err(invalid(format!(
                    "pod {}/{}: port 0",
                    self.namespace, self.name
                )));
            }
            ports.push(PortSpec {
                name: p.name,
                port: p.port,
                protocol,
                container,
            });
        }
        if self.node == Some(0) {
            return Err(invalid(format!(
                "pod {}/{}: node numbers start at 1",
                self.namespace, self.name
            )));
        }
        Ok(PodSpec {
            namespace: self.namespace,
            name: self.name,
            node: self.node,
            labels: self.labels.unwrap_or_default(),
            ports,
        })
    }
}

impl RawStep {
    fn into_step(self) -> Result<Step, ScenarioError> {
        match (self.action.as_deref(), self.probe) {
            (Some(_), Some(_)) => Err(invalid("a step has either `action` or `probe`, not both")),
            (None, None) => Err(invalid("a step needs `action` or `probe`")),
            (None, Some(p)) => {
                let protocol = match p.protocol.as_deref() {
                    None => Protocol::Tcp,
                    Some(s) => Protocol::parse(s)
                        .ok_or_else(|| invalid(format!("probe protocol {s:?}")))?,
                };
                let mut expected = Matrix::default();
                for (src, row) in p.matrix.0 {
                    if src == EXTERNAL {
                        return Err(invalid("`external` is a probe destination only"));
                    }
                    PodRef::parse(&src)?;
                    for (dst, allowed) in row.0 {
                        Destination::parse(&dst)?;
                        expected.set(&src, &dst, allowed);
                    }
                }
                Ok(Step::Probe(Probe {
                    protocol,
                    port: p.port,
                    expected,
                }))
            }
            (Some(action), None) => {
                let pod_ref = |v: &Option<Value>| -> Result<PodRef, ScenarioError> {
                    match v {
                        Some(Value::String(s)) => PodRef::parse(s),
                        _ => Err(invalid(format!(
                            "{action}: `pod` must be \"namespace/name\""
                        ))),
                    }
                };
                match action {
                    "apply_policy" => {
                        let mode = match self.mode.as_deref() {
                            None | Some("create") => ApplyMode::Create,
                            Some("update") => ApplyMode::Update,
                            Some(o) => return Err(invalid(format!("apply_policy: mode {o:?}"))),
                        };
                        let expect = match self.expect.as_deref() {
                            None => None,
                            Some("accepted") => Some(Expect::Accepted),
                            Some("rejected") => Some(Expect::Rejected),
                            Some(o) => return Err(invalid(format!("apply_policy: expect {o:?}"))),
                        };
                        let policy = self
                            .policy
                            .ok_or_else(|| invalid("apply_policy without `policy`"))?;
                        if !policy.is_object() {
                            return Err(invalid("apply_policy: `policy` is not a mapping"));
                        }
                        Ok(Step::ApplyPolicy {
                            mode,
                            expect,
                            policy,
                            note: self.note,
                        })
                    }
                    "delete_policy" => {
                        let name = self
                            .name
                            .ok_or_else(|| invalid("delete_policy without `name`"))?;
                        match self.kind.as_deref() {
                            None | Some("NetworkPolicy") => Ok(Step::DeletePolicy {
                                kind: PolicyKind::NetworkPolicy,
                                namespace: self
                                    .namespace
                                    .ok_or_else(|| invalid("delete_policy without `namespace`"))?,
                                name,
                            }),
                            Some("ClusterNetworkPolicy") => Ok(Step::DeletePolicy {
                                kind: PolicyKind::ClusterNetworkPolicy,
                                namespace: String::new(),
                                name,
                            }),
                            Some(other) => Err(invalid(format!("delete_policy: kind {other:?}"))),
                        }
                    }
                    "update_pod_labels" => Ok(Step::UpdatePodLabels {
                        pod: pod_ref(&self.pod)?,
                        change: LabelChange {
                            replace: self.replace,
                            merge: self.merge.unwrap_or_default(),
                            remove: self.remove.unwrap_or_default(),
                        },
                    }),
                    "update_namespace_labels" => {
                        if self.replace.is_some() {
                            return Err(invalid(
                                "update_namespace_labels takes merge and remove, not replace",
                            ));
                        }
                        Ok(Step::UpdateNamespaceLabels {
                            namespace: self.namespace.ok_or_else(|| {
                                invalid("update_namespace_labels without `namespace`")
                            })?,
                            change: LabelChange {
                                replace: None,
                                merge: self.merge.unwrap_or_default(),
                                remove: self.remove.unwrap_or_default(),
                            },
                        })
                    }
                    "create_pod" => {
                        let v = self
                            .pod
                            .ok_or_else(|| invalid("create_pod without `pod`"))?;
                        let raw: RawPod = serde_json::from_value(v)
                            .map_err(|e| invalid(format!("create_pod: {e}")))?;
                        Ok(Step::CreatePod {
                            pod: raw.into_pod()?,
                        })
                    }
                    "delete_pod" => Ok(Step::DeletePod {
                        pod: pod_ref(&self.pod)?,
                    }),
                    other => Err(invalid(format!("unknown action {other:?}"))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
# comment
id: t1
title: a test
kind: reachability
ignore_loopback: true
generator: {tool: x}
model:
  namespaces:
  - {name: x, labels: {kubernetes.io/metadata.name: x, team: a, version: 2}}
  - name: y
  pods:
  - namespace: x
    name: a
    node: 2
    labels: {pod: a}
    ports:
    - {name: serve-80-tcp, port: 80, protocol: TCP}
    - {name: dns, port: 53, protocol: UDP}
    - {name: web, port: 8080, protocol: TCP, container: init-sidecar}
  - namespace: y
    name: b
    ports:
    - {port: 80}
steps:
- action: apply_policy
  mode: update
  expect: accepted
  policy:
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: p, namespace: y}
    spec:
      podSelector: {}
      ingress:
      - from:
        - ipBlock: {cidr: '{{ podCIDR y/b 8 }}', except: ['{{podHostCIDR y/b}}']}
- {action: delete_policy, namespace: x, name: p}
- {action: update_pod_labels, pod: x/a, merge: {app: web}, remove: [pod]}
- {action: update_namespace_labels, namespace: y, merge: {team: b}}
- action: create_pod
  pod: {namespace: y, name: c, labels: {pod: c}, ports: [{port: 81, protocol: SCTP}]}
- {action: delete_pod, pod: y/c, extra: ignored}
- probe:
    protocol: UDP
    port: 53
    built_from: {default: true}
    matrix:
      y/b: {x/a: false, y/b: true}
      x/a: {y/b: true}
"#;

    #[test]
    fn parses_every_step_kind_and_keeps_matrix_order() {
        let s = Scenario::parse(SAMPLE).unwrap();
        assert_eq!(s.id, "t1");
        assert!(s.ignore_loopback);
        assert_eq!(s.model.namespaces[0].labels["version"], "2");
        assert_eq!(
            s.model.namespaces[1].effective_labels()[NAMESPACE_NAME_LABEL],
            "y"
        );
        let a = &s.model.pods[0];
        assert_eq!(a.node, Some(2));
        assert_eq!(a.ports[2].container, ContainerKind::InitSidecar);
        assert_eq!(s.model.pods[1].ports[0].protocol, Protocol::Tcp);
        assert_eq!(s.steps.len(), 7);
        let Step::ApplyPolicy { policy, .. } = &s.steps[0] else {
            panic!()
        };
        // `y` is a string in YAML 1.2 (a boolean in 1.1).
        assert_eq!(policy["metadata"]["namespace"], "y");
        assert!(matches!(
            s.steps[0],
            Step::ApplyPolicy {
                mode: ApplyMode::Update,
                expect: Some(Expect::Accepted),
                ..
            }
        ));
        let Step::UpdatePodLabels { change, .. } = &s.steps[2] else {
            panic!()
        };
        let mut cur = Labels::new();
        cur.insert("pod".into(), "a".into());
        let after = change.apply_to(&cur);
        assert_eq!(after.len(), 1);
        assert_eq!(after["app"], "web");
        let Step::CreatePod { pod } = &s.steps[4] else {
            panic!()
        };
        assert_eq!(pod.ports[0].protocol, Protocol::Sctp);
        let Step::Probe(p) = &s.steps[6] else {
            panic!()
        };
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.expected.sources(), ["y/b", "x/a"]);
        assert_eq!(p.expected.destinations(), ["x/a", "y/b"]);
        assert_eq!(p.expected.get("y/b", "x/a"), Some(false));
        assert_eq!(p.expected.get("x/a", "x/a"), None);
        assert_eq!(s.all_pods().len(), 3);
    }

    #[test]
    fn templates_substitute_per_family() {
        let s = Scenario::parse(SAMPLE).unwrap();
        let Step::ApplyPolicy { policy, .. } = &s.steps[0] else {
            panic!()
        };
        let v4_pods = |p: &PodRef| (p.name == "b").then(|| "10.244.2.7".parse().unwrap());
        let v4 = Addresses {
            pod_ip: &v4_pods,
            external: Some("192.0.2.253".parse().unwrap()),
        };
        let out = substitute_templates(policy, &v4).unwrap();
        let block = &out["spec"]["ingress"][0]["from"][0]["ipBlock"];
        assert_eq!(block["cidr"], "10.0.0.0/8");
        assert_eq!(block["except"][0], "10.244.2.7/32");
        let v6_pods = |_: &PodRef| Some("fd00:10:244:2::7".parse().unwrap());
        let v6 = Addresses {
            pod_ip: &v6_pods,
            external: Some("2001:db8::fd".parse().unwrap()),
        };
        let out = substitute_templates(policy, &v6).unwrap();
        let block = &out["spec"]["ingress"][0]["from"][0]["ipBlock"];
        assert_eq!(block["cidr"], "fd00::/8");
        assert_eq!(block["except"][0], "fd00:10:244:2::7/128");
        assert_eq!(
            substitute_in_str("{{ podIP y/b }}", &v6).unwrap(),
            "fd00:10:244:2::7"
        );
        assert_eq!(
            substitute_in_str("{{ externalCIDR }}", &v4).unwrap(),
            "192.0.2.253/32"
        );
        assert_eq!(
            substitute_in_str("{{externalCIDR}}", &v6).unwrap(),
            "2001:db8::fd/128"
        );
        let none = Addresses {
            pod_ip: &|_| None,
            external: None,
        };
        assert!(substitute_in_str("{{ podIP y/zz }}", &none).is_err());
        let e = substitute_in_str("{{ externalCIDR }}", &none).unwrap_err();
        assert!(e.to_string().contains("no external host"), "{e}");
        assert!(substitute_in_str("{{ nope }}", &v6).is_err());
        assert!(substitute_in_str("{{ podCIDR y/b 33 }}", &v4).is_err());
        assert_eq!(
            substitute_in_str("{{ podCIDR y/b 0 }}", &v4).unwrap(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn external_host_section_destination_and_ports() {
        let text = r#"
id: e
cluster: {masquerade: false}
model:
  namespaces: [{name: x}]
  pods:
  - {namespace: x, name: a, ports: [{port: 80, protocol: TCP}, {port: 53, protocol: UDP}]}
steps:
- action: create_pod
  pod: {namespace: x, name: b, ports: [{port: 80, protocol: TCP}, {port: 81}]}
- probe: {protocol: TCP, port: 80, matrix: {x/a: {external: true, x/b: true}}}
"#;
        let s = Scenario::parse(text).unwrap();
        assert!(!s.cluster.masquerade);
        assert!(s.uses_external_host());
        assert_eq!(
            s.served_ports(),
            [
                (53, Protocol::Udp),
                (80, Protocol::Tcp),
                (81, Protocol::Tcp)
            ]
        );
        assert!(
            Scenario::parse(SAMPLE).unwrap().cluster.masquerade,
            "default"
        );
        assert!(!Scenario::parse(SAMPLE).unwrap().uses_external_host());
        let from_external = text.replace("{x/a: {external", "{external: {x/a");
        let e = Scenario::parse(&from_external).unwrap_err();
        assert!(e.to_string().contains("destination only"), "{e}");
        assert_eq!(
            Destination::parse("external").unwrap(),
            Destination::External
        );
    }

    #[test]
    fn rejects_bad_steps() {
        let base = "id: x\nmodel: {namespaces: [{name: x}]}\nsteps:\n";
        for bad in [
            "- {action: frobnicate}",
            "- {}",
            "- {action: delete_pod, pod: nopod}",
            "- {action: apply_policy, probe: {port: 80, matrix: {}}}",
        ] {
            assert!(Scenario::parse(&format!("{base}{bad}\n")).is_err(), "{bad}");
        }
        let v = "id: x\nkind: api-validation\nsteps:\n- {probe: {port: 80, matrix: {}}}\n";
        assert!(Scenario::parse(v).is_err());
    }

    #[test]
    fn cluster_network_policy_steps() {
        let s = Scenario::parse(
            "id: c\nmodel: {}\nsteps:\n\
             - action: apply_policy\n  policy: {apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {name: d}, spec: {}}\n\
             - {action: delete_policy, kind: ClusterNetworkPolicy, name: d}\n\
             - {action: delete_policy, namespace: x, name: p}\n",
        )
        .unwrap();
        let Step::ApplyPolicy { policy, .. } = &s.steps[0] else {
            panic!()
        };
        assert_eq!(policy_kind(policy), PolicyKind::ClusterNetworkPolicy);
        assert_eq!(
            s.steps[0].describe(),
            "apply_policy create ClusterNetworkPolicy/d"
        );
        assert_eq!(
            s.steps[1],
            Step::DeletePolicy {
                kind: PolicyKind::ClusterNetworkPolicy,
                namespace: String::new(),
                name: "d".into()
            }
        );
        assert_eq!(
            s.steps[1].describe(),
            "delete_policy ClusterNetworkPolicy/d"
        );
        assert_eq!(s.steps[2].describe(), "delete_policy x/p");
        let bad = "id: c\nsteps:\n- {action: delete_policy, kind: Pod, name: d}\n";
        assert!(Scenario::parse(bad).is_err());
    }

    #[test]
    fn every_checked_in_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let files = crate::runner::collect_files(std::slice::from_ref(&dir)).unwrap();
        for f in &files {
            Scenario::from_file(f).unwrap();
        }
        assert!(
            files.len() >= 40,
            "only {} scenarios in {}",
            files.len(),
            dir.display()
        );
    }
}
