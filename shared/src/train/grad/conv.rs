//! Gradient of Conv (any number of spatial axes; pads, strides, dilations, groups including depthwise).
//!
//! - dX is a ConvTranspose of dY with the same kernel, strides, dilations, pads and group, with `output_padding`
//!   chosen so the result has X's exact size.
//! - dW is itself a grouped convolution: the batch becomes the channel axis (X as `[C/g, g·N, *S]`, dY as a
//!   `[M, N, *O]` kernel), strides and dilations swap roles, and the result is cropped to the kernel size and
//!   transposed to `[M, C/g, *K]`. Grouped convolutions cost no more than the forward pass this way.
//! - db sums dY over the batch and spatial axes.
//!
//! Only nodes are appended; nothing runs here.

use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::graph::{DNode, Op};
use super::super::proto::{attr_i, attr_ints};

fn ints(v: &[usize]) -> Vec<i64> {
    v.iter().map(|x| *x as i64).collect()
}

pub fn backward(e: &mut Emitter, n: &DNode, dy: &str, needs: &[bool]) -> Result<Vec<Option<String>>, TrainError> {
    let Op::Conv(c) = &n.op else {
        return Err(TrainError::invalid(format!("{} is not a convolution", n.op_type)));
    };
    let (xs, ys) = (&n.in_shapes[0], &n.out_shape);
    let sp = xs.len() - 2;
    let g = c.group;
    let (batch, channels) = (xs[0], xs[1]);
    let pads: Vec<i64> = c.pads.iter().map(|p| p.0 as i64).chain(c.pads.iter().map(|p| p.1 as i64)).collect();
    let mut out = vec![None; n.inputs.len()];
    if needs[0] {
        let mut output_padding = Vec::with_capacity(sp);
        for i in 0..sp {
            let reach = c.strides[i] * (ys[2 + i] - 1) + c.dilations[i] * (c.kernel[i] - 1) + 1;
            let covered = reach as i64 - c.pads[i].0 as i64 - c.pads[i].1 as i64;
            output_padding.push(xs[2 + i] as i64 - covered);
        }
        if output_padding.iter().zip(&c.strides).any(|(p, s)| *p < 0 || *p >= (*s as i64).max(1) && *p != 0) {
            return Err(TrainError::UnsupportedOp {
                op: format!("Conv gradient with output padding {output_padding:?}"),
                node: n.name.clone(),
            });
        }
        let dx = e.op(
            "ConvTranspose",
            &[dy, &n.inputs[1]],
            vec![
                attr_ints("kernel_shape", &ints(&c.kernel)),
                attr_ints("strides", &ints(&c.strides)),
                attr_ints("dilations", &ints(&c.dilations)),
                attr_ints("pads", &pads),
                attr_ints("output_padding", &output_padding),
                attr_i("group", g as i64),
            ],
        );
        out[0] = Some(dx);
    }
    if needs[1] {
        let cg = channels / g;
        let mut tail: Vec<usize> = (2..2 + sp).collect();
        // X as [C/g, g·N, *S].
        let xt = if g == 1 {
            let mut perm = vec![1, 0];
            perm.extend(&tail);
            e.transpose(&n.inputs[0], &perm)
        } else {
            let mut split = vec![batch, g, cg];
            split.extend(&xs[2..]);
            let r = e.reshape(&n.inputs[0], &split);
            let mut perm = vec![2, 1, 0];
            perm.extend((3..3 + sp).collect::<Vec<_>>());
            let t = e.transpose(&r, &perm);
            let mut merged = vec![cg, g * batch];
            merged.extend(&xs[2..]);
            e.reshape(&t, &merged)
        };
        let mut perm = vec![1, 0];
        perm.extend(&tail);
        let dyt = e.transpose(dy, &perm);
        // Output spatial size of the weight-gradient convolution (at least the kernel size).
        let mut full = Vec::with_capacity(sp);
        for i in 0..sp {
            let span = xs[2 + i] + c.pads[i].0 + c.pads[i].1;
            let eff = c.strides[i] * (ys[2 + i] - 1) + 1;
            full.push((span - eff) / c.dilations[i] + 1);
        }
        let dw = e.op(
            "Conv",
            &[&xt, &dyt],
            vec![
                attr_ints("kernel_shape", &ints(&ys[2..])),
                attr_ints("strides", &ints(&c.dilations)),
                attr_ints("dilations", &ints(&c.strides)),
                attr_ints("pads", &pads),
                attr_i("group", g as i64),
            ],
        );
        let dw = if full != c.kernel {
            let starts = e.const_i(&[sp], &vec![0; sp]);
            let ends = e.const_i(&[sp], &ints(&c.kernel));
            let axes = e.const_i(&[sp], &ints(&tail));
            e.op("Slice", &[&dw, &starts, &ends, &axes], vec![])
        } else {
            dw
        };
        // [C/g, M, *K] -> [M, C/g, *K]
        tail.insert(0, 0);
        tail.insert(0, 1);
        out[1] = Some(e.transpose(&dw, &tail));
    }
    if n.inputs.len() > 2 && needs[2] {
        let mut axes = vec![0];
        axes.extend(2..2 + sp);
        out[2] = Some(e.reduce_sum(dy, &axes, false));
    }
    Ok(out)
}
