//! Paces synthesised audio to the carrier: one 160-byte μ-law frame (20 ms) per tick, marks
//! after the frames they follow, and `clear` (dropping everything queued) on barge-in. The first
//! frame after silence goes out at once; the rest follow the 20 ms clock.
//!
//! The player runs inside the task that owns the WebSocket's sending half and writes each
//! message to it itself: a frame costs one timer wake-up and one allocation (its message);
//! audio is copied into whole frames as it arrives, and the count of queued frames is kept as
//! frames come and go.
//!
//! A call's buffered audio is bounded: the player takes new audio only while less than
//! [`MAX_QUEUED_FRAMES`] (1.28 s) wait, and at most [`COMMANDS`] chunks wait for it, so a long
//! reply waits upstream (the turn's synthesis stream, and through HTTP/2 flow control the
//! provider) instead of in memory. `clear` does not
//! wait behind that audio: it is signalled apart, and drops what the commands still hold too.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{
    protocol::{Encoder, FRAME_BYTES},
    quality::{Outbound, Sentence},
};

/// The duration of one frame.
const FRAME_TIME: Duration = Duration::from_millis(20);
/// μ-law silence, used to pad the last frame of a sentence.
const SILENCE: u8 = 0xFF;
/// Queue capacity kept when it empties (frames and marks; 2.5 s of audio).
const SHRINK_ABOVE: usize = 128;
/// Commands waiting for the player (chunks of at most 8,000 bytes, 1 s, from provider-gateway;
/// and marks). With the queue, 2 to 5 s of a reply are ready ahead of the 20 ms clock.
const COMMANDS: usize = 4;
/// Frames the player holds before it takes more audio (1.28 s); with the chunk that crosses
/// it, the queue stays within [`SHRINK_ABOVE`] items (22 KiB), never regrown per reply.
pub const MAX_QUEUED_FRAMES: usize = 64;

pub enum Command {
    /// Audio to play; `first_sent` learns when its first frame went out.
    Audio { bytes: Vec<u8>, first_sent: Option<oneshot::Sender<Instant>> },
    /// A mark after everything queued so far.
    Mark(String),
}

enum Item {
    Frame([u8; FRAME_BYTES], Option<oneshot::Sender<Instant>>),
    Mark(String),
}

/// Where the player's messages go: the WebSocket, or a channel in tests. `false` once it is
/// gone.
pub trait Out {
    fn send(&mut self, text: String) -> impl Future<Output = bool> + Send;
}

impl Out for mpsc::Sender<String> {
    async fn send(&mut self, text: String) -> bool {
        mpsc::Sender::send(self, text).await.is_ok()
    }
}

/// Handle of the playback: commands in, and how many frames wait.
#[derive(Clone)]
pub struct Playback {
    pub commands: mpsc::Sender<Command>,
    queued: Arc<AtomicUsize>,
    /// One pending `clear` at most: a second one before the player took the first is the same.
    clear: mpsc::Sender<()>,
    /// What was played and when its marks are due back (line quality).
    pub quality: Arc<Outbound>,
}

/// The playing side, run by the WebSocket's writer ([`Player::run`]).
pub struct Player {
    encoder: Encoder,
    commands: mpsc::Receiver<Command>,
    queued: Arc<AtomicUsize>,
    clear: mpsc::Receiver<()>,
    quality: Arc<Outbound>,
}

impl Playback {
    /// Frames waiting to be sent.
    pub fn queued_frames(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Drops everything queued (and the audio still in the commands) and tells the carrier to
    /// drop its buffer: barge-in. Not queued behind audio.
    pub fn clear(&self) {
        // Full: a clear is already pending, and it drops the same.
        let _ = self.clear.try_send(());
    }

    /// A playback for stream `stream_sid` and its player, recording what it plays in
    /// `quality`.
    pub fn new(stream_sid: &str, quality: Arc<Outbound>) -> (Self, Player) {
        let (commands, rx) = mpsc::channel(COMMANDS);
        let queued = Arc::new(AtomicUsize::new(0));
        let (clear, cleared) = mpsc::channel(1);
        (
            Self { commands, queued: queued.clone(), clear, quality: quality.clone() },
            Player { encoder: Encoder::new(stream_sid), commands: rx, queued, clear: cleared, quality },
        )
    }

    /// A playback whose player runs on its own task, writing to `out`.
    pub fn start(stream_sid: &str, mut out: mpsc::Sender<String>) -> Self {
        let (playback, player) = Self::new(stream_sid, Arc::new(Outbound::new(Duration::from_secs(3))));
        tokio::spawn(async move { player.run(&mut out).await });
        playback
    }
}

/// Frames queued for sending, and the one being filled.
struct Queue {
    items: VecDeque<Item>,
    frames: usize,
    partial: [u8; FRAME_BYTES],
    partial_len: usize,
    partial_first: Option<oneshot::Sender<Instant>>,
}

impl Queue {
    fn new() -> Self {
        Self { items: VecDeque::new(), frames: 0, partial: [SILENCE; FRAME_BYTES], partial_len: 0, partial_first: None }
    }

    /// Cuts `bytes` into frames (the rest waits in the partial frame); `first_sent` goes with
    /// the frame its first byte starts, or is answered at once when there is none.
    fn audio(&mut self, bytes: &[u8], mut first_sent: Option<oneshot::Sender<Instant>>) {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.partial_len == 0 && self.partial_first.is_none() {
                self.partial_first = first_sent.take();
            }
            let n = (FRAME_BYTES - self.partial_len).min(rest.len());
            self.partial[self.partial_len..self.partial_len + n].copy_from_slice(&rest[..n]);
            self.partial_len += n;
            rest = &rest[n..];
            if self.partial_len == FRAME_BYTES {
                self.push_partial();
            }
        }
        // Not handed to a frame above (no bytes, or a frame already waiting with its own
        // report): wait for the partial frame, or report at once rather than never.
        if let Some(tx) = first_sent {
            if self.partial_first.is_none() && self.partial_len > 0 {
                self.partial_first = Some(tx);
            } else {
                let _ = tx.send(Instant::now());
            }
        }
    }

    fn push_partial(&mut self) {
        self.items.push_back(Item::Frame(self.partial, self.partial_first.take()));
        self.frames += 1;
        self.partial_len = 0;
    }

    /// A mark after everything so far: the partial frame is padded with silence and queued.
    fn mark(&mut self, name: String) {
        if self.partial_len > 0 {
            self.partial[self.partial_len..].fill(SILENCE);
            self.push_partial();
        }
        self.items.push_back(Item::Mark(name));
    }

    fn clear(&mut self) {
        self.items.clear();
        self.shrink();
        self.frames = 0;
        self.partial_len = 0;
        self.partial_first = None;
    }

    fn pop(&mut self) -> Option<Item> {
        let item = self.items.pop_front();
        if let Some(Item::Frame(..)) = item {
            self.frames -= 1;
        }
        if self.items.is_empty() {
            self.shrink();
        }
        item
    }

    /// A long reply grew the queue (176 bytes a frame): give the memory back once it has played.
    fn shrink(&mut self) {
        if self.items.capacity() > SHRINK_ABOVE {
            self.items.shrink_to(SHRINK_ABOVE);
        }
    }
}

impl Player {
    /// Plays until every [`Playback`] handle is gone or `out` is.
    pub async fn run(mut self, out: &mut impl Out) {
        let mut queue = Queue::new();
        // When the next frame may go: 20 ms after the previous one, or at once after silence.
        let mut next_due = Instant::now();
        let mut counted = 0;
        let mut sentence = Sentence::default();
        // `clear` comes on a channel rather than a `Notify`: this loop wakes for every frame, and
        // a waiting `Notified` takes its lock at each poll, a channel's receiver does not. Its
        // senders are the `Playback` handles, as the commands' are: once they are gone the
        // commands end the loop.
        let mut clear_open = true;
        loop {
            tokio::select! {
                biased;
                cleared = self.clear.recv(), if clear_open => {
                    if cleared.is_none() {
                        clear_open = false;
                        continue;
                    }
                    queue.clear();
                    // What was sent before the clear and not yet taken is dropped with it.
                    while let Ok(command) = self.commands.try_recv() {
                        if let Command::Audio { first_sent: Some(tx), .. } = command {
                            let _ = tx.send(Instant::now());
                        }
                    }
                    if !out.send(self.encoder.clear()).await { return; }
                    self.quality.cleared(&mut sentence);
                }
                command = self.commands.recv(), if queue.frames < MAX_QUEUED_FRAMES => match command {
                    None => return,
                    Some(Command::Audio { bytes, first_sent }) => queue.audio(&bytes, first_sent),
                    Some(Command::Mark(name)) => queue.mark(name),
                },
                () = tokio::time::sleep_until(next_due), if !queue.items.is_empty() => {
                    if !self.send_next(&mut queue, &mut sentence, out).await { return; }
                    let now = Instant::now();
                    // On schedule: exactly 20 ms later. After a stall or silence: 20 ms from now.
                    next_due = if next_due + FRAME_TIME < now { now + FRAME_TIME } else { next_due + FRAME_TIME };
                }
            }
            if queue.frames != counted {
                counted = queue.frames;
                self.queued.store(counted, Ordering::Relaxed);
            }
        }
    }

    /// Sends the marks at the head of the queue and then one frame (and the marks right behind
    /// it).
    async fn send_next(&self, queue: &mut Queue, sentence: &mut Sentence, out: &mut impl Out) -> bool {
        while let Some(item) = queue.pop() {
            match item {
                Item::Mark(name) => {
                    if !out.send(self.encoder.mark(&name)).await {
                        return false;
                    }
                    self.quality.mark_sent(sentence, name, Instant::now());
                }
                Item::Frame(frame, first_sent) => {
                    if !out.send(self.encoder.media(&frame[..])).await {
                        return false;
                    }
                    let now = Instant::now();
                    self.quality.frame_sent(sentence, now);
                    if let Some(tx) = first_sent {
                        let _ = tx.send(now);
                    }
                    while let Some(Item::Mark(_)) = queue.items.front() {
                        if let Some(Item::Mark(name)) = queue.pop() {
                            if !out.send(self.encoder.mark(&name)).await {
                                return false;
                            }
                            self.quality.mark_sent(sentence, name, now);
                        }
                    }
                    return true;
                }
            }
        }
        true
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn event(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn frames_are_paced_at_20_ms_with_marks_after_them_and_clear_drops_the_rest() {
        let (out_tx, mut out) = mpsc::channel(1024);
        let playback = Playback::start("MZ1", out_tx);
        let (first_tx, first_rx) = oneshot::channel();
        // 3.5 frames of audio, then a mark: four frames (the last padded), then the mark.
        playback.commands.send(Command::Audio { bytes: vec![1; 560], first_sent: Some(first_tx) }).await.unwrap();
        playback.commands.send(Command::Mark("turn-1".into())).await.unwrap();
        let started = Instant::now();
        let mut times = Vec::new();
        let mut events = Vec::new();
        while events.len() < 5 {
            let e = event(&out.recv().await.unwrap());
            times.push(started.elapsed());
            events.push(e);
        }
        assert!(first_rx.await.is_ok());
        let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["media", "media", "media", "media", "mark"]);
        for pair in times[..4].windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(20), "{times:?}");
        }
        let last = base64_len(&events[3]);
        assert_eq!(last, FRAME_BYTES, "the last frame is padded to 20 ms");

        // A long reply, cleared after a few frames: nothing more is sent after `clear`.
        playback.commands.send(Command::Audio { bytes: vec![2; 160 * 100], first_sent: None }).await.unwrap();
        for _ in 0..3 {
            assert_eq!(event(&out.recv().await.unwrap())["event"], "media");
        }
        playback.clear();
        let mut after = Vec::new();
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), out.recv()).await {
            after.push(event(&e)["event"].as_str().unwrap().to_string());
        }
        assert_eq!(after.last().map(String::as_str), Some("clear"));
        assert!(after.len() <= 2, "at most one frame raced the clear: {after:?}");
        assert_eq!(playback.queued_frames(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn audio_arriving_frame_by_frame_is_still_paced() {
        let (out_tx, mut out) = mpsc::channel(1024);
        let playback = Playback::start("MZ1", out_tx);
        // A fast synthesiser: 50 one-frame chunks at once.
        for _ in 0..50 {
            playback.commands.send(Command::Audio { bytes: vec![3; FRAME_BYTES], first_sent: None }).await.unwrap();
        }
        let started = Instant::now();
        for _ in 0..50 {
            assert_eq!(event(&out.recv().await.unwrap())["event"], "media");
        }
        assert_eq!(started.elapsed(), Duration::from_millis(49 * 20), "one frame per 20 ms, not a burst");
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_reply_waits_upstream_and_clear_drops_it_at_once() {
        let (out_tx, mut out) = mpsc::channel(100_000);
        let playback = Playback::start("MZ1", out_tx);
        // 60 s of audio offered in 0.64 s chunks, as fast as the player takes them.
        let feeder = tokio::spawn({
            let commands = playback.commands.clone();
            async move {
                for _ in 0..94 {
                    if commands
                        .send(Command::Audio { bytes: vec![5; 32 * FRAME_BYTES], first_sent: None })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        let mut most = 0;
        for _ in 0..100 {
            assert_eq!(event(&out.recv().await.unwrap())["event"], "media");
            most = most.max(playback.queued_frames());
        }
        assert!(most <= MAX_QUEUED_FRAMES + 32, "at most 1.28 s (and a chunk) held: {most}");
        assert!(!feeder.is_finished(), "the rest waits upstream");
        // Barge-in (the reply's turn is cancelled with it): nothing more is played, neither the
        // queue nor what the commands hold.
        feeder.abort();
        playback.clear();
        let mut after = Vec::new();
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), out.recv()).await {
            let kind = event(&e)["event"].as_str().unwrap().to_string();
            if kind == "clear" {
                break;
            }
            after.push(kind);
        }
        assert!(after.len() <= 1, "at most one frame raced the clear: {after:?}");
        assert_eq!(playback.queued_frames(), 0);
    }

    fn base64_len(e: &serde_json::Value) -> usize {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(e["media"]["payload"].as_str().unwrap()).unwrap().len()
    }
}
