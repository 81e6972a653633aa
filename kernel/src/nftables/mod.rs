//! nf_tables over netlink, as `netlink-packet-netfilter` messages: element batches (the one
//! typed element encoder, used by the CNI plugin's hostPort maps and the agent's sets and
//! dispatch maps), deleting a table, and the read-only questions both ask (does a table
//! exist, which elements does a set hold, how many rules does each chain have).
//!
//! Both sides change elements of their own table far more often than anything else, and an
//! `nft` process per change costs its start-up and a fetch of the whole table. Chains and
//! rules are still written by `nft` (its syntax is the readable source of truth, and a rule's
//! expressions are nft's business); this module carries what changes all the time.
//!
//! A batch is what `nft -f` itself sends for `add element` / `delete element`
//! (linux/netfilter/nf_tables.h): NEWSETELEM / DELSETELEM messages between BATCH_BEGIN and
//! BATCH_END, applied atomically: all of it or, when the kernel refuses any message, none.
//!
//! Elements of sets with `flags interval` go as nft 1.0.6 sends them (checked with strace
//! and `nft --debug=netlink` on kernel 6.18), see [`Batch::add_intervals`].

mod element;

pub use element::{Data, Element, Field, Interval, MapData, Verdict};

use crate::netlink::{frame, Context, Error, Result, Socket};
use crate::netns::Netns;
use netlink_packet_core::{DefaultNla, NLM_F_ACK, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, RuleAttribute, RuleMessage, SetElementAttribute,
    SetElementFlags, SetElementList, SetElementMessage, TableAttribute, TableMessage,
};
use netlink_packet_netfilter::{
    none::ControlMessage, NetfilterHeader, NetfilterMessage, NetfilterMessageInner,
    NetfilterProtoFamily,
};
use std::collections::BTreeMap;

/// `NFNL_SUBSYS_NFTABLES`: the batch markers name the subsystem in their `res_id`.
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// `NFTA_DATA_VALUE`, the one attribute inside `NFTA_SET_ELEM_KEY_END` (which the crate
/// leaves as raw attributes).
const NFTA_DATA_VALUE: u16 = 1;

/// The user data nft puts on the start element of an interval that runs to the top of the
/// key space (it has no end element): libnftnl's TLV of type `NFTNL_UDATA_SET_ELEM_FLAGS`
/// (1), length 4, value `NFTNL_SET_ELEM_F_INTERVAL_OPEN` (1) in host order. The kernel
/// keeps it without looking; nft needs it to list the interval with its end, not as one
/// address.
fn open_interval_udata() -> Vec<u8> {
    let mut u = vec![1, 4];
    u.extend_from_slice(&1u32.to_ne_bytes());
    u
}

/// The kernel elements of one interval element, appended to `out`, as nft sends them:
///
/// - a concatenation (pipapo set): one element, its key the first key of every field and
///   `NFTA_SET_ELEM_KEY_END` the last (inclusive), both in register layout;
/// - one field (rbtree set): a start element (key: the first key, and the map data) and an
///   end element (flag `NFT_SET_ELEM_INTERVAL_END`, key: the first key past the interval,
///   no data). An interval running to the top of the key space has no end element; its
///   start carries nft's open-interval user data instead. Adjacent intervals give an end
///   and a start element with the same key, which the kernel tells apart by the flag.
///
/// For a deletion the same elements without data: the kernel finds start and end by key
/// and flag. (nft also sends a lone end element at key 0 with the first additions to an
/// empty single-field set, a relic of older kernels' rbtree lookups; kernel 6.18 matches
/// without it, which the kernel test checks with packets, and it is never removed, so it is
/// left out here.)
fn interval_elements(
    iv: &Interval,
    data: Option<&MapData>,
    out: &mut Vec<ListAttribute<SetElementAttribute>>,
) {
    let key = |d: &Data| SetElementAttribute::Key(DataAttribute::Value(d.bytes()));
    let mut start = vec![key(iv.first())];
    if iv.concatenated() {
        start.push(SetElementAttribute::KeyEnd(vec![DefaultNla::new(
            NFTA_DATA_VALUE,
            iv.last().bytes(),
        )]));
    }
    start.extend(data.map(|d| SetElementAttribute::Data(d.attribute())));
    if iv.concatenated() {
        out.push(ListAttribute::Element(start));
        return;
    }
    match iv.end_key() {
        Some(end) => {
            out.push(ListAttribute::Element(start));
            out.push(ListAttribute::Element(vec![
                SetElementAttribute::Flags(SetElementFlags::IntervalEnd),
                key(&end),
            ]));
        }
        None => {
            start.push(SetElementAttribute::UserData(open_interval_udata()));
            out.push(ListAttribute::Element(start));
        }
    }
}

/// Every table here is of family `inet`.
fn inet(inner: NfTablesMessage) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
        inner,
    )
}

fn control(m: ControlMessage) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
        m,
    )
}

/// One command of a batch, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    AddElements { set: String, count: usize },
    DeleteElements { set: String, count: usize },
    DeleteTable,
}

/// A batch of commands for one `inet` table, built command by command and sent with
/// [`Nfnl::apply`]. Messages are serialized as they are added, so [`Batch::len`] is the
/// size on the wire.
#[derive(Debug)]
pub struct Batch {
    table: String,
    bytes: Vec<u8>,
    seq: u32,
    commands: Vec<Command>,
}

impl Batch {
    pub fn new(table: &str) -> Batch {
        let mut b = Batch {
            table: table.to_string(),
            bytes: Vec::with_capacity(512),
            seq: 0,
            commands: Vec::new(),
        };
        b.push(control(ControlMessage::BatchBegin), 0);
        b
    }

    fn push(&mut self, msg: NetfilterMessage, flags: u16) {
        frame(&mut self.bytes, msg, flags, self.seq);
        self.seq += 1;
    }

    fn element_list(
        &self,
        set: &str,
        elements: Vec<ListAttribute<SetElementAttribute>>,
    ) -> SetElementMessage {
        SetElementMessage {
            attributes: vec![
                SetElementList::Table(self.table.clone()),
                SetElementList::Set(set.to_string()),
                SetElementList::Elements(elements),
            ],
        }
    }

    /// One NEWSETELEM (`add`) or DELSETELEM message of `list`, standing for `count` elements
    /// of the caller's.
    fn elements_command(
        &mut self,
        set: &str,
        list: Vec<ListAttribute<SetElementAttribute>>,
        add: bool,
        count: usize,
    ) {
        let msg = self.element_list(set, list);
        let set = set.to_string();
        if add {
            self.push(inet(NfTablesMessage::NewSetElement(msg)), NLM_F_CREATE);
            self.commands.push(Command::AddElements { set, count });
        } else {
            self.push(inet(NfTablesMessage::DeleteSetElement(msg)), 0);
            self.commands.push(Command::DeleteElements { set, count });
        }
    }

    /// `add element inet <table> <set> { ... }`.
    pub fn add(&mut self, set: &str, elements: &[Element]) {
        let list = elements
            .iter()
            .map(|e| {
                let mut attrs = vec![SetElementAttribute::Key(DataAttribute::Value(
                    e.key.bytes(),
                ))];
                if let Some(d) = &e.data {
                    attrs.push(SetElementAttribute::Data(d.attribute()));
                }
                ListAttribute::Element(attrs)
            })
            .collect();
        self.elements_command(set, list, true, elements.len());
    }

    /// `delete element inet <table> <set> { ... }`: by key. Deleting a key that is not there
    /// makes the kernel refuse the whole batch (ENOENT); nft 1.0.6 has no `destroy`, so a
    /// caller that is not sure adds the element first in the same batch.
    pub fn delete(&mut self, set: &str, keys: &[Data]) {
        let list = keys
            .iter()
            .map(|k| {
                ListAttribute::Element(vec![SetElementAttribute::Key(DataAttribute::Value(
                    k.bytes(),
                ))])
            })
            .collect();
        self.elements_command(set, list, false, keys.len());
    }

    /// `add element` for a set or map with `flags interval`: every element is an interval
    /// (an exact key is the interval of one), encoded as nft does (see
    /// [`interval_elements`]). The set's elements must stay disjoint: the kernel refuses an
    /// overlap (EEXIST) and with it the batch.
    pub fn add_intervals(&mut self, set: &str, elements: &[Element<Interval>]) {
        let mut list = Vec::with_capacity(2 * elements.len());
        for e in elements {
            interval_elements(&e.key, e.data.as_ref(), &mut list);
        }
        self.elements_command(set, list, true, elements.len());
    }

    /// `delete element` for a set or map with `flags interval`: each interval exactly as it
    /// was added (the kernel looks its start and end elements up by key; an interval that
    /// is not there, or only part of one, makes it refuse the batch with ENOENT).
    pub fn delete_intervals(&mut self, set: &str, intervals: &[Interval]) {
        let mut list = Vec::with_capacity(2 * intervals.len());
        for iv in intervals {
            interval_elements(iv, None, &mut list);
        }
        self.elements_command(set, list, false, intervals.len());
    }

    /// `delete table inet <table>`: everything in it goes too.
    pub fn delete_table(&mut self) {
        let msg = TableMessage {
            attributes: vec![TableAttribute::Name(self.table.clone())],
        };
        self.push(inet(NfTablesMessage::DeleteTable(msg)), 0);
        self.commands.push(Command::DeleteTable);
    }

    /// Size on the wire so far, in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether no command was added.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    /// The datagram: the messages so far and BATCH_END.
    fn finished(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + 20);
        out.extend_from_slice(&self.bytes);
        frame(&mut out, control(ControlMessage::BatchEnd), 0, self.seq);
        out
    }
}

/// Why a batch did not apply.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Netlink could not be used at all (socket, send): another way (`nft`) may work.
    #[error("netlink unavailable: {0}")]
    Unavailable(Error),
    /// The kernel refused the batch; nothing changed.
    #[error("the kernel refused the nf_tables batch: {0}")]
    Refused(Error),
}

/// An element as the kernel lists it: key and (for a map of values) value bytes in register
/// layout, to compare with [`Data::bytes`].
pub type RawElement = (Vec<u8>, Option<Vec<u8>>);

/// A NETLINK_NETFILTER socket.
///
/// Closing a socket that has sent nf_tables commands waits (under the nf_tables commit
/// mutex of its namespace) until objects deleted by recent transactions are freed, which
/// happens one RCU grace period after their commit, about 10 ms. A caller with other slow
/// kernel work to do can apply a batch, do that work, and drop the socket afterwards: by
/// then the grace period has passed and closing costs nothing.
pub struct Nfnl {
    pub(crate) sock: Socket<NetfilterMessage>,
}

impl std::fmt::Debug for Nfnl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nfnl(fd {})", self.raw_fd())
    }
}

impl Nfnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Nfnl> {
        Ok(Nfnl {
            sock: Socket::open(netlink_sys::protocols::NETLINK_NETFILTER)?,
        })
    }

    /// A socket in `netns`, opened on a thread that entered it; usable from any thread.
    pub fn open_in(netns: &Netns) -> Result<Nfnl> {
        netns
            .run(Nfnl::open)
            .map_err(|e| Error::new("open nfnetlink socket", e.into()))?
    }

    /// The socket's descriptor (to keep it open across a fork, see above).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.sock.raw().as_raw_fd()
    }

    /// Send `batch` and report the kernel's verdict.
    pub fn apply(&mut self, batch: &Batch) -> Result<(), BatchError> {
        self.sock
            .send_batch(&batch.finished())
            .map_err(BatchError::Unavailable)?;
        self.sock.queued_error().map_err(|e| {
            BatchError::Refused(Error {
                context: format!("nf_tables batch on table inet {}", batch.table),
                ..e
            })
        })
    }

    /// Whether table `inet <table>` exists (`NFT_MSG_GETTABLE` for one table: the kernel
    /// answers with the table, or with ENOENT).
    pub fn table_exists(&mut self, table: &str) -> Result<bool> {
        let msg = TableMessage {
            attributes: vec![TableAttribute::Name(table.to_string())],
        };
        match self
            .sock
            .get(inet(NfTablesMessage::GetTable(msg)), NLM_F_ACK)
        {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e).context(|| format!("get table inet {table}")),
        }
    }

    /// The nf_tables messages of an `inet` dump.
    fn dump(
        &mut self,
        request: NfTablesMessage,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<NfTablesMessage>> {
        let replies = self.sock.dump(inet(request)).context(what)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r.inner {
                NetfilterMessageInner::NfTables(m) => Some(m),
                _ => None,
            })
            .collect())
    }

    /// The elements of set or map `set` of table `inet <table>`, as raw (key, value) bytes
    /// in register layout (compare with [`Data::bytes`]). Verdict map values are left out.
    /// Of an interval set these are the kernel's elements, not the intervals: start and end
    /// elements alike for one field (flags are not read), the first keys of concatenations.
    pub fn elements(&mut self, table: &str, set: &str) -> Result<Vec<RawElement>> {
        let msg = SetElementMessage {
            attributes: vec![
                SetElementList::Table(table.to_string()),
                SetElementList::Set(set.to_string()),
            ],
        };
        let replies = self.dump(NfTablesMessage::GetSetElement(msg), || {
            format!("list set inet {table} {set}")
        })?;
        let mut out = Vec::new();
        for r in replies {
            let NfTablesMessage::NewSetElement(m) = r else {
                continue;
            };
            for list in m.attributes {
                let SetElementList::Elements(elements) = list else {
                    continue;
                };
                for e in elements {
                    let ListAttribute::Element(attrs) = e else {
                        continue;
                    };
                    let (mut key, mut value) = (None, None);
                    for a in attrs {
                        match a {
                            SetElementAttribute::Key(DataAttribute::Value(k)) => key = Some(k),
                            SetElementAttribute::Data(DataAttribute::Value(v)) => value = Some(v),
                            _ => {}
                        }
                    }
                    if let Some(k) = key {
                        out.push((k, value));
                    }
                }
            }
        }
        Ok(out)
    }

    /// How many rules each chain of table `inet <table>` holds (chains without rules are
    /// not listed).
    pub fn rule_counts(&mut self, table: &str) -> Result<BTreeMap<String, usize>> {
        let msg = RuleMessage {
            attributes: vec![RuleAttribute::Table(table.to_string())],
        };
        let replies = self.dump(NfTablesMessage::GetRule(msg), || {
            format!("list rules of table inet {table}")
        })?;
        let mut out = BTreeMap::new();
        for r in replies {
            let NfTablesMessage::NewRule(m) = r else {
                continue;
            };
            let chain = m.attributes.iter().find_map(|a| match a {
                RuleAttribute::Chain(c) => Some(c.clone()),
                _ => None,
            });
            if let Some(c) = chain {
                *out.entry(c).or_insert(0) += 1;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message types of a finished batch, in order.
    fn types(bytes: &[u8]) -> Vec<u16> {
        let mut at = 0;
        let mut out = Vec::new();
        while at + 16 <= bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            assert!(
                len >= 16 && at + len <= bytes.len(),
                "message lengths add up"
            );
            out.push(u16::from_ne_bytes([bytes[at + 4], bytes[at + 5]]));
            at += (len + 3) & !3;
        }
        assert_eq!(at, bytes.len());
        out
    }

    #[test]
    fn a_batch_is_begin_commands_end() {
        let mut b = Batch::new("palisade");
        assert!(b.is_empty());
        b.delete("peers4", &[Data::one(Field::Ipv4([10, 0, 0, 1].into()))]);
        b.add(
            "ingress4",
            &[Element::map(
                Data::one(Field::Ipv4([10, 0, 0, 2].into())),
                MapData::Verdict(Verdict::Jump("in-0001".into())),
            )],
        );
        b.delete_table();
        assert!(!b.is_empty());
        let bytes = b.finished();
        // BATCH_BEGIN 0x10, DELSETELEM / NEWSETELEM / DELTABLE of nf_tables (subsystem 10),
        // BATCH_END 0x11.
        assert_eq!(
            types(&bytes),
            vec![0x10, (10 << 8) | 14, (10 << 8) | 12, (10 << 8) | 2, 0x11]
        );
        assert!(bytes.windows(8).any(|w| w == b"in-0001\0"));
        assert!(bytes.windows(9).any(|w| w == b"palisade\0"));
        // The jump code in network order, and the begin marker naming nf_tables.
        assert!(bytes.windows(4).any(|w| w == (-3i32).to_be_bytes()));
        assert_eq!(&bytes[16..20], &[0, 0, 0, 10]);
        assert_eq!(
            b.commands(),
            &[
                Command::DeleteElements {
                    set: "peers4".into(),
                    count: 1
                },
                Command::AddElements {
                    set: "ingress4".into(),
                    count: 1
                },
                Command::DeleteTable,
            ]
        );
    }

    /// The `NFTA_SET_ELEM_LIST_ELEMENTS` payload of `elements` as this module encodes it.
    fn emitted(elements: &[Element<Interval>]) -> Vec<u8> {
        use netlink_packet_core::Emitable;
        let mut list = Vec::new();
        for e in elements {
            interval_elements(&e.key, e.data.as_ref(), &mut list);
        }
        let mut out = vec![0; list.as_slice().buffer_len()];
        list.as_slice().emit(&mut out);
        out
    }

    /// nft's payload with its list items typed as this crate types them: nft numbers them
    /// (1, 2, ...), the crate calls each `NFTA_LIST_ELEM` (1); the kernel reads neither.
    fn as_list_elems(mut nft: Vec<u8>) -> Vec<u8> {
        let mut at = 0;
        while at < nft.len() {
            let len = u16::from_ne_bytes([nft[at], nft[at + 1]]) as usize;
            nft[at + 2..at + 4].copy_from_slice(&0x8001u16.to_ne_bytes());
            at += (len + 3) & !3;
        }
        nft
    }

    fn interval(first: &[Field], last: &[Field]) -> Interval {
        Interval::new(Data(first.to_vec()), Data(last.to_vec())).unwrap()
    }

    #[test]
    fn interval_elements_are_what_nft_sends() {
        // All four from `strace -e sendmsg -xx nft add element inet t ...` (nft 1.0.6,
        // kernel 6.18), the bytes of NFTA_SET_ELEM_LIST_ELEMENTS.
        let v4 = |a, b, c, d| Field::Ipv4([a, b, c, d].into());
        let jump = |c: &str| Some(MapData::Verdict(Verdict::Jump(c.into())));
        let goto = |c: &str| Some(MapData::Verdict(Verdict::Goto(c.into())));

        // `s { type ipv4_addr; flags interval }`, `{ 10.0.5.0/24 }`: a start element and an
        // end element (flag INTERVAL_END) at 10.0.6.0.
        let prefix = Element::set(interval(&[v4(10, 0, 5, 0)], &[v4(10, 0, 5, 255)]));
        assert_eq!(
            emitted(&[prefix]),
            as_list_elems(
                b"\x10\x00\x01\x80\x0c\x00\x01\x80\x08\x00\x01\x00\x0a\x00\x05\x00\
                  \x18\x00\x02\x80\x08\x00\x03\x00\x00\x00\x00\x01\
                  \x0c\x00\x01\x80\x08\x00\x01\x00\x0a\x00\x06\x00"
                    .to_vec()
            )
        );

        // `{ 255.255.255.0/24 }` runs to the top: no end element, the start marked open.
        let top = Element::set(interval(&[v4(255, 255, 255, 0)], &[v4(255, 255, 255, 255)]));
        let mut open = b"\x1c\x00\x01\x80\x0c\x00\x01\x80\x08\x00\x01\x00\xff\xff\xff\x00\
                         \x0a\x00\x06\x00\x01\x04"
            .to_vec();
        open.extend_from_slice(&1u32.to_ne_bytes());
        open.extend_from_slice(&[0, 0]);
        assert_eq!(emitted(&[top]), as_list_elems(open));

        // `m { type ipv4_addr . inet_proto . inet_service : verdict; flags interval }`,
        // `{ 10.244.1.6 . 6 . 80-90 : goto c }`: one element, KEY and KEY_END padded per
        // field, then the verdict.
        let concat = Element {
            key: interval(
                &[v4(10, 244, 1, 6), Field::Proto(6), Field::Port(80)],
                &[v4(10, 244, 1, 6), Field::Proto(6), Field::Port(90)],
            ),
            data: goto("c"),
        };
        assert_eq!(
            emitted(&[concat]),
            as_list_elems(
                b"\x44\x00\x01\x80\
                  \x14\x00\x01\x80\x10\x00\x01\x00\x0a\xf4\x01\x06\x06\x00\x00\x00\x00\x50\x00\x00\
                  \x14\x00\x0a\x80\x10\x00\x01\x00\x0a\xf4\x01\x06\x06\x00\x00\x00\x00\x5a\x00\x00\
                  \x18\x00\x02\x80\x14\x00\x02\x80\x08\x00\x01\x00\xff\xff\xff\xfc\
                  \x06\x00\x02\x00\x63\x00\x00\x00"
                    .to_vec()
            )
        );

        // `v { type ipv4_addr : verdict; flags interval }`, adjacent
        // `{ 10.0.0.0/25 : jump c, 10.0.0.128/25 : goto c }`: the first interval's end and
        // the second's start share the key 10.0.0.128; end elements carry no verdict.
        let adjacent = [
            Element {
                key: interval(&[v4(10, 0, 0, 0)], &[v4(10, 0, 0, 127)]),
                data: jump("c"),
            },
            Element {
                key: interval(&[v4(10, 0, 0, 128)], &[v4(10, 0, 0, 255)]),
                data: goto("c"),
            },
        ];
        assert_eq!(
            emitted(&adjacent),
            as_list_elems(
                b"\x28\x00\x01\x80\x0c\x00\x01\x80\x08\x00\x01\x00\x0a\x00\x00\x00\
                  \x18\x00\x02\x80\x14\x00\x02\x80\x08\x00\x01\x00\xff\xff\xff\xfd\
                  \x06\x00\x02\x00\x63\x00\x00\x00\
                  \x18\x00\x02\x80\x08\x00\x03\x00\x00\x00\x00\x01\
                  \x0c\x00\x01\x80\x08\x00\x01\x00\x0a\x00\x00\x80\
                  \x28\x00\x03\x80\x0c\x00\x01\x80\x08\x00\x01\x00\x0a\x00\x00\x80\
                  \x18\x00\x02\x80\x14\x00\x02\x80\x08\x00\x01\x00\xff\xff\xff\xfc\
                  \x06\x00\x02\x00\x63\x00\x00\x00\
                  \x18\x00\x04\x80\x08\x00\x03\x00\x00\x00\x00\x01\
                  \x0c\x00\x01\x80\x08\x00\x01\x00\x0a\x00\x01\x00"
                    .to_vec()
            )
        );
    }
}
