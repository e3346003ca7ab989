//! Session commitments: a router commits its bandwidth to at most one
//! negotiation per session key.
//!
//! The initiator of a download draws a random 128-bit [`SessionKey`] and
//! sends it with every negotiation; sub-delegations carry the same key. A
//! router that committed to a key refuses any further negotiation with that
//! key (overlapping neighbourhoods reach it by several paths) until the
//! session is cancelled, completed or expires. The table remembers to whom
//! it sub-delegated the session so the caller can forward a cancel down the
//! delegation tree.
//!
//! Time is a `Duration` since a caller-chosen origin, fed in increasing
//! order, as everywhere in this crate.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// A random 128-bit session key (drawn by the initiator from a CSPRNG).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(pub [u8; 16]);

impl SessionKey {
    /// The key from its 16 bytes (e.g. from `getrandom` or a peer frame).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        SessionKey(bytes)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short prefix: enough to follow a session in logs.
        write!(f, "SessionKey(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Why a negotiation or sub-delegation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// This router already committed to this session key.
    #[error("already committed to session {0:?}")]
    AlreadyCommitted(SessionKey),
    /// The table is full of live sessions.
    #[error("session table full ({0} sessions)")]
    Full(usize),
    /// No live commitment for this key.
    #[error("no commitment for session {0:?}")]
    UnknownSession(SessionKey),
    /// The session already has the maximum number of sub-delegates.
    #[error("too many sub-delegates for session {0:?}")]
    TooManySubDelegates(SessionKey),
}

/// Limits of a [`SessionTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Live sessions at most.
    pub capacity: usize,
    /// A session with no activity ([`SessionTable::touch`]) for this long
    /// expires.
    pub idle_timeout: Duration,
    /// Sub-delegates recorded per session at most.
    pub max_sub_delegates: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            capacity: 256,
            idle_timeout: Duration::from_secs(30),
            max_sub_delegates: 16,
        }
    }
}

/// One commitment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commitment<P> {
    /// Who we committed to (the negotiating neighbour; `None` at the
    /// initiator).
    pub parent: Option<P>,
    /// Neighbours we sub-delegated to (they committed to us).
    pub sub_delegates: Vec<P>,
    /// Last activity.
    pub last_active: Duration,
}

/// A released session: forward a cancel to each of `sub_delegates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released<P> {
    /// The session.
    pub key: SessionKey,
    /// Who we committed to.
    pub parent: Option<P>,
    /// Neighbours that committed to us for this session.
    pub sub_delegates: Vec<P>,
}

/// Bounded table of this router's session commitments, generic over the
/// caller's peer identifier.
#[derive(Debug, Clone)]
pub struct SessionTable<P> {
    limits: SessionLimits,
    entries: HashMap<SessionKey, Commitment<P>>,
}

impl<P: Clone + Eq> SessionTable<P> {
    /// An empty table.
    pub fn new(limits: SessionLimits) -> Self {
        SessionTable {
            limits,
            entries: HashMap::new(),
        }
    }

    /// Commit to `key` for `parent` (the negotiating neighbour, or `None`
    /// when this router initiates). Expired entries are purged first (their
    /// releases are returned through [`SessionTable::expire`] only, so call
    /// that from the timer as well).
    pub fn try_commit(
        &mut self,
        key: SessionKey,
        parent: Option<P>,
        now: Duration,
    ) -> Result<(), SessionError> {
        if let Some(e) = self.entries.get(&key) {
            if now.saturating_sub(e.last_active) < self.limits.idle_timeout {
                return Err(SessionError::AlreadyCommitted(key));
            }
            self.entries.remove(&key);
        }
        if self.entries.len() >= self.limits.capacity {
            let timeout = self.limits.idle_timeout;
            self.entries
                .retain(|_, e| now.saturating_sub(e.last_active) < timeout);
            if self.entries.len() >= self.limits.capacity {
                return Err(SessionError::Full(self.limits.capacity));
            }
        }
        self.entries.insert(
            key,
            Commitment {
                parent,
                sub_delegates: Vec::new(),
                last_active: now,
            },
        );
        Ok(())
    }

    /// Whether this router is committed to `key` (and not expired at `now`).
    pub fn is_committed(&self, key: &SessionKey, now: Duration) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| now.saturating_sub(e.last_active) < self.limits.idle_timeout)
    }

    /// The commitment for `key`.
    pub fn get(&self, key: &SessionKey) -> Option<&Commitment<P>> {
        self.entries.get(key)
    }

    /// Record activity (a piece request, data) on the session. An entry
    /// already idle for `idle_timeout` is dead even if not purged yet:
    /// `UnknownSession`.
    pub fn touch(&mut self, key: &SessionKey, now: Duration) -> Result<(), SessionError> {
        let e = self.live_mut(key, now)?;
        e.last_active = e.last_active.max(now);
        Ok(())
    }

    fn live_mut(
        &mut self,
        key: &SessionKey,
        now: Duration,
    ) -> Result<&mut Commitment<P>, SessionError> {
        let timeout = self.limits.idle_timeout;
        self.entries
            .get_mut(key)
            .filter(|e| now.saturating_sub(e.last_active) < timeout)
            .ok_or(SessionError::UnknownSession(*key))
    }

    /// Record that `peer` committed to us for `key` (we sub-delegated).
    pub fn add_sub_delegate(
        &mut self,
        key: &SessionKey,
        peer: P,
        now: Duration,
    ) -> Result<(), SessionError> {
        let max = self.limits.max_sub_delegates;
        let e = self.live_mut(key, now)?;
        if !e.sub_delegates.contains(&peer) {
            if e.sub_delegates.len() >= max {
                return Err(SessionError::TooManySubDelegates(*key));
            }
            e.sub_delegates.push(peer);
        }
        e.last_active = e.last_active.max(now);
        Ok(())
    }

    /// Forget a sub-delegate (it refused, finished its part, or is gone).
    pub fn remove_sub_delegate(&mut self, key: &SessionKey, peer: &P) {
        if let Some(e) = self.entries.get_mut(key) {
            e.sub_delegates.retain(|p| p != peer);
        }
    }

    /// Cancel `key`: the commitment is released and the returned
    /// sub-delegates must be sent a cancel (which they apply to their own
    /// tables, and so on down the tree). `None` if not committed.
    pub fn cancel(&mut self, key: &SessionKey) -> Option<Released<P>> {
        self.entries.remove(key).map(|e| Released {
            key: *key,
            parent: e.parent,
            sub_delegates: e.sub_delegates,
        })
    }

    /// The session completed: same as [`SessionTable::cancel`] (sub-delegates
    /// still holding state should be told).
    pub fn complete(&mut self, key: &SessionKey) -> Option<Released<P>> {
        self.cancel(key)
    }

    /// Release every session idle for `idle_timeout` at `now`.
    pub fn expire(&mut self, now: Duration) -> Vec<Released<P>> {
        let timeout = self.limits.idle_timeout;
        let dead: Vec<SessionKey> = self
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_sub(e.last_active) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        dead.iter().filter_map(|k| self.cancel(k)).collect()
    }

    /// When the next entry expires.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.entries
            .values()
            .map(|e| e.last_active.saturating_add(self.limits.idle_timeout))
            .min()
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SessionKey {
        SessionKey::from_bytes([b; 16])
    }

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    fn table() -> SessionTable<u32> {
        SessionTable::new(SessionLimits {
            capacity: 2,
            idle_timeout: ms(1000),
            max_sub_delegates: 2,
        })
    }

    #[test]
    fn refuses_second_commit_until_released() {
        let mut t = table();
        t.try_commit(key(1), Some(7), ms(0)).unwrap();
        assert_eq!(
            t.try_commit(key(1), Some(8), ms(10)),
            Err(SessionError::AlreadyCommitted(key(1)))
        );
        assert!(t.is_committed(&key(1), ms(10)));
        let r = t.cancel(&key(1)).unwrap();
        assert_eq!(r.parent, Some(7));
        t.try_commit(key(1), Some(8), ms(20)).unwrap();
        assert!(t.complete(&key(1)).is_some());
        assert!(t.cancel(&key(1)).is_none());
    }

    #[test]
    fn different_keys_are_independent_and_bounded() {
        let mut t = table();
        t.try_commit(key(1), None, ms(0)).unwrap();
        t.try_commit(key(2), None, ms(0)).unwrap();
        assert_eq!(
            t.try_commit(key(3), None, ms(10)),
            Err(SessionError::Full(2))
        );
        // Once key 1 is idle for the timeout, its slot is reusable.
        t.touch(&key(2), ms(900)).unwrap();
        t.try_commit(key(3), None, ms(1000)).unwrap();
        assert!(!t.is_committed(&key(1), ms(1000)));
        assert!(t.is_committed(&key(2), ms(1000)));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn expiry_releases_and_reports_sub_delegates() {
        let mut t = table();
        t.try_commit(key(1), Some(1), ms(0)).unwrap();
        t.add_sub_delegate(&key(1), 5, ms(100)).unwrap();
        t.add_sub_delegate(&key(1), 5, ms(100)).unwrap();
        t.add_sub_delegate(&key(1), 6, ms(200)).unwrap();
        assert_eq!(
            t.add_sub_delegate(&key(1), 9, ms(200)),
            Err(SessionError::TooManySubDelegates(key(1)))
        );
        assert_eq!(t.poll_timeout(), Some(ms(1200)));
        assert!(t.expire(ms(1199)).is_empty());
        let rel = t.expire(ms(1200));
        assert_eq!(rel.len(), 1);
        assert_eq!(rel[0].sub_delegates, vec![5, 6]);
        assert!(t.is_empty());
        // An expired key can be committed again.
        t.try_commit(key(1), Some(2), ms(1300)).unwrap();
    }

    #[test]
    fn stale_entry_does_not_block_recommit() {
        let mut t = table();
        t.try_commit(key(1), Some(1), ms(0)).unwrap();
        // No expire() call: a stale entry must not refuse forever.
        t.try_commit(key(1), Some(2), ms(5000)).unwrap();
        assert_eq!(t.get(&key(1)).unwrap().parent, Some(2));
    }

    #[test]
    fn cancel_propagates_down_a_tree() {
        // Router tables of a chain 0 -> 1 -> {2, 3}.
        let mut tables: Vec<SessionTable<usize>> = (0..4)
            .map(|_| SessionTable::new(SessionLimits::default()))
            .collect();
        let k = key(9);
        tables[0].try_commit(k, None, ms(0)).unwrap();
        tables[1].try_commit(k, Some(0), ms(1)).unwrap();
        tables[0].add_sub_delegate(&k, 1, ms(1)).unwrap();
        for c in [2, 3] {
            tables[c].try_commit(k, Some(1), ms(2)).unwrap();
            tables[1].add_sub_delegate(&k, c, ms(2)).unwrap();
        }
        let mut queue = vec![0usize];
        let mut cancelled = 0;
        while let Some(r) = queue.pop() {
            if let Some(rel) = tables[r].cancel(&k) {
                cancelled += 1;
                queue.extend(rel.sub_delegates);
            }
        }
        assert_eq!(cancelled, 4);
        assert!(tables.iter().all(|t| t.is_empty()));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Commit(u8, u32),
        Touch(u8),
        Sub(u8, u32),
        Cancel(u8),
        Expire,
        Tick(u16),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u8..6, 0u32..5).prop_map(|(k, p)| Op::Commit(k, p)),
            2 => (0u8..6).prop_map(Op::Touch),
            2 => (0u8..6, 0u32..5).prop_map(|(k, p)| Op::Sub(k, p)),
            1 => (0u8..6).prop_map(Op::Cancel),
            1 => Just(Op::Expire),
            2 => (0u16..800).prop_map(Op::Tick),
        ]
    }

    proptest::proptest! {
        /// Against a model: a key is committed at most once while live, the
        /// table never exceeds its capacity, and sub-delegates are bounded.
        #[test]
        fn table_matches_model(ops in proptest::collection::vec(op(), 0..200)) {
            let limits = SessionLimits { capacity: 3, idle_timeout: ms(1000), max_sub_delegates: 2 };
            let mut t: SessionTable<u32> = SessionTable::new(limits);
            // key -> last activity
            let mut model: std::collections::HashMap<u8, Duration> = Default::default();
            let mut now = ms(0);
            for o in ops {
                let live = |m: &std::collections::HashMap<u8, Duration>, k: u8, now: Duration| {
                    m.get(&k).is_some_and(|l| now.saturating_sub(*l) < ms(1000))
                };
                match o {
                    Op::Commit(k, p) => {
                        let r = t.try_commit(key(k), Some(p), now);
                        if live(&model, k, now) {
                            proptest::prop_assert_eq!(r, Err(SessionError::AlreadyCommitted(key(k))));
                        } else {
                            let live_count = model.keys().filter(|x| live(&model, **x, now)).count();
                            if live_count < 3 {
                                proptest::prop_assert_eq!(r.clone(), Ok(()));
                            }
                            if r.is_ok() {
                                model.insert(k, now);
                            }
                        }
                    }
                    Op::Touch(k) => {
                        let ok = t.touch(&key(k), now).is_ok();
                        proptest::prop_assert_eq!(ok, live(&model, k, now));
                        if ok && let Some(l) = model.get_mut(&k) { *l = now; }
                    }
                    Op::Sub(k, p) => {
                        let r = t.add_sub_delegate(&key(k), p, now);
                        if !live(&model, k, now) {
                            proptest::prop_assert_eq!(r.clone(), Err(SessionError::UnknownSession(key(k))));
                        }
                        if r.is_ok() {
                            if let Some(l) = model.get_mut(&k) { *l = now; }
                        }
                        if let Some(c) = t.get(&key(k)) {
                            proptest::prop_assert!(c.sub_delegates.len() <= 2);
                        }
                    }
                    Op::Cancel(k) => {
                        let r = t.cancel(&key(k));
                        if live(&model, k, now) {
                            proptest::prop_assert!(r.is_some());
                        }
                        model.remove(&k);
                    }
                    Op::Expire => {
                        for rel in t.expire(now) {
                            let k = rel.key.0[0];
                            proptest::prop_assert!(!live(&model, k, now));
                            model.remove(&k);
                        }
                    }
                    Op::Tick(d) => now += ms(d as u64),
                }
                proptest::prop_assert!(t.len() <= 3);
                for k in 0..6u8 {
                    proptest::prop_assert_eq!(t.is_committed(&key(k), now), live(&model, k, now));
                }
            }
        }
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let mut t: SessionTable<u32> = SessionTable::new(SessionLimits {
            capacity: 0,
            idle_timeout: Duration::MAX,
            max_sub_delegates: 0,
        });
        assert_eq!(
            t.try_commit(key(1), None, Duration::MAX),
            Err(SessionError::Full(0))
        );
        let mut t: SessionTable<u32> = SessionTable::new(SessionLimits::default());
        t.try_commit(key(1), None, Duration::MAX).unwrap();
        assert_eq!(t.poll_timeout(), Some(Duration::MAX));
        assert!(t.expire(Duration::MAX).is_empty());
        assert!(
            t.touch(&key(1), Duration::ZERO).is_ok(),
            "time going back is tolerated"
        );
    }

    #[test]
    fn debug_does_not_print_whole_key() {
        assert_eq!(format!("{:?}", key(0xab)), "SessionKey(abababab…)");
    }
}
