//! Charts of evaluation reports, SVG with plotters (as `faceflow report`): confusion-matrix heat
//! maps and accuracy bars. The viewer draws the text: no font or system library needed.

use std::path::Path;

use plotters::prelude::*;

use crate::report::sized_canvas;

/// White → dark blue.
fn heat(v: f64) -> RGBColor {
    let t = v.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

/// The label of class `i` at the middle of its cell or bar (`x` is a position on a 0..n axis).
fn class_label(labels: &[String], x: f64) -> String {
    let i = x.floor();
    if (x - i - 0.5).abs() < 1e-6 && i >= 0.0 {
        labels.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

/// A confusion matrix (rows truth from the top, columns prediction) shaded by row-normalised
/// share, with the counts written in.
pub fn confusion_svg(
    path: &Path,
    title: &str,
    labels: &[String],
    counts: &[Vec<u64>],
) -> Result<(), String> {
    let n = labels.len().max(1);
    let cell = if n > 6 { 56 } else { 84 };
    let side = (n * cell) as u32;
    let root = sized_canvas(path, (side + 130, side + 110))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..n as f64, 0f64..n as f64)
        .map_err(|e| e.to_string())?;
    let x_labels = labels.to_vec();
    // Row 0 at the top: the y axis counts rows from the bottom.
    let y_labels: Vec<String> = labels.iter().rev().cloned().collect();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(2 * n + 1)
        .y_labels(2 * n + 1)
        .x_label_formatter(&move |x| class_label(&x_labels, *x))
        .y_label_formatter(&move |y| class_label(&y_labels, *y))
        .x_desc("predicted")
        .y_desc("true")
        .draw()
        .map_err(|e| e.to_string())?;
    let size = if n > 6 { 12 } else { 15 };
    for (i, row) in counts.iter().enumerate() {
        let total: u64 = row.iter().sum();
        let y = (n - 1 - i) as f64;
        for (j, &c) in row.iter().enumerate() {
            let share = if total > 0 {
                c as f64 / total as f64
            } else {
                0.0
            };
            let x = j as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x, y), (x + 1.0, y + 1.0)],
                    heat(share).filled(),
                )))
                .map_err(|e| e.to_string())?;
            let colour = if share > 0.5 { WHITE } else { BLACK };
            let style = ("sans-serif", size).into_font().color(&colour).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ),
            );
            chart
                .draw_series(std::iter::once(Text::new(
                    c.to_string(),
                    (x + 0.5, y + 0.5),
                    style,
                )))
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

/// Vertical bars of values in [0, 1] with their labels and values.
pub fn bars_svg(path: &Path, title: &str, labels: &[String], values: &[f64]) -> Result<(), String> {
    let n = labels.len().max(1);
    let root = sized_canvas(path, ((n * 64 + 110) as u32, 380))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n as f64, 0f64..1.1f64)
        .map_err(|e| e.to_string())?;
    let names = labels.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(&move |x| class_label(&names, *x))
        .y_desc("accuracy")
        .draw()
        .map_err(|e| e.to_string())?;
    // Nothing scored (NaN): no bar, labelled n/a.
    let labels: Vec<String> = values
        .iter()
        .map(|v| {
            if v.is_finite() {
                format!("{v:.2}")
            } else {
                "n/a".into()
            }
        })
        .collect();
    let values: Vec<f64> = values
        .iter()
        .map(|&v| {
            if v.is_finite() {
                v.clamp(0.0, 1.0)
            } else {
                0.0
            }
        })
        .collect();
    chart
        .draw_series(values.iter().enumerate().map(|(i, &v)| {
            let x = i as f64;
            Rectangle::new(
                [(x + 0.12, 0.0), (x + 0.88, v)],
                RGBColor(52, 101, 164).filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, &v)| {
            let style = ("sans-serif", 13).into_font().color(&BLACK).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Bottom,
                ),
            );
            Text::new(labels[i].clone(), (i as f64 + 0.5, v + 0.01), style)
        }))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_name_their_classes_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let labels: Vec<String> = ["female", "male"].map(String::from).to_vec();
        let path = dir.path().join("c.svg");
        confusion_svg(&path, "Gender", &labels, &[vec![40, 2], vec![3, 55]]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for text in [
            "Gender",
            "female",
            "male",
            "\n40\n",
            "\n55\n",
            "predicted",
            "true",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        let path = dir.path().join("b.svg");
        bars_svg(&path, "Per group", &labels, &[0.25, f64::NAN]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("0.25") && svg.contains("male"));
        assert_eq!(class_label(&labels, 1.5), "male");
        assert_eq!(class_label(&labels, 1.0), "");
    }
}
