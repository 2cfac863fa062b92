//! Bit-packed quantization codecs (placeholder until issue 3 lands).
