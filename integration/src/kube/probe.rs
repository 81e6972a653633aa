//! Probes and pod status on a real cluster, as pure functions: the `kubectl exec` command
//! line of one probe, what its outcome means, and what a Pod object says about readiness
//! and addresses.

use crate::scenario::{Family, PodRef, Protocol};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The `kubectl` arguments (after the global ones) of one probe: run `agnhost connect` in
/// container `container` of `src` towards `ip:port`, as upstream's netpol suite does.
pub fn exec_args(
    src: &PodRef,
    container: &str,
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
    timeout: Duration,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "exec",
        "-n",
        &src.namespace,
        &src.name,
        "-c",
        container,
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(connect_command(ip, port, protocol, timeout));
    args
}

/// `/agnhost connect <ip>:<port> --timeout=1s --protocol=tcp` (IPv6 in brackets).
pub fn connect_command(
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
    timeout: Duration,
) -> Vec<String> {
    vec![
        "/agnhost".to_string(),
        "connect".to_string(),
        SocketAddr::new(ip, port).to_string(),
        format!("--timeout={}", go_duration(timeout)),
        format!("--protocol={}", protocol.as_str().to_ascii_lowercase()),
    ]
}

/// A duration as Go's `time.ParseDuration` reads it: whole seconds as `1s`, else `1500ms`.
pub fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// `agnhost connect` exited 0: the connection (or UDP answer, or SCTP association) worked.
    Connected,
    /// `agnhost connect` reported a network failure (TIMEOUT, REFUSED or OTHER: ...).
    Blocked(String),
    /// The probe did not run properly (kubectl or API error, agnhost usage error): says
    /// nothing about the policy; retried, and reported if it persists.
    Error(String),
}

/// Judge a probe from `kubectl exec`'s exit code and stderr. kubectl passes the remote
/// command's exit code on (printing `command terminated with exit code N`), but exits 1 on
/// its own errors too, so the verdict comes from agnhost's own words on stderr:
/// `TIMEOUT`, `REFUSED`, `OTHER: <error>` are network outcomes; `DNS:`, `UNKNOWN:` and
/// anything else are errors of the probe itself.
pub fn classify(exit_code: Option<i32>, stderr: &str) -> ProbeOutcome {
    if exit_code == Some(0) {
        return ProbeOutcome::Connected;
    }
    // The remote command ran and exited 1 (kubectl says so, or exited 1 itself).
    let agnhost_failed = stderr.contains("command terminated with exit code 1")
        || (exit_code == Some(1) && !stderr.contains("command terminated"));
    let verdict = stderr
        .lines()
        .map(str::trim)
        .find(|l| *l == "TIMEOUT" || *l == "REFUSED" || l.starts_with("OTHER:"));
    if let (true, Some(line)) = (agnhost_failed, verdict) {
        return ProbeOutcome::Blocked(line.to_string());
    }
    let text = stderr.trim();
    ProbeOutcome::Error(match exit_code {
        Some(code) if text.is_empty() => format!("kubectl exec exited {code}"),
        Some(code) => format!("kubectl exec exited {code}: {text}"),
        None if text.is_empty() => "kubectl exec was killed".to_string(),
        None => format!("kubectl exec was killed: {text}"),
    })
}

/// What a Pod object says about the pod, for the readiness wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    pub ready: bool,
    /// The pod's address in the probed family, once it has one.
    pub ip: Option<IpAddr>,
    /// Every address the pod has (for the message when the family is missing).
    pub all_ips: Vec<IpAddr>,
    /// The phase is Failed or Succeeded: it will never become ready.
    pub finished: bool,
    /// Why a container waits (`ImagePullBackOff`, `CrashLoopBackOff`, ...), for messages.
    pub waiting: Vec<String>,
}

impl PodState {
    /// Ready with an address to probe.
    pub fn usable(&self) -> bool {
        self.ready && self.ip.is_some()
    }
}

/// Read a Pod object (`kubectl get pod -o json`).
pub fn pod_state(pod: &Value, family: Family) -> PodState {
    let status = &pod["status"];
    let mut all_ips: Vec<IpAddr> = status["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["ip"].as_str()?.parse().ok())
        .collect();
    if all_ips.is_empty() {
        all_ips.extend(
            status["podIP"]
                .as_str()
                .and_then(|s| s.parse::<IpAddr>().ok()),
        );
    }
    let ready = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let waiting = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|k| status[*k].as_array().into_iter().flatten())
        .filter_map(|c| {
            let reason = c["state"]["waiting"]["reason"].as_str()?;
            Some(format!("{}: {reason}", c["name"].as_str().unwrap_or("?")))
        })
        .collect();
    PodState {
        ready,
        ip: all_ips.iter().copied().find(|ip| family.matches(ip)),
        all_ips,
        finished: matches!(status["phase"].as_str(), Some("Failed" | "Succeeded")),
        waiting,
    }
}

/// What `kubectl create`/`replace` of a policy came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Accepted,
    /// 422 Invalid: kubectl prints `The NetworkPolicy "x" is invalid: ...`.
    Invalid(String),
    /// Any other failure (400, 409, connection refused, ...).
    Failed(String),
}

/// Judge a kubectl write from its success and stderr.
pub fn classify_write(success: bool, stderr: &str) -> WriteOutcome {
    let text = stderr.trim().to_string();
    if success {
        WriteOutcome::Accepted
    } else if text.contains("\" is invalid") || text.contains("(Invalid)") {
        WriteOutcome::Invalid(text)
    } else {
        WriteOutcome::Failed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_ref() -> PodRef {
        PodRef {
            namespace: "x".into(),
            name: "a".into(),
        }
    }

    #[test]
    fn the_probe_is_kubectl_exec_of_agnhost_connect() {
        let args = exec_args(
            &pod_ref(),
            "cont-80-tcp",
            "10.244.1.7".parse().unwrap(),
            80,
            Protocol::Tcp,
            Duration::from_secs(1),
        );
        assert_eq!(
            args,
            [
                "exec",
                "-n",
                "x",
                "a",
                "-c",
                "cont-80-tcp",
                "--",
                "/agnhost",
                "connect",
                "10.244.1.7:80",
                "--timeout=1s",
                "--protocol=tcp"
            ]
        );
        let v6 = connect_command(
            "fd00:10:244::7".parse().unwrap(),
            5353,
            Protocol::Udp,
            Duration::from_millis(1500),
        );
        assert_eq!(
            v6,
            [
                "/agnhost",
                "connect",
                "[fd00:10:244::7]:5353",
                "--timeout=1500ms",
                "--protocol=udp"
            ]
        );
        let sctp = connect_command(
            "10.0.0.1".parse().unwrap(),
            9,
            Protocol::Sctp,
            Duration::from_secs(2),
        );
        assert_eq!(sctp[3..], ["--timeout=2s", "--protocol=sctp"]);
    }

    #[test]
    fn outcomes_are_judged_from_agnhost_words_not_from_the_exit_code_alone() {
        assert_eq!(classify(Some(0), ""), ProbeOutcome::Connected);
        for word in [
            "TIMEOUT",
            "REFUSED",
            "OTHER: dial tcp 10.0.0.1:80: connect: no route to host",
        ] {
            let stderr = format!("{word}\ncommand terminated with exit code 1\n");
            assert_eq!(
                classify(Some(1), &stderr),
                ProbeOutcome::Blocked(word.to_string())
            );
        }
        // kubectl's own failures also exit 1: not a verdict on the policy.
        for stderr in [
            "Error from server (NotFound): pods \"a\" not found\n",
            "error: unable to upgrade connection: container not found (\"cont-80-tcp\")\n",
            "DNS: lookup nowhere: no such host\ncommand terminated with exit code 1\n",
            "UNKNOWN: missing port in address\ncommand terminated with exit code 1\n",
            "",
        ] {
            assert!(
                matches!(classify(Some(1), stderr), ProbeOutcome::Error(_)),
                "{stderr:?}"
            );
        }
        // Killed at the time limit.
        match classify(None, "TIMEOUT\n") {
            ProbeOutcome::Error(e) => assert!(e.contains("killed"), "{e}"),
            other => panic!("{other:?}"),
        }
        // A shell that is not kubectl's: exit 126/127 is never a network verdict.
        assert!(matches!(
            classify(Some(126), "TIMEOUT"),
            ProbeOutcome::Error(_)
        ));
    }

    #[test]
    fn pod_status_gives_readiness_and_the_address_of_the_family() {
        let running = json!({"status": {
            "phase": "Running",
            "podIP": "10.244.1.5",
            "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00:10:244:1::5"}],
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
        }});
        let v4 = pod_state(&running, Family::V4);
        assert!(v4.ready && v4.usable() && !v4.finished);
        assert_eq!(v4.ip, Some("10.244.1.5".parse().unwrap()));
        let v6 = pod_state(&running, Family::V6);
        assert_eq!(v6.ip, Some("fd00:10:244:1::5".parse().unwrap()));
        assert_eq!(v6.all_ips.len(), 2);

        // Single-stack v4 cluster asked for v6: addresses, none of the family.
        let v4_only = json!({"status": {"podIP": "10.244.1.5",
            "conditions": [{"type": "Ready", "status": "True"}]}});
        let st = pod_state(&v4_only, Family::V6);
        assert!(st.ready && !st.usable() && st.ip.is_none() && st.all_ips.len() == 1);

        let pulling = json!({"status": {"phase": "Pending",
            "conditions": [{"type": "Ready", "status": "False"}],
            "initContainerStatuses": [{"name": "sidecar-80-tcp",
                "state": {"waiting": {"reason": "ImagePullBackOff"}}}],
            "containerStatuses": [{"name": "cont-80-tcp",
                "state": {"waiting": {"reason": "PodInitializing"}}}]}});
        let st = pod_state(&pulling, Family::V4);
        assert!(!st.ready && !st.usable() && !st.finished);
        assert_eq!(
            st.waiting,
            [
                "sidecar-80-tcp: ImagePullBackOff",
                "cont-80-tcp: PodInitializing"
            ]
        );

        let failed = json!({"status": {"phase": "Failed"}});
        assert!(pod_state(&failed, Family::V4).finished);
        assert!(!pod_state(&json!({}), Family::V4).usable());
    }

    #[test]
    fn writes_are_accepted_invalid_or_failed() {
        assert_eq!(classify_write(true, ""), WriteOutcome::Accepted);
        let invalid = "The NetworkPolicy \"endport-below\" is invalid: spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to `port`\n";
        assert_eq!(
            classify_write(false, invalid),
            WriteOutcome::Invalid(invalid.trim().to_string())
        );
        for other in [
            "Error from server (AlreadyExists): error when creating \"STDIN\": networkpolicies.networking.k8s.io \"p\" already exists",
            "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?",
            "Error from server (BadRequest): error when creating \"STDIN\": NetworkPolicy in version \"v1\" cannot be handled as a NetworkPolicy: strict decoding error: unknown field \"spec.foo\"",
        ] {
            assert!(matches!(classify_write(false, other), WriteOutcome::Failed(_)), "{other}");
        }
    }
}
