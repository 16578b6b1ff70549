"""Every name and number the runtime shares with the export side, written once.

The export tooling (``rfedge_export``) imports these too; nothing here imports anything.
"""

from __future__ import annotations

# Qwen2.5 tokenization
PAD_TOKEN_ID = 151643  # <|endoftext|>, Qwen2.5's eos and pad token

# The rendering contract (see rfedge.steps and rfedge.traces)
STEP_SEPARATOR = "\n\n"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SECTIONS = ("thinking", "response")

# A model directory
MANIFEST_NAME = "rfedge.json"
GRAPH_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_NAME = "rfedge-model"

# Choices offered by the commands
PRECISIONS = ("fp32", "fp16", "int8", "int4")
DEVICES = ("auto", "cpu", "cuda")  # where the runtime scores (ONNX Runtime providers)
# The devices a graph of each precision is built for (a manifest's "devices"; older manifests: this).
# Only fp16 runs on CUDA: its GroupQueryAttention has no float32 CUDA kernel, nor do the integer
# kernels of int8 (export/onnx/cuda_kernels.json; tests/test_devices.py walks the graphs against it).
BUILT_FOR = {"fp32": ("cpu",), "fp16": ("cuda",), "int8": ("cpu",), "int4": ("cpu",)}
WHY_NOT_CUDA = {"fp32": "its float32 GroupQueryAttention has no CUDA kernel",
                "int8": "its MatMulIntegerToFloat and float32 attention have no CUDA kernels",
                "int4": "its float32 attention has no CUDA kernel"}
TORCH_DEVICES = ("cpu", "cuda")  # where the export tooling runs torch models
DEFAULT_FIT_MINUTES = 15.0  # an INT8 export's fit promotes linears this long at most, then stops with the reason

# Scoring defaults (Scorer.load and rfedge score)
DEFAULT_ALPHA = 1.0
DEFAULT_BATCH_SIZE = 8
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}  # padded tokens a batch may hold, past included, by device:
# on CPUs larger batches only cost memory traffic (bench/incremental.py); GPUs need them to fill
DEFAULT_CHUNK_TOKENS = {"cpu": 256, "cuda": 2048}  # the most tokens one graph call runs, by device: on the CPU
# chunks of 256 hold the activations of fewer tokens (1.5B shape, T=2048: peak RSS 2.41 -> 2.01 GB) at the same
# speed as one pass (T=8192: chunks of 128 were 16% slower); bench/speed.py runs these defaults
