//! Records every node must see alike and at once (accounts, rooms' rules): a replicated JetStream
//! key-value bucket with no expiry, written only with an atomic create or a compare-and-set
//! on the revision read, so that two nodes racing for one key cannot both win.

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;

use crate::{ClusterConfig, ClusterError};

pub const ACCOUNTS_BUCKET: &str = "chat_accounts";
pub const ROOM_RULES_BUCKET: &str = "chat_room_rules";
pub const MARKERS_BUCKET: &str = "chat_markers";

/// Compare-and-set rounds a [`Records::change`] makes against other writers.
const CHANGE_ROUNDS: usize = 8;

/// What a [`Records::change`] does with the value it read.
pub enum Change<T> {
    /// Write this value (if the record has not changed meanwhile) and answer `T`.
    Write(Bytes, T),
    /// Write nothing and answer `T`.
    Leave(T),
}

/// One bucket of records, each an opaque value under a key (a user name's or a room's).
pub struct Records {
    store: kv::Store,
}

impl Records {
    pub(crate) async fn open(
        js: &jetstream::Context,
        config: &ClusterConfig,
        bucket: &str,
        description: &str,
    ) -> Result<Self, ClusterError> {
        let store = js
            .create_or_update_key_value(kv::Config {
                bucket: bucket.into(),
                description: description.into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::setup(&format!("the {bucket} bucket"), e))?;
        Ok(Self { store })
    }

    /// The value under `key` and its revision, if there is one.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn get(&self, key: &str) -> Result<Option<(Bytes, u64)>, ClusterError> {
        let key = crate::subjects::token(key);
        crate::patiently(|| self.get_raw(&key)).await
    }

    /// Writes `value` under `key` unless the key has one; `false` if it had.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<bool, ClusterError> {
        let key = crate::subjects::token(key);
        let created = self.store.create(&key, value.clone()).await;
        match created {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                // An earlier attempt of ours whose answer was lost is a success.
                Ok(self.get_raw(&key).await?.is_some_and(|(held, _)| held == value))
            }
            Err(e) => Err(ClusterError::unavailable(e)),
        }
    }

    /// Writes `value` under `key` if its revision is still `revision`; `false` if another
    /// write came first (read it again and retry).
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<bool, ClusterError> {
        let key = crate::subjects::token(key);
        match self.store.update(&key, value, revision).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(ClusterError::unavailable(e)),
        }
    }

    /// Changes the record under `key`: `change` is given its value (if any) and says what to
    /// write; if another writer came first, it is given the newer value and asked again, a
    /// few times.
    ///
    /// # Errors
    /// NATS did not answer or the record kept changing (outer), or `change` failed (inner).
    pub async fn change<T, E>(
        &self,
        key: &str,
        mut change: impl FnMut(Option<&Bytes>) -> Result<Change<T>, E>,
    ) -> Result<Result<T, E>, ClusterError> {
        for _ in 0..CHANGE_ROUNDS {
            let current = self.get(key).await?;
            let (value, answer) = match change(current.as_ref().map(|(value, _)| value)) {
                Ok(Change::Write(value, answer)) => (value, answer),
                Ok(Change::Leave(answer)) => return Ok(Ok(answer)),
                Err(e) => return Ok(Err(e)),
            };
            let written = match current {
                Some((_, revision)) => self.update(key, value, revision).await?,
                None => self.create(key, value).await?,
            };
            if written {
                return Ok(Ok(answer));
            }
        }
        Err(ClusterError::Unavailable(format!("{key} kept changing under the update")))
    }

    /// Every record as it stands now, then every one written from now on (by any node), as
    /// its key and value, for as long as the stream is read.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn watch(
        &self,
    ) -> Result<impl futures_util::Stream<Item = (String, Bytes)> + Send + use<>, ClusterError>
    {
        use futures_util::StreamExt;
        let watch = self.store.watch_with_history(">").await.map_err(ClusterError::unavailable)?;
        Ok(watch.filter_map(|entry| async move {
            let entry = entry.ok().filter(|e| e.operation == kv::Operation::Put)?;
            Some((crate::subjects::name(&entry.key), entry.value))
        }))
    }

    async fn get_raw(&self, key: &str) -> Result<Option<(Bytes, u64)>, ClusterError> {
        let entry = self.store.entry(key).await.map_err(ClusterError::unavailable)?;
        Ok(entry.filter(|e| e.operation == kv::Operation::Put).map(|e| (e.value, e.revision)))
    }
}
