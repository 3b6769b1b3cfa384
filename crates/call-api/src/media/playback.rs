//! Paces synthesised audio to the carrier: one 160-byte μ-law frame (20 ms) per tick, marks
//! after the frames they follow, and `clear` (dropping everything queued) on barge-in. The first
//! frame after silence goes out at once; the rest follow the 20 ms clock.

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

use super::protocol::{self, FRAME_BYTES};

/// The duration of one frame.
const FRAME_TIME: Duration = Duration::from_millis(20);
/// μ-law silence, used to pad the last frame of a sentence.
const SILENCE: u8 = 0xFF;

pub enum Command {
    /// Audio to play; `first_sent` learns when its first frame went out.
    Audio { bytes: Vec<u8>, first_sent: Option<oneshot::Sender<Instant>> },
    /// A mark after everything queued so far.
    Mark(String),
    /// Drop everything queued and tell the carrier to drop its buffer.
    Clear,
}

enum Item {
    Frame(Vec<u8>, Option<oneshot::Sender<Instant>>),
    Mark(String),
}

/// Handle of the playback task.
#[derive(Clone)]
pub struct Playback {
    pub commands: mpsc::Sender<Command>,
    queued: Arc<AtomicUsize>,
}

impl Playback {
    /// Frames waiting to be sent.
    pub fn queued_frames(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Starts the task; `out` is the WebSocket writer's channel.
    pub fn start(stream_sid: String, out: mpsc::Sender<String>) -> Self {
        let (commands, rx) = mpsc::channel(256);
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(stream_sid, rx, out, queued.clone()));
        Self { commands, queued }
    }
}

async fn run(stream_sid: String, mut rx: mpsc::Receiver<Command>, out: mpsc::Sender<String>, queued: Arc<AtomicUsize>) {
    let mut queue: VecDeque<Item> = VecDeque::new();
    let mut partial: Vec<u8> = Vec::with_capacity(FRAME_BYTES);
    let mut partial_first: Option<oneshot::Sender<Instant>> = None;
    // When the next frame may go: 20 ms after the previous one, or at once after silence.
    let mut next_due = Instant::now();
    loop {
        tokio::select! {
            command = rx.recv() => match command {
                None => return,
                Some(Command::Audio { bytes, first_sent }) => {
                    let mut first_sent = first_sent;
                    for byte in bytes {
                        if partial.is_empty() && partial_first.is_none() {
                            partial_first = first_sent.take();
                        }
                        partial.push(byte);
                        if partial.len() == FRAME_BYTES {
                            queue.push_back(Item::Frame(std::mem::take(&mut partial), partial_first.take()));
                        }
                    }
                    // Not handed to a frame above (no bytes, or a frame already waiting with its
                    // own report): wait for the partial frame, or report at once rather than never.
                    if let Some(tx) = first_sent {
                        if partial_first.is_none() && !partial.is_empty() {
                            partial_first = Some(tx);
                        } else {
                            let _ = tx.send(Instant::now());
                        }
                    }
                }
                Some(Command::Mark(name)) => {
                    if !partial.is_empty() {
                        partial.resize(FRAME_BYTES, SILENCE);
                        queue.push_back(Item::Frame(std::mem::take(&mut partial), partial_first.take()));
                    }
                    queue.push_back(Item::Mark(name));
                }
                Some(Command::Clear) => {
                    queue.clear();
                    partial.clear();
                    partial_first = None;
                    if out.send(protocol::clear(&stream_sid)).await.is_err() { return; }
                }
            },
            () = tokio::time::sleep_until(next_due), if !queue.is_empty() => {
                if !send_next(&stream_sid, &mut queue, &out).await { return; }
                let now = Instant::now();
                // On schedule: exactly 20 ms later. After a stall or silence: 20 ms from now.
                next_due = if next_due + FRAME_TIME < now { now + FRAME_TIME } else { next_due + FRAME_TIME };
            }
        }
        queued.store(queue.iter().filter(|i| matches!(i, Item::Frame(..))).count(), Ordering::Relaxed);
    }
}

/// Sends the marks at the head of the queue and then one frame.
async fn send_next(stream_sid: &str, queue: &mut VecDeque<Item>, out: &mpsc::Sender<String>) -> bool {
    while let Some(item) = queue.pop_front() {
        match item {
            Item::Mark(name) => {
                if out.send(protocol::mark(stream_sid, &name)).await.is_err() {
                    return false;
                }
            }
            Item::Frame(frame, first_sent) => {
                if out.send(protocol::media(stream_sid, &frame)).await.is_err() {
                    return false;
                }
                if let Some(tx) = first_sent {
                    let _ = tx.send(Instant::now());
                }
                // Marks right behind the frame go with it.
                while let Some(Item::Mark(_)) = queue.front() {
                    if let Some(Item::Mark(name)) = queue.pop_front()
                        && out.send(protocol::mark(stream_sid, &name)).await.is_err()
                    {
                        return false;
                    }
                }
                return true;
            }
        }
    }
    true
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
        let playback = Playback::start("MZ1".into(), out_tx);
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
        playback.commands.send(Command::Clear).await.unwrap();
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
        let playback = Playback::start("MZ1".into(), out_tx);
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

    fn base64_len(e: &serde_json::Value) -> usize {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(e["media"]["payload"].as_str().unwrap()).unwrap().len()
    }
}
