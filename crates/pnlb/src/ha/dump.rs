//! A backup's view of the full dump it asked for: it counts the flows
//! that arrived under the dump's id, and is synced only when the dump's End
//! says it sent exactly that many. A dump that lost a datagram on the way
//! is asked for again instead of passing for whole (before, any End made a
//! backup synced, and a synced backup may preempt).

/// What an End means for the backup.
#[derive(Debug, PartialEq, Eq)]
pub enum DumpEnd {
    /// Every flow of the dump arrived.
    Whole,
    /// `arrived` of `sent` flows arrived: ask again.
    Short { arrived: u64, sent: u64 },
}

#[derive(Default)]
pub struct DumpReceiver {
    /// The dump being received and its flows so far.
    current: Option<(u32, u64)>,
}

impl DumpReceiver {
    /// A Flows message: counted when it belongs to a dump.
    pub fn flows(&mut self, dump: u32, flows: usize) {
        if dump == 0 {
            return;
        }
        match &mut self.current {
            Some((id, arrived)) if *id == dump => *arrived += flows as u64,
            _ => self.current = Some((dump, flows as u64)),
        }
    }

    /// The dump's End, saying it sent `sent` flows.
    pub fn end(&mut self, dump: u32, sent: u32) -> DumpEnd {
        let arrived = match self.current.take() {
            Some((id, arrived)) if id == dump => arrived,
            _ => 0,
        };
        if arrived == u64::from(sent) {
            DumpEnd::Whole
        } else {
            DumpEnd::Short {
                arrived,
                sent: u64::from(sent),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_is_whole_only_when_every_flow_it_sent_arrived() {
        let mut receiver = DumpReceiver::default();
        receiver.flows(7, 8);
        receiver.flows(0, 8); // an incremental batch: not the dump's
        receiver.flows(7, 3);
        assert_eq!(receiver.end(7, 11), DumpEnd::Whole);

        receiver.flows(8, 8);
        assert_eq!(
            receiver.end(8, 16),
            DumpEnd::Short {
                arrived: 8,
                sent: 16
            },
            "a datagram lost on the way"
        );
        assert_eq!(receiver.end(9, 0), DumpEnd::Whole, "an empty table");
        receiver.flows(10, 8);
        assert_eq!(
            receiver.end(11, 8),
            DumpEnd::Short {
                arrived: 0,
                sent: 8
            },
            "another dump's End"
        );
    }
}
