//! IP address management: the built-in allocator over the on-disk store, or a delegated IPAM
//! plugin. Either way every attachment is recorded in this network's store (with its host veth
//! name) before any kernel object exists, so DEL and GC can always find what ADD left.

pub mod allocator;
pub mod delegate;
pub mod store;

use crate::config::{Attachment, Env, Ipam, NetConf};
use crate::error::{CniError, Result};
use crate::types::Dns;
use delegate::Delegate;
use std::collections::BTreeSet;
use std::net::IpAddr;
use store::{AttachmentRecord, Store};

/// What ADD got from IPAM.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub ips: Vec<IpAddr>,
    /// DNS settings a delegated IPAM plugin returned.
    pub dns: Dns,
}

pub fn store(conf: &NetConf) -> Store {
    Store::new(&conf.state_dir)
}

/// Reserve the attachment's addresses (the same ones again on a repeated ADD) and record it.
/// `*created` is set, under the state lock, when this call made the record (else it already
/// existed: a repeated or concurrent ADD of the same attachment, whose undo must not release
/// what another invocation holds).
pub fn reserve(
    conf: &NetConf,
    env: &Env,
    att: &Attachment,
    created: &mut bool,
) -> Result<Reservation> {
    let store = store(conf);
    match &conf.ipam {
        Ipam::Builtin { range_sets } => {
            let mut locked = store.lock()?;
            *created = locked.state.find(&att.container_id, &att.ifname).is_none();
            let ips = allocator::reserve(&mut locked.state, range_sets, att, &att.host_ifname())?;
            locked.commit()?;
            Ok(Reservation {
                ips,
                dns: Dns::default(),
            })
        }
        Ipam::Delegated { plugin } => {
            {
                let mut locked = store.lock()?;
                *created = locked.state.find(&att.container_id, &att.ifname).is_none();
                if *created {
                    locked.state.attachments.push(AttachmentRecord {
                        container_id: att.container_id.clone(),
                        ifname: att.ifname.clone(),
                        host_ifname: att.host_ifname(),
                        ips: Vec::new(),
                        delegated: true,
                    });
                    locked.commit()?;
                }
            }
            let result = Delegate::new(plugin, &env.cni_path, conf)?.add()?;
            let ips: Vec<IpAddr> = result.ips.iter().map(|ip| ip.address.addr()).collect();
            let mut locked = store.lock()?;
            if let Some(rec) = locked
                .state
                .attachments
                .iter_mut()
                .find(|a| a.container_id == att.container_id && a.ifname == att.ifname)
            {
                rec.ips = ips.clone();
            }
            locked.commit()?;
            Ok(Reservation {
                ips,
                dns: result.dns,
            })
        }
    }
}

/// The record of an attachment, if any (a lock-free consistent snapshot).
pub fn lookup(conf: &NetConf, att: &Attachment) -> Result<Option<AttachmentRecord>> {
    Ok(store(conf)
        .read()?
        .find(&att.container_id, &att.ifname)
        .cloned())
}

/// Release the attachment's addresses and forget it. Idempotent. With a delegated IPAM the
/// delegate's DEL runs first; our record goes either way (the host veth is gone by now, and a
/// retried DEL runs the delegate again), and the delegate's error is returned.
pub fn release(conf: &NetConf, env: &Env, att: &Attachment) -> Result<Option<AttachmentRecord>> {
    let delegated = match &conf.ipam {
        Ipam::Delegated { plugin } => {
            Delegate::new(plugin, &env.cni_path, conf).and_then(|d| d.call("DEL").map(|_| ()))
        }
        Ipam::Builtin { .. } => Ok(()),
    };
    let store = store(conf);
    let removed = if store.dir().exists() {
        let mut locked = store.lock()?;
        let removed = allocator::release(&mut locked.state, att);
        if removed.is_some() {
            locked.commit()?;
        }
        removed
    } else {
        None // never used on this node: nothing to release, and nothing to create
    };
    delegated.map(|()| removed)
}

/// Differences between the IPAM state and the addresses the runtime believes the attachment
/// has (`prevResult`).
pub fn check(conf: &NetConf, env: &Env, att: &Attachment, ips: &[IpAddr]) -> Result<Vec<String>> {
    let mut diffs = Vec::new();
    if let Ipam::Delegated { plugin } = &conf.ipam {
        if let Err(e) = Delegate::new(plugin, &env.cni_path, conf).and_then(|d| d.call("CHECK")) {
            diffs.push(format!("delegated IPAM CHECK failed: {}", e.msg()));
        }
    }
    match lookup(conf, att)? {
        None => diffs.push(format!(
            "no IPAM reservation for {}/{}",
            att.container_id, att.ifname
        )),
        Some(rec) => {
            let have: BTreeSet<IpAddr> = rec.ips.iter().copied().collect();
            let want: BTreeSet<IpAddr> = ips.iter().copied().collect();
            if have != want {
                diffs.push(format!(
                    "IPAM reservation holds {have:?}, prevResult has {want:?}"
                ));
            }
        }
    }
    Ok(diffs)
}

/// GC: forget every attachment not in `valid`, after `remove_link` removed its host veth
/// (an attachment whose link could not be removed is kept, so a later GC retries it).
/// Returns the attachments released.
pub fn gc(
    conf: &NetConf,
    env: &Env,
    valid: &[Attachment],
    mut remove_link: impl FnMut(&AttachmentRecord) -> Result<()>,
) -> Result<(Vec<AttachmentRecord>, Vec<CniError>)> {
    let mut errors = Vec::new();
    if let Ipam::Delegated { plugin } = &conf.ipam {
        if let Err(e) = Delegate::new(plugin, &env.cni_path, conf).and_then(|d| d.call("GC")) {
            errors.push(e);
        }
    }
    let store = store(conf);
    if !store.dir().exists() {
        return Ok((Vec::new(), errors));
    }
    let valid: BTreeSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let mut locked = store.lock()?;
    let (stale, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut locked.state.attachments)
        .into_iter()
        .partition(|a| !valid.contains(&(a.container_id.as_str(), a.ifname.as_str())));
    locked.state.attachments = keep;
    let mut released = Vec::new();
    for rec in stale {
        match remove_link(&rec) {
            Ok(()) => released.push(rec),
            Err(e) => {
                errors.push(e);
                locked.state.attachments.push(rec);
            }
        }
    }
    if !released.is_empty() {
        locked.commit()?;
    }
    Ok((released, errors))
}

/// STATUS: can ADD be served? The state directory must be writable and, with the built-in
/// IPAM, every range set must have a free address.
pub fn status(conf: &NetConf, env: &Env) -> Result<()> {
    let dir = &conf.state_dir;
    let probe = dir.join(".status-probe");
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"ok"))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            CniError::NotAvailable(format!(
                "IPAM state directory {} is not writable: {e}",
                dir.display()
            ))
        })?;
    match &conf.ipam {
        Ipam::Builtin { range_sets } => {
            let state = store(conf)
                .read()
                .map_err(|e| CniError::NotAvailable(e.msg()))?;
            let full = allocator::exhausted_sets(&state, range_sets);
            if !full.is_empty() {
                return Err(CniError::NotAvailable(format!(
                    "IPAM range set(s) {full:?} exhausted"
                )));
            }
            Ok(())
        }
        Ipam::Delegated { plugin } => {
            Delegate::new(plugin, &env.cni_path, conf)?.call("STATUS")?;
            Ok(())
        }
    }
}
