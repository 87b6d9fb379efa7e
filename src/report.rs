//! `faceflow report`: a run's JSON Lines turned into pictures and one HTML page — who passed and
//! when. People are track records (one per person), not frames: people per minute per stream, the
//! age-group × gender make-up of the people, how long they stayed, and faces per frame over time.
//! Charts are SVG (plotters): the browser draws their text, no font or system library needed.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::model::AgeGrouping;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{path}:{line}: not a faceflow record: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: no frame or track records (is it the JSON of `faceflow run`?)")]
    Empty { path: PathBuf },
    #[error("cannot write {path}: {reason}")]
    Write {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("chart {name}: {message}")]
    Chart { name: String, message: String },
}

/// A person: a track record.
type Person = crate::record::TrackRecord;

/// A frame: its stream, time (and clock time, when it has one) and number of faces.
#[derive(Debug, Clone)]
struct FrameCount {
    stream: String,
    pts_ms: f64,
    unix_ms: Option<f64>,
    faces: usize,
}

/// `time` as written in records (RFC 3339), in ms since the Unix epoch.
fn unix_ms(time: Option<&str>) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(time?)
        .ok()
        .map(|t| t.timestamp_micros() as f64 / 1e3)
}

/// The charts' time axis: clock time (UTC) from the run's earliest moment when every record
/// has one, so cameras line up in wall time; else each stream's own time from its start. Every
/// panel (all streams, each stream) has the same axis, so they line up too.
struct Timeline {
    origin_unix_ms: Option<f64>,
    /// The axis's end: the latest moment of the run, s.
    end_s: f64,
}

impl Timeline {
    fn of(records: &RunRecords) -> Self {
        let people = records
            .people
            .iter()
            .map(|p| unix_ms(p.first_time.as_deref()));
        let frames = records.frames.iter().map(|f| f.unix_ms);
        let times: Option<Vec<f64>> = people.chain(frames).collect();
        let mut timeline = Self {
            origin_unix_ms: times
                .filter(|t| !t.is_empty())
                .map(|t| t.into_iter().fold(f64::INFINITY, f64::min)),
            end_s: 0.0,
        };
        timeline.end_s = records
            .people
            .iter()
            .map(|p| timeline.at_ms(p.first_pts_ms, unix_ms(p.first_time.as_deref())))
            .chain(
                records
                    .frames
                    .iter()
                    .map(|f| timeline.at_ms(f.pts_ms, f.unix_ms)),
            )
            .fold(0.0, f64::max)
            / 1000.0;
        timeline
    }

    /// Where a moment falls on the axis, ms: its clock time from the origin, or `pts_ms`.
    fn at_ms(&self, pts_ms: f64, unix_ms: Option<f64>) -> f64 {
        match (self.origin_unix_ms, unix_ms) {
            (Some(origin), Some(t)) => t - origin,
            _ => pts_ms,
        }
    }

    /// The axis's title, for a unit of `unit`.
    fn desc(&self, unit: &str) -> String {
        match self.origin_unix_ms {
            Some(_) => "time (UTC)".to_string(),
            None => format!("{unit} into the stream"),
        }
    }

    /// The label at `x` units of `unit_s` seconds along the axis.
    fn label(&self, x: f64, unit_s: f64) -> String {
        match self.origin_unix_ms {
            Some(origin) => chrono::DateTime::from_timestamp_millis(
                (origin + x * unit_s * 1000.0).round() as i64,
            )
            .map(|t| t.format("%H:%M:%S").to_string())
            .unwrap_or_default(),
            None => format!("{x:.0}"),
        }
    }
}

/// What a run's JSON says, read for the report.
#[derive(Debug, Default)]
pub struct RunRecords {
    people: Vec<Person>,
    frames: Vec<FrameCount>,
}

impl RunRecords {
    /// Reads frame and track records; other lines (e.g. `detect`'s image records) are errors.
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        let file = std::fs::File::open(path).map_err(|reason| ReportError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        let mut records = Self::default();
        let mut lines = std::io::BufReader::new(file).lines().enumerate().peekable();
        while let Some((i, line)) = lines.next() {
            let line = line.map_err(|reason| ReportError::Read {
                path: path.to_path_buf(),
                reason,
            })?;
            // A run still writing, or one that was killed, may end in half a line: left out.
            let last = lines.peek().is_none();
            if last && serde_json::from_str::<serde_json::Value>(&line).is_err() {
                tracing::warn!(
                    "{}:{}: an incomplete last line, left out",
                    path.display(),
                    i + 1
                );
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            let parse = |message: String| ReportError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            let value: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| parse(e.to_string()))?;
            match value["type"].as_str() {
                Some("track") => records
                    .people
                    .push(serde_json::from_value(value).map_err(|e| parse(e.to_string()))?),
                Some("frame") => {
                    let faces = value["faces"]
                        .as_array()
                        .ok_or_else(|| parse("a frame record without \"faces\"".into()))?
                        .len();
                    let (Some(stream), Some(pts_ms)) =
                        (value["stream"].as_str(), value["pts_ms"].as_f64())
                    else {
                        return Err(parse("a frame record without stream or pts_ms".into()));
                    };
                    records.frames.push(FrameCount {
                        stream: stream.to_string(),
                        pts_ms,
                        unix_ms: unix_ms(value["time"].as_str()),
                        faces,
                    });
                }
                // People announced while in view: the track record says it all at the end.
                Some("track_start" | "track_update") => {}
                _ => return Err(parse("no \"type\": \"frame\" or \"track\"".into())),
            }
        }
        if records.people.is_empty() && records.frames.is_empty() {
            return Err(ReportError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(records)
    }

    /// The age grouping the records were written with (3, 5 or 10 groups: the length of their
    /// age probabilities), when any person has an age.
    fn grouping(&self) -> Option<AgeGrouping> {
        self.people
            .iter()
            .find_map(|p| p.attributes.age.as_ref())
            .and_then(|a| AgeGrouping::from_count(a.probs.len() as u32).ok())
    }

    /// Every age group of the records' grouping in order (empty ones too), else the groups the
    /// records name.
    fn age_groups(&self) -> Vec<String> {
        if let Some(g) = self.grouping() {
            return (0..g.len()).filter_map(|i| g.label(i)).collect();
        }
        let mut named: BTreeMap<usize, String> = BTreeMap::new();
        for a in self.people.iter().filter_map(|p| p.attributes.age.as_ref()) {
            named.insert(a.index, a.group.clone());
        }
        named.into_values().collect()
    }

    /// The records of stream `stream` alone.
    fn of_stream(&self, stream: &str) -> Self {
        Self {
            people: self
                .people
                .iter()
                .filter(|p| p.stream == stream)
                .cloned()
                .collect(),
            frames: self
                .frames
                .iter()
                .filter(|f| f.stream == stream)
                .cloned()
                .collect(),
        }
    }

    fn streams(&self) -> Vec<String> {
        let mut s: Vec<String> = self
            .frames
            .iter()
            .map(|f| f.stream.clone())
            .chain(self.people.iter().map(|p| p.stream.clone()))
            .collect();
        s.sort();
        s.dedup();
        s
    }
}

/// Colours of the streams and series (Okabe–Ito).
const COLOURS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(120, 120, 120),
];

const SIZE: (u32, u32) = (580, 380);
/// Axis labels, their titles and legends: readable at the page's size (the charts are shown at
/// their own size). plotters writes a size of n as n / 1.24 px: 16 is 12.9 px.
const LABEL_FONT: (&str, u32) = ("sans-serif", 16);

fn chart_error(name: &str) -> impl Fn(String) -> ReportError + '_ {
    move |message| ReportError::Chart {
        name: name.to_string(),
        message,
    }
}

/// A white SVG picture of the report's size at `path`.
fn canvas(path: &Path) -> Result<DrawingArea<SVGBackend<'_>, Shift>, String> {
    sized_canvas(path, SIZE)
}

/// A white SVG picture of `size` at `path` (the eval report's charts too).
pub(crate) fn sized_canvas(
    path: &Path,
    size: (u32, u32),
) -> Result<DrawingArea<SVGBackend<'_>, Shift>, String> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    Ok(root)
}

/// A chart on `root` with `title` and the report's margins and label areas.
fn titled<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: impl AsRef<str>,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title.as_ref(), ("sans-serif", 24))
        .margin(12)
        // Room for the last time label, which is centred on the axis's end.
        .margin_right(32)
        .x_label_area_size(36)
        .y_label_area_size(44);
    builder
}

/// The series' legend, in the chart's free corner.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .label_font(LABEL_FONT)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| e.to_string())
}

/// People per time bin per stream (a person counts when first seen). The bin is the shortest
/// round span that gives at most about 30 bars: 5 s for a short clip, a minute for half an hour,
/// an hour for a day.
fn people_per_minute(
    records: &RunRecords,
    timeline: &Timeline,
    path: &Path,
) -> Result<(), ReportError> {
    let err = chart_error("people per minute");
    let streams = records.streams();
    let first_seen_ms =
        |p: &Person| timeline.at_ms(p.first_pts_ms, unix_ms(p.first_time.as_deref()));
    let end_s = timeline.end_s;
    let bin_s = [
        5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
    ]
    .into_iter()
    .find(|b| end_s / b <= 30.0)
    .unwrap_or((end_s / 30.0 / 3600.0).ceil() * 3600.0);
    let (unit_s, unit) = if bin_s < 60.0 {
        (1.0, "s")
    } else {
        (60.0, "min")
    };
    let bins = (end_s / bin_s).floor() as usize + 1;
    let bin = |ms: f64| ((ms.max(0.0) / 1000.0 / bin_s).floor() as usize).min(bins - 1);
    let mut counts: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for s in &streams {
        counts.insert(s, vec![0; bins]);
    }
    for p in &records.people {
        if let Some(c) = counts.get_mut(p.stream.as_str()) {
            c[bin(first_seen_ms(p))] += 1;
        }
    }
    let top = counts.values().flatten().copied().max().unwrap_or(0).max(1);
    let root = canvas(path).map_err(&err)?;
    let n = streams.len().max(1) as f64;
    let span = bin_s / unit_s;
    let mut chart = titled(
        &root,
        format!("People per {} {unit} (counted when first seen)", span),
    )
    .build_cartesian_2d(0f64..bins as f64 * span, 0u32..top + top / 5 + 1)
    .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .label_style(LABEL_FONT)
        .axis_desc_style(LABEL_FONT)
        .x_desc(timeline.desc(unit))
        .y_desc("people")
        .x_labels(8)
        .x_label_formatter(&|x| timeline.label(*x, unit_s))
        .disable_x_mesh()
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (k, (stream, c)) in counts.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let width = 0.8 / n * span;
        chart
            .draw_series(c.iter().enumerate().map(|(m, &v)| {
                let x0 = (m as f64 + 0.1) * span + k as f64 * width;
                Rectangle::new([(x0, 0), (x0 + width, v)], colour.filled())
            }))
            .map_err(|e| err(e.to_string()))?
            .label(format!("stream {stream}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    legend(&mut chart).map_err(&err)?;
    root.present().map_err(|e| err(e.to_string()))
}

/// People by age group and gender.
/// "unknown": a gender below the run's `unknown_below` threshold.
const GENDERS: [&str; 3] = ["female", "male", crate::record::UNKNOWN];

/// People of `people` per age group of `groups` (rows) and gender of [`GENDERS`] (columns);
/// people without an age or gender are not in it.
fn age_gender_counts(people: &[&Person], groups: &[String]) -> Vec<[u32; 3]> {
    let mut counts = vec![[0u32; 3]; groups.len()];
    for p in people {
        let (Some(a), Some(g)) = (&p.attributes.age, &p.attributes.gender) else {
            continue;
        };
        if let (Some(i), Some(j)) = (
            groups.iter().position(|x| *x == a.group),
            GENDERS.iter().position(|x| *x == g.label),
        ) {
            counts[i][j] += 1;
        }
    }
    counts
}

fn age_by_gender(records: &RunRecords, _: &Timeline, path: &Path) -> Result<(), ReportError> {
    let err = chart_error("age and gender");
    let genders = GENDERS;
    let names = records.age_groups();
    let everyone: Vec<&Person> = records.people.iter().collect();
    let counts = age_gender_counts(&everyone, &names);
    let top = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    let root = canvas(path).map_err(&err)?;
    let mut chart = titled(&root, "People by age group and gender")
        .build_cartesian_2d(0f64..names.len().max(1) as f64, 0u32..top + top / 5 + 1)
        .map_err(|e| err(e.to_string()))?;
    let labels = names.clone();
    chart
        .configure_mesh()
        .label_style(LABEL_FONT)
        .axis_desc_style(LABEL_FONT)
        .x_desc("age group (years)")
        .y_desc("people")
        .x_labels(names.len().max(1) * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.floor() as usize;
            // Only at the middle of each group's bars.
            if (x - i as f64 - 0.5).abs() < 1e-6 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .disable_x_mesh()
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (j, gender) in genders.iter().enumerate() {
        let colour = COLOURS[j];
        chart
            .draw_series(counts.iter().enumerate().map(|(i, c)| {
                let width = 0.8 / genders.len() as f64;
                let x0 = i as f64 + 0.1 + j as f64 * width;
                Rectangle::new([(x0, 0), (x0 + width, c[j])], colour.filled())
            }))
            .map_err(|e| err(e.to_string()))?
            .label(*gender)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    legend(&mut chart).map_err(&err)?;
    root.present().map_err(|e| err(e.to_string()))
}

/// How long people stayed in view (first to last sighting), in bins of seconds.
fn dwell_times(records: &RunRecords, _: &Timeline, path: &Path) -> Result<(), ReportError> {
    let err = chart_error("dwell time");
    let seconds: Vec<f64> = records
        .people
        .iter()
        .map(|p| ((p.last_pts_ms - p.first_pts_ms) / 1000.0).max(0.0))
        .collect();
    let longest = seconds.iter().copied().fold(0.0, f64::max).max(1.0);
    // About 12 bins of a round width.
    let width = [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|w| longest / w <= 12.0)
        .unwrap_or((longest / 12.0).ceil());
    let bins = (longest / width).floor() as usize + 1;
    let mut counts = vec![0u32; bins];
    for s in &seconds {
        counts[((s / width).floor() as usize).min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    let root = canvas(path).map_err(&err)?;
    let mut chart = titled(&root, "How long people stayed in view")
        .build_cartesian_2d(0f64..bins as f64 * width, 0u32..top + top / 5 + 1)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .label_style(LABEL_FONT)
        .axis_desc_style(LABEL_FONT)
        .x_desc("seconds in view")
        .y_desc("people")
        .disable_x_mesh()
        .draw()
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x0 = i as f64 * width;
            Rectangle::new(
                [(x0 + width * 0.05, 0), (x0 + width * 0.95, c)],
                COLOURS[0].filled(),
            )
        }))
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

/// Faces per frame over time, per stream (a mean per second, so long runs stay readable).
fn faces_over_time(
    records: &RunRecords,
    timeline: &Timeline,
    path: &Path,
) -> Result<(), ReportError> {
    let err = chart_error("faces over time");
    let streams = records.streams();
    let mut series: Vec<Vec<(f64, f64)>> = Vec::new();
    for s in &streams {
        let mut per_second: BTreeMap<i64, (usize, usize)> = BTreeMap::new();
        for f in records.frames.iter().filter(|f| &f.stream == s) {
            let e = per_second
                .entry((timeline.at_ms(f.pts_ms, f.unix_ms) / 1000.0).floor() as i64)
                .or_default();
            e.0 += f.faces;
            e.1 += 1;
        }
        series.push(
            per_second
                .into_iter()
                .map(|(sec, (faces, frames))| (sec as f64, faces as f64 / frames.max(1) as f64))
                .collect(),
        );
    }
    let end = timeline.end_s.floor().max(1.0);
    let top = series
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1.0);
    let root = canvas(path).map_err(&err)?;
    let mut chart = titled(&root, "Faces per frame over time")
        .build_cartesian_2d(0f64..end + 1.0, 0f64..top * 1.2)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .label_style(LABEL_FONT)
        .axis_desc_style(LABEL_FONT)
        .x_desc(timeline.desc("seconds"))
        .y_desc("faces per frame (mean per second)")
        .x_labels(8)
        .x_label_formatter(&|x| timeline.label(*x, 1.0))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (k, (stream, points)) in streams.iter().zip(series).enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(format!("stream {stream}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 12, y)], colour.stroke_width(2))
            });
    }
    legend(&mut chart).map_err(&err)?;
    root.present().map_err(|e| err(e.to_string()))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A chart: its file's name (for all streams; a stream's adds a prefix), its title, and what
/// draws it.
type Chart = (
    &'static str,
    &'static str,
    fn(&RunRecords, &Timeline, &Path) -> Result<(), ReportError>,
);

/// The charts, in the page's order: for all streams together, then for each stream.
const CHARTS: [Chart; 4] = [
    (
        "people_per_minute.svg",
        "People over time",
        people_per_minute,
    ),
    (
        "age_gender.svg",
        "Age group and gender of the people",
        age_by_gender,
    ),
    ("dwell_time.svg", "Time in view", dwell_times),
    (
        "faces_over_time.svg",
        "Faces per frame over time",
        faces_over_time,
    ),
];

/// Draws [`CHARTS`] of `records` into `out`, each file's name prefixed by `prefix`, and returns
/// them as HTML figures: inline, so the page stands alone and the charts' text is part of it (a
/// browser, a test or a screen reader reads it), each linking to its own SVG file.
fn figures(
    records: &RunRecords,
    timeline: &Timeline,
    out: &Path,
    prefix: &str,
) -> Result<String, ReportError> {
    let mut html = String::new();
    for (file, title, draw) in CHARTS {
        let file = format!("{prefix}{file}");
        let path = out.join(&file);
        draw(records, timeline, &path)?;
        let svg =
            std::fs::read_to_string(&path).map_err(|reason| ReportError::Read { path, reason })?;
        let svg = svg.trim_start_matches(|c| c != '<');
        let svg = match svg.strip_prefix("<?xml") {
            Some(rest) => rest.split_once("?>").map_or(rest, |(_, after)| after),
            None => svg,
        };
        // A file name's `%` (of an encoded stream id) is itself encoded in the link.
        let href = escape(&file.replace('%', "%25"));
        html.push_str(&format!(
            "<figure>{}<figcaption><a href=\"{href}\">{title}</a></figcaption></figure>\n",
            svg.trim()
        ));
    }
    Ok(html)
}

/// What a person's record says of `attribute`, `none` when it says nothing (not reported).
const NONE: &str = "none";

/// The people of `people` per (age group, gender), every group of `groups` and every gender of
/// [`GENDERS`] (zeros too), then `none` rows where records lack an age or a gender: the counts
/// add up to the people.
fn summary_rows(people: &[&Person], groups: &[String]) -> Vec<(String, String, usize)> {
    let age_of = |p: &Person| {
        p.attributes
            .age
            .as_ref()
            .map_or(NONE.to_string(), |a| a.group.clone())
    };
    let gender_of = |p: &Person| {
        p.attributes
            .gender
            .as_ref()
            .map_or(NONE.to_string(), |g| g.label.clone())
    };
    let mut ages: Vec<String> = groups.to_vec();
    let mut genders: Vec<String> = GENDERS.iter().map(|g| g.to_string()).collect();
    for p in people {
        for (list, value) in [(&mut ages, age_of(p)), (&mut genders, gender_of(p))] {
            if !list.contains(&value) {
                list.push(value);
            }
        }
    }
    let mut rows = Vec::new();
    for age in &ages {
        for gender in &genders {
            let n = people
                .iter()
                .filter(|p| age_of(p) == *age && gender_of(p) == *gender)
                .count();
            rows.push((age.clone(), gender.clone(), n));
        }
    }
    rows
}

/// `people.csv` (one row per person) and `summary.csv` (people per stream × age group ×
/// gender, `total` for all streams) in `out`.
fn write_csvs(records: &RunRecords, out: &Path) -> Result<(), ReportError> {
    let write = |name: &str, rows: &mut dyn Iterator<Item = Vec<String>>| {
        let path = out.join(name);
        let failed = |e: csv::Error| ReportError::Write {
            path: path.clone(),
            reason: std::io::Error::other(e.to_string()),
        };
        let mut w = csv::Writer::from_path(&path).map_err(failed)?;
        for row in rows {
            w.write_record(&row).map_err(failed)?;
        }
        w.flush().map_err(|reason| ReportError::Write {
            path: path.clone(),
            reason,
        })
    };
    let text = |v: Option<String>| v.unwrap_or_default();
    let number = |v: f64| format!("{}", (v * 1000.0).round() / 1000.0);
    let header = [
        "stream",
        "track_id",
        "first_frame",
        "last_frame",
        "first_pts_ms",
        "last_pts_ms",
        "first_time",
        "last_time",
        "frames",
        "age_group",
        "age_years",
        "gender",
        "gender_prob",
        "race",
        "race_prob",
        "snapshot",
    ];
    let people = records.people.iter().map(|p| {
        let a = &p.attributes;
        let label = |l: &Option<crate::model::readout::LabelJson>| {
            (
                text(l.as_ref().map(|l| l.label.clone())),
                text(l.as_ref().map(|l| format!("{:.3}", l.prob))),
            )
        };
        let (gender, gender_prob) = label(&a.gender);
        let (race, race_prob) = label(&a.race);
        vec![
            p.stream.clone(),
            p.track_id.to_string(),
            p.first_frame.to_string(),
            p.last_frame.to_string(),
            number(p.first_pts_ms),
            number(p.last_pts_ms),
            text(p.first_time.clone()),
            text(p.last_time.clone()),
            p.frames.to_string(),
            text(a.age.as_ref().map(|a| a.group.clone())),
            text(a.age.as_ref().map(|a| format!("{:.1}", a.years))),
            gender,
            gender_prob,
            race,
            race_prob,
            text(p.snapshot.clone()),
        ]
    });
    let mut rows = std::iter::once(header.iter().map(|h| h.to_string()).collect()).chain(people);
    write("people.csv", &mut rows)?;
    let groups = records.age_groups();
    let mut summary = vec![
        ["stream", "age_group", "gender", "people"]
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>(),
    ];
    let everyone: Vec<&Person> = records.people.iter().collect();
    let streams = records.streams();
    let per_stream = streams.iter().map(|s| {
        let people: Vec<&Person> = records.people.iter().filter(|p| p.stream == *s).collect();
        (s.clone(), people)
    });
    for (stream, people) in per_stream.chain(std::iter::once(("total".to_string(), everyone))) {
        for (age, gender, n) in summary_rows(&people, &groups) {
            summary.push(vec![stream.clone(), age, gender, n.to_string()]);
        }
    }
    write("summary.csv", &mut summary.into_iter())
}

/// An HTML table of `people` per age group (rows, every group of `groups`) and gender.
fn age_gender_table(title: &str, people: &[&Person], groups: &[String]) -> String {
    let counts = age_gender_counts(people, groups);
    let mut html = format!(
        "<table class=\"people\"><caption>{}</caption><tr><th>age group</th>{}<th>all</th></tr>\n",
        escape(title),
        GENDERS
            .iter()
            .map(|g| format!("<th>{g}</th>"))
            .collect::<String>()
    );
    for (group, row) in groups.iter().zip(&counts) {
        html.push_str(&format!(
            "<tr><td>{}</td>{}<td>{}</td></tr>\n",
            escape(group),
            row.iter()
                .map(|n| format!("<td>{n}</td>"))
                .collect::<String>(),
            row.iter().sum::<u32>()
        ));
    }
    let counted: u32 = counts.iter().flatten().sum();
    if counted as usize != people.len() {
        html.push_str(&format!(
            "<tr><td colspan=\"{}\">{} without an age or gender</td></tr>\n",
            GENDERS.len() + 2,
            people.len() - counted as usize
        ));
    }
    html.push_str("</table>\n");
    html
}

/// Writes the charts and `index.html` into `out` (created); returns the page's path.
pub fn write(input: &Path, out: &Path) -> Result<PathBuf, ReportError> {
    let records = RunRecords::read(input)?;
    std::fs::create_dir_all(out).map_err(|reason| ReportError::Write {
        path: out.to_path_buf(),
        reason,
    })?;
    write_csvs(&records, out)?;
    // One time axis for every panel, so the streams' panels line up with each other.
    let timeline = Timeline::of(&records);
    let groups = records.age_groups();
    let everyone: Vec<&Person> = records.people.iter().collect();
    let streams = records.streams();
    let mut panels = format!(
        "<section><h2>All streams</h2>\n{}{}</section>\n",
        age_gender_table(
            "People by age group and gender, all streams",
            &everyone,
            &groups
        ),
        figures(&records, &timeline, out, "")?
    );
    if streams.len() > 1 {
        for s in &streams {
            let own = records.of_stream(s);
            let people: Vec<&Person> = own.people.iter().collect();
            panels.push_str(&format!(
                "<section><h2>Stream {name}</h2>\n{}{}</section>\n",
                age_gender_table(
                    &format!("People by age group and gender, stream {s}"),
                    &people,
                    &groups
                ),
                figures(
                    &own,
                    &timeline,
                    out,
                    &format!("stream-{}-", crate::sinks::overlay::file_name_part(s))
                )?,
                name = escape(s)
            ));
        }
    }
    let mut rows = String::new();
    for s in records.streams() {
        let people: Vec<&Person> = records.people.iter().filter(|p| p.stream == s).collect();
        let frames = records.frames.iter().filter(|f| f.stream == s).count();
        let faces: usize = records
            .frames
            .iter()
            .filter(|f| f.stream == s)
            .map(|f| f.faces)
            .sum();
        let gender = |g: &str| {
            people
                .iter()
                .filter(|p| p.attributes.gender.as_ref().is_some_and(|x| x.label == g))
                .count()
        };
        let mean_dwell = if people.is_empty() {
            0.0
        } else {
            people
                .iter()
                .map(|p| (p.last_pts_ms - p.first_pts_ms) / 1000.0)
                .sum::<f64>()
                / people.len() as f64
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} s</td></tr>\n",
            escape(&s),
            frames,
            faces,
            people.len(),
            gender("female"),
            gender("male"),
            gender(crate::record::UNKNOWN),
            mean_dwell
        ));
    }
    let source = escape(&crate::redact::credentials(&input.display().to_string()));
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>faceflow report</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}th{{background:#f0f0f0}}\
         table.people{{display:inline-table;margin:1em 2em 1em 0;vertical-align:top}}caption{{font-weight:bold;padding:4px}}\
         figure{{display:inline-block;margin:0.5em}}figcaption{{text-align:center;color:#555}}</style></head>\n\
         <body><h1>Who passed, and when</h1>\n<p>From <code>{source}</code>: {people} people \
         (one per track that faceflow confirmed), {frames} frames.</p>\n\
         <table><tr><th>stream</th><th>frames</th><th>faces</th><th>people</th><th>women</th><th>men</th><th>gender unknown</th><th>mean time in view</th></tr>\n\
         {rows}</table>\n\
         <p>As CSV: <a href=\"people.csv\">people.csv</a> (one row per person), \
         <a href=\"summary.csv\">summary.csv</a> (people per stream, age group and gender).</p>\n{panels}</body></html>\n",
        people = records.people.len(),
        frames = records.frames.len(),
    );
    let page = out.join("index.html");
    std::fs::write(&page, html).map_err(|reason| ReportError::Write {
        path: page.clone(),
        reason,
    })?;
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_becomes_a_page_with_four_charts() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("run.jsonl");
        let mut text = String::new();
        for f in 0..100 {
            text.push_str(&format!(
                "{{\"type\":\"frame\",\"stream\":\"0\",\"source\":\"x\",\"frame\":{f},\"pts_ms\":{},\"width\":64,\"height\":48,\"faces\":[{}]}}\n",
                f as f64 * 1000.0,
                if f % 2 == 0 { "{}" } else { "" }
            ));
        }
        for (i, (g, a)) in [("female", 2), ("male", 2), ("male", 4)].iter().enumerate() {
            text.push_str(&format!(
                "{{\"type\":\"track\",\"stream\":\"0\",\"source\":\"x\",\"track_id\":{i},\"first_frame\":0,\"last_frame\":9,\"first_pts_ms\":{},\"last_pts_ms\":{},\"frames\":10,\"age\":{{\"group\":\"g{a}\",\"index\":{a},\"years\":30.0,\"probs\":[]}},\"gender\":{{\"label\":\"{g}\",\"prob\":0.9}}}}\n",
                i as f64 * 61_000.0,
                i as f64 * 61_000.0 + 12_500.0
            ));
        }
        // Cut short as a killed run leaves it: the half line is left out.
        text.push_str("{\"type\":\"frame\",\"stre");
        std::fs::write(&jsonl, text).unwrap();
        let out = dir.path().join("report");
        let page = write(&jsonl, &out).unwrap();
        let html = std::fs::read_to_string(page).unwrap();
        assert!(html.contains("3 people"), "{html}");
        assert!(
            html.contains(
                "<td>0</td><td>100</td><td>50</td><td>3</td><td>1</td><td>2</td><td>0</td><td>12.5 s</td>"
            ),
            "{html}"
        );
        for (file, _, _) in CHARTS {
            let svg = std::fs::read_to_string(out.join(file)).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("<rect"), "{file}");
        }
        // The age chart names the groups.
        let svg = std::fs::read_to_string(out.join(CHARTS[1].0)).unwrap();
        assert!(svg.contains("g2") && svg.contains("g4"), "{svg}");
        // Without clock time, the axes are each stream's own time.
        let svg = std::fs::read_to_string(out.join(CHARTS[0].0)).unwrap();
        assert!(
            svg.contains("into the stream") && !svg.contains("UTC"),
            "{svg}"
        );
    }

    /// Every group of the records' grouping is in the tables and the summary, empty ones too;
    /// people.csv has a row per person and summary.csv adds up to the people, per stream and in
    /// total, also for people without an age or gender.
    #[test]
    fn tables_and_csvs_show_every_group_and_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("run.jsonl");
        let probs = "[0.1,0.6,0.1,0.1,0.1]";
        let person = |stream: &str, id: u32, attributes: &str| {
            format!(
                "{{\"type\":\"track\",\"stream\":\"{stream}\",\"source\":\"x\",\"track_id\":{id},\"first_frame\":0,\"last_frame\":9,\"first_pts_ms\":0.0,\"last_pts_ms\":360.0,\"first_time\":\"2026-12-07T09:30:00.000Z\",\"last_time\":\"2026-12-07T09:30:00.360Z\",\"frames\":10{attributes}}}\n"
            )
        };
        let aged = |g: &str| {
            format!(
                ",\"age\":{{\"group\":\"12-23\",\"index\":1,\"years\":20.0,\"probs\":{probs}}},\"gender\":{{\"label\":\"{g}\",\"prob\":0.9}}"
            )
        };
        let text = [
            person("door", 1, &aged("female")),
            person("door", 2, &aged("unknown")),
            person("hall", 3, &aged("female")),
            person("hall", 4, ""),
            "{\"type\":\"track_start\",\"stream\":\"hall\"}\n".to_string(),
        ]
        .concat();
        std::fs::write(&jsonl, text).unwrap();
        let out = dir.path().join("report");
        let html = std::fs::read_to_string(write(&jsonl, &out).unwrap()).unwrap();
        for group in ["1-11", "12-23", "24-39", "40-55", "56-80"] {
            assert!(
                html.contains(&format!("<td>{group}</td>")),
                "{group}: {html}"
            );
        }
        assert!(html.contains("Stream hall") && html.contains("1 without an age or gender"));
        // A panel per stream: its table and its own four charts, linked from the page.
        for stream in ["door", "hall"] {
            assert!(
                html.contains(&format!("<h2>Stream {stream}</h2>")),
                "{html}"
            );
            for (file, _, _) in CHARTS {
                let own = format!("stream-{stream}-{file}");
                assert!(out.join(&own).exists(), "{own}");
                assert!(html.contains(&format!("href=\"{own}\"")), "{own}");
            }
        }
        let door = std::fs::read_to_string(out.join("stream-door-age_gender.svg")).unwrap();
        let hall = std::fs::read_to_string(out.join("stream-hall-age_gender.svg")).unwrap();
        assert_ne!(door, hall, "each stream's chart shows its own people");
        let people = std::fs::read_to_string(out.join("people.csv")).unwrap();
        let lines: Vec<&str> = people.lines().collect();
        assert_eq!(lines.len(), 5, "{people}");
        assert!(lines[0].starts_with("stream,track_id,first_frame"));
        assert!(
            lines[1].starts_with("door,1,0,9,0,360,2026-12-07T09:30:00.000Z,")
                && lines[1].contains(",12-23,20.0,female,0.900,"),
            "{}",
            lines[1]
        );
        let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
        let mut sums: BTreeMap<String, u32> = BTreeMap::new();
        for line in summary.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            *sums.entry(f[0].to_string()).or_default() += f[3].parse::<u32>().unwrap();
        }
        let want: BTreeMap<String, u32> =
            [("door".into(), 2), ("hall".into(), 2), ("total".into(), 4)].into();
        assert_eq!(sums, want, "{summary}");
        assert!(summary.contains("door,56-80,male,0") && summary.contains("hall,none,none,1"));
        // Records with clock time: the time axis is clock time.
        let svg = std::fs::read_to_string(out.join(CHARTS[0].0)).unwrap();
        assert!(
            svg.contains("time (UTC)") && svg.contains("\n09:30:00\n"),
            "{svg}"
        );
    }

    #[test]
    fn other_files_are_one_line_errors_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "{\"image\":\"a.jpg\",\"faces\":[]}\n{}\n").unwrap();
        let e = write(&bad, &dir.path().join("r")).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:1: not a faceflow record"), "{e}");
        std::fs::write(&bad, "").unwrap();
        let e = write(&bad, &dir.path().join("r")).unwrap_err().to_string();
        assert!(e.contains("no frame or track records"), "{e}");
        let e = write(&dir.path().join("missing.jsonl"), &dir.path().join("r"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read"), "{e}");
    }
}
