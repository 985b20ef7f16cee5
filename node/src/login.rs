//! Accounts at the node: what the store says of a hello's credentials, and the control
//! requests that change an account. The core decides (`Core::begin_login` before any hash,
//! `Core::authenticate` after); this module asks the store and runs the hashes, a few at a
//! time on blocking threads, so that a flood of logins costs a queue, not the node's cores.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use chat_accounts::{Account, hash_password};
use chat_core::accounts::{Attempt, Identity, Offered, Standing};
use chat_core::{ConnId, Refusal, SessionToken, UserName};
use chat_proto::{Login, Secret};

use crate::Shared;
use crate::seams::AccountsStoreError;

/// Password hashes run at once: each takes 19 MiB and tens of milliseconds of a core.
pub(crate) const HASHES_AT_ONCE: usize = 2;

/// Who a hello is, as the core judged it, with what the node must still do for it.
pub(crate) struct Identified {
    pub(crate) identity: Identity,
    /// For [`Identity::NewAccount`]: the new password's hash.
    pub(crate) new_hash: Option<String>,
}

/// Judges a hello for `user` with `resume` and `login` from `from`: the core's limiter first,
/// then the store (a session the account holds, or its password), then the core's rules.
pub(crate) async fn identify(
    shared: &Shared,
    user: &UserName,
    resume: Option<SessionToken>,
    login: Option<&Login>,
    from: IpAddr,
) -> Result<Identified, Refusal> {
    let attempt = shared.core().begin_login(user, login, from, Instant::now())?;
    let account = shared.accounts.get(user.key()).await.map_err(unavailable)?;
    let standing = match (&account, login) {
        (None, _) => Standing::Unregistered,
        (Some(account), _) if resume.is_some_and(|token| account.holds(&token)) => Standing::Proven,
        (Some(account), Some(Login::Password(password))) => {
            let (account, password) = (account.clone(), password.clone());
            if hashed(shared, move || account.password_is(&password.0)).await? {
                Standing::Proven
            } else {
                Standing::WrongPassword
            }
        }
        (Some(_), _) => Standing::Unproven,
    };
    let offered = match login {
        None => Offered::Nothing,
        Some(Login::Password(_)) => Offered::Password,
        Some(Login::Register(_)) => Offered::Register,
    };
    let identity = shared.core().authenticate(user, offered, standing, attempt.as_ref())?;
    let new_hash = match (identity, login) {
        (Identity::NewAccount, Some(Login::Register(password))) => {
            Some(new_hash(shared, password).await?)
        }
        _ => None,
    };
    Ok(Identified { identity, new_hash })
}

/// Once the core has welcomed `user` as `identified`: registers a new account with `token`
/// as its session, or makes `token` a session of the account, in place of the one it
/// resumed.
///
/// # Errors
/// The name was registered by another connection first, or the store failed.
pub(crate) async fn settle(
    shared: &Shared,
    user: &UserName,
    identified: Identified,
    token: SessionToken,
    resume: Option<SessionToken>,
) -> Result<(), Refusal> {
    match (identified.identity, identified.new_hash) {
        (Identity::NewAccount, Some(hash)) => create(shared, user, hash, token).await,
        (Identity::Account, _) => {
            let change = Arc::new(move |a: &mut Account| {
                a.start_session(token, resume.as_ref());
                0
            });
            shared.accounts.update(user.key(), change).await.map_err(unavailable)?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `Register` on the control stream of a guest `conn` named `user`, from `from`.
pub(crate) async fn register(
    shared: &Shared,
    conn: ConnId,
    user: &UserName,
    password: &Secret,
    token: SessionToken,
    from: IpAddr,
) -> Result<(), Refusal> {
    let register = Login::Register(password.clone());
    shared.core().begin_login(user, Some(&register), from, Instant::now())?;
    let hash = new_hash(shared, password).await?;
    create(shared, user, hash, token).await?;
    shared.core().registered(conn);
    Ok(())
}

/// `ChangePassword` on the control stream of `user`'s session `token`: the old password is
/// checked as a login is; every other session ends. Returns how many ended.
pub(crate) async fn change_password(
    shared: &Shared,
    user: &UserName,
    old: &Secret,
    new: &Secret,
    token: SessionToken,
    from: IpAddr,
) -> Result<usize, Refusal> {
    let login = Login::Password(old.clone());
    let attempt = shared.core().begin_login(user, Some(&login), from, Instant::now())?;
    let account = shared.accounts.get(user.key()).await.map_err(unavailable)?;
    let Some(account) = account else { return Err(Refusal::NotLoggedIn) };
    let old = old.clone();
    let standing = match hashed(shared, move || account.password_is(&old.0)).await? {
        true => Standing::Proven,
        false => Standing::WrongPassword,
    };
    settle_attempt(shared, user, standing, attempt.as_ref())?;
    let hash = new_hash(shared, new).await?;
    let change = Arc::new(move |a: &mut Account| a.set_password(hash.clone(), &token));
    let ended = shared.accounts.update(user.key(), change).await.map_err(unavailable)?;
    ended.ok_or(Refusal::NotLoggedIn)
}

/// `Logout`: `token` no longer logs in to `user`'s account.
pub(crate) async fn logout(
    shared: &Shared,
    user: &UserName,
    token: SessionToken,
) -> Result<(), Refusal> {
    let change = Arc::new(move |a: &mut Account| {
        a.end_session(&token);
        0
    });
    shared.accounts.update(user.key(), change).await.map_err(unavailable)?;
    Ok(())
}

/// The core's judgement of a password check, settling its turn.
fn settle_attempt(
    shared: &Shared,
    user: &UserName,
    standing: Standing,
    attempt: Option<&Attempt>,
) -> Result<(), Refusal> {
    shared.core().authenticate(user, Offered::Password, standing, attempt).map(|_| ())
}

async fn create(
    shared: &Shared,
    user: &UserName,
    hash: String,
    token: SessionToken,
) -> Result<(), Refusal> {
    let account = Account::new(hash, token);
    match shared.accounts.create(user.key(), account).await.map_err(unavailable)? {
        true => Ok(()),
        false => Err(Refusal::NameRegistered(user.to_string())),
    }
}

async fn new_hash(shared: &Shared, password: &Secret) -> Result<String, Refusal> {
    let password = password.clone();
    hashed(shared, move || hash_password(&password.0)).await?.map_err(|e| unavailable(e.into()))
}

/// Runs a password hash or check on a blocking thread, when one of [`HASHES_AT_ONCE`] turns
/// is free.
async fn hashed<T: Send + 'static>(
    shared: &Shared,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Refusal> {
    let _turn =
        shared.hashing.acquire().await.map_err(|e| Refusal::AccountsUnavailable(e.to_string()))?;
    shared.metrics.password_hash();
    tokio::task::spawn_blocking(work).await.map_err(|e| Refusal::AccountsUnavailable(e.to_string()))
}

fn unavailable(e: AccountsStoreError) -> Refusal {
    Refusal::AccountsUnavailable(e.to_string())
}
