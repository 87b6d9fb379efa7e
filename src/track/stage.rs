//! The track stage of a run: each stream's frames back in its decode order, its faces tracked into
//! people ([`People`]), frame and track records handed to the sinks.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::people::{People, Rename};
use crate::attributes::FacesInImage;
use crate::attributes::faceres::{FaceReading, SecondReader};
use crate::flow::{Detected, Reorder, RunContext, RunStats, StageTimes, StreamWindows, Tracked};
use crate::graph::{Control, Graph, Input, Output, Received, Sent, WhenFull};
use crate::record::{FaceRecord, FrameRecord, RecordKind};

/// Starts the track stage on `input` (frames with their faces, in any order); each stream's
/// frames come out in order, as records with their people. `second_reader` reads gender and race of a
/// few of each person's clearest faces again (see [`super::second`]), and new faces while a
/// person is lost, to give the person back their id (see [`super::appearance`]).
pub(crate) fn spawn(
    graph: &mut Graph,
    cx: &RunContext,
    input: Input<Detected>,
    people: People,
    second_reader: Option<Box<dyn SecondReader>>,
) -> Input<Tracked> {
    let (out, tracked) = graph.channel("tracked", cx.queue_frames, WhenFull::Block);
    let stage = TrackStage {
        input,
        people: people.with_recognition(second_reader.is_some()),
        second_reader,
        pixels_for_sinks: cx.keep_pixels.sinks,
        windows: cx.windows.clone(),
        stats: cx.stats.clone(),
        times: cx.times.clone(),
        held: Vec::new(),
        out,
    };
    graph.add_stage("track", move |c| stage.run(c));
    tracked
}

/// Restores each stream's decode order (workers finish frames out of order), releases each frame
/// from its stream's window ([`StreamWindows`]), and tracks each stream's faces in that order. A
/// stream waiting for a slow frame holds back none of the others.
struct TrackStage {
    input: Input<Detected>,
    people: People,
    second_reader: Option<Box<dyn SecondReader>>,
    /// A sink draws on the frames: their pixels go on with the records.
    pixels_for_sinks: bool,
    windows: Arc<StreamWindows>,
    stats: RunStats,
    times: StageTimes,
    /// Each stream's items held back while a new face may still be a lost person
    /// ([`People::settling`]), oldest first.
    held: Vec<VecDeque<Tracked>>,
    out: Output<Tracked>,
}

impl TrackStage {
    fn run(mut self, control: &Control) -> Result<(), String> {
        let streams = self.stats.streams();
        let mut reorder = Reorder::new(streams);
        loop {
            let (stream, done) = match self.input.recv(control) {
                Received::Item(d) => {
                    let stream = d.frame.stream.index;
                    reorder.push(d);
                    (Some(stream), false)
                }
                Received::Eos | Received::Disconnected => (None, true),
            };
            let held_peak = stream.map_or(0, |s| reorder.held_for(s));
            // At the end, every stream's frames after a gap (a failed worker) come out too.
            let release: Vec<usize> = match stream {
                Some(s) if !done => vec![s],
                _ if done => (0..reorder.streams()).collect(),
                _ => Vec::new(),
            };
            for s in release {
                while let Some(d) = reorder.pop(s, done) {
                    self.windows.release(s);
                    let live = d.frame.stream.live;
                    let item = match self.track(d, control) {
                        Ok(item) => item,
                        Err(e) => {
                            // What was made before the failure still goes out.
                            self.release_all(control);
                            return Err(e);
                        }
                    };
                    if self.pass_on(item, live, control) == Sent::Closed {
                        return Ok(());
                    }
                }
            }
            let people = &self.people;
            self.stats.update(|n| {
                n.reorder_pending = reorder.held();
                n.reorder_window = self.windows.total();
                n.reorder_peak = n.reorder_peak.max(held_peak);
                n.people = (0..streams).map(|i| people.people(i)).collect();
                n.people_in_view = (0..streams).map(|i| people.in_view(i)).collect();
            });
            if done {
                // The people still in view when the run ends (none written if the output closed).
                let ended = if control.output_closed() {
                    Vec::new()
                } else {
                    self.people.finish()
                };
                let item = Tracked {
                    stream: 0,
                    frame: None,
                    pixels: Vec::new(),
                    ended,
                    stream_ended: false,
                    events: self.people.take_events(),
                };
                let people = (0..streams).map(|i| self.people.people(i)).collect();
                self.stats.update(|n| n.people = people);
                if self.release_all(control) == Sent::Closed {
                    return Ok(());
                }
                self.count_ended(&item);
                self.out.send(item, control);
                return Ok(());
            }
        }
    }

    /// Sends `item` on, after the items of its stream held before it. A frame of a file (not
    /// `live`) is held while one of its stream's new faces may still turn out to be a person
    /// lost a moment ago ([`People::settling`]), up to `settle_ms`: recognised by then, that
    /// face's records held carry the person's id ([`Rename`]), not a new id for a few frames.
    fn pass_on(&mut self, item: Tracked, live: bool, control: &Control) -> Sent {
        let s = item.stream;
        if self.held.len() <= s {
            self.held.resize_with(s + 1, VecDeque::new);
        }
        self.rename_held(s);
        let may_wait = !live && item.frame.is_some() && !item.stream_ended;
        self.held[s].push_back(item);
        let settle_ms = self.people.settle_ms();
        let settle_ms = if may_wait && settle_ms > 0.0 && self.people.settling(s) {
            settle_ms
        } else {
            0.0
        };
        self.release(s, settle_ms, control)
    }

    /// Stream `s`'s held items with the faces of new tracks recognised since as lost people
    /// ([`People::take_renames`]) given the person's id.
    fn rename_held(&mut self, s: usize) {
        let renames = self.people.take_renames(s);
        if renames.is_empty() {
            return;
        }
        for held in self.held.get_mut(s).into_iter().flatten() {
            rename(held, &renames);
        }
    }

    /// Sends every stream's held items on (renamed where their new faces were recognised).
    fn release_all(&mut self, control: &Control) -> Sent {
        for s in 0..self.held.len() {
            self.rename_held(s);
            if self.release(s, 0.0, control) == Sent::Closed {
                return Sent::Closed;
            }
        }
        Sent::Delivered
    }

    /// Sends stream `s`'s held items on, oldest first, but those less than `settle_ms` older
    /// than the newest, while no more than `settle_ms` / [`MIN_FRAME_MS`] wait (times that go
    /// backwards release them all).
    fn release(&mut self, s: usize, settle_ms: f64, control: &Control) -> Sent {
        let pts = |item: Option<&Tracked>| item.and_then(|i| i.frame.as_ref()).map(|f| f.pts_ms);
        // Frames at most, whatever their times say (a file without them, or going backwards).
        let most = (settle_ms / MIN_FRAME_MS).ceil() as usize;
        while let Some(front) = self.held.get(s).and_then(|h| h.front()) {
            let newest = pts(self.held[s].back());
            if let (Some(oldest), Some(newest)) = (pts(Some(front)), newest)
                && settle_ms > 0.0
                && (0.0..settle_ms).contains(&(newest - oldest))
                && self.held[s].len() <= most
            {
                break;
            }
            let Some(item) = self.held[s].pop_front() else {
                break;
            };
            self.count_ended(&item);
            if self.out.send(item, control) == Sent::Closed {
                return Sent::Closed;
            }
        }
        Sent::Delivered
    }

    /// Counts the people whose track ends with `item` by gender and age group (for metrics).
    fn count_ended(&self, item: &Tracked) {
        if item.ended.is_empty() {
            return;
        }
        self.stats.update(|n| {
            for record in &item.ended {
                let a = &record.attributes;
                let gender = a.gender.as_ref().map_or("none", |g| g.label.as_str());
                let age = a.age.as_ref().map_or("none", |g| g.group.as_str());
                let key = (record.stream.clone(), gender.to_string(), age.to_string());
                *n.people_by_label.entry(key).or_default() += 1;
            }
        });
    }

    /// One frame (or a stream's end mark) through its stream's tracker; fails when the second
    /// reader does.
    fn track(&mut self, d: Detected, control: &Control) -> Result<Tracked, String> {
        let stream = d.frame.stream.index;
        // The reader of the output went away: the frames still coming are only counted (the
        // sinks write nothing), and no one is tracked or counted as a person any more.
        if control.output_closed() {
            return Ok(Tracked {
                stream,
                frame: (!d.stream_ended).then(|| record(d.frame, d.faces)),
                pixels: Vec::new(),
                ended: Vec::new(),
                stream_ended: d.stream_ended,
                events: Vec::new(),
            });
        }
        if d.stream_ended {
            // The stream's people still in view end with it.
            let ended = self.people.finish_stream(stream);
            return Ok(Tracked {
                stream,
                frame: None,
                pixels: Vec::new(),
                ended,
                stream_ended: true,
                events: self.people.take_events(),
            });
        }
        let mut faces = d.faces;
        // Another shot: its faces are other people, whatever their place.
        let mut ended = if d.frame.scene_cut {
            self.people.finish_stream(stream)
        } else {
            Vec::new()
        };
        if d.searched_in_full {
            self.people.full_search_at(&d.frame.stream, d.frame.pts_ms);
        }
        ended.extend(self.people.frame(
            &d.frame.stream,
            d.frame.index,
            d.frame.pts_ms,
            &mut faces,
            &d.predictions,
        ));
        let mut frame = d.frame;
        if self.second_reader.is_some() && !frame.rgb.is_empty() {
            // Each face is read at most once, whichever steps want it.
            let mut read = HashMap::new();
            let wanted = self.people.verification_wanted(stream, &faces);
            if !wanted.is_empty() {
                let readings = self.read_once(&frame, &faces, &wanted, &mut read)?;
                let at = (frame.index, frame.pts_ms);
                let check = (wanted.as_slice(), readings.as_slice());
                self.people
                    .verify(stream, at, &mut faces, &d.predictions, check);
            }
            let wanted = self.people.reassociation_wanted(stream, &faces);
            if !wanted.is_empty() {
                let readings = self.read_once(&frame, &faces, &wanted, &mut read)?;
                self.people
                    .reassociate(stream, frame.pts_ms, &mut faces, &wanted, &readings);
            }
            let wanted = self
                .people
                .second_reading_wanted(stream, frame.pts_ms, &faces);
            if !wanted.is_empty() {
                let readings = self.read_once(&frame, &faces, &wanted, &mut read)?;
                self.people.add_second_readings(
                    stream,
                    frame.pts_ms,
                    &mut faces,
                    &wanted,
                    &readings,
                );
            }
        }
        self.people
            .announce(stream, frame.index, frame.pts_ms, &mut faces);
        let pixels = if self.pixels_for_sinks {
            std::mem::take(&mut frame.rgb)
        } else {
            Vec::new()
        };
        Ok(Tracked {
            stream,
            frame: Some(record(frame, faces)),
            pixels,
            ended,
            stream_ended: false,
            events: self.people.take_events(),
        })
    }
}

impl TrackStage {
    /// [`Self::read`] of the faces `wanted`, those already in `read` (face index → reading) not
    /// read again, and the new readings added to it.
    fn read_once(
        &mut self,
        frame: &crate::sources::Frame,
        faces: &[FaceRecord],
        wanted: &[usize],
        read: &mut HashMap<usize, Option<FaceReading>>,
    ) -> Result<Vec<Option<FaceReading>>, String> {
        let unread: Vec<usize> = wanted
            .iter()
            .copied()
            .filter(|i| !read.contains_key(i))
            .collect();
        if !unread.is_empty() {
            let fresh = self.read(frame, faces, &unread)?;
            read.extend(unread.into_iter().zip(fresh));
        }
        Ok(wanted
            .iter()
            .map(|i| read.get(i).cloned().flatten())
            .collect())
    }

    /// The second reader's reading of the faces `wanted` of `frame` (none without a reader).
    fn read(
        &mut self,
        frame: &crate::sources::Frame,
        faces: &[FaceRecord],
        wanted: &[usize],
    ) -> Result<Vec<Option<FaceReading>>, String> {
        let Some(reader) = self.second_reader.as_mut() else {
            return Ok(vec![None; wanted.len()]);
        };
        let image = FacesInImage {
            rgb: &frame.rgb,
            width: frame.width as usize,
            height: frame.height as usize,
            faces: wanted.iter().map(|&i| &faces[i].face).collect(),
        };
        let started = Instant::now();
        let readings = reader
            .read(&[image])
            .map_err(|e| format!("frame {}: {e}", frame.index))?;
        self.times
            .second_reader
            .observe(started.elapsed().as_secs_f64());
        Ok(readings.into_iter().next().unwrap_or_default())
    }
}

/// The shortest frame interval [`TrackStage::release`] allows for when it caps how many frames
/// wait (a file of 50 fps or less waits its full `settle_ms`), ms.
const MIN_FRAME_MS: f64 = 20.0;

/// `item`'s faces of new tracks since recognised as lost people ([`Rename`]) given the person's
/// id, and what is said of them.
fn rename(item: &mut Tracked, renames: &[Rename]) {
    let Some(frame) = item.frame.as_mut() else {
        return;
    };
    for face in &mut frame.faces {
        if let Some(r) = renames.iter().find(|r| face.track_id == Some(r.from)) {
            face.track_id = Some(r.to);
            face.confirmed = Some(r.confirmed);
            face.attributes = r.attributes.clone();
        }
    }
}

/// A frame's record, with its faces.
fn record(frame: crate::sources::Frame, faces: Vec<FaceRecord>) -> FrameRecord {
    FrameRecord {
        kind: RecordKind::Frame,
        stream: frame.stream.id.clone(),
        source: frame.stream.uri.clone(),
        frame: frame.index,
        pts_ms: frame.pts_ms,
        time: frame.stream.time(frame.pts_ms),
        width: frame.width,
        height: frame.height,
        gap_before_ms: frame.gap_before_ms,
        faces,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Face;
    use crate::flow::testing;
    use crate::flow::{PixelReaders, end_mark};

    fn detected(frame: crate::sources::Frame, seq: u64, faces: usize) -> Detected {
        let face = |i: usize| {
            FaceRecord::detection(Face {
                bbox: [10.0 * i as f32, 0.0, 10.0 * i as f32 + 8.0, 8.0],
                score: 0.99,
                landmarks: [[0.0; 2]; 5],
            })
        };
        Detected {
            seq,
            frame,
            faces: (0..faces).map(face).collect(),
            predictions: vec![None; faces],
            searched_in_full: true,
            shedding: false,
            stream_ended: false,
        }
    }

    /// Runs the track stage alone over `items`, with `pixels` read later and `second_reader`.
    fn track_all(
        streams: &[Arc<crate::sources::StreamInfo>],
        pixels: PixelReaders,
        second_reader: Option<Box<dyn SecondReader>>,
        items: Vec<Detected>,
    ) -> Vec<Tracked> {
        track_all_with(Default::default(), streams, pixels, second_reader, items)
    }

    /// [`track_all`] with the tracker settings `config`.
    fn track_all_with(
        config: crate::track::TrackConfig,
        streams: &[Arc<crate::sources::StreamInfo>],
        pixels: PixelReaders,
        second_reader: Option<Box<dyn SecondReader>>,
        items: Vec<Detected>,
    ) -> Vec<Tracked> {
        let cx = testing::context(streams, pixels);
        let mut graph = testing::graph();
        let (feed, input) = testing::feed(&mut graph);
        let people = People::new(config, None);
        let tracked = spawn(&mut graph, &cx, input, people, second_reader);
        testing::run(graph, feed, items, tracked)
    }

    /// A clear face filling an 8×6 frame, with a face's landmarks.
    fn clear_face() -> FaceRecord {
        FaceRecord::detection(Face {
            bbox: [0.0, 0.0, 5.0, 6.0],
            score: 0.99,
            landmarks: [
                [1.5, 2.25],
                [3.5, 2.25],
                [2.5, 3.5],
                [1.75, 4.75],
                [3.25, 4.75],
            ],
        })
    }

    /// Frames of two streams arrive out of order, each stream ending with its mark: each stream
    /// comes out in its own order, its end after its last frame, and the run's end last.
    #[test]
    fn each_stream_comes_out_in_order_with_its_end() {
        let streams = testing::streams(2);
        let [a, b] = [&streams[0], &streams[1]];
        let mark = |s: &Arc<crate::sources::StreamInfo>, seq| Detected {
            stream_ended: true,
            ..detected(end_mark(s), seq, 0)
        };
        let items = vec![
            detected(testing::frame(a, 1), 1, 1),
            detected(testing::frame(b, 0), 0, 0),
            mark(b, 1),
            detected(testing::frame(a, 0), 0, 1),
            mark(a, 3),
            detected(testing::frame(a, 2), 2, 1),
        ];
        let out = track_all(&streams, PixelReaders::default(), None, items);
        let said: Vec<String> = out
            .iter()
            .map(|t| match (&t.frame, t.stream_ended) {
                (Some(f), _) => format!("{}:{}", f.stream, f.frame),
                (None, true) => format!("{}:end", t.stream),
                (None, false) => "run:end".into(),
            })
            .collect();
        let of = |s: &str| -> Vec<&String> { said.iter().filter(|x| x.starts_with(s)).collect() };
        assert_eq!(of("0:"), ["0:0", "0:1", "0:2", "0:end"], "{said:?}");
        assert_eq!(of("1:"), ["1:0", "1:end"], "{said:?}");
        assert_eq!(said.last().map(String::as_str), Some("run:end"));
        // One face seen in every frame of stream 0 is one track.
        let ids: Vec<Option<u64>> = out
            .iter()
            .filter_map(|t| t.frame.as_ref())
            .flat_map(|f| f.faces.iter().map(|face| face.track_id))
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    }

    /// A stand-in second reader: counts the faces it is asked about, reads each as a man's.
    struct Counting(Arc<std::sync::atomic::AtomicUsize>);

    impl SecondReader for Counting {
        fn read(
            &mut self,
            images: &[FacesInImage<'_>],
        ) -> Result<Vec<Vec<Option<FaceReading>>>, crate::attributes::AttributeError> {
            let faces: usize = images.iter().map(|i| i.faces.len()).sum();
            self.0.fetch_add(faces, std::sync::atomic::Ordering::SeqCst);
            let man = FaceReading {
                race: None,
                male: 1.0,
                descriptor: vec![1.0, 0.0],
            };
            Ok(images
                .iter()
                .map(|i| vec![Some(man.clone()); i.faces.len()])
                .collect())
        }
    }

    /// With a second reader and no sink that draws: a person's clear face is read once (when the
    /// track becomes a person), not every frame, and the pixels do not go on to the sinks.
    #[test]
    fn the_second_reader_reads_a_person_once_and_pixels_stop_here() {
        let streams = testing::streams(1);
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let items = (0..10)
            .map(|i| Detected {
                faces: vec![clear_face()],
                ..detected(testing::frame(&streams[0], i), i, 0)
            })
            .collect();
        let pixels = PixelReaders {
            track: true,
            ..PixelReaders::default()
        };
        let reader = Box::new(Counting(asked.clone()));
        let out = track_all(&streams, pixels, Some(reader), items);
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(out.iter().all(|t| t.pixels.is_empty()));
        let confirmed = out
            .iter()
            .filter_map(|t| t.frame.as_ref())
            .filter(|f| f.faces[0].confirmed == Some(true))
            .count();
        assert_eq!(confirmed, 8);
    }

    /// At a scene cut, every track of the stream ends (its person's record comes with the cut
    /// frame), and the face there, in the same place, is someone new.
    #[test]
    fn a_scene_cut_ends_every_track() {
        let streams = testing::streams(1);
        let items = (0..8)
            .map(|i| {
                let mut frame = testing::frame(&streams[0], i);
                frame.scene_cut = i == 5;
                Detected {
                    faces: vec![clear_face()],
                    ..detected(frame, i, 0)
                }
            })
            .collect();
        let out = track_all(&streams, PixelReaders::default(), None, items);
        let at_cut = out
            .iter()
            .find(|t| t.frame.as_ref().is_some_and(|f| f.frame == 5))
            .unwrap();
        assert_eq!(at_cut.ended.len(), 1);
        assert_eq!(
            (at_cut.ended[0].first_frame, at_cut.ended[0].last_frame),
            (0, 4)
        );
        let ids: Vec<Option<u64>> = out
            .iter()
            .filter_map(|t| t.frame.as_ref())
            .map(|f| f.faces[0].track_id)
            .collect();
        assert!(ids[..5].iter().all(|id| *id == ids[0]), "{ids:?}");
        assert!(ids[5..].iter().all(|id| *id == ids[5]), "{ids:?}");
        assert_ne!(ids[0], ids[5]);
    }

    /// After an output closed, frames are still counted through, but no one is tracked.
    #[test]
    fn after_the_output_closed_no_one_is_tracked() {
        let streams = testing::streams(1);
        let cx = testing::context(&streams, PixelReaders::default());
        let mut graph = testing::graph();
        graph.control().close_output();
        let (feed, input) = testing::feed(&mut graph);
        let tracked = spawn(
            &mut graph,
            &cx,
            input,
            People::new(Default::default(), None),
            None,
        );
        let items = (0..3)
            .map(|i| detected(testing::frame(&streams[0], i), i, 1))
            .collect();
        let out = testing::run(graph, feed, items, tracked);
        let frames: Vec<&FrameRecord> = out.iter().filter_map(|t| t.frame.as_ref()).collect();
        assert_eq!(frames.len(), 3);
        assert!(
            frames
                .iter()
                .all(|f| f.faces.iter().all(|face| face.track_id.is_none()))
        );
        assert!(out.iter().all(|t| t.ended.is_empty()));
    }

    /// A stand-in second reader that reads a partly hidden face (score under 0.97) as only half
    /// like the person it is, and a whole one as exactly them.
    struct HalfHidden;

    impl SecondReader for HalfHidden {
        fn read(
            &mut self,
            images: &[FacesInImage<'_>],
        ) -> Result<Vec<Vec<Option<FaceReading>>>, crate::attributes::AttributeError> {
            let read = |score: f32| FaceReading {
                race: None,
                male: 1.0,
                descriptor: if score < 0.97 {
                    vec![0.5, 0.866]
                } else {
                    vec![1.0, 0.0]
                },
            };
            Ok(images
                .iter()
                .map(|i| i.faces.iter().map(|f| Some(read(f.score))).collect())
                .collect())
        }
    }

    /// A person seen for 10 frames, away for 2 s, comes back partly hidden for 3 frames (read
    /// too unlike them to be recognised), then whole (recognised), over `frames` frames with
    /// `settle_ms`: each track id and `confirmed` of the frames from the one the face came back
    /// at, in order.
    fn ids_of_a_person_who_comes_back(
        stream: Arc<crate::sources::StreamInfo>,
        frames: u64,
        settle_ms: f64,
    ) -> Vec<(u64, Option<bool>)> {
        let items = (0..frames)
            .map(|i| {
                let d = detected(testing::frame(&stream, i), i, 0);
                let score = match i {
                    10..60 => return d,
                    60..63 => 0.95,
                    _ => 0.99,
                };
                let mut face = clear_face();
                face.face.score = score;
                Detected {
                    faces: vec![face],
                    predictions: vec![None],
                    ..d
                }
            })
            .collect();
        let config = crate::track::TrackConfig {
            settle_ms,
            ..Default::default()
        };
        let reader = Box::new(HalfHidden);
        let out = track_all_with(
            config,
            &[stream],
            PixelReaders::default(),
            Some(reader),
            items,
        );
        let frames_out: Vec<u64> = out
            .iter()
            .filter_map(|t| t.frame.as_ref().map(|f| f.frame))
            .collect();
        assert_eq!(frames_out, (0..frames).collect::<Vec<_>>(), "all, in order");
        assert!(
            out.last().is_some_and(|t| t.frame.is_none()),
            "the run's end last"
        );
        let ids: Vec<(u64, Option<bool>)> = out
            .iter()
            .filter_map(|t| t.frame.as_ref())
            .flat_map(|f| {
                f.faces
                    .iter()
                    .map(|face| (face.track_id.unwrap_or(0), face.confirmed))
            })
            .collect();
        assert_eq!(
            ids.len() as u64,
            frames - 50,
            "every face's record comes out"
        );
        assert!(ids[..10].iter().all(|id| id.0 == 1), "{ids:?}");
        ids[10..].to_vec()
    }

    /// A file's records wait while a new face may be a lost person: recognised 3 frames later,
    /// the person has their id from the first frame they came back at. A live stream's records
    /// go out at once, under a new id until then.
    #[test]
    fn a_files_records_wait_until_a_face_that_came_back_is_recognised() {
        let file = testing::streams(1).remove(0);
        let ids = ids_of_a_person_who_comes_back(file.clone(), 75, 600.0);
        assert!(ids.iter().all(|id| id.0 == 1), "{ids:?}");
        // The person was announced long before: their faces count as theirs at once.
        assert!(ids.iter().all(|id| id.1 == Some(true)), "{ids:?}");
        // The file ends while they are still to be recognised: the records waiting go out.
        let ids = ids_of_a_person_who_comes_back(file.clone(), 62, 600.0);
        assert_eq!(ids.len(), 2);
        assert!(ids.iter().all(|id| id.0 > 1), "{ids:?}");
        // Records wait no longer than settle_ms (80 ms: the first of the three frames goes out
        // under the new id), and not at all with 0 or on a live stream.
        let ids = ids_of_a_person_who_comes_back(file.clone(), 75, 80.0);
        assert!(
            ids[0].0 > 1 && ids[1..].iter().all(|id| id.0 == 1),
            "{ids:?}"
        );
        let ids = ids_of_a_person_who_comes_back(file.clone(), 75, 0.0);
        assert!(ids[..3].iter().all(|id| id.0 > 1), "{ids:?}");
        assert!(ids[3..].iter().all(|id| id.0 == 1), "{ids:?}");
        let live = Arc::new(crate::sources::StreamInfo {
            live: true,
            ..(*file).clone()
        });
        let ids = ids_of_a_person_who_comes_back(live, 75, 600.0);
        assert!(ids[..3].iter().all(|id| id.0 > 1), "{ids:?}");
        assert!(ids[3..].iter().all(|id| id.0 == 1), "{ids:?}");
    }
}
