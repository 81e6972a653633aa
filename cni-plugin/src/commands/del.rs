//! DEL: remove everything ADD made for one attachment. Idempotent: works with `CNI_NETNS`
//! empty or gone, without any state, and twice in a row. Keeps going past a failed step and
//! reports the first failure at the end (the rest go to stderr).
//!
//! Where the time goes (kernel 6.18 here): nearly all of it is the kernel deleting the veth
//! pair, which ends in `rcu_barrier()`: one RCU grace period (about 13 ms), two once the pod
//! has lived a few seconds with IPv6 on the pair (measured; with IPv6 disabled on the pair it
//! stays one: its link-local traffic leaves cached routes that hold the device). Removing
//! port mappings would cost another grace period if done naively: nf_tables frees deleted
//! elements one grace period after the commit, and closing the netlink socket that deleted
//! them waits for that while holding the nf_tables commit mutex, which the veth deletion
//! needs as well (so two threads do not help: they serialise on that mutex). So the mappings
//! are removed first, as always, but their socket is closed only after the veth is gone
//! ([`hostport::Pending`]): the grace periods overlap and the close is free.
//! An attachment without mappings costs one `stat` of its (absent) hostPort record.

use super::add::open_host_socket;
use super::warn;
use crate::agent::{self, Outcome};
use crate::config::{Env, NetConf};
use crate::error::{CniError, Result};
use crate::{hostport, ipam, link};
use palisade_common::AgentRequest;
use std::time::Duration;

/// DEL must not hang on a slow agent: the message is informational (its watch is the truth).
const DEL_AGENT_TIMEOUT: Duration = Duration::from_millis(200);

pub fn del(env: &Env, conf: &NetConf) -> Result<()> {
    let att = env.attachment();
    let mut errors: Vec<CniError> = Vec::new();

    // Port mappings first: they point at the pod IP, which is about to become reusable.
    let mappings_removed =
        hostport::del_pending(&conf.hostport_dir(), &att.container_id, &att.ifname).unwrap_or_else(
            |source| {
                errors.push(CniError::HostPort {
                    context: "remove port mappings",
                    source,
                });
                hostport::Pending::default()
            },
        );

    let record = ipam::lookup(conf, att).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    // The record names the host veth; without one the name is derived the same way ADD does.
    let host_ifname = record
        .as_ref()
        .and_then(|r| r.host_link())
        .map(String::from)
        .unwrap_or_else(|| att.host_ifname());

    if let Some(rec) = record.as_ref().filter(|r| !r.ips.is_empty()) {
        let req = AgentRequest::PodDeleted {
            container_id: att.container_id.clone(),
            ips: rec.ips.clone(),
        };
        match agent::call(&conf.agent, &req, conf.agent.timeout.min(DEL_AGENT_TIMEOUT)) {
            Outcome::NoAgent | Outcome::Answered(_) => {}
            Outcome::Failed(m) => warn(format!("agent (best effort on DEL): {m}")),
        }
    }

    // Deleting the host end removes the pod end (if its netns still exists) and every route
    // through the pair. Only then is the address released: releasing first could hand it to
    // a new pod while the old host route still points here.
    let deleted = open_host_socket().and_then(|mut s| link::delete_link(&mut s, &host_ifname));
    drop(mappings_removed); // see the module doc: free now that the veth is gone
    match deleted {
        Ok(_) => {
            if let Err(e) = ipam::release(conf, env, att) {
                errors.push(e);
            }
        }
        Err(e) => errors.push(e),
    }

    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(()),
        Some(first) => {
            errors.for_each(|e| warn(format!("DEL: also: {e}")));
            Err(first)
        }
    }
}
