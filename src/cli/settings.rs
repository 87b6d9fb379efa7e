//! Which flag sets which library setting. The library names a setting by its key (`min_face_px =
//! 3: must be from 8 to 10000 pixels`); a user of this command line reads its flag beside it
//! (`min_face_px (--min-face) = 3: …`), from this one table.

use std::error::Error;

use faceflow::align::AlignError;
use faceflow::attributes::AttributeError;
use faceflow::detect::DetectError;
use faceflow::limits::RangeError;
use faceflow::pipeline::PipelineError;
use faceflow::pipeline::outputs::OutputClash;
use faceflow::runtime::RuntimeError;

/// `(section, key, flag)`: the library setting (see [`RangeError::section`]) each flag sets.
pub const FLAG_OF_SETTING: &[(&str, &str, &str)] = &[
    ("source", "rtsp_latency_ms", "--rtsp-latency-ms"),
    ("source", "stall_timeout_ms", "--stall-timeout-ms"),
    ("detect", "min_face_px", "--min-face"),
    ("detect", "thresholds", "--thresholds"),
    ("detect", "scale_factor", "--scale-factor"),
    ("detect", "threads", "--threads"),
    ("detect", "workers", "--workers"),
    ("detect", "detect_every", "--detect-every"),
    ("attributes", "age_groups", "--age-groups"),
    ("attributes", "unknown_below", "--unknown-below"),
    ("", "stats_interval_s", "--stats-every"),
    ("", "start_time", "--start-time"),
    ("", "update_every_s", "--track-updates"),
    ("source", "input", "--input"),
    ("mqtt", "ca", "--mqtt-ca"),
    ("json", "path", "--json"),
    ("overlay", "path", "--overlay"),
    ("metrics", "listen", "--metrics"),
    ("snapshots", "dir", "--snapshots"),
    ("runtime", "device", "--device"),
    ("align", "crop_px", "--crop-size"),
    ("eval", "max_images", "--max-images"),
    ("eval", "val_fraction", "--val-fraction"),
    #[cfg(feature = "train")]
    ("train", "epochs", "--epochs"),
    #[cfg(feature = "train")]
    ("train", "batch", "--batch"),
    #[cfg(feature = "train")]
    ("train", "val_fraction", "--val-fraction"),
    #[cfg(feature = "train")]
    ("train", "lr", "--lr"),
    #[cfg(feature = "train")]
    ("train", "weight_decay", "--weight-decay"),
    #[cfg(feature = "train")]
    ("train", "loss_weights", "--loss-weights"),
    #[cfg(feature = "train")]
    ("train", "max_images", "--max-images"),
    #[cfg(feature = "train")]
    ("train", "input_px", "--input-px"),
    #[cfg(feature = "train")]
    ("train", "margin", "--margin"),
    #[cfg(feature = "train")]
    ("train", "distill", "--distill"),
    #[cfg(feature = "train")]
    ("train", "train_threads", "--train-threads"),
    #[cfg(feature = "train")]
    ("train", "checkpoint_every", "--checkpoint-every"),
];

/// The flag that sets a setting, if one does.
pub fn flag_of(section: &str, key: &str) -> Option<&'static str> {
    FLAG_OF_SETTING
        .iter()
        .find(|(s, k, _)| *s == section && *k == key)
        .map(|(_, _, flag)| *flag)
}

/// The error and its causes on one line (as [`crate::one_line`]), each setting that a flag sets
/// named with its flag: `min_face_px (--min-face) = 3: must be from 8 to 10000 pixels`.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = crate::one_line(e);
    for cause in e.chain() {
        let Some((section, key)) = setting_of(cause) else {
            continue;
        };
        let Some(flag) = flag_of(section, key) else {
            continue;
        };
        let text = cause.to_string().replace('\n', " ");
        let text = text.trim();
        // An output refused: said as it was given, `--json faces.jsonl: that is …`.
        if let Some(clash) = output_clash(cause) {
            let setting = format!("{}.{} = {}", clash.section, clash.key, clash.given);
            line = line.replacen(&setting, &format!("{flag} {}", clash.given), 1);
            continue;
        }
        // The library's messages about a setting start `key = value`: the flag goes after the key.
        if let Some(rest) = text.strip_prefix(&format!("{key} = ")) {
            line = line.replacen(text, &format!("{key} ({flag}) = {rest}"), 1);
        }
    }
    // A setting named in a hint, `[mqtt] ca`: its flag beside it. Only where the name stands
    // alone (a path given by the user may hold `[source] input.mp4`).
    for (section, key, flag) in FLAG_OF_SETTING {
        if !section.is_empty() {
            line = with_flag(&line, &format!("[{section}] {key}"), flag);
        }
    }
    line
}

/// `line` with ` (flag)` after each `named` that ends a word: at the end, or before a space or
/// one of `;,:)`.
fn with_flag(line: &str, named: &str, flag: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(named) {
        let end = at + named.len();
        out.push_str(&rest[..end]);
        let alone = rest[end..]
            .chars()
            .next()
            .is_none_or(|c| " ;,:)".contains(c));
        if alone && !rest[end..].starts_with(" (--") {
            out.push_str(&format!(" ({flag})"));
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// An output refused (see [`OutputClash`]), through the wrapper that passes it on.
fn output_clash<'a>(cause: &'a (dyn Error + 'static)) -> Option<&'a OutputClash> {
    match cause.downcast_ref::<PipelineError>() {
        Some(PipelineError::Output(clash)) => Some(clash),
        _ => cause.downcast_ref::<OutputClash>(),
    }
}

/// The setting a library error is about, `(section, key)`, looked for through the wrappers that
/// pass its message on unchanged (`#[error(transparent)]` hides the inner error from the chain).
fn setting_of(cause: &(dyn Error + 'static)) -> Option<(&'static str, &'static str)> {
    let range = |r: &RangeError| Some((r.section, r.key));
    let runtime = |r: &RuntimeError| match r {
        RuntimeError::NoCudaProvider { .. } | RuntimeError::Cuda(_) => Some(("runtime", "device")),
        _ => None,
    };
    let detect = |d: &DetectError| match d {
        DetectError::Range(r) => range(r),
        DetectError::Runtime(r) => runtime(r),
        _ => None,
    };
    let attributes = |a: &AttributeError| match a {
        AttributeError::Runtime(r) => runtime(r),
        _ => None,
    };
    if let Some(r) = cause.downcast_ref::<RangeError>() {
        return range(r);
    }
    if let Some(clash) = output_clash(cause) {
        return Some((clash.section, clash.key));
    }
    if let Some(r) = cause.downcast_ref::<RuntimeError>() {
        return runtime(r);
    }
    if let Some(d) = cause.downcast_ref::<DetectError>() {
        return detect(d);
    }
    if let Some(a) = cause.downcast_ref::<AttributeError>() {
        return attributes(a);
    }
    if let Some(AlignError(r)) = cause.downcast_ref::<AlignError>() {
        return range(r);
    }
    #[cfg(feature = "train")]
    if let Some(faceflow::train::TrainError::Range(r)) = cause.downcast_ref() {
        return range(r);
    }
    match cause.downcast_ref::<PipelineError>()? {
        PipelineError::Range(r) => range(r),
        PipelineError::Detect(d) => detect(d),
        PipelineError::Attributes(a) => attributes(a),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag in the table is a flag of some subcommand, so that the table cannot name one
    /// that was renamed or removed.
    #[test]
    fn every_flag_in_the_table_exists() {
        let cli = crate::cli::Cli::command();
        let flags: Vec<String> = cli
            .get_subcommands()
            .flat_map(|sub| sub.get_arguments())
            .filter_map(|arg| arg.get_long())
            .map(|long| format!("--{long}"))
            .collect();
        for (section, key, flag) in FLAG_OF_SETTING {
            assert!(
                flags.iter().any(|f| f == flag),
                "{section}.{key}: no subcommand has {flag}"
            );
        }
        let mut settings: Vec<_> = FLAG_OF_SETTING.iter().map(|(s, k, _)| (s, k)).collect();
        settings.sort();
        settings.dedup();
        assert_eq!(settings.len(), FLAG_OF_SETTING.len(), "a setting twice");
    }

    #[test]
    fn a_setting_with_a_flag_is_named_with_it() {
        let refused = |e: anyhow::Error| error_line(&e);
        let detect = faceflow::detect::DetectConfig {
            min_face_px: 3.0,
            ..Default::default()
        };
        let e = detect.validate().unwrap_err();
        assert_eq!(
            refused(e.into()),
            "min_face_px (--min-face) = 3: must be from 8 to 10000 pixels"
        );
        // Through a wrapper and a context of the binary's.
        let e = PipelineError::from(
            faceflow::detect::DetectConfig {
                thresholds: [0.6, 0.7, 2.0],
                ..Default::default()
            }
            .validate()
            .unwrap_err(),
        );
        assert_eq!(
            refused(anyhow::Error::from(e).context("checking")),
            "checking: thresholds (--thresholds) = 0.6,0.7,2: must be from 0 to 1 each"
        );
        // A namesake no flag sets keeps its key alone.
        let attributes = faceflow::pipeline::AttributesConfig {
            threads: 0,
            ..Default::default()
        };
        assert_eq!(
            refused(attributes.validate().unwrap_err().into()),
            "threads = 0: must be from 1 to 64"
        );
        // A setting named in a hint gets its flag where it stands alone, not inside a path.
        assert_eq!(
            with_flag("no input: set [source] input", "[source] input", "--input"),
            "no input: set [source] input (--input)"
        );
        assert_eq!(
            with_flag(
                "x/[source] input.mp4: set [source] input; …",
                "[source] input",
                "--input"
            ),
            "x/[source] input.mp4: set [source] input (--input); …"
        );
        let e = RuntimeError::Cuda("no GPU".into());
        assert!(refused(e.into()).starts_with("device (--device) = cuda: no GPU"));
    }
}
