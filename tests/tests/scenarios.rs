//! Golden scenario tests: each file in `tests/scenarios/` is a script of cluster actions
//! followed by the transcript they produced (messages, persistence, applies, role
//! changes). A learner reads them as annotated protocol traces. Every step also runs the
//! simulator's safety checker, so a script fails if any Raft property breaks.
//!
//! Regenerate after an intended change with `UPDATE_GOLDENFILES=1 cargo test -p
//! lightraft-tests --test scenarios`, then read the diff.
//!
//! Commands (nodes are numbered from 1):
//! - `cluster nodes=N [prevote=bool] [checkquorum=bool] [maxappend=BYTES] [promotelag=K]`:
//!   a new cluster
//! - `campaign N`: node N starts an election now
//! - `tick [N...] [count=K]`: tick the nodes (all if none named) K times
//! - `deliver [N...]`: deliver the messages in flight (to the named nodes), in send order
//! - `stabilize`: deliver until no message is in flight
//! - `propose N COMMAND`, `read N`, `transfer N to=M`
//! - `add N id=M`: leader N adds node M as a learner (starting M, with an empty disk, if
//!   it does not exist yet); `remove N id=M`: leader N removes M (§4); `retire M`: the
//!   operator shuts M down for good
//! - `partition N...`: cut the named nodes off from the others; `heal` removes all cuts
//! - `drop [from=N] [to=M]`: the messages now in flight from N to M (any node where not
//!   given) are lost; `hold [from=N] [to=M]` keeps them back until `release`, which puts
//!   them in flight behind everything sent meanwhile (a delayed, reordered message)
//! - `wait [units=U]`: simulated time moves on U units (the simulator ticks every 10; see `faults
//!   slowdisk`), and every disk write due by then completes
//! - `crash N [persisted=bool sent=K applied=K]`, `restart N`: with the keys, node N
//!   crashes part-way through its oldest ready whose disk write is still in progress
//!   (see `faults slowdisk`)
//! - `compact N [keep=K]`: node N's driver compacts its log up to K entries before its
//!   durable state machine's index (§7)
//! - `faults [drop=P] [duplicate=P] [transferfails=P] [slowdisk=P diskdelay=U]
//!   [answeratonce=P]`: make the network (and snapshot transfers, and disks) unreliable
//!   from now on, or let followers answer heartbeats at once from their hints
//!   (`raft_core::wake_hint`); `faults` alone makes them reliable again. Deterministic: the cluster's random source has seed 0.
//! - `status`, `log [N...]`: show node state and logs
//! - `check N [role=R] [term=T] [leader=L] [vote=V] [commit=C] [applied=A] [last=I]
//!   [log=1@1,2@1,...] [snapshot=I@T] [disk=I@T..L] [voters=1,2,3] [learners=4,5|none]`: fail
//!   unless node N is in exactly
//!   that state (`leader` and `vote` take a node or `none`; `role=down` for a crashed
//!   node; `snapshot` is where its log begins, `disk` the durable snapshot point and last
//!   durable index, readable while it is down). Without a node, it checks the clients'
//!   side: `acked=W` writes acknowledged, `served=R` linearizable reads served,
//!   `pending=P` reads still waiting, `installed=S` snapshots installed. Every script ends with checks of what it
//!   shows, so regenerating a transcript cannot hide a broken rule.

use std::error::Error;
use std::fmt::Write as _;

use goldenscript::{Argument, Command, Context};
use lightraft_tests::cluster::{fmt_entry, Cluster, Faults, InFlight, Partial};
use raft_core::{MembershipChange, NodeId};

struct Runner {
    cluster: Option<Cluster>,
    /// Messages taken off the network by `hold`, until `release`.
    held: Vec<InFlight>,
}

/// Takes the messages in flight from `from` to `to` (0: any node) off the network.
fn take_in_flight(cluster: &mut Cluster, command: &Command) -> Result<Vec<InFlight>, Box<dyn Error>> {
    let (from, to) = (key(command, "from", 0u64)?, key(command, "to", 0u64)?);
    let (taken, kept) =
        cluster.network.drain(..).partition(|m| (from == 0 || m.msg.from == from) && (to == 0 || m.msg.to == to));
    cluster.network = kept;
    Ok(taken)
}

fn nodes(command: &Command) -> Result<Vec<NodeId>, Box<dyn Error>> {
    let mut ids = Vec::new();
    for arg in &command.args {
        if let Argument::Positional(value) = arg {
            ids.push(value.parse()?);
        }
    }
    Ok(ids)
}

fn key<T: std::str::FromStr>(command: &Command, name: &str, default: T) -> Result<T, Box<dyn Error>>
where
    T::Err: Error + 'static,
{
    for arg in &command.args {
        if let Argument::KeyValue(k, v) = arg {
            if k == name {
                return Ok(v.parse()?);
            }
        }
    }
    Ok(default)
}

fn one_node(command: &Command) -> Result<NodeId, Box<dyn Error>> {
    match nodes(command)?.as_slice() {
        [id] => Ok(*id),
        _ => Err(format!("{} takes exactly one node", command.name).into()),
    }
}

impl goldenscript::Runner for Runner {
    type Command = Command;

    fn run(&mut self, command: &Command, _context: &Context) -> Result<String, Box<dyn Error>> {
        if command.name == "cluster" {
            let size = key(command, "nodes", 3u64)?;
            let pre_vote = key(command, "prevote", true)?;
            let check_quorum = key(command, "checkquorum", true)?;
            let max_append = key(command, "maxappend", 1usize << 20)?;
            let promote_lag = key(command, "promotelag", 16u64)?;
            let mut cluster = Cluster::new(size, 0, |c| {
                c.pre_vote = pre_vote;
                c.check_quorum = check_quorum;
                c.max_append_bytes = max_append;
                c.promote_lag = promote_lag;
            });
            cluster.narrate_sends = true;
            self.cluster = Some(cluster);
            return Ok(String::new());
        }
        let cluster = self.cluster.as_mut().ok_or("no cluster: start with `cluster`")?;
        let mut out = String::new();
        match command.name.as_str() {
            "campaign" => cluster.campaign(one_node(command)?)?,
            "tick" => {
                let mut ids = nodes(command)?;
                if ids.is_empty() {
                    ids = cluster.ids();
                }
                for _ in 0..key(command, "count", 1u64)? {
                    for &id in &ids {
                        cluster.tick(id)?;
                    }
                }
            }
            "deliver" => {
                cluster.deliver_in_order(&nodes(command)?)?;
            }
            "stabilize" => {
                let mut rounds = 0;
                while cluster.deliver_in_order(&[])? > 0 {
                    rounds += 1;
                    if rounds > 100 {
                        return Err("stabilize: still messages after 100 rounds".into());
                    }
                }
            }
            "propose" => {
                let [Argument::Positional(id), Argument::Positional(cmd)] = command.args.as_slice() else {
                    return Err("propose N COMMAND".into());
                };
                cluster.propose(id.parse()?, cmd)?;
            }
            "read" => {
                cluster.read(one_node(command)?)?;
            }
            "transfer" => {
                let target = key(command, "to", 0u64)?;
                cluster.transfer(one_node(command)?, target)?;
            }
            "add" => {
                let id = key(command, "id", 0u64)?;
                if !cluster.nodes.contains_key(&id) {
                    cluster.add_node(id);
                }
                let change = MembershipChange::AddLearner { id, address: format!("host{id}") };
                cluster.change_membership(one_node(command)?, change)?;
            }
            "remove" => {
                let id = key(command, "id", 0u64)?;
                cluster.change_membership(one_node(command)?, MembershipChange::Remove { id })?;
            }
            "retire" => cluster.retire(one_node(command)?),
            "partition" => {
                let group = nodes(command)?;
                cluster.blocked.clear();
                for a in cluster.ids() {
                    for b in cluster.ids() {
                        if group.contains(&a) != group.contains(&b) {
                            cluster.blocked.insert((a, b));
                        }
                    }
                }
                let rest: Vec<NodeId> = cluster.ids().into_iter().filter(|id| !group.contains(id)).collect();
                cluster.say(format!("partition {group:?} | {rest:?}"));
            }
            "drop" => {
                for m in take_in_flight(cluster, command)? {
                    cluster.say(format!("lost {}", m.msg));
                }
            }
            "hold" => {
                for m in take_in_flight(cluster, command)? {
                    cluster.say(format!("held {}", m.msg));
                    self.held.push(m);
                }
            }
            "release" => {
                // Behind whatever is in flight now: a held message arrives late.
                for m in self.held.drain(..) {
                    cluster.say(format!("released {}", m.msg));
                    cluster.network.push(m);
                }
            }
            "wait" => {
                cluster.now += key(command, "units", 1u64)?;
                cluster.say(format!("time is now {}", cluster.now));
                cluster.process_all()?;
            }
            "heal" => {
                cluster.blocked.clear();
                cluster.say("healed".into());
            }
            "crash" if command.args.len() > 1 => {
                let partial = Partial {
                    persisted: key(command, "persisted", false)?,
                    sent: key(command, "sent", 0usize)?,
                    applied: key(command, "applied", 0usize)?,
                };
                cluster.crash_during_ready(one_node(command)?, partial)?;
            }
            "crash" => cluster.crash(one_node(command)?),
            "compact" => cluster.compact(one_node(command)?, key(command, "keep", 0u64)?)?,
            "faults" => {
                cluster.faults = Faults {
                    drop: key(command, "drop", 0.0)?,
                    duplicate: key(command, "duplicate", 0.0)?,
                    transfer_fails: key(command, "transferfails", 0.0)?,
                    slow_disk: key(command, "slowdisk", 0.0)?,
                    max_disk_delay: key(command, "diskdelay", 0u64)?,
                    answer_at_once: key(command, "answeratonce", 0.0)?,
                    ..Faults::default()
                };
                cluster.say(format!("faults now {:?}", cluster.faults));
            }
            "restart" => cluster.restart(one_node(command)?)?,
            "status" => {
                for id in cluster.ids() {
                    match cluster.raft(id) {
                        None => writeln!(out, "n{id}: down")?,
                        Some(raft) => {
                            let s = raft.status();
                            let leader = s.leader.map_or("none".into(), |l| format!("n{l}"));
                            let vote = s.voted_for.map_or("none".into(), |v| format!("n{v}"));
                            let snapshot = match raft.log().snapshot() {
                                m if m.index == 0 => String::new(),
                                m => format!(" snapshot={}@{}", m.index, m.term),
                            };
                            writeln!(
                                out,
                                "n{id}: {} term={} leader={leader} vote={vote} last={} commit={} applied={}{snapshot} ({})",
                                s.role,
                                s.term,
                                s.last_index,
                                s.commit_index,
                                s.applied_index,
                                raft.membership()
                            )?;
                        }
                    }
                }
            }
            "log" => {
                let mut ids = nodes(command)?;
                if ids.is_empty() {
                    ids = cluster.ids();
                }
                for id in ids {
                    let Some(raft) = cluster.raft(id) else {
                        writeln!(out, "n{id}: down")?;
                        continue;
                    };
                    let log = raft.log();
                    let entries: Vec<String> =
                        (log.first_index()..=log.last_index()).filter_map(|i| log.entry(i)).map(fmt_entry).collect();
                    let snapshot = log.snapshot();
                    let start = match snapshot.index {
                        0 => String::new(),
                        _ => format!("snapshot {}@{} + ", snapshot.index, snapshot.term),
                    };
                    writeln!(out, "n{id}: {start}[{}]", entries.join(", "))?;
                }
            }
            "check" => check(cluster, command)?,
            other => return Err(format!("unknown command {other}").into()),
        }
        cluster.check_logs()?;
        Ok(cluster.take_events() + &out)
    }
}

/// `1,2,3`, or `none`.
fn ids(set: &std::collections::BTreeSet<NodeId>) -> String {
    if set.is_empty() {
        return "none".into();
    }
    set.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")
}

/// The `check` command: compares a node's state with what the script says it must be.
fn check(cluster: &Cluster, command: &Command) -> Result<(), Box<dyn Error>> {
    if nodes(command)?.is_empty() {
        return check_clients(cluster, command);
    }
    let id = one_node(command)?;
    let show = |node: Option<NodeId>| node.map_or("none".to_string(), |n| n.to_string());
    let actual = |name: &str| -> Result<String, Box<dyn Error>> {
        if name == "disk" {
            let disk = &cluster.nodes.get(&id).ok_or_else(|| format!("no node {id}"))?.disk;
            return Ok(format!("{}@{}..{}", disk.snapshot.index, disk.snapshot.term, disk.last_index()));
        }
        let Some(raft) = cluster.raft(id) else {
            return if name == "role" { Ok("down".into()) } else { Err(format!("n{id} is down").into()) };
        };
        let s = raft.status();
        Ok(match name {
            "role" => s.role.to_string(),
            "term" => s.term.to_string(),
            "leader" => show(s.leader),
            "vote" => show(s.voted_for),
            "commit" => s.commit_index.to_string(),
            "applied" => s.applied_index.to_string(),
            "last" => s.last_index.to_string(),
            "snapshot" => format!("{}@{}", raft.log().snapshot().index, raft.log().snapshot().term),
            "voters" => ids(&raft.membership().voters),
            "learners" => ids(&raft.membership().learners),
            "log" => {
                let log = raft.log();
                let entries: Vec<String> = (log.first_index()..=log.last_index())
                    .filter_map(|i| log.entry(i))
                    .map(|e| format!("{}@{}", e.index, e.term))
                    .collect();
                entries.join(",")
            }
            other => return Err(format!("check: unknown field {other}").into()),
        })
    };
    let mut wrong = Vec::new();
    for arg in &command.args {
        if let Argument::KeyValue(name, expected) = arg {
            let actual = actual(name)?;
            if actual != *expected {
                wrong.push(format!("{name} is {actual}, expected {expected}"));
            }
        }
    }
    if !wrong.is_empty() {
        return Err(format!("check n{id}: {}", wrong.join("; ")).into());
    }
    Ok(())
}

/// The `check` command without a node: what clients were told.
fn check_clients(cluster: &Cluster, command: &Command) -> Result<(), Box<dyn Error>> {
    let mut wrong = Vec::new();
    for arg in &command.args {
        if let Argument::KeyValue(name, expected) = arg {
            let actual = match name.as_str() {
                "acked" => cluster.acked_writes,
                "served" => cluster.served_reads,
                "pending" => cluster.reads.len() as u64,
                "installed" => cluster.snapshots_installed,
                other => return Err(format!("check: unknown field {other}").into()),
            };
            if actual.to_string() != *expected {
                wrong.push(format!("{name} is {actual}, expected {expected}"));
            }
        }
    }
    if !wrong.is_empty() {
        return Err(format!("check: {}", wrong.join("; ")).into());
    }
    Ok(())
}

#[test]
fn scenarios() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no scenarios in {}", dir.display());
    // Run every script even if one fails, so one run reports every broken scenario.
    let mut failures = Vec::new();
    for path in &paths {
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            goldenscript::run(&mut Runner { cluster: None, held: Vec::new() }, path)
        }));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("scenario {name}: {e}")),
            Err(_) => failures.push(format!("scenario {name}: transcript differs (diff above)")),
        }
    }
    assert!(failures.is_empty(), "{} of {} scenarios failed:\n{}", failures.len(), paths.len(), failures.join("\n"));
}
