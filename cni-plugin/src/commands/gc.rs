//! GC (CNI 1.1): release every attachment of this network that the runtime no longer knows:
//! its host veth, IPAM entry and port mappings. The host veth names come from the IPAM
//! store (recorded before each veth was created), so GC never guesses which `pal*` link is
//! whose, and never touches another network's links.

use super::add::open_host_socket;
use super::warn;
use crate::config::{Env, NetConf};
use crate::error::{CniError, Result};
use crate::{hostport, ipam, link};

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
        Some(name) => link::delete_link(&mut sock, name).map(|_| ()),
        None => {
            warn(format!(
                "GC: not deleting untrusted host link name {:?}",
                rec.host_ifname
            ));
            Ok(())
        }
    })?;
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
