//! Who is online, and where: two key-value buckets that expire what their nodes stop
//! refreshing.
//!
//! - `chat_presence`: a key per user name (in lower case), holding the owning node and the
//!   session token. A name is claimed with an atomic create, so exactly one connection in
//!   the whole cluster holds it. A reconnecting client that offers the token takes the name
//!   over with a compare-and-set on the entry's revision; the node that held it notices when
//!   its next refresh fails, and closes its stale connection.
//! - `chat_members`: a key per room and user, for who-is-online, naming the member's node.
//!   Written on join and deleted on leave, never refreshed: an idle room costs NATS nothing.
//! - `chat_nodes`: a key per running node, refreshed every third of the TTL. A membership
//!   counts only while its node's key lives; whoever reads a dead node's memberships deletes
//!   them.
//!
//! `chat_presence` and `chat_nodes` keep entries for the presence TTL after their last
//! write: a dead node's names and memberships disappear then, with nobody cleaning up after
//! it (an expired node leaves a marker, so that watches see it go). (Refreshing every
//! membership instead cost three NATS servers 29% of a core for 2,000 idle rooms with a
//! member on each of two nodes.) Each node keeps `chat_members` and `chat_nodes` in memory
//! by a watch of each ([`Mirror`]), and answers who is where from there: a request costs
//! NATS nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::mirror::Mirror;
use crate::subjects::{self, token};
use crate::{ClusterConfig, ClusterError};

pub const PRESENCE_BUCKET: &str = "chat_presence";
pub const MEMBERS_BUCKET: &str = "chat_members";
pub const NODES_BUCKET: &str = "chat_nodes";

/// A name this node holds: refresh it before the TTL runs out.
#[derive(Debug, Clone)]
pub struct Claim {
    key: String,
    value: Bytes,
    token: [u8; 16],
    revision: u64,
}

/// Another connection holds the name now: the user resumed the session elsewhere, or the
/// claim expired (NATS away longer than the TTL) and someone else took the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost;

/// What the presence entry says of its holder.
#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    node: String,
    token: [u8; 16],
}

/// A membership: who, and on which node.
#[derive(Debug, Serialize, Deserialize)]
struct Member {
    node: String,
    name: String,
}

pub struct Directory {
    node: String,
    presence: kv::Store,
    members: kv::Store,
    /// `members` and `nodes` as one watch each keeps them: who is in a room, and how many
    /// are in each, are read from memory, at no cost to NATS.
    members_now: Mirror,
    nodes: kv::Store,
    nodes_now: Mirror,
}

impl Directory {
    pub(crate) async fn open(
        js: &jetstream::Context,
        config: &ClusterConfig,
    ) -> Result<Self, ClusterError> {
        let bucket = |bucket: &str, description: &str, max_age| kv::Config {
            bucket: bucket.into(),
            description: description.into(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        };
        let open = |config: kv::Config| async move {
            let name = config.bucket.clone();
            let store = js.create_or_update_key_value(config).await;
            store.map_err(|e| ClusterError::setup(&format!("the {name} bucket"), e.to_string()))
        };
        let ttl = config.presence_ttl;
        let presence = open(bucket(PRESENCE_BUCKET, "chat names online", ttl)).await?;
        let members = open(bucket(MEMBERS_BUCKET, "chat room members", Duration::ZERO)).await?;
        // A node's key that expires leaves a marker, so that the watches see it go.
        let nodes = bucket(NODES_BUCKET, "chat nodes running", ttl);
        let nodes = open(kv::Config { limit_markers: Some(ttl), ..nodes }).await?;
        let node = format!("{:016x}", crate::random_id());
        let (members_now, nodes_now) =
            (Mirror::start(members.clone()), Mirror::start(nodes.clone()));
        Ok(Self { node, presence, members, members_now, nodes, nodes_now })
    }

    /// Claims the user name `name_key` (its lower-case form) for a connection with session
    /// `token`. `resume` is the token of the user's earlier session, which takes the name
    /// over from it wherever it is; the name's `owner` (logged in to its account) takes it
    /// from anyone. `None` when someone else holds the name.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn claim(
        &self,
        name_key: &str,
        token: [u8; 16],
        resume: Option<[u8; 16]>,
        owner: bool,
    ) -> Result<Option<Claim>, ClusterError> {
        let key = subjects::token(name_key);
        let value = Bytes::from(postcard::to_stdvec(&Holder { node: self.node.clone(), token })?);
        let revision =
            crate::patiently(|| self.try_claim(&key, &value, token, resume, owner)).await?;
        Ok(revision.map(|revision| Claim { key, value, token, revision }))
    }

    /// One attempt at [`claim`](Self::claim), safe to repeat: a claim that an earlier attempt
    /// made (its answer lost) is recognised by its token.
    async fn try_claim(
        &self,
        key: &str,
        value: &Bytes,
        token: [u8; 16],
        resume: Option<[u8; 16]>,
        owner: bool,
    ) -> Result<Option<u64>, ClusterError> {
        // Twice: an entry that expires, or changes, between two steps is looked at again.
        for _ in 0..2 {
            match self.presence.create(key, value.clone()).await {
                Ok(revision) => return Ok(Some(revision)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(ClusterError::unavailable(e)),
            }
            let Some((holder, revision)) = self.holder(key).await? else { continue };
            if holder.token == token {
                return Ok(Some(revision));
            }
            if !owner && resume != Some(holder.token) {
                return Ok(None);
            }
            match self.presence.update(key, value.clone(), revision).await {
                Ok(revision) => return Ok(Some(revision)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(ClusterError::unavailable(e)),
            }
        }
        Ok(None)
    }

    /// Who holds the name under `key`, and the entry's revision; `None` when it is free.
    async fn holder(&self, key: &str) -> Result<Option<(Holder, u64)>, ClusterError> {
        let entry = self.presence.entry(key).await.map_err(ClusterError::unavailable)?;
        match entry.filter(|e| e.operation == kv::Operation::Put) {
            Some(entry) => Ok(Some((postcard::from_bytes(&entry.value)?, entry.revision))),
            None => Ok(None),
        }
    }

    /// Writes the claim again so that it does not expire. A claim that expired all the same
    /// (NATS, or this node, too slow) is taken again if the name is still free, rather than
    /// drop a user who did nothing wrong.
    ///
    /// # Errors
    /// `Ok(Err(Lost))` when the name is no longer this claim's; `Err` when NATS did not
    /// answer (try again later).
    pub async fn refresh(&self, claim: &mut Claim) -> Result<Result<(), Lost>, ClusterError> {
        let renewed = crate::patiently(|| async {
            let (key, value) = (&claim.key, &claim.value);
            match self.presence.update(key, value.clone(), claim.revision).await {
                Ok(revision) => return Ok(Ok(revision)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(ClusterError::unavailable(e)),
            }
            match self.holder(key).await? {
                // An earlier attempt's write, whose answer was lost.
                Some((holder, revision)) if holder.token == claim.token => Ok(Ok(revision)),
                Some(_) => Ok(Err(Lost)),
                None => match self.presence.create(key, value.clone()).await {
                    Ok(revision) => Ok(Ok(revision)),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Err(Lost)),
                    Err(e) => Err(ClusterError::unavailable(e)),
                },
            }
        })
        .await?;
        Ok(renewed.map(|revision| claim.revision = revision))
    }

    /// Frees the name, unless it was taken over meanwhile.
    ///
    /// # Errors
    /// NATS did not answer (the name then expires after the TTL).
    pub async fn release(&self, claim: &Claim) -> Result<(), ClusterError> {
        crate::patiently(|| async {
            match self.presence.delete_expect_revision(&claim.key, Some(claim.revision)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(()),
                Err(e) => Err(ClusterError::unavailable(e)),
            }
        })
        .await
    }

    /// Says that this node runs, for another presence TTL: its memberships count meanwhile.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn alive(&self) -> Result<(), ClusterError> {
        crate::patiently(|| async {
            self.nodes.put(&self.node, Bytes::new()).await.map_err(ClusterError::unavailable)
        })
        .await
        .map(drop)
    }

    /// Records that `name` is in `room`, on this node; returns the entry's revision.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn enter(&self, room: &str, name: &str) -> Result<u64, ClusterError> {
        let key = member_key(room, name);
        let member = Member { node: self.node.clone(), name: name.to_owned() };
        let value = Bytes::from(postcard::to_stdvec(&member)?);
        let revision = crate::patiently(|| async {
            self.members.put(&key, value.clone()).await.map_err(ClusterError::unavailable)
        })
        .await?;
        self.members_now.change(|members| drop(members.insert(key, value)));
        Ok(revision)
    }

    /// Records that `name` left `room`, unless the entry was written again since `revision`
    /// (the same user, back in the room through another connection).
    ///
    /// # Errors
    /// NATS did not answer (the membership then expires after the TTL).
    pub async fn leave(&self, room: &str, name: &str, revision: u64) -> Result<(), ClusterError> {
        let key = member_key(room, name);
        let deleted = crate::patiently(|| async {
            match self.members.delete_expect_revision(&key, Some(revision)).await {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(ClusterError::unavailable(e)),
            }
        })
        .await?;
        if deleted {
            self.members_now.change(|members| drop(members.remove(&key)));
        }
        Ok(())
    }

    /// The users in `room`, on every node, sorted.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn who(&self, room: &str) -> Result<Vec<String>, ClusterError> {
        let prefix = format!("{}.", token(room));
        let in_room = self
            .members_now
            .read(|members| {
                let from = members.range(prefix.clone()..);
                from.take_while(|(key, _)| key.starts_with(&prefix))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect()
            })
            .await?;
        let mut names: Vec<String> =
            self.live_members(in_room).await?.into_iter().map(|(_, m)| m.name).collect();
        names.sort_unstable_by_key(|n| n.to_ascii_lowercase());
        Ok(names)
    }

    /// How many users each room has, on every node.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn member_counts(&self) -> Result<BTreeMap<String, usize>, ClusterError> {
        let all = self
            .members_now
            .read(|members| members.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .await?;
        let mut counts = BTreeMap::new();
        for (key, _) in self.live_members(all).await? {
            if let Some((room, _)) = key.split_once('.') {
                *counts.entry(subjects::name(room)).or_default() += 1;
            }
        }
        Ok(counts)
    }

    /// The memberships among `members` (key and value) whose nodes run. Those of nodes that
    /// stopped are deleted on the way.
    async fn live_members(
        &self,
        members: Vec<(String, Bytes)>,
    ) -> Result<Vec<(String, Member)>, ClusterError> {
        let nodes: BTreeSet<String> =
            self.nodes_now.read(|nodes| nodes.keys().cloned().collect()).await?;
        // This node runs even before its first `alive` reaches the watch.
        let running = |node: &str| node == self.node || nodes.contains(node);
        let mut live = Vec::with_capacity(members.len());
        for (key, value) in members {
            match postcard::from_bytes::<Member>(&value) {
                Ok(member) if running(&member.node) => live.push((key, member)),
                // A node that stopped (or an entry from before memberships named nodes).
                _ => {
                    if let Err(e) = self.members.purge(&key).await {
                        tracing::debug!(error = %e, "a stopped node's membership stays for now");
                    }
                }
            }
        }
        Ok(live)
    }
}

fn member_key(room: &str, name: &str) -> String {
    format!("{}.{}", token(room), token(&name.to_ascii_lowercase()))
}
