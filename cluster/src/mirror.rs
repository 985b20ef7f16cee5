//! A key-value bucket kept in this node's memory by one watch, so that reading it costs NATS
//! nothing: listing a bucket's keys or entries makes a JetStream consumer each time, and a
//! stream takes 1,000, which a burst of requests from many clients would use up.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::ClusterError;

/// A bucket's live entries, key to value. `None` until the watch has read them all once,
/// and while it is broken. A watch channel, so that a reader can wait for them.
type Entries = watch::Sender<Option<BTreeMap<String, Bytes>>>;

pub(crate) struct Mirror {
    entries: Entries,
    watching: tokio::task::JoinHandle<()>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.watching.abort();
    }
}

impl Mirror {
    /// Starts watching `store`.
    pub(crate) fn start(store: kv::Store) -> Self {
        let entries = Entries::new(None);
        let watching = tokio::spawn(keep(store, entries.clone()));
        Self { entries, watching }
    }

    /// `read` of the entries, once the watch has them (waiting up to [`crate::PATIENCE`]
    /// while it starts or watches again after NATS was away).
    ///
    /// # Errors
    /// The watch did not have the entries in time.
    pub(crate) async fn read<T>(
        &self,
        read: impl FnOnce(&BTreeMap<String, Bytes>) -> T,
    ) -> Result<T, ClusterError> {
        let mut entries = self.entries.subscribe();
        let ready = tokio::time::timeout(crate::PATIENCE, entries.wait_for(Option::is_some)).await;
        let ready = ready.ok().and_then(Result::ok);
        let entries = ready.as_ref().and_then(|entries| entries.as_ref());
        entries
            .map(read)
            .ok_or_else(|| ClusterError::Unavailable("the bucket's watch is not ready".into()))
    }

    /// `read` of the entries if the watch has them now.
    pub(crate) fn peek<T>(&self, read: impl FnOnce(&BTreeMap<String, Bytes>) -> T) -> Option<T> {
        self.entries.borrow().as_ref().map(read)
    }

    /// Changes the entries at once for a change this node made itself, which its watch
    /// reports a moment later.
    pub(crate) fn change(&self, change: impl FnOnce(&mut BTreeMap<String, Bytes>)) {
        self.entries.send_if_modified(|entries| entries.as_mut().map(change).is_some());
    }
}

/// Keeps `entries` as the bucket says, through one watch (read from the start, then every
/// change), watching again a second after it breaks.
async fn keep(store: kv::Store, entries: Entries) {
    let apply = |entries: &mut BTreeMap<String, Bytes>, entry: kv::Entry| match entry.operation {
        kv::Operation::Put => drop(entries.insert(entry.key, entry.value)),
        kv::Operation::Delete | kv::Operation::Purge => drop(entries.remove(&entry.key)),
    };
    loop {
        // An empty bucket's watch says nothing until its first change.
        let empty = store.status().await.is_ok_and(|status| status.values() == 0);
        match store.watch_with_history(">").await {
            Ok(mut watch) => {
                let mut seen = BTreeMap::new();
                if empty {
                    entries.send_replace(Some(BTreeMap::new()));
                }
                while let Some(Ok(entry)) = watch.next().await {
                    if entries.borrow().is_some() {
                        entries.send_modify(|entries| {
                            apply(entries.get_or_insert_with(BTreeMap::new), entry);
                        });
                        continue;
                    }
                    let last = entry.delta == 0;
                    apply(&mut seen, entry);
                    if last {
                        entries.send_replace(Some(std::mem::take(&mut seen)));
                    }
                }
                tracing::debug!(bucket = %store.name, "the bucket's watch ended; watching again");
            }
            Err(e) => {
                tracing::warn!(bucket = %store.name, error = %e, "cannot watch the bucket yet")
            }
        }
        entries.send_replace(None);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
