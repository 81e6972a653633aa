//! The agent's decoding and validation of API objects, then compiling the result: each
//! section is one watch event, decoded as kube-rs decodes it (into the agent's `Slim<T>`)
//! and folded by the agent's `Index` exactly as the sync worker folds it; the changes go
//! into an incremental `Compiler`.
//!
//! Input sections (see `src/lib.rs`): `%%pod`, `%%namespace`, `%%networkpolicy`, `%%node`,
//! `%%clusternetworkpolicy` (an object applied by the watch), `%%delete <kind>`,
//! `%%relist <kind>` / `%%listed <kind>` (a relist: objects not listed again are gone), and
//! `%%arbitrary` (structured objects generated with `arbitrary`, applied in order).
//!
//! Properties: no panic; every policy that decodes is either reported invalid or is in the
//! compiler's state (so it is compiled); after every event the incremental ruleset equals
//! a full compile of the same state, passes the dataplane's `validate` and renders to nft
//! text.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{sections, split_tag};
use palisade_policy::compile::{compile, CompileOptions, Compiler, MasqueradeOptions};
use palisade_policy::kube::{ClusterEvent, Index, ResourceKind, Slim, WatchEvent, WatchedKind};
use palisade_policy::model::policy::PolicyRef;
use palisade_policy::model::ObjectKey;
use palisade_policy::nft;
use serde_json::{json, Value};

const NODE: &str = "n1";

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let opts = CompileOptions {
        node: NODE.into(),
        fail_closed_new_pods: true,
        nflog_group: Some(5),
        masquerade: MasqueradeOptions::enabled(),
    };
    let mut index = Index::new(NODE);
    let mut compiler = Compiler::new(opts.clone());
    let mut steps = 0;
    for (tag, body) in sections(data) {
        let (verb, kind) = match split_tag(tag) {
            (b"delete" | b"relist" | b"listed", kind) => (split_tag(tag).0, kind),
            (kind, _) => (&b"apply"[..], kind),
        };
        if kind == b"arbitrary" {
            let Ok(objects) = Vec::<GenObject>::arbitrary(&mut Unstructured::new(body)) else {
                continue;
            };
            for o in objects {
                let (kind, value) = o.to_json();
                let bytes = value.to_string().into_bytes();
                step(&mut index, &mut compiler, b"apply", kind, &bytes);
                checks(&mut compiler, &opts, &mut steps);
            }
        } else {
            step(&mut index, &mut compiler, verb, kind, body);
            checks(&mut compiler, &opts, &mut steps);
        }
    }
    // The checks of the last step, when they were skipped.
    if steps > CHECKED_STEPS {
        check(&mut compiler, &opts);
    }
}

/// Every step of an input is checked up to this many; after that only the end state (a
/// full compile per step made the scenario seeds, with dozens of objects, 20 times slower).
const CHECKED_STEPS: usize = 12;

fn checks(compiler: &mut Compiler, opts: &CompileOptions, steps: &mut usize) {
    *steps += 1;
    if *steps <= CHECKED_STEPS {
        check(compiler, opts);
    }
}

/// The incremental ruleset equals a full compile of the same state, passes the dataplane's
/// validation and renders to nft text.
fn check(compiler: &mut Compiler, opts: &CompileOptions) {
    let incremental = compiler.ruleset();
    let full = compile(compiler.state(), opts);
    assert_eq!(incremental, full, "incremental compile differs from full");
    if let Err(e) = nft::validate(&full) {
        panic!("compiled ruleset does not validate: {e}");
    }
    let text = nft::render_full(&full);
    assert!(!text.is_empty());
}

/// One watch event: fold, apply the changes, check what became of a policy.
fn step(index: &mut Index, compiler: &mut Compiler, verb: &[u8], kind: &[u8], body: &[u8]) {
    let event = match kind {
        b"pod" => event(verb, body, ClusterEvent::Pod),
        b"namespace" => event(verb, body, ClusterEvent::Namespace),
        b"networkpolicy" => event(verb, body, ClusterEvent::Policy),
        b"node" => event(verb, body, ClusterEvent::Node),
        b"clusternetworkpolicy" => event(verb, body, ClusterEvent::ClusterPolicy),
        _ => None,
    };
    let Some((event, policy)) = event else { return };
    let mut changes = Vec::new();
    index.fold(event, &mut changes);
    for c in changes {
        compiler.apply(c);
    }
    // A policy that decoded is either reported invalid or enforced.
    if let Some(p) = policy {
        let invalid = index.invalid_policies().iter().any(|i| i.policy == p);
        let state = compiler.state();
        let enforced = match p.object_key() {
            Some(key) => state.network_policies.contains_key(&key),
            None => state.cluster_network_policies.contains_key(p.name.as_str()),
        };
        assert!(
            invalid != enforced,
            "policy {p}: invalid {invalid}, in the compiled state {enforced}"
        );
    }
}

/// The watch event `verb` of one object of kind `T` whose JSON is `body`, and the policy it
/// names when it is an applied policy that decoded. `None` when `body` is not JSON at all
/// (kube-rs fails the watch event then; nothing reaches the index).
fn event<T: WatchedKind>(
    verb: &[u8],
    body: &[u8],
    wrap: fn(WatchEvent<T>) -> ClusterEvent,
) -> Option<(ClusterEvent, Option<PolicyRef>)> {
    let ev = match verb {
        b"relist" => WatchEvent::Relisting,
        b"listed" => WatchEvent::Listed {
            resource_version: String::from_utf8_lossy(body).into_owned(),
        },
        _ => {
            let object: Slim<T> = serde_json::from_slice(body).ok()?;
            if verb == b"delete" {
                WatchEvent::Deleted(object)
            } else {
                let policy = object.body.is_ok().then(|| {
                    let key = ObjectKey::new(object.namespace(), object.name());
                    match T::RESOURCE {
                        ResourceKind::NetworkPolicies => Some(PolicyRef::network(&key)),
                        ResourceKind::ClusterNetworkPolicies => {
                            Some(PolicyRef::cluster(object.name()))
                        }
                        _ => None,
                    }
                });
                return Some((
                    wrap(WatchEvent::Applied {
                        object,
                        initial: false,
                    }),
                    policy.flatten(),
                ));
            }
        }
    };
    Some((wrap(ev), None))
}

// ---- `arbitrary` generators: objects of the API's shape with values from small vocabularies
// (so selectors match pods and namespaces), or anything at all (`Any`).

#[derive(Arbitrary, Debug)]
enum Word {
    App,
    Role,
    Web,
    Db,
    Prefixed,
    Empty,
    Any(String),
}

impl Word {
    fn s(&self) -> String {
        match self {
            Word::App => "app",
            Word::Role => "role",
            Word::Web => "web",
            Word::Db => "db",
            Word::Prefixed => "example.com/tier",
            Word::Empty => "",
            Word::Any(s) => return s.clone(),
        }
        .to_string()
    }
}

#[derive(Arbitrary, Debug)]
enum Ns {
    A,
    B,
    Any(String),
}

impl Ns {
    fn s(&self) -> String {
        match self {
            Ns::A => "a".into(),
            Ns::B => "b".into(),
            Ns::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct GenIp {
    v6: bool,
    bits: u128,
    prefix: u8,
}

impl GenIp {
    fn ip(&self) -> String {
        if self.v6 {
            std::net::Ipv6Addr::from(self.bits).to_string()
        } else {
            std::net::Ipv4Addr::from(self.bits as u32).to_string()
        }
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.ip(), self.prefix % 130)
    }
}

/// One `matchExpressions` entry: key, operator, values.
type GenExpression = (Word, Word, Option<Vec<Word>>);

#[derive(Arbitrary, Debug)]
struct GenSelector {
    labels: Option<Vec<(Word, Word)>>,
    expressions: Option<Vec<GenExpression>>,
}

fn selector(s: &GenSelector) -> Value {
    let mut v = json!({});
    if let Some(l) = &s.labels {
        let m: serde_json::Map<String, Value> =
            l.iter().map(|(k, v)| (k.s(), v.s().into())).collect();
        v["matchLabels"] = m.into();
    }
    if let Some(e) = &s.expressions {
        let ops = ["In", "NotIn", "Exists", "DoesNotExist"];
        let list: Vec<Value> = e
            .iter()
            .map(|(k, op, values)| {
                let op = match op {
                    Word::App => ops[0].to_string(),
                    Word::Role => ops[1].to_string(),
                    Word::Web => ops[2].to_string(),
                    Word::Db => ops[3].to_string(),
                    other => other.s(),
                };
                let mut r = json!({"key": k.s(), "operator": op});
                if let Some(vs) = values {
                    r["values"] = vs.iter().map(Word::s).collect::<Vec<_>>().into();
                }
                r
            })
            .collect();
        v["matchExpressions"] = list.into();
    }
    v
}

#[derive(Arbitrary, Debug)]
enum GenPort {
    Number(i32),
    Named(Word),
    Http,
}

#[derive(Arbitrary, Debug)]
struct GenNpPort {
    protocol: Option<Word>,
    port: Option<GenPort>,
    end_port: Option<i32>,
}

#[derive(Arbitrary, Debug)]
struct GenNpPeer {
    pods: Option<GenSelector>,
    namespaces: Option<GenSelector>,
    ip_block: Option<(GenIp, Option<Vec<GenIp>>)>,
}

#[derive(Arbitrary, Debug)]
struct GenNpRule {
    peers: Option<Vec<GenNpPeer>>,
    ports: Option<Vec<GenNpPort>>,
}

#[derive(Arbitrary, Debug)]
struct GenNp {
    ns: Ns,
    name: Word,
    pod_selector: GenSelector,
    policy_types: Option<Vec<Word>>,
    ingress: Option<Vec<GenNpRule>>,
    egress: Option<Vec<GenNpRule>>,
}

fn np_rules(rules: &[GenNpRule], peer_key: &str) -> Value {
    rules
        .iter()
        .map(|r| {
            let mut v = json!({});
            if let Some(peers) = &r.peers {
                let list: Vec<Value> = peers
                    .iter()
                    .map(|p| {
                        let mut v = json!({});
                        if let Some(s) = &p.pods {
                            v["podSelector"] = selector(s);
                        }
                        if let Some(s) = &p.namespaces {
                            v["namespaceSelector"] = selector(s);
                        }
                        if let Some((cidr, except)) = &p.ip_block {
                            v["ipBlock"] = json!({"cidr": cidr.cidr()});
                            if let Some(ex) = except {
                                v["ipBlock"]["except"] =
                                    ex.iter().map(GenIp::cidr).collect::<Vec<_>>().into();
                            }
                        }
                        v
                    })
                    .collect();
                v[peer_key] = list.into();
            }
            if let Some(ports) = &r.ports {
                let list: Vec<Value> = ports
                    .iter()
                    .map(|p| {
                        let mut v = json!({});
                        if let Some(proto) = &p.protocol {
                            v["protocol"] = match proto {
                                Word::App => "TCP".to_string(),
                                Word::Role => "UDP".to_string(),
                                Word::Web => "SCTP".to_string(),
                                other => other.s(),
                            }
                            .into();
                        }
                        match &p.port {
                            Some(GenPort::Number(n)) => v["port"] = (*n).into(),
                            Some(GenPort::Named(w)) => v["port"] = w.s().into(),
                            Some(GenPort::Http) => v["port"] = "http".into(),
                            None => {}
                        }
                        if let Some(e) = p.end_port {
                            v["endPort"] = e.into();
                        }
                        v
                    })
                    .collect();
                v["ports"] = list.into();
            }
            v
        })
        .collect::<Vec<_>>()
        .into()
}

#[derive(Arbitrary, Debug)]
struct GenCnpPeer {
    namespaces: Option<GenSelector>,
    pods: Option<(Option<GenSelector>, Option<GenSelector>)>,
    nodes: Option<GenSelector>,
    networks: Option<Vec<GenIp>>,
}

#[derive(Arbitrary, Debug)]
struct GenCnpPort {
    protocol: u8,
    number: Option<i64>,
    range: Option<(Option<i64>, Option<i64>)>,
    named: Option<Word>,
}

#[derive(Arbitrary, Debug)]
struct GenCnpRule {
    name: Option<Word>,
    action: u8,
    peers: Option<Vec<GenCnpPeer>>,
    protocols: Option<Vec<GenCnpPort>>,
}

#[derive(Arbitrary, Debug)]
struct GenCnp {
    name: Word,
    baseline: bool,
    priority: Option<i64>,
    subject_pods: Option<(Option<GenSelector>, Option<GenSelector>)>,
    subject_namespaces: Option<GenSelector>,
    ingress: Option<Vec<GenCnpRule>>,
    egress: Option<Vec<GenCnpRule>>,
}

fn namespaced_pod(p: &(Option<GenSelector>, Option<GenSelector>)) -> Value {
    let mut v = json!({});
    if let Some(s) = &p.0 {
        v["namespaceSelector"] = selector(s);
    }
    if let Some(s) = &p.1 {
        v["podSelector"] = selector(s);
    }
    v
}

fn cnp_rules(rules: &[GenCnpRule], peer_key: &str) -> Value {
    rules
        .iter()
        .map(|r| {
            let action = ["Accept", "Deny", "Pass", "accept"][r.action as usize % 4];
            let mut v = json!({ "action": action });
            if let Some(n) = &r.name {
                v["name"] = n.s().into();
            }
            if let Some(peers) = &r.peers {
                let list: Vec<Value> = peers
                    .iter()
                    .map(|p| {
                        let mut v = json!({});
                        if let Some(s) = &p.namespaces {
                            v["namespaces"] = selector(s);
                        }
                        if let Some(np) = &p.pods {
                            v["pods"] = namespaced_pod(np);
                        }
                        if let Some(s) = &p.nodes {
                            v["nodes"] = selector(s);
                        }
                        if let Some(n) = &p.networks {
                            v["networks"] = n.iter().map(GenIp::cidr).collect::<Vec<_>>().into();
                        }
                        v
                    })
                    .collect();
                v[peer_key] = list.into();
            }
            if let Some(protos) = &r.protocols {
                let list: Vec<Value> = protos
                    .iter()
                    .map(|p| {
                        if let Some(n) = &p.named {
                            return json!({"destinationNamedPort": n.s()});
                        }
                        let mut port = json!({});
                        if let Some(n) = p.number {
                            port["number"] = n.into();
                        }
                        if let Some((s, e)) = p.range {
                            port["range"] = json!({"start": s, "end": e});
                        }
                        let proto = ["tcp", "udp", "sctp"][p.protocol as usize % 3];
                        json!({proto: {"destinationPort": port}})
                    })
                    .collect();
                v["protocols"] = list.into();
            }
            v
        })
        .collect::<Vec<_>>()
        .into()
}

#[derive(Arbitrary, Debug)]
struct GenPod {
    ns: Ns,
    name: Word,
    local: bool,
    host_network: bool,
    labels: Vec<(Word, Word)>,
    ips: Vec<GenIp>,
    ports: Vec<(Option<Word>, i32, Option<Word>)>,
    phase: Option<Word>,
    deleting: bool,
}

#[derive(Arbitrary, Debug)]
struct GenNode {
    name: Word,
    pod_cidrs: Vec<GenIp>,
    addresses: Vec<(bool, GenIp)>,
    labels: Vec<(Word, Word)>,
}

#[derive(Arbitrary, Debug)]
enum GenObject {
    Pod(GenPod),
    Namespace(Ns, Vec<(Word, Word)>),
    Policy(GenNp),
    ClusterPolicy(GenCnp),
    Node(GenNode),
}

fn labels(l: &[(Word, Word)]) -> Value {
    l.iter()
        .map(|(k, v)| (k.s(), Value::from(v.s())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

impl GenObject {
    fn to_json(&self) -> (&'static [u8], Value) {
        match self {
            GenObject::Pod(p) => {
                let mut meta =
                    json!({"namespace": p.ns.s(), "name": p.name.s(), "labels": labels(&p.labels)});
                if p.deleting {
                    meta["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
                }
                let ports: Vec<Value> = p
                    .ports
                    .iter()
                    .map(|(name, port, proto)| {
                        let mut v = json!({"containerPort": port});
                        if let Some(n) = name {
                            v["name"] = n.s().into();
                        }
                        if let Some(pr) = proto {
                            v["protocol"] = pr.s().into();
                        }
                        v
                    })
                    .collect();
                let ips: Vec<Value> = p.ips.iter().map(|ip| json!({"ip": ip.ip()})).collect();
                let mut status = json!({"podIPs": ips});
                if let Some(ph) = &p.phase {
                    status["phase"] = match ph {
                        Word::App => "Running".to_string(),
                        Word::Role => "Succeeded".to_string(),
                        Word::Web => "Failed".to_string(),
                        other => other.s(),
                    }
                    .into();
                }
                (
                    b"pod",
                    json!({
                        "metadata": meta,
                        "spec": {
                            "nodeName": if p.local { NODE } else { "n2" },
                            "hostNetwork": p.host_network,
                            "containers": [{"name": "c", "ports": ports}],
                        },
                        "status": status,
                    }),
                )
            }
            GenObject::Namespace(ns, l) => (
                b"namespace",
                json!({"metadata": {"name": ns.s(), "labels": labels(l)}}),
            ),
            GenObject::Policy(p) => {
                let mut spec = json!({"podSelector": selector(&p.pod_selector)});
                if let Some(t) = &p.policy_types {
                    spec["policyTypes"] = t
                        .iter()
                        .map(|w| match w {
                            Word::App => "Ingress".to_string(),
                            Word::Role => "Egress".to_string(),
                            other => other.s(),
                        })
                        .collect::<Vec<_>>()
                        .into();
                }
                if let Some(r) = &p.ingress {
                    spec["ingress"] = np_rules(r, "from");
                }
                if let Some(r) = &p.egress {
                    spec["egress"] = np_rules(r, "to");
                }
                (
                    b"networkpolicy",
                    json!({"metadata": {"namespace": p.ns.s(), "name": p.name.s()}, "spec": spec}),
                )
            }
            GenObject::ClusterPolicy(p) => {
                let mut spec = json!({"tier": if p.baseline { "Baseline" } else { "Admin" }});
                if let Some(pr) = p.priority {
                    spec["priority"] = pr.into();
                }
                let mut subject = json!({});
                if let Some(np) = &p.subject_pods {
                    subject["pods"] = namespaced_pod(np);
                }
                if let Some(s) = &p.subject_namespaces {
                    subject["namespaces"] = selector(s);
                }
                spec["subject"] = subject;
                if let Some(r) = &p.ingress {
                    spec["ingress"] = cnp_rules(r, "from");
                }
                if let Some(r) = &p.egress {
                    spec["egress"] = cnp_rules(r, "to");
                }
                (
                    b"clusternetworkpolicy",
                    json!({"metadata": {"name": p.name.s()}, "spec": spec}),
                )
            }
            GenObject::Node(n) => {
                let addresses: Vec<Value> = n
                    .addresses
                    .iter()
                    .map(|(internal, ip)| {
                        json!({"type": if *internal { "InternalIP" } else { "ExternalIP" }, "address": ip.ip()})
                    })
                    .collect();
                (
                    b"node",
                    json!({
                        "metadata": {"name": n.name.s(), "labels": labels(&n.labels)},
                        "spec": {"podCIDRs": n.pod_cidrs.iter().map(GenIp::cidr).collect::<Vec<_>>()},
                        "status": {"addresses": addresses},
                    }),
                )
            }
        }
    }
}
