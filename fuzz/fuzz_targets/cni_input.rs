//! The CNI plugin's whole input: the `CNI_*` environment, the network configuration on stdin
//! (conflist entry, `prevResult`, `runtimeConfig.portMappings`, `ipam`, version negotiation)
//! and the state files it reads back (the IPAM store, the hostPort records), through the
//! same parse-only front every command takes (`cli::parse_request`). Nothing here touches
//! the kernel or the host: state files live in a per-iteration temp dir.
//!
//! Input sections (see `src/lib.rs`): `%%env` (`KEY=VALUE` lines), `%%stdin`, `%%ipam`
//! (`ipam.json`), `%%hostport <file name>` (one record each), `%%arbitrary` (a generated
//! config that replaces `%%stdin`).
//!
//! Properties: no panic; every error is a CNI error whose code is one parsing can give and
//! whose error JSON has the spec's shape; what is accepted round-trips through what the
//! plugin would write or print (prevResult, IPAM state, hostPort records).

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use palisade_cni::cli::{parse_request, Request};
use palisade_cni::config::{self, Env};
use palisade_cni::error::{code, CniError};
use palisade_cni::hostport::{self, records::RecordDir};
use palisade_cni::ipam::store::{IpamState, Store};
use palisade_cni::types::CniResult;
use palisade_fuzz::{sections, split_tag};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let mut vars: HashMap<String, Option<String>> = HashMap::new();
    let mut stdin: Vec<u8> = Vec::new();
    let mut ipam_file: Option<&[u8]> = None;
    let mut records: Vec<(&[u8], &[u8])> = Vec::new();
    for (tag, body) in sections(data) {
        match split_tag(tag) {
            (b"env", _) => {
                for line in body.split(|&b| b == b'\n') {
                    let (k, v) = match line.iter().position(|&b| b == b'=') {
                        Some(i) => (&line[..i], &line[i + 1..]),
                        None => (line, &b""[..]),
                    };
                    // A value that is not UTF-8 reads as unset, as `std::env::var(..).ok()`
                    // makes it in `cli::run`.
                    vars.insert(
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8(v.to_vec()).ok(),
                    );
                }
            }
            (b"stdin", _) => stdin = body.to_vec(),
            (b"ipam", _) => ipam_file = Some(body),
            (b"hostport", name) => records.push((name, body)),
            (b"arbitrary", _) => {
                if let Ok(g) = GenConf::arbitrary(&mut Unstructured::new(body)) {
                    stdin = g.to_json().to_string().into_bytes();
                }
            }
            _ => {}
        }
    }

    // The error JSON is built for every failure, in the version `cli::run` answers with.
    let answer_version = config::best_effort_version(&stdin);
    let check_error = |e: &CniError, allowed: &[u32]| {
        assert!(
            allowed.contains(&e.code()),
            "code {} not expected here: {e}",
            e.code()
        );
        let j = e.to_json(answer_version.as_str());
        assert!(j["msg"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
        assert!(j["details"].is_string(), "{j}");
    };

    let env = match Env::from_lookup(|k| vars.get(k).cloned().flatten()) {
        Ok(env) => env,
        Err(e) => return check_error(&e, &[code::INVALID_ENV]),
    };
    if let Some(att) = &env.attachment {
        // The host veth's name comes from the (validated) attachment: a valid link name.
        let host = att.host_ifname();
        assert!(!host.is_empty() && host.len() <= 15, "{host:?}");
    }
    let conf = match parse_request(&env, &stdin) {
        Ok(Request::Version(answer)) => {
            assert!(answer["cniVersion"].is_string(), "{answer}");
            return;
        }
        Ok(Request::Command(conf)) => conf,
        Err(e) => {
            return check_error(
                &e,
                &[
                    code::INCOMPATIBLE_VERSION,
                    code::UNSUPPORTED_FIELD,
                    code::DECODE,
                    code::INVALID_CONFIG,
                ],
            )
        }
    };
    assert!(conf.state_dir.starts_with(&conf.data_dir));
    assert_eq!(conf.state_dir.file_name(), Some(conf.name.as_ref()));

    // prevResult: what CHECK compares against and ADD passes on, printed as the plugin
    // prints it, reads back to the same output.
    if let Some(prev) = &conf.prev_result {
        let printed = prev.to_json(&conf.version);
        let again = CniResult::from_value(&printed).expect("a printed result parses");
        assert_eq!(again.to_json(&conf.version), printed);
    }
    // portMappings: parsed as ADD and CHECK do, then turned into the table's entries.
    match conf.port_mappings() {
        Ok(mappings) => {
            let pod_ips: Vec<IpAddr> = conf
                .prev_result
                .iter()
                .flat_map(|r| r.ips.iter().map(|ip| ip.address.addr()))
                .chain([
                    IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5)),
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5)),
                ])
                .collect();
            if let Err(e) = hostport::entries_for(&pod_ips, &mappings) {
                assert_eq!(e.kind, hostport::ErrorKind::Invalid, "{e:?}");
            }
        }
        Err(e) => check_error(&e, &[code::INVALID_CONFIG]),
    }

    // The state files, in a temp dir laid out as `<dataDir>/<name>/ipam.json` and
    // `<dataDir>/hostport/*.json` (never the configured dataDir: that is the host's).
    let dir = TempDir::new();
    let store = Store::new(dir.0.join(&conf.name));
    if let Some(bytes) = ipam_file {
        // A name the file system refuses (longer than 255 bytes) cannot hold a state file
        // on a node either: then there is just none to read.
        if std::fs::create_dir_all(store.dir()).is_ok() {
            let _ = std::fs::write(store.dir().join("ipam.json"), bytes);
        }
    }
    match store.read() {
        Ok(state) => {
            let bytes = serde_json::to_vec_pretty(&state).unwrap();
            let again: IpamState = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(again, state);
        }
        Err(e) => check_error(&e, &[code::IPAM_STORE]),
    }
    if !records.is_empty() {
        let record_dir = RecordDir::dir_of(&dir.0);
        std::fs::create_dir_all(&record_dir).unwrap();
        for (i, (name, body)) in records.iter().enumerate() {
            let name = String::from_utf8_lossy(name);
            let unusable = name.is_empty() || name.len() > 200 || name.contains(['/', '\0']);
            let name = if unusable || name == "." || name == ".." {
                format!("record-{i}.json")
            } else {
                name.into_owned()
            };
            std::fs::write(record_dir.join(name), body).unwrap();
        }
    }
    let recs = RecordDir::open(&dir.0).unwrap();
    match recs.read_all() {
        Ok(all) => {
            for r in all {
                // Written as the plugin writes it (under its attachment's file name), it
                // reads back the same.
                recs.write(&r).unwrap();
                let again = recs.read(&r.container_id, &r.ifname).unwrap();
                assert_eq!(again.as_ref(), Some(&r));
            }
        }
        Err(e) => check_error(
            &CniError::HostPort {
                context: "records",
                source: e,
            },
            &[code::IO_FAILURE],
        ),
    }
}

/// A directory removed when dropped, unique per iteration.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "palisade-fuzz-cni-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- the `arbitrary` generator of network configurations ----

#[derive(Arbitrary, Debug)]
enum GenVersion {
    V030,
    V031,
    V040,
    V100,
    V110,
    Other(String),
    Missing,
}

#[derive(Arbitrary, Debug)]
struct GenIp {
    v6: bool,
    bits: u128,
}

impl GenIp {
    fn ip(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(self.bits.into())
        } else {
            IpAddr::V4((self.bits as u32).into())
        }
    }
}

#[derive(Arbitrary, Debug)]
struct GenRange {
    subnet: GenIp,
    prefix: u8,
    start: Option<GenIp>,
    end: Option<GenIp>,
    gateway: Option<GenIp>,
}

#[derive(Arbitrary, Debug)]
enum GenProto {
    Tcp,
    Udp,
    Sctp,
    Upper(String),
}

#[derive(Arbitrary, Debug)]
struct GenMapping {
    host_port: i32,
    container_port: i32,
    protocol: Option<GenProto>,
    host_ip: Option<GenIp>,
    cri_keys: bool,
}

#[derive(Arbitrary, Debug)]
struct GenInterface {
    name: String,
    mac: Option<String>,
    mtu: Option<u32>,
    sandbox: Option<String>,
}

#[derive(Arbitrary, Debug)]
struct GenIpConfig {
    address: GenIp,
    prefix: u8,
    gateway: Option<GenIp>,
    interface: Option<u8>,
    version: Option<String>,
}

#[derive(Arbitrary, Debug)]
struct GenResult {
    interfaces: Vec<GenInterface>,
    ips: Vec<GenIpConfig>,
    routes: Vec<(GenIp, u8, Option<GenIp>)>,
    nameservers: Vec<String>,
}

#[derive(Arbitrary, Debug)]
struct GenConf {
    version: GenVersion,
    versions: Option<Vec<String>>,
    name: Option<String>,
    builtin_ipam: bool,
    ranges: Vec<Vec<GenRange>>,
    data_dir: Option<String>,
    mtu: Option<i64>,
    capabilities: Option<bool>,
    port_mappings: Option<Vec<GenMapping>>,
    prev_result: Option<GenResult>,
    agent: Option<(Option<String>, Option<u64>, Option<bool>)>,
    log: Option<(String, String)>,
    ip_masq: Option<bool>,
    valid_attachments: Option<Vec<(String, String)>>,
}

fn cidr(ip: &GenIp, prefix: u8) -> String {
    format!("{}/{}", ip.ip(), prefix % 130)
}

impl GenConf {
    fn to_json(&self) -> Value {
        let mut c = json!({"type": "palisade"});
        let o = c.as_object_mut().unwrap();
        let version = match &self.version {
            GenVersion::V030 => Some("0.3.0".to_string()),
            GenVersion::V031 => Some("0.3.1".to_string()),
            GenVersion::V040 => Some("0.4.0".to_string()),
            GenVersion::V100 => Some("1.0.0".to_string()),
            GenVersion::V110 => Some("1.1.0".to_string()),
            GenVersion::Other(s) => Some(s.clone()),
            GenVersion::Missing => None,
        };
        if let Some(v) = version {
            o.insert("cniVersion".into(), v.into());
        }
        if let Some(v) = &self.versions {
            o.insert("cniVersions".into(), json!(v));
        }
        o.insert(
            "name".into(),
            self.name.clone().unwrap_or_else(|| "pods".into()).into(),
        );
        let ranges: Vec<Vec<Value>> = self
            .ranges
            .iter()
            .map(|set| {
                set.iter()
                    .map(|r| {
                        let mut v = json!({"subnet": cidr(&r.subnet, r.prefix)});
                        if let Some(s) = &r.start {
                            v["rangeStart"] = s.ip().to_string().into();
                        }
                        if let Some(e) = &r.end {
                            v["rangeEnd"] = e.ip().to_string().into();
                        }
                        if let Some(g) = &r.gateway {
                            v["gateway"] = g.ip().to_string().into();
                        }
                        v
                    })
                    .collect()
            })
            .collect();
        let mut ipam = json!({
            "type": if self.builtin_ipam { "palisade" } else { "host-local" },
            "ranges": ranges,
        });
        if let Some(d) = &self.data_dir {
            ipam["dataDir"] = d.clone().into();
        }
        o.insert("ipam".into(), ipam);
        if let Some(m) = self.mtu {
            o.insert("mtu".into(), m.into());
        }
        if let Some(on) = self.capabilities {
            o.insert("capabilities".into(), json!({"portMappings": on}));
        }
        if let Some(maps) = &self.port_mappings {
            let maps: Vec<Value> = maps
                .iter()
                .map(|m| {
                    let (hp, cp, pr, hi) = if m.cri_keys {
                        ("HostPort", "ContainerPort", "Protocol", "HostIP")
                    } else {
                        ("hostPort", "containerPort", "protocol", "hostIP")
                    };
                    let mut v = json!({hp: m.host_port, cp: m.container_port});
                    if let Some(p) = &m.protocol {
                        v[pr] = match p {
                            GenProto::Tcp => "tcp".into(),
                            GenProto::Udp => "udp".into(),
                            GenProto::Sctp => "sctp".into(),
                            GenProto::Upper(s) => s.clone().into(),
                        };
                    }
                    if let Some(ip) = &m.host_ip {
                        v[hi] = ip.ip().to_string().into();
                    }
                    v
                })
                .collect();
            o.insert("runtimeConfig".into(), json!({"portMappings": maps}));
        }
        if let Some(r) = &self.prev_result {
            let interfaces: Vec<Value> = r
                .interfaces
                .iter()
                .map(|i| {
                    let mut v = json!({"name": i.name});
                    if let Some(m) = &i.mac {
                        v["mac"] = m.clone().into();
                    }
                    if let Some(m) = i.mtu {
                        v["mtu"] = m.into();
                    }
                    if let Some(s) = &i.sandbox {
                        v["sandbox"] = s.clone().into();
                    }
                    v
                })
                .collect();
            let ips: Vec<Value> = r
                .ips
                .iter()
                .map(|ip| {
                    let mut v = json!({"address": cidr(&ip.address, ip.prefix)});
                    if let Some(g) = &ip.gateway {
                        v["gateway"] = g.ip().to_string().into();
                    }
                    if let Some(i) = ip.interface {
                        v["interface"] = i.into();
                    }
                    if let Some(ver) = &ip.version {
                        v["version"] = ver.clone().into();
                    }
                    v
                })
                .collect();
            let routes: Vec<Value> = r
                .routes
                .iter()
                .map(|(dst, p, gw)| {
                    let mut v = json!({"dst": cidr(dst, *p)});
                    if let Some(g) = gw {
                        v["gw"] = g.ip().to_string().into();
                    }
                    v
                })
                .collect();
            o.insert(
                "prevResult".into(),
                json!({"interfaces": interfaces, "ips": ips, "routes": routes,
                       "dns": {"nameservers": r.nameservers}}),
            );
        }
        if let Some((socket, timeout, required)) = &self.agent {
            o.insert(
                "agent".into(),
                json!({"socket": socket, "timeoutMs": timeout, "required": required}),
            );
        }
        if let Some((file, level)) = &self.log {
            o.insert("logFile".into(), file.clone().into());
            o.insert("logLevel".into(), level.clone().into());
        }
        if let Some(m) = self.ip_masq {
            o.insert("ipMasq".into(), m.into());
        }
        if let Some(list) = &self.valid_attachments {
            let list: Vec<Value> = list
                .iter()
                .map(|(c, i)| json!({"containerID": c, "ifname": i}))
                .collect();
            o.insert("cni.dev/valid-attachments".into(), list.into());
        }
        c
    }
}
