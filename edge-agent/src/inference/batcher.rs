//! [`Batcher`]: concurrent prediction requests are gathered into batches (at most `max_batch` examples, waiting at
//! most `max_wait` for more) and run on a dedicated worker thread, never on the async runtime.
//!
//! Callers [`Batcher::admit`] a request as soon as it arrives (before parsing it); the worker waits up to
//! `max_wait` for a batch to fill only while admitted requests are still on their way, so a lone request runs at
//! once and a batch never waits for requests that do not exist.
//!
//! Every request carries the model it was admitted with, and a batch only ever holds requests of one model, so a
//! request in flight when a newer version is swapped in finishes on the version it started with. The queue is
//! bounded: when it is full, a request is refused at once instead of waiting. This module never parses requests.

use super::engine::LoadedModel;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The answer to one request: its logits (`output_len` per example) and the version that computed them.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub version: u64,
    pub outputs: Vec<f32>,
}

/// Why a request got no prediction.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum BatchError {
    #[error("too many requests are waiting for the model ({0}); try again")]
    QueueFull(usize),
    #[error("the inference worker has stopped")]
    Stopped,
    #[error("the model failed to run: {0}")]
    Model(String),
}

/// How requests are batched.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_batch: usize,
    pub max_wait: Duration,
    pub queue: usize,
}

struct Job {
    model: Arc<LoadedModel>,
    input: Vec<f32>,
    rows: usize,
    reply: oneshot::Sender<Result<Prediction, BatchError>>,
}

/// Observes each batch run (metrics).
pub type BatchObserver = Arc<dyn Fn(usize, Duration) + Send + Sync>;

/// The handle requests are submitted through; cheap to clone. The worker stops when every handle is dropped.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    queue: usize,
    /// Requests admitted and not yet submitted.
    incoming: Arc<AtomicUsize>,
}

/// A request on its way to the batcher (counted until it is submitted or dropped).
pub struct Admitted {
    incoming: Arc<AtomicUsize>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.incoming.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Batcher {
    /// Starts the worker thread.
    pub fn start(policy: BatchPolicy, observe: Option<BatchObserver>) -> std::io::Result<Batcher> {
        let (tx, rx) = mpsc::sync_channel::<Job>(policy.queue.max(1));
        let incoming = Arc::new(AtomicUsize::new(0));
        let seen = incoming.clone();
        std::thread::Builder::new().name("fedge-inference".into()).spawn(move || worker(rx, policy, observe, seen))?;
        Ok(Batcher { tx, queue: policy.queue, incoming })
    }

    /// Announces a request that will be submitted soon, so that the batch being gathered waits for it.
    pub fn admit(&self) -> Admitted {
        self.incoming.fetch_add(1, Ordering::AcqRel);
        Admitted { incoming: self.incoming.clone() }
    }

    /// Runs `input` (a whole number of examples for `model`) in the next batch of that model.
    pub async fn predict(&self, model: Arc<LoadedModel>, input: Vec<f32>) -> Result<Prediction, BatchError> {
        self.predict_admitted(self.admit(), model, input).await
    }

    /// [`Batcher::predict`] for a request admitted earlier.
    pub async fn predict_admitted(
        &self,
        admitted: Admitted,
        model: Arc<LoadedModel>,
        input: Vec<f32>,
    ) -> Result<Prediction, BatchError> {
        let rows = input.len() / model.input_len().max(1);
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.try_send(Job { model, input, rows, reply });
        drop(admitted);
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(BatchError::QueueFull(self.queue)),
            Err(TrySendError::Disconnected(_)) => return Err(BatchError::Stopped),
        }
        rx.await.map_err(|_| BatchError::Stopped)?
    }
}

fn worker(rx: mpsc::Receiver<Job>, policy: BatchPolicy, observe: Option<BatchObserver>, incoming: Arc<AtomicUsize>) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let mut rows = first.rows;
        let mut batch = vec![first];
        let deadline = Instant::now() + policy.max_wait;
        while rows < policy.max_batch {
            let next = match rx.try_recv() {
                Ok(j) => Ok(j),
                Err(mpsc::TryRecvError::Empty) if incoming.load(Ordering::Acquire) > 0 => {
                    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                }
                Err(mpsc::TryRecvError::Empty) => Err(RecvTimeoutError::Timeout),
                Err(mpsc::TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            };
            match next {
                Ok(j) if Arc::ptr_eq(&j.model, &batch[0].model) && rows + j.rows <= policy.max_batch => {
                    rows += j.rows;
                    batch.push(j);
                }
                Ok(j) => {
                    carry = Some(j);
                    break;
                }
                Err(_) => break,
            }
        }
        run(batch, rows, observe.as_ref());
    }
}

fn run(batch: Vec<Job>, rows: usize, observe: Option<&BatchObserver>) {
    let Some(model) = batch.first().map(|j| j.model.clone()) else { return };
    let started = Instant::now();
    let result = if batch.len() == 1 {
        model.predict(&batch[0].input)
    } else {
        let mut x = Vec::with_capacity(rows * model.input_len());
        for j in &batch {
            x.extend_from_slice(&j.input);
        }
        model.predict(&x)
    };
    if let Some(f) = observe {
        f(rows, started.elapsed());
    }
    let ol = model.output_len();
    match result {
        Ok(y) if y.len() == rows * ol => {
            let mut at = 0;
            for j in batch {
                let n = j.rows * ol;
                let outputs = y.get(at..at + n).map(<[f32]>::to_vec).unwrap_or_default();
                at += n;
                let _ = j.reply.send(Ok(Prediction { version: model.version, outputs }));
            }
        }
        Ok(y) => {
            let e = BatchError::Model(format!("{} outputs for {rows} examples of {ol}", y.len()));
            for j in batch {
                let _ = j.reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            tracing::error!(version = model.version, error = %e, "inference failed");
            let e = BatchError::Model(e.to_string());
            for j in batch {
                let _ = j.reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedge_shared::train::{TrainableModel, builder};
    use std::sync::Mutex;

    fn model(version: u64, seed: u64) -> Arc<LoadedModel> {
        let m = TrainableModel::from_onnx_bytes(&builder::mlp(&[4, 3], seed)).unwrap();
        Arc::new(LoadedModel::from_trainable(&m, &m.initial_weights(), version, 8).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_batches_and_each_gets_its_own_rows_back() {
        let m = model(1, 3);
        let sizes = Arc::new(Mutex::new(vec![]));
        let s2 = sizes.clone();
        // A generous wait: on a loaded machine the 16 tasks may take a while to be scheduled; a full batch of 8
        // leaves at once anyway. The barrier sends all 16 requests together.
        let policy = BatchPolicy { max_batch: 8, max_wait: Duration::from_millis(500), queue: 64 };
        let b = Batcher::start(policy, Some(Arc::new(move |n, _| s2.lock().unwrap().push(n)))).unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let mut tasks = vec![];
        for i in 0..16 {
            let (b, m, barrier) = (b.clone(), m.clone(), barrier.clone());
            let x: Vec<f32> = (0..4).map(|k| (i * 4 + k) as f32 / 10.0).collect();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                (b.predict(m.clone(), x.clone()).await.unwrap(), m.predict(&x))
            }));
        }
        for t in tasks {
            let (got, alone) = t.await.unwrap();
            assert_eq!(got.version, 1);
            assert_eq!(got.outputs, alone.unwrap(), "a batched row equals the same row run alone");
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 16);
        assert!(sizes.iter().all(|&n| n <= 8));
        assert!(sizes.len() < 16, "some requests shared a batch: {sizes:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_of_two_versions_are_never_mixed_in_one_batch() {
        let (a, b2) = (model(1, 3), model(2, 4));
        let policy = BatchPolicy { max_batch: 8, max_wait: Duration::from_millis(20), queue: 64 };
        let b = Batcher::start(policy, None).unwrap();
        let mut tasks = vec![];
        for i in 0..12 {
            let m = if i % 3 == 0 { b2.clone() } else { a.clone() };
            let b = b.clone();
            let x = vec![i as f32; 4];
            tasks.push(tokio::spawn(async move { (b.predict(m.clone(), x.clone()).await, m, x) }));
        }
        for t in tasks {
            let (got, m, x) = t.await.unwrap();
            let got = got.unwrap();
            assert_eq!(got.version, m.version);
            assert_eq!(got.outputs, m.predict(&x).unwrap(), "computed by the version the request was admitted with");
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_waiting() {
        let m = model(1, 3);
        let policy = BatchPolicy { max_batch: 1, max_wait: Duration::ZERO, queue: 1 };
        let b = Batcher::start(policy, None).unwrap();
        // Submit all before awaiting any (each request is queued on its first poll).
        let mut pending: Vec<_> = (0..200).map(|_| Box::pin(b.predict(m.clone(), vec![0.5; 4 * 200]))).collect();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let first: Vec<_> = pending.iter_mut().map(|f| f.as_mut().poll(&mut cx)).collect();
        let mut results = vec![];
        for (f, polled) in pending.into_iter().zip(first) {
            results.push(match polled {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => f.await,
            });
        }
        assert!(results.contains(&Err(BatchError::QueueFull(1))));
        assert!(results.iter().any(Result::is_ok));
    }
}
