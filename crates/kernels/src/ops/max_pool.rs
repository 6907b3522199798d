//! 2x2 max pooling at stride 2 (YuNet backbone): rows first, then pairs. On f32, or on the uint8
//! codes of a QDQ graph (the maximum of the codes is the code of the maximum: dequantizing is
//! increasing).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// The larger of two values, as one vector max instruction (`f32::max`'s NaN rule costs a blend).
#[inline(always)]
pub(crate) fn larger<T: PartialOrd>(a: T, b: T) -> T {
    if a > b { a } else { b }
}

/// 2x2 max pooling with stride 2 and no padding (floor), NCHW f32 or uint8 (the input's type).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct MaxPool2x2 {
    pub(crate) input: [usize; 4],
    pub(crate) output: [usize; 4],
    pub(crate) output_shape: Vec<usize>,
}

impl Op for MaxPool2x2 {
    fn name(&self) -> StaticName {
        "FaceEdgeMaxPool2x2".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?} -> {:?}", self.input, self.output)])
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool2x2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1 && inputs[0].len() == self.input.iter().product::<usize>());
        let input = inputs[0].try_as_plain_ram()?;
        let out = match inputs[0].datum_type() {
            DatumType::U8 => self.pool(input.as_slice::<u8>()?)?,
            _ => self.pool(input.as_slice::<f32>()?)?,
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl MaxPool2x2 {
    fn pool<T: Datum + Copy + PartialOrd + Default>(&self, data: &[T]) -> TractResult<Tensor> {
        let [_, _, h, w] = self.input;
        let [_, _, oh, ow] = self.output;
        // SAFETY: f32 and u8 have no invalid bit patterns, and every element is written below
        // before the tensor is returned.
        let mut out = unsafe { Tensor::uninitialized::<T>(&self.output_shape)? };
        let mut vertical = vec![T::default(); 2 * ow];
        for (src, dst) in data.chunks_exact(h * w).zip(
            out.try_as_plain_ram_mut()?
                .as_slice_mut::<T>()?
                .chunks_exact_mut(oh * ow),
        ) {
            for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
                let top = &src[2 * oy * w..][..2 * ow];
                let bottom = &src[(2 * oy + 1) * w..][..2 * ow];
                // Rows first (a plain vector loop), then neighbouring pairs.
                for ((v, &t), &b) in vertical.iter_mut().zip(top).zip(bottom) {
                    *v = larger(t, b);
                }
                for (o, pair) in row.iter_mut().zip(vertical.chunks_exact(2)) {
                    *o = larger(pair[0], pair[1]);
                }
            }
        }
        Ok(out)
    }
}

impl TypedOp for MaxPool2x2 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].shape.volume() == self.input.iter().product::<usize>().to_dim());
        Ok(tvec!(inputs[0].datum_type.fact(&self.output_shape)))
    }

    as_op!();
}
