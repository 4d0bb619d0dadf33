//! Static shape arithmetic for the operators the engine differentiates: broadcasting, convolution and pooling
//! output sizes, axis normalisation.
//!
//! Pure functions over dimension lists; they return errors for impossible shapes and never panic.

use super::error::TrainError;

/// Numpy-style broadcast of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, TrainError> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        *o = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(TrainError::shape(format!("cannot broadcast {a:?} with {b:?}")));
        };
    }
    Ok(out)
}

/// Normalises a possibly negative axis against a rank (`allow_end` admits `rank` itself, as Unsqueeze does).
pub fn axis(axis: i64, rank: usize, allow_end: bool) -> Result<usize, TrainError> {
    let r = rank as i64 + allow_end as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(TrainError::shape(format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// Output size of a sliding window along one axis (floor mode).
pub fn window_out(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    pad_end: usize,
) -> Result<usize, TrainError> {
    let eff = dilation * (kernel.max(1) - 1) + 1;
    let padded = input + pad_begin + pad_end;
    if stride == 0 || padded < eff {
        return Err(TrainError::shape(format!(
            "window of {kernel} (dilation {dilation}, stride {stride}) does not fit input {input} padded by {pad_begin}+{pad_end}"
        )));
    }
    Ok((padded - eff) / stride + 1)
}

/// Explicit (begin, end) pads for ONNX `auto_pad` modes.
pub fn auto_pads(
    mode: &str,
    input: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
) -> Result<Vec<(usize, usize)>, TrainError> {
    let mut pads = Vec::with_capacity(input.len());
    for i in 0..input.len() {
        let (x, k, s, d) = (input[i], kernel[i], strides[i], dilations[i]);
        match mode {
            "VALID" => pads.push((0, 0)),
            "SAME_UPPER" | "SAME_LOWER" => {
                let out = x.div_ceil(s.max(1));
                let eff = d * (k.max(1) - 1) + 1;
                let total = ((out.saturating_sub(1)) * s + eff).saturating_sub(x);
                let small = total / 2;
                let big = total - small;
                pads.push(if mode == "SAME_UPPER" { (small, big) } else { (big, small) });
            }
            other => return Err(TrainError::invalid(format!("unknown auto_pad {other}"))),
        }
    }
    Ok(pads)
}

/// Strides (in elements) of a row-major shape.
pub fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy_rules() {
        assert_eq!(broadcast(&[2, 3], &[3]).unwrap(), vec![2, 3]);
        assert_eq!(broadcast(&[2, 1, 4], &[3, 1]).unwrap(), vec![2, 3, 4]);
        assert!(broadcast(&[2, 3], &[4]).is_err());
    }

    #[test]
    fn same_upper_padding_keeps_the_size_at_stride_one() {
        let pads = auto_pads("SAME_UPPER", &[7], &[4], &[1], &[1]).unwrap();
        assert_eq!(pads, vec![(1, 2)]);
        assert_eq!(window_out(7, 4, 1, 1, 1, 2).unwrap(), 7);
    }

    #[test]
    fn axes_are_normalised_and_checked() {
        assert_eq!(axis(-1, 3, false).unwrap(), 2);
        assert_eq!(axis(3, 3, true).unwrap(), 3);
        assert!(axis(3, 3, false).is_err());
        assert!(axis(-4, 3, false).is_err());
    }
}
