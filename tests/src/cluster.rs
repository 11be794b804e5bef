//! A cluster of `raft-core` nodes in one process, with a simulated network and disks.
//!
//! The cluster plays the driver for every node: it carries out each [`Ready`] in the
//! documented order, keeps each node's durable state (what survives a crash), plays the
//! clients, and reports every event to the [`Checker`]. Every action returns an error
//! naming the violated property, and narrates what happened as lines of text: the golden
//! scenarios print them, the simulator keeps the last few hundred as a trace.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use raft_core::{
    AppendResult, ChangeError, Config, Entry, HardState, Index, MembershipChange, Message, MessageKind, Node, NodeId,
    Payload, ProposalOutcome, ProposeError, ReadId, Ready, Restored, Role, SnapshotMeta, Term, WakeHint,
};

use crate::checker::{Checker, DurableLog, Violation};
use crate::machine::Machine;
use crate::rng::SimRng;
use crate::watch::Watch;

/// What survives a crash: the durable Raft state and the state machine (which the real
/// driver keeps in SQLite, with its applied index).
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// The durable term and vote.
    pub hard_state: HardState,
    /// Where the durable log begins (§7).
    pub snapshot: SnapshotMeta,
    /// The durable log after the snapshot point.
    pub entries: Vec<Entry>,
    /// The state machine, which is also the snapshot a leader sends.
    pub machine: Machine,
}

impl Disk {
    /// The durable log, for the checker.
    pub fn log(&self) -> DurableLog<'_> {
        DurableLog { snapshot: &self.snapshot, entries: &self.entries }
    }

    /// The index of the last durable entry (or of the snapshot point).
    pub fn last_index(&self) -> Index {
        self.snapshot.index + self.entries.len() as Index
    }
}

/// A leader's driver finishing a snapshot transfer: it reports to its node when due.
#[derive(Clone, Copy, Debug)]
struct TransferEnd {
    due: u64,
    from: NodeId,
    to: NodeId,
    index: Index,
    delivered: bool,
}

/// One simulated server.
#[derive(Debug)]
pub struct SimNode {
    /// The node's config (its seed changes on every restart).
    pub config: Config,
    /// The running node, or `None` while crashed.
    pub raft: Option<Node>,
    /// Durable state.
    pub disk: Disk,
    /// Readies whose disk write (step 2 onwards) is still in progress: (due time, ready).
    writing: VecDeque<(u64, Ready)>,
    /// Snapshots received whole and not yet installed or discarded, by (index, term).
    received: BTreeMap<(Index, Term), Machine>,
    /// How often the node has restarted.
    restarts: u64,
}

/// A message on the wire.
#[derive(Clone, Debug)]
pub struct InFlight {
    /// When it may be delivered.
    pub due: u64,
    /// The message.
    pub msg: Message,
    /// An `InstallSnapshot` carries the snapshot itself (the drivers move it, not Raft).
    pub body: Option<Machine>,
}

/// How the simulated network and disks misbehave.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Message delays are uniform in `[0, max_delay]` time units; differing delays reorder.
    pub max_delay: u64,
    /// Probability that a disk write takes a while (up to `max_disk_delay` units).
    pub slow_disk: f64,
    /// The longest disk write.
    pub max_disk_delay: u64,
    /// Keep each link's messages in the order sent, as TCP does (the transport's case).
    pub in_order: bool,
    /// Probability that a node handles all its messages due at once before taking one
    /// ready (so one ready may carry several truncations, votes and acknowledgements).
    pub batch: f64,
    /// A snapshot transfer ends (and is reported to the leader) up to this long after it
    /// started; meanwhile the leader sends that follower nothing else.
    pub max_transfer: u64,
    /// Probability that a transfer is reported failed even though it arrived.
    pub transfer_fails: f64,
    /// Probability that a heartbeat the receiver's last published hint lets its driver
    /// answer at once is answered so, and stepped later with `Node::step_answered`, as
    /// lightraft's transport tasks do (`raft_core::wake_hint`).
    pub answer_at_once: f64,
}

/// What was put on the wire while [`Cluster::counting`] was on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Messages sent.
    pub messages: u64,
    /// Their size as JSON, as the transport sends them.
    pub bytes: u64,
    /// Appends that carried entries.
    pub appends: u64,
    /// Entries carried, counting every copy.
    pub entries: u64,
}

/// How far a node got through carrying out a ready when it crashed (see [`Cluster::crash_during_ready`]).
#[derive(Clone, Copy, Debug)]
pub struct Partial {
    /// Step 2 finished: the ready's state is durable.
    pub persisted: bool,
    /// Step 3: how many of the persisted messages left.
    pub sent: usize,
    /// Step 4: how many committed entries were applied.
    pub applied: usize,
}

/// A cluster of simulated nodes plus everything the driver and clients keep.
pub struct Cluster {
    /// The nodes by id.
    pub nodes: BTreeMap<NodeId, SimNode>,
    /// Simulated time.
    pub now: u64,
    /// Messages in flight.
    pub network: Vec<InFlight>,
    /// Cut links: (from, to).
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// Current misbehaviour.
    pub faults: Faults,
    /// The safety checker.
    pub checker: Checker,
    /// Narrated events not yet taken: (time, text).
    pub events: VecDeque<(u64, String)>,
    /// Keep at most this many events (older ones are dropped); `usize::MAX` keeps all.
    pub event_limit: usize,
    /// Narrate every message sent, not just those delivered or dropped.
    pub narrate_sends: bool,
    /// Proposals awaiting an outcome: (node, term, index).
    pub proposals: BTreeSet<(NodeId, Term, Index)>,
    /// Reads awaiting an outcome: (node, id) -> newest write they must see.
    pub reads: BTreeMap<(NodeId, ReadId), Index>,
    /// How many proposals and reads were acknowledged.
    pub acked_writes: u64,
    /// How many linearizable reads were served.
    pub served_reads: u64,
    /// While true, `traffic` counts what is sent.
    pub counting: bool,
    /// Messages sent while counting.
    pub traffic: Traffic,
    /// With `Faults::in_order`: the latest due time on each link.
    link_due: BTreeMap<(NodeId, NodeId), u64>,
    /// Each running node's wake hint, as its driver published it at its latest ready.
    hints: BTreeMap<NodeId, WakeHint>,
    /// Heartbeats answered at once from a hint, kept for their node's next input.
    answered: BTreeMap<NodeId, Vec<Message>>,
    /// Each running node's timers and claims, watched from outside.
    watches: BTreeMap<NodeId, Watch>,
    /// Vote requests and answers produced by the input being handled, for the watch.
    produced: Vec<Message>,
    /// Snapshot transfers whose end is not yet reported.
    transfers: Vec<TransferEnd>,
    /// Snapshots sent, and installed.
    pub snapshots_sent: u64,
    /// Snapshots installed.
    pub snapshots_installed: u64,
    /// The config every node starts from (its id and seed aside), with the initial voters.
    template: Config,
    next_read: ReadId,
    rng: SimRng,
}

impl Cluster {
    /// A cluster of `size` fresh nodes with ids 1..=size; `tune` adjusts each config.
    pub fn new(size: u64, seed: u64, tune: impl Fn(&mut Config)) -> Cluster {
        let voters: Vec<NodeId> = (1..=size).collect();
        let mut template = Config::new(0, voters.clone());
        tune(&mut template);
        template.seed = seed.wrapping_mul(1000);
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            now: 0,
            network: Vec::new(),
            blocked: BTreeSet::new(),
            faults: Faults::default(),
            checker: Checker::new(),
            events: VecDeque::new(),
            event_limit: usize::MAX,
            narrate_sends: false,
            proposals: BTreeSet::new(),
            reads: BTreeMap::new(),
            acked_writes: 0,
            served_reads: 0,
            counting: false,
            traffic: Traffic::default(),
            link_due: BTreeMap::new(),
            hints: BTreeMap::new(),
            answered: BTreeMap::new(),
            watches: BTreeMap::new(),
            produced: Vec::new(),
            transfers: Vec::new(),
            snapshots_sent: 0,
            snapshots_installed: 0,
            template,
            next_read: 1,
            rng: SimRng::new(seed),
        };
        for id in voters {
            cluster.add_node(id);
        }
        cluster
    }

    /// Starts a fresh node `id` with an empty disk. A node outside the initial voters
    /// waits, doing nothing, until a leader adds it (§4.2.1).
    pub fn add_node(&mut self, id: NodeId) {
        let mut config = self.template.clone();
        config.id = id;
        config.seed = config.seed.wrapping_add(id);
        let Ok(raft) = Node::new(config.clone(), Restored::default()) else { return };
        let node = SimNode {
            config,
            raft: Some(raft),
            disk: Disk::default(),
            writing: VecDeque::new(),
            received: BTreeMap::new(),
            restarts: 0,
        };
        self.nodes.insert(id, node);
    }

    /// Asks node `id` to change the configuration. Returns where the change was placed.
    pub fn change_membership(
        &mut self,
        id: NodeId,
        change: MembershipChange,
    ) -> Result<Option<(Term, Index)>, Violation> {
        let Some(raft) = self.raft_mut(id) else { return Ok(None) };
        let what = match &change {
            MembershipChange::AddLearner { id, .. } => format!("add learner n{id}"),
            MembershipChange::Remove { id } => format!("remove n{id}"),
        };
        let placed = match raft.propose_membership(change) {
            Ok((term, index)) => {
                self.proposals.insert((id, term, index));
                self.say(format!("n{id} {what} -> {index}@{term}"));
                Some((term, index))
            }
            Err(e @ ChangeError::Invalid(_)) => {
                self.say(format!("n{id} {what} refused: {e}"));
                None
            }
            Err(e) => {
                self.say(format!("n{id} {what} refused: {e:?}"));
                None
            }
        };
        self.process(id)?;
        Ok(placed)
    }

    /// Shuts node `id` down for good and forgets it, as an operator does once it has been
    /// removed from the configuration; messages still in flight to it are lost.
    pub fn retire(&mut self, id: NodeId) {
        self.crash(id);
        self.nodes.remove(&id);
        self.watches.remove(&id);
        self.say(format!("n{id} RETIRED"));
    }

    /// The ids of all nodes.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The ids of running nodes.
    pub fn live(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.raft.is_some()).map(|(&id, _)| id).collect()
    }

    /// The running node `id`, if any.
    pub fn raft(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id).and_then(|n| n.raft.as_ref())
    }

    /// Whether node `id` has a disk write in progress.
    pub fn is_writing(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| !n.writing.is_empty())
    }

    /// Records a line of narrative.
    pub fn say(&mut self, text: String) {
        if self.events.len() >= self.event_limit {
            self.events.pop_front();
        }
        self.events.push_back((self.now, text));
    }

    /// Takes the narrative so far, one event per line.
    pub fn take_events(&mut self) -> String {
        let mut out = String::new();
        for (_, line) in self.events.drain(..) {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// The narrative kept so far, with times, for a failure report.
    pub fn trace(&self) -> String {
        self.events.iter().map(|(t, line)| format!("[{t:>6}] {line}\n")).collect()
    }

    // ---- inputs -----------------------------------------------------------------------

    /// Ticks node `id` once.
    pub fn tick(&mut self, id: NodeId) -> Result<(), Violation> {
        // Its driver steps what it kept before the tick, which must see it.
        if self.answered.get(&id).is_some_and(|kept| !kept.is_empty()) {
            self.deliver_batch(id, Vec::new())?;
        }
        let Some(raft) = self.raft_mut(id) else { return Ok(()) };
        let before = raft.status();
        raft.tick();
        self.produced.clear();
        self.process(id)?;
        let Cluster { nodes, watches, produced, .. } = self;
        let Some(node) = nodes.get(&id) else { return Ok(()) };
        let Some(raft) = node.raft.as_ref() else { return Ok(()) };
        // Who may campaign (§4.2.1, §4.2.2): a voter of the latest configuration, or a voter
        // that an uncommitted configuration removes.
        let (latest, status) = (raft.membership(), raft.status());
        let voter = latest.is_voter(id)
            || !latest.is_member(id)
                && status.membership_index > status.commit_index
                && raft.log().membership_at(status.membership_index - 1).is_voter(id);
        watches.entry(id).or_default().ticked(&node.config, latest, voter, &before, &status, produced)
    }

    /// Makes node `id` start an election now.
    pub fn campaign(&mut self, id: NodeId) -> Result<(), Violation> {
        let Some(raft) = self.raft_mut(id) else { return Ok(()) };
        let before = raft.status();
        raft.campaign();
        let after = raft.status();
        self.watches.entry(id).or_default().campaigned(&before, &after);
        self.process(id)
    }

    /// A client proposes `command` at node `id`. Returns where it was placed, if accepted.
    pub fn propose(&mut self, id: NodeId, command: &str) -> Result<Option<(Term, Index)>, Violation> {
        let Some(raft) = self.raft_mut(id) else { return Ok(None) };
        let placed = match raft.propose(command.as_bytes().to_vec()) {
            Ok((term, index)) => {
                self.proposals.insert((id, term, index));
                self.say(format!("n{id} propose {command:?} -> {index}@{term}"));
                Some((term, index))
            }
            Err(ProposeError::NotLeader { leader }) => {
                let leader = leader.map_or("unknown".to_string(), |l| format!("n{l}"));
                self.say(format!("n{id} propose {command:?} refused: not leader (leader {leader})"));
                None
            }
            Err(ProposeError::TransferInProgress) => {
                self.say(format!("n{id} propose {command:?} refused: leadership transfer in progress"));
                None
            }
        };
        self.process(id)?;
        Ok(placed)
    }

    /// A client asks node `id` for a linearizable read. Returns the read's id.
    pub fn read(&mut self, id: NodeId) -> Result<Option<ReadId>, Violation> {
        let read_id = self.next_read;
        let must_see = self.checker.read_started();
        let Some(raft) = self.raft_mut(id) else { return Ok(None) };
        raft.read(read_id);
        self.next_read += 1;
        self.reads.insert((id, read_id), must_see);
        self.say(format!("n{id} read {read_id} requested"));
        self.process(id)?;
        Ok(Some(read_id))
    }

    /// Asks leader `id` to hand leadership to `target`.
    pub fn transfer(&mut self, id: NodeId, target: NodeId) -> Result<(), Violation> {
        let Some(raft) = self.raft_mut(id) else { return Ok(()) };
        let result = match raft.transfer_leadership(target) {
            Ok(()) => "started".to_string(),
            Err(e) => format!("refused: {e:?}"),
        };
        self.say(format!("n{id} transfer leadership to n{target}: {result}"));
        self.process(id)
    }

    /// Crashes node `id`: it loses everything not yet durable, and its clients lose
    /// track of their requests (the outcome is unknown to them).
    pub fn crash(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let Some(raft) = node.raft.take() else { return };
        let lone = raft.membership().voters.len() == 1 && raft.membership().is_voter(id);
        node.writing.clear();
        node.received.clear();
        self.hints.remove(&id);
        self.answered.remove(&id);
        // Its transfers die with it; the followers' drivers discard the pieces.
        self.transfers.retain(|t| t.from != id);
        self.proposals.retain(|&(n, _, _)| n != id);
        self.reads.retain(|&(n, _), _| n != id);
        self.say(format!("n{id} CRASH"));
        // A sole voter needs no votes, so it leads before its new term is durable; if that
        // write is lost, it leads the same term again after restarting, with other
        // entries. The first ones lived only in its memory and no one saw them (its
        // messages wait for the term to be durable): forget them. (With peers, a
        // leader's term is durable before any vote for it, so it never leads a term
        // twice, and nothing is forgotten.)
        if lone {
            let held = self.held_entries();
            self.checker.forget_unless_held(&held);
        }
    }

    /// Crashes node `id` part-way through carrying out its oldest ready whose disk write
    /// is in flight: the moments Figure 2's "persistent state" and §10.2.1 are about.
    pub fn crash_during_ready(&mut self, id: NodeId, partial: Partial) -> Result<(), Violation> {
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
        if node.raft.is_some() {
            if let Some((_, ready)) = node.writing.pop_front() {
                self.say(format!("n{id} crashes while carrying out a ready: {partial:?}"));
                self.carry_out(id, ready, Some(partial))?;
            }
        }
        self.crash(id);
        Ok(())
    }

    /// Every (index, term) that some running log, some disk or some message in flight holds.
    fn held_entries(&self) -> HashSet<(Index, Term)> {
        let mut held = HashSet::new();
        for node in self.nodes.values() {
            held.extend(node.disk.entries.iter().map(|e| (e.index, e.term)));
            for (_, ready) in &node.writing {
                held.extend(ready.entries.iter().map(|e| (e.index, e.term)));
            }
            if let Some(raft) = &node.raft {
                let log = raft.log();
                held.extend((log.first_index()..=log.last_index()).filter_map(|i| log.term_at(i).map(|t| (i, t))));
            }
        }
        for m in &self.network {
            if let MessageKind::Append { entries, .. } = &m.msg.kind {
                held.extend(entries.iter().map(|e| (e.index, e.term)));
            }
        }
        held
    }

    /// Restarts node `id` from its durable state.
    pub fn restart(&mut self, id: NodeId) -> Result<(), Violation> {
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
        if node.raft.is_some() {
            return Ok(());
        }
        node.restarts += 1;
        let mut config = node.config.clone();
        // A new seed per restart, in bits no other node's seed uses: adding the restart
        // count gave node 1, restarted once, node 2's seed, and in a 2-node cluster two
        // nodes with the same timeouts split every vote forever.
        config.seed = config.seed.wrapping_add(node.restarts << 32);
        let restored = Restored {
            hard_state: node.disk.hard_state,
            snapshot: node.disk.snapshot.clone(),
            entries: node.disk.entries.clone(),
            applied: node.disk.machine.index,
        };
        let raft = Node::new(config, restored).map_err(|e| format!("Durability: node {id} cannot restart: {e}"))?;
        let applied = node.disk.machine.index;
        self.checker.restarted(id, &node.disk.machine, raft.log())?;
        let hs = node.disk.hard_state;
        node.raft = Some(raft);
        self.watches.entry(id).or_default().restarted();
        self.say(format!("n{id} RESTART term={} vote={} applied={applied}", hs.term, fmt_vote(hs.voted_for)));
        Ok(())
    }

    /// Delivers one message.
    pub fn deliver(&mut self, msg: Message) -> Result<(), Violation> {
        self.deliver_batch(msg.to, vec![msg])
    }

    /// Delivers messages to node `to` one after another, then lets its driver take one
    /// ready for all of them, as a real driver does when several arrive at once.
    pub fn deliver_batch(&mut self, to: NodeId, batch: Vec<Message>) -> Result<(), Violation> {
        let mut stepped = Vec::with_capacity(batch.len());
        // Heartbeats answered at once earlier come first: they arrived first.
        let kept = self.answered.remove(&to).unwrap_or_default();
        let batch = kept.into_iter().map(|m| (m, true)).chain(batch.into_iter().map(|m| (m, false)));
        for (msg, answered) in batch {
            if !answered && self.blocked.contains(&(msg.from, msg.to)) {
                self.say(format!("drop {msg} (partitioned)"));
                continue;
            }
            if !answered && self.answer_at_once(to, &msg) {
                continue;
            }
            let Cluster { nodes, watches, .. } = &mut *self;
            let Some(node) = nodes.get_mut(&to) else { continue };
            let Some(raft) = node.raft.as_mut() else {
                self.say(format!("drop {msg} (n{to} is down)"));
                continue;
            };
            let before = raft.status();
            if answered {
                raft.step_answered(msg.clone());
            } else {
                raft.step(msg.clone());
            }
            let after = raft.status();
            // Figure 2 ("if a request's term is older, reject it"): a message from an older
            // term may be answered, but it changes neither the receiver's term, role, leader
            // or vote, nor its commit index.
            let state = |s: &raft_core::Status| (s.term, s.role, s.leader, s.voted_for, s.commit_index);
            if msg.term < before.term && state(&after) != state(&before) {
                return Err(format!(
                    "Stale message: n{to} in term {} went from {:?} to {:?} on a message of term {}: {msg}",
                    before.term,
                    state(&before),
                    state(&after),
                    msg.term
                ));
            }
            let expected = watches.entry(to).or_default().stepped(&node.config, &msg, &before, &after, raft.log())?;
            self.say(if answered { format!("recv {msg} (answered at once)") } else { format!("recv {msg}") });
            stepped.push((msg, before, expected));
        }
        if stepped.is_empty() {
            return Ok(());
        }
        self.produced.clear();
        self.process(to)?;
        let Cluster { nodes, watches, produced, .. } = self;
        let Some(node) = nodes.get(&to) else { return Ok(()) };
        let watch = watches.entry(to).or_default();
        for (msg, before, expected) in &stepped {
            let alone = stepped.iter().filter(|(m, _, _)| m.from == msg.from).count() == 1;
            watch.answered(&node.config, msg, before, *expected, alone, produced)?;
        }
        Ok(())
    }

    /// With `Faults::answer_at_once`, node `to`'s driver may answer `msg` from the hint its
    /// node published at its latest ready, and keep `msg` for the node's next input. True
    /// if it did.
    fn answer_at_once(&mut self, to: NodeId, msg: &Message) -> bool {
        if self.faults.answer_at_once == 0.0 || self.nodes.get(&to).is_none_or(|n| n.raft.is_none()) {
            return false;
        }
        let Some(answer) = self.hints.get(&to).and_then(|hint| hint.answer(msg)) else { return false };
        if !self.rng.chance(self.faults.answer_at_once) {
            return false;
        }
        self.say(format!("recv {msg}: n{to} answers it at once, from its hint"));
        self.send(answer);
        self.answered.entry(to).or_default().push(msg.clone());
        true
    }

    /// Delivers every message due by now, in random order among themselves. With
    /// `Faults::batch`, a node sometimes takes all its due messages before one ready.
    pub fn deliver_due(&mut self) -> Result<(), Violation> {
        let now = self.now;
        let (mut due, later): (Vec<InFlight>, Vec<InFlight>) = self.network.drain(..).partition(|m| m.due <= now);
        self.network = later;
        // Shuffle (Fisher-Yates) so equal delays still reorder.
        for i in (1..due.len()).rev().filter(|_| !self.faults.in_order) {
            let j = self.rng.range(0, i as u64 + 1) as usize;
            due.swap(i, j);
        }
        let mut due: VecDeque<Message> = due.into_iter().map(|m| self.arrive(m)).collect();
        while let Some(first) = due.pop_front() {
            let to = first.to;
            let mut batch = vec![first];
            if self.faults.batch > 0.0 && self.rng.chance(self.faults.batch) {
                let (same, rest): (VecDeque<Message>, VecDeque<Message>) = due.drain(..).partition(|m| m.to == to);
                batch.extend(same);
                due = rest;
            }
            self.deliver_batch(to, batch)?;
        }
        Ok(())
    }

    /// Delivers, in the order sent, the messages now in flight to the nodes in `to` (all
    /// nodes if empty). Messages these deliveries produce stay in flight. Returns how
    /// many were delivered.
    pub fn deliver_in_order(&mut self, to: &[NodeId]) -> Result<usize, Violation> {
        let (chosen, rest): (Vec<InFlight>, Vec<InFlight>) =
            self.network.drain(..).partition(|m| to.is_empty() || to.contains(&m.msg.to));
        self.network = rest;
        let count = chosen.len();
        for m in chosen {
            let msg = self.arrive(m);
            self.deliver(msg)?;
        }
        Ok(count)
    }

    /// A message reaches its node's driver. A snapshot's body is kept until the node says
    /// whether to install it (a node that is down or cut off never gets it).
    fn arrive(&mut self, m: InFlight) -> Message {
        if let Some(body) = m.body {
            let reachable = !self.blocked.contains(&(m.msg.from, m.msg.to));
            if let Some(node) = self.nodes.get_mut(&m.msg.to).filter(|n| n.raft.is_some() && reachable) {
                node.received.insert((body.index, body.term), body);
            }
        }
        m.msg
    }

    /// The driver of node `id` compacts its log up to `keep` entries before its durable
    /// state machine's index (§7): it may, as the state machine holds everything up to there.
    pub fn compact(&mut self, id: NodeId, keep: Index) -> Result<(), Violation> {
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
        let index = node.disk.machine.index.saturating_sub(keep);
        let Some(raft) = node.raft.as_mut() else { return Ok(()) };
        if index <= raft.log().snapshot().index {
            return Ok(());
        }
        raft.compact(index).map_err(|e| format!("Compaction: n{id} refused to compact to its durable state: {e}"))?;
        self.say(format!("n{id} compact to {index}"));
        self.process(id)
    }

    /// Reports to leader `id` the snapshot transfers whose end is due.
    fn end_transfers(&mut self, id: NodeId) {
        let now = self.now;
        let (due, rest): (Vec<TransferEnd>, Vec<TransferEnd>) =
            self.transfers.drain(..).partition(|t| t.from == id && t.due <= now);
        self.transfers = rest;
        for t in due {
            let Some(raft) = self.raft_mut(id) else { continue };
            raft.report_snapshot(t.to, t.index, t.delivered);
            let outcome = if t.delivered { "sent" } else { "failed" };
            self.say(format!("n{id} snapshot {} to n{} {outcome}", t.index, t.to));
        }
    }

    /// Finishes disk writes due by now on every node.
    pub fn process_all(&mut self) -> Result<(), Violation> {
        for id in self.ids() {
            self.process(id)?;
        }
        Ok(())
    }

    // ---- the driver -------------------------------------------------------------------

    fn raft_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut())
    }

    /// Runs node `id`'s driver loop until it has nothing more to do right now.
    pub fn process(&mut self, id: NodeId) -> Result<(), Violation> {
        // A node that keeps producing output without any new input is stuck in a loop.
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > 10_000 {
                return Err(format!("Progress: node {id} produced 10000 readies in a row without new input"));
            }
            if self.network.len() > 200_000 {
                return Err("Progress: over 200000 messages in flight; the nodes are flooding the network".into());
            }
            self.finish_due_writes(id)?;
            self.end_transfers(id);
            let Some(raft) = self.raft_mut(id) else { return Ok(()) };
            // Driver contract: when `has_ready` says there is nothing, `ready` has nothing: a
            // false "no" would leave a vote or a commit waiting for the next input. (A false
            // "yes" only costs the driver an empty round; a leader may have nothing to send.)
            let has_ready = raft.has_ready();
            let ready = raft.ready();
            if !has_ready && !ready.is_empty() {
                return Err(format!("Driver contract: n{id} has_ready() said false, but ready() returned {ready:?}"));
            }
            if !has_ready {
                break;
            }
            self.start_ready(id, ready)?;
        }
        self.check_node(id)
    }

    /// Ready steps 1 and 2a: send the leader's messages now, start the disk write.
    fn start_ready(&mut self, id: NodeId, ready: Ready) -> Result<(), Violation> {
        // As lightraft's driver does: the hint is published before the ready's messages
        // leave (see `raft_core::wake_hint`).
        if let Some(raft) = self.raft(id) {
            let hint = raft.wake_hint();
            self.hints.insert(id, hint);
        }
        // Every node here is correct, so none may ever see a message it must refuse: a
        // refusal means some rule produced a message the protocol forbids.
        if let Some(refusal) = ready.refused.first() {
            self.say(format!("n{id} {refusal}"));
            return Err(format!("Honest peers: n{id} {refusal}"));
        }
        if let Some(soft) = ready.status_change {
            let leader = soft.leader.map_or("none".to_string(), |l| format!("n{l}"));
            self.say(format!("n{id} is {} term={} leader={leader}", soft.role, soft.term));
            if soft.role == Role::Leader {
                let raft = self.raft(id).ok_or("leader vanished")?;
                let log = raft.log().clone();
                let lone = raft.membership().voters.len() == 1;
                self.checker.leader_elected(id, soft.term, &log, lone)?;
            }
        }
        if !ready.entries.is_empty() {
            let log = self.raft(id).ok_or("node vanished")?.log().clone();
            self.checker.entries_placed(id, &log, &ready.entries)?;
        }
        let votes = |m: &&Message| {
            matches!(
                m.kind,
                MessageKind::PreVote { .. }
                    | MessageKind::Vote { .. }
                    | MessageKind::PreVoteResp { .. }
                    | MessageKind::VoteResp { .. }
            )
        };
        self.produced.extend(ready.messages.iter().chain(&ready.persisted_messages).filter(votes).cloned());
        for msg in &ready.messages {
            // Step 1 is before the disk write: nothing sent now may promise durability.
            self.check_promise(id, msg)?;
            self.send(msg.clone());
        }
        for request in &ready.send_snapshots {
            self.send_snapshot(id, request.to, request.term)?;
        }
        let delay =
            if self.rng.chance(self.faults.slow_disk) { self.rng.range(1, self.faults.max_disk_delay + 1) } else { 0 };
        let node = self.nodes.get_mut(&id).ok_or("unknown node")?;
        node.writing.push_back((self.now + delay, ready));
        Ok(())
    }

    /// Ready steps 2b to 6 for every write that has completed.
    fn finish_due_writes(&mut self, id: NodeId) -> Result<(), Violation> {
        loop {
            let now = self.now;
            let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
            if node.writing.front().is_none_or(|(due, _)| *due > now) {
                return Ok(());
            }
            let Some((_, ready)) = node.writing.pop_front() else { return Ok(()) };
            self.carry_out(id, ready, None)?;
        }
    }

    /// Ready steps 2 to 6, all of them, or with `partial` only as far as a crash allows.
    fn carry_out(&mut self, id: NodeId, ready: Ready, partial: Option<Partial>) -> Result<(), Violation> {
        if partial.is_some_and(|p| !p.persisted) {
            return Ok(());
        }
        let node = self.nodes.get_mut(&id).ok_or("unknown node")?;
        // Step 2: make it durable.
        let mut durable = Vec::new();
        if let Some(hs) = ready.hard_state {
            node.disk.hard_state = hs;
            durable.push(format!("term={} vote={}", hs.term, fmt_vote(hs.voted_for)));
        }
        if let Some(meta) = ready.install_snapshot.clone() {
            let Some(body) = node.received.get(&(meta.index, meta.term)).copied() else {
                return Err(format!(
                    "Driver contract: n{id} asks to install a snapshot at {}@{} it never received",
                    meta.index, meta.term
                ));
            };
            self.checker.installed(id, &node.disk.machine, &body)?;
            node.disk.machine = body;
            durable.push(format!("install snapshot {}@{} ({})", meta.index, meta.term, meta.membership));
            node.disk.snapshot = meta;
            node.disk.entries.clear();
            self.snapshots_installed += 1;
        }
        if let Some(meta) = ready.compacted.clone().filter(|m| m.index > node.disk.snapshot.index) {
            // §7: only what the durable state machine holds may leave the log.
            if meta.index > node.disk.machine.index || meta.index > node.disk.last_index() {
                return Err(format!(
                    "Compaction (§7): n{id} drops its durable log up to {}, but its durable state machine is at {} and its log ends at {}",
                    meta.index,
                    node.disk.machine.index,
                    node.disk.last_index()
                ));
            }
            node.disk.entries.drain(..(meta.index - node.disk.snapshot.index) as usize);
            durable.push(format!("compact to {}@{}", meta.index, meta.term));
            node.disk.snapshot = meta;
        }
        if let Some(from) = ready.truncate_from {
            if from <= node.disk.snapshot.index {
                return Err(format!("Driver contract: n{id} truncates from {from}, inside its snapshot"));
            }
            node.disk.entries.truncate((from - 1 - node.disk.snapshot.index) as usize);
            durable.push(format!("truncate {from}.."));
        }
        if let Some(first) = ready.entries.first() {
            if first.index != node.disk.last_index() + 1 {
                return Err(format!(
                    "Driver contract: n{id} appends from {} to a durable log ending at {}",
                    first.index,
                    node.disk.last_index()
                ));
            }
            node.disk.entries.extend(ready.entries.iter().cloned());
            durable.push(format!("append {}", fmt_entries(&ready.entries)));
        }
        node.received.retain(|&(index, _), _| index > node.disk.machine.index);
        if !durable.is_empty() {
            self.say(format!("n{id} persist {}", durable.join(", ")));
        }
        // Step 3: messages that speak for durable state.
        let sent = partial.map_or(usize::MAX, |p| p.sent);
        for msg in ready.persisted_messages.iter().take(sent) {
            self.check_promise(id, msg)?;
            if let MessageKind::AppendResp(AppendResult::Accepted { match_index }) = msg.kind {
                self.watches.entry(id).or_default().acknowledged(msg.term, match_index);
            }
            self.send(msg.clone());
        }
        // Step 4: apply.
        let applied = partial.map_or(usize::MAX, |p| p.applied);
        for entry in ready.committed.iter().take(applied) {
            let node = self.nodes.get_mut(&id).ok_or("unknown node")?;
            self.checker.applied(id, &node.disk.machine, entry)?;
            node.disk.machine.apply(entry);
            self.say(format!("n{id} apply {}", fmt_entry(entry)));
        }
        if partial.is_some() {
            return Ok(());
        }
        // Step 5: answer clients.
        for outcome in &ready.proposals {
            match *outcome {
                ProposalOutcome::Committed { term, index } => {
                    if self.proposals.remove(&(id, term, index)) {
                        self.checker.acknowledged(id, term, index)?;
                        self.acked_writes += 1;
                    }
                    self.say(format!("n{id} proposal {index}@{term} committed"));
                }
                ProposalOutcome::Lost { term, index } => {
                    self.proposals.remove(&(id, term, index));
                    self.checker.lost(id, term, index)?;
                    self.say(format!("n{id} proposal {index}@{term} lost"));
                }
                ProposalOutcome::Unknown { term, index } => {
                    // The client is told its outcome is unknown: nothing to check.
                    self.proposals.remove(&(id, term, index));
                    self.say(format!("n{id} proposal {index}@{term} outcome unknown (inside a snapshot)"));
                }
            }
        }
        for read in &ready.reads {
            let must_see = self.reads.remove(&(id, read.id));
            let applied = self.nodes.get(&id).map_or(0, |n| n.disk.machine.index);
            match read.result {
                Ok(index) => {
                    if index > applied {
                        return Err(format!("read {} on n{id} ready at {index} but applied is {applied}", read.id));
                    }
                    if let Some(must_see) = must_see {
                        self.checker.read_served(id, read.id, must_see, applied)?;
                        self.served_reads += 1;
                    }
                    self.say(format!("n{id} read {} served at index {index} (applied {applied})", read.id));
                }
                Err(e) => self.say(format!("n{id} read {} failed: {e:?}", read.id)),
            }
        }
        // Step 6.
        if let Some(raft) = self.raft_mut(id) {
            raft.advance(&ready);
        }
        Ok(())
    }

    /// A vote or an acknowledgement promises something about durable state (Figure 2,
    /// "Persistent state"; §10.2.1): check the promise holds as it leaves.
    fn check_promise(&self, id: NodeId, msg: &Message) -> Result<(), Violation> {
        let disk = &self.nodes.get(&id).ok_or("unknown node")?.disk;
        match &msg.kind {
            // A later durable term keeps the promise too: this node never votes in
            // `msg.term` again (it may have moved on within the same ready).
            MessageKind::VoteResp { granted: true } if disk.hard_state.term <= msg.term => {
                let promised = HardState { term: msg.term, voted_for: Some(msg.to) };
                if disk.hard_state != promised {
                    return Err(format!(
                        "Durable vote (Figure 2): n{id} grants n{} its vote in term {}, but its durable state is term {} vote {}",
                        msg.to,
                        msg.term,
                        disk.hard_state.term,
                        fmt_vote(disk.hard_state.voted_for)
                    ));
                }
            }
            // If a later term's leader overwrote those entries within the same ready, the
            // acknowledgement speaks for a log that existed only in memory. That is
            // harmless: such a leader was elected without this node, so any majority for
            // those entries needs another node that holds them durably, and that node's
            // vote would have made the new leader hold them too.
            // Up to its durable snapshot point, the durable state machine holds it.
            MessageKind::AppendResp(AppendResult::Accepted { match_index })
                if *match_index > disk.snapshot.index && disk.hard_state.term <= msg.term =>
            {
                let Some(durable) = disk.log().entry(*match_index) else {
                    return Err(format!(
                        "Durable acknowledgement (§10.2.1): n{id} tells n{} it holds up to {match_index}, but its durable log ends at {}",
                        msg.to,
                        disk.last_index()
                    ));
                };
                // The acknowledged entry must be the leader's own, if that leader still leads.
                if let Some(leader) = self.raft(msg.to).filter(|r| {
                    r.role() == Role::Leader && r.status().term == msg.term && !r.log().is_compacted(*match_index)
                }) {
                    if leader.log().entry(*match_index) != Some(durable) {
                        return Err(format!(
                            "Acknowledgement: n{id} tells n{} it holds up to {match_index}, but its entry there is {}, the leader's {:?}",
                            msg.to,
                            fmt_entry(durable),
                            leader.log().entry(*match_index).map(fmt_entry)
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Step 1 for a snapshot request: leader `id`'s driver streams its durable state machine
    /// to `to`. The whole transfer is lost, delayed or duplicated like one message, and its
    /// end is reported to the leader later, possibly as failed even if it arrived.
    fn send_snapshot(&mut self, id: NodeId, to: NodeId, term: Term) -> Result<(), Violation> {
        let body = self.nodes.get(&id).ok_or("unknown node")?.disk.machine;
        let leader_snapshot = self.raft(id).map_or(0, |r| r.log().snapshot().index);
        if body.index < leader_snapshot {
            return Err(format!(
                "Compaction (§7): n{id} must send a snapshot, but its state machine ({}) is behind its log's start ({leader_snapshot})",
                body.index
            ));
        }
        // The configuration at the snapshot's point comes from the Raft log, which holds
        // it: the state machine is at or past the log's start, and never past its end.
        let mut snapshot = body.meta();
        snapshot.membership = self.raft(id).map(|r| r.log().membership_at(body.index).clone()).unwrap_or_default();
        let msg = Message { from: id, to, term, kind: MessageKind::InstallSnapshot { snapshot } };
        self.snapshots_sent += 1;
        let lost = self.put_on_wire(msg, Some(body));
        let delivered = !lost && !self.rng.chance(self.faults.transfer_fails);
        let due = self.now + self.rng.range(0, self.faults.max_transfer + 1);
        self.transfers.retain(|t| !(t.from == id && t.to == to));
        self.transfers.push(TransferEnd { due, from: id, to, index: body.index, delivered });
        Ok(())
    }

    /// Puts a message on the wire, subject to partitions and faults.
    fn send(&mut self, msg: Message) {
        self.put_on_wire(msg, None);
    }

    /// Puts a message (and a snapshot's body) on the wire. Returns whether it was lost.
    fn put_on_wire(&mut self, msg: Message, body: Option<Machine>) -> bool {
        if self.counting {
            self.traffic.messages += 1;
            self.traffic.bytes += serde_json::to_vec(&msg).map_or(0, |v| v.len() as u64);
            if let MessageKind::Append { entries, .. } = &msg.kind {
                if !entries.is_empty() {
                    self.traffic.appends += 1;
                    self.traffic.entries += entries.len() as u64;
                }
            }
        }
        if self.narrate_sends {
            self.say(format!("send {msg}"));
        }
        if self.blocked.contains(&(msg.from, msg.to)) {
            self.say(format!("drop {msg} (partitioned)"));
            return true;
        }
        if self.rng.chance(self.faults.drop) {
            self.say(format!("drop {msg} (lost)"));
            return true;
        }
        let copies = if self.rng.chance(self.faults.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let mut due = self.now + self.rng.range(0, self.faults.max_delay + 1);
            if self.faults.in_order {
                let last = self.link_due.entry((msg.from, msg.to)).or_insert(0);
                due = due.max(*last);
                *last = due;
            }
            self.network.push(InFlight { due, msg: msg.clone(), body });
        }
        false
    }

    /// Checks one node's state after it acted.
    fn check_node(&mut self, id: NodeId) -> Result<(), Violation> {
        // Borrow the nodes and the checker separately.
        let Cluster { nodes, checker, .. } = self;
        let Some(raft) = nodes.get(&id).and_then(|n| n.raft.as_ref()) else { return Ok(()) };
        raft.check_invariants().map_err(|e| format!("n{id}: {e}"))?;
        let status = raft.status();
        let leaders: Vec<(NodeId, Term, &raft_core::Log)> = nodes
            .iter()
            .filter_map(|(&n, node)| node.raft.as_ref().map(|r| (n, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .map(|(n, r)| (n, r.status().term, r.log()))
            .collect();
        let disks: Vec<(NodeId, DurableLog)> = nodes.iter().map(|(&n, node)| (n, node.disk.log())).collect();
        checker.node_state(id, status.term, status.commit_index, raft.log(), &leaders, &disks)
    }

    /// Log Matching over all running nodes' whole logs.
    pub fn check_logs(&self) -> Result<(), Violation> {
        let logs: Vec<(NodeId, &raft_core::Log)> =
            self.nodes.iter().filter_map(|(&id, n)| n.raft.as_ref().map(|r| (id, r.log()))).collect();
        self.checker.logs_match(&logs)
    }
}

fn fmt_vote(vote: Option<NodeId>) -> String {
    vote.map_or("none".to_string(), |v| format!("n{v}"))
}

/// `3@2` for a no-op, `3@2 "cmd"` for a command.
pub fn fmt_entry(entry: &Entry) -> String {
    match &entry.payload {
        Payload::Noop => format!("{}@{} noop", entry.index, entry.term),
        Payload::Command(data) => format!("{}@{} {:?}", entry.index, entry.term, String::from_utf8_lossy(data)),
        Payload::Membership(m) => format!("{}@{} config {m}", entry.index, entry.term),
    }
}

fn fmt_entries(entries: &[Entry]) -> String {
    entries.iter().map(fmt_entry).collect::<Vec<_>>().join(", ")
}
