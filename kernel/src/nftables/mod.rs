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
//! One element command becomes as many messages as its encoded size needs (see
//! [`LIST_BYTES`]), for every caller; a batch is one datagram (see
//! [`Socket::send_batch`](crate::netlink::Socket::send_batch) for the send buffer), and
//! [`Batches`] spreads additions over several batches of a bounded size.
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

/// The kernel elements that stand for one element of the caller's: one, or for a
/// single-field interval a start and an end element. They go in the same message.
type Group = Vec<ListAttribute<SetElementAttribute>>;

/// The most bytes of kernel elements one message carries (the payload of its
/// `NFTA_SET_ELEM_LIST_ELEMENTS`).
///
/// The element list is one netlink attribute, and an attribute's length is 16 bits: a list
/// over 65535 bytes cannot be sent, and netlink-packet-core 0.9 (under
/// netlink-packet-netfilter 0.4) does not refuse one: it writes the length cut to 16 bits
/// and then panics on a slice index out of range while emitting the list (checked with the
/// unit test below and this bound lifted). So an element command is split into
/// messages by encoded size, measured element by element as it is built: a list is closed
/// before an element would take it past 32 KiB.
///
/// The largest element the kernel accepts takes 424 bytes: an interval of a concatenation
/// with both ends as keys of at most 64 bytes (`NFT_DATA_VALUE_MAXLEN`; a v6 address,
/// protocol and port take 24) and a verdict naming a chain of 255 bytes
/// (`NFT_CHAIN_MAXNAMELEN`, with its NUL). That is 4 (element), 2 × (4 + 4 + 64) (key and
/// key end) and 4 + 4 + 8 + 4 + 256 (data, verdict, code, chain); with the v6 keys of a
/// dispatch map it is 344 (the unit test below checks lists of those from the wire). So a
/// list never exceeds 32 KiB, half the limit: far enough that nothing near the worst case
/// can reach it, while one more message per 32 KiB (about 60 bytes of headers and names)
/// costs nothing measurable.
pub const LIST_BYTES: usize = 32 * 1024;

/// `groups` as element lists of at most [`LIST_BYTES`] encoded bytes, each with the number
/// of groups it holds. A group is never split; one larger than the bound on its own (no
/// element the kernel accepts is) gets a list of its own.
fn lists(groups: impl Iterator<Item = Group>) -> Vec<(Group, usize)> {
    use netlink_packet_core::Emitable;
    let mut out = Vec::new();
    let (mut list, mut bytes, mut count) = (Vec::new(), 0, 0);
    for group in groups {
        let size: usize = group.iter().map(Emitable::buffer_len).sum();
        if count > 0 && bytes + size > LIST_BYTES {
            out.push((std::mem::take(&mut list), count));
            (bytes, count) = (0, 0);
        }
        list.extend(group);
        bytes += size;
        count += 1;
    }
    if count > 0 {
        out.push((list, count));
    }
    out
}

/// A key attribute.
fn key(d: &Data) -> SetElementAttribute {
    SetElementAttribute::Key(DataAttribute::Value(d.bytes()))
}

/// The kernel element of an exact element: its key and, for a map, its data.
fn exact_element(e: &Element) -> Group {
    let mut attrs = vec![key(&e.key)];
    attrs.extend(
        e.data
            .as_ref()
            .map(|d| SetElementAttribute::Data(d.attribute())),
    );
    vec![ListAttribute::Element(attrs)]
}

/// The kernel elements of one interval element, as nft sends them:
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
fn interval_elements(iv: &Interval, data: Option<&MapData>) -> Group {
    let mut start = vec![key(iv.first())];
    if iv.concatenated() {
        start.push(SetElementAttribute::KeyEnd(vec![DefaultNla::new(
            NFTA_DATA_VALUE,
            iv.last().bytes(),
        )]));
    }
    start.extend(data.map(|d| SetElementAttribute::Data(d.attribute())));
    if iv.concatenated() {
        return vec![ListAttribute::Element(start)];
    }
    match iv.end_key() {
        Some(end) => vec![
            ListAttribute::Element(start),
            ListAttribute::Element(vec![
                SetElementAttribute::Flags(SetElementFlags::IntervalEnd),
                key(&end),
            ]),
        ],
        None => {
            start.push(SetElementAttribute::UserData(open_interval_udata()));
            vec![ListAttribute::Element(start)]
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

    /// One NEWSETELEM (`add`) or DELSETELEM message of `list`, standing for `count` elements
    /// of the caller's.
    fn element_message(
        &mut self,
        set: &str,
        list: Vec<ListAttribute<SetElementAttribute>>,
        add: bool,
        count: usize,
    ) {
        let msg = SetElementMessage {
            attributes: vec![
                SetElementList::Table(self.table.clone()),
                SetElementList::Set(set.to_string()),
                SetElementList::Elements(list),
            ],
        };
        let set = set.to_string();
        if add {
            self.push(inet(NfTablesMessage::NewSetElement(msg)), NLM_F_CREATE);
            self.commands.push(Command::AddElements { set, count });
        } else {
            self.push(inet(NfTablesMessage::DeleteSetElement(msg)), 0);
            self.commands.push(Command::DeleteElements { set, count });
        }
    }

    /// The messages of one element command: `groups` (the kernel elements of each of the
    /// caller's elements) as lists of at most [`LIST_BYTES`] (see [`lists`]).
    fn elements_command(&mut self, set: &str, groups: impl Iterator<Item = Group>, add: bool) {
        for (list, count) in lists(groups) {
            self.element_message(set, list, add, count);
        }
    }

    /// `add element inet <table> <set> { ... }`, in as many messages as the elements need
    /// (see [`LIST_BYTES`]; all of them in this batch, so still one transaction). No
    /// elements, no message.
    pub fn add(&mut self, set: &str, elements: &[Element]) {
        self.elements_command(set, elements.iter().map(exact_element), true);
    }

    /// `delete element inet <table> <set> { ... }`: by key, split as [`Batch::add`].
    /// Deleting a key that is not there makes the kernel refuse the whole batch (ENOENT);
    /// nft 1.0.6 has no `destroy`, so a caller that is not sure adds the element first in the
    /// same batch.
    pub fn delete(&mut self, set: &str, keys: &[Data]) {
        let keys = keys
            .iter()
            .map(|k| vec![ListAttribute::Element(vec![key(k)])]);
        self.elements_command(set, keys, false);
    }

    /// `add element` for a set or map with `flags interval`: every element is an interval
    /// (an exact key is the interval of one), encoded as nft does (see
    /// [`interval_elements`]) and split as [`Batch::add`]. The set's elements must stay
    /// disjoint: the kernel refuses an overlap (EEXIST) and with it the batch.
    pub fn add_intervals(&mut self, set: &str, elements: &[Element<Interval>]) {
        let groups = elements
            .iter()
            .map(|e| interval_elements(&e.key, e.data.as_ref()));
        self.elements_command(set, groups, true);
    }

    /// `delete element` for a set or map with `flags interval`: each interval exactly as it
    /// was added (the kernel looks its start and end elements up by key; an interval that
    /// is not there, or only part of one, makes it refuse the batch with ENOENT).
    pub fn delete_intervals(&mut self, set: &str, intervals: &[Interval]) {
        let groups = intervals.iter().map(|iv| interval_elements(iv, None));
        self.elements_command(set, groups, false);
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

/// Element additions spread over batches of at most a given size, each its own transaction:
/// for filling sets and maps nothing uses yet, where all-or-nothing across the whole fill
/// does not matter, so the batches can stay within a socket's default send buffer (208 KiB;
/// a larger batch needs it raised, see [`Nfnl::apply`]) and each transaction small.
/// Messages are split as in [`Batch::add`]; a batch ends between messages.
#[derive(Debug)]
pub struct Batches {
    max_bytes: usize,
    full: Vec<Batch>,
    current: Batch,
}

impl Batches {
    /// The most one message can add to a batch: a list of [`LIST_BYTES`], the table and set
    /// names (at most 256 bytes each, `NFT_NAME_MAXLEN`) and the headers around them.
    const MESSAGE_MAX: usize = LIST_BYTES + 1024;

    /// Batches for table `inet <table>` of at most `max_bytes` each, BATCH_END included
    /// (for a `max_bytes` below one message and the batch markers, batches of one message).
    pub fn new(table: &str, max_bytes: usize) -> Batches {
        Batches {
            max_bytes,
            full: Vec::new(),
            current: Batch::new(table),
        }
    }

    fn additions(&mut self, set: &str, groups: impl Iterator<Item = Group>) {
        /// BATCH_END, which [`Batch::len`] does not count yet.
        const END: usize = 20;
        for (list, count) in lists(groups) {
            let room = self.max_bytes.saturating_sub(Self::MESSAGE_MAX + END);
            if !self.current.is_empty() && self.current.len() > room {
                let next = Batch::new(&self.current.table);
                self.full.push(std::mem::replace(&mut self.current, next));
            }
            self.current.element_message(set, list, true, count);
        }
    }

    /// [`Batch::add`] across batches.
    pub fn add(&mut self, set: &str, elements: &[Element]) {
        self.additions(set, elements.iter().map(exact_element));
    }

    /// [`Batch::add_intervals`] across batches.
    pub fn add_intervals(&mut self, set: &str, elements: &[Element<Interval>]) {
        let groups = elements
            .iter()
            .map(|e| interval_elements(&e.key, e.data.as_ref()));
        self.additions(set, groups);
    }

    /// The batches, in order, none empty.
    pub fn finish(mut self) -> Vec<Batch> {
        if !self.current.is_empty() {
            self.full.push(self.current);
        }
        self.full
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

    /// Send `batch` (in one datagram, the socket's send buffer raised to fit it) and report
    /// the kernel's verdict.
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

    /// Netlink attributes in `bytes`: (type without the nested and byte-order flags,
    /// length field, value).
    fn attributes(bytes: &[u8]) -> Vec<(u16, usize, &[u8])> {
        let mut at = 0;
        let mut out = Vec::new();
        while at + 4 <= bytes.len() {
            let len = u16::from_ne_bytes([bytes[at], bytes[at + 1]]) as usize;
            let kind = u16::from_ne_bytes([bytes[at + 2], bytes[at + 3]]) & 0x3fff;
            assert!(
                len >= 4 && at + len <= bytes.len(),
                "attribute lengths add up"
            );
            out.push((kind, len, &bytes[at + 4..at + len]));
            at += (len + 3) & !3;
        }
        assert_eq!(at, bytes.len());
        out
    }

    /// For every element message of a finished batch, read back from the bytes: the length
    /// field of its `NFTA_SET_ELEM_LIST_ELEMENTS` (3) and how many kernel elements it holds.
    fn element_lists(bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at + 16 <= bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes([bytes[at + 4], bytes[at + 5]]);
            if kind == (10 << 8) | 12 || kind == (10 << 8) | 14 {
                // nlmsghdr (16) and nfgenmsg (4), then the attributes.
                let lists: Vec<_> = attributes(&bytes[at + 20..at + len])
                    .into_iter()
                    .filter(|(k, _, _)| *k == 3)
                    .map(|(_, len, value)| (len, attributes(value).len()))
                    .collect();
                assert_eq!(lists.len(), 1, "one element list per message");
                out.extend(lists);
            }
            at += (len + 3) & !3;
        }
        out
    }

    /// The element counts of a batch's commands.
    fn counts(b: &Batch) -> Vec<usize> {
        b.commands()
            .iter()
            .map(|c| match c {
                Command::AddElements { count, .. } | Command::DeleteElements { count, .. } => {
                    *count
                }
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn v6(i: u32) -> Field {
        Field::Ipv6(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i)))
    }

    /// A chain name of the longest kind the kernel takes (255 bytes), different per `i`.
    fn long_chain(i: u32) -> String {
        format!("{i:08x}-{}", "c".repeat(246))
    }

    /// Many verdict-map elements naming long chains (a dispatch map of a busy node, a
    /// selection of a large namespace) in one command each: several messages, each element
    /// list under the bound and well under the 64 KiB an attribute can hold (one message
    /// made netlink-packet-netfilter panic), every element in exactly one of them.
    #[test]
    fn large_element_commands_are_split_into_lists_that_fit() {
        let key = |i: u32| Data(vec![v6(i), Field::Proto(6), Field::Port(i as u16)]);
        let goto = |i: u32| MapData::Verdict(Verdict::Goto(long_chain(i)));
        let exact: Vec<Element> = (0..1500).map(|i| Element::map(key(i), goto(i))).collect();
        let keys: Vec<Data> = (0..1500).map(key).collect();
        // Concatenated intervals: one kernel element each, the largest there are.
        let concat: Vec<Element<Interval>> = (0..1500)
            .map(|i| {
                let last = Data(vec![v6(i), Field::Proto(17), Field::Port(65535)]);
                Element::map(Interval::new(key(i), last).unwrap(), goto(i))
            })
            .collect();
        // Single-field intervals: a start and an end element each, never apart.
        let ranges: Vec<Element<Interval>> = (0..1500)
            .map(|i| {
                let iv = Interval::new(Data::one(v6(2 * i)), Data::one(v6(2 * i))).unwrap();
                Element::map(iv, goto(i))
            })
            .collect();
        let mut b = Batch::new("t");
        b.add("m", &exact);
        b.delete("m", &keys);
        b.add_intervals("c", &concat);
        b.delete_intervals(
            "c",
            &concat.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
        );
        b.add_intervals("r", &ranges);
        let counts = counts(&b);
        let lists = element_lists(&b.finished());
        assert_eq!(lists.len(), counts.len());
        assert!(
            counts.len() >= 5 * 2,
            "several messages per command: {counts:?}"
        );
        // Per command: its messages' counts add up to 1500, and their lists hold that many
        // kernel elements (two per single-field interval).
        let mut at = 0;
        for (i, per_kernel_element) in [1, 1, 1, 1, 2].into_iter().enumerate() {
            let (mut elements, mut kernel_elements) = (0, 0);
            while elements < 1500 {
                elements += counts[at];
                kernel_elements += lists[at].1;
                // The length field counts the 4-byte header. A list is closed only when the
                // next element (at most 424 bytes) does not fit.
                let len = lists[at].0;
                assert!(len <= LIST_BYTES + 4, "an element list of {len} bytes");
                if elements < 1500 {
                    assert!(len > LIST_BYTES - 424, "lists are filled: {len} bytes");
                }
                at += 1;
            }
            assert_eq!(elements, 1500, "command {i}");
            assert_eq!(kernel_elements, 1500 * per_kernel_element, "command {i}");
        }
        assert_eq!(at, counts.len());
        // Empty commands send nothing.
        let mut empty = Batch::new("t");
        empty.add("m", &[]);
        empty.delete_intervals("c", &[]);
        assert!(empty.is_empty());
    }

    #[test]
    fn batches_end_between_messages_and_stay_under_their_size() {
        let max = 160 * 1024;
        let mut all = Batches::new("t", max);
        let named: Vec<Element> = (0..10_000)
            .map(|i| Element::set(Data(vec![v6(i), Field::Proto(6), Field::Port(80)])))
            .collect();
        all.add("named6", &named);
        let ports: Vec<Element<Interval>> = (0..2_000)
            .map(|i| {
                let first = Data(vec![v6(i), Field::Proto(6), Field::Port(80)]);
                let last = Data(vec![v6(i), Field::Proto(6), Field::Port(90)]);
                Element::map(
                    Interval::new(first, last).unwrap(),
                    MapData::Verdict(Verdict::Goto(long_chain(i))),
                )
            })
            .collect();
        all.add_intervals("ports6", &ports);
        let batches = all.finish();
        assert!(batches.len() > 2, "{} batches", batches.len());
        let mut total = 0;
        for (i, b) in batches.iter().enumerate() {
            let bytes = b.finished();
            assert!(bytes.len() <= max, "a batch of {} bytes", bytes.len());
            if i + 1 < batches.len() {
                assert!(
                    bytes.len() > max / 2,
                    "batches are filled: {} bytes",
                    bytes.len()
                );
            }
            let lists = element_lists(&bytes);
            assert!(lists.iter().all(|(len, _)| *len <= LIST_BYTES + 4));
            total += lists.iter().map(|(_, n)| n).sum::<usize>();
            assert_eq!(
                counts(b).iter().sum::<usize>(),
                lists.iter().map(|(_, n)| n).sum()
            );
        }
        assert_eq!(total, 12_000);
        assert!(Batches::new("t", max).finish().is_empty());
    }

    /// The `NFTA_SET_ELEM_LIST_ELEMENTS` payload of `elements` as this module encodes it.
    fn emitted(elements: &[Element<Interval>]) -> Vec<u8> {
        use netlink_packet_core::Emitable;
        let list: Vec<_> = elements
            .iter()
            .flat_map(|e| interval_elements(&e.key, e.data.as_ref()))
            .collect();
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
