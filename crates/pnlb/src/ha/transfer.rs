//! Full dumps over TCP (port [`SYNC_PORT`]): TCP paces the stream to what
//! the backup takes, acknowledges and retransmits, so a dump of a million
//! flows arrives whole over a lossy link, and a cut connection is a failed
//! dump, never a short one taken for whole.
//!
//! A backup without a full table connects to each peer in turn and sends a
//! Request with a random dump id; the active node (the others hang up)
//! answers with frames of that id, then (if asked: every node of this
//! build asks) the SNAT rests, then an End with how many flows it sent.
//! Every frame is signed; a frame of another dump id (a replayed stream)
//! or from another sender ends the transfer. Both sides work on
//! threads of their own: neither the daemon loop nor the advert thread
//! waits for a dump.
//!
//! Frames: a 4-byte big-endian length, then a sync message (sync.rs).

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::context::SyncContext;
use super::sync::{Kind, Message, Rest, ASKS_FOR_RESTS, MAX_MESSAGE, PER_FRAME, SYNC_PORT};
use crate::log::{info, warning};

/// How long a peer may take to connect, or to send the next frame.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the active node waits for a connected peer's request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

fn write_frame(out: &mut impl Write, message: &Message, key: &[u8]) -> std::io::Result<()> {
    let bytes = message.emit(key);
    out.write_all(&(bytes.len() as u32).to_be_bytes())?;
    out.write_all(&bytes)
}

/// The next frame; None at a clean end of stream.
fn read_frame(input: &mut impl Read, key: &[u8]) -> Result<Option<Message>> {
    let mut length = [0u8; 4];
    match input.read_exact(&mut length) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_MESSAGE {
        bail!("a frame of {length} bytes (at most {MAX_MESSAGE})");
    }
    let mut bytes = vec![0u8; length];
    input.read_exact(&mut bytes)?;
    Ok(Some(Message::parse(&bytes, key)?))
}

/// The active node's side: answers dump requests until `stop`.
pub fn serve(
    context: Arc<SyncContext>,
    master: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let bind = match context.me {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], SYNC_PORT)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], SYNC_PORT)),
    };
    let listener =
        TcpListener::bind(bind).with_context(|| format!("ha: cannot listen on tcp/{SYNC_PORT}"))?;
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, from)) => {
                    if let Err(err) = answer(&context, &master, stream, from) {
                        warning!("ha sync: full dump for {}: {err:#}", from.ip());
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => {
                    warning!("ha sync: accepting a dump request: {err}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }))
}

/// Answers one connection: one dump, if it asks right and we are active.
fn answer(
    context: &SyncContext,
    master: &AtomicBool,
    stream: TcpStream,
    from: SocketAddr,
) -> Result<()> {
    let peer = from.ip().to_canonical();
    if !context.peers.contains(&peer) {
        return Ok(());
    }
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(FRAME_TIMEOUT))?;
    let Some(request) = read_frame(&mut BufReader::new(&stream), &context.key)? else {
        return Ok(());
    };
    if request.kind != Kind::Request || !context.ours(&request) || request.sender != peer {
        bail!("not a dump request from a peer");
    }
    if !master.load(Ordering::Relaxed) {
        return Ok(());
    }
    let started = Instant::now();
    // Read before the table: every batch up to it is older than the dump.
    let covered = context.last_serial.load(Ordering::Relaxed);
    let flows = context.flows_to_tell()?;
    let read = started.elapsed();
    let mut out = BufWriter::with_capacity(1 << 16, &stream);
    let mut sent = 0usize;
    for chunk in flows.chunks(PER_FRAME) {
        let mut frame = context.message(Kind::Flows, context.named(chunk));
        frame.dump = request.dump;
        sent += frame.flows.len();
        write_frame(&mut out, &frame, &context.key)?;
    }
    let mut rests_sent = 0usize;
    if request.count & ASKS_FOR_RESTS != 0 {
        // Every rest that any service's snat_reuse_after may still hold.
        let longest =
            u64::try_from(pnlb_core::config::MAX_SNAT_REUSE_AFTER.as_nanos()).unwrap_or(u64::MAX);
        for chunk in context.tables.snat_rests(longest).chunks(PER_FRAME) {
            let mut frame = context.message(Kind::Rests, Vec::new());
            frame.dump = request.dump;
            frame.rests = chunk
                .iter()
                .map(|&(key, rested_ns)| Rest { key, rested_ns })
                .collect();
            rests_sent += chunk.len();
            write_frame(&mut out, &frame, &context.key)?;
        }
    }
    let mut end = context.message(Kind::End, Vec::new());
    end.dump = request.dump;
    end.count = u32::try_from(sent).unwrap_or(u32::MAX);
    end.serial = covered;
    write_frame(&mut out, &end, &context.key)?;
    out.flush()?;
    let took = started.elapsed();
    info!(
        "ha sync: sent full dump #{:08x} to {peer}: {sent} flow(s) and {rests_sent} SNAT rest(s) in {} ms (table read {} ms; {:.0} flows/s)",
        request.dump,
        took.as_millis(),
        read.as_millis(),
        sent as f64 / took.as_secs_f64().max(1e-6)
    );
    Ok(())
}

/// What a backup's fetch came to.
#[derive(Debug)]
pub enum Fetched {
    /// Every flow of the dump arrived.
    Whole {
        from: IpAddr,
        dump: u32,
        flows: u64,
        installed: u64,
        /// Flows held here that the dump did not carry, removed.
        purged: u64,
        /// SNAT reply keys resting there, resting here now too.
        rests: u64,
        /// The last incremental serial the dump holds.
        covered: u32,
        took: Duration,
    },
    /// The dump's End counted more flows than arrived.
    Short {
        from: IpAddr,
        arrived: u64,
        sent: u64,
    },
    /// No peer answered as the active node.
    NoActive,
}

/// The backup's side: asks the peers in turn for a full dump and installs
/// it as it arrives.
pub fn fetch(context: &SyncContext) -> Result<Fetched> {
    let asked_ns = pnlb_dataplane::conntrack::monotonic_ns();
    for peer in &context.peers {
        let mut fetched = fetch_from(context, *peer)?;
        if let Fetched::Whole { purged, .. } = &mut fetched {
            // What the dump did not refresh, the active node no longer
            // holds (an end this node missed).
            *purged = context.tables.purge_untouched_since(asked_ns)?;
        }
        if !matches!(fetched, Fetched::NoActive) {
            return Ok(fetched);
        }
    }
    Ok(Fetched::NoActive)
}

/// One peer's dump (in a mesh, each node's of the flows it carries);
/// NoActive when it does not answer or hangs up at once.
pub fn fetch_from(context: &SyncContext, peer: IpAddr) -> Result<Fetched> {
    let dump = crate::secret::random_u32()?.max(1);
    let address = SocketAddr::new(peer, SYNC_PORT);
    let Ok(stream) = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) else {
        return Ok(Fetched::NoActive);
    };
    stream.set_read_timeout(Some(FRAME_TIMEOUT))?;
    stream.set_write_timeout(Some(FRAME_TIMEOUT))?;
    let mut request = context.message(Kind::Request, Vec::new());
    request.dump = dump;
    request.count = ASKS_FOR_RESTS;
    write_frame(&mut &stream, &request, &context.key)?;
    Ok(receive(context, &stream, peer, dump)?.unwrap_or(Fetched::NoActive))
}

/// Reads one dump; None when the peer hung up at once (not active).
fn receive(
    context: &SyncContext,
    stream: &TcpStream,
    peer: IpAddr,
    dump: u32,
) -> Result<Option<Fetched>> {
    let started = Instant::now();
    let mut input = BufReader::with_capacity(1 << 16, stream);
    let (mut arrived, mut installed, mut rests) = (0u64, 0u64, 0u64);
    loop {
        let Some(frame) = read_frame(&mut input, &context.key)? else {
            if arrived == 0 {
                return Ok(None);
            }
            bail!("{peer} hung up after {arrived} flow(s), before the dump's end");
        };
        if !context.ours(&frame) || frame.sender != peer || frame.dump != dump {
            bail!("a frame not of dump #{dump:08x} from {peer}");
        }
        match frame.kind {
            Kind::Flows => {
                arrived += frame.flows.len() as u64;
                installed += context.install(&frame.flows) as u64;
            }
            Kind::Rests => {
                rests += frame.rests.len() as u64;
                context.go_on_resting(&frame.rests);
            }
            Kind::End if u64::from(frame.count) == arrived => {
                return Ok(Some(Fetched::Whole {
                    from: peer,
                    dump,
                    flows: arrived,
                    installed,
                    purged: 0,
                    rests,
                    covered: frame.serial,
                    took: started.elapsed(),
                }))
            }
            Kind::End => {
                return Ok(Some(Fetched::Short {
                    from: peer,
                    arrived,
                    sent: u64::from(frame.count),
                }))
            }
            other => bail!("a {other:?} frame in dump #{dump:08x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_or_cut_ones_are_refused() {
        let message = Message {
            dump: 9,
            count: 3,
            ..Message::new(Kind::End, 1, "10.77.1.2".parse().unwrap(), Vec::new())
        };
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &message, b"key").unwrap();
        let back = read_frame(&mut bytes.as_slice(), b"key").unwrap().unwrap();
        assert_eq!((back.kind, back.dump, back.count), (Kind::End, 9, 3));
        assert!(read_frame(&mut [].as_slice(), b"key").unwrap().is_none());
        assert!(read_frame(&mut &bytes[..bytes.len() - 1], b"key").is_err());
        let huge = ((MAX_MESSAGE + 1) as u32).to_be_bytes();
        assert!(read_frame(&mut huge.as_slice(), b"key").is_err());
    }
}
