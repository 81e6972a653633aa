//! The live stream of denied connections (`GET /drops` on the debug socket, followed by
//! `palisadectl drops -f`): every packet a policy drops and the NFLOG reader decodes becomes
//! one [`DropEvent`], kept in a small ring of recent drops and sent to every follower.
//!
//! Nothing here may slow the NFLOG reader: publishing never blocks (a broadcast channel; a
//! follower that falls behind loses the oldest events and is told how many), and the ring
//! is bounded.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// How many recent drops `GET /drops` (without `follow`) returns at most.
pub const RECENT_DROPS: usize = 1000;
/// Events a follower may fall behind before it loses the oldest.
const FOLLOWER_BUFFER: usize = 4096;

/// One denied packet, as the agent that dropped it describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropEvent {
    /// When the agent received it (RFC 3339, UTC).
    pub time: String,
    /// The node whose table dropped it.
    pub node: String,
    /// `ingress` (the destination's policies) or `egress` (the source's), `unknown` for a
    /// drop no policy chain logged.
    pub direction: String,
    /// `TCP`, `UDP`, `SCTP`, or the IANA protocol number.
    pub protocol: String,
    /// `namespace/name`, or absent for an address that is no pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_pod: Option<String>,
    pub src_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<String>,
    pub dst_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// The policies that isolate the destination (ingress) or the source (egress), or the
    /// chain that dropped it when no policy selects the pod (a new pod not programmed yet).
    pub policies: Vec<String>,
    /// The log prefix of the rule that dropped it (`palisade drop <direction> <chain>`).
    pub prefix: String,
}

/// Which drops a follower wants: by namespace and by pod, on either end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropFilter {
    /// Either end in this namespace.
    pub namespace: Option<String>,
    /// Either end is this pod (`namespace/name`, or a name within `namespace`).
    pub pod: Option<String>,
    /// Only this direction.
    pub direction: Option<String>,
}

impl DropFilter {
    pub fn matches(&self, e: &DropEvent) -> bool {
        let ends = [e.src_pod.as_deref(), e.dst_pod.as_deref()];
        let in_namespace = |ns: &str, pod: Option<&str>| {
            pod.and_then(|p| p.split_once('/'))
                .is_some_and(|(n, _)| n == ns)
        };
        if let Some(ns) = &self.namespace {
            if !ends.iter().any(|p| in_namespace(ns, *p)) {
                return false;
            }
        }
        if let Some(pod) = &self.pod {
            let want = match (&self.namespace, pod.contains('/')) {
                (Some(ns), false) => format!("{ns}/{pod}"),
                _ => pod.clone(),
            };
            let is_pod = |p: Option<&str>| match p {
                Some(p) if want.contains('/') => p == want,
                // A bare name without a namespace: that name in any namespace.
                Some(p) => p.split_once('/').is_some_and(|(_, n)| n == want),
                None => false,
            };
            if !ends.iter().any(|p| is_pod(*p)) {
                return false;
            }
        }
        if let Some(d) = &self.direction {
            if !e.direction.eq_ignore_ascii_case(d) {
                return false;
            }
        }
        true
    }
}

/// The agent's recent drops and its followers.
#[derive(Debug)]
pub struct DropLog {
    recent: Mutex<VecDeque<DropEvent>>,
    followers: broadcast::Sender<DropEvent>,
}

impl Default for DropLog {
    fn default() -> Self {
        DropLog {
            recent: Mutex::new(VecDeque::with_capacity(RECENT_DROPS)),
            followers: broadcast::channel(FOLLOWER_BUFFER).0,
        }
    }
}

impl DropLog {
    /// Record a drop and hand it to every follower; never blocks on them.
    pub fn publish(&self, event: DropEvent) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_DROPS {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        // Sent under the same lock as `follow` subscribes: a new follower gets each drop
        // once, in the recent ones or from the channel. No follower is not an error.
        let _ = self.followers.send(event);
    }

    /// The recent drops, oldest first.
    pub fn recent(&self) -> Vec<DropEvent> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// A follower's receiver, and the recent drops at the moment it subscribed (so that
    /// nothing falls between the two).
    pub fn follow(&self) -> (Vec<DropEvent>, broadcast::Receiver<DropEvent>) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.followers.subscribe();
        (recent.iter().cloned().collect(), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(src: Option<&str>, dst: Option<&str>, direction: &str) -> DropEvent {
        DropEvent {
            time: "2026-12-07T08:00:00Z".into(),
            node: "node-1".into(),
            direction: direction.into(),
            protocol: "TCP".into(),
            src_pod: src.map(Into::into),
            src_ip: "10.244.1.2".into(),
            src_port: Some(40000),
            dst_pod: dst.map(Into::into),
            dst_ip: "10.244.2.3".into(),
            dst_port: Some(80),
            policies: vec!["x/deny".into()],
            prefix: "palisade drop ingress pod-in-x".into(),
        }
    }

    #[test]
    fn filters_by_namespace_pod_and_direction() {
        let e = event(Some("y/client"), Some("x/server"), "ingress");
        let f = |ns: Option<&str>, pod: Option<&str>, dir: Option<&str>| DropFilter {
            namespace: ns.map(Into::into),
            pod: pod.map(Into::into),
            direction: dir.map(Into::into),
        };
        assert!(f(None, None, None).matches(&e));
        assert!(f(Some("x"), None, None).matches(&e));
        assert!(f(Some("y"), None, None).matches(&e));
        assert!(!f(Some("z"), None, None).matches(&e));
        assert!(f(None, Some("x/server"), None).matches(&e));
        assert!(f(None, Some("client"), None).matches(&e));
        assert!(f(Some("x"), Some("server"), None).matches(&e));
        assert!(!f(Some("x"), Some("client"), None).matches(&e));
        assert!(!f(None, Some("x/client"), None).matches(&e));
        assert!(f(None, None, Some("INGRESS")).matches(&e));
        assert!(!f(None, None, Some("egress")).matches(&e));
        let external = event(None, Some("x/server"), "ingress");
        assert!(!f(Some("y"), None, None).matches(&external));
    }

    #[test]
    fn the_ring_keeps_the_newest_and_followers_get_what_follows() {
        let log = DropLog::default();
        for i in 0..RECENT_DROPS + 5 {
            let mut e = event(Some("x/a"), Some("x/b"), "ingress");
            e.src_port = Some(i as u16);
            log.publish(e);
        }
        let recent = log.recent();
        assert_eq!(recent.len(), RECENT_DROPS);
        assert_eq!(recent[0].src_port, Some(5));
        let (before, mut rx) = log.follow();
        assert_eq!(before.len(), RECENT_DROPS);
        log.publish(event(Some("x/c"), None, "egress"));
        assert_eq!(rx.try_recv().unwrap().src_pod.as_deref(), Some("x/c"));
    }
}
