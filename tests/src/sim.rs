//! The randomized simulator: a cluster under a seeded storm of faults, checked after every
//! step, then healed and checked for liveness, then measured.
//!
//! One run has three phases:
//! 1. Chaos, for `chaos_ticks`: 1 to 7 nodes; messages are delayed, reordered, lost and
//!    duplicated; partitions (symmetric, one-way, isolating the leader) come and go, for
//!    hundreds of ticks in one seed in eight; any node crashes, also part-way through
//!    carrying out a ready, and restarts with only its durable state; disk writes are
//!    slow; clients propose writes, ask for linearizable reads and occasionally ask for a
//!    leadership transfer. Nodes compact their logs at random points (§7), so followers
//!    that fall behind catch up by snapshot; snapshot transfers are lost, duplicated,
//!    delayed and reported failed like everything else. In three seeds of five the
//!    leader also changes the configuration (§4): it adds fresh nodes as learners, which
//!    it promotes once caught up, and removes voters and learners, itself included, so
//!    clusters grow and shrink between 1 and 7 voters. Removed nodes keep running, and
//!    campaigning if they never learned of their removal, until the heal.
//! 2. Heal: every fault stops (messages are still delayed, but in order on each link) and
//!    every node runs; clients write now and then. Nodes outside the leader's committed
//!    configuration are shut down, as an operator would. Within [`ELECTION_BOUND_TICKS`] every
//!    node knows one leader, and within [`LIVENESS_TICKS`] every pending request is
//!    resolved.
//! 3. Measure, with delays under a tick and each link in order: an idle cluster keeps
//!    its leader and term for [`IDLE_TICKS`] and sends only heartbeats; one write reaches
//!    every follower once, within [`AGREEMENT_BOUND_TICKS`] and a bounded number of
//!    messages and bytes.
//!
//! The checker (safety) and the watch (timers, leases, what a node may claim) run after
//! every step of every phase. Everything derives from the seed, so
//! `LIGHTRAFT_SEED=<seed>` replays a run exactly.

use std::fmt;

use raft_core::{MembershipChange, NodeId, Role};

use crate::checker::Violation;
use crate::cluster::{Cluster, Faults, Partial, Traffic};
use crate::rng::SimRng;

/// Time units per node tick. Message delays are counted in units, so they can be
/// shorter than a tick.
pub const UNITS_PER_TICK: u64 = 10;

/// Once faults heal, a leader is known everywhere and every pending proposal and read is
/// resolved within this many ticks (20 minimum election timeouts).
pub const LIVENESS_TICKS: u64 = 200;

/// Once faults heal (and every node restarts), every node knows the same leader within
/// this many ticks, in every run. Split votes make the tail long (two nodes without
/// PreVote split about one election in three), so the typical time is bounded over many
/// runs instead: see `tests/simulation.rs`.
pub const ELECTION_BOUND_TICKS: u64 = 200;

/// ... having gone through at most this many new terms.
pub const ELECTION_BOUND_TERMS: u64 = 20;

/// Once caught up, a cluster runs this long before it is measured.
pub const SETTLE_TICKS: u64 = 20;

/// A healthy cluster stays idle this long, keeping its leader and term.
pub const IDLE_TICKS: u64 = 100;

/// In a healthy cluster one write is applied everywhere within this many ticks: an
/// append, its answer and a heartbeat, each delayed up to a tick.
pub const AGREEMENT_BOUND_TICKS: u64 = 5;

/// The largest message one small write's agreement needs, as JSON.
pub const AGREEMENT_BYTES_PER_MESSAGE: u64 = 200;

/// Everything a run depends on; all derived from the seed.
#[derive(Clone, Debug)]
pub struct Params {
    /// The seed.
    pub seed: u64,
    /// Cluster size: 1 to 7, even sizes included (a 2-2 split in 4 nodes has no majority).
    pub nodes: u64,
    /// PreVote on (§9.6).
    pub pre_vote: bool,
    /// CheckQuorum and leases on (§6.2).
    pub check_quorum: bool,
    /// Network and disk faults during chaos.
    pub faults: Faults,
    /// Length of the chaos phase, in ticks.
    pub chaos_ticks: u64,
    /// Per time unit: probability of a client write.
    pub propose_rate: f64,
    /// Per time unit: probability of a client linearizable read.
    pub read_rate: f64,
    /// Per time unit: probability that the partitions change.
    pub partition_rate: f64,
    /// Per time unit: probability that a node crashes.
    pub crash_rate: f64,
    /// Per time unit: probability that a node compacts its log (0 in one seed in five).
    pub compact_rate: f64,
    /// How many applied entries a compaction keeps, at most (a trailing window).
    pub compact_keep: u64,
    /// Per time unit: probability that the leader is asked to change the configuration.
    pub change_rate: f64,
}

impl Params {
    /// The parameters for `seed`: sizes, features and fault rates vary from seed to seed.
    pub fn from_seed(seed: u64) -> Params {
        let mut rng = SimRng::new(seed ^ 0x5EED);
        Params {
            seed,
            nodes: rng.range(1, 8),
            pre_vote: rng.chance(0.8),
            check_quorum: rng.chance(0.8),
            faults: Faults {
                drop: rng.range(0, 15) as f64 / 100.0,
                duplicate: rng.range(0, 5) as f64 / 100.0,
                max_delay: rng.range(1, 3 * UNITS_PER_TICK),
                slow_disk: rng.range(0, 30) as f64 / 100.0,
                max_disk_delay: rng.range(1, 2 * UNITS_PER_TICK),
                in_order: false,
                batch: if rng.chance(0.5) { rng.range(10, 60) as f64 / 100.0 } else { 0.0 },
                max_transfer: rng.range(0, 5 * UNITS_PER_TICK),
                transfer_fails: rng.range(0, 20) as f64 / 100.0,
                answer_at_once: 0.0,
            },
            chaos_ticks: rng.range(500, 1500),
            propose_rate: rng.range(2, 20) as f64 / 100.0,
            read_rate: rng.range(1, 10) as f64 / 100.0,
            partition_rate: rng.range(5, 30) as f64 / 10_000.0,
            crash_rate: rng.range(0, 10) as f64 / 10_000.0,
            compact_rate: if rng.chance(0.8) { rng.range(1, 50) as f64 / 1000.0 } else { 0.0 },
            compact_keep: rng.range(0, 10),
            change_rate: 0.0,
        }
        .long_partitions(&mut rng)
        .membership_changes(&mut rng)
        .answers_at_once(&mut rng)
    }

    /// Half the seeds answer heartbeats at once from the hint, as lightraft's followers do.
    fn answers_at_once(mut self, rng: &mut SimRng) -> Params {
        if rng.chance(0.5) {
            self.faults.answer_at_once = rng.range(30, 101) as f64 / 100.0;
        }
        self
    }

    /// Three seeds in five change the configuration now and then.
    fn membership_changes(mut self, rng: &mut SimRng) -> Params {
        if rng.chance(0.6) {
            self.change_rate = rng.range(2, 30) as f64 / 10_000.0;
        }
        self
    }

    /// One seed in eight keeps its partitions for hundreds of ticks: long enough for a
    /// cut-off minority, without PreVote, to run up many terms.
    fn long_partitions(mut self, rng: &mut SimRng) -> Params {
        if rng.chance(0.125) {
            self.partition_rate = rng.range(3, 10) as f64 / 100_000.0;
            self.chaos_ticks = rng.range(1500, 3000);
        }
        self
    }
}

/// What a successful run did, to show the simulation exercised something.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The run's parameters.
    pub params: Option<Params>,
    /// Entries committed.
    pub committed: usize,
    /// Writes acknowledged to clients.
    pub acked_writes: u64,
    /// Linearizable reads served.
    pub served_reads: u64,
    /// Snapshots sent by leaders' drivers, and installed by followers (§7).
    pub snapshots: (u64, u64),
    /// Configuration changes committed (§4).
    pub changes: usize,
    /// The voters at the end.
    pub voters: usize,
    /// Ticks the heal phase needed to become live.
    pub heal_ticks: u64,
    /// Ticks from healing until every node knew the same leader.
    pub election_ticks: u64,
    /// Terms the cluster went through from healing to that leader.
    pub election_terms: u64,
    /// The highest term any node reached.
    pub max_term: u64,
    /// What one write cost in a stable cluster without faults.
    pub agreement: Agreement,
}

/// One agreement in a healthy cluster, measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Agreement {
    /// Ticks from the proposal until every node applied it.
    pub ticks: u64,
    /// Messages sent meanwhile, heartbeats included.
    pub messages: u64,
    /// Their size as JSON.
    pub bytes: u64,
    /// Copies of the entry sent.
    pub entries: u64,
}

/// A failed run: the seed, what went wrong and the last events before it.
#[derive(Debug)]
pub struct Failure {
    /// The run's parameters.
    pub params: Params,
    /// The violated property.
    pub violation: Violation,
    /// The last events, oldest first.
    pub trace: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "simulation seed {} failed: {}", self.params.seed, self.violation)?;
        writeln!(f, "parameters: {:?}", self.params)?;
        writeln!(
            f,
            "replay: LIGHTRAFT_SEED={} cargo test --release -p lightraft-tests --test simulation",
            self.params.seed
        )?;
        writeln!(f, "last events before the failure:")?;
        f.write_str(&self.trace)
    }
}

/// Runs one simulation.
pub fn run(params: &Params) -> Result<Report, Box<Failure>> {
    let mut sim = Sim::new(params);
    match sim.run() {
        Ok(report) => Ok(report),
        Err(violation) => Err(Box::new(Failure { params: params.clone(), violation, trace: sim.cluster.trace() })),
    }
}

/// Runs one simulation keeping its whole narrated trace, passing or not: for a learner
/// who wants to watch a run from the first tick to the last.
pub fn run_traced(params: &Params) -> (Result<Report, Box<Failure>>, String) {
    let mut sim = Sim::new(params);
    sim.cluster.event_limit = usize::MAX;
    let result = match sim.run() {
        Ok(report) => Ok(report),
        Err(violation) => Err(Box::new(Failure { params: params.clone(), violation, trace: String::new() })),
    };
    (result, sim.cluster.trace())
}

struct Sim<'a> {
    params: &'a Params,
    cluster: Cluster,
    rng: SimRng,
    next_command: u64,
    /// The id the next added node gets: ids are never reused.
    next_id: NodeId,
}

impl<'a> Sim<'a> {
    fn new(params: &'a Params) -> Sim<'a> {
        let mut cluster = Cluster::new(params.nodes, params.seed, |c| {
            c.pre_vote = params.pre_vote;
            c.check_quorum = params.check_quorum;
            c.max_append_bytes = 1024; // about 8 small entries, so multi-message catch-up is exercised
        });
        cluster.event_limit = std::env::var("LIGHTRAFT_TRACE_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
        cluster.faults = params.faults;
        Sim { params, cluster, rng: SimRng::new(params.seed), next_command: 1, next_id: params.nodes + 1 }
    }

    fn run(&mut self) -> Result<Report, Violation> {
        let chaos_end = self.params.chaos_ticks * UNITS_PER_TICK;
        while self.cluster.now < chaos_end {
            self.chaos()?;
            self.step()?;
        }
        self.cluster.say("HEAL: faults stop, every crashed node restarts".into());
        // Messages keep their delays but no longer overtake each other on a link: reordering
        // is a fault too (TCP has none). With it, a leader catching a follower up over a
        // backlog of a thousand entries kept falling back to one append per round trip.
        self.cluster.faults = Faults { max_delay: self.params.faults.max_delay, in_order: true, ..Faults::default() };
        self.cluster.blocked.clear();
        for id in self.cluster.ids() {
            self.cluster.restart(id)?;
        }
        let heal_start = self.cluster.now;
        let heal_term = self.max_term();
        let mut elected: Option<(u64, u64)> = None;
        let mut heal_writes = 0;
        loop {
            self.step()?;
            self.retire_removed();
            let ticks = (self.cluster.now - heal_start) / UNITS_PER_TICK;
            if elected.is_none() && self.leaders_agree() {
                let terms = self.max_term().saturating_sub(heal_term); // a retired node may have held the highest
                if ticks > ELECTION_BOUND_TICKS || terms > ELECTION_BOUND_TERMS {
                    return Err(format!(
                        "Liveness: after healing, every node knew one leader only after {ticks} ticks and {terms} new terms (bounds: {ELECTION_BOUND_TICKS} ticks, {ELECTION_BOUND_TERMS} terms)"
                    ));
                }
                elected = Some((ticks, terms));
            }
            // A proposal's fate is known only once its index commits, so clients keep
            // writing a little: that carries the commit index past every pending proposal.
            if self.cluster.now % (20 * UNITS_PER_TICK) == 0 && !self.cluster.proposals.is_empty() {
                if let Some(leader) = self.current_leader() {
                    // Enough to reach the highest pending index (a deposed leader may have
                    // accepted many proposals beyond the current leader's log).
                    let highest = self.cluster.proposals.iter().map(|&(_, _, index)| index).max().unwrap_or(0);
                    let last = self.cluster.raft(leader).map_or(0, |r| r.status().last_index);
                    for _ in 0..highest.saturating_sub(last).max(1) {
                        heal_writes += 1;
                        self.cluster.propose(leader, &format!("heal{heal_writes}"))?;
                    }
                }
            }
            if self.is_live() {
                self.cluster.check_logs()?;
                let (election_ticks, election_terms) = elected.unwrap_or_default();
                self.settle()?;
                self.idle()?;
                let agreement = self.agree()?;
                self.cluster.check_logs()?;
                return Ok(Report {
                    params: Some(self.params.clone()),
                    committed: self.cluster.checker.committed_count(),
                    acked_writes: self.cluster.acked_writes,
                    served_reads: self.cluster.served_reads,
                    snapshots: (self.cluster.snapshots_sent, self.cluster.snapshots_installed),
                    changes: self.cluster.checker.committed_changes(),
                    voters: self
                        .current_leader()
                        .and_then(|l| self.cluster.raft(l))
                        .map_or(0, |r| r.membership().voters.len()),
                    heal_ticks: ticks,
                    election_ticks,
                    election_terms,
                    max_term: self.max_term(),
                    agreement,
                });
            }
            if ticks > LIVENESS_TICKS {
                return Err(format!(
                    "Liveness: {LIVENESS_TICKS} ticks after healing, leader agreement is {:?}, {} proposals and {} reads pending",
                    self.leaders(),
                    self.cluster.proposals.len(),
                    self.cluster.reads.len()
                ));
            }
        }
    }

    /// One time unit: deliver due messages, tick the nodes whose tick is due, finish disk
    /// writes; every few hundred units compare whole logs.
    fn step(&mut self) -> Result<(), Violation> {
        self.cluster.now += 1;
        let now = self.cluster.now;
        self.cluster.deliver_due()?;
        for id in self.cluster.ids() {
            // Nodes tick out of phase with each other, as real clocks would.
            if (now + id * 3) % UNITS_PER_TICK == 0 {
                self.cluster.tick(id)?;
            }
        }
        self.cluster.process_all()?;
        if now % 200 == 0 {
            self.cluster.check_logs()?;
        }
        Ok(())
    }

    /// Every node runs, agrees on one leader, and nothing is pending.
    fn is_live(&self) -> bool {
        self.leaders_agree() && self.cluster.proposals.is_empty() && self.cluster.reads.is_empty()
    }

    /// Every node runs and knows the same leader.
    fn leaders_agree(&self) -> bool {
        let leaders = self.leaders();
        !leaders.is_empty() && leaders.iter().all(|l| l.is_some() && *l == leaders[0])
    }

    /// Shuts down every node outside the leader's configuration once that configuration
    /// is committed, and so is an entry of the leader's term, which is the latest any node
    /// knows: then every later leader's log holds that configuration, and no configuration
    /// with those nodes can come back (ids are never reused). They are removed nodes, and
    /// added ones whose addition was lost.
    fn retire_removed(&mut self) {
        let Some(leader) = self.current_leader().and_then(|l| self.cluster.raft(l)) else { return };
        let status = leader.status();
        // The latest term among the members: a removed node may have run up its own.
        let members = leader.membership();
        let max_term = self
            .cluster
            .live()
            .into_iter()
            .filter(|&id| members.is_member(id))
            .filter_map(|id| self.cluster.raft(id).map(|r| r.status().term))
            .max()
            .unwrap_or(0);
        let own_term_committed = leader.log().term_at(status.commit_index) == Some(status.term);
        if status.term < max_term || status.membership_index > status.commit_index || !own_term_committed {
            return;
        }
        let outside: Vec<NodeId> =
            self.cluster.ids().into_iter().filter(|&id| !leader.membership().is_member(id)).collect();
        for id in outside {
            self.cluster.retire(id);
        }
    }

    /// The leader is asked to add a fresh node or remove a member, itself included.
    fn change_membership(&mut self) -> Result<(), Violation> {
        let Some(leader) = self.current_leader() else { return Ok(()) };
        let Some(raft) = self.cluster.raft(leader) else { return Ok(()) };
        let members: Vec<NodeId> = raft.membership().members().collect();
        let change = if members.len() < 7 && (members.len() <= 2 || self.rng.chance(0.5)) {
            let id = self.next_id;
            self.next_id += 1;
            self.cluster.add_node(id);
            MembershipChange::AddLearner { id, address: format!("n{id}") }
        } else {
            MembershipChange::Remove { id: self.rng.pick(&members) }
        };
        self.cluster.change_membership(leader, change)?;
        Ok(())
    }

    /// The highest term of any running node.
    fn max_term(&self) -> u64 {
        self.cluster
            .live()
            .into_iter()
            .filter_map(|id| self.cluster.raft(id))
            .map(|r| r.status().term)
            .max()
            .unwrap_or(0)
    }

    /// Role, term and leader of every node.
    fn roles(&self) -> Vec<Option<(Role, u64, Option<NodeId>)>> {
        self.cluster
            .ids()
            .into_iter()
            .map(|id| self.cluster.raft(id).map(|r| r.status()))
            .map(|s| s.map(|s| (s.role, s.term, s.leader)))
            .collect()
    }

    /// Waits until every follower holds and has applied the leader's whole log, so that
    /// what follows measures a cluster with nothing left to catch up.
    fn settle(&mut self) -> Result<(), Violation> {
        // Healthy from here on: delays under one tick, and each link in order, as over
        // the transport's TCP connections. (Reordered, a leader's empty probe can overtake
        // the append before it, and the entry is sent again: recovery working as meant,
        // but not the cost of an agreement.)
        self.cluster.faults.max_delay = self.params.faults.max_delay.min(UNITS_PER_TICK);
        self.cluster.faults.in_order = true;
        for _ in 0..LIVENESS_TICKS * UNITS_PER_TICK {
            // A removal may have committed only now: its node has nothing to catch up on.
            self.retire_removed();
            let statuses: Vec<_> =
                self.cluster.live().into_iter().filter_map(|id| self.cluster.raft(id)).map(|r| r.status()).collect();
            let leader = statuses.iter().find(|s| s.role == Role::Leader);
            if let Some(leader) = leader {
                if statuses.iter().all(|s| s.last_index == leader.last_index && s.applied_index == leader.last_index) {
                    // Let acknowledgements still in flight land, and the leader learn
                    // every follower is caught up.
                    for _ in 0..SETTLE_TICKS * UNITS_PER_TICK {
                        self.step()?;
                    }
                    return Ok(());
                }
            }
            self.step()?;
        }
        Err(format!("Liveness: {LIVENESS_TICKS} ticks after the cluster became live, the followers have not caught up"))
    }

    /// Liveness with numbers, part 1: a healthy idle cluster keeps its leader and term
    /// (no election without a fault, §5.2) and sends only heartbeats and their answers.
    fn idle(&mut self) -> Result<(), Violation> {
        let roles = self.roles();
        let n = self.cluster.ids().len() as u64;
        self.cluster.say(format!("IDLE for {IDLE_TICKS} ticks"));
        self.cluster.counting = true;
        self.cluster.traffic = Traffic::default();
        for _ in 0..IDLE_TICKS * UNITS_PER_TICK {
            self.step()?;
            if self.roles() != roles {
                return Err(format!(
                    "Stable cluster: with no fault and no client, roles went from {roles:?} to {:?}",
                    self.roles()
                ));
            }
        }
        self.cluster.counting = false;
        let traffic = self.cluster.traffic;
        // One heartbeat and one answer per follower per heartbeat interval.
        let heartbeat = raft_core::Config::new(1, vec![1]).heartbeat_ticks;
        let most = 2 * (n - 1) * (IDLE_TICKS / heartbeat + 1);
        if traffic.messages > most || traffic.entries > 0 {
            return Err(format!(
                "Idle cost: an idle {n}-node cluster sent {} messages and {} entries in {IDLE_TICKS} ticks; at most {most} heartbeats and answers, and no entries, are needed",
                traffic.messages, traffic.entries
            ));
        }
        Ok(())
    }

    /// Liveness with numbers, part 2: one write in a healthy cluster reaches every node
    /// once, in a bounded number of ticks, messages and bytes.
    fn agree(&mut self) -> Result<Agreement, Violation> {
        let leader = self.current_leader().ok_or("Liveness: no leader after the idle period")?;
        let n = self.cluster.ids().len() as u64;
        let command = "agreement";
        self.cluster.counting = true;
        self.cluster.traffic = Traffic::default();
        let start = self.cluster.now;
        let (_, index) = self.cluster.propose(leader, command)?.ok_or("Liveness: the leader refused a write")?;
        loop {
            self.step()?;
            let done = self
                .cluster
                .ids()
                .into_iter()
                .all(|id| self.cluster.raft(id).is_some_and(|r| r.status().applied_index >= index));
            let ticks = (self.cluster.now - start).div_ceil(UNITS_PER_TICK);
            if done {
                self.cluster.counting = false;
                let t = self.cluster.traffic;
                let agreement = Agreement { ticks, messages: t.messages, bytes: t.bytes, entries: t.entries };
                // Append, answer, and a heartbeat with its answer carrying the commit
                // index, per follower; plus the periodic heartbeats and answers meanwhile
                // (one more round: answers to heartbeats sent just before).
                let heartbeat = raft_core::Config::new(1, vec![1]).heartbeat_ticks;
                let most_messages = 4 * (n - 1) + 2 * (n - 1) * (ticks / heartbeat + 2);
                let most_bytes = most_messages * AGREEMENT_BYTES_PER_MESSAGE;
                if t.entries != n - 1 || t.messages > most_messages || t.bytes > most_bytes {
                    return Err(format!(
                        "Agreement cost: one write in a healthy {n}-node cluster took {agreement:?}; expected each of the {} followers to get the entry once, at most {most_messages} messages and {most_bytes} bytes",
                        n - 1
                    ));
                }
                return Ok(agreement);
            }
            if ticks > AGREEMENT_BOUND_TICKS {
                return Err(format!("Liveness: one write in a healthy {n}-node cluster was not applied everywhere within {AGREEMENT_BOUND_TICKS} ticks"));
            }
        }
    }

    /// The leader each node believes in, if it is the real leader of that term.
    fn leaders(&self) -> Vec<Option<NodeId>> {
        self.cluster
            .ids()
            .into_iter()
            .map(|id| {
                let status = self.cluster.raft(id)?.status();
                let leader = status.leader?;
                let leader_status = self.cluster.raft(leader)?.status();
                (leader_status.role == Role::Leader && leader_status.term == status.term).then_some(leader)
            })
            .collect()
    }

    /// Random faults and client requests for one time unit.
    fn chaos(&mut self) -> Result<(), Violation> {
        let p = self.params;
        if self.rng.chance(p.partition_rate) {
            self.repartition();
        }
        let live = self.cluster.live();
        if !live.is_empty() && self.rng.chance(p.crash_rate) {
            let id = self.rng.pick(&live);
            self.cluster.crash(id);
        }
        // A node crashing while it carries out a ready, at any point: before its write is
        // durable, after it, after some of its votes and acknowledgements left, after
        // applying some entries. A leader's appends have left by then, which is the
        // moment §10.2.1 is about. Made more likely than chance alone would.
        let writing: Vec<NodeId> = live.iter().copied().filter(|&id| self.cluster.is_writing(id)).collect();
        if !writing.is_empty() && self.rng.chance(p.crash_rate * 10.0) {
            let id = self.rng.pick(&writing);
            let partial = Partial {
                persisted: self.rng.chance(0.5),
                sent: self.rng.range(0, 4) as usize,
                applied: self.rng.range(0, 4) as usize,
            };
            self.cluster.crash_during_ready(id, partial)?;
        }
        let down: Vec<NodeId> = self.cluster.ids().into_iter().filter(|id| !live.contains(id)).collect();
        if !down.is_empty() && self.rng.chance(0.003) {
            let id = self.rng.pick(&down);
            self.cluster.restart(id)?;
        }
        let live = self.cluster.live();
        if live.is_empty() {
            return Ok(());
        }
        if self.rng.chance(p.propose_rate) {
            let id = self.rng.pick(&live);
            let command = format!("c{}", self.next_command);
            self.next_command += 1;
            if self.cluster.propose(id, &command)?.is_none() {
                // A real driver forwards to the leader it knows of.
                if let Some(leader) = self.cluster.raft(id).and_then(|r| r.status().leader) {
                    self.cluster.propose(leader, &command)?;
                }
            }
        }
        if self.rng.chance(p.read_rate) {
            let id = self.rng.pick(&live);
            self.cluster.read(id)?;
        }
        if self.rng.chance(p.compact_rate) {
            let id = self.rng.pick(&live);
            let keep = self.rng.range(0, p.compact_keep + 1);
            self.cluster.compact(id, keep)?;
        }
        if p.change_rate > 0.0 && self.rng.chance(p.change_rate) {
            self.change_membership()?;
        }
        if self.rng.chance(0.0005) {
            if let Some(leader) = self.current_leader() {
                let target = self.rng.pick(&self.cluster.ids());
                if target != leader {
                    self.cluster.transfer(leader, target)?;
                }
            }
        }
        Ok(())
    }

    /// A running node that believes it is leader (the newest, if several).
    fn current_leader(&self) -> Option<NodeId> {
        self.cluster
            .live()
            .into_iter()
            .filter_map(|id| self.cluster.raft(id).map(|r| (r.status(), id)))
            .filter(|(s, _)| s.role == Role::Leader)
            .max_by_key(|(s, _)| s.term)
            .map(|(_, id)| id)
    }

    /// Replaces the current partitions with a random new arrangement.
    fn repartition(&mut self) {
        let ids = self.cluster.ids();
        let leader = self.current_leader().unwrap_or(ids[0]);
        let blocked = &mut self.cluster.blocked;
        blocked.clear();
        let description = match self.rng.range(0, 5) {
            0 => "healed".to_string(),
            1 => {
                // Isolate the leader, if there is one: the classic stale-leader setup.
                isolate(blocked, &ids, &[leader]);
                format!("n{leader} isolated")
            }
            2 => {
                let id = self.rng.pick(&ids);
                isolate(blocked, &ids, &[id]);
                format!("n{id} isolated")
            }
            3 => {
                let group: Vec<NodeId> = ids.iter().copied().filter(|_| self.rng.chance(0.5)).collect();
                isolate(blocked, &ids, &group);
                format!("split {group:?} from the rest")
            }
            _ => {
                let from = self.rng.pick(&ids);
                let to = ids[((from + self.rng.range(0, ids.len() as u64 - 1)) % ids.len() as u64) as usize];
                blocked.insert((from, to));
                format!("one-way cut n{from} -> n{to}")
            }
        };
        self.cluster.say(format!("PARTITION {description}"));
    }
}

/// Cuts every link between `group` and the other nodes, both ways.
fn isolate(blocked: &mut std::collections::BTreeSet<(NodeId, NodeId)>, ids: &[NodeId], group: &[NodeId]) {
    for &a in group {
        for &b in ids.iter().filter(|b| !group.contains(b)) {
            blocked.insert((a, b));
            blocked.insert((b, a));
        }
    }
}
