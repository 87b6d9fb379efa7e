//! The test pattern source (`testsrc://PATTERN?frames=N&size=WxH&fps=F&live=BOOL&error-after=N`):
//! GStreamer's videotestsrc, for tests, demos and soak runs without a camera.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_video as gst_video;

use super::{InputKind, SourceError, build_err, init_gstreamer};

#[derive(Debug, Clone, PartialEq)]
pub struct TestPattern {
    pub pattern: String,
    pub frames: u32,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub live: bool,
    /// Fail with a stream error after this many frames (to try error handling end to end).
    pub error_after: Option<u32>,
}

/// The names videotestsrc accepts for its `pattern` property (smpte, ball, snow, …).
pub fn test_patterns() -> Result<Vec<String>, SourceError> {
    init_gstreamer()?;
    let src = gst::ElementFactory::make("videotestsrc")
        .build()
        .map_err(|e| SourceError::Init(format!("videotestsrc: {e}")))?;
    let nicks = src
        .find_property("pattern")
        .and_then(|pspec| gst::glib::EnumClass::with_type(pspec.value_type()))
        .map(|class| {
            class
                .values()
                .iter()
                .map(|v| v.nick().to_string())
                .collect()
        })
        .unwrap_or_default();
    Ok(nicks)
}

/// Parses `testsrc://PATTERN?frames=N&size=WxH&fps=F&live=true` (all parts optional).
fn parse_test_pattern(input: &str, rest: &str) -> Result<TestPattern, SourceError> {
    let bad = |message: String| SourceError::BadTestSpec {
        input: super::shown(input),
        message,
    };
    // Said without quoting it: what comes before an '@' may be a password.
    if rest.contains('@') {
        return Err(bad("a test pattern takes no user or password".into()));
    }
    let (pattern, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut spec = TestPattern {
        pattern: if pattern.is_empty() {
            "smpte".into()
        } else {
            pattern.into()
        },
        frames: 100,
        width: 640,
        height: 480,
        fps: 25,
        live: false,
        error_after: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("'{pair}' is not key=value")))?;
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| bad(format!("{key}={v} is not a whole number")))
        };
        match key {
            "frames" => spec.frames = number(value)?,
            "fps" => {
                spec.fps = number(value)?;
                if !(1..=1000).contains(&spec.fps) {
                    return Err(bad(format!("fps={value} must be from 1 to 1000")));
                }
            }
            "live" => {
                spec.live = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(format!("live={value} must be true or false"))),
                }
            }
            "error-after" => {
                let n = number(value)?;
                if n == 0 {
                    return Err(bad("error-after=0: must be at least 1".into()));
                }
                spec.error_after = Some(n);
            }
            "size" => {
                let (w, h) = value
                    .split_once('x')
                    .ok_or_else(|| bad(format!("size={value} is not WxH")))?;
                spec.width = number(w)?;
                spec.height = number(h)?;
                // Up to 8K UHD: a bigger frame is gigabytes across the queues.
                let pixels = u64::from(spec.width) * u64::from(spec.height);
                if spec.width == 0
                    || spec.height == 0
                    || spec.width.max(spec.height) > 7680
                    || pixels > 7680 * 4320
                {
                    return Err(bad(format!(
                        "size={value} is out of range (sides up to 7680, at most 7680x4320 pixels)"
                    )));
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown key '{other}' (frames, size, fps, live, error-after)"
                )));
            }
        }
    }
    Ok(spec)
}

/// The `testsrc://` input `input` (`rest` after the scheme), checked against videotestsrc's
/// patterns; `live_override` is `--live`.
pub(super) fn parse(
    input: &str,
    rest: &str,
    live_override: Option<bool>,
) -> Result<InputKind, SourceError> {
    let mut spec = parse_test_pattern(input, rest)?;
    let patterns = test_patterns()?;
    if !patterns.contains(&spec.pattern) {
        return Err(SourceError::BadTestSpec {
            input: super::shown(input),
            message: format!(
                "unknown pattern '{}' (patterns: {})",
                spec.pattern,
                patterns.join(", ")
            ),
        });
    }
    if let Some(live) = live_override {
        spec.live = live;
    }
    Ok(InputKind::TestPattern(spec))
}

/// Adds videotestsrc (and a failing `identity` for `error-after`) to `pipeline`, linked to
/// `convert`.
pub(super) fn add_to(
    pipeline: &gst::Pipeline,
    spec: &TestPattern,
    convert: &gst::Element,
    input: &str,
) -> Result<(), SourceError> {
    let src = gst::ElementFactory::make("videotestsrc")
        .property("is-live", spec.live)
        // frames=0: endless (soak runs).
        .property(
            "num-buffers",
            if spec.frames == 0 {
                -1
            } else {
                i32::try_from(spec.frames).unwrap_or(i32::MAX)
            },
        )
        .property_from_str("pattern", &spec.pattern)
        .build()
        .map_err(|e| build_err(input, e))?;
    let caps = gst_video::VideoCapsBuilder::new()
        .width(spec.width as i32)
        .height(spec.height as i32)
        .framerate(gst::Fraction::new(spec.fps as i32, 1))
        .build();
    let filter = gst::ElementFactory::make("capsfilter")
        .property("caps", &caps)
        .build()
        .map_err(|e| build_err(input, e))?;
    pipeline
        .add_many([&src, &filter])
        .map_err(|e| build_err(input, e))?;
    let mut chain = vec![src, filter];
    if let Some(n) = spec.error_after {
        let fail = gst::ElementFactory::make("identity")
            .property("error-after", i32::try_from(n).unwrap_or(i32::MAX))
            .build()
            .map_err(|e| build_err(input, e))?;
        pipeline.add(&fail).map_err(|e| build_err(input, e))?;
        chain.push(fail);
    }
    chain.push(convert.clone());
    gst::Element::link_many(&chain).map_err(|e| build_err(input, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse_input;
    use super::*;

    #[test]
    fn test_pattern_specs_parse_with_defaults_and_reject_nonsense() {
        let InputKind::TestPattern(t) =
            parse_input("testsrc://ball?frames=10&size=320x240&fps=30", None).unwrap()
        else {
            panic!("not a test pattern")
        };
        assert_eq!(
            (
                t.pattern.as_str(),
                t.frames,
                t.width,
                t.height,
                t.fps,
                t.live
            ),
            ("ball", 10, 320, 240, 30, false)
        );
        let InputKind::TestPattern(t) = parse_input("testsrc://", Some(true)).unwrap() else {
            panic!("not a test pattern")
        };
        assert_eq!((t.pattern.as_str(), t.frames, t.live), ("smpte", 100, true));
        assert!(parse_input("testsrc://ball?size=0x10", None).is_err());
        assert!(parse_input("testsrc://ball?frames=many", None).is_err());
        assert!(parse_input("testsrc://ball?colour=red", None).is_err());
        let err = parse_input("testsrc://nosuch?frames=3", None).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown pattern 'nosuch' (patterns: smpte, snow,"),
            "{err}"
        );
        assert!(parse_input("testsrc://ball?fps=0", None).is_err());
        for bad in [
            "live=yes",
            "error-after=0",
            "size=16384x16384",
            "size=1x40000",
        ] {
            assert!(
                parse_input(&format!("testsrc://ball?{bad}"), None).is_err(),
                "{bad}"
            );
        }
    }
}
