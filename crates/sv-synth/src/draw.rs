//! Drawing one synthetic photo: a class object (shape + palette + texture, the class
//! signature) at a random position, scale and rotation, over a random smooth
//! background with a couple of plain distractor blobs and sensor-like noise.

use rand::Rng;

/// Shapes, indexed by `class % SHAPES.len()`.
pub(crate) const SHAPES: [&str; 10] = [
    "disc", "square", "triangle", "ring", "cross", "diamond", "star", "crescent", "hexagon", "bar",
];
/// Textures, indexed from the class as in [`Signature::of`].
pub(crate) const TEXTURES: [&str; 5] = ["plain", "striped", "checkered", "dotted", "glowing"];
/// Names for twelve hue bands (for class names only).
const HUES: [&str; 12] = [
    "red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue", "violet",
    "magenta", "rose",
];

/// What makes a class recognisable.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Signature {
    shape: usize,
    texture: usize,
    /// Hue of the primary colour in [0, 1).
    hue: f32,
    /// The secondary colour is the complement (true) or a dark shade of the primary.
    complement: bool,
}

impl Signature {
    pub(crate) fn of(class: u32) -> Signature {
        let c = class as usize;
        Signature {
            shape: c % SHAPES.len(),
            // Shifted each round of shapes, so classes sharing a shape differ in texture.
            texture: (c + c / SHAPES.len()) % TEXTURES.len(),
            // Golden-ratio steps spread the hues of any number of classes.
            hue: (class as f32 * 0.618_034 + 0.05).fract(),
            complement: (c / 7).is_multiple_of(2),
        }
    }

    pub(crate) fn name(&self) -> String {
        let band = ((self.hue * 12.0) as usize).min(11);
        format!(
            "{} {} {}",
            HUES[band], TEXTURES[self.texture], SHAPES[self.shape]
        )
    }
}

/// A pixel-exact bounding box (inclusive), as ImageNet's `xmin ymin xmax ymax`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BoundingBox {
    pub xmin: u32,
    pub ymin: u32,
    pub xmax: u32,
    pub ymax: u32,
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i as u32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r * 255.0, g * 255.0, b * 255.0]
}

/// Is local point (u, v) (object radius 1) inside `shape`?
fn inside(shape: usize, u: f32, v: f32) -> bool {
    let r2 = u * u + v * v;
    match shape {
        0 => r2 <= 1.0,
        1 => u.abs().max(v.abs()) <= 0.8,
        2 => v <= 0.6 && v >= -0.9 + 1.765 * u.abs(),
        3 => (0.36..=1.0).contains(&r2),
        4 => (u.abs() <= 0.3 && v.abs() <= 0.95) || (v.abs() <= 0.3 && u.abs() <= 0.95),
        5 => u.abs() + v.abs() <= 1.0,
        6 => {
            if r2 > 1.0 {
                return false;
            }
            let a = v.atan2(u);
            r2.sqrt() <= 0.5 + 0.45 * (5.0 * a).cos()
        }
        7 => r2 <= 1.0 && (u - 0.45) * (u - 0.45) + v * v > 0.6,
        8 => (u.abs() * 0.866 + v.abs() * 0.5).max(v.abs()) <= 0.87,
        _ => u.abs() <= 0.95 && v.abs() <= 0.35,
    }
}

/// Weight of the secondary colour at local point (u, v), in [0, 1].
fn texture(kind: usize, u: f32, v: f32, freq: f32) -> f32 {
    match kind {
        0 => 0.0,
        1 => {
            if (u * freq).rem_euclid(1.0) < 0.5 {
                1.0
            } else {
                0.0
            }
        }
        2 => {
            let a = (u * freq * 0.8).floor() as i32 + (v * freq * 0.8).floor() as i32;
            (a & 1) as f32
        }
        3 => {
            let (fu, fv) = (
                (u * freq).rem_euclid(1.0) - 0.5,
                (v * freq).rem_euclid(1.0) - 0.5,
            );
            if fu * fu + fv * fv < 0.09 { 1.0 } else { 0.0 }
        }
        _ => (u * u + v * v).sqrt().min(1.0),
    }
}

/// Cheap per-pixel noise in [-1, 1) from a position and a per-image key.
#[inline]
fn noise(x: u32, y: u32, key: u32) -> f32 {
    let mut h = x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77) ^ key;
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    (h >> 24) as f32 / 128.0 - 1.0
}

/// Render an RGB image of `w x h` for `class` into `rgb` (resized to fit) and return
/// the object's bounding box.
pub(crate) fn render(
    rng: &mut impl Rng,
    class: u32,
    w: u32,
    h: u32,
    rgb: &mut Vec<u8>,
) -> BoundingBox {
    let sig = Signature::of(class);
    rgb.clear();
    rgb.resize(w as usize * h as usize * 3, 0);
    let (wf, hf) = (w as f32, h as f32);

    // Background: a gradient between two muted colours in a random direction, with
    // separable low-frequency waves for uneven light.
    let bg_hue: f32 = rng.random();
    let c0 = hsv(
        bg_hue,
        rng.random_range(0.05..0.45),
        rng.random_range(0.25..0.95),
    );
    let c1 = hsv(
        bg_hue + rng.random_range(-0.2..0.2),
        rng.random_range(0.05..0.45),
        rng.random_range(0.25..0.95),
    );
    let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let (dx, dy) = (angle.cos(), angle.sin());
    let span = (wf * dx.abs() + hf * dy.abs()).max(1.0);
    let wave = |n: u32, rng: &mut dyn rand::RngCore| -> Vec<f32> {
        let f = rng.random_range(1.0f32..4.0) * std::f32::consts::TAU / n.max(1) as f32;
        let phase = rng.random_range(0.0f32..std::f32::consts::TAU);
        let amp = rng.random_range(4.0f32..18.0);
        (0..n).map(|i| amp * (f * i as f32 + phase).sin()).collect()
    };
    let wx = wave(w, rng);
    let wy = wave(h, rng);
    let noise_amp: f32 = rng.random_range(3.0..12.0);
    let key: u32 = rng.random();
    for y in 0..h {
        let row = &mut rgb[(y * w * 3) as usize..((y + 1) * w * 3) as usize];
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let xf = x as f32;
            let t = ((xf * dx + y as f32 * dy) / span + 0.5).clamp(0.0, 1.0);
            let light = wx[x] + wy[y as usize];
            for c in 0..3 {
                px[c] = (c0[c] + (c1[c] - c0[c]) * t + light).clamp(0.0, 255.0) as u8;
            }
        }
    }

    // Distractors: plain ellipses of random colour, smaller than the object.
    let short = wf.min(hf);
    for _ in 0..rng.random_range(0..3) {
        let col = hsv(
            rng.random(),
            rng.random_range(0.0..0.6),
            rng.random_range(0.2..1.0),
        );
        let (cx, cy) = (rng.random_range(0.0..wf), rng.random_range(0.0..hf));
        let (rx, ry) = (
            short * rng.random_range(0.04..0.14),
            short * rng.random_range(0.04..0.14),
        );
        fill(rgb, w, h, cx, cy, rx.max(ry), |px, py| {
            let (u, v) = ((px - cx) / rx, (py - cy) / ry);
            (u * u + v * v <= 1.0).then_some(col)
        });
    }

    // The object: the class signature with per-image jitter of colour and pattern.
    let hue = sig.hue + rng.random_range(-0.025..0.025);
    let primary = hsv(hue, rng.random_range(0.65..1.0), rng.random_range(0.7..1.0));
    let secondary = if sig.complement {
        hsv(
            hue + 0.5,
            rng.random_range(0.5..0.9),
            rng.random_range(0.55..0.95),
        )
    } else {
        hsv(
            hue,
            rng.random_range(0.6..1.0),
            rng.random_range(0.15..0.35),
        )
    };
    let radius = short * rng.random_range(0.18..0.42);
    let stretch: f32 = rng.random_range(0.8..1.25);
    let cx = rng.random_range(radius * 0.8..(wf - radius * 0.8).max(radius * 0.8 + 1.0));
    let cy = rng.random_range(radius * 0.8..(hf - radius * 0.8).max(radius * 0.8 + 1.0));
    let theta: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let (sin, cos) = theta.sin_cos();
    let freq: f32 = rng.random_range(2.5..4.0);
    let reach = radius * stretch.max(1.0 / stretch) * 1.05;
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0u32, 0u32);
    fill(rgb, w, h, cx, cy, reach, |px, py| {
        let (ox, oy) = ((px - cx) / radius, (py - cy) / radius);
        let u = (ox * cos + oy * sin) / stretch;
        let v = (-ox * sin + oy * cos) * stretch;
        if !inside(sig.shape, u, v) {
            return None;
        }
        let (xi, yi) = (px as u32, py as u32);
        x0 = x0.min(xi);
        y0 = y0.min(yi);
        x1 = x1.max(xi);
        y1 = y1.max(yi);
        let t = texture(sig.texture, u, v, freq);
        Some([0, 1, 2].map(|c| primary[c] + (secondary[c] - primary[c]) * t))
    });
    let bbox = if x0 <= x1 && y0 <= y1 {
        BoundingBox {
            xmin: x0,
            ymin: y0,
            xmax: x1,
            ymax: y1,
        }
    } else {
        // Too small to cover a pixel centre: report the nominal extent.
        let c = |v: f32, max: u32| (v.max(0.0) as u32).min(max - 1);
        BoundingBox {
            xmin: c(cx - radius, w),
            ymin: c(cy - radius, h),
            xmax: c(cx + radius, w),
            ymax: c(cy + radius, h),
        }
    };

    // Sensor noise over everything.
    for y in 0..h {
        let row = &mut rgb[(y * w * 3) as usize..((y + 1) * w * 3) as usize];
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let n = noise(x as u32, y, key) * noise_amp;
            for v in px.iter_mut() {
                *v = (f32::from(*v) + n).clamp(0.0, 255.0) as u8;
            }
        }
    }
    bbox
}

/// Paint the pixels within `reach` of (cx, cy) whose centre `colour` accepts.
fn fill(
    rgb: &mut [u8],
    w: u32,
    h: u32,
    cx: f32,
    cy: f32,
    reach: f32,
    mut colour: impl FnMut(f32, f32) -> Option<[f32; 3]>,
) {
    let xa = (cx - reach).floor().max(0.0) as u32;
    let xb = ((cx + reach).ceil().max(0.0) as u32).min(w);
    let ya = (cy - reach).floor().max(0.0) as u32;
    let yb = ((cy + reach).ceil().max(0.0) as u32).min(h);
    for y in ya..yb {
        for x in xa..xb {
            if let Some(c) = colour(x as f32 + 0.5, y as f32 + 0.5) {
                let i = ((y * w + x) * 3) as usize;
                for k in 0..3 {
                    rgb[i + k] = c[k].clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn first_classes_have_distinct_shape_and_colour() {
        let sigs: Vec<Signature> = (0..10).map(Signature::of).collect();
        for (i, a) in sigs.iter().enumerate() {
            for b in &sigs[i + 1..] {
                assert_ne!(a.shape, b.shape);
                assert!((a.hue - b.hue).abs() > 0.02);
            }
        }
        assert_eq!(Signature::of(0).name(), "red plain disc");
    }

    #[test]
    fn object_is_drawn_inside_its_box() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);
        let mut px = Vec::new();
        for class in 0..10 {
            let b = render(&mut rng, class, 300, 200, &mut px);
            assert!(b.xmin <= b.xmax && b.xmax < 300 && b.ymin <= b.ymax && b.ymax < 200);
            // the object spans at least 0.18 * 200 * 0.8 pixels in some direction
            assert!(b.xmax - b.xmin >= 20 || b.ymax - b.ymin >= 20, "{b:?}");
        }
    }
}
