//! Policy validation as the API server does it: used by the API stand-in (422), by the agent
//! (an invalid object is reported and skipped) and by palisadectl.
//!
//! NetworkPolicy here (`ValidateNetworkPolicy` in kubernetes/pkg/apis/networking/validation);
//! ClusterNetworkPolicy, a custom resource checked by its CRD's schema and CEL rules, in
//! [`cluster_network_policy`].
//!
//! Field paths, rules and messages follow upstream (v1.32) so that an error read here looks
//! like the one `kubectl` prints against a real cluster:
//! - `ValidateObjectMeta` (the parts that apply: name / generateName as DNS-1123 subdomain,
//!   namespace as DNS-1123 label, label keys and values),
//! - `ValidateNetworkPolicySpec`, `ValidateNetworkPolicyPort`, `ValidateNetworkPolicyPeer`,
//!   `ValidateIPBlock`,
//! - `ValidateLabelSelector` from apimachinery's `meta/v1/validation`.
//!
//! Upstream corners kept on purpose:
//! - `policyTypes` with more than two entries is one error on the whole list; two equal
//!   entries (`[Ingress, Ingress]`) are *accepted* (there is no duplicate check upstream).
//! - `endPort < port` reports the value of `port`, not of `endPort` (upstream passes
//!   `port.Port.IntVal` as the bad value).
//! - CIDRs are "legacy fields" (StrictIPCIDRValidation is off in 1.32): IPv4 octets and the
//!   prefix length may carry leading zeros, and bits beyond the prefix may be set
//!   (`10.0.0.1/24` is valid and means `10.0.0.0/24`).

mod cluster_network_policy;

pub use cluster_network_policy::{
    enforceability_errors as cluster_network_policy_errors, prune_cluster_network_policy,
    validate_cluster_network_policy, CIDR_RULE, NAMED_PORT_RULE, RANGE_RULE,
};

use super::api::{IntOrString, IpBlock, LabelSelector, NetworkPolicy, NetworkPolicyPeer};
use super::api::{LabelSelectorRequirement, NetworkPolicyPort, ObjectMeta};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The kind of a field error (`field.ErrorType` upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorKind {
    Required,
    Invalid,
    NotSupported,
    Forbidden,
    TooMany,
    TooLong,
    Duplicate,
}

impl FieldErrorKind {
    /// The `reason` of a `Status` cause (`FieldValueInvalid`, ...).
    pub fn cause_reason(self) -> &'static str {
        match self {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooMany => "FieldValueTooMany",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
        }
    }

    fn label(self) -> &'static str {
        match self {
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::Invalid => "Invalid value",
            FieldErrorKind::NotSupported => "Unsupported value",
            FieldErrorKind::Forbidden => "Forbidden",
            FieldErrorKind::TooMany => "Too many",
            FieldErrorKind::TooLong => "Too long",
            FieldErrorKind::Duplicate => "Duplicate value",
        }
    }
}

/// One validation failure: the field path (`spec.ingress[0].ports[1].endPort`) and why.
/// `message` is upstream's "error body", e.g.
/// ``Invalid value: 80: must be greater than or equal to `port` ``; `Display` prints
/// `field: message`, the form `kubectl` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    pub kind: FieldErrorKind,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A bad value as upstream prints it in an error body (`%v` for numbers, `%q` for strings).
enum BadValue<'a> {
    Int(i64),
    Str(&'a str),
    /// Already formatted (Go's `%#v` of a composite value).
    Raw(String),
}

impl fmt::Display for BadValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadValue::Int(n) => write!(f, "{n}"),
            BadValue::Str(s) => write!(f, "{}", go_quote(s)),
            BadValue::Raw(s) => f.write_str(s),
        }
    }
}

/// Go's `%q` for the strings that occur here (escapes quotes, backslashes, controls).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, kind: FieldErrorKind, field: &str, value: Option<BadValue>, detail: &str) {
        // Upstream's ErrorBody: Required and Forbidden never print the value.
        let mut message = kind.label().to_string();
        if let (
            Some(value),
            FieldErrorKind::Invalid
            | FieldErrorKind::NotSupported
            | FieldErrorKind::TooMany
            | FieldErrorKind::Duplicate,
        ) = (value, kind)
        {
            message.push_str(&format!(": {value}"));
        }
        if !detail.is_empty() {
            message.push_str(": ");
            message.push_str(detail);
        }
        self.0.push(FieldError {
            field: field.to_string(),
            message,
            kind,
        });
    }

    fn invalid(&mut self, field: &str, value: BadValue, detail: &str) {
        self.push(FieldErrorKind::Invalid, field, Some(value), detail);
    }

    fn required(&mut self, field: &str, detail: &str) {
        self.push(FieldErrorKind::Required, field, None, detail);
    }

    fn forbidden(&mut self, field: &str, detail: &str) {
        self.push(FieldErrorKind::Forbidden, field, None, detail);
    }

    fn not_supported(&mut self, field: &str, value: &str, supported: &[&str]) {
        let detail = format!(
            "supported values: {}",
            supported
                .iter()
                .map(|s| go_quote(s))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.push(
            FieldErrorKind::NotSupported,
            field,
            Some(BadValue::Str(value)),
            &detail,
        );
    }
}

/// All validation errors of a policy (empty: valid), in upstream's order: metadata, pod
/// selector, ingress rules (ports, then peers), egress rules, policy types.
pub fn validate_network_policy(policy: &NetworkPolicy) -> Vec<FieldError> {
    let mut errs = Errors::default();
    validate_object_meta(policy, &mut errs);
    validate_spec(policy, &mut errs);
    errs.0
}

fn validate_object_meta(policy: &NetworkPolicy, errs: &mut Errors) {
    validate_meta(&policy.metadata, true, errs);
}

/// `ValidateObjectMeta` for a namespaced or a cluster-scoped object named as a DNS-1123
/// subdomain (NetworkPolicy, custom resources).
fn validate_meta(meta: &ObjectMeta, namespaced: bool, errs: &mut Errors) {
    if let Some(generate_name) = meta.generate_name.as_deref().filter(|g| !g.is_empty()) {
        // A generateName is a prefix: a trailing '-' is fine since random characters follow.
        let masked = mask_trailing_dash(generate_name);
        for msg in dns1123_subdomain_errors(&masked) {
            errs.invalid("metadata.generateName", BadValue::Str(generate_name), &msg);
        }
    }
    if meta.name.is_empty() {
        // The API server generates the name from generateName before validating.
        if meta.generate_name.as_deref().is_none_or(str::is_empty) {
            errs.required("metadata.name", "name or generateName is required");
        }
    } else {
        for msg in dns1123_subdomain_errors(&meta.name) {
            errs.invalid("metadata.name", BadValue::Str(&meta.name), &msg);
        }
    }
    match (namespaced, meta.namespace.is_empty()) {
        (true, true) => errs.required("metadata.namespace", ""),
        (true, false) => {
            for msg in dns1123_label_errors(&meta.namespace) {
                errs.invalid("metadata.namespace", BadValue::Str(&meta.namespace), &msg);
            }
        }
        (false, false) => errs.forbidden("metadata.namespace", "not allowed on this type"),
        (false, true) => {}
    }
    validate_labels(&meta.labels, "metadata.labels", errs);
}

fn validate_spec(policy: &NetworkPolicy, errs: &mut Errors) {
    let spec = &policy.spec;
    validate_label_selector(&spec.pod_selector, "spec.podSelector", errs);
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let rule_path = format!("spec.ingress[{i}]");
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            validate_port(port, &format!("{rule_path}.ports[{j}]"), errs);
        }
        for (j, peer) in rule.from.iter().flatten().enumerate() {
            validate_peer(peer, &format!("{rule_path}.from[{j}]"), errs);
        }
    }
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let rule_path = format!("spec.egress[{i}]");
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            validate_port(port, &format!("{rule_path}.ports[{j}]"), errs);
        }
        for (j, peer) in rule.to.iter().flatten().enumerate() {
            validate_peer(peer, &format!("{rule_path}.to[{j}]"), errs);
        }
    }
    let types = spec.policy_types.as_deref().unwrap_or_default();
    if types.len() > 2 {
        let listed = types
            .iter()
            .map(|t| go_quote(t))
            .collect::<Vec<_>>()
            .join(", ");
        errs.invalid(
            "spec.policyTypes",
            BadValue::Raw(format!("[]networking.PolicyType{{{listed}}}")),
            "may not specify more than two policyTypes",
        );
        return;
    }
    for (i, policy_type) in types.iter().enumerate() {
        if policy_type != "Ingress" && policy_type != "Egress" {
            errs.not_supported(
                &format!("spec.policyTypes[{i}]"),
                policy_type,
                &["Ingress", "Egress"],
            );
        }
    }
}

fn validate_port(port: &NetworkPolicyPort, path: &str, errs: &mut Errors) {
    if let Some(protocol) = &port.protocol {
        if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            errs.not_supported(
                &format!("{path}.protocol"),
                protocol,
                &["TCP", "UDP", "SCTP"],
            );
        }
    }
    let end_port_path = format!("{path}.endPort");
    match &port.port {
        Some(IntOrString::Int(number)) => {
            for msg in port_number_errors(i64::from(*number)) {
                errs.invalid(
                    &format!("{path}.port"),
                    BadValue::Int((*number).into()),
                    &msg,
                );
            }
            if let Some(end_port) = port.end_port {
                if end_port < *number {
                    // Upstream reports the value of `port` here (see the module doc).
                    errs.invalid(
                        &end_port_path,
                        BadValue::Int((*number).into()),
                        "must be greater than or equal to `port`",
                    );
                }
                for msg in port_number_errors(i64::from(end_port)) {
                    errs.invalid(&end_port_path, BadValue::Int(end_port.into()), &msg);
                }
            }
        }
        Some(IntOrString::String(name)) => {
            if let Some(end_port) = port.end_port {
                errs.invalid(
                    &end_port_path,
                    BadValue::Int(end_port.into()),
                    "may not be specified when `port` is non-numeric",
                );
            }
            for msg in port_name_errors(name) {
                errs.invalid(&format!("{path}.port"), BadValue::Str(name), &msg);
            }
        }
        None => {
            if let Some(end_port) = port.end_port {
                errs.invalid(
                    &end_port_path,
                    BadValue::Int(end_port.into()),
                    "may not be specified when `port` is not specified",
                );
            }
        }
    }
}

fn validate_peer(peer: &NetworkPolicyPeer, path: &str, errs: &mut Errors) {
    let mut count = 0;
    if let Some(selector) = &peer.pod_selector {
        count += 1;
        validate_label_selector(selector, &format!("{path}.podSelector"), errs);
    }
    if let Some(selector) = &peer.namespace_selector {
        count += 1;
        validate_label_selector(selector, &format!("{path}.namespaceSelector"), errs);
    }
    if let Some(block) = &peer.ip_block {
        count += 1;
        validate_ip_block(block, &format!("{path}.ipBlock"), errs);
    }
    if count == 0 {
        errs.required(path, "must specify a peer");
    } else if count > 1 && peer.ip_block.is_some() {
        errs.forbidden(path, "may not specify both ipBlock and another peer");
    }
}

fn validate_ip_block(block: &IpBlock, path: &str, errs: &mut Errors) {
    let cidr_path = format!("{path}.cidr");
    if block.cidr.is_empty() {
        errs.required(&cidr_path, "");
        return;
    }
    let Some(cidr) = parse_cidr_sloppy(&block.cidr) else {
        errs.invalid(&cidr_path, BadValue::Str(&block.cidr), CIDR_MSG);
        return;
    };
    for (i, except) in block.except.iter().flatten().enumerate() {
        let except_path = format!("{path}.except[{i}]");
        let Some(except_net) = parse_cidr_sloppy(except) else {
            errs.invalid(&except_path, BadValue::Str(except), CIDR_MSG);
            continue;
        };
        // Strict subset: inside `cidr` (same family) and a longer prefix.
        if !cidr.contains(&except_net.addr) || cidr.prefix_len >= except_net.prefix_len {
            errs.invalid(
                &except_path,
                BadValue::Str(except),
                "must be a strict subset of `cidr`",
            );
        }
    }
}

const CIDR_MSG: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

/// A CIDR as `netutils.ParseCIDRSloppy` reads it: the network address (host bits cleared)
/// and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SloppyCidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl SloppyCidr {
    fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(*ip, self.prefix_len) == net && self.prefix_len <= 32
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(*ip, self.prefix_len) == net,
            _ => false,
        }
    }
}

fn mask_v4(ip: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    let mask = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    };
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(ip: Ipv6Addr, prefix_len: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    let mask = if prefix_len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix_len))
    };
    Ipv6Addr::from(bits & mask)
}

/// Go's sloppy CIDR parse: IPv4 octets may have leading zeros (read as decimal), the prefix
/// length is decimal digits (leading zeros allowed) within the family's bit count.
fn parse_cidr_sloppy(value: &str) -> Option<SloppyCidr> {
    let (ip, prefix) = value.split_once('/')?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix_len: u8 = prefix.parse().ok()?;
    if let Some(v4) = parse_ipv4_sloppy(ip) {
        if prefix_len > 32 {
            return None;
        }
        return Some(SloppyCidr {
            addr: IpAddr::V4(mask_v4(v4, prefix_len)),
            prefix_len,
        });
    }
    if !ip.contains(':') {
        return None;
    }
    // IPv6 (possibly with an embedded, sloppy IPv4 tail such as ::ffff:010.1.2.3).
    let v6 = parse_ipv6_sloppy(ip)?;
    if prefix_len > 128 {
        return None;
    }
    Some(SloppyCidr {
        addr: IpAddr::V6(mask_v6(v6, prefix_len)),
        prefix_len,
    })
}

fn parse_ipv4_sloppy(ip: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = ip.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse::<u16>().ok().filter(|n| *n <= 255)? as u8;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

fn parse_ipv6_sloppy(ip: &str) -> Option<Ipv6Addr> {
    if let Ok(v6) = ip.parse::<Ipv6Addr>() {
        return Some(v6);
    }
    // Only the embedded-IPv4 tail can be sloppy (leading zeros): normalise it and retry.
    let (head, tail) = ip.rsplit_once(':')?;
    let v4 = parse_ipv4_sloppy(tail)?;
    format!("{head}:{v4}").parse().ok()
}

// ---- label selectors and labels (apimachinery meta/v1/validation) ----

fn validate_label_selector(selector: &LabelSelector, path: &str, errs: &mut Errors) {
    if let Some(labels) = &selector.match_labels {
        validate_labels(labels, &format!("{path}.matchLabels"), errs);
    }
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        validate_requirement(requirement, &format!("{path}.matchExpressions[{i}]"), errs);
    }
}

fn validate_requirement(requirement: &LabelSelectorRequirement, path: &str, errs: &mut Errors) {
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" | "NotIn" => {
            if values.is_empty() {
                errs.required(
                    &format!("{path}.values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                );
            }
        }
        "Exists" | "DoesNotExist" => {
            if !values.is_empty() {
                errs.forbidden(
                    &format!("{path}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                );
            }
        }
        other => errs.invalid(
            &format!("{path}.operator"),
            BadValue::Str(other),
            "not a valid selector operator",
        ),
    }
    for msg in qualified_name_errors(&requirement.key) {
        errs.invalid(
            &format!("{path}.key"),
            BadValue::Str(&requirement.key),
            &msg,
        );
    }
    for (i, value) in values.iter().enumerate() {
        for msg in label_value_errors(value) {
            errs.invalid(&format!("{path}.values[{i}]"), BadValue::Str(value), &msg);
        }
    }
}

fn validate_labels(labels: &BTreeMap<String, String>, path: &str, errs: &mut Errors) {
    for (key, value) in labels {
        for msg in qualified_name_errors(key) {
            errs.invalid(path, BadValue::Str(key), &msg);
        }
        for msg in label_value_errors(value) {
            errs.invalid(path, BadValue::Str(value), &msg);
        }
    }
}

// ---- the string syntaxes (apimachinery util/validation), with upstream's messages ----

/// `RegexError`: the message, examples and the regex, as upstream words it (with its double
/// space before "or": `'MyValue',  or 'my_value'`).
fn regex_error(msg: &str, regex: &str, examples: &[&str]) -> String {
    let mut out = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{example}', "));
    }
    out.push_str(&format!("regex used for validation is '{regex}')"));
    out
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";

fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && edge_ok(bytes[0])
        && edge_ok(bytes[bytes.len() - 1])
        && bytes.iter().all(|&b| edge_ok(b) || b == b'-')
}

/// Is `s` a DNS-1123 subdomain (object names, label key prefixes)?
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Upstream's `IsDNS1123Subdomain` messages (empty: valid).
pub fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len_error(253));
    }
    if !s.split('.').all(is_dns1123_label) {
        errs.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character",
            &format!("{DNS1123_LABEL_FMT}(\\.{DNS1123_LABEL_FMT})*"),
            &["example.com"],
        ));
    }
    errs
}

/// Upstream's `IsDNS1123Label` messages (namespace names).
pub fn dns1123_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !is_dns1123_label(s) {
        errs.push(regex_error(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character",
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        ));
    }
    errs
}

/// upstream `maskTrailingDash`: a generateName prefix may end in '-'.
fn mask_trailing_dash(s: &str) -> String {
    match s.strip_suffix('-') {
        Some(head) if !head.is_empty() => format!("{head}a"),
        _ => s.to_string(),
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and \
                                  must start and end with an alphanumeric character";

/// Upstream's `IsQualifiedName` messages: label keys (`[prefix/]name`).
pub fn qualified_name_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                for msg in dns1123_subdomain_errors(prefix) {
                    errs.push(format!("prefix part {msg}"));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. \
                 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_MSG,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !is_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Upstream's `IsValidLabelValue` messages.
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        errs.push(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', \
             '_' or '.', and must start and end with an alphanumeric character",
            &format!("({QUALIFIED_NAME_FMT})?"),
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// Upstream's `IsValidPortNum` message.
fn port_number_errors(port: i64) -> Vec<String> {
    if (1..=65535).contains(&port) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".to_string()]
    }
}

/// Upstream's `IsValidPortName` (an IANA_SVC_NAME) messages.
pub fn port_name_errors(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > 15 {
        errs.push(max_len_error(15));
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if name.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A valid policy in namespace `x` with `spec` merged from `spec`.
    fn policy(spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"},
            "spec": spec,
        }))
        .expect("test policy parses")
    }

    fn fields(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.field.as_str()).collect()
    }

    fn ingress_port(port: serde_json::Value) -> NetworkPolicy {
        policy(json!({"podSelector": {}, "ingress": [{"ports": [port]}]}))
    }

    fn ingress_peer(peer: serde_json::Value) -> NetworkPolicy {
        policy(json!({"podSelector": {}, "ingress": [{"from": [peer]}]}))
    }

    /// Table runner: each case is (name, policy, expected field paths of errors).
    fn check(cases: Vec<(&str, NetworkPolicy, Vec<&str>)>) {
        for (name, policy, expected) in cases {
            let errs = validate_network_policy(&policy);
            assert_eq!(fields(&errs), expected, "case {name}: {errs:#?}");
        }
    }

    #[test]
    fn empty_policy_with_name_and_namespace_is_valid() {
        assert!(validate_network_policy(&policy(json!({"podSelector": {}}))).is_empty());
    }

    #[test]
    fn protocol_must_be_tcp_udp_or_sctp() {
        check(vec![
            (
                "TCP",
                ingress_port(json!({"protocol": "TCP", "port": 80})),
                vec![],
            ),
            (
                "UDP",
                ingress_port(json!({"protocol": "UDP", "port": 53})),
                vec![],
            ),
            ("SCTP", ingress_port(json!({"protocol": "SCTP"})), vec![]),
            ("absent", ingress_port(json!({"port": 80})), vec![]),
            (
                "ICMP",
                ingress_port(json!({"protocol": "ICMP"})),
                vec!["spec.ingress[0].ports[0].protocol"],
            ),
            (
                "lowercase tcp",
                ingress_port(json!({"protocol": "tcp"})),
                vec!["spec.ingress[0].ports[0].protocol"],
            ),
        ]);
        let errs = validate_network_policy(&ingress_port(json!({"protocol": "ICMP"})));
        assert_eq!(
            errs[0].message,
            r#"Unsupported value: "ICMP": supported values: "TCP", "UDP", "SCTP""#
        );
        assert_eq!(errs[0].kind.cause_reason(), "FieldValueNotSupported");
    }

    #[test]
    fn numeric_port_must_be_in_range() {
        let port = "spec.ingress[0].ports[0].port";
        check(vec![
            ("1", ingress_port(json!({"port": 1})), vec![]),
            ("65535", ingress_port(json!({"port": 65535})), vec![]),
            ("0", ingress_port(json!({"port": 0})), vec![port]),
            ("65536", ingress_port(json!({"port": 65536})), vec![port]),
            ("-1", ingress_port(json!({"port": -1})), vec![port]),
        ]);
        let errs = validate_network_policy(&ingress_port(json!({"port": 0})));
        assert_eq!(
            errs[0].to_string(),
            "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
        );
    }

    #[test]
    fn named_port_must_be_an_iana_service_name() {
        let port = "spec.ingress[0].ports[0].port";
        check(vec![
            ("http", ingress_port(json!({"port": "http"})), vec![]),
            (
                "web-8080",
                ingress_port(json!({"port": "web-8080"})),
                vec![],
            ),
            (
                "15 chars",
                ingress_port(json!({"port": "abcdefghijklmno"})),
                vec![],
            ),
            (
                "16 chars",
                ingress_port(json!({"port": "abcdefghijklmnop"})),
                vec![port],
            ),
            (
                "uppercase",
                ingress_port(json!({"port": "HTTP"})),
                vec![port, port],
            ),
            (
                "digits only",
                ingress_port(json!({"port": "8080"})),
                vec![port],
            ),
            (
                "double hyphen",
                ingress_port(json!({"port": "a--b"})),
                vec![port],
            ),
            (
                "leading hyphen",
                ingress_port(json!({"port": "-ab"})),
                vec![port],
            ),
            (
                "trailing hyphen",
                ingress_port(json!({"port": "ab-"})),
                vec![port],
            ),
            (
                "underscore",
                ingress_port(json!({"port": "a_b"})),
                vec![port],
            ),
            ("empty", ingress_port(json!({"port": ""})), vec![port, port]),
        ]);
        let errs = validate_network_policy(&ingress_port(json!({"port": "8080"})));
        assert_eq!(
            errs[0].message,
            r#"Invalid value: "8080": must contain at least one letter (a-z)"#
        );
    }

    #[test]
    fn end_port_rules() {
        let end = "spec.ingress[0].ports[0].endPort";
        check(vec![
            (
                "range",
                ingress_port(json!({"port": 80, "endPort": 90})),
                vec![],
            ),
            (
                "equal",
                ingress_port(json!({"port": 80, "endPort": 80})),
                vec![],
            ),
            (
                "below port",
                ingress_port(json!({"port": 80, "endPort": 79})),
                vec![end],
            ),
            (
                "above 65535",
                ingress_port(json!({"port": 80, "endPort": 65536})),
                vec![end],
            ),
            (
                "with named port",
                ingress_port(json!({"port": "http", "endPort": 90})),
                vec![end],
            ),
            (
                "without port",
                ingress_port(json!({"endPort": 90})),
                vec![end],
            ),
            (
                "zero below port and out of range",
                ingress_port(json!({"port": 80, "endPort": 0})),
                vec![end, end],
            ),
        ]);
        let errs = validate_network_policy(&ingress_port(json!({"port": 80, "endPort": 79})));
        // Upstream prints the value of `port` here.
        assert_eq!(
            errs[0].message,
            "Invalid value: 80: must be greater than or equal to `port`"
        );
        let errs = validate_network_policy(&ingress_port(json!({"port": "http", "endPort": 90})));
        assert_eq!(
            errs[0].message,
            "Invalid value: 90: may not be specified when `port` is non-numeric"
        );
    }

    #[test]
    fn egress_ports_and_peers_are_validated_with_their_paths() {
        let p = policy(json!({
            "podSelector": {},
            "egress": [{}, {"ports": [{"port": 1}, {"port": 0}], "to": [{}]}],
        }));
        assert_eq!(
            fields(&validate_network_policy(&p)),
            vec!["spec.egress[1].ports[1].port", "spec.egress[1].to[0]"]
        );
    }

    #[test]
    fn peer_needs_a_selector_or_an_ip_block_and_ip_block_is_alone() {
        let peer = "spec.ingress[0].from[0]";
        check(vec![
            (
                "pod selector",
                ingress_peer(json!({"podSelector": {}})),
                vec![],
            ),
            (
                "ns selector",
                ingress_peer(json!({"namespaceSelector": {}})),
                vec![],
            ),
            (
                "both selectors",
                ingress_peer(json!({"podSelector": {}, "namespaceSelector": {}})),
                vec![],
            ),
            (
                "ip block",
                ingress_peer(json!({"ipBlock": {"cidr": "10.0.0.0/8"}})),
                vec![],
            ),
            ("empty peer", ingress_peer(json!({})), vec![peer]),
            (
                "ip block and pod selector",
                ingress_peer(json!({"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}})),
                vec![peer],
            ),
            (
                "ip block and ns selector",
                ingress_peer(json!({"namespaceSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}})),
                vec![peer],
            ),
        ]);
        let errs = validate_network_policy(&ingress_peer(json!({})));
        assert_eq!(errs[0].message, "Required value: must specify a peer");
        let errs = validate_network_policy(&ingress_peer(
            json!({"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}),
        ));
        assert_eq!(
            errs[0].message,
            "Forbidden: may not specify both ipBlock and another peer"
        );
    }

    #[test]
    fn ip_block_cidr_must_be_valid() {
        let cidr = "spec.ingress[0].from[0].ipBlock.cidr";
        let block = |c: &str| ingress_peer(json!({"ipBlock": {"cidr": c}}));
        check(vec![
            ("v4", block("192.168.0.0/16"), vec![]),
            ("v6", block("2001:db8::/64"), vec![]),
            ("host bits set (legacy)", block("10.0.0.1/24"), vec![]),
            ("leading zeros (legacy)", block("010.0.0.0/08"), vec![]),
            ("/0", block("0.0.0.0/0"), vec![]),
            ("/32", block("10.1.2.3/32"), vec![]),
            ("empty", block(""), vec![cidr]),
            ("no prefix", block("10.0.0.0"), vec![cidr]),
            ("prefix too long", block("10.0.0.0/33"), vec![cidr]),
            ("v6 prefix too long", block("2001:db8::/129"), vec![cidr]),
            ("octet too big", block("10.0.0.256/32"), vec![cidr]),
            ("garbage", block("ten/8"), vec![cidr]),
        ]);
        let errs = validate_network_policy(&block(""));
        assert_eq!(errs[0].message, "Required value");
        let errs = validate_network_policy(&block("10.0.0.0/33"));
        assert_eq!(
            errs[0].message,
            r#"Invalid value: "10.0.0.0/33": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"#
        );
    }

    #[test]
    fn ip_block_except_must_be_strictly_inside_cidr() {
        let block = |c: &str, except: &[&str]| {
            ingress_peer(json!({"ipBlock": {"cidr": c, "except": except}}))
        };
        let e0 = "spec.ingress[0].from[0].ipBlock.except[0]";
        let e1 = "spec.ingress[0].from[0].ipBlock.except[1]";
        check(vec![
            ("inside", block("10.0.0.0/8", &["10.1.0.0/16"]), vec![]),
            (
                "inside, host bits",
                block("10.0.0.0/8", &["10.1.2.3/16"]),
                vec![],
            ),
            (
                "v6 inside",
                block("2001:db8::/32", &["2001:db8:1::/48"]),
                vec![],
            ),
            ("equal", block("10.0.0.0/8", &["10.0.0.0/8"]), vec![e0]),
            ("wider", block("10.0.0.0/16", &["10.0.0.0/8"]), vec![e0]),
            ("outside", block("10.0.0.0/8", &["11.0.0.0/16"]), vec![e0]),
            (
                "other family",
                block("10.0.0.0/8", &["2001:db8::/64"]),
                vec![e0],
            ),
            ("invalid", block("10.0.0.0/8", &["10.1.0.0/40"]), vec![e0]),
            (
                "second bad",
                block("10.0.0.0/8", &["10.1.0.0/16", "192.168.0.0/16"]),
                vec![e1],
            ),
        ]);
        let errs = validate_network_policy(&block("10.0.0.0/8", &["10.0.0.0/8"]));
        assert_eq!(
            errs[0].message,
            r#"Invalid value: "10.0.0.0/8": must be a strict subset of `cidr`"#
        );
        // An invalid cidr stops the except checks (upstream returns early).
        assert_eq!(
            fields(&validate_network_policy(&block("x", &["y"]))),
            vec!["spec.ingress[0].from[0].ipBlock.cidr"]
        );
    }

    #[test]
    fn policy_types_only_ingress_and_egress_at_most_two() {
        let types = |t: serde_json::Value| policy(json!({"podSelector": {}, "policyTypes": t}));
        check(vec![
            ("ingress", types(json!(["Ingress"])), vec![]),
            ("both", types(json!(["Ingress", "Egress"])), vec![]),
            ("empty", types(json!([])), vec![]),
            // No duplicate check upstream: accepted as the API server accepts it.
            ("duplicate", types(json!(["Egress", "Egress"])), vec![]),
            (
                "lowercase",
                types(json!(["ingress"])),
                vec!["spec.policyTypes[0]"],
            ),
            (
                "other",
                types(json!(["Egress", "All"])),
                vec!["spec.policyTypes[1]"],
            ),
            (
                "three",
                types(json!(["Ingress", "Egress", "Ingress"])),
                vec!["spec.policyTypes"],
            ),
        ]);
        let errs = validate_network_policy(&types(json!(["Ingress", "Egress", "Ingress"])));
        assert_eq!(
            errs[0].message,
            r#"Invalid value: []networking.PolicyType{"Ingress", "Egress", "Ingress"}: may not specify more than two policyTypes"#
        );
    }

    #[test]
    fn label_selector_operators_and_values() {
        let sel =
            |expr: serde_json::Value| policy(json!({"podSelector": {"matchExpressions": [expr]}}));
        let base = "spec.podSelector.matchExpressions[0]";
        let values = format!("{base}.values");
        let operator = format!("{base}.operator");
        check(vec![
            (
                "In",
                sel(json!({"key": "a", "operator": "In", "values": ["x"]})),
                vec![],
            ),
            (
                "NotIn",
                sel(json!({"key": "a", "operator": "NotIn", "values": ["x"]})),
                vec![],
            ),
            (
                "Exists",
                sel(json!({"key": "a", "operator": "Exists"})),
                vec![],
            ),
            (
                "Exists, empty values",
                sel(json!({"key": "a", "operator": "Exists", "values": []})),
                vec![],
            ),
            (
                "DoesNotExist",
                sel(json!({"key": "a", "operator": "DoesNotExist"})),
                vec![],
            ),
            (
                "In without values",
                sel(json!({"key": "a", "operator": "In"})),
                vec![&values],
            ),
            (
                "NotIn, empty values",
                sel(json!({"key": "a", "operator": "NotIn", "values": []})),
                vec![&values],
            ),
            (
                "Exists with values",
                sel(json!({"key": "a", "operator": "Exists", "values": ["x"]})),
                vec![&values],
            ),
            (
                "DoesNotExist with values",
                sel(json!({"key": "a", "operator": "DoesNotExist", "values": ["x"]})),
                vec![&values],
            ),
            (
                "unknown operator",
                sel(json!({"key": "a", "operator": "Equals"})),
                vec![&operator],
            ),
            (
                "bad key",
                sel(json!({"key": "-a", "operator": "Exists"})),
                vec!["spec.podSelector.matchExpressions[0].key"],
            ),
            (
                "bad value",
                sel(json!({"key": "a", "operator": "In", "values": ["ok", "not ok"]})),
                vec!["spec.podSelector.matchExpressions[0].values[1]"],
            ),
        ]);
        let errs = validate_network_policy(&sel(json!({"key": "a", "operator": "In"})));
        assert_eq!(
            errs[0].message,
            "Required value: must be specified when `operator` is 'In' or 'NotIn'"
        );
        let errs = validate_network_policy(&sel(json!({"key": "a", "operator": "Equals"})));
        assert_eq!(
            errs[0].message,
            r#"Invalid value: "Equals": not a valid selector operator"#
        );
    }

    #[test]
    fn selectors_in_peers_are_validated() {
        let p = ingress_peer(json!({
            "podSelector": {"matchLabels": {"app": "bad value"}},
            "namespaceSelector": {"matchExpressions": [{"key": "t", "operator": "In"}]},
        }));
        assert_eq!(
            fields(&validate_network_policy(&p)),
            vec![
                "spec.ingress[0].from[0].podSelector.matchLabels",
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            ]
        );
    }

    #[test]
    fn label_keys_and_values() {
        let labels = |l: serde_json::Value| policy(json!({"podSelector": {"matchLabels": l}}));
        let ml = "spec.podSelector.matchLabels";
        let long = "a".repeat(64);
        check(vec![
            ("simple", labels(json!({"app": "web"})), vec![]),
            (
                "prefixed",
                labels(json!({"example.com/app": "web"})),
                vec![],
            ),
            ("empty value", labels(json!({"app": ""})), vec![]),
            (
                "dots and underscores",
                labels(json!({"a_b.c": "x_y.z-1"})),
                vec![],
            ),
            ("uppercase", labels(json!({"App": "Web"})), vec![]),
            ("value with space", labels(json!({"app": "a b"})), vec![ml]),
            ("value too long", labels(json!({"app": long})), vec![ml]),
            ("key too long", labels(json!({long.clone(): "x"})), vec![ml]),
            ("empty prefix", labels(json!({"/app": "x"})), vec![ml]),
            (
                "bad prefix",
                labels(json!({"Example.com/app": "x"})),
                vec![ml],
            ),
            ("two slashes", labels(json!({"a/b/c": "x"})), vec![ml]),
            (
                "empty name",
                labels(json!({"example.com/": "x"})),
                vec![ml, ml],
            ),
            (
                "value leading dash",
                labels(json!({"app": "-web"})),
                vec![ml],
            ),
        ]);
        let errs = validate_network_policy(&labels(json!({"app": "a b"})));
        assert_eq!(
            errs[0].message,
            "Invalid value: \"a b\": a valid label must be an empty string or consist of \
             alphanumeric characters, '-', '_' or '.', and must start and end with an \
             alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used \
             for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        );
    }

    #[test]
    fn metadata_name_namespace_and_labels() {
        let with_meta = |meta: serde_json::Value| -> NetworkPolicy {
            serde_json::from_value(json!({"metadata": meta, "spec": {"podSelector": {}}})).unwrap()
        };
        check(vec![
            (
                "ok",
                with_meta(json!({"name": "a.b-c", "namespace": "x"})),
                vec![],
            ),
            (
                "generateName only",
                with_meta(json!({"generateName": "deny-", "namespace": "x"})),
                vec![],
            ),
            (
                "no name",
                with_meta(json!({"namespace": "x"})),
                vec!["metadata.name"],
            ),
            (
                "uppercase name",
                with_meta(json!({"name": "Deny", "namespace": "x"})),
                vec!["metadata.name"],
            ),
            (
                "bad generateName",
                with_meta(json!({"generateName": "Deny-", "namespace": "x"})),
                vec!["metadata.generateName"],
            ),
            (
                "no namespace",
                with_meta(json!({"name": "a"})),
                vec!["metadata.namespace"],
            ),
            (
                "namespace with dot",
                with_meta(json!({"name": "a", "namespace": "x.y"})),
                vec!["metadata.namespace"],
            ),
            (
                "bad label",
                with_meta(json!({"name": "a", "namespace": "x", "labels": {"a": "b c"}})),
                vec!["metadata.labels"],
            ),
        ]);
        let errs = validate_network_policy(&with_meta(json!({"namespace": "x"})));
        assert_eq!(
            errs[0].message,
            "Required value: name or generateName is required"
        );
    }

    #[test]
    fn errors_come_in_upstream_order() {
        let p = policy(json!({
            "podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
            "ingress": [{"from": [{}], "ports": [{"port": 0}]}],
            "egress": [{"ports": [{"protocol": "ICMP"}]}],
            "policyTypes": ["Sideways"],
        }));
        assert_eq!(
            fields(&validate_network_policy(&p)),
            vec![
                "spec.podSelector.matchExpressions[0].values",
                "spec.ingress[0].ports[0].port",
                "spec.ingress[0].from[0]",
                "spec.egress[0].ports[0].protocol",
                "spec.policyTypes[0]",
            ]
        );
    }

    #[test]
    fn sloppy_cidr_parsing() {
        let parsed = parse_cidr_sloppy("10.1.2.3/8").unwrap();
        assert_eq!(parsed.addr, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)));
        assert_eq!(parsed.prefix_len, 8);
        assert!(parse_cidr_sloppy("::ffff:010.1.2.3/128").is_some());
        assert!(parse_cidr_sloppy("10.0.0.0/").is_none());
        assert!(parse_cidr_sloppy("10.0.0/8").is_none());
        assert!(parse_cidr_sloppy("10.0.0.0/+8").is_none());
        assert!(parse_cidr_sloppy("1.2.3.4.5/8").is_none());
    }
}
