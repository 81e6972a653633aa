//! NFLOG: the datagrams the agent reads from its log group, decoded as `Nflog::recv` decodes
//! them (`palisade_kernel::nflog::decode`), and each logged packet handled as the agent's
//! denied-packet reporter handles it: `parse_flow` on the payload, the direction from the
//! log prefix, and the pods and policies behind it from the compiler's state.
//!
//! Input: one datagram (seeds: datagrams captured from the kernel in a test netns).
//!
//! Properties: no panic; a parsed flow's addresses are of the IP version the header says.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::agent::nflog::{direction_of, parse_flow, DeniedPacket};
use palisade_policy::compile::{Change, CompileOptions, Compiler, MasqueradeOptions};
use palisade_policy::model::{api, PodInfo};
use serde_json::json;
use std::sync::{Mutex, OnceLock};

/// A small cluster: two pods on the node, one isolated by a deny-all policy (the packets
/// of the seeds were logged between these addresses).
fn compiler() -> &'static Mutex<Compiler> {
    static C: OnceLock<Mutex<Compiler>> = OnceLock::new();
    C.get_or_init(|| {
        let mut c = Compiler::new(CompileOptions {
            node: "n1".into(),
            fail_closed_new_pods: true,
            nflog_group: Some(5),
            masquerade: MasqueradeOptions::enabled(),
        });
        for (name, ip4, ip6) in [
            ("a", "10.244.1.2", "fd00::2"),
            ("b", "10.244.1.3", "fd00::3"),
        ] {
            let pod: api::Pod = serde_json::from_value(json!({
                "metadata": {"namespace": "x", "name": name, "labels": {"pod": name}},
                "spec": {"nodeName": "n1"},
                "status": {"phase": "Running", "podIPs": [{"ip": ip4}, {"ip": ip6}]},
            }))
            .unwrap();
            c.apply(Change::UpsertPod(PodInfo::from_api(&pod)));
        }
        let policy: api::NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": "deny-all"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        }))
        .unwrap();
        c.apply(Change::UpsertPolicy(Box::new(policy)));
        Mutex::new(c)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(packets) = palisade_kernel::nflog::decode(data) else {
        return;
    };
    for p in packets {
        let direction = direction_of(&p.prefix);
        let Some(flow) = parse_flow(&p.payload) else {
            continue;
        };
        let v4 = p.payload[0] >> 4 == 4;
        assert_eq!(flow.src.is_ipv4(), v4);
        assert_eq!(flow.dst.is_ipv4(), v4);
        let _ = DeniedPacket::describe(&flow, direction, &p.prefix, compiler());
    }
});
