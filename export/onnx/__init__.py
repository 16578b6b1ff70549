"""The graph: the pooled torch module (Qwen2 body + in-graph step pooling), the attention op, torch -> ONNX."""
