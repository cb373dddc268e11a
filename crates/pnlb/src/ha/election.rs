//! Who is active: a VRRP-like election (RFC 5798 §6.4, simplified). Only
//! the master advertises, every `interval`; a backup takes over when the
//! master has been silent for 3 intervals plus a skew (lower priorities
//! wait a little longer, so the best backup wins), when the master resigns
//! (priority 0), or — preemption — `preempt_delay` after it has seen a
//! master it outranks. Two masters (a healed partition) resolve
//! deterministically: the one with the lower (priority, address) yields.
//! A sick node (see [`Election::set_healthy`]) never becomes master and
//! resigns if it is one.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::advert::Advert;
use super::replay::ReplayGuard;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Backup,
    Master,
}

pub struct Election {
    me: IpAddr,
    priority: u8,
    interval: Duration,
    preempt_delay: Duration,
    role: Role,
    /// When a master we defer to was last heard (or, before any, our start).
    master_heard: Instant,
    /// Set while we outrank the current master: when we may take over.
    preempt_at: Option<Instant>,
    healthy: bool,
    /// Whether we hold the master's full table: preemption waits for it.
    synced: bool,
    /// Adverts already heard, per sender: heard again, they are replays.
    replay: ReplayGuard,
}

/// Whether (priority, address) `a` outranks `b`.
fn outranks(a: (u8, IpAddr), b: (u8, IpAddr)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 > b.1)
}

/// What an advert did.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    Counted,
    /// Already heard from that sender (see [`ReplayGuard`]).
    Replay,
}

impl Election {
    pub fn new(
        me: IpAddr,
        priority: u8,
        interval: Duration,
        preempt_delay: Duration,
        now: Instant,
    ) -> Self {
        Self {
            me,
            priority,
            interval,
            preempt_delay,
            role: Role::Backup,
            master_heard: now,
            preempt_at: None,
            healthy: true,
            synced: true,
            replay: ReplayGuard::default(),
        }
    }

    /// The priority we advertise: 0 (resigning) while sick.
    pub fn priority(&self) -> u8 {
        if self.healthy {
            self.priority
        } else {
            0
        }
    }

    /// 3 intervals plus a skew that grows as the priority falls.
    pub fn master_down(&self) -> Duration {
        self.interval * 3 + self.interval * u32::from(255 - self.priority) / 256
    }

    pub fn set_healthy(&mut self, healthy: bool) {
        self.healthy = healthy;
    }

    /// Preemption (failback) waits until we hold the master's full table.
    pub fn set_synced(&mut self, synced: bool) {
        self.synced = synced;
    }

    /// An authenticated advert from another node of the group.
    pub fn heard(&mut self, advert: &Advert, now: Instant) -> Heard {
        if !self.replay.accept(advert.sender, advert.sequence) {
            return Heard::Replay;
        }
        if !advert.master {
            return Heard::Counted;
        }
        if advert.priority == 0 {
            // The master resigns: take over at the next tick (if able).
            self.master_heard = now.checked_sub(self.master_down()).unwrap_or(now);
            return Heard::Counted;
        }
        let them = (advert.priority, advert.sender);
        let us = (self.priority(), self.me);
        match self.role {
            Role::Master if outranks(them, us) => {
                self.role = Role::Backup;
                self.master_heard = now;
                self.preempt_at = None;
            }
            Role::Master => {}
            Role::Backup => {
                self.master_heard = now;
                if outranks(us, them) {
                    self.preempt_at.get_or_insert(now + self.preempt_delay);
                } else {
                    self.preempt_at = None;
                }
            }
        }
        Heard::Counted
    }

    /// Time passing; returns the role now.
    pub fn tick(&mut self, now: Instant) -> Role {
        match self.role {
            Role::Master if !self.healthy => self.role = Role::Backup,
            Role::Backup if self.healthy => {
                let silent = now.duration_since(self.master_heard) >= self.master_down();
                let preempt = self.synced && self.preempt_at.is_some_and(|at| now >= at);
                if silent || preempt {
                    self.role = Role::Master;
                    self.preempt_at = None;
                }
            }
            _ => {}
        }
        self.role
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn node(address: &str, priority: u8, start: Instant) -> Election {
        Election::new(
            address.parse().unwrap(),
            priority,
            100 * MS,
            1000 * MS,
            start,
        )
    }

    fn advert(from: &str, priority: u8, sequence: u64) -> Advert {
        Advert {
            group: 1,
            priority,
            master: true,
            sender: from.parse().unwrap(),
            sequence,
        }
    }

    #[test]
    fn a_lone_node_becomes_master_after_three_silent_intervals() {
        let start = Instant::now();
        let mut n = node("10.0.0.2", 100, start);
        // 3 x 100 ms, plus a skew of 100 ms x (255 - 100) / 256 = 60 ms.
        assert_eq!(n.tick(start + 350 * MS), Role::Backup);
        assert_eq!(n.tick(start + 361 * MS), Role::Master);
    }

    #[test]
    fn a_backup_stays_while_the_master_advertises_and_takes_over_when_it_stops() {
        let start = Instant::now();
        let mut n = node("10.0.0.3", 100, start);
        for i in 1..20u64 {
            n.heard(&advert("10.0.0.2", 150, i), start + i as u32 * 100 * MS);
            assert_eq!(n.tick(start + i as u32 * 100 * MS), Role::Backup);
        }
        assert_eq!(n.tick(start + 2200 * MS), Role::Backup);
        assert_eq!(
            n.tick(start + 2300 * MS),
            Role::Master,
            "silent for 3 intervals + skew"
        );
    }

    #[test]
    fn a_returning_higher_priority_node_preempts_after_the_delay() {
        let start = Instant::now();
        let mut n = node("10.0.0.2", 150, start);
        for i in 1..=15u64 {
            let at = start + i as u32 * 100 * MS;
            n.heard(&advert("10.0.0.3", 100, i), at);
            let expected = if i < 11 { Role::Backup } else { Role::Master };
            assert_eq!(
                n.tick(at),
                expected,
                "at {i}00 ms (preempt_delay 1 s from the first advert)"
            );
        }
    }

    #[test]
    fn preemption_waits_for_the_full_table() {
        let start = Instant::now();
        let mut n = node("10.0.0.2", 150, start);
        n.set_synced(false);
        for i in 1..=30u64 {
            let at = start + i as u32 * 100 * MS;
            n.heard(&advert("10.0.0.3", 100, i), at);
            if i == 25 {
                n.set_synced(true);
            }
            let expected = if i < 25 { Role::Backup } else { Role::Master };
            assert_eq!(n.tick(at), expected, "at {i}00 ms");
        }
    }

    #[test]
    fn two_masters_resolve_by_priority_then_address() {
        let start = Instant::now();
        let mut low = node("10.0.0.9", 100, start);
        assert_eq!(low.tick(start + 400 * MS), Role::Master);
        low.heard(&advert("10.0.0.2", 150, 1), start + 500 * MS);
        assert_eq!(low.tick(start + 500 * MS), Role::Backup);

        let mut tie_low = node("10.0.0.2", 100, start);
        let mut tie_high = node("10.0.0.9", 100, start);
        tie_low.tick(start + 400 * MS);
        tie_high.tick(start + 400 * MS);
        tie_low.heard(&advert("10.0.0.9", 100, 1), start + 500 * MS);
        tie_high.heard(&advert("10.0.0.2", 100, 1), start + 500 * MS);
        assert_eq!(tie_low.tick(start + 500 * MS), Role::Backup);
        assert_eq!(tie_high.tick(start + 500 * MS), Role::Master);
    }

    #[test]
    fn replayed_adverts_do_not_count() {
        let start = Instant::now();
        let mut n = node("10.0.0.3", 100, start);
        assert_eq!(n.heard(&advert("10.0.0.2", 150, 5), start), Heard::Counted);
        assert_eq!(
            n.heard(&advert("10.0.0.2", 150, 5), start + 100 * MS),
            Heard::Replay
        );
        assert_eq!(
            n.heard(&advert("10.0.0.2", 150, 4), start + 200 * MS),
            Heard::Replay
        );
        assert_eq!(
            n.tick(start + 400 * MS),
            Role::Master,
            "replays did not keep the master alive"
        );
    }

    #[test]
    fn a_sick_node_resigns_and_a_resignation_is_taken_over_at_once() {
        let start = Instant::now();
        let mut master = node("10.0.0.2", 150, start);
        assert_eq!(master.tick(start + 400 * MS), Role::Master);
        master.set_healthy(false);
        assert_eq!(master.tick(start + 500 * MS), Role::Backup);
        assert_eq!(master.priority(), 0);
        assert_eq!(
            master.tick(start + 5000 * MS),
            Role::Backup,
            "never master while sick"
        );

        let mut backup = node("10.0.0.3", 100, start);
        backup.heard(&advert("10.0.0.2", 150, 1), start + 100 * MS);
        backup.heard(&advert("10.0.0.2", 0, 2), start + 150 * MS);
        assert_eq!(backup.tick(start + 150 * MS), Role::Master);
    }
}
