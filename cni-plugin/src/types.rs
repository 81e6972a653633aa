//! The CNI result (SPEC.md "Success"), parsed from any supported version and printed in the
//! shape of the invocation's version.
//!
//! One internal type serves all versions: the differences are small and mechanical
//! (0.3.x/0.4.0 carry `ips[].version`, 1.1.0 may carry `interfaces[].mtu`). Fields we do not
//! know (e.g. `socketPath` from a chained plugin) are kept, so a `prevResult` passes through
//! unchanged.

use crate::version::CniVersion;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the pod; absent (or empty) for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Interface {
    pub fn in_sandbox(&self) -> bool {
        self.sandbox.as_deref().is_some_and(|s| !s.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length, e.g. `10.244.1.5/32` (host bits kept).
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

impl CniResult {
    /// Parse a result (or an IPAM plugin's abbreviated result) of any supported version.
    pub fn from_value(v: &Value) -> Result<Self, String> {
        let mut r: CniResult = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        for ip in &mut r.ips {
            // `version` is implied by the address; it is re-added on output when needed.
            ip.extra.remove("version");
        }
        r.interfaces.iter_mut().for_each(|i| {
            i.extra.remove("cniVersion");
        });
        Ok(r)
    }

    /// The result as the spec shapes it for `version`, with `cniVersion` set.
    pub fn to_json(&self, version: &CniVersion) -> Value {
        let mut v = serde_json::to_value(self).expect("result serializes");
        let obj = v.as_object_mut().expect("object");
        if let Some(Value::Array(ips)) = obj.get_mut("ips") {
            for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
                if version.has_ip_version_field() {
                    let is_v4 = ip
                        .get("address")
                        .and_then(Value::as_str)
                        .is_some_and(|a| !a.contains(':'));
                    ip.insert("version".into(), Value::from(if is_v4 { "4" } else { "6" }));
                } else {
                    ip.remove("version");
                }
            }
        }
        if !version.has_interface_mtu() {
            if let Some(Value::Array(ifs)) = obj.get_mut("interfaces") {
                for i in ifs.iter_mut().filter_map(Value::as_object_mut) {
                    i.remove("mtu");
                }
            }
        }
        obj.insert("cniVersion".into(), Value::from(version.as_str()));
        v
    }

    /// Append `other`'s interfaces, ips (indices shifted) and routes after ours: used when ADD
    /// receives a `prevResult` from a plugin earlier in the chain.
    pub fn merge_after(mut prev: CniResult, ours: CniResult) -> CniResult {
        let offset = prev.interfaces.len();
        prev.interfaces.extend(ours.interfaces);
        prev.ips.extend(ours.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        prev.routes.extend(ours.routes);
        if prev.dns.is_empty() {
            prev.dns = ours.dns;
        }
        prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "pal0".into(),
                    mac: Some("ee:ee:ee:ee:ee:ee".into()),
                    mtu: Some(1500),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/p".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/32".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                    extra: Map::new(),
                },
                IpConfig {
                    address: "fd00::5/128".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                    extra: Map::new(),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
                extra: Map::new(),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_no_interface_mtu() {
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let j = sample().to_json(&CniVersion::supported(v).unwrap());
            assert_eq!(j["cniVersion"], v);
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][1]["version"], "6");
            assert_eq!(j["ips"][0]["interface"], 1);
            assert!(j["interfaces"][0].get("mtu").is_none());
            assert!(j["interfaces"][0].get("sandbox").is_none());
            assert_eq!(j["interfaces"][1]["sandbox"], "/run/netns/p");
        }
    }

    #[test]
    fn v1_has_no_ip_version_and_only_1_1_has_mtu() {
        let j = sample().to_json(&CniVersion::supported("1.0.0").unwrap());
        assert!(j["ips"][0].get("version").is_none());
        assert!(j["interfaces"][1].get("mtu").is_none());
        let j = sample().to_json(&CniVersion::supported("1.1.0").unwrap());
        assert!(j["ips"][0].get("version").is_none());
        assert_eq!(j["interfaces"][1]["mtu"], 1500);
        assert_eq!(
            j["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"})
        );
        assert_eq!(j["ips"][0]["address"], "10.244.1.5/32");
    }

    #[test]
    fn results_round_trip_across_versions_keeping_unknown_fields() {
        let prev = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "x", "sandbox": "/n", "socketPath": "/s"}],
            "ips": [{"version": "4", "address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0}],
            "dns": {"nameservers": ["1.1.1.1"]}
        });
        let r = CniResult::from_value(&prev).unwrap();
        assert_eq!(
            r.ips[0].address.addr(),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(r.ips[0].address.prefix_len(), 24);
        let out = r.to_json(&CniVersion::supported("1.0.0").unwrap());
        assert_eq!(out["interfaces"][0]["socketPath"], "/s");
        assert!(out["ips"][0].get("version").is_none());
        assert_eq!(out["dns"]["nameservers"][0], "1.1.1.1");
        let back = r.to_json(&CniVersion::supported("0.3.1").unwrap());
        assert_eq!(back["ips"][0]["version"], "4");
    }

    #[test]
    fn merging_after_a_prev_result_shifts_interface_indices() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                sandbox: Some("/n".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let m = CniResult::merge_after(prev, sample());
        assert_eq!(m.interfaces.len(), 3);
        assert_eq!(m.ips[0].interface, Some(2));
    }

    #[test]
    fn bad_results_are_rejected() {
        assert!(CniResult::from_value(&json!({"ips": [{"address": "nope"}]})).is_err());
        assert!(CniResult::from_value(&json!({"ips": "x"})).is_err());
    }
}
