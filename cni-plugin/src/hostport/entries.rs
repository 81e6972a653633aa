//! What the mappings of one attachment publish, as typed entries: a DNAT entry per mapping
//! and pod family, and a hairpin entry per pod IP. Each becomes one element of one of the
//! table's maps or sets ([`Entry::set`], [`Entry::element`]) through the kernel crate's typed
//! element encoder; records store entries, never nft text.

use super::mappings::{PortMapping, Proto};
use super::HostPortError;
use palisade_kernel::nftables::{Data, Element, Field, MapData};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

/// One element of the hostPort table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Entry {
    /// `(host IP .) protocol . host port` → `pod IP . container port`, in `ports<F>` or,
    /// with a host IP, `addr_ports<F>` (F: the pod IP's family). `host_ip` is never an
    /// unspecified address (`0.0.0.0` and `::` mean "any", stored as `None`).
    #[serde(rename_all = "camelCase")]
    Dnat {
        protocol: Proto,
        host_port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host_ip: Option<IpAddr>,
        pod_ip: IpAddr,
        container_port: u16,
    },
    /// `pod IP . pod IP` in `hairpin<F>`: the pod reaching itself through a node address is
    /// masqueraded, so the answer comes back through the node.
    #[serde(rename_all = "camelCase")]
    Hairpin { pod_ip: IpAddr },
}

fn family(ip: IpAddr) -> char {
    if ip.is_ipv4() {
        '4'
    } else {
        '6'
    }
}

impl Entry {
    fn pod_ip(&self) -> IpAddr {
        match self {
            Entry::Dnat { pod_ip, .. } | Entry::Hairpin { pod_ip } => *pod_ip,
        }
    }

    /// The set or map of the table that holds it.
    pub fn set(&self) -> String {
        let f = family(self.pod_ip());
        match self {
            Entry::Dnat { host_ip: None, .. } => format!("ports{f}"),
            Entry::Dnat {
                host_ip: Some(_), ..
            } => format!("addr_ports{f}"),
            Entry::Hairpin { .. } => format!("hairpin{f}"),
        }
    }

    /// The element, in the set's types (see the table's layout in `table.rs`).
    pub fn element(&self) -> Element {
        match self {
            Entry::Dnat {
                protocol,
                host_port,
                host_ip,
                pod_ip,
                container_port,
            } => {
                let mut key: Vec<Field> = host_ip.iter().map(|h| Field::from(*h)).collect();
                key.extend([Field::Proto(protocol.number()), Field::Port(*host_port)]);
                Element::map(
                    Data(key),
                    MapData::Value(Data(vec![
                        Field::from(*pod_ip),
                        Field::Port(*container_port),
                    ])),
                )
            }
            Entry::Hairpin { pod_ip } => {
                Element::set(Data(vec![Field::from(*pod_ip), Field::from(*pod_ip)]))
            }
        }
    }

    /// Two DNAT entries collide when they share a map key (the kernel refuses a second
    /// value for a key). Hairpin entries are per pod IP and never collide.
    pub fn same_key(&self, other: &Entry) -> bool {
        matches!(self, Entry::Dnat { .. })
            && self.set() == other.set()
            && self.element().key == other.element().key
    }

    /// For a UDP DNAT entry: the flows to forget once it is published.
    pub fn udp_flows(&self) -> Option<palisade_kernel::conntrack::UdpFlows> {
        match self {
            Entry::Dnat {
                protocol: Proto::Udp,
                host_port,
                host_ip,
                pod_ip,
                ..
            } => Some(palisade_kernel::conntrack::UdpFlows {
                ipv6: pod_ip.is_ipv6(),
                port: *host_port,
                dst: *host_ip,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Entry {
    /// As nft shows it: `ports4 { 6 . 8080 : 10.244.1.5 . 80 }`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {{ {} }}", self.set(), self.element())
    }
}

/// The entries that publish `mappings` for a pod with `pod_ips`. A mapping applies to the
/// first pod IP of each family; a host IP restricts it to its own family. Two mappings that
/// publish the same host port are the runtime's mistake (code 7).
pub fn entries_for(
    pod_ips: &[IpAddr],
    mappings: &[PortMapping],
) -> Result<Vec<Entry>, HostPortError> {
    let v4 = pod_ips.iter().find(|ip| ip.is_ipv4());
    let v6 = pod_ips.iter().find(|ip| ip.is_ipv6());
    let mut out: BTreeSet<Entry> = BTreeSet::new();
    for pod_ip in [v4, v6].into_iter().flatten() {
        let mut any = false;
        for m in mappings {
            if m.host_ip.is_some_and(|h| h.is_ipv4() != pod_ip.is_ipv4()) {
                continue;
            }
            out.insert(Entry::Dnat {
                protocol: m.protocol,
                host_port: m.host_port,
                host_ip: m.host_ip.filter(|h| !h.is_unspecified()),
                pod_ip: *pod_ip,
                container_port: m.container_port,
            });
            any = true;
        }
        if any {
            out.insert(Entry::Hairpin { pod_ip: *pod_ip });
        }
    }
    let out: Vec<Entry> = out.into_iter().collect();
    for (i, a) in out.iter().enumerate() {
        if let Some(b) = out[i + 1..].iter().find(|b| a.same_key(b)) {
            return Err(HostPortError::invalid(
                "conflicting port mappings",
                format!("{a} and {b} publish the same host port"),
            ));
        }
    }
    Ok(out)
}

/// An element of a record written before records were typed (`{"set", "key", "value"}` in
/// nft's text, e.g. `ports4`, `6 . 8080`, `10.244.1.5 . 80`), read once and turned into an
/// entry; `Ok(None)` for the layout guard, which no record needs.
pub fn from_nft_text(set: &str, key: &str, value: Option<&str>) -> Result<Option<Entry>, String> {
    let bad = || format!("element {set} {{ {key} }} is not one of the table's");
    let fields: Vec<&str> = key.split(" . ").collect();
    let ip = |s: &str| s.parse::<IpAddr>().map_err(|_| bad());
    let num = |s: &str| s.parse::<u16>().map_err(|_| bad());
    let dnat = |host_ip: Option<&str>, proto: &str, port: &str| -> Result<Entry, String> {
        let (pod_ip, container_port) = value.and_then(|v| v.split_once(" . ")).ok_or_else(bad)?;
        let protocol = match proto {
            "6" => Proto::Tcp,
            "17" => Proto::Udp,
            "132" => Proto::Sctp,
            other => Proto::parse(other).ok_or_else(bad)?,
        };
        Ok(Entry::Dnat {
            protocol,
            host_port: num(port)?,
            host_ip: host_ip.map(ip).transpose()?,
            pod_ip: ip(pod_ip)?,
            container_port: num(container_port)?,
        })
    };
    let entry = match (set.trim_end_matches(['4', '6']), fields.as_slice()) {
        ("ports", [proto, port]) => dnat(None, proto, port)?,
        ("addr_ports", [host, proto, port]) => dnat(Some(host), proto, port)?,
        ("hairpin", [a, b]) if a == b => Entry::Hairpin { pod_ip: ip(a)? },
        _ if set.starts_with("layout_v") => return Ok(None),
        _ => return Err(bad()),
    };
    if entry.set() != set {
        return Err(bad());
    }
    Ok(Some(entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostport::mappings::tests::{ip, tcp};

    /// UDP 53 on one node address to the pod's 5353.
    fn dns_on_a_host_ip() -> PortMapping {
        PortMapping {
            host_port: 53,
            container_port: 5353,
            protocol: Proto::Udp,
            host_ip: Some(ip("192.0.2.1")),
        }
    }

    #[test]
    fn entries_cover_each_family_and_respect_host_ip_family() {
        let pod = [ip("10.244.1.5"), ip("fd00:10:244:1::5")];
        let m = [
            tcp(8080, 80),
            dns_on_a_host_ip(),
            PortMapping {
                host_port: 9,
                container_port: 9,
                protocol: Proto::Sctp,
                host_ip: Some(ip("::")),
            },
        ];
        let mut got: Vec<String> = entries_for(&pod, &m)
            .unwrap()
            .iter()
            .map(Entry::to_string)
            .collect();
        got.sort();
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
        assert!(entries_for(&[ip("10.0.0.1")], &v6_only).unwrap().is_empty());
        // Only the first IP of a family is published.
        let two = entries_for(&[ip("10.0.0.1"), ip("10.0.0.2")], &[tcp(1, 1)]).unwrap();
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
        let e = entries_for(&[ip("10.0.0.1")], &m).unwrap_err();
        assert!(e.details.contains("same host port"), "{e}");
        assert_eq!(e.kind, super::super::ErrorKind::Invalid);
    }

    #[test]
    fn entries_are_typed_json_and_elements_of_the_right_set() {
        let e = entries_for(&[ip("10.0.0.1")], &[tcp(8080, 80)]).unwrap();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"kind": "dnat", "protocol": "tcp", "hostPort": 8080, "podIp": "10.0.0.1",
                 "containerPort": 80},
                {"kind": "hairpin", "podIp": "10.0.0.1"}
            ])
        );
        assert_eq!(serde_json::from_value::<Vec<Entry>>(json).unwrap(), e);
        assert_eq!(
            e[0].element().key.bytes(),
            vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0]
        );
    }

    #[test]
    fn old_text_elements_become_the_same_entries() {
        let want = entries_for(
            &[ip("10.244.1.5"), ip("fd00::5")],
            &[tcp(8080, 80), dns_on_a_host_ip()],
        )
        .unwrap();
        for e in &want {
            let el = e.element();
            let value = el.data.as_ref().map(|d| d.to_string());
            let back = from_nft_text(&e.set(), &el.key.to_string(), value.as_deref());
            assert_eq!(back, Ok(Some(e.clone())), "{e}");
        }
        assert_eq!(from_nft_text("layout_v1", "1", None), Ok(None));
        assert!(from_nft_text("ports4", "6 . 8080", None).is_err());
        assert!(from_nft_text("ports4", "6 . 8080", Some("fd00::1 . 80")).is_err());
        assert!(from_nft_text("hairpin4", "10.0.0.1 . 10.0.0.2", None).is_err());
        assert!(from_nft_text("other", "1", None).is_err());
    }
}
