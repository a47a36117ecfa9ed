//! From the model IR (ONNX import, folded and converted) to the compiler's layer chain.

use std::collections::HashMap;
use std::sync::Arc;

use cipherinfer_ckks::{Parameters, SecurityLevel};
use cipherinfer_model::convert::{Conversion, ConversionReport, ConvertOptions, convert};
use cipherinfer_model::ir::{Model, Op};
use cipherinfer_model::plain::Tensor;

use cipherinfer_model::package::ModelCard;

use crate::artifact::{Artifact, ArtifactSource};
use crate::error::{CompileError, Result};
use crate::exec::HeModel;
use crate::network::{Layer, Network};
use crate::plan::{CompileOptions, compile_with, output_divisor_for};

/// How a network is compiled for serving.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServingOptions {
    /// How ReLU-like activations and MaxPool are approximated.
    pub convert: ConvertOptions,
    /// The security level of the parameters chosen.
    pub security: SecurityLevel,
}

impl Default for ServingOptions {
    fn default() -> Self {
        Self {
            convert: ConvertOptions::default(),
            security: SecurityLevel::Bits128,
        }
    }
}

/// A network compiled for serving.
#[derive(Debug)]
pub struct Compiled {
    /// The HE-friendly network that runs encrypted (after conversion).
    pub model: Model,
    /// Its layer chain.
    pub network: Network,
    /// The encrypted executor.
    pub he: HeModel,
    /// What the conversion did, when the network was not HE-friendly as given.
    pub conversion: Option<ConversionReport>,
}

impl Compiled {
    /// The artifact that rebuilds this executor (see [`crate::artifact`]).
    pub fn artifact(&self, card: ModelCard, onnx_sha256: &str) -> Artifact {
        Artifact {
            card,
            source: ArtifactSource {
                onnx_sha256: onnx_sha256.to_string(),
                compiler_version: env!("CARGO_PKG_VERSION").to_string(),
            },
            model: self.model.clone(),
            parameters: self.he.parameters().literal().clone(),
            output_divisor: self.he.plan().output_multiplier,
            conversion: self.conversion.clone(),
            max_key_bytes: self.he.key_budget(),
        }
    }
}

/// Compiles any supported image classifier for serving: a network with ReLU-like activations or
/// MaxPool is first converted to polynomials fitted over the input ranges seen on `calibration`
/// (with `options.convert`); then [`compile_model_auto`] picks the smallest parameters at
/// `options.security`.
pub fn compile_for_serving(
    ir: &Model,
    calibration: &[Tensor],
    options: &ServingOptions,
) -> Result<Compiled> {
    if ir.is_he_friendly() {
        return compile_he_friendly(ir.clone(), None, calibration, options);
    }
    if calibration.is_empty() {
        let kinds: std::collections::BTreeSet<&str> = ir
            .nodes()
            .iter()
            .filter(|n| !n.op.is_he_friendly())
            .map(|n| n.op.kind())
            .collect();
        return Err(CompileError::NeedsCalibration(
            kinds.into_iter().collect::<Vec<_>>().join(", "),
        ));
    }
    let c = convert(ir, calibration, &options.convert)?;
    compile_converted(c, calibration, options)
}

/// [`compile_for_serving`] of a network already converted (by `convert` with
/// `options.convert`).
pub fn compile_converted(
    conversion: Conversion,
    calibration: &[Tensor],
    options: &ServingOptions,
) -> Result<Compiled> {
    compile_he_friendly(
        conversion.model,
        Some(conversion.report),
        calibration,
        options,
    )
}

fn compile_he_friendly(
    model: Model,
    conversion: Option<ConversionReport>,
    calibration: &[Tensor],
    options: &ServingOptions,
) -> Result<Compiled> {
    let inputs: Vec<Vec<f64>> = calibration
        .iter()
        .take(options.convert.calibration_images.max(1))
        .map(|t| t.data().to_vec())
        .collect();
    let (network, he) = compile_model_auto(&model, &inputs, options.security)?;
    Ok(Compiled {
        model,
        network,
        he,
        conversion,
    })
}

/// Compiles an HE-friendly IR model choosing the parameters: for each ring degree from 2^13 up,
/// compiles the plan for that slot count and takes the smallest parameter set at `security` that
/// offers its depth ([`crate::select::select_literal`]).
pub fn compile_model_auto(
    model: &Model,
    calibration: &[Vec<f64>],
    security: SecurityLevel,
) -> Result<(Network, HeModel)> {
    let net = Network::from_ir(model)?;
    let mut last_err = None;
    for log_n in 13u32..=15 {
        let slots = 1usize << (log_n - 1);
        let depth = match crate::plan::compile(&net, slots) {
            Ok(plan) => plan.depth(),
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        match crate::select::select_literal(depth, slots, security) {
            Ok(lit) if lit.log_n == log_n => {
                return compile_model(model, lit.build()?, calibration);
            }
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| CompileError::DoesNotFit("no parameter set fits".into())))
}

/// Compiles an HE-friendly IR model for `params`: lowers it, sizes the output divisor from the
/// largest output seen on `calibration` inputs (so results fit the base prime), compiles the
/// plan and encodes it.
pub fn compile_model(
    model: &Model,
    params: Arc<Parameters>,
    calibration: &[Vec<f64>],
) -> Result<(Network, HeModel)> {
    compile_model_batch(model, params, calibration, 1)
}

/// [`compile_model`] in batch mode: the plan is compiled for `slots / batch` slots and runs
/// `batch` images per ciphertext set (a power of two; 1 is latency mode).
pub fn compile_model_batch(
    model: &Model,
    params: Arc<Parameters>,
    calibration: &[Vec<f64>],
    batch: usize,
) -> Result<(Network, HeModel)> {
    if batch == 0 || !batch.is_power_of_two() || batch > params.slots() {
        return Err(CompileError::DoesNotFit(format!(
            "batch size {batch} must be a power of two no larger than {} slots",
            params.slots()
        )));
    }
    let net = Network::from_ir(model)?;
    let mut max_abs: f64 = 1.0;
    for x in calibration {
        max_abs = net.forward(x)?.iter().fold(max_abs, |m, v| m.max(v.abs()));
    }
    let options = CompileOptions {
        output_divisor: output_divisor_for(max_abs, &params),
    };
    let plan = compile_with(&net, params.slots() / batch, options)?;
    let model = HeModel::new(plan, params)?;
    Ok((net, model))
}

fn unsupported(node: &str, why: impl Into<String>) -> CompileError {
    CompileError::Shape {
        layer: 0,
        detail: format!("node {node}: {}", why.into()),
    }
}

/// One element of the main path of an IR graph, in order.
enum PathItem {
    /// A single-input node.
    Node(usize),
    /// A residual `Add` (node index): the main input plus `kept` through the linear `branch`.
    Add {
        node: usize,
        kept: String,
        branch: Vec<usize>,
    },
}

/// The graph by name, for the walks of [`Network::from_ir`].
struct Graph<'a> {
    model: &'a Model,
    index: HashMap<&'a str, usize>,
}

impl<'a> Graph<'a> {
    fn new(model: &'a Model) -> Self {
        let index = model
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        Self { model, index }
    }

    /// Values from which `value` is computed (itself included), as node-indexed flags plus
    /// whether the model input is among them.
    fn ancestors(&self, value: &str) -> (Vec<bool>, bool) {
        let mut seen = vec![false; self.model.nodes().len()];
        let mut input = false;
        let mut stack = vec![value];
        while let Some(v) = stack.pop() {
            match self.index.get(v) {
                Some(&i) if !seen[i] => {
                    seen[i] = true;
                    stack.extend(self.model.nodes()[i].inputs.iter().map(String::as_str));
                }
                Some(_) => {}
                None => input |= v == self.model.input_name(),
            }
        }
        (seen, input)
    }

    /// The shortcut of a residual `Add` read as `main + side`: walking back from `side` through
    /// single-input linear nodes to a value that `main` is computed from. Returns the kept value
    /// and the branch's nodes in order, or `None` when `side` is not such a shortcut.
    fn shortcut(&self, side: &str, main: &str) -> Option<(String, Vec<usize>)> {
        let (before_main, input_before_main) = self.ancestors(main);
        let mut branch = Vec::new();
        let mut v = side;
        loop {
            let Some(&i) = self.index.get(v) else {
                // The model input: a shortcut from it only if main is computed from it.
                return input_before_main.then(|| {
                    branch.reverse();
                    (v.to_string(), branch)
                });
            };
            if before_main[i] {
                break;
            }
            let node = &self.model.nodes()[i];
            if node.inputs.len() != 1
                || !(node.op.is_linear() || matches!(node.op, Op::Reshape { .. }))
            {
                return None;
            }
            branch.push(i);
            v = &node.inputs[0];
        }
        branch.reverse();
        Some((v.to_string(), branch))
    }
}

/// The layer of a single-input HE-friendly node.
fn layer_of(node: &cipherinfer_model::ir::Node) -> Result<Layer> {
    Ok(match &node.op {
        Op::Conv2d(c) => {
            let p = c.padding;
            Layer::Conv2d {
                in_c: c.in_channels,
                out_c: c.out_channels,
                kernel: (c.kernel[0], c.kernel[1]),
                stride: (c.stride[0], c.stride[1]),
                padding: (p.top, p.left, p.bottom, p.right),
                groups: c.groups,
                weight: c.weights.clone(),
                bias: c.bias.clone(),
            }
        }
        Op::AvgPool2d(p) => Layer::AvgPool2d {
            kernel: (p.kernel[0], p.kernel[1]),
            stride: (p.stride[0], p.stride[1]),
        },
        Op::Dense(d) => Layer::Dense {
            in_f: d.in_features,
            out_f: d.out_features,
            weight: d.weights.clone(),
            bias: d.bias.clone(),
        },
        Op::Square => Layer::Poly {
            coeffs: vec![0.0, 0.0, 1.0],
        },
        Op::Polynomial(p) => match p.interval {
            Some([a, b]) => Layer::IntervalPoly {
                coeffs: p.coeffs.clone(),
                interval: (a, b),
                chebyshev: p.chebyshev,
            },
            None => Layer::Poly {
                coeffs: p.coeffs.clone(),
            },
        },
        Op::Reshape { shape } => {
            if !shape.is_flat() {
                return Err(unsupported(
                    &node.name,
                    "only reshapes to a vector are supported",
                ));
            }
            Layer::Flatten
        }
        other => {
            return Err(unsupported(
                &node.name,
                format!(
                    "{} must be converted or folded before HE compilation",
                    other.kind()
                ),
            ));
        }
    })
}

impl Network {
    /// Lowers an HE-friendly IR model to layers. The graph is a main path from the input to the
    /// output whose only side branches are residual shortcuts: an `Add` of the main path and a
    /// value computed before it, directly (identity shortcut) or through linear layers (e.g. a
    /// strided 1x1 convolution). The kept value gets a [`Layer::Save`] and the `Add` becomes a
    /// [`Layer::AddSaved`]. ReLU and MaxPool must have been converted, BatchNorm folded.
    pub fn from_ir(model: &Model) -> Result<Self> {
        let nodes = model.nodes();
        let input = model.input_name();
        let graph = Graph::new(model);
        // Walk back from the output along the main path.
        let mut path = Vec::with_capacity(nodes.len());
        let mut v = model.output().to_string();
        while v != input {
            let i = *graph
                .index
                .get(v.as_str())
                .ok_or_else(|| unsupported(&v, "unknown value"))?;
            let node = &nodes[i];
            if matches!(node.op, Op::Add) {
                let (a, b) = (node.inputs[0].as_str(), node.inputs[1].as_str());
                let (kept, branch, main) = [(b, a), (a, b)]
                    .into_iter()
                    .filter_map(|(side, main)| {
                        graph
                            .shortcut(side, main)
                            .map(|(kept, branch)| (kept, branch, main))
                    })
                    .min_by_key(|(_, branch, _)| branch.len())
                    .ok_or_else(|| {
                        unsupported(
                            &node.name,
                            "neither input of this Add is a shortcut (linear layers from a \
                             value the other input is computed from); the HE compiler takes a \
                             main path with residual shortcuts only",
                        )
                    })?;
                path.push(PathItem::Add {
                    node: i,
                    kept,
                    branch,
                });
                v = main.to_string();
            } else {
                if node.inputs.len() != 1 {
                    return Err(unsupported(&node.name, "expected one input"));
                }
                path.push(PathItem::Node(i));
                v = node.inputs[0].clone();
            }
        }
        path.reverse();
        // Every node exactly once: on the path, as an Add, or in one shortcut branch.
        let mut uses = vec![0usize; nodes.len()];
        let mut kept_values = std::collections::HashSet::new();
        for item in &path {
            match item {
                PathItem::Node(i) => uses[*i] += 1,
                PathItem::Add {
                    node, kept, branch, ..
                } => {
                    uses[*node] += 1;
                    branch.iter().for_each(|&b| uses[b] += 1);
                    kept_values.insert(kept.clone());
                }
            }
        }
        if let Some(i) = uses.iter().position(|&u| u != 1) {
            return Err(unsupported(
                &nodes[i].name,
                "this node is not on the main path or a single residual shortcut; the HE \
                 compiler takes a main path with residual shortcuts only",
            ));
        }
        // Lay the path out, keeping the values shortcuts start from.
        let mut layers = Vec::with_capacity(nodes.len() + 2 * kept_values.len());
        let mut registers: HashMap<String, usize> = HashMap::new();
        let keep = |name: &str, layers: &mut Vec<Layer>, registers: &mut HashMap<String, usize>| {
            if kept_values.contains(name) {
                registers.insert(name.to_string(), registers.len());
                layers.push(Layer::Save);
            }
        };
        keep(input, &mut layers, &mut registers);
        for item in &path {
            let name = match item {
                PathItem::Node(i) => {
                    layers.push(layer_of(&nodes[*i])?);
                    &nodes[*i].name
                }
                PathItem::Add { node, kept, branch } => {
                    let register = *registers.get(kept).ok_or_else(|| {
                        unsupported(
                            &nodes[*node].name,
                            format!(
                                "the shortcut starts from {kept:?}, which is not on the main path"
                            ),
                        )
                    })?;
                    let branch = branch
                        .iter()
                        .map(|&b| layer_of(&nodes[b]))
                        .collect::<Result<Vec<_>>>()?;
                    layers.push(Layer::AddSaved { register, branch });
                    &nodes[*node].name
                }
            };
            keep(name, &mut layers, &mut registers);
        }
        let s = model.input_shape();
        let net = Network {
            input: (s.channels, s.height, s.width),
            layers,
        };
        net.shapes()?;
        Ok(net)
    }
}
