//! Who may open a connection: at most so many in all and so many from one IP address.
//!
//! The node asks before the TLS handshake, so a refused connection costs one packet. Each
//! admitted connection holds a [`Slot`] that gives its place back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The node has its most connections.
    Node,
    /// This address has its most connections.
    Address,
}

impl Full {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Node => "node_full",
            Self::Address => "address_full",
        }
    }
}

pub(crate) struct Admission {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// An admitted connection's place.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_ip, open: Mutex::default() })
    }

    /// A slot for one more connection from `ip`, or why there is none.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max_total {
            return Err(Full::Node);
        }
        let from_ip = open.by_ip.entry(ip).or_default();
        if *from_ip >= self.max_per_ip {
            return Err(Full::Address);
        }
        *from_ip += 1;
        open.total += 1;
        Ok(Slot { admission: Arc::clone(self), ip })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total -= 1;
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn limits_per_address_and_in_all_and_frees_on_drop() {
        let admission = Admission::new(3, 2);
        let a1 = admission.admit(ip(1)).expect("first");
        let _a2 = admission.admit(ip(1)).expect("second");
        assert_eq!(admission.admit(ip(1)).err(), Some(Full::Address));
        let _b1 = admission.admit(ip(2)).expect("another address");
        assert_eq!(admission.admit(ip(3)).err(), Some(Full::Node));
        drop(a1);
        assert_eq!(admission.open(), 2);
        let _a3 = admission.admit(ip(1)).expect("a freed place");
        assert_eq!(admission.open(), 3);
    }

    #[test]
    fn forgets_an_address_with_no_connections() {
        let admission = Admission::new(10, 1);
        drop(admission.admit(ip(1)).expect("admitted"));
        assert!(admission.open.lock().expect("lock").by_ip.is_empty());
    }
}
