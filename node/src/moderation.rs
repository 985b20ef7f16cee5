//! Rooms' rules at the node: a moderation judged and stored ([`moderate`]), then carried out
//! by the core; a join checked against the room's rules ([`check_join`]); a room's owner
//! recorded when an account makes it. In cluster mode the rules live in NATS, so a join reads
//! them there first: a ban made on one node keeps the name out of the room on every node.

use std::sync::Arc;
use std::time::Instant;

use chat_core::moderation::{RoomRules, apply};
use chat_core::{ConnId, Refusal, RoomName, UserName};
use chat_proto::Moderation;
use tracing::info;

use crate::seams::{AccountsStoreError, RulesChange};
use crate::{Shared, now_ms};

/// `by`'s `action` in `room`: judged against the stored rules (the newest, on any node),
/// stored, and carried out here (the room told; a kicked or banned member removed).
pub(crate) async fn moderate(
    shared: &Shared,
    by: &UserName,
    room: &RoomName,
    action: Moderation,
) -> Result<(), Refusal> {
    if !shared.room_exists(room).await? {
        return Err(Refusal::UnknownRoom(room.to_string()));
    }
    let deleting = action == Moderation::DeleteRoom;
    if deleting && shared.config.rooms.iter().any(|r| r.eq_ignore_ascii_case(room.as_str())) {
        return Err(Refusal::ConfiguredRoom(room.to_string()));
    }
    let operators = shared.core().node_operators().clone();
    let (actor, act, at) = (by.clone(), action.clone(), now_ms());
    let change: RulesChange = Arc::new(move |rules: &mut RoomRules| {
        let rank = rules.rank(&actor.key(), &operators);
        apply(rules, &actor, rank, &act, &operators, at)
    });
    let rules = shared.accounts.update_room_rules(room.to_string(), change).await;
    let rules = rules.map_err(unavailable)??;
    info!(%room, %by, ?action, revision = rules.revision, "moderation");
    shared.core().install_rules(room, rules, Instant::now(), at);
    if deleting {
        let (history, name) = (Arc::clone(&shared.history), room.clone());
        let deleted = tokio::task::spawn_blocking(move || history.delete_room(&name)).await;
        let deleted = deleted.map_err(|e| Refusal::Unanswerable(e.to_string()))?;
        deleted.map_err(|e| Refusal::Unanswerable(e.to_string()))?;
        shared.metrics.rooms.dec();
        info!(%room, %by, "room deleted");
    }
    Ok(())
}

/// Whether `conn` may join `room` under its rules (read from NATS first in cluster mode,
/// where another node may have changed them; a single node has them all in the core).
pub(crate) async fn check_join(
    shared: &Shared,
    conn: ConnId,
    room: &RoomName,
) -> Result<(), Refusal> {
    if shared.config.cluster.is_some()
        && let Some(rules) =
            shared.accounts.room_rules(room.to_string()).await.map_err(unavailable)?
    {
        shared.core().install_rules(room, rules, Instant::now(), now_ms());
    }
    shared.core().check_rules(conn, room, now_ms())
}

/// Records `owner` as the owner of `room`, which it has just made.
pub(crate) async fn set_owner(
    shared: &Shared,
    room: &RoomName,
    owner: &UserName,
) -> Result<(), Refusal> {
    let key = owner.key();
    let change: RulesChange = Arc::new(move |rules: &mut RoomRules| {
        rules.owner.get_or_insert_with(|| key.clone());
        rules.revision += 1;
        rules.last = None; // Nothing to tell: the room is new (perhaps after a deletion).
        Ok(())
    });
    let rules = shared.accounts.update_room_rules(room.to_string(), change).await;
    let rules = rules.map_err(unavailable)??;
    shared.core().install_rules(room, rules, Instant::now(), now_ms());
    Ok(())
}

/// Loads every room's rules into the core (a single node, at start).
pub(crate) async fn load(shared: &Shared) -> anyhow::Result<()> {
    let (now, at) = (Instant::now(), now_ms());
    for (room, rules) in shared.accounts.all_room_rules().await? {
        if let Ok(room) = RoomName::parse(&room) {
            shared.core().install_rules(&room, rules, now, at);
        }
    }
    Ok(())
}

fn unavailable(e: AccountsStoreError) -> Refusal {
    Refusal::AccountsUnavailable(e.to_string())
}
