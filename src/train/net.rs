//! The attribute network: a small residual CNN sized for training on a CPU, with a shared backbone
//! and three heads (fine age bins, gender, race). Its input and outputs are those of
//! [`crate::model::spec`].

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use crate::model::{FINE_AGE_BINS, GENDER_LABELS, RACE_LABELS};

/// Convolution + batch norm (+ ReLU when used through [`ConvBn::forward_relu`]).
#[derive(Module, Debug)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(device: &Device, c_in: usize, c_out: usize, kernel: usize, stride: usize) -> Self {
        let pad = kernel / 2;
        Self {
            conv: Conv2dConfig::new([c_in, c_out], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(false)
                .with_initializer(Initializer::KaimingNormal {
                    gain: std::f64::consts::SQRT_2,
                    fan_out_only: false,
                })
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }

    fn forward_relu(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.forward(x))
    }
}

/// A ResNet basic block: two 3×3 convolutions and a shortcut (1×1 projection when the shape changes).
#[derive(Module, Debug)]
pub struct Block {
    first: ConvBn,
    second: ConvBn,
    shortcut: Option<ConvBn>,
}

impl Block {
    fn new(device: &Device, c_in: usize, c_out: usize, stride: usize) -> Self {
        Self {
            first: ConvBn::new(device, c_in, c_out, 3, stride),
            second: ConvBn::new(device, c_out, c_out, 3, 1),
            shortcut: (stride != 1 || c_in != c_out)
                .then(|| ConvBn::new(device, c_in, c_out, 1, stride)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let skip = match &self.shortcut {
            Some(projection) => projection.forward(x.clone()),
            None => x.clone(),
        };
        let y = self.second.forward(self.first.forward_relu(x));
        relu(y + skip)
    }
}

/// Widths of the network: stem, then the blocks of each stage (the first stage keeps the stem's
/// resolution, each later one halves it in its first block).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetShape {
    pub stem: [usize; 2],
    pub stages: Vec<usize>,
    /// Basic blocks per stage (one where missing: runs saved before this field read as before).
    #[serde(default)]
    pub blocks_per_stage: Vec<usize>,
    pub dropout_permille: u32,
}

impl Default for NetShape {
    fn default() -> Self {
        Self {
            stem: [32, 48],
            stages: vec![48, 96, 192, 320],
            blocks_per_stage: Vec::new(),
            dropout_permille: 200,
        }
    }
}

impl NetShape {
    /// A narrow network for smoke tests.
    pub fn tiny() -> Self {
        Self {
            stem: [8, 8],
            stages: vec![8, 16],
            blocks_per_stage: Vec::new(),
            dropout_permille: 0,
        }
    }

    /// The default widths with a second block in the two coarsest stages: more depth where
    /// the feature maps are small (10×10 and 5×5 at 80 px): about 1.5× the default's operations at
    /// the same input size (348 against 236 M multiply-adds at 80 px; 282 M at 72 px).
    pub fn deep() -> Self {
        Self {
            blocks_per_stage: vec![1, 1, 2, 2],
            ..Self::default()
        }
    }

    fn blocks_in(&self, stage: usize) -> usize {
        self.blocks_per_stage
            .get(stage)
            .copied()
            .unwrap_or(1)
            .max(1)
    }
}

#[derive(Module, Debug)]
pub struct FaceAttrNet {
    stem_a: ConvBn,
    stem_b: ConvBn,
    blocks: Vec<Block>,
    pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    age: Linear,
    gender: Linear,
    race: Linear,
}

impl FaceAttrNet {
    pub fn new(device: &Device, shape: &NetShape) -> Self {
        let mut blocks = Vec::new();
        let mut c_in = shape.stem[1];
        for (i, &c_out) in shape.stages.iter().enumerate() {
            for k in 0..shape.blocks_in(i) {
                let stride = if i == 0 || k > 0 { 1 } else { 2 };
                blocks.push(Block::new(device, c_in, c_out, stride));
                c_in = c_out;
            }
        }
        let head = |n: usize| LinearConfig::new(c_in, n).init(device);
        Self {
            // 64 px in: the stem keeps 64, then halves to 32.
            stem_a: ConvBn::new(device, 3, shape.stem[0], 3, 1),
            stem_b: ConvBn::new(device, shape.stem[0], shape.stem[1], 3, 2),
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(f64::from(shape.dropout_permille) / 1000.0).init(),
            age: head(FINE_AGE_BINS),
            gender: head(GENDER_LABELS.len()),
            race: head(RACE_LABELS.len()),
        }
    }

    /// Sets how far one training batch moves every batch norm's running statistics (1/k at the
    /// k-th batch makes them the plain mean over batches: see [`super::recalibrate_batch_norm`]).
    pub fn set_batch_norm_momentum(&mut self, momentum: f64) {
        let mut layers = vec![&mut self.stem_a, &mut self.stem_b];
        for block in &mut self.blocks {
            layers.push(&mut block.first);
            layers.push(&mut block.second);
            if let Some(projection) = &mut block.shortcut {
                layers.push(projection);
            }
        }
        for layer in layers {
            layer.bn.momentum = momentum;
        }
    }

    /// `crops` is `[batch, 3, H, W]`, normalised; returns the logits of age bins, gender, race.
    pub fn forward(&self, crops: Tensor<4>) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
        let mut x = self.stem_b.forward_relu(self.stem_a.forward_relu(crops));
        for block in &self.blocks {
            x = block.forward(x);
        }
        let features: Tensor<2> = self.pool.forward(x).flatten(1, 3);
        let features = self.dropout.forward(features);
        (
            self.age.forward(features.clone()),
            self.gender.forward(features.clone()),
            self.race.forward(features),
        )
    }
}
