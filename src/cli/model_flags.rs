//! Flags of the networks, shared by the subcommands that run them: the detector, the attribute
//! model and its age grouping, each group with its mapping and its test.

use std::path::PathBuf;

use clap::Args;

use faceflow::detect::DetectConfig;
use faceflow::model::spec::Task;
use faceflow::pipeline::AttributesConfig;
use faceflow::runtime::RuntimeConfig;

#[derive(Args, Clone, Default)]
pub struct DetectorFlags {
    /// Smallest face to find, in pixels, 8 to 10000 [default: 20].
    #[arg(long, value_name = "PX")]
    pub min_face: Option<f64>,
    /// Face-probability thresholds of P-Net, R-Net, O-Net, each 0 to 1 [default: 0.6,0.7,0.7].
    #[arg(long, value_name = "P,R,O", value_parser = parse_thresholds)]
    pub thresholds: Option<[f32; 3]>,
    /// Ratio between pyramid scales, 0.1 to 0.95 [default: 0.709].
    #[arg(long, value_name = "RATIO")]
    pub scale_factor: Option<f64>,
    /// Folder with pnet.onnx, rnet.onnx, onet.onnx to use instead of the built-in networks.
    #[arg(long, value_name = "DIR")]
    pub mtcnn_models: Option<PathBuf>,
    /// ONNX Runtime threads per network, 0 to 64 [default 0: 1 with several workers, else one per
    /// core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Where the networks run: cpu, or cuda (an NVIDIA GPU through the CUDA build of ONNX Runtime,
    /// `scripts/setup.sh --cuda`; without it, an error, never a silent fall-back) [default: cpu].
    #[arg(long, value_name = "cpu|cuda")]
    pub device: Option<faceflow::runtime::Device>,
}

pub fn parse_thresholds(s: &str) -> Result<[f32; 3], String> {
    let values: Vec<f32> = s
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .map_err(|_| format!("'{v}' is not a number"))
        })
        .collect::<Result<_, _>>()?;
    <[f32; 3]>::try_from(values)
        .map_err(|v| format!("expected three values P,R,O, got {}", v.len()))
}

impl DetectorFlags {
    pub fn apply(&self, cfg: &mut DetectConfig) {
        if let Some(v) = self.min_face {
            cfg.min_face_px = v;
        }
        if let Some(v) = self.thresholds {
            cfg.thresholds = v;
        }
        if let Some(v) = self.scale_factor {
            cfg.scale_factor = v;
        }
        if let Some(v) = &self.mtcnn_models {
            cfg.models_dir = Some(v.clone());
        }
        if let Some(v) = self.threads {
            cfg.threads = v;
        }
    }

    /// `--device` is the process's, not the detector's: it goes to `[runtime]`.
    pub fn apply_device(&self, runtime: &mut RuntimeConfig) {
        if let Some(v) = self.device {
            runtime.device = v;
        }
    }
}

#[derive(Args, Clone, Default)]
pub struct AttributeFlags {
    /// Attribute model exported by `faceflow train` [default: models/faceattr.onnx, looked up
    /// beside the executable, in ../share/faceflow, two folders up (target/<profile>), then in the
    /// source tree it was built from].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Also run each face mirrored and average the two (steadier, twice the model cost)
    /// [default: true for analyze and eval, false for run].
    #[arg(long, value_name = "BOOL")]
    pub flip_average: Option<bool>,
    /// Also read gender and race with faceres (models/faceres.onnx, trained on faces in the wild;
    /// race through models/faceres.race.json) and average them in: in video on a few of each person's clearest faces, on still images on every
    /// face (about 13 ms a face on one core) [default: true].
    #[arg(long, value_name = "BOOL")]
    pub faceres: Option<bool>,
}

/// `--age-groups`, for the subcommands that report one grouping (eval reports all three).
#[derive(Args, Clone, Default)]
pub struct AgeGroupFlag {
    /// Age groups to report: 3 (1-26, 27-52, 53-80), 5 (1-11, 12-23, 24-39, 40-55, 56-80) or 10
    /// (eight-year bins) [default: 5].
    #[arg(long, value_name = "N", value_parser = parse_age_groups)]
    pub age_groups: Option<u32>,
    /// The attributes to report, comma-separated: age, gender, race [default: all the model
    /// has]; e.g. --tasks age,gender where race must not be stored.
    #[arg(long, value_name = "LIST", value_parser = parse_tasks)]
    pub tasks: Option<TaskList>,
    /// A gender or race whose probability (calibrated: models/README.md) is below P reads
    /// "unknown"; 0 says every label, however unsure [default: 0.6].
    #[arg(long, value_name = "P")]
    pub unknown_below: Option<f32>,
}

/// A list of tasks as one value (clap would take a `Vec` for a repeated flag).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskList(pub Vec<Task>);

impl AgeGroupFlag {
    pub fn apply(&self, cfg: &mut AttributesConfig) {
        if let Some(n) = self.age_groups {
            cfg.age_groups = n;
        }
        if let Some(TaskList(tasks)) = &self.tasks {
            cfg.tasks = Some(tasks.clone());
        }
        if let Some(p) = self.unknown_below {
            cfg.unknown_below = p;
        }
    }
}

pub fn parse_tasks(s: &str) -> Result<TaskList, String> {
    Task::parse_list(s).map(TaskList).map_err(|e| e.to_string())
}

pub fn parse_age_groups(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n @ (3 | 5 | 10)) => Ok(n),
        _ => Err(format!("'{s}': age groups must be 3, 5 or 10")),
    }
}

impl AttributeFlags {
    pub fn apply(&self, cfg: &mut AttributesConfig) {
        if let Some(m) = &self.model {
            cfg.model = Some(m.clone());
        }
        if let Some(v) = self.flip_average {
            cfg.flip_average = v;
        }
        if let Some(v) = self.faceres {
            cfg.faceres = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse_group;
    use faceflow::runtime::Device;

    #[test]
    fn detector_flags_set_the_detector_and_the_device() {
        let flags: DetectorFlags = parse_group(&[
            "--min-face",
            "40",
            "--thresholds",
            "0.5, 0.6,0.9",
            "--scale-factor",
            "0.5",
            "--mtcnn-models",
            "nets/",
            "--threads",
            "2",
            "--device",
            "CUDA",
        ]);
        let mut detect = DetectConfig::default();
        flags.apply(&mut detect);
        let expected = DetectConfig {
            min_face_px: 40.0,
            thresholds: [0.5, 0.6, 0.9],
            scale_factor: 0.5,
            models_dir: Some(PathBuf::from("nets/")),
            threads: 2,
            ..DetectConfig::default()
        };
        assert_eq!(detect, expected);
        let mut runtime = RuntimeConfig::default();
        flags.apply_device(&mut runtime);
        assert_eq!(runtime.device, Device::Cuda);
        let none: DetectorFlags = parse_group(&[]);
        let mut detect = DetectConfig::default();
        none.apply(&mut detect);
        assert_eq!(detect, DetectConfig::default());
        assert!(parse_thresholds("0.6,0.7").is_err());
        assert!(parse_thresholds("0.6,x,0.7").is_err());
    }

    #[test]
    fn attribute_flags_set_the_model_and_mirroring() {
        let flags: AttributeFlags = parse_group(&["--model", "m.onnx", "--flip-average", "false"]);
        let mut attributes = AttributesConfig {
            flip_average: true,
            ..AttributesConfig::default()
        };
        flags.apply(&mut attributes);
        assert_eq!(attributes.model, Some(PathBuf::from("m.onnx")));
        assert!(!attributes.flip_average);
    }

    #[test]
    fn age_group_flag_takes_3_5_or_10() {
        let mut attributes = AttributesConfig::default();
        parse_group::<AgeGroupFlag>(&["--age-groups", "10"]).apply(&mut attributes);
        assert_eq!(attributes.age_groups, 10);
        parse_group::<AgeGroupFlag>(&[]).apply(&mut attributes);
        assert_eq!(attributes.age_groups, 10);
        assert!(parse_age_groups("7").is_err());
    }

    #[test]
    fn tasks_flag_names_the_attributes_to_report() {
        let mut attributes = AttributesConfig::default();
        parse_group::<AgeGroupFlag>(&["--tasks", "gender, age"]).apply(&mut attributes);
        assert_eq!(attributes.tasks, Some(vec![Task::Age, Task::Gender]));
        parse_group::<AgeGroupFlag>(&[]).apply(&mut attributes);
        assert_eq!(attributes.tasks, Some(vec![Task::Age, Task::Gender]));
        assert!(parse_tasks("age,height").is_err());
    }
}
