//! Small PNG charts for evaluation reports: confusion-matrix heat maps and accuracy bars. Text is
//! drawn with DejaVu Sans when the system has it (Debian: fonts-dejavu-core); without a font the
//! charts are drawn without text and the Markdown report carries the numbers.

use std::path::Path;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

fn font() -> Option<&'static FontVec> {
    crate::font::dejavu_sans()
}

pub fn has_font() -> bool {
    font().is_some()
}

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([20, 20, 20]);
const GREY: Rgb<u8> = Rgb([200, 200, 200]);
const BAR: Rgb<u8> = Rgb([52, 101, 164]);

/// Where text is anchored relative to (x, y).
#[derive(Clone, Copy)]
enum Anchor {
    Left,
    Centre,
    Right,
}

fn text_width(text: &str, size: f32) -> f32 {
    font().map_or(0.0, |font| crate::font::text_width(font, text, size))
}

/// Draws `text` with its vertical centre at `y`.
fn draw_text(
    img: &mut RgbImage,
    text: &str,
    x: f32,
    y: f32,
    size: f32,
    anchor: Anchor,
    colour: Rgb<u8>,
) {
    let Some(font) = font() else { return };
    let scaled = font.as_scaled(PxScale::from(size));
    let width = text_width(text, size);
    let pen_x = match anchor {
        Anchor::Left => x,
        Anchor::Centre => x - width / 2.0,
        Anchor::Right => x - width,
    };
    let baseline = y + (scaled.ascent() + scaled.descent()) / 2.0;
    crate::font::rasterise(font, text, (pen_x, baseline), size, |px, py, coverage| {
        if px < 0 || py < 0 || px >= img.width() as i64 || py >= img.height() as i64 {
            return;
        }
        let p = img.get_pixel_mut(px as u32, py as u32);
        for (v, c) in p.0.iter_mut().zip(colour.0) {
            *v = (f32::from(*v) * (1.0 - coverage) + f32::from(c) * coverage).round() as u8;
        }
    });
}

fn fill(img: &mut RgbImage, x0: u32, y0: u32, w: u32, h: u32, colour: Rgb<u8>) {
    for y in y0..(y0 + h).min(img.height()) {
        for x in x0..(x0 + w).min(img.width()) {
            img.put_pixel(x, y, colour);
        }
    }
}

/// A white picture with a centred title.
fn canvas(w: u32, h: u32, title: &str) -> RgbImage {
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    draw_text(
        &mut img,
        title,
        w as f32 / 2.0,
        18.0,
        18.0,
        Anchor::Centre,
        BLACK,
    );
    img
}

/// White → dark blue.
fn heat(v: f64) -> Rgb<u8> {
    let t = v.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    Rgb([lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0)])
}

/// A confusion matrix (rows truth, columns prediction) shaded by row-normalised share, with counts.
pub fn confusion_png(
    path: &Path,
    title: &str,
    labels: &[String],
    counts: &[Vec<u64>],
) -> Result<(), image::ImageError> {
    let n = labels.len().max(1) as u32;
    let cell = if n > 6 { 52 } else { 80 };
    let (left, top) = (90u32, 70u32);
    let (w, h) = (left + n * cell + 20, top + n * cell + 50);
    let mut img = canvas(w, h, title);
    draw_text(
        &mut img,
        "predicted",
        (left + n * cell / 2) as f32,
        36.0,
        13.0,
        Anchor::Centre,
        BLACK,
    );
    draw_text(
        &mut img,
        "true",
        12.0,
        (top + n * cell + 30) as f32,
        13.0,
        Anchor::Left,
        BLACK,
    );
    for (i, row) in counts.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (j, &c) in row.iter().enumerate() {
            let share = if total > 0 {
                c as f64 / total as f64
            } else {
                0.0
            };
            let (x, y) = (left + j as u32 * cell, top + i as u32 * cell);
            fill(&mut img, x, y, cell - 1, cell - 1, heat(share));
            let colour = if share > 0.5 { WHITE } else { BLACK };
            draw_text(
                &mut img,
                &c.to_string(),
                (x + cell / 2) as f32,
                (y + cell / 2) as f32,
                if n > 6 { 11.0 } else { 14.0 },
                Anchor::Centre,
                colour,
            );
        }
    }
    for (i, label) in labels.iter().enumerate() {
        let centre = (i as u32 * cell + cell / 2) as f32;
        draw_text(
            &mut img,
            label,
            (left - 6) as f32,
            top as f32 + centre,
            12.0,
            Anchor::Right,
            BLACK,
        );
        draw_text(
            &mut img,
            label,
            left as f32 + centre,
            (top - 12) as f32,
            if n > 6 { 10.0 } else { 12.0 },
            Anchor::Centre,
            BLACK,
        );
    }
    img.save(path)
}

/// Vertical bars of values in [0, 1] with their labels and values.
pub fn bars_png(
    path: &Path,
    title: &str,
    labels: &[String],
    values: &[f64],
) -> Result<(), image::ImageError> {
    let n = labels.len().max(1) as u32;
    let bar = 56u32;
    let (left, top, plot_h) = (50u32, 50u32, 260u32);
    let (w, h) = (left + n * bar + 20, top + plot_h + 50);
    let mut img = canvas(w, h, title);
    for tick in 0..=4 {
        let v = f64::from(tick) / 4.0;
        let y = top + plot_h - (v * f64::from(plot_h)) as u32;
        fill(&mut img, left, y, n * bar, 1, GREY);
        draw_text(
            &mut img,
            &format!("{v:.2}"),
            (left - 6) as f32,
            y as f32,
            11.0,
            Anchor::Right,
            BLACK,
        );
    }
    for (i, (&v, label)) in values.iter().zip(labels).enumerate() {
        let v = if v.is_finite() {
            v.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let bh = (v * f64::from(plot_h)) as u32;
        let x = left + i as u32 * bar + 6;
        fill(&mut img, x, top + plot_h - bh, bar - 12, bh, BAR);
        draw_text(
            &mut img,
            &format!("{v:.2}"),
            (x + (bar - 12) / 2) as f32,
            (top + plot_h - bh) as f32 - 9.0,
            11.0,
            Anchor::Centre,
            BLACK,
        );
        draw_text(
            &mut img,
            label,
            (x + (bar - 12) / 2) as f32,
            (top + plot_h + 14) as f32,
            11.0,
            Anchor::Centre,
            BLACK,
        );
    }
    img.save(path)
}
