//! Constant folding of the static computations exporters leave in a graph: TorchScript's chain
//! that turns `F.pad`'s list into ONNX `pads` (ConstantOfShape, Concat, Reshape, Slice with a
//! negative step, Transpose, Cast), its `x.view(x.size(0), -1)` (Shape, Gather, Unsqueeze, Concat),
//! and the Constant / Transpose / Cast plumbing of the dynamo exporter. Every operator here is
//! evaluated when all its inputs are constants; [`FOLDABLE`] lists them. `Shape` itself, whose
//! input is a computed tensor of known shape, is folded by the translator.

use super::{Attrs, Const};
use crate::onnx::{AttributeValue, Result, TensorData};

/// Operators evaluated at import time when every input is a constant.
pub(super) const FOLDABLE: &[&str] = &[
    "Gather",
    "Concat",
    "Cast",
    "Unsqueeze",
    "Squeeze",
    "Slice",
    "Transpose",
    "Reshape",
    "ConstantOfShape",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
];

/// Most values a folded constant may hold (ConstantOfShape and broadcasting can grow).
const MAX_FOLDED: usize = 1 << 24;
/// Most values all the folded constants of a graph may hold together.
pub(super) const MAX_FOLDED_TOTAL: usize = 1 << 25;

/// ONNX `TensorProto.DataType` codes `Cast` may convert to, by family.
const CAST_FLOAT: [i64; 4] = [1, 10, 11, 16];
const CAST_INT: [i64; 8] = [2, 3, 4, 5, 6, 7, 12, 13];
const CAST_BOOL: i64 = 9;

fn numel(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// `axis` (negative counts from the end) as an index below `rank`.
fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = i64::try_from(rank).ok()?;
    let a = if axis < 0 { axis + r } else { axis };
    usize::try_from(a).ok().filter(|&a| a < rank)
}

/// The constant whose values are `c`'s at the flat indices `idx`, with dims `dims`.
fn take(c: &Const, idx: &[usize], dims: Vec<usize>) -> Const {
    let data = match &c.data {
        TensorData::Float(v) => TensorData::Float(idx.iter().map(|&i| v[i]).collect()),
        TensorData::Int(v) => TensorData::Int(idx.iter().map(|&i| v[i]).collect()),
        TensorData::None => TensorData::None,
    };
    Const { dims, data }
}

/// Row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Flat source indices of the selection that keeps, on each axis, the listed indices (in order).
fn select(dims: &[usize], per_axis: &[Vec<usize>]) -> Vec<usize> {
    let st = strides(dims);
    let mut out = vec![0usize];
    for (keep, &s) in per_axis.iter().zip(&st) {
        out = out
            .iter()
            .flat_map(|&base| keep.iter().map(move |&k| base + k * s))
            .collect();
    }
    out
}

impl Const {
    /// Checks that the data holds as many values as the dims say (folding relies on it).
    fn well_formed(&self) -> bool {
        let n = match &self.data {
            TensorData::Float(v) => v.len(),
            TensorData::Int(v) => v.len(),
            TensorData::None => return false,
        };
        numel(&self.dims) == Some(n)
    }

    fn to_floats(&self) -> Vec<f64> {
        match &self.data {
            TensorData::Float(v) => v.clone(),
            TensorData::Int(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::None => Vec::new(),
        }
    }
}

/// Evaluates `op` on constant inputs (`None` for an omitted optional input).
pub(super) fn fold(op: &str, a: &Attrs<'_>, inputs: &[Option<Const>]) -> Result<Const> {
    for (i, c) in inputs.iter().enumerate() {
        if let Some(c) = c
            && !c.well_formed()
        {
            return Err(a.unsupported(format!(
                "constant input {i} of dims {:?} has an unsupported element type or the wrong \
                 number of values",
                c.dims
            )));
        }
    }
    let input = |i: usize| -> Result<&Const> {
        inputs
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| a.unsupported(format!("input {i} is missing")))
    };
    let ints = |i: usize, what: &str| -> Result<Vec<i64>> {
        match inputs.get(i).and_then(Option::as_ref) {
            Some(c) => c
                .ints()
                .map(<[i64]>::to_vec)
                .ok_or_else(|| a.unsupported(format!("{what} is not an integer tensor"))),
            None => Err(a.unsupported(format!("{what} (input {i}) is missing"))),
        }
    };
    // Axes given as an attribute (older opsets) or as an optional input (newer ones).
    let axes = |i: usize| -> Result<Option<Vec<i64>>> {
        match a.ints("axes")? {
            Some(v) => Ok(Some(v)),
            None if inputs.get(i).is_some_and(Option::is_some) => Ok(Some(ints(i, "axes")?)),
            None => Ok(None),
        }
    };
    let bad = |what: String| a.unsupported(what);
    let out = match op {
        "Gather" => {
            let data = input(0)?;
            let idx_c = input(1)?;
            let idx = ints(1, "indices")?;
            let r = data.dims.len();
            let axis = norm_axis(a.int("axis", 0)?, r)
                .ok_or_else(|| bad(format!("axis out of range for rank {r}")))?;
            let d = data.dims[axis];
            let outer = numel(&data.dims[..axis]).unwrap_or(0);
            let inner = numel(&data.dims[axis + 1..]).unwrap_or(0);
            let mut picks = Vec::with_capacity(idx.len());
            for &k in &idx {
                let k = if k < 0 { k + d as i64 } else { k };
                match usize::try_from(k).ok().filter(|&k| k < d) {
                    Some(k) => picks.push(k),
                    None => return Err(bad(format!("index {k} out of range 0..{d}"))),
                }
            }
            let mut flat = Vec::new();
            for o in 0..outer {
                for &k in &picks {
                    flat.extend((0..inner).map(|j| (o * d + k) * inner + j));
                }
            }
            let dims = [&data.dims[..axis], &idx_c.dims[..], &data.dims[axis + 1..]].concat();
            take(data, &flat, dims)
        }
        "Concat" => {
            let parts: Vec<&Const> = inputs.iter().flatten().collect();
            let first = parts.first().ok_or_else(|| bad("no input".into()))?;
            let r = first.dims.len();
            let axis = norm_axis(a.int("axis", 0)?, r)
                .ok_or_else(|| bad(format!("axis out of range for rank {r}")))?;
            let same_kind =
                |c: &Const| std::mem::discriminant(&c.data) == std::mem::discriminant(&first.data);
            let fits = |c: &Const| {
                c.dims.len() == r
                    && c.dims
                        .iter()
                        .zip(&first.dims)
                        .enumerate()
                        .all(|(i, (x, y))| i == axis || x == y)
            };
            if !parts.iter().all(|c| same_kind(c) && fits(c)) {
                return Err(bad("inputs of different types or shapes".into()));
            }
            let outer = numel(&first.dims[..axis]).unwrap_or(0);
            let inner = numel(&first.dims[axis + 1..]).unwrap_or(0);
            let mut dims = first.dims.clone();
            dims[axis] = parts.iter().map(|c| c.dims[axis]).sum();
            let mut data = match &first.data {
                TensorData::Float(_) => TensorData::Float(Vec::new()),
                _ => TensorData::Int(Vec::new()),
            };
            for o in 0..outer {
                for c in &parts {
                    let block = c.dims[axis] * inner;
                    let range = o * block..(o + 1) * block;
                    match (&mut data, &c.data) {
                        (TensorData::Float(out), TensorData::Float(v)) => {
                            out.extend_from_slice(&v[range])
                        }
                        (TensorData::Int(out), TensorData::Int(v)) => {
                            out.extend_from_slice(&v[range])
                        }
                        _ => {}
                    }
                }
            }
            Const { dims, data }
        }
        "Cast" => {
            let c = input(0)?;
            let to = a.int("to", 0)?;
            let data = if CAST_FLOAT.contains(&to) {
                let f32_round = to == 1;
                TensorData::Float(
                    c.to_floats()
                        .into_iter()
                        .map(|v| if f32_round { f64::from(v as f32) } else { v })
                        .collect(),
                )
            } else if CAST_INT.contains(&to) || to == CAST_BOOL {
                let mut out = Vec::with_capacity(c.dims.len());
                match &c.data {
                    TensorData::Int(v) => out.extend_from_slice(v),
                    TensorData::Float(v) => {
                        for &x in v {
                            // ONNX casts truncate towards zero.
                            if !(x.is_finite() && x.abs() < 9.2e18) {
                                return Err(bad(format!("cannot cast {x} to an integer")));
                            }
                            out.push(x.trunc() as i64);
                        }
                    }
                    TensorData::None => {}
                }
                if to == CAST_BOOL {
                    out.iter_mut().for_each(|x| *x = i64::from(*x != 0));
                }
                TensorData::Int(out)
            } else {
                return Err(bad(format!("cast to element type {to} is not supported")));
            };
            Const {
                dims: c.dims.clone(),
                data,
            }
        }
        "Unsqueeze" => {
            let c = input(0)?;
            let ax = axes(1)?.ok_or_else(|| bad("no axes".into()))?;
            let rank = c.dims.len() + ax.len();
            let mut at: Vec<usize> = ax
                .iter()
                .map(|&x| norm_axis(x, rank))
                .collect::<Option<_>>()
                .ok_or_else(|| bad(format!("axes {ax:?} out of range for rank {rank}")))?;
            at.sort_unstable();
            at.dedup();
            if at.len() != ax.len() {
                return Err(bad(format!("axes {ax:?} repeat an axis")));
            }
            let mut src = c.dims.iter();
            let dims = (0..rank)
                .map(|i| {
                    if at.contains(&i) {
                        1
                    } else {
                        src.next().copied().unwrap_or(1)
                    }
                })
                .collect();
            Const {
                dims,
                data: c.data.clone(),
            }
        }
        "Squeeze" => {
            let c = input(0)?;
            let r = c.dims.len();
            let drop: Vec<usize> = match axes(1)? {
                None => (0..r).filter(|&i| c.dims[i] == 1).collect(),
                Some(ax) => ax
                    .iter()
                    .map(|&x| norm_axis(x, r).filter(|&i| c.dims[i] == 1))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        bad(format!(
                            "axes {ax:?} are not axes of size 1 of {:?}",
                            c.dims
                        ))
                    })?,
            };
            let dims = (0..r)
                .filter(|i| !drop.contains(i))
                .map(|i| c.dims[i])
                .collect();
            Const {
                dims,
                data: c.data.clone(),
            }
        }
        "Slice" => {
            let c = input(0)?;
            let r = c.dims.len();
            let (starts, ends, ax, steps) = match a.ints("starts")? {
                // Opset < 10: attributes.
                Some(starts) => {
                    let ends = a.ints("ends")?.ok_or_else(|| bad("no ends".into()))?;
                    (starts, ends, a.ints("axes")?, None)
                }
                None => {
                    let opt = |i: usize, what: &str| -> Result<Option<Vec<i64>>> {
                        match inputs.get(i).and_then(Option::as_ref) {
                            Some(_) => Ok(Some(ints(i, what)?)),
                            None => Ok(None),
                        }
                    };
                    (
                        ints(1, "starts")?,
                        ints(2, "ends")?,
                        opt(3, "axes")?,
                        opt(4, "steps")?,
                    )
                }
            };
            let ax = ax.unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
            if ends.len() != starts.len() || ax.len() != starts.len() || steps.len() != ax.len() {
                return Err(bad(
                    "starts, ends, axes and steps of different lengths".into()
                ));
            }
            let mut per_axis: Vec<Vec<usize>> = c.dims.iter().map(|&d| (0..d).collect()).collect();
            for (((&s, &e), &x), &step) in starts.iter().zip(&ends).zip(&ax).zip(&steps) {
                let axis = norm_axis(x, r)
                    .ok_or_else(|| bad(format!("axis {x} out of range for rank {r}")))?;
                per_axis[axis] =
                    slice_indices(c.dims[axis], s, e, step).ok_or_else(|| bad("step 0".into()))?;
            }
            let dims = per_axis.iter().map(Vec::len).collect();
            take(c, &select(&c.dims, &per_axis), dims)
        }
        "Transpose" => {
            let c = input(0)?;
            let r = c.dims.len();
            let perm: Vec<usize> = match a.ints("perm")? {
                None => (0..r).rev().collect(),
                Some(p) => p
                    .iter()
                    .map(|&x| norm_axis(x, r))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad(format!("perm {p:?} is not a permutation of 0..{r}")))?,
            };
            let mut seen = perm.clone();
            seen.sort_unstable();
            if seen != (0..r).collect::<Vec<_>>() {
                return Err(bad(format!("perm {perm:?} is not a permutation of 0..{r}")));
            }
            let st = strides(&c.dims);
            let dims: Vec<usize> = perm.iter().map(|&p| c.dims[p]).collect();
            let per_axis: Vec<Vec<usize>> = dims.iter().map(|&d| (0..d).collect()).collect();
            // Output position (i0, i1, ...) reads source Σ i_k · stride[perm[k]].
            let mut flat = vec![0usize];
            for (k, keep) in per_axis.iter().enumerate() {
                let s = st[perm[k]];
                flat = flat
                    .iter()
                    .flat_map(|&base| keep.iter().map(move |&i| base + i * s))
                    .collect();
            }
            take(c, &flat, dims)
        }
        "Reshape" => {
            let c = input(0)?;
            let target = ints(1, "shape")?;
            let allow_zero = a.int("allowzero", 0)? != 0;
            let total = numel(&c.dims).unwrap_or(0);
            let mut dims = Vec::with_capacity(target.len());
            let mut infer = None;
            for (i, &d) in target.iter().enumerate() {
                dims.push(match d {
                    0 if !allow_zero => *c
                        .dims
                        .get(i)
                        .ok_or_else(|| bad(format!("shape {target:?}: 0 beyond the rank")))?,
                    -1 if infer.is_none() => {
                        infer = Some(i);
                        1
                    }
                    d if d >= 0 => {
                        usize::try_from(d).map_err(|_| bad(format!("shape {target:?}")))?
                    }
                    _ => return Err(bad(format!("shape {target:?}"))),
                });
            }
            if let Some(i) = infer {
                let known = numel(&dims).unwrap_or(0);
                dims[i] = total.checked_div(known).unwrap_or(0);
            }
            if numel(&dims) != Some(total) {
                return Err(bad(format!("cannot reshape {total} values to {target:?}")));
            }
            Const {
                dims,
                data: c.data.clone(),
            }
        }
        "ConstantOfShape" => {
            let shape = ints(0, "shape")?;
            let dims: Vec<usize> = shape
                .iter()
                .map(|&d| usize::try_from(d).ok())
                .collect::<Option<_>>()
                .ok_or_else(|| bad(format!("shape {shape:?}")))?;
            let n = numel(&dims)
                .filter(|&n| n <= MAX_FOLDED)
                .ok_or_else(|| bad(format!("shape {shape:?}: more than {MAX_FOLDED} values")))?;
            let data = match a.get("value") {
                None => TensorData::Float(vec![0.0; n]),
                Some(AttributeValue::Tensor(t)) => match &t.data {
                    TensorData::Float(v) if v.len() == 1 => TensorData::Float(vec![v[0]; n]),
                    TensorData::Int(v) if v.len() == 1 => TensorData::Int(vec![v[0]; n]),
                    _ => return Err(bad("value is not a one-element number tensor".into())),
                },
                Some(_) => return Err(bad("value is not a tensor".into())),
            };
            Const { dims, data }
        }
        "Neg" => {
            let c = input(0)?;
            let data = match &c.data {
                TensorData::Float(v) => TensorData::Float(v.iter().map(|x| -x).collect()),
                TensorData::Int(v) => TensorData::Int(v.iter().map(|x| x.wrapping_neg()).collect()),
                TensorData::None => TensorData::None,
            };
            Const {
                dims: c.dims.clone(),
                data,
            }
        }
        "Add" | "Sub" | "Mul" | "Div" => arithmetic(op, input(0)?, input(1)?).map_err(bad)?,
        other => return Err(bad(format!("{other} is not folded"))),
    };
    if numel(&out.dims).is_none_or(|n| n > MAX_FOLDED) {
        return Err(bad(format!(
            "folded constant of dims {:?} is too large",
            out.dims
        )));
    }
    Ok(out)
}

/// Indices an ONNX `Slice` keeps on an axis of size `d`, `None` for step 0.
fn slice_indices(d: usize, start: i64, end: i64, step: i64) -> Option<Vec<usize>> {
    let d = d as i128;
    let (start, end, step) = (i128::from(start), i128::from(end), i128::from(step));
    let wrap = |x: i128| if x < 0 { x + d } else { x };
    let mut out = Vec::new();
    if step > 0 {
        let (mut i, end) = (wrap(start).clamp(0, d), wrap(end).clamp(0, d));
        while i < end {
            out.push(i as usize);
            i += step;
        }
    } else if step < 0 {
        let (mut i, end) = (wrap(start).clamp(0, d - 1), wrap(end).clamp(-1, d - 1));
        while i > end {
            out.push(i as usize);
            i += step;
        }
    } else {
        return None;
    }
    Some(out)
}

/// Element-wise `a op b` with NumPy broadcasting; integers stay integers (division truncates).
fn arithmetic(op: &str, a: &Const, b: &Const) -> std::result::Result<Const, String> {
    let r = a.dims.len().max(b.dims.len());
    let pad = |d: &[usize]| [vec![1; r - d.len()], d.to_vec()].concat();
    let (da, db) = (pad(&a.dims), pad(&b.dims));
    let mut dims = Vec::with_capacity(r);
    for (&x, &y) in da.iter().zip(&db) {
        dims.push(match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(format!(
                    "dims {:?} and {:?} do not broadcast",
                    a.dims, b.dims
                ));
            }
        });
    }
    let (sa, sb) = (strides(&da), strides(&db));
    let n = numel(&dims)
        .filter(|&n| n <= MAX_FOLDED)
        .ok_or("result too large")?;
    let st = strides(&dims);
    let index = |k: usize| -> (usize, usize) {
        let (mut ia, mut ib) = (0, 0);
        for axis in 0..r {
            let i = (k / st[axis]) % dims[axis].max(1);
            if da[axis] != 1 {
                ia += i * sa[axis];
            }
            if db[axis] != 1 {
                ib += i * sb[axis];
            }
        }
        (ia, ib)
    };
    let data = match (&a.data, &b.data) {
        (TensorData::Int(x), TensorData::Int(y)) => {
            let mut out = Vec::with_capacity(n);
            for k in 0..n {
                let (ia, ib) = index(k);
                let (p, q) = (x[ia], y[ib]);
                out.push(match op {
                    "Add" => p.wrapping_add(q),
                    "Sub" => p.wrapping_sub(q),
                    "Mul" => p.wrapping_mul(q),
                    _ => p.checked_div(q).ok_or("integer division by zero")?,
                });
            }
            TensorData::Int(out)
        }
        _ => {
            let (x, y) = (a.to_floats(), b.to_floats());
            let mut out = Vec::with_capacity(n);
            for k in 0..n {
                let (ia, ib) = index(k);
                let (p, q) = (x[ia], y[ib]);
                out.push(match op {
                    "Add" => p + q,
                    "Sub" => p - q,
                    "Mul" => p * q,
                    _ => p / q,
                });
            }
            TensorData::Float(out)
        }
    };
    Ok(Const { dims, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_follow_the_onnx_clamping_rules() {
        assert_eq!(slice_indices(4, 0, 2, 1), Some(vec![0, 1]));
        assert_eq!(
            slice_indices(4, -1, i64::MIN + 1, -1),
            Some(vec![3, 2, 1, 0])
        );
        assert_eq!(slice_indices(4, 1, 100, 2), Some(vec![1, 3]));
        assert_eq!(slice_indices(4, 5, 0, -1), Some(vec![3, 2, 1]));
        assert_eq!(slice_indices(4, 0, 4, 0), None);
    }

    #[test]
    fn selections_and_broadcasting() {
        // 2x3, rows reversed, columns 0 and 2.
        assert_eq!(select(&[2, 3], &[vec![1, 0], vec![0, 2]]), [3, 5, 0, 2]);
        let a = Const {
            dims: vec![2, 1],
            data: TensorData::Int(vec![10, 20]),
        };
        let b = Const {
            dims: vec![3],
            data: TensorData::Int(vec![1, 2, 3]),
        };
        let s = arithmetic("Sub", &a, &b).expect("broadcasts");
        assert_eq!(s.dims, [2, 3]);
        assert_eq!(s.data, TensorData::Int(vec![9, 8, 7, 19, 18, 17]));
    }
}
