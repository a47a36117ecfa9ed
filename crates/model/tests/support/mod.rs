//! Test helpers: a structural ONNX check without an ONNX runtime.

pub mod onnx;
