//! The loader: a tokio runtime with one dispatcher task and `workers` blocking
//! workers, connected by bounded async-channels; the consumer side reorders finished
//! batches and lends them out as [`Batch`]es.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sv_augment::{Layout as ImageLayout, Lighting, Normalize, TrainAugment, Window};
use sv_shard::Dataset;

use crate::batch::{Buffers, Shape};
use crate::{Augment, Batch, Error, Layout, LoaderConfig, OnError, Output, Position, Sampler};

/// Counters and time per stage since the loader started. Stage times are summed over
/// workers (CPU time, so they can exceed wall time).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Batches the workers finished.
    pub batches: u64,
    /// Crops written (samples times views).
    pub images: u64,
    /// Damaged records skipped ([`crate::OnError::Skip`]).
    pub skipped: u64,
    /// Time checking record CRCs.
    pub verify: Duration,
    /// Time getting pixels (JPEG decode; nothing for raw records).
    pub decode: Duration,
    /// Time cropping, flipping, lighting and normalising (for raw records this
    /// includes reading the memory map).
    pub augment: Duration,
    /// Time the consumer waited for the next batch.
    pub consumer_wait: Duration,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    images: AtomicU64,
    skipped: AtomicU64,
    verify_ns: AtomicU64,
    decode_ns: AtomicU64,
    augment_ns: AtomicU64,
    wait_ns: AtomicU64,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Everything a worker needs, shared read-only.
struct Ctx {
    dataset: Arc<Dataset>,
    side: u32,
    seed: u64,
    batch_size: usize,
    shape: Shape,
    mode: Mode,
    norm: Option<Normalize>,
    verify: bool,
    on_error: OnError,
    release_pages: bool,
    counters: Arc<Counters>,
    /// Tests: panic when asked for this record.
    #[cfg(test)]
    panic_on: Option<u64>,
}

enum Mode {
    Train(TrainAugment, Option<Lighting>),
    Fixed(Vec<Window>),
}

struct Job {
    seq: u64,
    buf: Box<Buffers>,
}

struct Done {
    seq: u64,
    result: Result<Box<Buffers>, Error>,
}

/// The batch stream. See the crate documentation for the whole API.
pub struct Loader {
    // Pinned on the heap so the loader stays `Unpin` (the receiver is not).
    results: Pin<Box<async_channel::Receiver<Done>>>,
    jobs: Box<async_channel::Receiver<Job>>,
    pool: async_channel::Sender<Box<Buffers>>,
    pending: Vec<Done>,
    next_seq: u64,
    total: Option<u64>,
    held: Arc<AtomicUsize>,
    cap: usize,
    shape: Shape,
    batches_per_epoch: u64,
    finished: bool,
    counters: Arc<Counters>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("next_seq", &self.next_seq)
            .field("total", &self.total)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Loader {
    /// Check `config` against the dataset and start the stages.
    pub fn new(dataset: Arc<Dataset>, config: LoaderConfig) -> Result<Loader, Error> {
        Self::build(dataset, config, None)
    }

    fn build(
        dataset: Arc<Dataset>,
        config: LoaderConfig,
        #[allow(unused_variables)] panic_on: Option<u64>,
    ) -> Result<Loader, Error> {
        check_counts(&config)?;
        let side = dataset.geometry().side;
        let sampler = Sampler::new(dataset.len(), config.sampler())?;
        let batches_per_epoch = sampler.batches_per_epoch() as u64;
        if config.start.batch >= batches_per_epoch {
            return Err(Error::Config(format!(
                "start batch {} is past the epoch's {batches_per_epoch} batches",
                config.start.batch
            )));
        }
        let crop = config.augment.crop();
        let mode = match &config.augment {
            Augment::Train { flip, lighting, .. } => {
                let mut t = TrainAugment::new(side, crop)?;
                t.flip = *flip;
                if let Some(l) = lighting {
                    l.validate()?;
                }
                Mode::Train(t, *lighting)
            }
            Augment::Center { crop } => Mode::Fixed(vec![sv_augment::center_window(side, *crop)?]),
            Augment::TenCrop { crop } => {
                Mode::Fixed(sv_augment::ten_crop_windows(side, *crop)?.to_vec())
            }
        };
        let (layout, norm) = match &config.output {
            Output::U8(layout) => (*layout, None),
            Output::F32(norm) => {
                norm.validate(side)?;
                (Layout::Nchw, Some(norm.clone()))
            }
        };
        let shape = Shape {
            crop: crop as usize,
            views: config.augment.views(),
            layout,
            float: norm.is_some(),
        };
        check_buffer_size(&shape, config.batch_size)?;
        let total = config.epochs.map(|e| {
            e.saturating_mul(batches_per_epoch)
                .saturating_sub(config.start.batch)
        });
        let cap = config.workers + config.prefetch + config.hold.max(1);
        let counters = Arc::new(Counters::default());
        let ctx = Arc::new(Ctx {
            dataset,
            side,
            seed: config.seed,
            batch_size: config.batch_size,
            shape,
            mode,
            norm,
            verify: config.verify,
            on_error: config.on_error,
            release_pages: config.release_pages,
            counters: counters.clone(),
            #[cfg(test)]
            panic_on,
        });

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(config.workers)
            .thread_name("sv-pipeline")
            .build()
            .map_err(Error::Runtime)?;
        let (pool_tx, pool_rx) = async_channel::bounded::<Box<Buffers>>(cap);
        let (jobs_tx, jobs_rx) = async_channel::bounded::<Job>(config.workers);
        let (done_tx, done_rx) = async_channel::bounded::<Done>(cap);

        runtime.spawn(dispatch(
            sampler,
            config.start,
            total,
            cap,
            pool_rx,
            jobs_tx,
        ));
        for _ in 0..config.workers {
            let (ctx, jobs, done, pool) = (
                ctx.clone(),
                jobs_rx.clone(),
                done_tx.clone(),
                pool_tx.clone(),
            );
            runtime.spawn_blocking(move || work(&ctx, &jobs, &done, &pool));
        }
        drop(done_tx);

        Ok(Loader {
            results: Box::pin(done_rx),
            jobs: Box::new(jobs_rx),
            pool: pool_tx,
            pending: Vec::with_capacity(cap),
            next_seq: 0,
            total,
            held: Arc::new(AtomicUsize::new(0)),
            cap,
            shape,
            batches_per_epoch,
            finished: false,
            counters,
            runtime: Some(runtime),
        })
    }

    /// Batches the stream will yield in all (from the start position), or `None`
    /// when endless.
    pub fn total_batches(&self) -> Option<u64> {
        self.total
    }

    /// Batches per epoch on this rank.
    pub fn batches_per_epoch(&self) -> u64 {
        self.batches_per_epoch
    }

    /// Counters and stage times so far.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let d = |a: &AtomicU64| Duration::from_nanos(a.load(Ordering::Relaxed));
        Stats {
            batches: c.batches.load(Ordering::Relaxed),
            images: c.images.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            verify: d(&c.verify_ns),
            decode: d(&c.decode_ns),
            augment: d(&c.augment_ns),
            consumer_wait: d(&c.wait_ns),
        }
    }

    /// The next batch, awaiting it without blocking the thread.
    pub async fn next_batch(&mut self) -> Option<Result<Batch, Error>> {
        std::future::poll_fn(|cx| self.poll_batch(cx)).await
    }

    /// The next item if it can be decided without waiting.
    fn ready(&mut self) -> Option<Option<Result<Batch, Error>>> {
        if self.finished {
            return Some(None);
        }
        if self.total == Some(self.next_seq) {
            self.finished = true;
            return Some(None);
        }
        while let Ok(done) = self.results.try_recv() {
            self.pending.push(done);
        }
        if let Some(i) = self.pending.iter().position(|d| d.seq == self.next_seq) {
            let done = self.pending.swap_remove(i);
            self.next_seq += 1;
            return Some(Some(match done.result {
                Ok(buf) => Ok(Batch::new(
                    buf,
                    self.shape,
                    self.pool.clone(),
                    self.held.clone(),
                    self.batches_per_epoch,
                )),
                Err(e) => {
                    self.finished = true;
                    Err(e)
                }
            }));
        }
        let held = self.held.load(Ordering::SeqCst);
        if held >= self.cap {
            // Every buffer is alive in the consumer: the next batch can never be made.
            return Some(Some(Err(Error::AllBuffersHeld { held })));
        }
        None
    }

    fn stopped(&mut self) -> Option<Result<Batch, Error>> {
        self.finished = true;
        Some(Err(Error::Stopped))
    }

    fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Batch, Error>>> {
        loop {
            if let Some(item) = self.ready() {
                return Poll::Ready(item);
            }
            let t = Instant::now();
            let polled = futures_core::Stream::poll_next(self.results.as_mut(), cx);
            self.counters
                .wait_ns
                .fetch_add(ns(t.elapsed()), Ordering::Relaxed);
            match polled {
                Poll::Ready(Some(done)) => self.pending.push(done),
                Poll::Ready(None) => return Poll::Ready(self.stopped()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, Error>;

    /// Blocks the calling thread until the next batch is ready. Call it from a plain
    /// thread, not from inside an async runtime (use the `Stream` there).
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.ready() {
                return item;
            }
            let t = Instant::now();
            let got = self.results.recv_blocking();
            self.counters
                .wait_ns
                .fetch_add(ns(t.elapsed()), Ordering::Relaxed);
            match got {
                Ok(done) => self.pending.push(done),
                Err(_) => return self.stopped(),
            }
        }
    }
}

impl futures_core::Stream for Loader {
    type Item = Result<Batch, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_batch(cx)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the queues makes every send and receive fail, so the dispatcher and
        // the workers return after at most the batch in hand; dropping the runtime
        // then cancels the dispatcher and joins every thread. Inside another async
        // runtime blocking is not allowed: the threads are then left to finish on
        // their own, which they do within one batch.
        self.jobs.close();
        self.results.close();
        self.pool.close();
        if let Some(rt) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                drop(rt);
            }
        }
    }
}

/// Refuse counts that would size threads or buffers without bound (the sampler checks
/// the batch size).
fn check_counts(config: &LoaderConfig) -> Result<(), Error> {
    if config.workers == 0 {
        return Err(Error::Config("workers must be at least 1".into()));
    }
    for (name, value, max) in [
        ("workers", config.workers, crate::MAX_WORKERS),
        ("prefetch", config.prefetch, crate::MAX_PREFETCH),
        ("hold", config.hold, crate::MAX_PREFETCH),
    ] {
        if value > max {
            return Err(Error::Config(format!(
                "{name} {value} is more than the limit of {max}"
            )));
        }
    }
    Ok(())
}

/// Refuse a batch whose buffer would not fit in the address space (every buffer is
/// `batch x views x crop x crop x 3` values): the multiplication must not wrap, and
/// no allocation may exceed `isize::MAX` bytes.
fn check_buffer_size(shape: &Shape, batch_size: usize) -> Result<(), Error> {
    let value_bytes = if shape.float { 4 } else { 1 };
    let bytes = [shape.views, shape.crop, shape.crop, 3, value_bytes]
        .into_iter()
        .try_fold(batch_size, usize::checked_mul)
        .filter(|&b| isize::try_from(b).is_ok());
    if bytes.is_none() {
        return Err(Error::Config(format!(
            "a batch of {batch_size} x {} crops of {}x{} does not fit in memory",
            shape.views, shape.crop, shape.crop
        )));
    }
    Ok(())
}

/// Walk the sampler, pairing each batch with a buffer from the pool (allocating up
/// to `cap` buffers), and queue it for the workers, in order.
async fn dispatch(
    sampler: Sampler,
    start: Position,
    total: Option<u64>,
    cap: usize,
    pool: async_channel::Receiver<Box<Buffers>>,
    jobs: async_channel::Sender<Job>,
) {
    let per_epoch = sampler.batches_per_epoch() as u64;
    let first = start
        .epoch
        .saturating_mul(per_epoch)
        .saturating_add(start.batch);
    let mut order = Vec::new();
    let mut order_epoch = None;
    let mut allocated = 0usize;
    let mut seq = 0u64;
    while total.is_none_or(|t| seq < t) {
        let mut buf = match pool.try_recv() {
            Ok(b) => b,
            Err(_) if allocated < cap => {
                allocated += 1;
                Box::default()
            }
            Err(_) => match pool.recv().await {
                Ok(b) => b,
                Err(_) => return,
            },
        };
        let at = first.saturating_add(seq);
        let position = Position {
            epoch: at / per_epoch,
            batch: at % per_epoch,
        };
        if order_epoch != Some(position.epoch) {
            sampler.epoch_order(position.epoch, &mut order);
            order_epoch = Some(position.epoch);
        }
        sampler.batch_indices(&order, position.batch as usize, &mut buf.requested);
        buf.position = position;
        if jobs.send(Job { seq, buf }).await.is_err() {
            return;
        }
        seq += 1;
    }
}

/// A worker: fill batches until the queues close. Panics while filling become
/// [`Error::WorkerPanic`] for that batch.
fn work(
    ctx: &Ctx,
    jobs: &async_channel::Receiver<Job>,
    done: &async_channel::Sender<Done>,
    pool: &async_channel::Sender<Box<Buffers>>,
) {
    let mut scratch = Vec::new();
    while let Ok(Job { seq, mut buf }) = jobs.recv_blocking() {
        let filled =
            std::panic::catch_unwind(AssertUnwindSafe(|| ctx.fill(&mut buf, &mut scratch)));
        let result = match filled {
            Ok(Ok(())) => Ok(buf),
            Ok(Err(e)) => {
                let _ = pool.try_send(buf);
                Err(e)
            }
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into());
                tracing::error!(%message, "pipeline worker panicked");
                scratch = Vec::new();
                Err(Error::WorkerPanic { message })
            }
        };
        if done.send_blocking(Done { seq, result }).is_err() {
            return;
        }
    }
}

#[derive(Default)]
struct Clock {
    verify: u64,
    decode: u64,
    augment: u64,
}

impl Ctx {
    fn fill(&self, buf: &mut Buffers, scratch: &mut Vec<u8>) -> Result<(), Error> {
        let slots = self.batch_size * self.shape.views * self.shape.image_values();
        if self.shape.float {
            buf.f32.resize(slots, 0.0);
        } else {
            buf.u8.resize(slots, 0);
        }
        buf.indices.clear();
        buf.labels.clear();
        buf.lighting.clear();
        buf.windows.clear();
        buf.skipped = 0;
        let requested = std::mem::take(&mut buf.requested);
        let mut clock = Clock::default();
        let mut result = Ok(());
        for &index in &requested {
            match self.sample(index, buf, scratch, &mut clock) {
                Ok(()) => {}
                Err(e @ Error::Record { .. }) if self.on_error == OnError::Skip => {
                    tracing::warn!(error = %e, "skipping damaged record");
                    buf.skipped += 1;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        buf.requested = requested;
        let c = &self.counters;
        c.verify_ns.fetch_add(clock.verify, Ordering::Relaxed);
        c.decode_ns.fetch_add(clock.decode, Ordering::Relaxed);
        c.augment_ns.fetch_add(clock.augment, Ordering::Relaxed);
        if result.is_ok() {
            c.batches.fetch_add(1, Ordering::Relaxed);
            c.images.fetch_add(
                (buf.indices.len() * self.shape.views) as u64,
                Ordering::Relaxed,
            );
            c.skipped.fetch_add(buf.skipped as u64, Ordering::Relaxed);
        }
        result
    }

    fn sample(
        &self,
        index: u64,
        buf: &mut Buffers,
        scratch: &mut Vec<u8>,
        clock: &mut Clock,
    ) -> Result<(), Error> {
        #[cfg(test)]
        if self.panic_on == Some(index) {
            panic!("test panic on record {index}");
        }
        let record = self
            .dataset
            .record(usize::try_from(index).unwrap_or(usize::MAX))
            .map_err(Error::Shard)?;
        let record_error = |source| Error::Record {
            shard: record.shard_name().to_string(),
            record: record.local_index(),
            index: record.index,
            source,
        };
        let t0 = Instant::now();
        if self.verify {
            record.verify().map_err(record_error)?;
        }
        let t1 = Instant::now();
        let pixels = record.pixels(scratch).map_err(record_error)?;
        let t2 = Instant::now();

        let iv = self.shape.image_values();
        let crop = self.shape.crop as u32;
        let first = buf.indices.len() * self.shape.views;
        let mut put = |slot: usize, w: Window, light: [f32; 3]| -> Result<(), Error> {
            let range = slot * iv..(slot + 1) * iv;
            match &self.norm {
                Some(norm) => sv_augment::crop_f32(
                    pixels,
                    self.side,
                    crop,
                    w,
                    light,
                    norm,
                    &mut buf.f32[range],
                )?,
                None => {
                    let layout = match self.shape.layout {
                        Layout::Nhwc => ImageLayout::Hwc,
                        Layout::Nchw => ImageLayout::Chw,
                    };
                    sv_augment::crop_u8(pixels, self.side, crop, w, layout, &mut buf.u8[range])?
                }
            }
            buf.windows.push(w);
            buf.lighting.push(light);
            Ok(())
        };
        match &self.mode {
            Mode::Train(aug, lighting) => {
                let epoch = buf.position.epoch;
                let p = aug.draw(self.seed, epoch, index);
                let light = lighting.map_or([0.0; 3], |l| l.offset(p.alpha_unit));
                put(first, p.window, light)?;
            }
            Mode::Fixed(windows) => {
                for (v, &w) in windows.iter().enumerate() {
                    put(first + v, w, [0.0; 3])?;
                }
            }
        }
        if self.release_pages
            && let Err(e) = record.release_pages()
        {
            // Only costs memory, never correctness: say so and carry on.
            tracing::debug!(error = %e, "could not release a record's pages");
        }
        buf.indices.push(index);
        buf.labels.push(record.label);
        let t3 = Instant::now();
        clock.verify += ns(t1 - t0);
        clock.decode += ns(t2 - t1);
        clock.augment += ns(t3 - t2);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) fn with_panic(
    dataset: Arc<Dataset>,
    config: LoaderConfig,
    panic_on: u64,
) -> Result<Loader, Error> {
    Loader::build(dataset, config, Some(panic_on))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sv_core::{ClassInfo, Split};
    use sv_shard::{Codec, DatasetWriter, WriterConfig};

    /// 32 raw 16x16 records of one class.
    fn tiny(dir: &std::path::Path) -> Arc<Dataset> {
        let config = WriterConfig {
            split: Split::Train,
            side: 16,
            codec: Codec::Raw,
            jpeg_quality: 90,
            jpeg_subsampling: sv_shard::Subsampling::default(),
            classes: vec![ClassInfo {
                wnid: "n0".into(),
                name: "zero".into(),
            }],
            max_shard_bytes: 1 << 20,
        };
        let mut w = DatasetWriter::create(dir, config).unwrap();
        for i in 0..32u8 {
            w.push(0, &[i; 16 * 16 * 3]).unwrap();
        }
        w.finish().unwrap();
        Arc::new(Dataset::open(dir).unwrap())
    }

    #[test]
    fn counts_past_their_limits_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let ds = tiny(dir.path());
        let base = LoaderConfig {
            batch_size: 4,
            workers: 1,
            epochs: Some(1),
            augment: Augment::train(8),
            ..LoaderConfig::default()
        };
        let refused = |config: LoaderConfig, expect: &str| {
            let err = Loader::new(ds.clone(), config).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err:?}");
            assert!(err.to_string().contains(expect), "{err}");
        };
        // u64::MAX workers panicked with "capacity overflow"; 1e8 took 17 GB.
        for workers in [usize::MAX, 100_000_000, crate::MAX_WORKERS + 1] {
            let config = LoaderConfig {
                workers,
                ..base.clone()
            };
            refused(config, "workers");
        }
        let config = LoaderConfig {
            prefetch: usize::MAX,
            ..base.clone()
        };
        refused(config, "prefetch");
        let config = LoaderConfig {
            hold: usize::MAX - 1,
            ..base.clone()
        };
        refused(config, "hold");
        let config = LoaderConfig {
            batch_size: usize::MAX / 2,
            drop_last: false,
            ..base.clone()
        };
        refused(config, "batch size");
        // At the limits it runs.
        let config = LoaderConfig {
            workers: 2,
            prefetch: crate::MAX_PREFETCH,
            hold: crate::MAX_PREFETCH,
            ..base.clone()
        };
        let batches = Loader::new(ds.clone(), config).unwrap().count();
        assert_eq!(batches, 8);
    }

    #[test]
    fn a_buffer_that_cannot_exist_is_refused() {
        let shape = Shape {
            crop: 1 << 24,
            views: 10,
            layout: Layout::Nchw,
            float: true,
        };
        let err = check_buffer_size(&shape, crate::MAX_BATCH_SIZE).unwrap_err();
        assert!(err.to_string().contains("does not fit in memory"), "{err}");
        let fine = Shape { crop: 227, ..shape };
        check_buffer_size(&fine, 128).unwrap();
    }

    #[test]
    fn worker_panic_becomes_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ds = tiny(dir.path());
        let cfg = LoaderConfig {
            batch_size: 4,
            workers: 2,
            shuffle: false,
            epochs: Some(1),
            augment: Augment::train(8),
            ..LoaderConfig::default()
        };
        let mut loader = with_panic(ds, cfg, 13).unwrap();
        let items: Vec<_> = loader.by_ref().collect();
        // batches 0..3 are fine, batch 3 (records 12..16) holds the panic
        assert_eq!(items.len(), 4);
        assert!(items[..3].iter().all(Result::is_ok));
        match &items[3] {
            Err(Error::WorkerPanic { message }) => {
                assert!(message.contains("record 13"), "{message}")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(loader.next().is_none());
    }
}
