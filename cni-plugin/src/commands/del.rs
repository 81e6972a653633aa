//! DEL: remove everything ADD made for one attachment. Idempotent: works with `CNI_NETNS`
//! empty or gone, without any state, and twice in a row. Keeps going past a failed step and
//! reports the first failure at the end (the rest go to stderr).
//!
//! Order: port mappings → agent (best effort) → host end of the pair down → IPAM release →
//! the pair deleted. Taking the host end down stops the pair at once (the pod end loses its
//! carrier, anything sent either way is dropped) and the kernel removes every route through
//! it in the same step, so from then on no packet reaches the pod or leaves it and its
//! addresses can be released: a new pod given one of them gets a route to its own veth.
//!
//! Where the time goes (kernel 6.18 here): nearly all of it is the kernel deleting the veth
//! pair, which ends in `rcu_barrier()`: one RCU grace period (about 13 ms), two once the pod
//! has lived a few seconds with IPv6 on the pair (measured; with IPv6 disabled on the pair it
//! stays one: its link-local traffic leaves cached routes that hold the device), 15–45 ms in
//! all. With `deleteVethInBackground` (the default) DEL does not wait for that: the pod is
//! off the network already, and [`crate::teardown`] deletes the down pair from a detached
//! process. DEL then costs a few milliseconds; the pair is gone some 15–45 ms later.
//! Without it, DEL deletes the pair itself and returns when it is gone.
//!
//! An ADD of the same attachment that finds the down pair still there replaces it (see
//! `ensure_veth`), and the detached process deletes by interface index, which the kernel does
//! not hand out again soon, so it can never take the new pair.
//!
//! Port mappings: nf_tables frees deleted elements one grace period after the commit, and
//! closing the netlink socket that deleted them waits for that while holding the nf_tables
//! commit mutex, which the veth deletion needs as well (so two threads do not help: they
//! serialise on that mutex). So the mappings are removed first, as always, but their socket
//! is closed only after the veth is gone ([`hostport::Pending`]): by the detached process,
//! or inline after the deletion. An attachment without mappings costs one `stat` of its
//! (absent) hostPort record.

use super::add::open_host_socket;
use super::warn;
use crate::agent::{self, Outcome};
use crate::config::{Env, NetConf};
use crate::error::{CniError, Result};
use crate::{hostport, ipam, teardown};
use palisade_common::AgentRequest;
use palisade_kernel::rtnl::{Link, Rtnl};
use std::time::Duration;

/// DEL must not hang on a slow agent: the message is informational (its watch is the truth).
const DEL_AGENT_TIMEOUT: Duration = Duration::from_millis(200);

pub fn del(env: &Env, conf: &NetConf) -> Result<()> {
    let att = env.attachment();
    let mut errors: Vec<CniError> = Vec::new();

    // Port mappings first: they point at the pod IP, which is about to become reusable.
    let mappings_removed = hostport::HostPorts::new(&conf.hostport_dir())
        .del_pending(&att.container_id, &att.ifname)
        .unwrap_or_else(|source| {
            errors.push(CniError::HostPort {
                context: "remove port mappings",
                source,
            });
            hostport::Pending::default()
        });

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

    // Take the pod off the network, release its addresses, then remove the pair.
    match open_host_socket()
        .and_then(|mut s| cut_off(&mut s, &host_ifname, &conf.name).map(|l| (s, l)))
    {
        Ok((mut sock, link)) => {
            // Nothing carries the pod's traffic any more and no route leads to the pair:
            // the addresses can go to another pod.
            if let Err(e) = ipam::release(conf, env, att) {
                errors.push(e);
            }
            if let Some(link) = link {
                let detached = conf.delete_veth_in_background
                    && match teardown::delete_detached(link.index, mappings_removed.fd()) {
                        Ok(()) => true,
                        Err(e) => {
                            warn(format!("deleting {host_ifname} inline: {e}"));
                            false
                        }
                    };
                if !detached {
                    if let Err(e) = sock.delete_link_index(link.index) {
                        errors.push(e.into());
                    }
                }
            }
        }
        Err(e) => errors.push(e),
    }
    drop(mappings_removed); // see the module doc: free now that the veth is gone or going

    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(()),
        Some(first) => {
            errors.for_each(|e| warn(format!("DEL: also: {e}")));
            Err(first)
        }
    }
}

/// Take the host end of the pair down (if it exists): the pair stops carrying traffic and
/// the kernel drops every route through it in the same step. The same request marks it as
/// deleted from `network`, for GC. Returns the link to delete.
fn cut_off(sock: &mut Rtnl, host_ifname: &str, network: &str) -> Result<Option<Link>> {
    let Some(link) = sock.link(host_ifname)? else {
        return Ok(None);
    };
    if link.up {
        if let Err(e) = sock.set_down(&link, &teardown::deleted_alias(network)) {
            // Gone meanwhile (its pod netns was removed): nothing left to cut off.
            return match sock.link(host_ifname)? {
                None => Ok(None),
                Some(_) => Err(e.into()),
            };
        }
    }
    Ok(Some(link))
}
