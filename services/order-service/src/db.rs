//! The SQLite connections, and group commit: how many concurrent writes share one
//! transaction, so that one fsync makes many orders durable.
//!
//! - **Writes** go to one writer thread (SQLite has one writer at a time anyway). It
//!   takes every write waiting when it is free, up to [`MAX_GROUP`], and runs them in one
//!   transaction, each inside a savepoint of its own: a write that fails is rolled back
//!   alone, the others commit. Each caller is answered after the `COMMIT`, so nothing is
//!   reported stored before it is durable (`synchronous=FULL`). Under load the group
//!   grows by itself: while one group commits, the next one queues.
//! - **Reads** use a connection of their own on tokio's blocking pool; in WAL mode they
//!   see every committed write and never wait for the writer.
//!
//! Neither blocks an async thread. A write's database CLIENT span (`store.rs`) is made
//! by the caller, entered while its statements run on the writer thread, and handed back
//! to end after the commit, so its duration is what the caller waited for.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::store::StoreError;

/// Writes at most in one transaction: enough to absorb a burst, small enough that the
/// first caller of a group does not wait long for the last.
pub const MAX_GROUP: usize = 256;

/// A write as the writer thread runs it: the statements (their success decides whether
/// the savepoint is kept), then the answer once the group's commit is known.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Answer) + Send>;
type Answer = Box<dyn FnOnce(Result<(), rusqlite::Error>) + Send>;

#[derive(Debug, Clone)]
pub struct Database {
    writes: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    /// Transactions the writer committed: with `writes`, how well groups form.
    commits: Arc<AtomicU64>,
}

impl Database {
    /// Opens the file (creating it and running `schema` if needed), starts the writer
    /// thread, and opens the reading connection. The thread ends when the last clone of
    /// this handle is dropped.
    pub fn open(path: &Path, schema: &str) -> Result<Self, StoreError> {
        let writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.busy_timeout(std::time::Duration::from_secs(5))?;
        writer.execute_batch(schema)?;
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        let (writes, jobs) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&commits);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_groups(&writer, &jobs, &counted))
            .map_err(|e| StoreError::Task(format!("starting the database writer: {e}")))?;
        Ok(Self {
            writes,
            reader: Arc::new(Mutex::new(reader)),
            commits,
        })
    }

    /// Runs `write` in the next group transaction; answers after it committed. Its
    /// changes are kept only if it returns `Ok`. `span`, if any, is entered while the
    /// statements run, marked if they fail, and ends after the commit.
    pub async fn write<T, F>(&self, span: Option<tracing::Span>, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let result = match &span {
                Some(span) => span.in_scope(|| write(connection)),
                None => write(connection),
            };
            if let Some(span) = &span {
                mark_failed(span, &result);
            }
            let kept = result.is_ok();
            let answer: Answer = Box::new(move |committed| {
                let outcome = match committed {
                    Ok(()) => result,
                    Err(error) => {
                        let error = StoreError::from(error);
                        if let Some(span) = &span {
                            mark_failed(span, &Err::<T, _>(&error));
                        }
                        result.and(Err(error))
                    }
                };
                // The span goes back to end on the caller's side: tracing's registry
                // closes a span's parent through the ending thread's default dispatcher,
                // which this thread need not share. (The caller may have gone, its
                // request cancelled: then both end here.)
                let _ = answer.send((outcome, span));
            });
            (kept, answer)
        });
        self.writes
            .send(job)
            .map_err(|_| StoreError::Task("the database writer has stopped".into()))?;
        let (outcome, span) = answered.await.map_err(|_| {
            StoreError::Task("the database writer dropped a write (see its log)".into())
        })?;
        drop(span);
        outcome
    }

    /// Transactions committed so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `read` on the reading connection, on the blocking pool. `span`, if any, is
    /// entered while it runs and marked if it fails.
    pub async fn read<T, F>(&self, span: Option<tracing::Span>, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let connection = reader
                .lock()
                .map_err(|_| StoreError::Task("database reader lock poisoned".into()))?;
            let result = match &span {
                Some(span) => span.in_scope(|| read(&connection)),
                None => read(&connection),
            };
            if let Some(span) = &span {
                mark_failed(span, &result);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// The writer thread: one transaction per group of waiting writes, until every handle
/// is gone.
fn write_groups(connection: &Connection, jobs: &mpsc::Receiver<Job>, commits: &AtomicU64) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        group.extend(jobs.try_iter().take(MAX_GROUP - 1));
        // A write that cannot be run is dropped: its caller's answer channel closes and
        // it gets an error; the cause is logged here.
        if let Err(error) = connection.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(%error, writes = group.len(), "cannot begin a transaction; writes dropped");
            continue;
        }
        let mut answers = Vec::with_capacity(group.len());
        for job in group {
            if let Err(error) = connection.execute_batch("SAVEPOINT write") {
                tracing::error!(%error, "cannot set a savepoint; write dropped");
                continue;
            }
            // A panicking write must not take the others (or this thread) down: its
            // savepoint is rolled back and its caller hears that it was dropped.
            match std::panic::catch_unwind(AssertUnwindSafe(|| job(connection))) {
                Ok((kept, answer)) => {
                    let ended = if kept {
                        connection.execute_batch("RELEASE write")
                    } else {
                        connection.execute_batch("ROLLBACK TO write; RELEASE write")
                    };
                    answers.push((answer, ended.err()));
                }
                Err(_) => {
                    tracing::error!("a database write panicked; it was rolled back");
                    let _ = connection.execute_batch("ROLLBACK TO write; RELEASE write");
                }
            }
        }
        let committed = connection.execute_batch("COMMIT");
        if committed.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        } else {
            // Leaves the connection usable for the next group.
            let _ = connection.execute_batch("ROLLBACK");
        }
        for (answer, own_error) in answers {
            answer(match (&committed, own_error) {
                (Err(error), _) => Err(copy(error)),
                (Ok(()), Some(error)) => Err(error),
                (Ok(()), None) => Ok(()),
            });
        }
    }
}

fn mark_failed<T, E: std::borrow::Borrow<StoreError>>(span: &tracing::Span, result: &Result<T, E>) {
    if let Err(error) = result
        && let StoreError::Sqlite(error) = error.borrow()
    {
        let code = error.sqlite_error_code().map(|c| format!("{c:?}"));
        telemetry::span::mark_error(
            span,
            code.as_deref().unwrap_or("database"),
            &error.to_string(),
        );
    }
}

/// One error for many callers (rusqlite's error is not `Clone`).
fn copy(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use futures_util::poll;

    use super::*;

    const SCHEMA: &str = "CREATE TABLE t (n INTEGER PRIMARY KEY);";

    fn database() -> (Database, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("db-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        (Database::open(&dir.join("t.db"), SCHEMA).unwrap(), dir)
    }

    fn insert(n: i64) -> impl FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static {
        move |c| {
            c.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
            Ok(())
        }
    }

    async fn count(db: &Database) -> i64 {
        db.read(None, |c| {
            Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn writes_waiting_together_share_one_commit_and_a_failed_one_is_undone_alone() {
        let (db, dir) = database();
        // Holds the writer busy until every other write is queued behind it.
        let (release, released) = mpsc::channel::<()>();
        let (started, running) = oneshot::channel::<()>();
        let blocker = db.write(None, move |c| {
            let _ = started.send(());
            let _ = released.recv();
            insert(0)(c)
        });
        let mut blocker = pin!(blocker);
        assert!(poll!(blocker.as_mut()).is_pending());
        running.await.unwrap();
        let mut writes: Vec<_> = (1..=100)
            .map(|n| {
                let db = db.clone();
                Box::pin(async move {
                    if n == 50 {
                        // Inserts, then fails: its row must go, the others stay.
                        db.write(None, move |c| {
                            insert(n)(c)?;
                            Err::<(), _>(StoreError::NotFound("o-50".into()))
                        })
                        .await
                    } else {
                        db.write(None, insert(n)).await
                    }
                })
            })
            .collect();
        for write in &mut writes {
            // The first poll hands the write to the writer thread.
            assert!(poll!(write.as_mut()).is_pending());
        }
        release.send(()).unwrap();
        blocker.await.unwrap();
        let results = futures_util::future::join_all(writes).await;
        for (i, result) in results.iter().enumerate() {
            let n = i + 1;
            assert_eq!(result.is_ok(), n != 50, "write {n}: {result:?}");
        }
        assert_eq!(count(&db).await, 100);
        // The blocker's transaction, then one for all hundred.
        assert_eq!(db.commits(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_panicking_write_is_rolled_back_and_the_writer_carries_on() {
        let (db, dir) = database();
        let panicked = db
            .write(None, |c| -> Result<(), StoreError> {
                insert(1)(c)?;
                panic!("a bug in a write");
            })
            .await;
        assert!(matches!(panicked, Err(StoreError::Task(_))), "{panicked:?}");
        db.write(None, insert(2)).await.unwrap();
        assert_eq!(count(&db).await, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_write_is_visible_to_reads_once_answered() {
        let (db, dir) = database();
        for n in 0..20 {
            db.write(None, insert(n)).await.unwrap();
            assert_eq!(count(&db).await, n + 1);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
