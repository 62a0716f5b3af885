//! A list of games read by one statement and handed over in batches, as its reader
//! takes them: an unpaged `GET /api/games` holds a batch or two in memory whatever the
//! size of the catalog, where it held the whole list twice (games, then JSON).
//!
//! The statement runs on a task (or a blocking thread, on SQLite) of its own, which
//! sends each batch through a channel of [`IN_FLIGHT`] batches. A reader that takes no
//! batch for [`STALL`] ends the read, so that a client that stops reading does not hold
//! a connection, and on SQLite a snapshot of the file, for as long as it likes.

use super::StoreError;
use crate::domain::Game;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Games in one batch.
const BATCH: usize = 256;
/// Batches read ahead of the reader.
const IN_FLIGHT: usize = 2;
/// How long a batch waits for the reader before the read is given up.
const STALL: Duration = Duration::from_secs(30);

/// The games of a list, batch by batch. Ends with `None` once every game was handed
/// over; a read that failed or was given up ends with an error instead.
pub struct GameBatches {
    batches: mpsc::Receiver<Result<Batch, StoreError>>,
    finished: bool,
}

/// What goes through the channel: games, and whether they are the list's last.
struct Batch {
    games: Vec<Game>,
    last: bool,
}

/// The database reader's half: collects games into batches and sends each one.
pub(super) struct Batcher {
    sender: mpsc::Sender<Result<Batch, StoreError>>,
    games: Vec<Game>,
    stopped: bool,
    /// [`STALL`], but in tests.
    stall: Duration,
}

/// The reader is gone, or took no batch for [`STALL`]: the read should stop.
pub(super) struct Stopped;

pub(super) fn channel() -> (Batcher, GameBatches) {
    stalling_after(STALL)
}

fn stalling_after(stall: Duration) -> (Batcher, GameBatches) {
    let (sender, batches) = mpsc::channel(IN_FLIGHT);
    let batcher = Batcher {
        sender,
        games: Vec::with_capacity(BATCH),
        stopped: false,
        stall,
    };
    let batches = GameBatches {
        batches,
        finished: false,
    };
    (batcher, batches)
}

impl GameBatches {
    /// The next batch, never empty; `None` after the last.
    pub async fn next(&mut self) -> Option<Result<Vec<Game>, StoreError>> {
        if self.finished {
            return None;
        }
        let received = self.batches.recv().await;
        let batch = match received {
            Some(Ok(batch)) => batch,
            Some(Err(error)) => {
                self.finished = true;
                return Some(Err(error));
            }
            // The sender went without sending the last batch.
            None => {
                self.finished = true;
                return Some(Err(StoreError::Unavailable(format!(
                    "the list's read stopped before its end (it failed, or its reader \
                     took no games for {}s)",
                    STALL.as_secs()
                ))));
            }
        };
        self.finished = batch.last;
        if batch.games.is_empty() {
            return None;
        }
        Some(Ok(batch.games))
    }

    /// Every game, in one list.
    pub async fn collect(mut self) -> Result<Vec<Game>, StoreError> {
        let mut games = Vec::new();
        while let Some(batch) = self.next().await {
            games.extend(batch?);
        }
        Ok(games)
    }
}

impl Batcher {
    /// Adds a game, and sends the batch once it is full.
    pub(super) async fn push(&mut self, game: Game) -> Result<(), Stopped> {
        match self.add(game) {
            Some(full) => self.send(Ok(full)).await,
            None => Ok(()),
        }
    }

    /// As [`Self::push`], from a thread outside the runtime.
    pub(super) fn blocking_push(&mut self, runtime: &Handle, game: Game) -> Result<(), Stopped> {
        match self.add(game) {
            Some(full) => self.blocking_send(runtime, Ok(full)),
            None => Ok(()),
        }
    }

    /// Sends what is left as the last batch. A read that fails sends its error
    /// instead, and the games before it stay unsent: the reader fails as a whole.
    /// After [`Stopped`], nothing: the reader is gone, or ends in an error.
    pub(super) async fn finish(mut self, read: Result<(), StoreError>) {
        if let Some(last) = self.last(read) {
            let _ = self.send(last).await;
        }
    }

    /// As [`Self::finish`], from a thread outside the runtime.
    pub(super) fn blocking_finish(mut self, runtime: &Handle, read: Result<(), StoreError>) {
        if let Some(last) = self.last(read) {
            let _ = self.blocking_send(runtime, last);
        }
    }

    /// The last message: what is left, or the read's error; none after [`Stopped`].
    fn last(&mut self, read: Result<(), StoreError>) -> Option<Result<Batch, StoreError>> {
        let games = std::mem::take(&mut self.games);
        (!self.stopped).then(|| read.map(|()| Batch { games, last: true }))
    }

    /// The batch to send, once `game` fills it.
    fn add(&mut self, game: Game) -> Option<Batch> {
        self.games.push(game);
        (self.games.len() == BATCH).then(|| Batch {
            games: std::mem::replace(&mut self.games, Vec::with_capacity(BATCH)),
            last: false,
        })
    }

    /// As [`Self::send`], from a thread outside the runtime, which it enters only when
    /// the channel is full: most lists fit in it, and are sent without waiting.
    fn blocking_send(
        &mut self,
        runtime: &Handle,
        batch: Result<Batch, StoreError>,
    ) -> Result<(), Stopped> {
        match self.sender.try_send(batch) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(batch)) => runtime.block_on(self.send(batch)),
            Err(TrySendError::Closed(_)) => {
                self.stopped = true;
                Err(Stopped)
            }
        }
    }

    async fn send(&mut self, batch: Result<Batch, StoreError>) -> Result<(), Stopped> {
        let sent = self.sender.send_timeout(batch, self.stall).await;
        self.stopped = sent.is_err();
        sent.map_err(|_| Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ProcessingStatus;

    fn game(id: i64) -> Game {
        Game {
            id,
            title: format!("Game {id}"),
            platform_id: 1,
            platform_name: "NES".into(),
            genre_id: 1,
            genre_name: "Platformer".into(),
            developer: "Nintendo".into(),
            release_year: 1985,
            year_category: "1980s".into(),
            description: String::new(),
            image_url: None,
            processing_status: ProcessingStatus::Pending,
            version: 1,
            thumbnail_url: None,
            created_at: chrono::DateTime::UNIX_EPOCH,
            updated_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[tokio::test]
    async fn every_game_arrives_in_order_in_full_batches() {
        let (mut batcher, mut batches) = channel();
        let count = BATCH as i64 * 2 + 3;
        tokio::spawn(async move {
            for id in 0..count {
                assert!(batcher.push(game(id)).await.is_ok());
            }
            batcher.finish(Ok(())).await;
        });
        let mut sizes = Vec::new();
        let mut ids = Vec::new();
        while let Some(batch) = batches.next().await {
            let batch = batch.unwrap();
            sizes.push(batch.len());
            ids.extend(batch.iter().map(|game| game.id));
        }
        assert_eq!(sizes, [BATCH, BATCH, 3]);
        assert_eq!(ids, (0..count).collect::<Vec<_>>());
        assert!(batches.next().await.is_none());
    }

    #[tokio::test]
    async fn a_failed_read_ends_in_its_error_not_in_a_short_list() {
        let (mut batcher, batches) = channel();
        tokio::spawn(async move {
            let _ = batcher.push(game(1)).await;
            batcher.finish(Err(StoreError::InvalidCursor)).await;
        });
        assert!(matches!(
            batches.collect().await,
            Err(StoreError::InvalidCursor)
        ));
    }

    #[tokio::test]
    async fn a_reader_that_stops_taking_batches_ends_the_read() {
        let (mut batcher, mut batches) = stalling_after(Duration::from_millis(50));
        let reader = tokio::spawn(async move {
            let mut pushed = 0;
            while batcher.push(game(pushed)).await.is_ok() {
                pushed += 1;
            }
            pushed
        });
        // The channel fills, then the next batch waits out the stall and the read
        // stops with what it had sent.
        let pushed = reader.await.unwrap();
        assert_eq!(pushed as usize, BATCH * (IN_FLIGHT + 1) - 1);
        for _ in 0..IN_FLIGHT {
            assert_eq!(batches.next().await.unwrap().unwrap().len(), BATCH);
        }
        assert!(matches!(
            batches.next().await,
            Some(Err(StoreError::Unavailable(_)))
        ));
    }
}
