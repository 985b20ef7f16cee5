//! One room stream: the join, then the history and live messages one way and sends the
//! other.
//!
//! Two halves run at once. This task reads the client's sends, checks them with the core
//! and hands them to the history; each one's completion (once the message is durable)
//! queues the ack, and the history's subscriber relays the message to the room. The member's
//! writer (`member.rs`) sends the `Joined` frame and the history up to the point where the
//! member joined, then drains the member's queue: live messages, acks and errors.

use std::sync::Arc;
use std::time::Instant;

use chat_core::{
    Admitted, Core, MemberId, Opening, Received, Refusal, RoomName, Seq, StreamAction, StreamInput,
};
use chat_history::HistoryError;
use chat_history::PageLimit;
use chat_proto::io::FrameReader;
use chat_proto::{
    Anchor, ChatMessage, ClientFrame, ErrorCode, ErrorFrame, LeftReason, NodeFrame, PageEnds, codec,
};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tracing::{debug, warn};
use web_transport_quinn::{RecvStream, SendStream};

use crate::connection::departure;
use crate::mailbox::{Ending, Outbox, Outgoing};
use crate::member::{Writer, evicted};
use crate::reply::{encode, error_frame};
use crate::{Conn, Shared, now_ms};

pub(crate) async fn serve(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    send: SendStream,
    recv: RecvStream,
) {
    let mut reader = FrameReader::new(recv, shared.limits.max_frame_len as usize)
        .with_frame_deadline(shared.config.frame_timeout)
        .with_budgets(vec![Arc::clone(&conn.frames), Arc::clone(&shared.frames)]);
    // Boxed: the join's steps run once, and inline they would size the stream's task for
    // its whole life.
    let Some(entered) = Box::pin(enter(&shared, &conn, send, &mut reader)).await else { return };
    let Entered { member, room, outbox, eviction, drained, writing } = entered;
    let queue = Queue { outbox: &outbox, drained: &drained };
    let ended = read_sends(&shared, &conn, member, &room, &mut reader, queue, eviction).await;
    let reason = match &ended {
        Ended::Left(reason) => *reason,
        Ended::Closing(_) => LeftReason::Dropped,
    };
    shared.core().leave(member, reason);
    shared.directory.left(member);
    shared.metrics.members.dec();
    drop(outbox);
    let _ = writing.await;
    if let Ended::Closing(refusal) = ended {
        // Only now, so that the client has its acks and "slow down" errors first.
        close_rate_limited(&shared, &conn, &refusal);
    }
}

/// A member that has joined: its room, its queue, and the task writing its stream.
struct Entered {
    member: MemberId,
    room: RoomName,
    outbox: Outbox,
    eviction: watch::Receiver<Option<Ending>>,
    drained: Arc<Notify>,
    writing: tokio::task::JoinHandle<()>,
}

/// Reads the join and admits it: checks it with the core and the room's rules, makes a
/// direct conversation on first use, joins the core and starts the member's writer. `None`
/// when the join was refused (the client is told why) or the stream ended first.
async fn enter(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    mut send: SendStream,
    reader: &mut FrameReader<RecvStream>,
) -> Option<Entered> {
    let (room, after, limit) = match read_join(shared, reader).await {
        Ok(Some(join)) => join,
        Ok(None) => return None,
        Err(error) => return refused(shared, &mut send, error).await,
    };
    let budget = shared.core().check_request(conn.id, Instant::now());
    if let Err(refusal) = budget {
        end_with(shared, &mut send, error_frame(&refusal, None)).await;
        if refusal == Refusal::RateLimited {
            close_rate_limited(shared, conn, &refusal);
        }
        return None;
    }
    let admitted = shared.core().admit(conn.id, &room);
    let room = match admitted {
        Ok(Admitted { room, known: true }) => room,
        // A direct conversation is made when one of its two first opens it.
        Ok(Admitted { room, known: false }) if room.direct_pair().is_some() => {
            if let Err(detail) = shared.create_room(&room).await {
                let refusal = Refusal::JoinUnavailable { room: room.to_string(), detail };
                return refused(shared, &mut send, error_frame(&refusal, None)).await;
            }
            room
        }
        // In cluster mode a room enters the core when the node follows it.
        Ok(Admitted { room, known: false }) => room,
        Err(refusal) => return refused(shared, &mut send, error_frame(&refusal, None)).await,
    };
    if let Err(e) = shared.fanout.follow(room.as_str()).await {
        let refusal = Refusal::JoinUnavailable { room: room.to_string(), detail: e.to_string() };
        return refused(shared, &mut send, error_frame(&refusal, None)).await;
    }
    if let Err(refusal) = crate::moderation::check_join(shared, conn.id, &room).await {
        debug!(%room, %refusal, "join refused by the room's rules");
        return refused(shared, &mut send, error_frame(&refusal, None)).await;
    }
    let member = MemberId(shared.next_id());
    let (queue, queued) = mpsc::channel(shared.config.member_queue);
    let (evicted, eviction) = watch::channel(None);
    let outbox = Outbox { queue, evicted: Some(Arc::new(evicted)) };
    let joined = shared.core().join(conn.id, member, room.as_str(), outbox.clone());
    let joined = match joined {
        Ok(joined) => joined,
        Err(refusal) => {
            debug!(?room, %refusal, "join refused");
            return refused(shared, &mut send, error_frame(&refusal, None)).await;
        }
    };
    shared.metrics.members.inc();
    shared.admission.joined(conn.slot);
    shared.directory.entered(member, &joined.room, &conn.name);
    debug!(room = %joined.room, member = member.0, ?after, "joined");
    let drained = Arc::new(Notify::new());
    let writer = Writer::new(
        Arc::clone(shared),
        Arc::clone(conn),
        joined.room.clone(),
        send,
        Arc::clone(&drained),
    );
    let page_len = shared.core().rules().page_len(limit);
    let writing = crate::wakes::spawn(writer.run(
        after,
        page_len,
        joined.history_until,
        queued,
        eviction.clone(),
    ));
    Some(Entered { member, room: joined.room, outbox, eviction, drained, writing })
}

/// Refuses a join with `error`.
async fn refused(shared: &Shared, send: &mut SendStream, error: ErrorFrame) -> Option<Entered> {
    end_with(shared, send, error).await;
    None
}

fn close_rate_limited(shared: &Shared, conn: &Conn, refusal: &Refusal) {
    warn!(%refusal, "closed a connection that kept on over its rate limit");
    shared.metrics.error("rate_limited");
    conn.connection.close(refusal.close_code(), refusal.to_string().as_bytes());
    shared.bar(&conn.connection);
}

/// Why a room stream stopped reading.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The client left, the member was dropped, the stream broke or the node stops; the
    /// room hears the reason (unless the core dropped the member itself, or the node stops).
    Left(LeftReason),
    /// The core refused a send in a way that ends the connection (it kept sending after
    /// being told to slow down): close it.
    Closing(Refusal),
}

/// The room stream's first frame, which must be a join; `None` if the stream ended first.
async fn read_join(
    shared: &Shared,
    reader: &mut FrameReader<RecvStream>,
) -> Result<Option<(String, Option<Seq>, u32)>, ErrorFrame> {
    let timeout = shared.config.handshake_timeout;
    let opening = match tokio::time::timeout(timeout, reader.read()).await {
        Ok(read) => chat_core::opening(Received::from_read(read)),
        Err(_) => Opening::Refuse(Refusal::NoJoinInTime),
    };
    match opening {
        Opening::Join { room, after, limit } => Ok(Some((room, after, limit))),
        Opening::Ended => Ok(None),
        Opening::Refuse(refusal) => Err(error_frame(&refusal, None)),
    }
}

/// Reads sends until the client leaves, the member is dropped, the connection keeps sending
/// over its rate limit or the node stops.
async fn read_sends(
    shared: &Arc<Shared>,
    conn: &Conn,
    member: MemberId,
    room: &RoomName,
    reader: &mut FrameReader<RecvStream>,
    queue: Queue<'_>,
    mut eviction: watch::Receiver<Option<Ending>>,
) -> Ended {
    let Queue { outbox, drained } = queue;
    let in_flight =
        Arc::new(Semaphore::new(chat_core::sends_in_flight(shared.config.member_queue)));
    let room_before_send = chat_core::room_before_send(shared.config.member_queue);
    let mut stopping = shared.stopping.clone();
    loop {
        let frame = tokio::select! {
            frame = reader.read::<ClientFrame>() => frame,
            _ = evicted(&mut eviction) => return Ended::Left(LeftReason::Dropped),
            () = crate::stopping(&mut stopping) => return Ended::Left(LeftReason::Disconnected),
        };
        let input = match frame {
            Ok(None) => return Ended::Left(LeftReason::Left),
            // The stream was reset, or the connection ended under it: nothing to answer.
            Err(codec::FrameError::Io(_)) => return Ended::Left(departure(&conn.connection)),
            Ok(Some(ClientFrame::Send { client_id, body })) => {
                StreamInput::Send { client_id, body }
            }
            Ok(Some(ClientFrame::History { request_id, anchor, limit })) => {
                StreamInput::History { request_id, anchor, limit }
            }
            Ok(Some(other)) => StreamInput::Other { frame: other.name() },
            Err(e @ codec::FrameError::TooLong { len, .. }) if reader.in_step(&e) => {
                let client_id = ClientFrame::send_id_from_head(reader.oversized_head());
                StreamInput::Oversized { len, client_id }
            }
            Err(e) => {
                StreamInput::Malformed { detail: e.to_string(), skippable: reader.in_step(&e) }
            }
        };
        let action = shared.core().on_stream(member, input, Instant::now());
        let (error, fatal) = match action {
            StreamAction::Append { client_id, outgoing, body } => {
                let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                    return Ended::Left(LeftReason::Left);
                };
                // With the permit in hand, the sends in flight can no longer grow: room now
                // for a full window's replies is room for theirs and this one's.
                tokio::select! {
                    biased;
                    _ = evicted(&mut eviction) => return Ended::Left(LeftReason::Dropped),
                    drained = room_for_replies(&outbox.queue, drained, room_before_send) => {
                        if !drained {
                            return Ended::Left(LeftReason::Left);
                        }
                    }
                }
                append(shared, member, client_id, outgoing, body, outbox.clone(), permit);
                continue;
            }
            StreamAction::Page { request_id, anchor, messages } => {
                let mut page_room = shared.pages.reserve(&conn.pages).await;
                let frame = match read_page(shared, room, request_id, anchor, messages).await {
                    Ok(page) => page,
                    Err(refusal) => NodeFrame::Error(error_frame(&refusal, Some(request_id))),
                };
                let frame = encode(&frame);
                page_room.fit(frame.len());
                if outbox.queue.send(Outgoing::Page(Box::new((frame, page_room)))).await.is_err() {
                    return Ended::Left(LeftReason::Left);
                }
                continue;
            }
            StreamAction::Refuse { refusal, client_id } => {
                (error_frame(&refusal, client_id), false)
            }
            StreamAction::RefuseAndEnd(refusal) => (error_frame(&refusal, None), true),
            StreamAction::Close(refusal) => return Ended::Closing(refusal),
        };
        shared.metrics.error_code(error.code);
        let sent = outbox.queue.send(Outgoing::Frame(encode(&NodeFrame::Error(error)))).await;
        if sent.is_err() || fatal {
            return Ended::Left(LeftReason::Dropped);
        }
    }
}

/// The sender's queue as its room reader sees it: where its replies go, and the signal
/// that its writer has taken some of them.
#[derive(Clone, Copy)]
struct Queue<'a> {
    outbox: &'a Outbox,
    drained: &'a Notify,
}

/// Waits until `queue` has `room` free (see `chat_core::room_before_send`). `false` when the
/// writer is gone.
async fn room_for_replies(queue: &mpsc::Sender<Outgoing>, drained: &Notify, room: usize) -> bool {
    while queue.capacity() < room {
        if queue.is_closed() {
            return false;
        }
        drained.notified().await;
    }
    true
}

/// A page of `room`'s history for a history request.
async fn read_page(
    shared: &Shared,
    room: &RoomName,
    request_id: u64,
    anchor: Anchor,
    messages: usize,
) -> Result<NodeFrame, Refusal> {
    let anchor = match anchor {
        Anchor::Latest => chat_history::Anchor::Latest,
        Anchor::Before(seq) => chat_history::Anchor::Before(seq),
        Anchor::After(seq) => chat_history::Anchor::After(seq),
        Anchor::Around(seq) => chat_history::Anchor::Around(seq),
    };
    let limit = PageLimit { messages, bytes: chat_core::PAGE_BYTES };
    let (history, name) = (Arc::clone(&shared.history), room.clone());
    let read = tokio::task::spawn_blocking(move || history.page(&name, anchor, limit)).await;
    let page = match read {
        Ok(Ok(page)) => page,
        Ok(Err(e)) => return Err(Refusal::HistoryUnreadable(e.to_string())),
        Err(e) => return Err(Refusal::HistoryUnreadable(e.to_string())),
    };
    let messages = page
        .messages
        .into_iter()
        .map(|stored| ChatMessage {
            room: room.to_string(),
            seq: stored.seq,
            sender: stored.message.sender,
            timestamp_ms: stored.message.timestamp_ms,
            body: stored.message.body,
        })
        .collect();
    let ends = PageEnds {
        more_before: page.more_before,
        more_after: page.more_after,
        first_seq: page.first_seq,
    };
    Ok(NodeFrame::Page { request_id, messages, ends })
}

/// A send's id across the cluster: its sender's name and the client's id for it, which the
/// protocol asks a client to keep unique for its name (the client library starts from a
/// random number), and to use again when it sends a message again whose outcome it was not
/// told.
pub(crate) fn send_id(sender: &chat_core::UserName, client_id: u64) -> String {
    format!("{}:{client_id:x}", sender.key())
}

/// Hands a send the core accepted to the history; its completion queues the ack.
fn append(
    shared: &Arc<Shared>,
    member: MemberId,
    client_id: u64,
    outgoing: chat_core::Outgoing,
    body: String,
    outbox: Outbox,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let record =
        chat_history::Message { sender: outgoing.sender.to_string(), timestamp_ms: now_ms(), body };
    let (core, metrics, room) =
        (Arc::clone(&shared.core), Arc::clone(&shared.metrics), outgoing.room);
    let ack_room = room.clone();
    let handed_over = Instant::now();
    // Members get the message through the fan-out once it is stored, while its sync runs;
    // its sender gets the ack once it is durable.
    let acknowledge = Box::new(move |durable: Result<Seq, HistoryError>| {
        let reply = match durable {
            Ok(seq) => {
                metrics.history_append.observe(handed_over.elapsed().as_secs_f64());
                metrics.messages.inc();
                NodeFrame::Ack { client_id, seq }
            }
            Err(e) => {
                warn!(room = %ack_room, error = %e, "a message was not stored durably");
                metrics.error_code(ErrorCode::HistoryUnavailable);
                let refusal = match e {
                    HistoryError::NotSynced(_) => Refusal::NotSynced(e.to_string()),
                    HistoryError::Unconfirmed(_) => Refusal::MaybeStored(e.to_string()),
                    _ => Refusal::NotStored(e.to_string()),
                };
                NodeFrame::Error(error_frame(&refusal, Some(client_id)))
            }
        };
        let frame = encode(&reply);
        let dropped = Core::reply(member, &outbox, frame).err().and_then(|overflow| {
            core.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .reply_overflowed(overflow)
        });
        if let Some(gone) = dropped {
            debug!(
                member = gone.member.0,
                last_seq = gone.last_seq,
                "dropped a member whose ack did not fit"
            );
        }
        drop(permit);
    });
    let id = send_id(&outgoing.sender, client_id);
    shared.history.append(&room, record, id, acknowledge);
}

/// Ends a stream that never joined a room with an error frame.
async fn end_with(shared: &Shared, send: &mut SendStream, error: ErrorFrame) {
    shared.metrics.error_code(error.code);
    if send.write_all(&encode(&NodeFrame::Error(error))).await.is_ok() {
        let _ = send.finish();
    }
}
