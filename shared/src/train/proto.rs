//! Small helpers over tract-onnx's ONNX protobuf types: reading attributes and tensors, writing nodes, tensors and
//! value infos.
//!
//! Pure data conversion: no graph logic here, and never a panic on a malformed protobuf (errors instead).

use tract_onnx::pb::{
    AttributeProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
};

use super::error::TrainError;

/// Values of a constant tensor: floats or integers (integers cover every ONNX integer type and bool).
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
        }
    }

    pub fn as_i64(&self) -> Vec<i64> {
        match self {
            Data::F(v) => v.iter().map(|x| *x as i64).collect(),
            Data::I(v) => v.clone(),
        }
    }

    pub fn as_f32(&self) -> Vec<f32> {
        match self {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|x| *x as f32).collect(),
        }
    }
}

/// The largest element count of any tensor fedge accepts (2^31): products of dimensions below it cannot overflow.
pub const MAX_ELEMENTS: usize = 1 << 31;

fn dims_of(t: &TensorProto) -> Result<Vec<usize>, TrainError> {
    let dims = t
        .dims
        .iter()
        .map(|d| usize::try_from(*d).map_err(|_| TrainError::invalid(format!("tensor {} has dimension {d}", t.name))))
        .collect::<Result<Vec<usize>, _>>()?;
    let count = dims.iter().try_fold(1usize, |n, d| n.checked_mul(*d).filter(|n| *n <= MAX_ELEMENTS));
    if count.is_none() {
        return Err(TrainError::invalid(format!("tensor {} of shape {dims:?} is too large", t.name)));
    }
    Ok(dims)
}

fn chunks<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

/// Decodes a tensor proto (raw or typed storage) into its shape and values.
pub fn decode_tensor(t: &TensorProto) -> Result<(Vec<usize>, Data), TrainError> {
    let shape = dims_of(t)?;
    let n: usize = shape.iter().product();
    let raw = &t.raw_data;
    let dt =
        DataType::from_i32(t.data_type).ok_or_else(|| TrainError::invalid(format!("tensor {}: bad type", t.name)))?;
    if t.data_location == Some(1) {
        return Err(TrainError::invalid(format!("tensor {} uses external data, which is not supported", t.name)));
    }
    let data = match dt {
        DataType::Float if !raw.is_empty() => Data::F(chunks::<4, _>(raw, f32::from_le_bytes)),
        DataType::Float => Data::F(t.float_data.clone()),
        DataType::Double if !raw.is_empty() => Data::F(chunks::<8, _>(raw, |b| f64::from_le_bytes(b) as f32)),
        DataType::Double => Data::F(t.double_data.iter().map(|x| *x as f32).collect()),
        DataType::Int64 if !raw.is_empty() => Data::I(chunks::<8, _>(raw, i64::from_le_bytes)),
        DataType::Int64 => Data::I(t.int64_data.clone()),
        DataType::Int32 if !raw.is_empty() => Data::I(chunks::<4, _>(raw, |b| i32::from_le_bytes(b) as i64)),
        DataType::Int32 | DataType::Int16 | DataType::Int8 | DataType::Uint8 | DataType::Uint16 | DataType::Bool
            if raw.is_empty() =>
        {
            Data::I(t.int32_data.iter().map(|x| *x as i64).collect())
        }
        DataType::Int8 => Data::I(raw.iter().map(|b| *b as i8 as i64).collect()),
        DataType::Uint8 | DataType::Bool => Data::I(raw.iter().map(|b| *b as i64).collect()),
        other => {
            return Err(TrainError::invalid(format!("tensor {} has unsupported type {other:?}", t.name)));
        }
    };
    if data.len() != n {
        return Err(TrainError::invalid(format!("tensor {} has {} values for shape {shape:?}", t.name, data.len())));
    }
    Ok((shape, data))
}

/// Whether a tensor proto holds floating-point values.
pub fn is_float(t: &TensorProto) -> bool {
    t.data_type == DataType::Float as i32 || t.data_type == DataType::Double as i32
}

pub fn f32_tensor(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: shape.iter().map(|d| *d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

pub fn f64_tensor(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: shape.iter().map(|d| *d as i64).collect(),
        data_type: DataType::Double as i32,
        raw_data: data.iter().flat_map(|x| (*x as f64).to_le_bytes()).collect(),
        ..Default::default()
    }
}

pub fn i64_tensor(name: &str, shape: &[usize], data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: shape.iter().map(|d| *d as i64).collect(),
        data_type: DataType::Int64 as i32,
        raw_data: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A constant tensor; floats stored as `float_type` (Float or Double).
pub fn data_tensor(name: &str, shape: &[usize], data: &Data, float_type: DataType) -> TensorProto {
    match data {
        Data::F(v) if float_type == DataType::Double => f64_tensor(name, shape, v),
        Data::F(v) => f32_tensor(name, shape, v),
        Data::I(v) => i64_tensor(name, shape, v),
    }
}

pub fn value_info(name: &str, elem_type: DataType, shape: &[usize]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(*d as i64)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem_type as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A value info with an element type and no shape (for outputs whose shape the runtime infers).
pub fn value_info_unshaped(name: &str, elem_type: DataType) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: elem_type as i32, shape: None })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The element type and dimensions of a value info; `None` for a symbolic or missing dimension.
pub fn value_info_shape(v: &ValueInfoProto) -> Option<(i32, Vec<Option<usize>>)> {
    let Some(TypeProto { value: Some(type_proto::Value::TensorType(t)), .. }) = &v.r#type else {
        return None;
    };
    let dims = t
        .shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match d.value {
            Some(tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => Some(v as usize),
            _ => None,
        })
        .collect::<Vec<Option<usize>>>();
    // A shape whose known dimensions multiply past MAX_ELEMENTS is no shape fedge can use.
    dims.iter().flatten().try_fold(1usize, |n, d| n.checked_mul(*d).filter(|n| *n <= MAX_ELEMENTS))?;
    Some((t.elem_type, dims))
}

pub fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i, ..Default::default() }
}

pub fn attr_f(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f, ..Default::default() }
}

pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: ints.to_vec(), ..Default::default() }
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.to_string(),
        name: name.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

/// Typed access to a node's attributes.
pub struct Attrs<'a>(pub &'a NodeProto);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&AttributeProto> {
        self.0.attribute.iter().find(|a| a.name == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn i(&self, name: &str, default: i64) -> i64 {
        self.get(name).map(|a| a.i).unwrap_or(default)
    }

    pub fn f(&self, name: &str, default: f32) -> f32 {
        self.get(name).map(|a| a.f).unwrap_or(default)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }

    pub fn s(&self, name: &str) -> Option<String> {
        self.get(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    pub fn t(&self, name: &str) -> Option<&TensorProto> {
        self.get(name).and_then(|a| a.t.as_ref())
    }

    pub fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.get(name).map(|a| a.floats.clone())
    }
}
