//! The room core against a simple model, driven by a byte string: each byte picks the next
//! event (a hello with a clashing name, a join, a leave, a disconnect, a message stored by
//! the history, a commit reaching the core out of order, readers catching up). After every
//! event the mailboxes are checked against the model: every member gets a gap-free run of
//! numbers from its join point, an evicted member stops exactly where it was told, names
//! are unique, the core counts the members the model does, and nobody hears of the same
//! arrival or departure twice in a row.
//!
//! The same driver runs under libFuzzer (coverage-guided bytes), proptest (random bytes, in
//! CI) and over the saved corpus (in CI).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use chat_core::{ConnId, Core, Full, Mailbox, MemberId, RoomName, Rules, Seq};
use chat_proto::{LeftReason, NodeFrame};

/// The input, read a byte per choice; it ends the run when it runs out.
struct Choices<'a> {
    data: &'a [u8],
    at: usize,
}

impl Choices<'_> {
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }

    fn below(&mut self, n: usize) -> usize {
        let byte = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        usize::from(byte) % n
    }
}

#[derive(Default)]
struct Inbox {
    capacity: usize,
    queued: usize,
    got: Vec<Seq>,
    /// Arrivals (`+name`) and departures (`-name`), in the order told.
    notices: Vec<String>,
    evicted_after: Option<Seq>,
}

#[derive(Clone, Default)]
struct SimMailbox(Rc<RefCell<Inbox>>);

impl Mailbox for SimMailbox {
    type Message = (String, Seq);
    fn encode(frame: &NodeFrame) -> (String, Seq) {
        match frame {
            NodeFrame::Arrived { name } => (format!("+{}", name.to_ascii_lowercase()), 0),
            NodeFrame::Left { name, .. } => (format!("-{}", name.to_ascii_lowercase()), 0),
            other => panic!("the core announces only arrivals and departures, not {other:?}"),
        }
    }
    fn offer(&self, seq: Seq, message: &(String, Seq)) -> Result<(), Full> {
        let mut inbox = self.0.borrow_mut();
        assert_eq!(message.1, seq, "a message is offered under its own number");
        if inbox.queued >= inbox.capacity {
            return Err(Full);
        }
        inbox.queued += 1;
        inbox.got.push(seq);
        Ok(())
    }
    fn reply(&self, message: (String, Seq)) -> Result<(), Full> {
        // The simulation's sends have no acks: what comes here is an arrival or departure.
        self.0.borrow_mut().notices.push(message.0);
        Ok(())
    }
    fn space(&self) -> usize {
        let inbox = self.0.borrow();
        inbox.capacity.saturating_sub(inbox.queued)
    }
    fn evict(&self, last_seq: Seq) {
        let mut inbox = self.0.borrow_mut();
        assert!(inbox.evicted_after.is_none(), "a member is evicted once");
        inbox.evicted_after = Some(last_seq);
    }
    fn remove(&self, _frame: (String, Seq)) {
        unreachable!("the simulation moderates nothing");
    }
}

struct Member {
    room: String,
    joined_after: Seq,
    mailbox: SimMailbox,
    active: bool,
}

const NAMES: [&str; 4] = ["ada", "ADA", "bob", "cy"];
const ROOMS: [&str; 3] = ["a", "b", "c"];

pub fn run(data: &[u8]) {
    let mut rng = Choices { data, at: 0 };
    let mut core: Core<SimMailbox> = Core::new(Rules::new(100, 2));
    let mut next_seq: HashMap<&str, Seq> = HashMap::new();
    for room in ROOMS {
        core.add_room(RoomName::parse(room).expect("valid"), 0);
        next_seq.insert(room, 1);
    }
    let mut online: BTreeMap<u64, String> = BTreeMap::new(); // conn -> name key
    let mut members: BTreeMap<u64, Member> = BTreeMap::new();
    let mut pending: Vec<(&str, Seq)> = Vec::new(); // stored, not yet committed to the core
    let mut committed: HashMap<&str, std::collections::BTreeSet<Seq>> = HashMap::new();
    // Per room, the newest number before which every message has reached the core.
    let mut delivered: HashMap<&str, Seq> = ROOMS.iter().map(|r| (*r, 0)).collect();
    let mut next_id = 1u64;

    while !rng.done() {
        match rng.below(8) {
            0 => {
                let conn = next_id;
                next_id += 1;
                let name = NAMES[rng.below(NAMES.len())];
                let result = core.connect(
                    ConnId(conn),
                    name,
                    None,
                    [conn as u8; 16],
                    chat_core::accounts::Identity::Guest,
                    std::time::Instant::now(),
                );
                let taken = online.values().any(|held| held == &name.to_ascii_lowercase());
                assert_eq!(result.is_err(), taken, "{name} taken={taken} but {result:?}");
                if result.is_ok() {
                    online.insert(conn, name.to_ascii_lowercase());
                }
            }
            1 if !online.is_empty() => {
                let conn = *online.keys().nth(rng.below(online.len())).expect("some");
                core.disconnect(ConnId(conn), LeftReason::Disconnected);
                online.remove(&conn);
                members.retain(|id, _| id >> 32 != conn);
            }
            2 | 3 if !online.is_empty() => {
                let conn = *online.keys().nth(rng.below(online.len())).expect("some");
                let room = ROOMS[rng.below(ROOMS.len())];
                let id = (conn << 32) | next_id;
                next_id += 1;
                let mailbox = SimMailbox::default();
                mailbox.0.borrow_mut().capacity = 1 + rng.below(6);
                match core.join(ConnId(conn), MemberId(id), room, mailbox.clone()) {
                    Ok(joined) => {
                        assert_eq!(joined.history_until, delivered[room]);
                        members.insert(
                            id,
                            Member {
                                room: room.into(),
                                joined_after: joined.history_until,
                                mailbox,
                                active: true,
                            },
                        );
                    }
                    Err(refusal) => {
                        let mine = members.iter().filter(|(mid, m)| m.active && *mid >> 32 == conn);
                        let rooms: Vec<&String> = mine.map(|(_, m)| &m.room).collect();
                        assert!(
                            rooms.contains(&&room.to_owned()) || rooms.len() >= 2,
                            "join refused without reason: {refusal}"
                        );
                    }
                }
            }
            4 if !members.is_empty() => {
                let id = *members.keys().nth(rng.below(members.len())).expect("some");
                core.leave(MemberId(id), LeftReason::Left);
                members.remove(&id);
            }
            5 => {
                // The history stores a message: it gets the next number now, but its
                // completion may reach the core later than a younger one's.
                let room = ROOMS[rng.below(ROOMS.len())];
                let seq = next_seq[room];
                next_seq.insert(room, seq + 1);
                pending.push((room, seq));
            }
            6 if !pending.is_empty() => {
                let (room, seq) = pending.swap_remove(rng.below(pending.len()));
                let done = committed.entry(room).or_default();
                done.insert(seq);
                let last = delivered.get_mut(room).expect("room");
                while done.contains(&(*last + 1)) {
                    *last += 1;
                }
                let evicted = core.committed(room, seq, (room.into(), seq));
                for gone in evicted {
                    let member = members.get_mut(&gone.member.0).expect("evicted a known member");
                    member.active = false;
                    assert_eq!(member.mailbox.0.borrow().evicted_after, Some(gone.last_seq));
                }
            }
            _ => {
                // Readers catch up a little.
                for member in members.values() {
                    let mut inbox = member.mailbox.0.borrow_mut();
                    inbox.queued = inbox.queued.saturating_sub(rng.below(3));
                }
            }
        }
        check(&core, &members, &delivered);
    }
}

/// Every member got a gap-free run of numbers right after its join point, in order, up to
/// the newest one the room has delivered; an evicted one stopped exactly where it was told.
fn check(core: &Core<SimMailbox>, members: &BTreeMap<u64, Member>, delivered: &HashMap<&str, Seq>) {
    for (id, member) in members {
        let inbox = member.mailbox.0.borrow();
        let expected: Vec<Seq> = (member.joined_after + 1..).take(inbox.got.len()).collect();
        assert_eq!(inbox.got, expected, "member {id} in {} saw a gap or a repeat", member.room);
        let last = inbox.got.last().copied().unwrap_or(member.joined_after);
        match inbox.evicted_after {
            Some(evicted_after) => {
                assert!(!member.active);
                assert_eq!(last, evicted_after, "evicted member {id}");
            }
            None => assert_eq!(last, delivered[member.room.as_str()], "member {id} is behind"),
        }
        let mut last_told: HashMap<&str, char> = HashMap::new();
        for notice in &inbox.notices {
            let (kind, name) = notice.split_at(1);
            let kind = kind.chars().next().expect("a kind");
            let before = last_told.insert(name, kind);
            assert_ne!(before, Some(kind), "member {id} was told {notice} twice in a row");
        }
    }
    let online_members: usize = members.values().filter(|m| m.active).count();
    let counted: usize = core.rooms().iter().map(|r| r.members).sum();
    assert_eq!(counted, online_members, "the core counts members the model does not");
}
