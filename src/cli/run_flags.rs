//! `faceflow run`'s flags, in groups: each group's flags, how they set the pipeline's
//! configuration (`apply`) and a test of that mapping, side by side.

use std::path::PathBuf;

use clap::Args;

use faceflow::detect::DetectConfig;
use faceflow::pipeline::{AttributesConfig, PipelineConfig};
use faceflow::sinks::JsonConfig;
use faceflow::sources::SourceConfig;

use super::{AgeGroupFlag, AttributeFlags, DetectorFlags};

#[derive(Args)]
pub struct RunArgs {
    /// Pipeline file (pipelines/*.toml); flags given here override its values.
    #[arg(value_name = "PIPELINE.toml")]
    pub pipeline: Option<PathBuf>,
    /// Video to read: a file path, any URI GStreamer can decode (file://, http://, rtsp://),
    /// v4l2:///dev/videoN for a webcam, or a test pattern
    /// testsrc://PATTERN?frames=N&size=WxH&fps=F&live=BOOL&error-after=N (PATTERN: smpte, ball,
    /// snow, … as videotestsrc names them; defaults smpte, 100 frames (0: endless), 640x480, 25 fps).
    /// Repeat for several streams in one process (stream ids "0", "1", … in the order given).
    /// NAME=PATH|URI names the stream (letters, digits, '-', '_', '.'): records, MQTT topics
    /// and overlay files carry NAME. A file whose name contains '=' is given as ./a=b.mp4.
    #[arg(short, long, value_name = "[NAME=]PATH|URI")]
    pub input: Vec<String>,
    #[command(flatten)]
    pub json: JsonFlag,
    #[command(flatten)]
    pub source: SourceFlags,
    #[command(flatten)]
    pub work: DetectWorkFlags,
    #[command(flatten)]
    pub detector: DetectorFlags,
    #[command(flatten)]
    pub attributes: AttributeFlags,
    #[command(flatten)]
    pub age_groups: AgeGroupFlag,
    #[command(flatten)]
    pub no_attributes: NoAttributesFlag,
    #[command(flatten)]
    pub overlay: OverlayFlags,
    #[command(flatten)]
    pub snapshots: SnapshotFlag,
    #[command(flatten)]
    pub mqtt: MqttFlags,
    #[command(flatten)]
    pub metrics: MetricsFlags,
    #[command(flatten)]
    pub track: TrackFlags,
}

impl RunArgs {
    /// The pipeline file (if any) with the flags given on top; not yet validated.
    pub fn config(&self) -> Result<PipelineConfig, faceflow::pipeline::PipelineError> {
        let mut config = match &self.pipeline {
            Some(path) => PipelineConfig::load(path)?,
            None => PipelineConfig::default(),
        };
        self.json.apply(&mut config);
        self.work.apply(&mut config.detect);
        self.detector.apply(&mut config.detect);
        self.detector.apply_device(&mut config.runtime);
        self.attributes.apply(&mut config.attributes);
        self.age_groups.apply(&mut config.attributes);
        self.no_attributes.apply(&mut config.attributes);
        self.mqtt.apply(&mut config);
        self.overlay.apply(&mut config);
        self.snapshots.apply(&mut config);
        self.metrics.apply(&mut config);
        self.track.apply(&mut config);
        self.replace_streams(&mut config)?;
        // After the inputs: source flags apply to every stream.
        self.source.apply(&mut config);
        Ok(config)
    }

    /// Inputs on the command line replace the file's streams; each takes the file's (or the
    /// default) [source] settings.
    fn replace_streams(
        &self,
        config: &mut PipelineConfig,
    ) -> Result<(), faceflow::pipeline::PipelineError> {
        if self.input.is_empty() {
            return Ok(());
        }
        let base = config.sources.first().unwrap_or(&config.source).clone();
        let mut streams = Vec::with_capacity(self.input.len());
        for given in &self.input {
            let (name, input) = named_input(given);
            if let Some(why) = misread_file(given, |p| std::path::Path::new(p).exists()) {
                return Err(faceflow::pipeline::PipelineError::Invalid(why));
            }
            streams.push(SourceConfig {
                input: input.to_string(),
                // Unnamed, one input keeps the file's stream name; several are numbered.
                name: name.map(str::to_string).or_else(|| {
                    if self.input.len() == 1 {
                        base.name.clone()
                    } else {
                        None
                    }
                }),
                ..base.clone()
            });
        }
        if streams.len() == 1 {
            config.source = streams.remove(0);
            config.sources.clear();
        } else {
            config.source = SourceConfig::default();
            config.sources = streams;
        }
        Ok(())
    }
}

/// Why `given` must be written otherwise, when it reads as `NAME=input` but names a file that
/// exists (`exists`) while that input does not: a file whose name contains '='.
fn misread_file(given: &str, exists: impl Fn(&str) -> bool) -> Option<String> {
    let (name, input) = named_input(given);
    (name.is_some() && !exists(input) && exists(given)).then(|| {
        format!(
            "--input {given}: read as stream {:?} = {input:?}, which does not exist; for a file \
             whose name contains '=', write ./{given}",
            name.unwrap_or_default()
        )
    })
}

/// `NAME=PATH|URI` split into the stream's name and its input; anything else is all input. A
/// name is what comes before the first '=' when it is 1 to 64 letters, digits, '-', '_' or '.'
/// and not only dots: so a URI (`rtsp://cam/x?a=b`, its scheme ends in ':'), a Windows path
/// (`C:\x=y.mp4`) or a relative path (`./a=b.mp4`) never reads as a name.
pub fn named_input(given: &str) -> (Option<&str>, &str) {
    let Some((name, input)) = given.split_once('=') else {
        return (None, given);
    };
    let allowed = |c: char| c.is_alphanumeric() || "-_.".contains(c);
    let is_name = !name.is_empty()
        && name.chars().count() <= 64
        && name.chars().all(allowed)
        && !name.chars().all(|c| c == '.')
        && !input.is_empty();
    if is_name {
        (Some(name), input)
    } else {
        (None, given)
    }
}

/// What is said of people while they are in view.
#[derive(Args)]
pub struct TrackFlags {
    /// While a person stays in view, a `track_update` record every SECONDS (0.1 to 86400; 0:
    /// none) besides the `track_start` when they appear and the `track` record when they leave
    /// [default: 0].
    #[arg(long, value_name = "SECONDS")]
    pub track_updates: Option<f64>,
}

impl TrackFlags {
    pub fn apply(&self, config: &mut PipelineConfig) {
        if let Some(v) = self.track_updates {
            config.track.update_every_s = v;
        }
    }
}

/// `--json`.
#[derive(Args)]
pub struct JsonFlag {
    /// Where the JSON Lines go: a file, or - for standard output [default: -].
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,
}

impl JsonFlag {
    pub fn apply(&self, config: &mut PipelineConfig) {
        if let Some(v) = &self.json {
            config.json = JsonConfig { path: v.clone() };
        }
    }
}

/// How each stream is read; applied to every stream.
#[derive(Args)]
pub struct SourceFlags {
    /// Use RTSP over TCP.
    #[arg(long)]
    pub rtsp_tcp: bool,
    /// RTSP jitter-buffer latency in milliseconds, 0 to 60000 [default: 200].
    #[arg(long, value_name = "MS")]
    pub rtsp_latency_ms: Option<u32>,
    /// Treat the input as live (drop the oldest frames when behind) or not; default: RTSP and
    /// webcams are live, files are not. A file read as live plays at its own frame rate.
    #[arg(long, value_name = "BOOL")]
    pub live: Option<bool>,
    /// Stop after this many decoded frames [default: 0, no limit].
    #[arg(long, value_name = "N")]
    pub max_frames: Option<u64>,
    /// Live cameras: reconnect at most N times in a row after the stream fails or stalls
    /// [default: forever].
    #[arg(long, value_name = "N")]
    pub reconnect_attempts: Option<u32>,
    /// Live cameras: no frame for this long is a stall, and the camera is reconnected; 100 to
    /// 3600000 [default: 5000].
    #[arg(long, value_name = "MS")]
    pub stall_timeout_ms: Option<u64>,
    /// Files: when the file began (RFC 3339, e.g. 2026-12-07T09:30:00Z), so records carry
    /// clock time (`time`, `first_time`, `last_time`). Live streams carry the time each frame
    /// arrived: beside files, it is for the files; alone, refused.
    #[arg(long, value_name = "RFC3339")]
    pub start_time: Option<String>,
}

impl SourceFlags {
    /// On every stream: `[source]`, or each of `[[sources]]`.
    pub fn apply(&self, config: &mut PipelineConfig) {
        if config.sources.is_empty() {
            self.apply_to(&mut config.source);
        } else {
            for source in &mut config.sources {
                self.apply_to(source);
            }
            // Cameras beside files: the start time is the files' (a camera has its own clock).
            // Every stream live: left on them all, so the run says it is refused.
            let live = |s: &SourceConfig| {
                matches!(
                    faceflow::sources::parse_input(&s.input, s.live),
                    Ok(faceflow::sources::InputKind::Uri { live: true, .. })
                        | Ok(faceflow::sources::InputKind::TestPattern(
                            faceflow::sources::TestPattern { live: true, .. }
                        ))
                )
            };
            if self.start_time.is_some() && !config.sources.iter().all(live) {
                for source in config.sources.iter_mut().filter(|s| live(s)) {
                    source.start_time = None;
                }
            }
        }
    }

    fn apply_to(&self, source: &mut SourceConfig) {
        if self.rtsp_tcp {
            source.rtsp_tcp = true;
        }
        if let Some(v) = self.rtsp_latency_ms {
            source.rtsp_latency_ms = v;
        }
        if self.live.is_some() {
            source.live = self.live;
        }
        if let Some(v) = self.max_frames {
            source.max_frames = v;
        }
        if self.reconnect_attempts.is_some() {
            source.reconnect_attempts = self.reconnect_attempts;
        }
        if let Some(v) = self.stall_timeout_ms {
            source.stall_timeout_ms = v;
        }
        if self.start_time.is_some() {
            source.start_time = self.start_time.clone();
        }
    }
}

/// How the detector's work is spread over workers and frames (`run` only).
#[derive(Args)]
pub struct DetectWorkFlags {
    /// Detector workers, each on its own frames, 1 to 32 [default 0: one per core].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Search each stream's frames for faces in full only every N frames, 1 to 1000; between, follow
    /// the faces already found (R-Net and O-Net on each, no pyramid): faster, and a face that
    /// enters is found up to N-1 frames late. auto: a full search every 100 ms of video (every 3rd
    /// frame at 25-30 fps, every frame at 10 fps) [default: auto].
    #[arg(long, value_name = "N|auto", value_parser = parse_detect_every)]
    pub detect_every: Option<u32>,
}

impl DetectWorkFlags {
    pub fn apply(&self, detect: &mut DetectConfig) {
        if let Some(v) = self.workers {
            detect.workers = v;
        }
        if let Some(v) = self.detect_every {
            detect.detect_every = v;
        }
    }
}

/// `--detect-every`: a number of frames, or `auto` (0).
pub(crate) fn parse_detect_every(text: &str) -> Result<u32, String> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(0);
    }
    text.parse::<u32>()
        .map_err(|_| format!("'{text}' is not a number of frames or auto"))
}

/// `--no-attributes`.
#[derive(Args)]
pub struct NoAttributesFlag {
    /// Detection only: no age, gender or race.
    #[arg(long)]
    pub no_attributes: bool,
}

impl NoAttributesFlag {
    pub fn apply(&self, attributes: &mut AttributesConfig) {
        if self.no_attributes {
            attributes.enabled = false;
        }
    }
}

/// Each person's best face as a JPEG.
#[derive(Args)]
pub struct SnapshotFlag {
    /// Write each person's most readable face (large, sure, frontal) as DIR/<stream>-<track>.jpg
    /// when their track ends; the track record names it (DIR must exist).
    #[arg(long, value_name = "DIR")]
    pub snapshots: Option<std::path::PathBuf>,
}

impl SnapshotFlag {
    pub fn apply(&self, config: &mut PipelineConfig) {
        if let Some(dir) = &self.snapshots {
            config.snapshots.dir = Some(dir.clone());
        }
    }
}

/// The overlay video.
#[derive(Args)]
pub struct OverlayFlags {
    /// Also write an overlay video: each frame with its faces' boxes (a colour per track),
    /// landmarks and labels, H.264 in an .mp4 file (several streams, or a named one:
    /// PATH's stem plus -<stream id>, one file each), served live at rtsp://HOST:PORT/PATH (several streams:
    /// PATH/<stream id>), or shown in a window per stream on this machine's display (window).
    #[arg(long, value_name = "PATH.mp4|rtsp://HOST:PORT/PATH|window")]
    pub overlay: Option<String>,
    /// Pixelate every face in the overlay video (the JSON keeps the boxes).
    #[arg(long)]
    pub blur_faces: bool,
}

impl OverlayFlags {
    pub fn apply(&self, config: &mut PipelineConfig) {
        if let Some(v) = &self.overlay {
            config.overlay.path = Some(v.clone());
        }
        if self.blur_faces {
            config.overlay.blur_faces = true;
        }
        for warning in self.ignored(config) {
            tracing::warn!("{warning}");
        }
    }

    /// Options that only shape an overlay that is not on: said, not silently dropped.
    fn ignored(&self, config: &PipelineConfig) -> Vec<&'static str> {
        if self.blur_faces && config.overlay.path.is_none() {
            vec!["--blur-faces does nothing without --overlay"]
        } else {
            Vec::new()
        }
    }
}

/// Publishing to an MQTT broker.
#[derive(Args)]
pub struct MqttFlags {
    /// Publish records to an MQTT broker, QoS 1: mqtt://[user[:password]@]host[:port]/topic, where
    /// {stream} in the topic becomes the stream id (password also from FACEFLOW_MQTT_PASSWORD);
    /// mqtts:// for TLS (port 8883 unless given). Frames with faces and track records; kept while
    /// the broker is away.
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// With --mqtt: publish frames without faces too.
    #[arg(long)]
    pub mqtt_all_frames: bool,
    /// With --mqtt: records kept while the broker does not acknowledge them, 1 to 1000000
    /// [default: 1500, a minute of one stream]; beyond, they are counted as dropped.
    #[arg(long, value_name = "N")]
    pub mqtt_buffer: Option<usize>,
    /// With mqtts://: the PEM file of the certificate authority of the broker's certificate
    /// [default: the system's CA certificates].
    #[arg(long, value_name = "FILE")]
    pub mqtt_ca: Option<PathBuf>,
}

impl MqttFlags {
    pub fn apply(&self, config: &mut PipelineConfig) {
        if let Some(v) = &self.mqtt {
            config.mqtt.url = Some(v.clone());
        }
        if self.mqtt_all_frames {
            config.mqtt.all_frames = true;
        }
        if let Some(v) = self.mqtt_buffer {
            config.mqtt.buffer = v;
        }
        if let Some(v) = &self.mqtt_ca {
            config.mqtt.ca = Some(v.clone());
        }
        for warning in self.ignored(config) {
            tracing::warn!("{warning}");
        }
    }

    /// Options that only shape a broker connection that is not on: said, not silently dropped.
    fn ignored(&self, config: &PipelineConfig) -> Vec<&'static str> {
        if config.mqtt.url.is_some() {
            return Vec::new();
        }
        [
            (
                self.mqtt_all_frames,
                "--mqtt-all-frames does nothing without --mqtt",
            ),
            (
                self.mqtt_buffer.is_some(),
                "--mqtt-buffer does nothing without --mqtt",
            ),
            (
                self.mqtt_ca.is_some(),
                "--mqtt-ca does nothing without --mqtt",
            ),
        ]
        .into_iter()
        .filter_map(|(given, warning)| given.then_some(warning))
        .collect()
    }
}

/// How the run reports its health: a line on standard error, Prometheus metrics.
#[derive(Args)]
pub struct MetricsFlags {
    /// Print a health line (frames, queue depths, resident memory) to standard error every this
    /// many seconds, 0.1 to 86400 [default: 0, never].
    #[arg(long, value_name = "SECONDS")]
    pub stats_every: Option<f64>,
    /// Serve Prometheus metrics at http://ADDR/metrics while the run goes on, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

impl MetricsFlags {
    pub fn apply(&self, config: &mut PipelineConfig) {
        if let Some(v) = self.stats_every {
            config.stats_interval_s = v;
        }
        if let Some(v) = &self.metrics {
            config.metrics.listen = Some(v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each group's flags parsed by clap and applied to a default configuration: every flag of
    //! every group sets its key.
    use super::*;
    use crate::cli::parse_group;
    use clap::Parser;
    use faceflow::runtime::Device;

    fn applied(apply: impl FnOnce(&mut PipelineConfig)) -> PipelineConfig {
        let mut config = PipelineConfig::default();
        apply(&mut config);
        config
    }

    #[test]
    fn json_flag_sets_the_json_path() {
        let flags: JsonFlag = parse_group(&["--json", "faces.jsonl"]);
        assert_eq!(applied(|c| flags.apply(c)).json.path, "faces.jsonl");
        let none: JsonFlag = parse_group(&[]);
        assert_eq!(applied(|c| none.apply(c)), PipelineConfig::default());
    }

    #[test]
    fn source_flags_set_every_stream() {
        let flags: SourceFlags = parse_group(&[
            "--rtsp-tcp",
            "--rtsp-latency-ms",
            "50",
            "--live",
            "false",
            "--max-frames",
            "7",
            "--reconnect-attempts",
            "2",
            "--stall-timeout-ms",
            "900",
        ]);
        let expected = SourceConfig {
            rtsp_tcp: true,
            rtsp_latency_ms: 50,
            live: Some(false),
            max_frames: 7,
            reconnect_attempts: Some(2),
            stall_timeout_ms: 900,
            ..SourceConfig::default()
        };
        assert_eq!(applied(|c| flags.apply(c)).source, expected);
        let two = applied(|c| {
            c.sources = vec![SourceConfig::default(), SourceConfig::default()];
            flags.apply(c);
        });
        assert_eq!(two.sources, vec![expected.clone(), expected]);
        assert_eq!(two.source, SourceConfig::default());
        let none: SourceFlags = parse_group(&[]);
        assert_eq!(applied(|c| none.apply(c)), PipelineConfig::default());
    }

    #[test]
    fn detect_work_flags_set_workers_and_cadence() {
        let flags: DetectWorkFlags = parse_group(&["--workers", "3", "--detect-every", "4"]);
        let mut detect = DetectConfig::default();
        flags.apply(&mut detect);
        assert_eq!((detect.workers, detect.detect_every), (3, 4));
        let auto: DetectWorkFlags = parse_group(&["--detect-every", "AUTO"]);
        auto.apply(&mut detect);
        assert_eq!((detect.workers, detect.detect_every), (3, 0));
        assert!(parse_detect_every("often").is_err());
    }

    #[test]
    fn no_attributes_switches_the_stage_off() {
        let mut attributes = AttributesConfig::default();
        parse_group::<NoAttributesFlag>(&[]).apply(&mut attributes);
        assert!(attributes.enabled);
        parse_group::<NoAttributesFlag>(&["--no-attributes"]).apply(&mut attributes);
        assert!(!attributes.enabled);
    }

    #[test]
    fn overlay_flags_set_the_overlay_and_say_when_blur_does_nothing() {
        let flags: OverlayFlags = parse_group(&["--overlay", "out.mp4", "--blur-faces"]);
        let config = applied(|c| flags.apply(c));
        assert_eq!(config.overlay.path.as_deref(), Some("out.mp4"));
        assert!(config.overlay.blur_faces);
        assert!(flags.ignored(&config).is_empty());
        let blur_only: OverlayFlags = parse_group(&["--blur-faces"]);
        assert_eq!(
            blur_only.ignored(&applied(|c| blur_only.apply(c))),
            ["--blur-faces does nothing without --overlay"]
        );
    }

    #[test]
    fn snapshot_flag_sets_the_folder() {
        let flags: SnapshotFlag = parse_group(&["--snapshots", "faces"]);
        let config = applied(|c| flags.apply(c));
        assert_eq!(
            config.snapshots.dir,
            Some(std::path::PathBuf::from("faces"))
        );
        let none: SnapshotFlag = parse_group(&[]);
        assert_eq!(applied(|c| none.apply(c)).snapshots.dir, None);
    }

    #[test]
    fn mqtt_flags_set_the_broker_and_say_what_does_nothing_without_it() {
        let flags: MqttFlags = parse_group(&[
            "--mqtt",
            "mqtt://broker/faces",
            "--mqtt-all-frames",
            "--mqtt-buffer",
            "10",
            "--mqtt-ca",
            "ca.pem",
        ]);
        let config = applied(|c| flags.apply(c));
        assert_eq!(config.mqtt.url.as_deref(), Some("mqtt://broker/faces"));
        assert!(config.mqtt.all_frames);
        assert_eq!(config.mqtt.buffer, 10);
        assert_eq!(config.mqtt.ca, Some(PathBuf::from("ca.pem")));
        assert!(flags.ignored(&config).is_empty());
        let without: MqttFlags = parse_group(&[
            "--mqtt-all-frames",
            "--mqtt-buffer",
            "10",
            "--mqtt-ca",
            "ca.pem",
        ]);
        assert_eq!(
            without.ignored(&applied(|c| without.apply(c))),
            [
                "--mqtt-all-frames does nothing without --mqtt",
                "--mqtt-buffer does nothing without --mqtt",
                "--mqtt-ca does nothing without --mqtt",
            ]
        );
    }

    #[test]
    fn metrics_flags_set_stats_and_the_listener() {
        let flags: MetricsFlags =
            parse_group(&["--stats-every", "2.5", "--metrics", "127.0.0.1:9464"]);
        let config = applied(|c| flags.apply(c));
        assert_eq!(config.stats_interval_s, 2.5);
        assert_eq!(config.metrics.listen.as_deref(), Some("127.0.0.1:9464"));
    }

    #[test]
    fn run_args_replace_the_file_streams_and_apply_every_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[source]\ninput = \"a.mp4\"\nname = \"door\"\nmax_frames = 9\n[detect]\nworkers = 2\n",
        )
        .unwrap();
        let parse = |extra: &[&str]| {
            let mut args = vec!["faceflow", "run", path.to_str().unwrap()];
            args.extend(extra);
            let cli = crate::cli::Cli::try_parse_from(args).unwrap();
            let crate::cli::Command::Run(run) = cli.command else {
                panic!("not run")
            };
            run.config().unwrap()
        };
        // The file alone.
        let config = parse(&[]);
        // Relative paths in the file are its folder's.
        assert!(config.source.input.ends_with("a.mp4"));
        assert_eq!(config.detect.workers, 2);
        // One input keeps the file's name and settings; flags win over the file.
        let config = parse(&["-i", "b.mp4", "--workers", "3", "--device", "cuda"]);
        assert_eq!(config.source.input, "b.mp4");
        assert_eq!(config.source.name.as_deref(), Some("door"));
        assert_eq!(config.source.max_frames, 9);
        assert_eq!(config.detect.workers, 3);
        assert_eq!(config.runtime.device, Device::Cuda);
        // Several are numbered, each with the file's settings and the source flags.
        let config = parse(&["-i", "b.mp4", "-i", "c.mp4", "--rtsp-tcp"]);
        assert_eq!(config.source, SourceConfig::default());
        let streams: Vec<_> = config
            .sources
            .iter()
            .map(|s| (s.input.as_str(), s.name.clone(), s.max_frames, s.rtsp_tcp))
            .collect();
        assert_eq!(
            streams,
            [("b.mp4", None, 9, true), ("c.mp4", None, 9, true)]
        );
        // NAME=input names a stream, alone or among several.
        let config = parse(&["-i", "lobby=b.mp4"]);
        assert_eq!(
            (config.source.input.as_str(), config.source.name.as_deref()),
            ("b.mp4", Some("lobby"))
        );
        let config = parse(&["-i", "lobby=rtsp://cam/x?a=b", "-i", "c.mp4"]);
        let streams: Vec<_> = config
            .sources
            .iter()
            .map(|s| (s.input.as_str(), s.name.as_deref()))
            .collect();
        assert_eq!(
            streams,
            [("rtsp://cam/x?a=b", Some("lobby")), ("c.mp4", None)]
        );
    }

    /// A file named a=b.mp4 given bare would read as stream "a" = "b.mp4": refused, with the
    /// way to give it, when that file exists and b.mp4 does not.
    #[test]
    fn a_file_whose_name_holds_an_equals_sign_is_not_misread() {
        let only = |files: &'static [&'static str]| move |p: &str| files.contains(&p);
        let why = misread_file("a=b.mp4", only(&["a=b.mp4"])).unwrap();
        assert!(why.contains("write ./a=b.mp4"), "{why}");
        assert_eq!(misread_file("a=b.mp4", only(&["a=b.mp4", "b.mp4"])), None);
        assert_eq!(misread_file("a=b.mp4", only(&[])), None);
        assert_eq!(misread_file("./a=b.mp4", only(&["./a=b.mp4"])), None);
    }

    #[test]
    fn a_name_is_a_plain_word_before_the_first_equals_sign() {
        assert_eq!(named_input("lobby=a.mp4"), (Some("lobby"), "a.mp4"));
        assert_eq!(
            named_input("cam-2.b_c=rtsp://h/x"),
            (Some("cam-2.b_c"), "rtsp://h/x")
        );
        for whole in [
            "a.mp4",
            "rtsp://h/x?a=b",
            "testsrc://ball?frames=3",
            "C:\\v\\a=b.mp4",
            "./a=b.mp4",
            "/v/a=b.mp4",
            "file:///v/a=b.mp4",
            "=a.mp4",
            "..=a.mp4",
            "lobby=",
            "two words=a.mp4",
        ] {
            assert_eq!(named_input(whole), (None, whole), "{whole}");
        }
        let long = format!("{}=a.mp4", "n".repeat(65));
        assert_eq!(named_input(&long), (None, long.as_str()));
    }
}
