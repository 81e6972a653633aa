//! Bad input: each case asserts the exact CNI error code printed on stdout (with a non-zero
//! exit) and that nothing leaked on the node (no new link or route, no IPAM reservation, no
//! hostPort element).
//!
//! Codes are those of `cni-plugin/README.md` ("Errors"), which follow the CNI spec's
//! well-known codes (1 incompatible version, 2 unsupported field, 3 unknown container, 4
//! invalid environment variables, 6 decode failure, 7 invalid network config, 50 not
//! available) and add plugin codes from 100 (101 no free address, 102 IPAM store, 103
//! hostPort in the kernel, 104 agent, 107 delegated IPAM); malformed port mappings are 7.
//!
//! Every case of a group runs even when an earlier one fails; the test then fails listing
//! every wrong case, so one run shows the whole picture.

// `pub`: the harness is shared by every test binary and each uses a part of it.
pub mod common;

use common::code::*;
use common::*;
use palisade_testutil::kernel_tests_enabled;
use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};

type CaseFn<'a> = Box<dyn Fn(&Node, &Pod) -> CniOutput + 'a>;

struct Case<'a> {
    name: &'static str,
    code: u64,
    run: CaseFn<'a>,
}

fn case<'a>(
    name: &'static str,
    code: u64,
    run: impl Fn(&Node, &Pod) -> CniOutput + 'a,
) -> Case<'a> {
    Case {
        name,
        code,
        run: Box::new(run),
    }
}

/// Run every case on `node` with a fresh pod each, then fail listing every wrong one.
fn run_cases(node: &Node, cases: Vec<Case>) {
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let pod = node.pod(&format!("c{i}"));
        let r = catch_unwind(AssertUnwindSafe(|| {
            let out = (c.run)(node, &pod);
            let got = out.err_code();
            assert_eq!(
                got, c.code,
                "wrong CNI error code (want {}, got {got}): {out}",
                c.code
            );
            node.assert_no_leak(c.name);
        }));
        if let Err(e) = r {
            // Undo whatever a wrongly accepted case built, so the next case is judged on its
            // own and not on this one's leftovers.
            let _ = node.run("DEL", &pod, &conf_v(node));
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("[{}] {msg}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn conf_v(node: &Node) -> Value {
    node.conf("1.0.0", Stack::Dual)
}

/// ADD with `conf` mutated by `f`.
fn add_with(node: &Node, pod: &Pod, f: impl Fn(&mut Value)) -> CniOutput {
    let mut c = conf_v(node);
    f(&mut c);
    node.run("ADD", pod, &c)
}

/// ADD with raw stdin bytes.
fn add_raw(node: &Node, pod: &Pod, stdin: &[u8]) -> CniOutput {
    let netns = pod.netns_path();
    let cni_path = cni_path();
    node.exec_plugin(
        &[
            ("CNI_COMMAND", Some("ADD")),
            ("CNI_CONTAINERID", Some(pod.cid.as_str())),
            ("CNI_NETNS", Some(netns.as_str())),
            ("CNI_IFNAME", Some("eth0")),
            ("CNI_PATH", Some(cni_path.as_str())),
        ],
        stdin,
    )
}

fn env_case(node: &Node, pod: &Pod, k: &'static str, v: Option<&'static str>) -> CniOutput {
    node.run_env("ADD", pod, &conf_v(node), &[(k, v)])
}

#[test]
fn bad_stdin_and_versions() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("badjson");
    run_cases(
        &node,
        vec![
            case("truncated JSON", DECODE_FAILURE, |n, p| {
                add_raw(n, p, br#"{"cniVersion":"1.0.0","name":"x","#)
            }),
            case("JSON array instead of object", DECODE_FAILURE, |n, p| {
                add_raw(n, p, b"[1,2]")
            }),
            case("empty stdin", DECODE_FAILURE, |n, p| add_raw(n, p, b"")),
            case("not UTF-8", DECODE_FAILURE, |n, p| {
                add_raw(n, p, b"\xff\xfe{}")
            }),
            case("wrong type for name", INVALID_CONFIG, |n, p| {
                add_with(n, p, |c| c["name"] = json!(5))
            }),
            case("wrong type for ipam.ranges", INVALID_CONFIG, |n, p| {
                add_with(n, p, |c| c["ipam"]["ranges"] = json!("10.0.0.0/24"))
            }),
            case(
                "missing cniVersion (means 0.1.0)",
                INCOMPATIBLE_VERSION,
                |n, p| {
                    add_with(n, p, |c| {
                        c.as_object_mut().unwrap().remove("cniVersion");
                    })
                },
            ),
            case(
                "unsupported old version 0.2.0",
                INCOMPATIBLE_VERSION,
                |n, p| add_with(n, p, |c| c["cniVersion"] = json!("0.2.0")),
            ),
            case(
                "unsupported future version 2.0.0",
                INCOMPATIBLE_VERSION,
                |n, p| add_with(n, p, |c| c["cniVersion"] = json!("2.0.0")),
            ),
            case(
                "cniVersions with no common version",
                INCOMPATIBLE_VERSION,
                |n, p| {
                    add_with(n, p, |c| {
                        c.as_object_mut().unwrap().remove("cniVersion");
                        c["cniVersions"] = json!(["0.1.0", "9.9.9"]);
                    })
                },
            ),
            case(
                "CHECK with 0.3.1 (CHECK exists since 0.4.0)",
                INCOMPATIBLE_VERSION,
                |n, p| {
                    let mut c = n.conf("0.3.1", Stack::V4);
                    c["prevResult"] = json!({"cniVersion": "0.3.1", "ips": [], "interfaces": []});
                    n.run("CHECK", p, &c)
                },
            ),
            case(
                "GC with 1.0.0 (GC exists since 1.1.0)",
                INCOMPATIBLE_VERSION,
                |n, _| n.gc(&n.conf("1.0.0", Stack::V4), &[]),
            ),
            case(
                "STATUS with 1.0.0 (STATUS exists since 1.1.0)",
                INCOMPATIBLE_VERSION,
                |n, _| n.run_netless("STATUS", &n.conf("1.0.0", Stack::V4)),
            ),
        ],
    );
}

#[test]
fn bad_environment() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("badenv");
    run_cases(
        &node,
        vec![
            // No CNI_COMMAND at all is a person running the plugin by hand, not a bad
            // environment: it answers its name (tests/operator.rs).
            case("CNI_COMMAND unknown", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_COMMAND", Some("FROB"))
            }),
            case("CNI_COMMAND lower case", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_COMMAND", Some("add"))
            }),
            case("CNI_CONTAINERID missing", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_CONTAINERID", None)
            }),
            case("CNI_CONTAINERID empty", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_CONTAINERID", Some(""))
            }),
            case("CNI_CONTAINERID with slash", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_CONTAINERID", Some("abc/def"))
            }),
            case("CNI_CONTAINERID is ..", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_CONTAINERID", Some(".."))
            }),
            case("CNI_CONTAINERID with ../", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_CONTAINERID", Some("../../etc"))
            }),
            case("CNI_IFNAME missing", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_IFNAME", None)
            }),
            case("CNI_IFNAME empty", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_IFNAME", Some(""))
            }),
            case("CNI_IFNAME 16 chars", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_IFNAME", Some("eth0123456789abc"))
            }),
            case("CNI_IFNAME with slash", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_IFNAME", Some("eth/0"))
            }),
            case("CNI_IFNAME with space", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_IFNAME", Some("eth 0"))
            }),
            case("CNI_IFNAME is ..", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_IFNAME", Some(".."))
            }),
            case("CNI_NETNS missing on ADD", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_NETNS", None)
            }),
            case("CNI_NETNS empty on ADD", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_NETNS", Some(""))
            }),
            case(
                "CNI_ARGS unknown key without IgnoreUnknown",
                INVALID_ENV,
                |n, p| env_case(n, p, "CNI_ARGS", Some("K8S_POD_NAME=a;FOO=bar")),
            ),
            case("CNI_ARGS not K=V", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_ARGS", Some("IgnoreUnknown=1;garbage"))
            }),
            case(
                "CNI_IFNAME already taken in the pod (undo)",
                NETLINK,
                |n, p| {
                    // Fails after IPAM reserved an address: the reservation must be undone.
                    p.ns.sh("ip link add eth0 type veth peer name eth0peer")
                        .unwrap();
                    n.run("ADD", p, &conf_v(n))
                },
            ),
            case("CNI_NETNS does not exist", UNKNOWN_CONTAINER, |n, p| {
                env_case(n, p, "CNI_NETNS", Some("/run/netns/palt-no-such-netns"))
            }),
            case("CNI_NETNS is not a netns", INVALID_ENV, |n, p| {
                env_case(n, p, "CNI_NETNS", Some("/etc/hostname"))
            }),
        ],
    );
}

#[test]
fn bad_network_config() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("badconf");
    let range = |s: &str| json!([{ "subnet": s }]);
    run_cases(
        &node,
        vec![
            case("missing name", INVALID_CONFIG, |n, p| {
                add_with(n, p, |c| {
                    c.as_object_mut().unwrap().remove("name");
                })
            }),
            case("missing ipam", INVALID_CONFIG, |n, p| {
                add_with(n, p, |c| {
                    c.as_object_mut().unwrap().remove("ipam");
                })
            }),
            case("empty ranges", INVALID_CONFIG, |n, p| {
                add_with(n, p, |c| c["ipam"]["ranges"] = json!([]))
            }),
            case("subnet not a CIDR", INVALID_CONFIG, move |n, p| {
                add_with(n, p, |c| c["ipam"]["ranges"] = json!([range("banana")]))
            }),
            case("subnet prefix /33", INVALID_CONFIG, move |n, p| {
                add_with(n, p, |c| {
                    c["ipam"]["ranges"] = json!([range("10.244.1.0/33")])
                })
            }),
            case("rangeStart outside subnet", INVALID_CONFIG, |n, p| {
                add_with(
                    n,
                    p,
                    |c| {
                        c["ipam"]["ranges"] =
                            json!([[{ "subnet": "10.244.1.0/24", "rangeStart": "10.244.2.10" }]])
                    },
                )
            }),
            case("rangeEnd before rangeStart", INVALID_CONFIG, |n, p| {
                add_with(n, p, |c| {
                    c["ipam"]["ranges"] = json!([[{
                        "subnet": "10.244.1.0/24",
                        "rangeStart": "10.244.1.100",
                        "rangeEnd": "10.244.1.10"
                    }]])
                })
            }),
            case("overlapping ranges", INVALID_CONFIG, move |n, p| {
                add_with(
                    n,
                    p,
                    |c| {
                        c["ipam"]["ranges"] = json!([[{ "subnet": "10.244.1.0/24" }, { "subnet": "10.244.1.128/25" }]])
                    },
                )
            }),
            case("subnet host bits set", INVALID_CONFIG, move |n, p| {
                add_with(n, p, |c| {
                    c["ipam"]["ranges"] = json!([range("10.244.1.5/24")])
                })
            }),
            case(
                "subnet /31 has no usable address",
                INVALID_CONFIG,
                move |n, p| {
                    add_with(n, p, |c| {
                        c["ipam"]["ranges"] = json!([range("10.244.1.0/31")])
                    })
                },
            ),
            case("range set mixing families", INVALID_CONFIG, |n, p| {
                add_with(
                    n,
                    p,
                    |c| {
                        c["ipam"]["ranges"] =
                            json!([[{ "subnet": "10.244.1.0/24" }, { "subnet": "fd00:1::/64" }]])
                    },
                )
            }),
            case("network name with slash", INVALID_CONFIG, |n, p| {
                add_with(n, p, |c| c["name"] = json!("../escape"))
            }),
            case("ipMasq true is unsupported", UNSUPPORTED_FIELD, |n, p| {
                add_with(n, p, |c| c["ipMasq"] = json!(true))
            }),
            case("mtu wrong type", INVALID_CONFIG, |n, p| {
                add_with(n, p, |c| c["mtu"] = json!("big"))
            }),
            case(
                "ipam type not found in CNI_PATH",
                DELEGATE_NOT_FOUND,
                |n, p| {
                    add_with(n, p, |c| {
                        c["ipam"] = json!({ "type": "palisade-no-such-ipam" })
                    })
                },
            ),
            case("mtu too small", INVALID_CONFIG, |n, p| {
                add_with(n, p, |c| c["mtu"] = json!(67))
            }),
            case("mtu too large", INVALID_CONFIG, |n, p| {
                add_with(n, p, |c| c["mtu"] = json!(70000))
            }),
        ],
    );
}

#[test]
fn bad_port_mappings() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("badpm");
    let with_pm = |pm: Value| {
        move |n: &Node, p: &Pod| {
            let pm = pm.clone();
            add_with(n, p, move |c| {
                c["capabilities"] = json!({ "portMappings": true });
                c["runtimeConfig"] = json!({ "portMappings": [pm.clone()] });
            })
        }
    };
    let two_claims = |n: &Node, p: &Pod| {
        add_with(n, p, |c| {
            c["capabilities"] = json!({ "portMappings": true });
            c["runtimeConfig"] = json!({ "portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 8080, "containerPort": 81, "protocol": "tcp"}
            ]});
        })
    };
    run_cases(
        &node,
        vec![
            // Malformed or colliding mappings are the runtime's configuration being wrong:
            // code 7, not the plugin's hostPort failure (103). hostPort 0 is not here:
            // src/hostport/mappings.rs documents that such entries are skipped (nothing to
            // publish; containerd filters them the same way).
            case(
                "one host port claimed for two container ports",
                INVALID_CONFIG,
                two_claims,
            ),
            case(
                "hostPort negative",
                INVALID_CONFIG,
                with_pm(json!({"hostPort": -1, "containerPort": 80, "protocol": "tcp"})),
            ),
            case(
                "containerPort missing",
                INVALID_CONFIG,
                with_pm(json!({"hostPort": 8080, "protocol": "tcp"})),
            ),
            case(
                "hostPort 70000",
                INVALID_CONFIG,
                with_pm(json!({"hostPort": 70000, "containerPort": 80, "protocol": "tcp"})),
            ),
            case(
                "containerPort 0",
                INVALID_CONFIG,
                with_pm(json!({"hostPort": 8080, "containerPort": 0, "protocol": "tcp"})),
            ),
            case(
                "protocol icmp",
                INVALID_CONFIG,
                with_pm(json!({"hostPort": 8080, "containerPort": 80, "protocol": "icmp"})),
            ),
            case(
                "hostIP not an IP",
                INVALID_CONFIG,
                with_pm(
                    json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "x"}),
                ),
            ),
        ],
    );
}

#[test]
fn bad_check_gc_status_input() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("badcmd");
    run_cases(
        &node,
        vec![
            case("CHECK with malformed prevResult", INVALID_CONFIG, |n, p| {
                let mut c = n.conf("1.0.0", Stack::V4);
                c["prevResult"] = json!({ "ips": "not-a-list", "interfaces": 3 });
                n.run("CHECK", p, &c)
            }),
            case("CHECK without prevResult", INVALID_CONFIG, |n, p| {
                n.run("CHECK", p, &n.conf("1.0.0", Stack::V4))
            }),
            case(
                "CHECK for an attachment never added",
                CHECK_MISMATCH,
                |n, p| {
                    let mut c = n.conf("1.0.0", Stack::V4);
                    c["prevResult"] = json!({
                        "cniVersion": "1.0.0",
                        "interfaces": [{ "name": "eth0", "sandbox": p.netns_path() }],
                        "ips": [{ "address": "10.244.1.77/32", "interface": 0 }]
                    });
                    n.run("CHECK", p, &c)
                },
            ),
            case(
                "GC with malformed valid-attachments",
                INVALID_CONFIG,
                |n, _| {
                    let mut c = n.conf("1.1.0", Stack::V4);
                    c["cni.dev/valid-attachments"] = json!([{ "containerID": 7 }, "x"]);
                    n.run_netless("GC", &c)
                },
            ),
            case("STATUS with unwritable data dir", NOT_AVAILABLE, |n, _| {
                // A path below a regular file: even root cannot create it.
                let blocker = n.dir.path().join("blocker");
                std::fs::write(&blocker, b"not a directory").unwrap();
                let mut c = n.conf("1.1.0", Stack::V4);
                c["ipam"]["dataDir"] = json!(blocker.join("ipam"));
                n.run_netless("STATUS", &c)
            }),
            case("ADD with unwritable data dir", IPAM_STORE, |n, p| {
                let blocker = n.dir.path().join("blocker2");
                std::fs::write(&blocker, b"not a directory").unwrap();
                add_with(n, p, |c| c["ipam"]["dataDir"] = json!(blocker.join("ipam")))
            }),
        ],
    );
}

/// A /30 holds two pods; the third ADD fails and leaves nothing behind, and a freed address
/// is handed out again.
#[test]
fn exhausted_range() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("exhaust");
    let conf = node.conf_with_ranges("1.0.0", json!([[{ "subnet": "10.244.9.0/30" }]]));
    let a = node.pod("a");
    let b = node.pod("b");
    let ra = node.add(&a, &conf);
    let rb = node.add(&b, &conf);
    let links_with_two = node.snapshot();
    let c = node.pod("c");
    let out = node.run("ADD", &c, &conf);
    let got = out.err_code();
    // The spec has no code for "no free address": the README's is 101.
    assert_eq!(got, NO_FREE_ADDRESS, "exhausted range: {out}");
    assert_eq!(
        node.snapshot(),
        links_with_two,
        "failed ADD changed the node"
    );
    assert!(
        node.state_files_mentioning(&c.cid).is_empty(),
        "failed ADD reserved an IP"
    );
    assert!(
        !c.ns.sh_ok("ip link show dev eth0"),
        "failed ADD left eth0 in the pod"
    );
    node.del(&a, &conf);
    let rc = node.add(&c, &conf);
    assert_eq!(result_ips(&rc), result_ips(&ra), "freed address not reused");
    node.del(&b, &conf);
    node.del(&c, &conf);
    let _ = rb;
    node.assert_no_leak("exhausted range");
}

/// `agent.required: true`: an agent that refuses fails ADD with 104 and everything is undone;
/// STATUS reports 50 when the required agent is unreachable or not ready.
#[test]
fn bad_agent_answers() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("badagent");
    let required = |n: &Node, version: &str| {
        let mut c = n.conf(version, Stack::Dual);
        c["agent"]["required"] = json!(true);
        c["agent"]["timeoutMs"] = json!(500);
        c
    };
    run_cases(
        &node,
        vec![
            case("required agent answers ok:false", AGENT, move |n, p| {
                let _agent = FakeAgent::start(
                    &n.agent_socket(),
                    palisade_common::AgentResponse {
                        ok: false,
                        error: Some("policy sync failed".into()),
                        ready: true,
                    },
                );
                n.run("ADD", p, &required(n, "1.0.0"))
            }),
            case(
                "STATUS, required agent unreachable",
                NOT_AVAILABLE,
                move |n, _| n.run_netless("STATUS", &required(n, "1.1.0")),
            ),
            case(
                "STATUS, required agent not ready",
                NOT_AVAILABLE,
                move |n, _| {
                    let _agent = FakeAgent::start(
                        &n.agent_socket(),
                        palisade_common::AgentResponse {
                            ok: true,
                            error: None,
                            ready: false,
                        },
                    );
                    n.run_netless("STATUS", &required(n, "1.1.0"))
                },
            ),
        ],
    );
}
