//! GC (CNI 1.1): release every attachment of this network that the runtime no longer knows:
//! its host veth, IPAM entry and port mappings. The host veth names come from the IPAM
//! store (recorded before each veth was created), so GC never guesses which `pal*` link is
//! whose, and never touches another network's links. It also deletes the down pairs a DEL
//! of this network marked and left to a detached process that did not finish
//! (`teardown.rs`): their `ifalias` names the network.

use super::add::open_host_socket;
use super::warn;
use crate::config::{Env, NetConf};
use crate::error::{CniError, Result};
use crate::{hostport, ipam, teardown};

pub fn gc(env: &Env, conf: &NetConf) -> Result<()> {
    if !conf.version.supports_gc_and_status() {
        return Err(CniError::IncompatibleVersion(format!(
            "GC is not supported by cniVersion {} (needs 1.1.0)",
            conf.version.as_str()
        )));
    }
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| CniError::config("GC needs cni.dev/valid-attachments"))?;
    let mut sock = open_host_socket()?;
    let (released, mut errors) = ipam::gc(conf, env, valid, |rec| match rec.host_link() {
        Some(name) => sock.delete_link(name).map(|_| ()).map_err(CniError::from),
        None => {
            warn(format!(
                "GC: not deleting untrusted host link name {:?}",
                rec.host_ifname
            ));
            Ok(())
        }
    })?;
    match sock.links() {
        Ok(links) => {
            let mark = teardown::deleted_alias(&conf.name);
            for l in links {
                if l.alias.as_deref() == Some(mark.as_str())
                    && !l.up
                    && l.kind.as_deref() == Some("veth")
                {
                    warn(format!(
                        "GC of network {}: deleting {} (left by a DEL)",
                        conf.name, l.name
                    ));
                    if let Err(e) = sock.delete_link_index(l.index) {
                        errors.push(e.into());
                    }
                }
            }
        }
        Err(e) => errors.push(e.into()),
    }
    for rec in &released {
        warn(format!(
            "GC of network {}: released {}/{} ({}, {:?})",
            conf.name, rec.container_id, rec.ifname, rec.host_ifname, rec.ips
        ));
    }
    let pairs: Vec<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    if let Err(source) = hostport::HostPorts::new(&conf.hostport_dir())
        .for_network(&conf.name)
        .gc(&pairs)
    {
        errors.push(CniError::HostPort {
            context: "garbage-collect port mappings",
            source,
        });
    }
    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(()),
        Some(first) => {
            errors.for_each(|e| warn(format!("GC: also: {e}")));
            Err(first)
        }
    }
}
