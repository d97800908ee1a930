"""The names of the vision-encoder options, shared by the runtime (edge_runtime/encoder_choice.py) and
the command line, which must not import the runtime to build its parser."""

VISION_ENCODERS = ("auto", "mtmd", "onnx")
# storage types of the projector for llama.cpp's encoder: what quantize/mmproj.py writes (never BF16;
# K-quants do not fit SigLIP's 1152/4304-wide rows)
MMPROJ_TYPES = ("f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
ONNX_PRECISIONS = ("fp32", "fp16", "int8")
