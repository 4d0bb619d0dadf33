//! Gradient of Conv (any number of spatial axes; pads, strides, dilations, groups including depthwise).
//!
//! 1-D and 2-D convolutions use fedge's own operators (`FedgeConvInputGrad` for dX, `FedgeConvWeightGrad` for dW;
//! see `conv_ops`) unless the emitter asks for standard operators ([`Kernels::Standard`]); every other case,
//! and the standard form, is:
//! - dX is a ConvTranspose of dY with the same kernel, strides, dilations, pads and group, with `output_padding`
//!   chosen so the result has X's exact size.
//! - dW is itself a convolution where the batch becomes the channel axis and dY the kernel; strides and
//!   dilations swap roles and the result is cropped to the kernel size. Ungrouped: X is viewed as
//!   `[1, N, C, *S]` (the input channels become an extra spatial axis, kernel extent 1), so tract runs one
//!   `[M × N·O]·[N·O × C·K]` GEMM. Against the grouped form below with g = 1 (C skinny `[M × N·O]·[N·O × K]`
//!   GEMMs) this cut the whole CNN step at batch 128 from 387–406 to 292–322 ms of CPU time. Grouped: X as `[C/g, g·N, *S]`, group g, then transposed to
//!   `[M, C/g, *K]`; grouped convolutions cost no more than the forward pass this way.
//! - db sums dY over the batch and spatial axes.
//!
//! Only nodes are appended; nothing runs here.

use super::super::conv_ops::{CONV_INPUT_GRAD, CONV_WEIGHT_GRAD};
use super::super::custom_op::DOMAIN;
use super::super::emit::{Emitter, Kernels};
use super::super::error::TrainError;
use super::super::graph::{DNode, Op};
use super::super::proto::{attr_i, attr_ints, node};

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
    if e.kernels == Kernels::Fedge && (1..=2).contains(&sp) {
        // The whole geometry travels as attributes; the op checks its inputs against it.
        let attrs = || {
            vec![
                attr_ints("x_shape", &ints(xs)),
                attr_ints("w_shape", &ints(&n.in_shapes[1])),
                attr_ints("strides", &ints(&c.strides)),
                attr_ints("dilations", &ints(&c.dilations)),
                attr_ints("pads", &pads),
                attr_i("group", g as i64),
            ]
        };
        let fedge_op = |e: &mut Emitter, op: &str, inputs: &[&str]| {
            let o = e.fresh(op);
            let mut nd = node(op, &o, inputs, &[&o], attrs());
            nd.domain = DOMAIN.into();
            e.nodes.push(nd);
            o
        };
        if needs[0] {
            out[0] = Some(fedge_op(e, CONV_INPUT_GRAD, &[dy, &n.inputs[1]]));
        }
        if needs[1] {
            out[1] = Some(fedge_op(e, CONV_WEIGHT_GRAD, &[&n.inputs[0], dy]));
        }
    }
    if needs[0] && out[0].is_none() {
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
    if needs[1] && out[1].is_none() {
        let cg = channels / g;
        let tail: Vec<usize> = (2..2 + sp).collect();
        // Output spatial size of the weight-gradient convolution (at least the kernel size).
        let mut full = Vec::with_capacity(sp);
        for i in 0..sp {
            let span = xs[2 + i] + c.pads[i].0 + c.pads[i].1;
            let eff = c.strides[i] * (ys[2 + i] - 1) + 1;
            full.push((span - eff) / c.dilations[i] + 1);
        }
        let crop = |e: &mut Emitter, dw: String, first_spatial: usize| {
            if full == c.kernel {
                return dw;
            }
            let starts = e.const_i(&[sp], &vec![0; sp]);
            let ends = e.const_i(&[sp], &ints(&c.kernel));
            let axes: Vec<i64> = (first_spatial..first_spatial + sp).map(|a| a as i64).collect();
            let axes = e.const_i(&[sp], &axes);
            e.op("Slice", &[&dw, &starts, &ends, &axes], vec![])
        };
        let mut perm = vec![1, 0];
        perm.extend(&tail);
        let dyt = e.transpose(dy, &perm);
        if g == 1 {
            // One convolution with an extra leading spatial axis carrying the input channels: X as
            // [1, N, C, *S], dY as the kernel [M, N, 1, *O]; output [1, M, C, *K'] is dW up to the crop. Its
            // im2col matrix has all C·K' columns, so the product is one well-shaped [M × N·O]·[N·O × C·K'] GEMM.
            let mut x5 = vec![1, batch, channels];
            x5.extend(&xs[2..]);
            let xin = e.reshape(&n.inputs[0], &x5);
            let mut k5 = vec![ys[1], batch, 1];
            k5.extend(&ys[2..]);
            let kernel = e.reshape(&dyt, &k5);
            let one = |v: &[usize]| -> Vec<i64> { std::iter::once(1).chain(v.iter().map(|x| *x as i64)).collect() };
            let pads5: Vec<i64> = std::iter::once(0)
                .chain(c.pads.iter().map(|p| p.0 as i64))
                .chain(std::iter::once(0))
                .chain(c.pads.iter().map(|p| p.1 as i64))
                .collect();
            let dw = e.op(
                "Conv",
                &[&xin, &kernel],
                vec![
                    attr_ints("kernel_shape", &one(&ys[2..])),
                    attr_ints("strides", &one(&c.dilations)),
                    attr_ints("dilations", &one(&c.strides)),
                    attr_ints("pads", &pads5),
                ],
            );
            let mut flat = vec![ys[1], channels];
            flat.extend(&full);
            let dw = e.reshape(&dw, &flat);
            out[1] = Some(crop(e, dw, 2));
        } else {
            // Grouped: X as [C/g, g·N, *S] (groups of N channels), dY as the kernel [M, N, *O], group g; the output
            // [C/g, M, *K'] is cropped and transposed to [M, C/g, *K].
            let mut split = vec![batch, g, cg];
            split.extend(&xs[2..]);
            let r = e.reshape(&n.inputs[0], &split);
            let mut perm = vec![2, 1, 0];
            perm.extend((3..3 + sp).collect::<Vec<_>>());
            let t = e.transpose(&r, &perm);
            let mut merged = vec![cg, g * batch];
            merged.extend(&xs[2..]);
            let xt = e.reshape(&t, &merged);
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
            let dw = crop(e, dw, 2);
            let mut back = vec![1, 0];
            back.extend(&tail);
            out[1] = Some(e.transpose(&dw, &back));
        }
    }
    if n.inputs.len() > 2 && needs[2] {
        let mut axes = vec![0];
        axes.extend(2..2 + sp);
        out[2] = Some(e.reduce_sum(dy, &axes, false));
    }
    Ok(out)
}
