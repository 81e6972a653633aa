//! The table's elements through the kernel crate: one nf_tables netlink batch per change,
//! and the read-only questions STATUS and CHECK ask. That is the whole kernel cost of an
//! ADD's or DEL's hostPorts, where an `nft` process spends most of its time starting and
//! filling its cache (about 3 ms here, 10-20 ms on a loaded node).
//!
//! Removal is "add, then delete" of each element in one batch: nft 1.0.6 has no `destroy`,
//! and a plain delete of an element that is not there would make the kernel refuse the whole
//! batch. Every batch first adds the layout guard ([`super::table::layout_set`]), so it fails
//! as a whole on a missing table or one of another layout, and the caller rebuilds it.

use super::entries::Entry;
use super::table::{layout_set, CHAINS, LAYOUT_VERSION};
use super::HostPortError;
use palisade_common::HOSTPORT_TABLE;
use palisade_kernel::nftables::{Batch, BatchError, Data, Element, Field, Nfnl};

fn guard() -> Element {
    Element::set(Data::one(Field::Mark(1)))
}

/// The batch that removes `remove` and adds `add`, guarded by the layout.
pub fn batch(remove: &[Entry], add: &[Entry]) -> Batch {
    let mut b = Batch::new(HOSTPORT_TABLE);
    b.add(&layout_set(), &[guard()]);
    for e in remove {
        let el = e.element();
        b.add(&e.set(), std::slice::from_ref(&el));
        b.delete(&e.set(), &[el.key]);
    }
    for e in add {
        b.add(&e.set(), &[e.element()]);
    }
    b
}

/// Apply [`batch`] on `nf`.
pub fn apply(nf: &mut Nfnl, remove: &[Entry], add: &[Entry]) -> Result<(), BatchError> {
    nf.apply(&batch(remove, add))
}

/// `delete table inet palisade-hostport`; `Ok(false)` when there was none.
pub fn delete_table(nf: &mut Nfnl) -> Result<bool, BatchError> {
    let mut b = Batch::new(HOSTPORT_TABLE);
    b.delete_table();
    match nf.apply(&b) {
        Ok(()) => Ok(true),
        Err(BatchError::Refused(e)) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// CHECK: the table exists, has this layout's chains and rules, and holds `wanted`.
pub fn verify(nf: &mut Nfnl, owner: &str, wanted: &[Entry]) -> Result<(), HostPortError> {
    let asked = |e: palisade_kernel::Error| {
        HostPortError::nftables("cannot read the hostPort table", e.to_string())
    };
    if !nf.table_exists(HOSTPORT_TABLE).map_err(asked)? {
        return Err(HostPortError::nftables(
            "hostPort table missing",
            format!("table inet {HOSTPORT_TABLE} does not exist"),
        ));
    }
    let layout = nf.elements(HOSTPORT_TABLE, &layout_set());
    if !matches!(&layout, Ok(els) if els.iter().any(|(k, _)| *k == guard().key.bytes())) {
        return Err(HostPortError::nftables(
            "hostPort table has an unexpected layout",
            format!("table inet {HOSTPORT_TABLE} lacks layout version {LAYOUT_VERSION}"),
        ));
    }
    let rules = nf.rule_counts(HOSTPORT_TABLE).map_err(asked)?;
    for (chain, n) in CHAINS {
        if rules.get(chain) != Some(&n) {
            return Err(HostPortError::nftables(
                "hostPort table has an unexpected layout",
                format!(
                    "chain {chain} should hold {n} rules, found {:?}",
                    rules.get(chain)
                ),
            ));
        }
    }
    let mut missing = Vec::new();
    for e in wanted {
        let el = e.element();
        let value = el.data.as_ref().map(|d| match d {
            palisade_kernel::nftables::MapData::Value(v) => v.bytes(),
            palisade_kernel::nftables::MapData::Verdict(_) => Vec::new(),
        });
        let held = nf.elements(HOSTPORT_TABLE, &e.set()).map_err(asked)?;
        if !held.contains(&(el.key.bytes(), value)) {
            missing.push(e.to_string());
        }
    }
    if !missing.is_empty() {
        return Err(HostPortError::nftables(
            "hostPort mappings missing from the kernel",
            format!("attachment {owner}: {}", missing.join(", ")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_kernel::nftables::Command;

    #[test]
    fn a_change_is_guarded_and_removes_by_add_then_delete() {
        let e = Entry::Hairpin {
            pod_ip: "10.0.0.1".parse().unwrap(),
        };
        let b = batch(std::slice::from_ref(&e), &[]);
        let add = |set: &str| Command::AddElements {
            set: set.into(),
            count: 1,
        };
        assert_eq!(
            b.commands(),
            &[
                add("layout_v1"),
                add("hairpin4"),
                Command::DeleteElements {
                    set: "hairpin4".into(),
                    count: 1
                }
            ]
        );
    }
}
