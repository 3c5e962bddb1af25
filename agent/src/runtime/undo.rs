//! A tiny undo stack (after Incus' `revert`): register the undo of each step
//! right after it succeeds; on failure, `unwind` runs them newest first; on
//! success, `commit` drops them.

use std::future::Future;
use std::pin::Pin;

type Step = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

#[derive(Default)]
pub struct Undo {
    steps: Vec<(String, Step)>,
}

impl Undo {
    pub fn push<F, Fut>(&mut self, what: &str, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.steps
            .push((what.to_string(), Box::new(move || Box::pin(f()))));
    }

    pub async fn unwind(mut self) {
        while let Some((what, step)) = self.steps.pop() {
            tracing::info!("undoing: {what}");
            step().await;
        }
    }

    pub fn commit(mut self) {
        self.steps.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::Undo;

    #[tokio::test]
    async fn undo_runs_newest_first_and_commit_runs_nothing() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut u = Undo::default();
        for i in 0..3 {
            let log = log.clone();
            u.push(&format!("step {i}"), move || async move {
                log.lock().unwrap().push(i)
            });
        }
        u.unwind().await;
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);
        let mut u = Undo::default();
        let l2 = log.clone();
        u.push("x", move || async move { l2.lock().unwrap().push(9) });
        u.commit();
        assert_eq!(log.lock().unwrap().len(), 3);
    }
}
