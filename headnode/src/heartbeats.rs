//! Group commit of heartbeats: the Heartbeat calls of all nodes are queued
//! to one writer, which records every heartbeat that arrived while its
//! previous statement ran in a single UPDATE (one commit for many nodes,
//! not one each).
//!
//! It never answers a heartbeat before its row is written, and never lets a
//! heartbeat through that the row's certificate rules refuse: the batch's
//! statement applies the same rules as a single heartbeat's. Heartbeats
//! carrying sysinfo (rare: a node's start, a change) do not come here.

use std::collections::HashSet;

use nereid_api::ServerId;
use tokio::sync::{mpsc, oneshot};

use crate::db::{Beat, Datastore};
use crate::error::{Error, Result};

/// The most heartbeats one statement writes.
const MOST: usize = 1_000;

type Waiting = (Beat, oneshot::Sender<std::result::Result<bool, String>>);

/// The queue to the writer; cheap to clone.
#[derive(Clone)]
pub struct Heartbeats {
    tx: mpsc::Sender<Waiting>,
}

impl Heartbeats {
    /// Starts the writer on this datastore.
    pub fn start(db: Datastore) -> Heartbeats {
        let (tx, rx) = mpsc::channel(MOST * 4);
        tokio::spawn(writer(db, rx));
        Heartbeats { tx }
    }

    /// Records a heartbeat; false when no server has this id and certificate.
    pub async fn record(&self, beat: Beat) -> Result<bool> {
        let (done, answer) = oneshot::channel();
        let gone = || Error::Internal("the heartbeat writer stopped".into());
        self.tx.send((beat, done)).await.map_err(|_| gone())?;
        answer
            .await
            .map_err(|_| gone())?
            .map_err(|e| Error::Internal(format!("recording heartbeats: {e}")))
    }
}

async fn writer(db: Datastore, mut rx: mpsc::Receiver<Waiting>) {
    // A server's second heartbeat in one batch waits for the next one (the
    // statement updates each row once).
    let mut carried: Vec<Waiting> = Vec::new();
    loop {
        let mut pending = std::mem::take(&mut carried);
        if pending.is_empty() {
            match rx.recv().await {
                Some(w) => pending.push(w),
                None => return,
            }
        }
        let (mut batch, mut ids) = (Vec::new(), HashSet::<ServerId>::new());
        for w in pending {
            place(w, &mut batch, &mut ids, &mut carried);
        }
        while batch.len() < MOST {
            match rx.try_recv() {
                Ok(w) => place(w, &mut batch, &mut ids, &mut carried),
                Err(_) => break,
            }
        }
        let (beats, waiting): (Vec<Beat>, Vec<_>) = batch.into_iter().unzip();
        // Once more when the statement failed (a deadlock or a lost
        // connection, say): a batch's nodes should not fail together for
        // what a second try fixes.
        let mut outcome = db.server_heartbeats(&beats).await;
        if let Err(e) = &outcome {
            tracing::warn!(
                "recording {} heartbeats failed, trying again: {e}",
                beats.len()
            );
            outcome = db.server_heartbeats(&beats).await;
        }
        let outcome = outcome
            .map(|ok| ok.into_iter().collect::<HashSet<_>>())
            .map_err(|e| crate::error::chain(&e));
        for (beat, done) in beats.iter().zip(waiting) {
            let _ = done.send(match &outcome {
                Ok(ok) => Ok(ok.contains(&beat.id)),
                Err(e) => Err(e.clone()),
            });
        }
    }
}

/// Into this batch, or the next one when the server has a heartbeat here.
fn place(
    w: Waiting,
    batch: &mut Vec<Waiting>,
    ids: &mut HashSet<ServerId>,
    carried: &mut Vec<Waiting>,
) {
    if ids.insert(w.0.id) {
        batch.push(w);
    } else {
        carried.push(w);
    }
}
