//! Files and URIs through uridecodebin: local files (paths and `file://`), RTSP cameras, v4l2
//! webcams (`v4l2:///dev/videoN`), http(s) and any other scheme a GStreamer source handles. The
//! first video stream is decoded; audio and other streams go to a fakesink, and an input with no
//! video at all ends with an error.

use std::path::Path;
use std::sync::Arc;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::{InputKind, SourceConfig, SourceError, build_err, init_gstreamer};

/// A URI input: `scheme` is what comes before `://` (checked by the caller to be a scheme).
pub(super) fn parse_uri(
    input: &str,
    scheme: &str,
    live_override: Option<bool>,
) -> Result<InputKind, SourceError> {
    let scheme = scheme.to_ascii_lowercase();
    if scheme == "file" {
        let path = gst::glib::filename_from_uri(input)
            .map(|(p, _)| p)
            .map_err(|e| super::build_err(input, e))?;
        check_file(input, &path)?;
    }
    let supported = init_gstreamer().is_ok()
        && gst::Element::make_from_uri(gst::URIType::Src, input, None).is_ok();
    if !supported {
        return Err(SourceError::UnknownScheme {
            input: super::shown(input),
            scheme,
        });
    }
    let live = live_override.unwrap_or(matches!(
        scheme.as_str(),
        "rtsp" | "rtsps" | "rtspt" | "v4l2"
    ));
    Ok(InputKind::Uri {
        uri: input.to_string(),
        live,
    })
}

/// A local file path: checked here, so a missing or empty file gets a clear error before
/// GStreamer is involved.
pub(super) fn parse_path(
    input: &str,
    live_override: Option<bool>,
) -> Result<InputKind, SourceError> {
    let path = Path::new(input);
    check_file(input, path)?;
    // Absolute but not canonical: symlinks stay as the user named them (as `detect` does).
    let absolute = std::path::absolute(path).map_err(|e| super::build_err(input, e))?;
    let uri =
        gst::glib::filename_to_uri(&absolute, None).map_err(|e| super::build_err(input, e))?;
    Ok(InputKind::Uri {
        uri: uri.to_string(),
        live: live_override.unwrap_or(false),
    })
}

fn check_file(input: &str, path: &Path) -> Result<(), SourceError> {
    let meta = std::fs::metadata(path).map_err(|_| SourceError::NotFound {
        input: super::shown(input),
    })?;
    if !meta.is_file() {
        return Err(SourceError::NotAFile {
            input: super::shown(input),
        });
    }
    if meta.len() == 0 {
        return Err(SourceError::EmptyFile {
            input: super::shown(input),
        });
    }
    Ok(())
}

/// Shared with decodebin's callbacks: the streams a URI exposed, and whether all were exposed
/// without a video one (its `no-more-pads`). Without this the run would wait forever for a frame.
pub(super) type NoVideo = Arc<std::sync::Mutex<Option<Vec<String>>>>;

/// What uridecodebin opens, and how.
pub(super) struct Decode<'a> {
    pub uri: &'a str,
    pub live: bool,
    pub config: &'a SourceConfig,
    /// The input as given, for errors.
    pub input: &'a str,
}

/// Adds uridecodebin for `decode` to `pipeline`: its video stream linked to `convert` (through
/// the decoder it picks), the others to fakesinks; `no_video` is set when it has none.
pub(super) fn add_to(
    pipeline: &gst::Pipeline,
    opening: Decode<'_>,
    convert: &gst::Element,
    appsink: &gst_app::AppSink,
    no_video: &NoVideo,
) -> Result<(), SourceError> {
    let Decode {
        uri,
        live,
        config,
        input,
    } = opening;
    let decode = gst::ElementFactory::make("uridecodebin")
        .property("uri", uri)
        .build()
        .map_err(|e| build_err(input, e))?;
    let (tcp, latency) = (config.rtsp_tcp, config.rtsp_latency_ms);
    decode.connect("source-setup", false, move |args| {
        if let Some(src) = args.get(1).and_then(|v| v.get::<gst::Element>().ok())
            && src.find_property("latency").is_some()
            && src.find_property("protocols").is_some()
        {
            src.set_property("latency", latency);
            if tcp {
                src.set_property_from_str("protocols", "tcp");
            }
        }
        None
    });
    pipeline.add(&decode).map_err(|e| build_err(input, e))?;
    // A file or web stream treated as live plays at its own frame rate, like a camera
    // (unpaced, it would be read as fast as it decodes and most frames dropped).
    let camera = ["rtsp", "v4l2"].iter().any(|s| uri.starts_with(s));
    appsink.set_sync(live && !camera);
    let convert_weak = convert.downgrade();
    let pipeline_weak = pipeline.downgrade();
    if let Ok(mut slot) = no_video.lock() {
        *slot = None;
    }
    let exposed: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let seen = exposed.clone();
    let no_video = no_video.clone();
    let what = super::shown(input);
    // All streams are out: with no video among them no frame will ever come, so the
    // stream ends with an error rather than wait (an audio file, alone or among others).
    decode.connect_no_more_pads(move |decode| {
        let media = seen.lock().map(|m| m.clone()).unwrap_or_default();
        if media.iter().any(|m| m.starts_with("video/")) {
            return;
        }
        if let Ok(mut slot) = no_video.lock() {
            *slot = Some(media);
        }
        gst::element_error!(
            decode,
            gst::StreamError::WrongType,
            ("no video stream in {what}")
        );
    });
    decode.connect_pad_added(move |decode, pad| {
        let media = pad
            .current_caps()
            .or_else(|| Some(pad.query_caps(None)))
            .and_then(|c| c.structure(0).map(|s| s.name().to_string()))
            .unwrap_or_default();
        if let Ok(mut seen) = exposed.lock() {
            seen.push(media.clone());
        }
        if media.starts_with("video/")
            && let Some(convert) = convert_weak.upgrade()
            && let Some(sink) = convert.static_pad("sink")
            && !sink.is_linked()
        {
            // decodebin exposes a stream it has no decoder for with its encoded caps,
            // which videoconvert refuses: say so rather than fail later as "not linked".
            if pad.link(&sink).is_err() {
                gst::element_error!(
                    decode,
                    gst::StreamError::CodecNotFound,
                    ("{}", no_decoder_message(&media))
                );
            }
            return;
        }
        // Audio and extra video streams go to a fakesink so they never block the demuxer.
        if let Some(pipeline) = pipeline_weak.upgrade()
            && let Ok(fake) = gst::ElementFactory::make("fakesink")
                .property("sync", false)
                .property("async", false)
                .build()
            && pipeline.add(&fake).is_ok()
        {
            let _ = fake.sync_state_with_parent();
            if let Some(sink) = fake.static_pad("sink") {
                let _ = pad.link(&sink);
            }
        }
    });
    Ok(())
}

pub(super) fn no_decoder_message(media: &str) -> String {
    format!(
        "no decoder for {media} (install the GStreamer plugin that decodes it, e.g. gstreamer1.0-libav or gstreamer1.0-plugins-bad)"
    )
}

/// What an input without video holds, for its error: ` (only audio/x-raw)`, or nothing.
pub(super) fn no_video_detail(media: &[String]) -> String {
    let mut kinds: Vec<&str> = media
        .iter()
        .map(String::as_str)
        .filter(|m| !m.is_empty())
        .collect();
    kinds.dedup();
    if kinds.is_empty() {
        String::new()
    } else {
        format!(" (only {})", kinds.join(", "))
    }
}

/// The media type in decodebin's "No decoder available for type 'video/x-h265, …'".
pub(super) fn missing_media_type(warning: &str) -> Option<String> {
    let caps = warning.split_once("type '")?.1;
    let end = caps.find([',', '\'', ';']).unwrap_or(caps.len());
    Some(caps[..end].trim().to_string()).filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::super::parse_input;
    use super::*;

    #[test]
    fn the_missing_decoder_is_read_from_decodebins_warning() {
        assert_eq!(
            missing_media_type(
                "No decoder available for type 'video/x-h265, stream-format=(string)hvc1'."
            )
            .as_deref(),
            Some("video/x-h265")
        );
        assert_eq!(missing_media_type("something else"), None);
    }

    #[test]
    fn missing_and_empty_files_are_rejected_before_gstreamer() {
        let err = parse_input("/definitely/not/here.mp4", None).unwrap_err();
        assert_eq!(err.to_string(), "/definitely/not/here.mp4: no such file");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.mp4");
        std::fs::write(&empty, b"").unwrap();
        let err = parse_input(empty.to_str().unwrap(), None).unwrap_err();
        assert!(err.to_string().ends_with("file is empty"), "{err}");
        assert!(parse_input(dir.path().to_str().unwrap(), None).is_err());
    }

    #[test]
    fn unknown_uri_schemes_are_named() {
        let err = parse_input("bogus://camera/1", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bogus://camera/1: unsupported URI scheme 'bogus' (no GStreamer source handles it)"
        );
    }

    #[test]
    fn rtsp_and_v4l2_are_live_files_are_not() {
        init_gstreamer().unwrap();
        assert!(matches!(
            parse_input("rtsp://127.0.0.1:1/x", None),
            Ok(InputKind::Uri { live: true, .. })
        ));
        assert!(matches!(
            parse_input("v4l2:///dev/video0", None),
            Ok(InputKind::Uri { live: true, .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.mp4");
        std::fs::write(&f, b"x").unwrap();
        match parse_input(f.to_str().unwrap(), None).unwrap() {
            InputKind::Uri { uri, live } => {
                assert!(uri.starts_with("file:///"));
                assert!(!live);
            }
            other => panic!("{other:?}"),
        }
    }
}
