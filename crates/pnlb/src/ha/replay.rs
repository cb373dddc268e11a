//! Replay protection that no clock step can fool. A node picks a random
//! epoch when it starts and counts its messages within it; a message's
//! sequence is the epoch (high 32 bits) and the count (low 32). A receiver
//! accepts, per sender, a higher count in the sender's current epoch, or an
//! epoch it has not seen from that sender (the sender restarted); an epoch
//! the sender has left is a replay. Nothing here reads a clock: stepping
//! the wall clock an hour either way changes nothing (the wall-clock
//! sequences this replaces made a node that restarted after a step back
//! look like a replayer, ignored until the clock caught up).
//!
//! What it cannot stop, like any per-process state: right after a receiver
//! restarts, the first message of an epoch it never saw is taken as new —
//! the sender's next message (a new epoch for the receiver too) puts it
//! right, and the replayed epoch is refused from then on.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// Past epochs remembered per sender.
const PAST_EPOCHS: usize = 8;

/// The sending side: this process's epoch and its count.
pub struct Sequence {
    epoch: u32,
    count: u32,
}

impl Sequence {
    /// A random epoch for this start.
    pub fn start() -> Self {
        let epoch = crate::secret::random_u32().unwrap_or_else(|_| {
            // Without urandom (never on Linux), the process id and time still
            // differ between starts.
            std::process::id()
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos())
        });
        Self::with_epoch(epoch)
    }

    pub fn with_epoch(epoch: u32) -> Self {
        Self { epoch, count: 0 }
    }

    /// The next message's sequence. After 2^32 messages (a century of
    /// adverts) the epoch moves on, as if the process had restarted.
    pub fn next(&mut self) -> u64 {
        if self.count == u32::MAX {
            self.epoch = self.epoch.wrapping_add(1);
            self.count = 0;
        }
        self.count += 1;
        (u64::from(self.epoch) << 32) | u64::from(self.count)
    }
}

struct Sender {
    epoch: u32,
    count: u32,
    past: VecDeque<u32>,
}

/// The receiving side: what each sender has said so far. Callers pass only
/// authenticated messages from configured peers, so it holds one entry per
/// peer at most.
#[derive(Default)]
pub struct ReplayGuard {
    senders: HashMap<IpAddr, Sender>,
}

impl ReplayGuard {
    /// Whether `sequence` from `sender` is new (and then remembered).
    pub fn accept(&mut self, sender: IpAddr, sequence: u64) -> bool {
        let epoch = (sequence >> 32) as u32;
        let count = sequence as u32;
        let Some(known) = self.senders.get_mut(&sender) else {
            self.senders.insert(
                sender,
                Sender {
                    epoch,
                    count,
                    past: VecDeque::new(),
                },
            );
            return true;
        };
        if epoch == known.epoch {
            if count <= known.count {
                return false;
            }
            known.count = count;
            return true;
        }
        if known.past.contains(&epoch) {
            return false;
        }
        if known.past.len() == PAST_EPOCHS {
            known.past.pop_front();
        }
        known.past.push_back(known.epoch);
        known.epoch = epoch;
        known.count = count;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> IpAddr {
        "10.77.1.3".parse().unwrap()
    }

    #[test]
    fn counts_move_on_within_an_epoch_and_repeats_are_refused() {
        let mut sender = Sequence::with_epoch(7);
        let mut guard = ReplayGuard::default();
        let first = sender.next();
        let second = sender.next();
        assert!(guard.accept(peer(), first));
        assert!(guard.accept(peer(), second));
        assert!(!guard.accept(peer(), second), "the same message twice");
        assert!(!guard.accept(peer(), first), "an older one");
    }

    #[test]
    fn a_restarted_sender_is_heard_at_once_and_its_old_epoch_is_refused() {
        let mut guard = ReplayGuard::default();
        let mut before = Sequence::with_epoch(0xffff_0000);
        let old = before.next();
        for _ in 0..100 {
            assert!(guard.accept(peer(), before.next()));
        }
        // A restart draws a new epoch, smaller or larger: heard either way,
        // where a wall-clock sequence after a clock step back was not.
        let mut after = Sequence::with_epoch(3);
        assert!(guard.accept(peer(), after.next()));
        assert!(guard.accept(peer(), after.next()));
        assert!(!guard.accept(peer(), old), "the left epoch is a replay");
        assert!(!guard.accept(peer(), (0xffff_0000u64 << 32) | 500));
    }

    #[test]
    fn senders_are_kept_apart_and_memory_stays_bounded() {
        let mut guard = ReplayGuard::default();
        let other: IpAddr = "10.77.1.4".parse().unwrap();
        assert!(guard.accept(peer(), (1 << 32) | 5));
        assert!(guard.accept(other, (1 << 32) | 1), "another sender's count");
        for epoch in 2..100u64 {
            assert!(guard.accept(peer(), (epoch << 32) | 1));
        }
        assert!(guard.senders[&peer()].past.len() <= PAST_EPOCHS);
    }

    #[test]
    fn a_count_at_its_end_moves_to_the_next_epoch() {
        let mut sender = Sequence {
            epoch: 9,
            count: u32::MAX - 1,
        };
        let mut guard = ReplayGuard::default();
        assert!(guard.accept(peer(), sender.next()));
        let wrapped = sender.next();
        assert_eq!(wrapped >> 32, 10);
        assert!(guard.accept(peer(), wrapped));
    }
}
