//! Batch buffers: allocated once, filled by a worker, lent to the consumer as a
//! [`Batch`], and returned to the pool when the batch is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sv_augment::Window;

use crate::{Layout, Position};

/// The storage of one batch; reused for many batches.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    pub(crate) position: Position,
    /// Dataset indices the sampler asked for.
    pub(crate) requested: Vec<u64>,
    /// Dataset indices of the samples actually in the batch (requested minus skipped).
    pub(crate) indices: Vec<u64>,
    pub(crate) labels: Vec<u32>,
    /// Per image (sample-major when several views).
    pub(crate) lighting: Vec<[f32; 3]>,
    pub(crate) windows: Vec<Window>,
    pub(crate) u8: Vec<u8>,
    pub(crate) f32: Vec<f32>,
    pub(crate) skipped: usize,
}

/// Static facts every batch of one loader shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) crop: usize,
    pub(crate) views: usize,
    pub(crate) layout: Layout,
    pub(crate) float: bool,
}

impl Shape {
    pub(crate) fn image_values(&self) -> usize {
        self.crop * self.crop * 3
    }
}

/// One batch, in order. Owns its buffers (it is `Send` and may outlive the loader);
/// dropping it hands the buffers back to the loader's pool.
pub struct Batch {
    buf: Option<Box<Buffers>>,
    shape: Shape,
    pool: async_channel::Sender<Box<Buffers>>,
    held: Arc<AtomicUsize>,
    batches_per_epoch: u64,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("position", &self.position())
            .field("samples", &self.len())
            .field("shape", &self.shape())
            .finish()
    }
}

impl Batch {
    pub(crate) fn new(
        buf: Box<Buffers>,
        shape: Shape,
        pool: async_channel::Sender<Box<Buffers>>,
        held: Arc<AtomicUsize>,
        batches_per_epoch: u64,
    ) -> Batch {
        held.fetch_add(1, Ordering::SeqCst);
        Batch {
            buf: Some(buf),
            shape,
            pool,
            held,
            batches_per_epoch,
        }
    }

    fn buf(&self) -> &Buffers {
        // Only `drop` takes the buffers out.
        self.buf
            .as_deref()
            .unwrap_or_else(|| unreachable!("batch buffers taken"))
    }

    /// Epoch and batch number of this batch.
    pub fn position(&self) -> Position {
        self.buf().position
    }

    /// Where to resume so that the next batch produced is the one after this.
    pub fn next_position(&self) -> Position {
        let p = self.position();
        if p.batch + 1 >= self.batches_per_epoch {
            Position {
                epoch: p.epoch + 1,
                batch: 0,
            }
        } else {
            Position {
                epoch: p.epoch,
                batch: p.batch + 1,
            }
        }
    }

    /// Samples in the batch (the batch size, less any skipped records).
    pub fn len(&self) -> usize {
        self.buf().indices.len()
    }

    /// Whether every sample of the batch was skipped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Crops per sample (10 for ten-crop, else 1).
    pub fn views(&self) -> usize {
        self.shape.views
    }

    /// Crops in the batch: `len() * views()`.
    pub fn images(&self) -> usize {
        self.len() * self.shape.views
    }

    /// Records of this batch that were damaged and skipped ([`crate::OnError::Skip`]).
    pub fn skipped(&self) -> usize {
        self.buf().skipped
    }

    /// `[images, 3, crop, crop]` for NCHW (every float batch), `[images, crop, crop,
    /// 3]` for NHWC.
    pub fn shape(&self) -> [usize; 4] {
        let (n, c) = (self.images(), self.shape.crop);
        match self.layout() {
            Layout::Nchw => [n, 3, c, c],
            Layout::Nhwc => [n, c, c, 3],
        }
    }

    /// Memory order of the pixels (float batches are always NCHW).
    pub fn layout(&self) -> Layout {
        if self.shape.float {
            Layout::Nchw
        } else {
            self.shape.layout
        }
    }

    /// uint8 pixels (`shape()`), or `None` for a float batch.
    pub fn pixels_u8(&self) -> Option<&[u8]> {
        (!self.shape.float).then(|| &self.buf().u8[..self.images() * self.shape.image_values()])
    }

    /// float32 normalised NCHW pixels, or `None` for a uint8 batch.
    pub fn pixels_f32(&self) -> Option<&[f32]> {
        self.shape
            .float
            .then(|| &self.buf().f32[..self.images() * self.shape.image_values()])
    }

    /// The uint8 pixels, writable: for a consumer that hands the batch's own memory to
    /// code that may write into it (a numpy array or tensor wrapping it without a
    /// copy). `None` for a float batch.
    pub fn pixels_u8_mut(&mut self) -> Option<&mut [u8]> {
        let n = self.images() * self.shape.image_values();
        let float = self.shape.float;
        let buf = self.buf.as_deref_mut()?;
        (!float).then(|| &mut buf.u8[..n])
    }

    /// The float32 pixels, writable (see [`Batch::pixels_u8_mut`]); `None` for a
    /// uint8 batch.
    pub fn pixels_f32_mut(&mut self) -> Option<&mut [f32]> {
        let n = self.images() * self.shape.image_values();
        let float = self.shape.float;
        let buf = self.buf.as_deref_mut()?;
        float.then(|| &mut buf.f32[..n])
    }

    /// Class label per sample.
    pub fn labels(&self) -> &[u32] {
        &self.buf().labels
    }

    /// Dataset record index per sample.
    pub fn indices(&self) -> &[u64] {
        &self.buf().indices
    }

    /// Per image: the RGB lighting offset in grey levels (0-255 scale); already added
    /// in a float batch, to be added on the device for a uint8 batch. Zero without
    /// lighting.
    pub fn lighting(&self) -> &[[f32; 3]] {
        &self.buf().lighting
    }

    /// Per image: the crop origin in the stored image and the flip flag (a flipped
    /// crop is already mirrored in the pixels).
    pub fn windows(&self) -> &[Window] {
        &self.buf().windows
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
        if let Some(buf) = self.buf.take() {
            // The pool has room for every buffer; a closed pool (loader gone) frees it.
            let _ = self.pool.try_send(buf);
        }
    }
}
